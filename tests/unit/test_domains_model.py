"""L2 physical domains (§3.1) and VLANs in the intent model: ToR and trivial domains, guest VLANs
on VM interfaces (trunk NICs), VLAN exhaustion at start, and streams addressed to an IP."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from roamnet.intent.model import DomainInfo, IntentError, Topology, load_topology, parse_topology, topology_json_schema
from roamnet.intent.scenario import parse_scenario

PODS = """\
name: pods
datacenters:
  dc1:
    servers: [hv1]
    domains:
      pod1: {tor: tor1, servers: [hv2, hv3], vlans: "100-199"}
      rack1: {servers: [hv4]}
  dc2:
    domains:
      pod2: {tor: tor2, servers: [hv5]}
tenants:
  t1: {l3vni: 50001}
cugs:
  web: {vni: 10100, subnet: 198.19.1.0/24, gateway: 198.19.1.1, tenant: t1}
  db: {vni: 10200, subnet: 198.19.2.0/24, gateway: 198.19.2.1, tenant: t1}
  lan: {vni: 10300, subnet: 198.19.3.0/24}
vms:
  vm1:
    server: hv2
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:01", ip: 198.19.1.11}
      - {cug: db, mac: "02:00:00:02:00:01", ip: 198.19.2.11, vlan: 20}
      - {cug: lan, mac: "02:00:00:02:00:01", ip: 198.19.3.11, vlan: 30}
  vm2:
    server: hv5
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:02", ip: 198.19.1.12}
  vm3:
    server: hv1
    interfaces:
      - {cug: lan, mac: "02:00:00:03:00:03", ip: 198.19.3.13}
  vm4:
    server: hv4
    interfaces:
      - {cug: db, mac: "02:00:00:02:00:04", ip: 198.19.2.14}
wan:
  clients:
    c1: {ip: 198.18.200.1}
"""


def pods() -> dict[str, Any]:
    return yaml.safe_load(PODS)


def topo() -> Topology:
    return parse_topology(pods())


def refused(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> IntentError:
    """Write PODS, edited, to bad.yaml; load it and return the error."""
    data = pods()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(IntentError) as info:
        load_topology(path)
    return info.value


def assert_problem(err: IntentError, path: str, fragment: str) -> None:
    reasons = [reason for p, reason in err.problems if p == path]
    assert reasons, f"no problem at {path}; got {err.problems}"
    assert any(fragment in r for r in reasons), f"{fragment!r} not in {reasons}"
    assert f"{err.source}: {path}: " in str(err)


def dc(d: dict[str, Any], name: str = "dc1") -> dict[str, Any]:
    return d["datacenters"][name]


def domain(d: dict[str, Any], name: str = "pod1", dc_name: str = "dc1") -> dict[str, Any]:
    return dc(d, dc_name)["domains"][name]


def iface(d: dict[str, Any], vm: str = "vm1", i: int = 0) -> dict[str, Any]:
    return d["vms"][vm]["interfaces"][i]


def rename_domain(dc_name: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        doms = dc(d, dc_name)["domains"]
        dc(d, dc_name)["domains"] = {new if k == old else k: v for k, v in doms.items()}
    return edit


POD1 = DomainInfo("pod1", "dc1", "tor1", ("hv2", "hv3"), (100, 199))
POD2 = DomainInfo("pod2", "dc2", "tor2", ("hv5",), (2, 4094))


# ---------------------------------------------------------------- good input


def test_domains_of_both_kinds_and_direct_servers() -> None:
    t = topo()
    assert t.server_dc() == {"hv1": "dc1", "hv2": "dc1", "hv3": "dc1", "hv4": "dc1", "hv5": "dc2"}
    assert list(t.server_dc()) == ["hv1", "hv2", "hv3", "hv4", "hv5"]
    assert t.domains() == {
        "hv1": DomainInfo("hv1", "dc1", None, ("hv1",), None),
        "pod1": POD1,
        "rack1": DomainInfo("rack1", "dc1", None, ("hv4",), None),
        "pod2": POD2,
    }
    assert list(t.domains()) == ["hv1", "pod1", "rack1", "pod2"]
    assert t.tors() == {"tor1": POD1, "tor2": POD2}
    assert t.domain_of("hv3") == POD1 and t.domain_of("hv5") == POD2
    assert t.domain_of("hv1").trivial and t.domain_of("hv1").name == "hv1"
    assert t.domain_of("hv4").name == "rack1" and t.domain_of("hv4").vlans is None
    assert not POD1.trivial
    assert t.node_names() == {"hv1", "hv2", "hv3", "hv4", "hv5", "tor1", "tor2", "dc1br", "dc2br",
                              "vm1", "vm2", "vm3", "vm4", "c1"}


def test_domain_of_a_non_server() -> None:
    t = topo()
    for name in ("tor1", "pod1", "hv9"):
        with pytest.raises(KeyError):
            t.domain_of(name)


def test_plain_servers_are_trivial_domains() -> None:
    t = parse_topology({"name": "flat", "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}}})
    assert t.domains() == {s: DomainInfo(s, "dc1", None, (s,), None) for s in ("hv1", "hv2")}
    assert t.tors() == {}
    assert t.datacenters["dc1"].domains == {}


@pytest.mark.parametrize("vlans, expected", [
    ("100-199", (100, 199)), (" 7 - 9 ", (7, 9)), (7, (7, 7)), ("4094", (4094, 4094)), ("1-4094", (1, 4094)),
])
def test_vlan_range_forms(vlans: object, expected: tuple[int, int]) -> None:
    d = pods()
    domain(d, "pod2", "dc2")["vlans"] = vlans  # pod2 needs one VLAN (web)
    t = parse_topology(d)
    assert t.domains()["pod2"].vlans == expected
    assert t.datacenters["dc2"].domains["pod2"].vlans == f"{expected[0]}-{expected[1]}"  # normalised


def test_guest_vlans_and_nics() -> None:
    t = topo()
    assert [i.vlan for i in t.vms["vm1"].interfaces] == [None, 20, 30]
    assert t.nics("vm1") == [(0,), (1, 2)]
    assert t.nics("vm2") == [(0,)]
    assert t.vms["vm1"].interface_in("lan") is t.vms["vm1"].interfaces[2]


def test_nics_in_order_of_first_appearance() -> None:
    d = pods()
    d["vms"]["vm1"]["interfaces"] = [
        {"cug": "web", "mac": "02:00:00:02:00:01", "ip": "198.19.1.11", "vlan": 10},
        {"cug": "lan", "mac": "02:00:00:09:00:01", "ip": "198.19.3.11"},
        {"cug": "db", "mac": "02:00:00:02:00:01", "ip": "198.19.2.11", "vlan": 20},
    ]
    assert parse_topology(d).nics("vm1") == [(0, 2), (1,)]


def test_single_interface_may_carry_a_guest_vlan() -> None:
    d = pods()
    iface(d, "vm2")["vlan"] = 4094
    assert parse_topology(d).vms["vm2"].interfaces[0].vlan == 4094


def test_vlan_range_exactly_full_is_fine() -> None:
    d = pods()
    domain(d)["vlans"] = "100-102"  # web, db, lan
    assert parse_topology(d).domains()["pod1"].vlans == (100, 102)


def test_round_trip_through_json_dump() -> None:
    t = topo()
    again = parse_topology(t.model_dump(mode="json", by_alias=True))
    assert again == t
    assert again.domains() == t.domains()


def test_json_schema_describes_domains_and_vlans() -> None:
    schema = topology_json_schema()
    defs = schema["$defs"]
    assert set(defs["Datacenter"]["properties"]) == {"servers", "domains", "border"}
    assert set(defs["Domain"]["properties"]) == {"tor", "servers", "vlans"}
    assert defs["Domain"]["required"] == ["servers"]
    assert "description" in defs["Domain"]["properties"]["vlans"]
    vlan = defs["VmInterface"]["properties"]["vlan"]
    assert {"type": "integer", "minimum": 1, "maximum": 4094} in vlan["anyOf"]


# ---------------------------------------------------------------- bad domains


def test_datacenter_without_any_server(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["datacenters"].update(dc2={}))
    assert_problem(err, "datacenters.dc2", "datacenter dc2 has no server")


def test_datacenter_with_empty_server_list(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["datacenters"].update(dc2={"servers": [], "domains": {}}))
    assert_problem(err, "datacenters.dc2", "datacenter dc2 has no server")


def test_domain_without_servers(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: domain(d, "rack1").update(servers=[]))
    assert_problem(err, "datacenters.dc1.domains.rack1.servers", "at least 1 item")


def test_unknown_key_in_domain(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: domain(d).update(vlan="100-199"))
    assert_problem(err, "datacenters.dc1.domains.pod1.vlan", "unknown key")


@pytest.mark.parametrize("edit, path, fragment", [
    (lambda d: domain(d)["servers"].append("hv2"), "datacenters.dc1.domains.pod1.servers[2]",
     "server 'hv2' is listed twice in dc1 (also at datacenters.dc1.domains.pod1.servers[0])"),
    (lambda d: domain(d, "rack1")["servers"].append("hv1"), "datacenters.dc1.domains.rack1.servers[1]",
     "server 'hv1' is listed twice in dc1 (also at datacenters.dc1.servers[0])"),
    (lambda d: domain(d, "rack1")["servers"].append("hv3"), "datacenters.dc1.domains.rack1.servers[1]",
     "server 'hv3' is listed twice in dc1 (also at datacenters.dc1.domains.pod1.servers[1])"),
    (lambda d: domain(d, "pod2", "dc2")["servers"].append("hv1"), "datacenters.dc2.domains.pod2.servers[1]",
     "server 'hv1' is already in datacenter dc1 (also at datacenters.dc1.servers[0])"),
    (lambda d: dc(d, "dc2").update(servers=["hv4"]), "datacenters.dc2.servers[0]",
     "server 'hv4' is already in datacenter dc1 (also at datacenters.dc1.domains.rack1.servers[0])"),
])
def test_server_listed_twice(tmp_path: Path, edit: Callable[[dict[str, Any]], None], path: str,
                             fragment: str) -> None:
    assert_problem(refused(tmp_path, edit), path, fragment)


@pytest.mark.parametrize("edit, path, fragment", [
    (lambda d: domain(d).update(tor="hv1"), "datacenters.dc1.domains.pod1.tor",
     "ToR name 'hv1' is already used at datacenters.dc1.servers[0]"),
    (lambda d: domain(d).update(tor="hv4"), "datacenters.dc1.domains.rack1.servers[0]",
     "server name 'hv4' is already used at datacenters.dc1.domains.pod1.tor"),
    (lambda d: domain(d).update(tor="hv3"), "datacenters.dc1.domains.pod1.servers[1]",
     "server name 'hv3' is already used at datacenters.dc1.domains.pod1.tor"),
    (lambda d: domain(d, "pod2", "dc2").update(tor="tor1"), "datacenters.dc2.domains.pod2.tor",
     "ToR name 'tor1' is already used at datacenters.dc1.domains.pod1.tor"),
    (lambda d: domain(d, "pod2", "dc2").update(tor="dc1br"), "datacenters.dc2.domains.pod2.tor",
     "ToR name 'dc1br' is already used at datacenters.dc1 (default border)"),
    (lambda d: dc(d).update(border="tor1"), "datacenters.dc1.border",
     "border name 'tor1' is already used at datacenters.dc1.domains.pod1.tor"),
    (lambda d: d["vms"].update(tor2=d["vms"].pop("vm4")), "vms.tor2",
     "VM name 'tor2' is already used at datacenters.dc2.domains.pod2.tor"),
    (lambda d: d["wan"]["clients"].update(tor1=d["wan"]["clients"].pop("c1")), "wan.clients.tor1",
     "WAN client name 'tor1' is already used at datacenters.dc1.domains.pod1.tor"),
])
def test_tor_name_clash(tmp_path: Path, edit: Callable[[dict[str, Any]], None], path: str, fragment: str) -> None:
    assert_problem(refused(tmp_path, edit), path, fragment)


@pytest.mark.parametrize("tor, fragment", [
    ("Tor1", "invalid name 'Tor1': must match ^[a-z][a-z0-9_]{0,10}$"),
    ("a_very_long_tor", "invalid name 'a_very_long_tor'"),
    ("wan", "'wan' is a reserved name"),
])
def test_bad_tor_name(tmp_path: Path, tor: str, fragment: str) -> None:
    assert_problem(refused(tmp_path, lambda d: domain(d).update(tor=tor)), "datacenters.dc1.domains.pod1.tor", fragment)


@pytest.mark.parametrize("edit, path, fragment", [
    (rename_domain("dc2", "pod2", "pod1"), "datacenters.dc2.domains.pod1",
     "domain name 'pod1' is already used at datacenters.dc1.domains.pod1"),
    (rename_domain("dc1", "rack1", "pod1x"), None, None),  # a fresh name is fine
    (rename_domain("dc1", "rack1", "hv1"), "datacenters.dc1.domains.hv1",
     "domain name 'hv1' is already a node name (at datacenters.dc1.servers[0])"),
    (rename_domain("dc1", "rack1", "hv5"), "datacenters.dc1.domains.hv5",
     "domain name 'hv5' is already a node name (at datacenters.dc2.domains.pod2.servers[0])"),
    (rename_domain("dc1", "pod1", "tor1"), "datacenters.dc1.domains.tor1",
     "domain name 'tor1' is already a node name (at datacenters.dc1.domains.tor1.tor)"),
    (rename_domain("dc2", "pod2", "vm1"), "datacenters.dc2.domains.vm1",
     "domain name 'vm1' is already a node name (at vms.vm1)"),
    (rename_domain("dc2", "pod2", "c1"), "datacenters.dc2.domains.c1",
     "domain name 'c1' is already a node name (at wan.clients.c1)"),
    (rename_domain("dc2", "pod2", "dc1br"), "datacenters.dc2.domains.dc1br",
     "domain name 'dc1br' is already a node name (at datacenters.dc1 (default border))"),
    (rename_domain("dc2", "pod2", "Pod2"), "datacenters.dc2.domains.Pod2", "invalid name 'Pod2'"),
])
def test_domain_name(tmp_path: Path, edit: Callable[[dict[str, Any]], None], path: str | None,
                     fragment: str | None) -> None:
    if path is None:
        data = pods()
        edit(data)
        assert "pod1x" in parse_topology(data).domains()
        return
    assert fragment is not None
    assert_problem(refused(tmp_path, edit), path, fragment)


@pytest.mark.parametrize("vlans, fragment", [
    ("abc", "malformed VLAN range 'abc'"),
    ("100-", "malformed VLAN range '100-'"),
    ("100..199", "malformed VLAN range"),
    ("-5", "malformed VLAN range"),
    ("200-100", "VLAN range 200-100 is empty"),
    ("0-10", "VLAN range 0-10 is outside 1..4094"),
    ("4000-4095", "VLAN range 4000-4095 is outside 1..4094"),
    (5000, "VLAN range 5000-5000 is outside 1..4094"),
    (0, "outside 1..4094"),
    (True, 'a VLAN range must be a string "lo-hi" or one VLAN ID, got bool'),
    ([100, 199], "got list"),
    (1.5, "got float"),
])
def test_malformed_vlan_range(tmp_path: Path, vlans: object, fragment: str) -> None:
    err = refused(tmp_path, lambda d: domain(d).update(vlans=vlans))
    assert_problem(err, "datacenters.dc1.domains.pod1.vlans", fragment)


def test_vlans_on_a_trivial_domain(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: domain(d, "rack1").update(vlans="10-20"))
    assert_problem(err, "datacenters.dc1.domains.rack1.vlans", "only a domain with a tor allocates VLANs")


def test_vm_on_a_tor(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["vms"]["vm2"].update(server="tor1"))
    assert_problem(err, "vms.vm2.server",
                   "tor1 is the ToR switch of domain pod1, and a ToR hosts no VMs (put the VM on one of its "
                   "servers: hv2, hv3)")


@pytest.mark.parametrize("server", ["hv9", "pod1", "rack1"])
def test_vm_on_unknown_server(tmp_path: Path, server: str) -> None:
    err = refused(tmp_path, lambda d: d["vms"]["vm2"].update(server=server))
    assert_problem(err, "vms.vm2.server", f"unknown server {server!r}")


# ---------------------------------------------------------------- bad guest VLANs and NICs


@pytest.mark.parametrize("vlan, fragment", [
    (0, "VLAN ID must be in 1..4094, got 0"),
    (4095, "VLAN ID must be in 1..4094, got 4095"),
    ("10", "valid integer"),
    (True, "valid integer"),
])
def test_bad_guest_vlan(tmp_path: Path, vlan: object, fragment: str) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm2").update(vlan=vlan))
    assert_problem(err, "vms.vm2.interfaces[0].vlan", fragment)


def test_trunk_member_without_vlan(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm1", 1).pop("vlan"))
    assert_problem(err, "vms.vm1.interfaces[1].vlan",
                   "interfaces[1], interfaces[2] share MAC 02:00:00:02:00:01: they are one NIC carrying several "
                   "guest VLANs, so each needs a `vlan`")
    assert [p for p, _ in err.problems] == ["vms.vm1.interfaces[1].vlan"]


def test_trunk_without_any_vlan(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        iface(d, "vm1", 1).pop("vlan")
        iface(d, "vm1", 2).pop("vlan")
    err = refused(tmp_path, edit)
    assert [p for p, _ in err.problems] == ["vms.vm1.interfaces[1].vlan", "vms.vm1.interfaces[2].vlan"]


def test_trunk_duplicate_vlan(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm1", 2).update(vlan=20))
    assert_problem(err, "vms.vm1.interfaces[2].vlan",
                   "guest VLAN 20 is already used on this NIC (MAC 02:00:00:02:00:01) by interfaces[1]")


def test_same_vlan_on_different_nics_is_fine() -> None:
    d = pods()
    iface(d, "vm1", 0)["vlan"] = 20
    assert parse_topology(d).vms["vm1"].interfaces[0].vlan == 20


def test_trunk_duplicate_cug(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm1", 2).update(cug="db", ip="198.19.2.12"))
    assert_problem(err, "vms.vm1.interfaces[2].cug", "vm1 already has an interface in CUG db")


def test_two_vms_sharing_a_mac(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm2").update(mac="02:00:00:02:00:01", vlan=20))
    assert_problem(err, "vms.vm2.interfaces[0].mac",
                   "duplicate MAC 02:00:00:02:00:01 (also at vms.vm1.interfaces[1].mac")


# ---------------------------------------------------------------- VLAN exhaustion at start


def test_vlan_exhaustion_at_start(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: domain(d).update(vlans="100-101"))
    assert_problem(err, "datacenters.dc1.domains.pod1.vlans",
                   "domain pod1 runs out of VLANs: its range 100-101 holds 2, but 3 CUGs need a VLAN at start "
                   "(web, db, lan)")


def test_vlan_exhaustion_counts_distinct_cugs_of_all_servers(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        domain(d, "pod2", "dc2")["vlans"] = 1
        d["vms"]["vm3"]["server"] = "hv5"  # lan, next to vm2 (web) in pod2
    err = refused(tmp_path, edit)
    assert_problem(err, "datacenters.dc2.domains.pod2.vlans",
                   "its range 1-1 holds 1, but 2 CUGs need a VLAN at start (web, lan)")


def test_vlan_range_counts_a_cug_once() -> None:
    d = pods()
    domain(d, "pod2", "dc2")["vlans"] = 1
    d["vms"]["vm1"]["server"] = "hv1"
    d["vms"]["vm5"] = {"server": "hv5", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:05", "ip": "198.19.1.15"}]}
    assert parse_topology(d).domains()["pod2"].vlans == (1, 1)


def test_trivial_domains_need_no_vlans() -> None:
    d = pods()
    d["vms"]["vm1"]["server"] = "hv4"  # rack1 (no tor): three CUGs, no range
    domain(d)["vlans"] = 7
    assert parse_topology(d).domains()["pod1"].vlans == (7, 7)


# ---------------------------------------------------------------- streams


def scenario(*streams: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"topology": pods(), "duration": 5, "streams": list(streams), "steps": steps or []}


def stream(frm: str, to: str) -> dict[str, Any]:
    return {"name": "s", "from": frm, "to": to, "proto": "udp"}


def scenario_refused(*streams: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> IntentError:
    with pytest.raises(IntentError) as info:
        parse_scenario(scenario(*streams, steps=steps), "s.yaml")
    return info.value


A = IPv4Address


@pytest.mark.parametrize("frm, to, receiver, expected", [
    ("vm2", "vm1", "vm1", (A("198.19.1.12"), A("198.19.1.11"), "web")),  # by name, as before
    ("vm4", "vm1", "vm1", (A("198.19.2.14"), A("198.19.2.11"), "db")),
    ("vm3", "vm1", "vm1", (A("198.19.3.13"), A("198.19.3.11"), "lan")),
    ("vm3", "198.19.3.11", "vm1", (A("198.19.3.13"), A("198.19.3.11"), "lan")),  # an interface in a shared CUG
    ("vm2", "198.19.2.11", "vm1", (A("198.19.1.12"), A("198.19.2.11"), "tenant:t1")),  # routed to that interface
    ("vm2", "198.19.2.14", "vm4", (A("198.19.1.12"), A("198.19.2.14"), "tenant:t1")),
    ("vm1", "198.19.1.12", "vm2", (A("198.19.1.11"), A("198.19.1.12"), "web")),
    ("vm2", "198.18.200.1", "c1", (A("198.19.1.12"), A("198.18.200.1"), "wan")),  # a WAN client's address
    ("c1", "198.19.2.11", "vm1", (A("198.18.200.1"), A("198.19.2.11"), "wan")),  # that interface, not the first
    ("c1", "vm1", "vm1", (A("198.18.200.1"), A("198.19.1.11"), "wan")),
])
def test_stream_to_forms(frm: str, to: str, receiver: str, expected: tuple[IPv4Address, IPv4Address, str]) -> None:
    s = parse_scenario(scenario(stream(frm, to)))
    st = s.streams[0]
    assert st.to == to  # kept as written
    assert st.receiver(s.topology) == receiver
    assert st.endpoints(s.topology) == expected


def test_stream_target() -> None:
    s = parse_scenario(scenario(stream("vm3", "198.19.3.11")))
    assert s.streams[0].target(s.topology) == ("vm1", 2)
    s.streams[0].to = "198.18.200.1"
    assert s.streams[0].target(s.topology) == ("c1", None)
    s.streams[0].to = "vm2"
    assert s.streams[0].target(s.topology) == ("vm2", None)


@pytest.mark.parametrize("frm, to, fragment", [
    ("vm2", "198.19.9.9", "unknown IP address 198.19.9.9: no VM interface nor WAN client has it"),
    ("vm2", "198.19.1.1", "unknown IP address 198.19.1.1"),  # a gateway is no endpoint
    ("vm2", "vm9", "unknown VM or WAN client 'vm9'"),
    ("vm2", "hv1", "unknown VM or WAN client 'hv1'"),
    ("vm2", "198.19.3.11", "vm2 cannot reach 198.19.3.11 (vm1 interfaces[2]): it has no interface in CUG lan "
                           "(an L2-only CUG)"),
    ("vm3", "198.19.2.11", "vm3 cannot reach 198.19.2.11 (vm1 interfaces[1]): it has no interface in CUG db "
                           "nor in another CUG of tenant t1"),
    ("c1", "198.19.3.11", "c1 can only reach VM interfaces in a routed CUG (one with a gateway and a tenant); "
                          "198.19.3.11 (vm1 interfaces[2]) is in L2-only CUG lan"),
    ("c1", "198.18.200.1", "a stream needs two different nodes (from and to are both c1)"),
    ("vm1", "198.19.3.11", "a stream needs two different nodes (from and to are both vm1)"),
])
def test_bad_stream_to(frm: str, to: str, fragment: str) -> None:
    err = scenario_refused(stream(frm, to))
    assert_problem(err, "streams[0].to", fragment)


def test_stream_from_an_address_is_refused() -> None:
    err = scenario_refused(stream("198.19.1.12", "vm1"))
    assert_problem(err, "streams[0].from", "unknown VM or WAN client '198.19.1.12' (`from:` names a VM or a WAN "
                                           "client, not an address)")


def test_both_ends_unknown_are_both_reported() -> None:
    err = scenario_refused(stream("vm9", "198.19.9.9"))
    assert [p for p, _ in err.problems] == ["streams[0].from", "streams[0].to"]


def test_step_to_a_tor() -> None:
    err = scenario_refused(steps=[{"at": 1, "migrate": "vm2", "to": "tor1"}])
    assert_problem(err, "steps[0].to", "tor1 is the ToR switch of domain pod1, and a ToR hosts no VMs "
                                       "(migrate to one of its servers: hv2, hv3)")


def test_step_to_a_domain_server() -> None:
    s = parse_scenario(scenario(steps=[{"at": 1, "migrate": "vm2", "to": "hv3"}, {"at": 2, "migrate": "vm2",
                                                                                   "to": "hv4"}]))
    assert [st.to for st in s.steps] == ["hv3", "hv4"]
