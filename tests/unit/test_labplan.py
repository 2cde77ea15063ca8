import ipaddress

import pytest
from scapy.layers.l2 import ARP, Ether

from roamnet.dataplane.announce import parse_announcement, rarp_frame
from roamnet.intent.model import load_topology
from roamnet.intent.scenario import packaged_example
from roamnet.lab.plan import Iface, Link, build_plan, check_addresses, check_isolation, underlay_prefixes

TOPO = load_topology(packaged_example("two-dc.yaml"))


def test_plan_nodes_and_vteps():
    plan = build_plan(TOPO)
    servers = {n.name: n for n in plan.nodes.values() if n.kind == "server"}
    assert set(servers) == {"hv1", "hv2", "hv3", "hv4"}
    assert servers["hv1"].vtep == "198.18.1.1" and servers["hv2"].vtep == "198.18.1.3"
    assert servers["hv3"].vtep == "198.18.2.1"
    assert {n.kind for n in plan.nodes.values()} == {"server", "border", "dci", "wan", "vm"}
    assert all(n.ns.startswith("rn-two-dc-") for n in plan.nodes.values())
    assert len(plan.namespaces()) == len(set(plan.namespaces()))


def test_plan_addresses_in_benchmark_range_and_routed():
    plan = build_plan(TOPO)
    check_addresses(plan)
    for link in plan.links:
        a, b = ipaddress.ip_interface(link.a_if.address), ipaddress.ip_interface(link.b_if.address)
        assert a.network == b.network and a.network.prefixlen == 31  # routed point-to-point, no L2 stretch
        assert a.ip in ipaddress.ip_network("198.18.0.0/16")
    for node in plan.nodes.values():
        assert all(len(i) <= 15 for l in plan.links for i in (l.a_if.name, l.b_if.name))
        for r in node.routes:
            assert ipaddress.ip_address(r.gateway) in ipaddress.ip_network("198.18.0.0/16")


ROUTED = load_topology(packaged_example("routed.yaml"))


def test_plan_tenant_namespaces_handoffs_and_clients():
    plan = build_plan(ROUTED)
    check_addresses(plan)
    vrfs = {n.name: n for n in plan.nodes.values() if n.kind == "vrf"}
    assert set(vrfs) == {f"{x}.t-t1" for x in ("hv1", "hv2", "hv3", "hv4", "dc1br", "dc2br")}
    assert plan.vrf("hv1", "t1").ns == "rn-routed-hv1.t-t1" and plan.vrf("hv1", "t1").vtep == "198.18.1.1"
    assert plan.nodes["dc1br"].vtep == "198.18.250.1"  # a border's VTEP: its address towards the DCI router
    border_side, wan_side = plan.handoff("dc2br", "t1")
    assert border_side.name == "wan" and wan_side.name == "dc2br-t1"
    a, b = ipaddress.ip_interface(border_side.address), ipaddress.ip_interface(wan_side.address)
    assert a.network == b.network and a.network.subnet_of(ipaddress.ip_network("198.18.251.0/24"))
    client = plan.nodes["client1"]
    assert client.kind == "client" and client.ns == "rn-routed-client1"
    assert client.routes[0].dst == "0.0.0.0/0" and client.routes[0].dev == "eth0"
    assert any(r.dst == "198.18.200.10/32" and r.dev == "c-client1" for r in plan.nodes["wan"].routes)
    assert len(plan.namespaces()) == len(set(plan.namespaces()))
    assert all(len(i.name) <= 15 for lk in plan.links for i in (lk.a_if, lk.b_if))


EXAMPLES = ("two-dc.yaml", "routed.yaml", "pods.yaml", "policy.yaml")  # the topologies (the others are scenarios)


@pytest.mark.parametrize("example", EXAMPLES)
def test_outside_world_and_underlay_share_no_link_route_or_address(example):
    """The WAN router (tenant handoffs, clients) and the DCI router (borders' underlay) are apart: no
    namespace is on both sides, the WAN router routes nothing into the underlay, the DCI router nothing
    of the tenants' or the clients'."""
    plan = build_plan(load_topology(packaged_example(example)))
    check_isolation(plan)
    underlay = [ipaddress.ip_network(p) for p in underlay_prefixes(plan)]
    assert ipaddress.ip_network("198.18.250.0/24").supernet_of(underlay[-1])  # the DCI links are underlay
    wan_links = [lk for lk in plan.links if "wan" in (lk.a, lk.b)]
    dci_links = [lk for lk in plan.links if "dci" in (lk.a, lk.b)]
    assert dci_links and all({plan.nodes[lk.a].kind, plan.nodes[lk.b].kind} == {"dci", "border"} for lk in dci_links)
    assert all({plan.nodes[lk.a].kind, plan.nodes[lk.b].kind} in ({"wan", "vrf"}, {"wan", "client"})
               for lk in wan_links)
    for r in plan.nodes["wan"].routes:
        assert not any(ipaddress.ip_network(r.dst).overlaps(n) for n in underlay), r
    for r in plan.nodes["dci"].routes:
        assert any(ipaddress.ip_network(r.dst).subnet_of(n) for n in underlay), r


def test_check_isolation_names_a_leak():
    plan = build_plan(ROUTED)
    leaky = type(plan)(plan.lab, plan.nodes, plan.links + [Link("wan", Iface("x", "198.18.253.0/31"),
                                                                   "dc1br", Iface("y", "198.18.253.1/31"))])
    with pytest.raises(ValueError, match=r"dc1br \(border\) is linked to the outside world through wan"):
        check_isolation(leaky)
    client = next(lk for lk in plan.links if lk.b == "client1")
    moved = [lk if lk is not client else Link(lk.a, lk.a_if, lk.b, Iface("eth0", "198.18.1.200/32"))
             for lk in plan.links]
    with pytest.raises(ValueError, match=r"client1: outside address 198.18.1.200/32 lies in the underlay's space"):
        check_isolation(type(plan)(plan.lab, plan.nodes, moved))


def test_rarp_frame_is_qemu_announce():
    frame = rarp_frame("02:00:00:01:00:11")
    pkt = Ether(frame)
    assert pkt.type == 0x8035 and pkt.dst == "ff:ff:ff:ff:ff:ff" and pkt.src == "02:00:00:01:00:11"
    arp = ARP(bytes(pkt.payload))
    assert arp.op == 3 and arp.hwsrc == "02:00:00:01:00:11" and arp.hwdst == "02:00:00:01:00:11"
    assert parse_announcement(frame) == "02:00:00:01:00:11"


def test_parse_announcement_garp_vs_ordinary_arp():
    garp = bytes(Ether(src="02:00:00:01:00:12", dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=1, hwsrc="02:00:00:01:00:12", psrc="198.19.1.12", pdst="198.19.1.12"))
    ask = bytes(Ether(src="02:00:00:01:00:12", dst="ff:ff:ff:ff:ff:ff") /
                ARP(op=1, hwsrc="02:00:00:01:00:12", psrc="198.19.1.12", pdst="198.19.1.11"))
    assert parse_announcement(garp) == "02:00:00:01:00:12"
    assert parse_announcement(ask) is None
    assert parse_announcement(b"\x00" * 20) is None
