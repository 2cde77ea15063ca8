"""FRR BGP-EVPN with symmetric IRB as the lab's control plane (baselines/evpn_irb.py): a routed packet
between two CUGs on two servers crosses the underlay in the L3 VNI, addressed to the egress VTEP's
router MAC; after a move between data centers the route follows (the VTEPs' /32 and the WAN router's
border), and the daemons saw only their own node's tenant namespaces. Nothing of FRR is left after.

Needs FRR (Debian `frr`) and scapy; skipped without them unless the lab is required.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest
from conftest import Sniffer, frr_still_runs, recorded_frr  # noqa: E402
from test_evpn_lab import evpn_lab  # the same lab fixture as FRR-EVPN's, with this control plane

from roamnet import names
from roamnet.baselines.evpn_irb import FrrEvpnIrb

pytestmark = pytest.mark.usefixtures("frr_required")

L3VNI, WEB, DB = 50001, 10100, 10200
VM1_IP, VM2_IP, CLIENT = "198.19.1.11", "198.19.2.12", "198.18.200.10"


def _topology(name: str) -> dict[str, Any]:
    return {"name": name, "tenants": {"t1": {"l3vni": L3VNI}},
            "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}, "dc2": {"servers": ["hv3"]}},
            "cugs": {"web": {"vni": WEB, "subnet": "198.19.1.0/24", "gateway": "198.19.1.1", "tenant": "t1"},
                     "db": {"vni": DB, "subnet": "198.19.2.0/24", "gateway": "198.19.2.1", "tenant": "t1"}},
            "wan": {"clients": {"c1": {"ip": CLIENT}}},
            "mobility": {"max_moves": 100, "window_s": 60},
            "vms": {"vm1": {"server": "hv1", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:11", "ip": VM1_IP}]},
                    "vm2": {"server": "hv2", "interfaces": [{"cug": "db", "mac": "02:00:00:02:00:12", "ip": VM2_IP}]}}}


def _vxlan_sniffer(ns: str, inner_src: str, inner_dst: str) -> Sniffer:
    """VXLAN frames leaving `ns`'s uplink whose inner packet goes from `inner_src` to `inner_dst`."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN

    def keep(eth: Any, outgoing: bool) -> bool:
        if not (outgoing and eth.haslayer(UDP) and eth[UDP].dport == names.VXLAN_UDP_PORT and eth.haslayer(VXLAN)):
            return False
        inner = eth[VXLAN].payload
        return inner.haslayer(IP) and inner[IP].src == inner_src and inner[IP].dst == inner_dst

    return Sniffer(ns, "uplink", keep, seconds=30)


def _ping(ns: str, ip: str, count: int = 3) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", ip], check=True,
                   capture_output=True, timeout=30)


def _routed_via(frames: list[Any]) -> set[tuple[int, str, str]]:
    """(VNI, outer destination, inner destination MAC) of captured VXLAN frames."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    return {(f[VXLAN].vni, f[IP].dst, f[VXLAN].payload[Ether].dst.lower()) for f in frames}


def _icmp_from(src: str) -> Any:
    from scapy.layers.inet import ICMP, IP

    return lambda eth, outgoing: outgoing and eth.haslayer(ICMP) and eth[IP].src == src


def _poll(cond: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_routed_traffic_crosses_the_l3vni_and_follows_a_move(host: Any, lab_name: Any, lab_namespaces: Any) -> None:
    name = lab_name("t-eirb")
    topo = _topology(name)
    with evpn_lab(topo, lab_namespaces, host, FrrEvpnIrb()) as (lab, cp):
        vtep = {s: lab.plan.nodes[s].vtep for s in ("hv1", "hv2", "hv3")}
        recorded = recorded_frr(cp.workdir)
        # each VTEP's and border's zebra runs in netns-VRF mode and sees, as /run/netns, only its own
        # node's tenant namespace, named after the tenant
        for r in recorded:
            node = r["instdir"].rsplit("/", 1)[-1]
            if node in ("hv1", "hv2", "hv3", "dc1br", "dc2br"):
                seen = subprocess.run(["nsenter", "-t", str(r["pid"]), "-m", "ls", "/run/netns"], text=True,
                                      capture_output=True, check=True).stdout.split()
                assert seen == ["t1"], (r["label"], seen)
                argv = open(f"/proc/{r['pid']}/cmdline", "rb").read().split(b"\0")
                assert (b"-n" in argv) == (r["daemon"] == "zebra"), argv

        # vm2 (db, hv2) -> vm1 (web, hv1): routed at hv2 into the L3 VNI, to hv1's router MAC
        sniff = _vxlan_sniffer(f"rn-{name}-hv2", VM2_IP, VM1_IP)
        _ping(f"rn-{name}-vm2", VM1_IP)
        seen = _routed_via(sniff.stop())
        assert seen == {(L3VNI, vtep["hv1"], names.router_mac(vtep["hv1"]))}, seen
        assert cp.located(lab, "vm1", "hv1") and not cp.located(lab, "vm1", "hv3")
        assert cp.wan_routes().get(f"{VM1_IP}/32") == "dc1br"
        _ping(f"rn-{name}-c1", VM1_IP)  # the WAN client, through dc1's border

        rec = lab.migrate("vm1", "hv3", pause_ms=0, wait=15)
        assert rec["converged_ms"] is not None, f"FRR never located vm1 on hv3: {rec}"
        assert cp.located(lab, "vm1", "hv3") and not cp.located(lab, "vm1", "hv1")
        # the route followed: hv2 now routes to hv3 over the L3 VNI, and the WAN enters through dc2's border
        sniff = _vxlan_sniffer(f"rn-{name}-hv2", VM2_IP, VM1_IP)
        _ping(f"rn-{name}-vm2", VM1_IP)
        seen = _routed_via(sniff.stop())
        assert seen == {(L3VNI, vtep["hv3"], names.router_mac(vtep["hv3"]))}, seen
        assert _poll(lambda: cp.wan_routes().get(f"{VM1_IP}/32") == "dc2br", 10), cp.wan_routes()
        _ping(f"rn-{name}-c1", VM1_IP)
        # and out, through the border of its data center now (each VTEP prefers its own DC's default route)
        out = {b: Sniffer(f"rn-{name}-{b}.t-t1", names.HANDOFF, _icmp_from(VM1_IP), seconds=30)
               for b in ("dc1br", "dc2br")}
        _ping(f"rn-{name}-vm1", CLIENT)
        crossed = {b: len(s.stop()) for b, s in out.items()}
        assert crossed["dc1br"] == 0 and crossed["dc2br"] >= 3, crossed
    left = [r["label"] for r in recorded if frr_still_runs(r)]
    assert not left, f"FRR processes of lab {name} still run after lab.down(): {left}"
    assert not os.path.exists(f"/run/roamnet/{name}"), "the default workdir was not removed"
