"""Underlay isolation and the WAN edge's guards on the real kernel (issue 20).

A routed lab with two tenants, two data centers and a WAN client. From a VM of each tenant and from the
WAN client: a ping to every underlay address, a TCP connect to port 179 on every border and WAN router
address, and forged VXLAN to every VTEP for every VNI. Nothing arrives (captured on the underlay and on
the VMs), the guards count the attempts, the configured BGP sessions stay up and the lab's legitimate
streams lose nothing. Forged VXLAN from inside the underlay (the DCI router, which is no VTEP) is
dropped by every NVE. Tenants meet only through the WAN, as internet hosts, under both tenants' policies."""

from __future__ import annotations

import copy
import select
import socket
import struct
import subprocess
import time
from typing import Any

import pytest
from conftest import Sniffer
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from test_irb import ping, routed_topology

pytestmark = pytest.mark.usefixtures("frr_required")
FORGED_MAC, FORGED_IP = "02:66:66:66:66:66", "198.19.9.9"  # bound nowhere, in no subnet of the lab
ROUNDS = 3
ATTACKERS = ("vm1", "vm5", "client1")  # a VM of t1, a VM of t2, a WAN client
UNDERLAY_KINDS = ("server", "border", "dci")


def two_tenant_topology(name: str) -> dict[str, Any]:
    """routed_topology (t1: web, db on hv1, hv2, hv3) plus tenant t2 (CUG app: vm5 on hv2, vm6 on hv3),
    whose rule refuses t1's web subnet."""
    topo = copy.deepcopy(routed_topology(name, clients=True))
    topo["tenants"]["t2"] = {"l3vni": 50002}
    topo["cugs"]["app"] = {"vni": 10300, "subnet": "198.19.3.0/24", "gateway": "198.19.3.1", "tenant": "t2"}
    topo["vms"]["vm5"] = {"server": "hv2", "interfaces": [{"cug": "app", "mac": "02:00:00:03:00:15", "ip": "198.19.3.15"}]}
    topo["vms"]["vm6"] = {"server": "hv3", "interfaces": [{"cug": "app", "mac": "02:00:00:03:00:16", "ip": "198.19.3.16"}]}
    topo["policies"] = [{"name": "no-t1-web", "from": {"prefix": "198.19.1.0/24"}, "to": {"cug": "app"},
                         "action": "deny"}]
    return topo


def vxlan(vni: int, inner: bytes) -> bytes:
    """RFC 7348: flags (I bit), 24 reserved bits, the VNI, 8 reserved bits; then the frame."""
    return struct.pack("!II", 0x08000000, vni << 8) + inner


def send_udp(ns: str, datagrams: list[tuple[str, bytes]]) -> int:
    """Plain UDP from a socket in namespace `ns`, as any process of a guest or a WAN host can send."""
    from roamnet.dataplane import netns

    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        for dst, payload in datagrams:
            try:
                s.sendto(payload, (dst, 4789))
                sent += 1
            except OSError:  # no route: it reaches nobody, which is what we want anyway
                pass
    finally:
        s.close()
    return sent


def connect_all(ns: str, targets: list[str], port: int, wait: float = 1.5) -> dict[str, str]:
    """Non-blocking TCP connects from namespace `ns` to every target at once: target -> "connected",
    "refused", "unreachable" or "timeout" (nothing came back within `wait`)."""
    from roamnet.dataplane import netns

    socks: dict[socket.socket, str] = {}
    out: dict[str, str] = {}
    for t in targets:
        s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((t, port))
        if err in (0, 115):  # 0 or EINPROGRESS
            socks[s] = t
        else:
            out[t] = "unreachable" if err in (101, 113) else f"errno {err}"
            s.close()
    deadline = time.monotonic() + wait
    while socks and time.monotonic() < deadline:
        _, ready, _ = select.select([], list(socks), [], max(0.0, deadline - time.monotonic()))
        for s in ready:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out[socks.pop(s)] = {0: "connected", 111: "refused"}.get(err, "unreachable" if err in (101, 113) else
                                                                      f"errno {err}")
            s.close()
    for s, t in socks.items():
        out[t] = "timeout"
        s.close()
    return out


def ping_all(ns: str, targets: list[str]) -> dict[str, int]:
    """target -> echo replies of one `ping -c 2` from namespace `ns`, all targets at once (bounded)."""
    procs = {t: subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", t],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for t in targets}
    out = {}
    for t, p in procs.items():
        text, _ = p.communicate(timeout=15)
        out[t] = next((int(ln.split(",")[1].split()[0]) for ln in text.splitlines() if "received" in ln), 0)
    return out


def listening(ns: str) -> list[str]:
    """`ss -Hltnu` in namespace `ns` (an independent check): local address:port and process of each socket."""
    text = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltnup"], capture_output=True, text=True,
                          timeout=10, check=True).stdout
    return [" ".join(ln.split()[4:5] + ln.split()[6:7]) for ln in text.splitlines() if ln.strip()]


def test_the_underlay_and_bgp_are_out_of_reach_of_tenants_and_the_wan(lab_name, lab_up, traffic):
    topo = two_tenant_topology(lab_name("t-iso"))
    name = topo["name"]
    with lab_up(topo) as lab:
        plan = lab.plan
        addrs: dict[str, list[str]] = {}  # node -> its addresses
        for link in plan.links:
            for node, iface in ((link.a, link.a_if), (link.b, link.b_if)):
                if iface.address:
                    addrs.setdefault(node, []).append(iface.address.split("/")[0])
        underlay = sorted({a for n, a_s in addrs.items() if plan.nodes[n].kind in UNDERLAY_KINDS for a in a_s})
        border_vrfs = [n for n, node in plan.nodes.items() if node.kind == "vrf" and plan.nodes[node.parent].kind == "border"]
        bgp_targets = sorted({a for n in ["wan", "dci", *border_vrfs, *(b for b, nd in plan.nodes.items()
                                                                        if nd.kind == "border")] for a in addrs[n]})
        attacker_ips = {"198.19.1.11", "198.19.3.15", "198.18.200.10"}
        snap = lab.mapping.snapshot()
        vteps = sorted({n.vtep for n in snap.nves.values()})
        vnis = sorted(set(snap.segments) | {t.l3vni for t in snap.tenants.values()})
        vms = {vm: spec["interfaces"][0] for vm, spec in topo["vms"].items()}

        # listening sockets where tenants or the WAN can send: bgpd's port 179 on the BGP speakers, nothing else
        reachable = ["wan", "client1", *(n for n, nd in plan.nodes.items() if nd.kind == "vrf")]
        sockets = {n: listening(plan.nodes[n].ns) for n in reachable}
        for n, socks in sockets.items():
            want_bgp = n == "wan" or n in border_vrfs
            assert all(":179 " in s + " " and "bgpd" in s for s in socks), (n, socks)
            assert bool(socks) == want_bgp, (n, socks)

        # captured on the underlay: anything whose outer source is an attacker's address is an arrival
        from_attacker = (lambda e, out: not out and IP in e and e[IP].src in attacker_ips)
        taps = [(n, lk_if.name) for lk in plan.links for n, lk_if in ((lk.a, lk.a_if), (lk.b, lk.b_if))
                if plan.nodes[n].kind in UNDERLAY_KINDS]
        under_sniffers = {f"{n}/{dev}": Sniffer(plan.nodes[n].ns, dev, from_attacker, seconds=90) for n, dev in taps}
        vm_sniffers = {vm: Sniffer(f"rn-{name}-{vm}", "eth0",
                                   lambda e, out: not out and (e.src == FORGED_MAC or (IP in e and FORGED_IP in
                                                                                        (e[IP].src, e[IP].dst))),
                                   seconds=90) for vm in vms}
        start_at = time.monotonic() + 1.0
        flows = [traffic(lab, "web", "udp", "vm4", "vm1", 5401, start_at, 9.0, rate=1000),  # across the overlay
                 traffic(lab, "wan", "udp", "client1", "vm6", 5402, start_at, 9.0, rate=1000)]  # WAN to t2
        filters_before, guards_before = lab.filter_counters(), lab.guard_counters()
        time.sleep(1.0)

        pings = {a: ping_all(f"rn-{name}-{a}", underlay) for a in ATTACKERS}
        connects = {a: connect_all(f"rn-{name}-{a}", bgp_targets, 179) for a in ATTACKERS}
        datagrams = [(vtep, vxlan(vni, bytes(Ether(src=FORGED_MAC, dst=itf["mac"]) / IP(src=FORGED_IP, dst=itf["ip"])
                                             / UDP(sport=4242, dport=9))))
                     for vtep in vteps for vni in vnis for itf in vms.values()]
        forged = {a: 0 for a in (*ATTACKERS, "dci")}
        for _ in range(ROUNDS):
            for a in forged:  # "dci": inside the underlay, but no VTEP of the mapping
                forged[a] += send_udp(f"rn-{name}-{a}", datagrams)
            time.sleep(0.2)
        time.sleep(0.5)
        results = [f.finish([]) for f in flows]
        filters_after, guards_after = lab.filter_counters(), lab.guard_counters()
        arrived_under = {k: [f.summary() for f in s.stop()] for k, s in under_sniffers.items()}
        arrived_vms = {vm: [f.summary() for f in s.stop()] for vm, s in vm_sniffers.items()}
        sessions = lab.border.sessions()

        replies = {a: sum(p.values()) for a, p in pings.items()}
        opened = {a: [t for t, r in c.items() if r == "connected"] for a, c in connects.items()}
        guard = {where: {k: guards_after[where][k] - guards_before[where][k] for k in guards_after[where]}
                 for where in guards_after}
        vxlan_foreign = {n: filters_after[n]["vxlan-foreign"] - filters_before[n]["vxlan-foreign"] for n in filters_after}
        print(f"pings: {sum(len(p) for p in pings.values())} to {len(underlay)} underlay addresses, replies {replies}")
        print(f"TCP 179: {sum(len(c) for c in connects.values())} connects to {len(bgp_targets)} addresses, "
              f"outcomes {[sorted(set(c.values())) for c in connects.values()]}, opened {opened}")
        print(f"forged VXLAN sent {forged} ({len(vteps)} VTEPs x {len(vnis)} VNIs x {len(vms)} VMs per round)")
        print(f"guards {guard}; vxlan-foreign per NVE {vxlan_foreign}")
        print(f"arrived on the underlay {sum(map(len, arrived_under.values()))}, at VMs "
              f"{sum(map(len, arrived_vms.values()))}; streams lost {[(r.lost, r.sent) for r in results]}; "
              f"BGP sessions {sessions}")

        assert replies == dict.fromkeys(ATTACKERS, 0), pings
        assert opened == {a: [] for a in ATTACKERS}, connects
        assert all(n == len(datagrams) * ROUNDS for n in forged.values()), forged  # all of them were sent
        assert arrived_under == {k: [] for k in under_sniffers}, arrived_under
        assert arrived_vms == {vm: [] for vm in vms}, arrived_vms
        # the WAN router dropped every ping and forged datagram towards the underlay, and counted them
        assert guard["wan"]["to-underlay"] >= len(datagrams) * ROUNDS * len(ATTACKERS)
        # every connect to 179 was dropped at its target, whichever namespace that is on the outside
        assert guard["wan"]["bgp-foreign"] > 0 and all(guard[v]["bgp-foreign"] > 0 for v in border_vrfs), guard
        # forged VXLAN from the underlay itself: dropped (and counted) by every NVE
        per_vtep = dict.fromkeys(vteps, 0)
        for nve, n in vxlan_foreign.items():
            if nve in snap.nves:
                per_vtep[snap.nves[nve].vtep] += n
        assert all(n > 0 for n in per_vtep.values()), per_vtep
        assert set(sessions.values()) == {"Established"}, sessions
        for r in results:
            assert r.lost == 0 and r.survived, r.to_json()


def test_tenants_meet_only_through_the_wan_under_both_policies(lab_name, lab_up, host):
    """t2's VM reaches t1's through the WAN (both allow: they are internet hosts to each other, no path
    inside the fabric); t1's web VM cannot reach t2, whose rule refuses t1's web subnet: dropped at t2's
    port and counted there. Inside the fabric the tenants share nothing: no route, no VNI."""
    topo = two_tenant_topology(lab_name("t-iso2"))
    name = topo["name"]
    with lab_up(topo) as lab:
        vrf_routes = {t: {r.get("dst") for r in host.ip_json(f"rn-{name}-hv2.t-{t}", "route", "show")}
                      for t in ("t1", "t2")}
        assert "198.19.3.0/24" not in vrf_routes["t1"] and "198.19.1.0/24" not in vrf_routes["t2"], vrf_routes
        handoff_before = lab.handoff_counters()
        deny_before = lab.filter_counters()["hv2"]["policy-deny"]
        got_t2_t1, _ = ping(host, f"rn-{name}-vm5", "198.19.1.11", count=10)
        got_t1_t2, _ = ping(host, f"rn-{name}-vm1", "198.19.3.15", count=10)
        handoff = {b: c["in"] - handoff_before[b]["in"] for b, c in lab.handoff_counters().items()}
        denied = lab.filter_counters()["hv2"]["policy-deny"] - deny_before
        print(f"t2 -> t1 through the WAN: {got_t2_t1}/10 replies; t1 web -> t2: {got_t1_t2}/10, "
              f"denied at t2's port {denied}; packets in from the WAN per border {handoff}")
        assert got_t2_t1 == 10 and got_t1_t2 == 0
        assert denied >= 10
        assert sum(handoff.values()) >= 20  # both ways crossed the WAN: there is no other path
