"""Routing on the real kernel: the distributed anycast gateway (same IP and MAC on every server, its ARP
never on the overlay, the VM's ARP entry for it untouched by a move to another data center) and
symmetric IRB (between CUGs: routed on the VM's own server, NVE to NVE over the L3 VNI, no hair-pin)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Sniffer
from scapy.layers.inet import IP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN  # noqa: F401 - binds UDP 4789 so inner frames are parsed

ANYCAST = "02:52:4e:00:00:01"
WEB_GW, DB_GW = "198.19.1.1", "198.19.2.1"


def routed_topology(name: str, clients: bool = False) -> dict[str, Any]:
    """dc1: hv1, hv2; dc2: hv3. vm1 (web) and vm2 (db) on hv1, vm3 (db) on hv2, vm4 (web) on hv3."""
    topo: dict[str, Any] = {
        "name": name,
        "tenants": {"t1": {"l3vni": 50001}},
        "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}, "dc2": {"servers": ["hv3"]}},
        "cugs": {"web": {"vni": 10100, "subnet": "198.19.1.0/24", "gateway": WEB_GW, "tenant": "t1"},
                 "db": {"vni": 10200, "subnet": "198.19.2.0/24", "gateway": DB_GW, "tenant": "t1"}},
        "vms": {
            "vm1": {"server": "hv1", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:11", "ip": "198.19.1.11"}]},
            "vm2": {"server": "hv1", "interfaces": [{"cug": "db", "mac": "02:00:00:02:00:12", "ip": "198.19.2.12"}]},
            "vm3": {"server": "hv2", "interfaces": [{"cug": "db", "mac": "02:00:00:02:00:13", "ip": "198.19.2.13"}]},
            "vm4": {"server": "hv3", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:14", "ip": "198.19.1.14"}]},
        },
    }
    if clients:
        topo["wan"] = {"clients": {"client1": {"ip": "198.18.200.10"}}}
    return topo


def arp_for(ips: set[str]) -> Callable[[Ether, bool], bool]:
    return lambda e, out: ARP in e and e[ARP].op == 1 and e[ARP].pdst in ips


def ip_between(a: str, b: str) -> Callable[[Ether, bool], bool]:
    """An IPv4 packet between a and b, also inside a VXLAN packet (any IP layer of the frame)."""
    def keep(e: Ether, out: bool) -> bool:
        layer = e
        while layer is not None and layer.payload:
            if isinstance(layer, IP) and {layer.src, layer.dst} == {a, b}:
                return True
            layer = layer.payload
        return False
    return keep


def ping(host: Any, ns: str, dst: str, count: int = 20, interval: float = 0.01) -> tuple[int, str]:
    """(replies, output) of iputils ping in namespace `ns`."""
    out = host.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", dst],
                   timeout=30, check=False).stdout
    got = next((int(ln.split(",")[1].split()[0]) for ln in out.splitlines() if "received" in ln), 0)
    return got, out


def gateway_entry(host: Any, ns: str, ip: str) -> dict | None:
    return next((n for n in host.ip_json(ns, "neigh", "show", "dev", "eth0") if n.get("dst") == ip), None)


@pytest.fixture
def routed(lab_name, lab_up):
    def make(base: str, **kw: Any):
        return lab_up(routed_topology(lab_name(base)), wan_bgp=False, **kw)
    return make


def test_anycast_gateway_symmetric_irb_and_a_move_across_data_centers(routed, host):
    with routed("t-irb") as lab:
        ns = {n: f"rn-{lab.name}-{n}" for n in ("hv1", "hv2", "hv3", "vm1", "vm2", "vm3", "vm4")}
        vrf = {s: f"rn-{lab.name}-{s}.t-t1" for s in ("hv1", "hv2", "hv3", "dc1br")}
        # every VXLAN device of every NVE, for the whole test: no ARP for a gateway may cross the overlay
        overlay = [Sniffer(ns[s], dev, arp_for({WEB_GW, DB_GW}))
                   for s, dev in (("hv1", "vx10100"), ("hv1", "vx10200"), ("hv2", "vx10200"), ("hv3", "vx10100"))]
        assert not has_link(host, ns["hv2"], "vx10100") and not has_link(host, ns["hv3"], "vx10200")  # hv1: web, db; hv2: db; hv3: web (pruning: no segment without a VM)

        # the gateway answers on every server with the same anycast MAC
        for vm, gw in (("vm1", WEB_GW), ("vm2", DB_GW), ("vm3", DB_GW), ("vm4", WEB_GW)):
            got, out = ping(host, ns[vm], gw, count=3)
            assert got == 3, out
            assert gateway_entry(host, ns[vm], gw)["lladdr"] == ANYCAST

        # between CUGs on one server: routed there, nothing leaves hv1 (captured on its uplink and L3 VNI)
        uplink = Sniffer(ns["hv1"], "uplink", ip_between("198.19.1.11", "198.19.2.12"))  # to the fabric
        l3_hv1 = Sniffer(vrf["hv1"], "vx50001", ip_between("198.19.1.11", "198.19.2.12"))
        got, out = ping(host, ns["vm1"], "198.19.2.12", count=50)
        assert got == 50, out
        assert l3_hv1.stop() == [] and uplink.stop() == []

        # to another server: NVE to NVE on the L3 VNI (routed twice: TTL 62), never via a border
        l3_hv1 = Sniffer(vrf["hv1"], "vx50001", ip_between("198.19.1.11", "198.19.2.13"))
        l3_hv2 = Sniffer(vrf["hv2"], "vx50001", ip_between("198.19.1.11", "198.19.2.13"))
        l3_br = Sniffer(vrf["dc1br"], "vx50001", ip_between("198.19.1.11", "198.19.2.13"))
        l2_db = Sniffer(ns["hv1"], "vx10200", ip_between("198.19.1.11", "198.19.2.13"))
        got, out = ping(host, ns["vm1"], "198.19.2.13", count=50)
        assert got == 50 and "ttl=62" in out, out
        sent_hv1, seen_hv2 = l3_hv1.stop(), l3_hv2.stop()
        assert sum(out for out in (e[Ether].dst == "02:52:4e:01:01:03" for e in sent_hv1)) >= 50  # hv2's router MAC
        assert len(seen_hv2) >= 100  # requests in, replies out
        assert l3_br.stop() == [] and l2_db.stop() == []

        # the move: vm1 (web) hv1 (dc1) -> hv3 (dc2), under a ping to vm3 (db, hv2)
        before = gateway_entry(host, ns["vm1"], WEB_GW)
        on_vm = Sniffer(ns["vm1"], "eth0", lambda e, out: out and ARP in e and e[ARP].pdst == WEB_GW)
        pinger = threading.Thread(target=ping, args=(host, ns["vm1"], "198.19.2.13", 300, 0.005))
        pinger.start()
        time.sleep(0.3)
        rec = lab.migrate("vm1", "hv3")
        pinger.join(timeout=30)
        assert rec["dc_to"] == "dc2"
        got, out = ping(host, ns["vm1"], "198.19.2.13", count=20)
        assert got == 20 and "ttl=62" in out, out
        got, out = ping(host, ns["vm1"], WEB_GW, count=5)
        assert got == 5, out
        after = gateway_entry(host, ns["vm1"], WEB_GW)
        assert after["lladdr"] == before["lladdr"] == ANYCAST
        assert on_vm.stop() == []  # the VM sent no ARP for its gateway after the move
        # hv2 now routes to vm1 at hv3, straight
        routes = {r["dst"]: r for r in host.ip_json(vrf["hv2"], "route", "show")}
        assert routes["198.19.1.11"]["gateway"] == lab.plan.nodes["hv3"].vtep
        assert routes["default"]["gateway"] == lab.plan.nodes["dc1br"].vtep
        # hv1 hosts no web VM any more: its web segment and gateway went (pruning stays true)
        assert wait_gone(host, ns["hv1"], "g10100")
        for s in overlay:
            assert s.stop() == [], "an ARP request for a gateway crossed the overlay"


def has_link(host: Any, ns: str, dev: str) -> bool:
    return any(link.get("ifname") == dev for link in host.ip_json(ns, "link", "show"))


def wait_gone(host: Any, ns: str, dev: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not has_link(host, ns, dev):
            return True
        time.sleep(0.05)
    return False


def test_two_servers_in_one_cug_keep_the_gateway_off_the_overlay_after_an_agent_restart(routed, host):
    """A restarted agent finds the VRF as it left it: no change to apply, gateways still answer."""
    with routed("t-irb-rs") as lab:
        first = lab.restart_agent("hv1")
        assert first["changes_on_restart"] == []
        got, out = ping(host, f"rn-{lab.name}-vm1", "198.19.2.13", count=5)
        assert got == 5, out
