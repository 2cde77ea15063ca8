"""Make-before-break for routed traffic on the real kernel: during a prepared move the destination's VRF
delivers the moving VM's address locally (a permanent neighbour on the CUG's gateway, no /32 back to
the source), a routed stream's packets for the VM arrive at the destination server before activation,
and once the VM runs there (its announcements lost, so the move stays prepared) every routed packet
reaches it, from a peer on another server and from one on the destination itself. Inbound from the WAN:
the old data center's border keeps forwarding to the VM's new server while the WAN router still
prefers it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Sniffer, lost_between
from scapy.layers.inet import ICMP, IP
from test_irb import ip_between, ping, routed_topology, wait_gone
from test_wan import deltas, poll

VM1, VM3, VM5 = "198.19.1.11", "198.19.2.13", "198.19.2.15"
VM1_MAC = "02:00:00:01:00:11"


def echo_requests(src: str, dst: str, outgoing: bool | None = None):
    """ICMP echo requests src -> dst in a frame (any IP layer of it: also inside VXLAN)."""
    between = ip_between(src, dst)

    def keep(e: Any, out: bool) -> bool:
        if outgoing is not None and out != outgoing:
            return False
        return between(e, out) and any(isinstance(layer, IP) and layer.src == src and ICMP in layer
                                       and layer[ICMP].type == 8 for layer in _layers(e))
    return keep


def _layers(e: Any):
    while e is not None and e.payload:
        yield e
        e = e.payload


def topology(name: str) -> dict[str, Any]:
    """test_irb's two data centers, and vm5 (db) on hv3: a peer on the destination, in another CUG."""
    topo = routed_topology(name)
    topo["vms"]["vm5"] = {"server": "hv3", "interfaces": [{"cug": "db", "mac": "02:00:00:02:00:15", "ip": VM5}]}
    return topo


def test_routed_packets_reach_the_destination_before_activation(lab_name, lab_up, host):
    with lab_up(topology(lab_name("t-l3mbb")), wan_bgp=False) as lab:
        ns = {n: lab.plan.nodes[n].ns for n in ("hv1", "hv2", "hv3")}
        vrf3 = f"rn-{lab.name}-hv3.t-t1"
        routes = {r["dst"]: r for r in host.ip_json(vrf3, "route", "show")}
        assert routes[VM1]["gateway"] == lab.plan.nodes["hv1"].vtep  # before: a /32 to vm1's server

        lab.prepare("vm1", "hv3", timeout=60)
        # the destination's port is up already, as a real tap is for an incoming migration (vm1 is not
        # behind it yet: its NIC's uplink joins only at the switch), and being up claims nothing
        port = next(link for link in host.ip_json(ns["hv3"], "link", "show") if link["ifname"] == "vm1-e0")
        assert "UP" in port["flags"] and port.get("master") == "br10100", port
        # the destination's VRF delivers vm1 locally: a permanent neighbour on web's gateway, no /32 to hv1
        assert VM1 not in {r["dst"] for r in host.ip_json(vrf3, "route", "show")}
        neigh = [n for n in host.ip_json(vrf3, "neigh", "show", "dev", "irb10100") if n.get("dst") == VM1]
        assert neigh and neigh[0]["lladdr"] == VM1_MAC and "PERMANENT" in neigh[0]["state"], neigh
        l3_hv2 = host.ip_json(f"rn-{lab.name}-hv2.t-t1", "route", "show")
        assert {r["dst"]: r["gateway"] for r in l3_hv2 if r["dst"] == VM1} == {VM1: lab.plan.nodes["hv1"].vtep}

        # vm1 still runs on hv1. A routed stream from vm3 (db, hv2) reaches hv1 on the L3 VNI, and its
        # packets for vm1 arrive at hv3 too, over web's VNI, before any activation
        at_dst = Sniffer(ns["hv3"], "vx10100", echo_requests(VM3, VM1, outgoing=False), seconds=30)
        got, out = ping(host, f"rn-{lab.name}-vm3", VM1, count=30)
        assert got == 30, out
        assert len(at_dst.stop()) >= 30, "vm3's packets for vm1 did not reach the destination server"
        assert lab.mapping.snapshot().binding_of("vm1/0").nve == "hv1"  # still prepared, the port up or not

        # from vm5 (db, on hv3 itself): routed on hv3 into its web bridge (not to hv1 on the L3 VNI),
        # which sends it on to hv1 over web's VNI, where vm1 still runs
        l3 = Sniffer(vrf3, "vx50001", echo_requests(VM5, VM1), seconds=30)
        l2 = Sniffer(ns["hv3"], "vx10100", echo_requests(VM5, VM1, outgoing=True), seconds=30)
        got, out = ping(host, f"rn-{lab.name}-vm5", VM1, count=30)
        assert got == 30, out
        assert l3.stop() == [] and len(l2.stop()) >= 30

        # vm1 runs on hv3 now, its announcements lost: the move stays prepared, and routed packets reach
        # it there from both peers (through hv1's dual delivery, and locally on hv3)
        lab.resume("vm1", pause_ms=0, announce=False)
        port = Sniffer(ns["hv3"], "vm1-e0", lambda e, out: out and e.dst == VM1_MAC and e.type == 0x0800, seconds=30)
        for peer in ("vm3", "vm5"):
            got, out = ping(host, f"rn-{lab.name}-{peer}", VM1, count=30)
            assert got == 30, (peer, out)
        snap = lab.mapping.snapshot()
        assert snap.binding_of("vm1/0").nve == "hv1" and snap.migrations["vm1/0"].state == "prepared"
        assert len(port.stop()) >= 60

        lab.activate("vm1")
        lab.complete("vm1")
        assert lab.wait_converged(10)
        routes = {r["dst"]: r for r in host.ip_json(f"rn-{lab.name}-hv2.t-t1", "route", "show")}
        assert routes[VM1]["gateway"] == lab.plan.nodes["hv3"].vtep
        for peer in ("vm3", "vm5"):
            got, out = ping(host, f"rn-{lab.name}-{peer}", VM1, count=10)
            assert got == 10, (peer, out)

        # vm3, the tenant's only VM on hv2, moves to hv1: once activated, hv2 hosts nothing routed, yet
        # its VRF stays (a /32 to hv1 on the L3 VNI, no gateway) for senders that have not switched,
        # until the move completes
        vrf2 = f"rn-{lab.name}-hv2.t-t1"
        lab.prepare("vm3", "hv1", timeout=60)
        lab.resume("vm3", pause_ms=0, announce=False)
        lab.activate("vm3")
        assert lab.wait_converged(10)
        routes = {r["dst"]: r for r in host.ip_json(vrf2, "route", "show")}
        assert routes[VM3]["gateway"] == lab.plan.nodes["hv1"].vtep and routes[VM3]["dev"] == "vx50001"
        assert wait_gone(host, ns["hv2"], "g10200")  # no gateway: hv2 hosts no db VM any more
        got, out = ping(host, f"rn-{lab.name}-vm1", VM3, count=10)
        assert got == 10, out
        lab.complete("vm3")
        assert lab.wait_converged(10)
        assert wait_gone(host, vrf2, "vx50001")  # completed: the VRF is emptied


@pytest.mark.usefixtures("frr_required")
def test_inbound_wan_stream_stays_on_the_old_border_until_the_wan_prefers_the_new_one(lab_name, lab_up, traffic):
    """vm1 moves dc1 -> dc2 while the WAN router hears nothing from dc2's border (its sessions there shut
    down: BGP that has not converged yet, held on purpose). The old border, which withdrew vm1's /32 at
    activation, keeps taking the client's packets on the tenant's covering route and forwards them to
    the new server; none is lost. Once the WAN router learns the /32 from dc2's border the stream enters
    there, again without a loss."""
    with lab_up(routed_topology(lab_name("t-wanhold"), clients=True)) as lab:
        assert poll(lambda: lab.border.wan_routes().get(f"{VM1}/32") == "dc1br", 20) is not None
        lab.border.set_wan_sessions("dc2br", up=False)
        assert poll(lambda: "dc2br" not in {b for paths in lab.border.wan_paths().values() for b, _, _ in paths},
                    10) is not None

        start, duration = time.monotonic() + 1.0, 14.0
        flow = traffic(lab, "in", "udp", "client1", "vm1", 5001, start, duration)
        time.sleep(max(0.0, start + 0.5 - time.monotonic()))
        assert through_in(deltas(lab), "dc1br", "dc2br")

        rec = lab.migrate("vm1", "hv3")  # dc1 -> dc2, activated and completed
        assert rec["dc_to"] == "dc2" and lab.mapping.snapshot().binding_of("vm1/0").nve == "hv3"
        held_from = rec["resumed_mono"]
        routes = lab.border.wan_routes()
        assert f"{VM1}/32" not in routes and routes["198.19.1.0/24"] == "dc1br", routes  # dc1 withdrew the /32
        held = deltas(lab)
        assert through_in(held, "dc1br", "dc2br"), held  # still in through the old border
        held_to = time.monotonic()

        lab.border.set_wan_sessions("dc2br", up=True)
        assert poll(lambda: lab.border.wan_routes().get(f"{VM1}/32") == "dc2br", 15) is not None
        time.sleep(0.3)
        after = deltas(lab)
        assert through_in(after, "dc2br", "dc1br"), after
        settled = time.monotonic()

        result = flow.finish([rec])
        assert lost_between(result, held_from, held_to) == [], "lost while the old border carried the stream"
        assert lost_between(result, held_to, settled) == [], "lost while the WAN router switched borders"


def through_in(d: dict[str, dict[str, int]], border: str, other: str) -> bool:
    """About a second of a 1 kHz stream entered through `border`, (almost) nothing through `other`."""
    return d[border]["in"] >= 800 and d[other]["in"] <= 20
