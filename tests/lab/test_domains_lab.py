"""L2 physical domains on the real kernel (draft §3.1): ToR NVEs with 802.1Q trunks to their servers,
VLAN-IDs allocated per domain, guest tags that never change, moves between and inside domains under
traffic, and an exhausted VLAN range that refuses a move and changes nothing.

The packaged example `pods.yaml` is the lab: dc1 has pod1 (tor1: hv1, hv2; VLANs 100-199), pod2
(tor2: hv3; VLANs 200-299) and hv4 (a trivial domain); dc2 has hv5 (trivial). At start web has VLAN
100 in pod1, db has 200 in pod2; vm2 tags its frames 30 itself; vm4 is a trunk NIC (web on guest VLAN
10, db on 20); vm3 has two NICs (web, db)."""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

import pytest
import yaml
from conftest import Sniffer, wait_resynced

WEB, DB = 10100, 10200


def pods(name: str, **changes: Any) -> dict:
    topo = yaml.safe_load(resources.files("roamnet").joinpath("examples/pods.yaml").read_text())
    topo["name"] = name
    for dc, domains in changes.items():
        for dom, spec in domains.items():
            topo["datacenters"][dc]["domains"][dom].update(spec)
    return topo


def tags_of(frames: list, mac: str) -> set[int]:
    """VLAN-IDs on the frames sent by `mac` (0: untagged)."""
    from scapy.layers.l2 import Dot1Q

    return {f[Dot1Q].vlan if Dot1Q in f else 0 for f in frames if f.src == mac}


def sniff_from(lab: Any, node: str, dev: str, mac: str, seconds: float = 30) -> Sniffer:
    return Sniffer(lab.plan.nodes[node].ns, dev, lambda e, out: e.src == mac, seconds)


def assert_survived(flow: Any, duration: float, moves: list[dict]) -> None:
    """UDP: sent at its rate, and lost no more than the VM's dark time (stop to resume) of the moves
    at that rate, plus 40 ms of packets (make-before-break: the network itself loses ~nothing);
    TCP: the connection survived."""
    js = json.dumps({**flow.to_json(), "dark_ms": [m["dark_ms"] for m in moves]})
    if flow.proto == "udp":
        budget_ms = sum(m["dark_ms"] for m in moves) + 40
        assert flow.sent >= 0.9 * flow.rate * duration and flow.lost <= budget_ms * flow.rate / 1000, js
    else:
        assert flow.survived and flow.received > 0, js


def test_tagged_vm_between_two_tor_domains_keeps_its_tag(lab_name, lab_up, traffic, lab_namespaces):
    t = pods(lab_name("t-dom-tag"))
    lab_namespaces(t)
    vm2_mac = t["vms"]["vm2"]["interfaces"][0]["mac"]
    with lab_up(t) as lab:
        snap = lab.mapping.snapshot()
        assert snap.vlans == {"pod1": {WEB: 100}, "pod2": {DB: 200}}
        start, duration = time.monotonic() + 1.0, 8.0
        udp = traffic(lab, "udp", "udp", "vm1", "vm2", 5001, start, duration)
        tcp = traffic(lab, "tcp", "tcp", "vm2", "vm1", 5002, start, duration, rate=200)
        guest = sniff_from(lab, "vm2", "eth0", vm2_mac)
        old_trunk = sniff_from(lab, "hv2", "trunk", vm2_mac)
        new_trunk = sniff_from(lab, "hv3", "trunk", vm2_mac)
        time.sleep(max(0.0, start + 3.0 - time.monotonic()))
        rec = lab.migrate("vm2", "hv3")
        assert rec["mode"] == "prepared" and rec["converged_ms"] is not None, rec
        after = lab.mapping.snapshot()
        # web is new in pod2: the next free VLAN of its range; gone from nothing in pod1 (vm1 stays)
        assert after.vlans == {"pod1": {WEB: 100}, "pod2": {DB: 200, WEB: 201}}
        assert after.binding_of("vm2/0").nve == "hv3"
        assert after.binding_of("vm2/0").vtep == lab.plan.nodes["tor2"].vtep
        for flow in (udp, tcp):
            assert_survived(flow.finish([rec]), duration, [rec])
        seen_guest = tags_of(guest.stop(), vm2_mac)
        seen_old, seen_new = tags_of(old_trunk.stop(), vm2_mac), tags_of(new_trunk.stop(), vm2_mac)
    # the guest tagged everything 30 (RARP is QEMU's, untagged), before and after the move; the
    # trunks carried the domain's VLAN: 100 behind tor1, 201 behind tor2
    assert 30 in seen_guest and seen_guest <= {0, 30}, seen_guest
    assert seen_old == {100}, seen_old
    assert 201 in seen_new and seen_new <= {0, 201}, seen_new


def test_two_nics_between_trivial_and_tor_domains_both_ways(lab_name, lab_up, traffic, lab_namespaces):
    t = pods(lab_name("t-dom-nics"))
    lab_namespaces(t)
    web_ip, db_ip = (i["ip"] for i in t["vms"]["vm3"]["interfaces"])
    with lab_up(t) as lab:
        start, duration = time.monotonic() + 1.0, 10.0
        flows = [traffic(lab, "web", "udp", "vm1", web_ip, 5001, start, duration),
                 traffic(lab, "db", "udp", "vm5", db_ip, 5002, start, duration),
                 traffic(lab, "tcp", "tcp", "vm3", "vm2", 5003, start, duration, rate=200)]
        time.sleep(max(0.0, start + 2.5 - time.monotonic()))
        there = lab.migrate("vm3", "hv1")  # trivial (hv4, its own NVE) -> pod1 (behind tor1)
        snap = lab.mapping.snapshot()
        assert snap.vlans["pod1"] == {WEB: 100, DB: 101}  # db arrives in pod1 with vm3
        assert {snap.binding_of(f"vm3/{i}").vtep for i in (0, 1)} == {lab.plan.nodes["tor1"].vtep}
        time.sleep(3.0)
        back = lab.migrate("vm3", "hv4")  # and back to the trivial domain
        snap = lab.mapping.snapshot()
        assert snap.vlans["pod1"] == {WEB: 100}  # vm3 was db's last member in pod1: released
        assert {snap.binding_of(f"vm3/{i}").vtep for i in (0, 1)} == {lab.plan.nodes["hv4"].vtep}
        for flow in flows:
            assert_survived(flow.finish([there, back]), duration, [there, back])


def test_trunk_nic_moves_and_a_move_inside_a_tor_touches_no_other_nve(lab_name, lab_up, traffic, lab_namespaces):
    t = pods(lab_name("t-dom-trunk"))
    lab_namespaces(t)
    mac = t["vms"]["vm4"]["interfaces"][0]["mac"]
    web_ip, db_ip = (i["ip"] for i in t["vms"]["vm4"]["interfaces"])
    with lab_up(t) as lab:
        start, duration = time.monotonic() + 1.0, 12.0
        flows = [traffic(lab, "web", "udp", "vm1", web_ip, 5001, start, duration),
                 traffic(lab, "db", "udp", "vm5", db_ip, 5002, start, duration),
                 traffic(lab, "web-out", "udp", "vm4", "vm1", 5003, start, duration),  # on guest VLAN 10
                 traffic(lab, "db-out", "tcp", "vm4", "vm5", 5004, start, duration)]  # on guest VLAN 20
        guest = sniff_from(lab, "vm4", "eth0", mac)
        trunk_hv2 = sniff_from(lab, "hv2", "trunk", mac)
        time.sleep(max(0.0, start + 2.0 - time.monotonic()))
        into_pod = lab.migrate("vm4", "hv2")  # dc2's trivial hv5 -> pod1 in dc1
        time.sleep(2.5)
        seen_hv2 = tags_of(trunk_hv2.stop(), mac)
        others = ("hv4", "hv5", "tor2")
        before = {n: lab.mapping.statuses.all()[n].changes_applied for n in others}
        inside = lab.migrate("vm4", "hv1")  # inside pod1: only tor1 and the two switches change
        wait_resynced(lab, list(others))  # every one of them read its kernel again since
        assert {n: lab.mapping.statuses.all()[n].changes_applied for n in others} == before
        for flow in flows:
            assert_survived(flow.finish([into_pod, inside]), duration, [into_pod, inside])
        seen_guest = tags_of(guest.stop(), mac)
    assert {10, 20} <= seen_guest <= {0, 10, 20}, seen_guest  # the guest's own tags, throughout
    assert {100, 101} <= seen_hv2 <= {0, 100, 101}, seen_hv2  # pod1's VLANs for web and db


def test_exhausted_vlan_range_refuses_the_move_and_changes_nothing(host, lab_name, lab_up, lab_namespaces):
    from roamnet.lab.errors import LabError

    t = pods(lab_name("t-dom-full"), dc1={"pod2": {"vlans": "200-200"}})  # db (vm5) has the only VLAN
    lab_namespaces(t)
    with lab_up(t) as lab:
        def links(node: str) -> list[str]:
            return sorted(x["ifname"] for x in host.ip_json(lab.plan.nodes[node].ns, "link", "show"))

        mapping_before = lab.mapping.snapshot().to_json()
        kernel_before = {n: links(n) for n in ("hv3", "tor2", "hv1", "tor1")}
        with pytest.raises(LabError, match=r"pod2.*200-200.*exhausted"):
            lab.migrate("vm1", "hv3")
        lab.wait_converged(5)
        wait_resynced(lab)  # every agent read its kernel again since
        mapping_after = lab.mapping.snapshot().to_json()
        mapping_before.pop("revision"), mapping_after.pop("revision")
        assert mapping_after == mapping_before
        assert {n: links(n) for n in kernel_before} == kernel_before
        assert lab.location["vm1"] == "hv1" and not lab.pending
        assert lab.migrations == []


def test_tors_route_between_cugs_with_the_anycast_gateway(host, lab_name, lab_up, lab_namespaces):
    t = pods(lab_name("t-dom-irb"))
    t["tenants"] = {"t1": {"l3vni": 50001}}
    t["cugs"]["web"].update(gateway="198.19.1.1", tenant="t1")
    t["cugs"]["db"].update(gateway="198.19.2.1", tenant="t1")
    lab_namespaces(t)

    def replies(vm: str, ip: str) -> int:
        out = host.run(["ip", "netns", "exec", f"rn-{t['name']}-{vm}", "ping", "-n", "-q", "-c", "5", "-i", "0.05",
                        "-W", "1", ip], timeout=30, check=False).stdout
        return next((int(ln.split(",")[1].split()[0]) for ln in out.splitlines() if "received" in ln), 0)

    with lab_up(t, wan_bgp=False) as lab:
        from roamnet.dataplane.kernel import Kernel  # the ToR's kernel, read apart from its agent

        tor = lab.plan.nodes["tor1"]
        kernel = Kernel(tor.ns, tor.vtep, {"t1": lab.plan.vrf("tor1", "t1").ns})
        try:
            have = kernel.read()[0].vrfs["t1"]
        finally:
            kernel.close()
        assert have.irbs == {10100: "198.19.1.1/24"}  # the ToR presents the gateway of the CUGs behind it
        replies("vm2", "198.19.2.15")  # (the first packets resolve neighbours)
        # vm2 (tagged 30 by the guest, behind tor1) <-> vm5 (behind tor2), routed by the two ToRs
        assert replies("vm2", "198.19.2.15") == 5
        assert replies("vm5", "198.19.1.14") == 5  # to vm4's trunk NIC, on hv5
        lab.migrate("vm2", "hv3")  # now behind tor2, next to vm5
        assert replies("vm2", "198.19.2.15") == 5
        assert replies("vm2", "198.19.1.1") == 5  # its gateway, same IP and MAC behind the other ToR
