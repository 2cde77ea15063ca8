"""Tenants (distributed anycast gateway, symmetric IRB) and WAN clients: the topology keys,
their cross-checks, the helpers, and scenario streams routed between CUGs or to the WAN."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from roamnet.intent.model import (
    WAN_CLIENT_RANGE,
    IntentError,
    WanClient,
    load_topology,
    parse_topology,
    topology_json_schema,
)
from roamnet.intent.scenario import Stream, parse_scenario
from roamnet.names import DEFAULT_ANYCAST_MAC, RESERVED_MAC_PREFIX

EXAMPLES = Path(str(resources.files("roamnet").joinpath("examples")))

ROUTED = """\
name: routed
tenants:
  t1: {l3vni: 50001}
  t2: {l3vni: 50002}
datacenters:
  dc1: {servers: [hv1, hv2]}
  dc2: {servers: [hv3], border: edge2}
cugs:
  web: {vni: 10100, subnet: 198.19.1.0/24, gateway: 198.19.1.1, tenant: t1}
  db: {vni: 10200, subnet: 198.19.2.0/24, gateway: 198.19.2.1, tenant: t1}
  lab: {vni: 10300, subnet: 198.19.3.0/24}
  ops: {vni: 10400, subnet: 198.19.4.0/24, gateway: 198.19.4.1, tenant: t2}
  mgmt: {vni: 10500, subnet: 198.19.5.0/24, gateway: 198.19.5.1, tenant: t2}
vms:
  vm1:
    server: hv1
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:11", ip: 198.19.1.11}
  vm2:
    server: hv3
    interfaces:
      - {cug: db, mac: "02:00:00:02:00:12", ip: 198.19.2.12}
  vm3:
    server: hv2
    interfaces:
      - {cug: lab, mac: "02:00:00:03:00:13", ip: 198.19.3.13}
  vm4:
    server: hv3
    interfaces:
      - {cug: lab, mac: "02:00:00:03:00:14", ip: 198.19.3.14}
      - {cug: db, mac: "02:00:00:02:00:14", ip: 198.19.2.14}
  vm5:
    server: hv2
    interfaces:
      - {cug: ops, mac: "02:00:00:04:00:15", ip: 198.19.4.15}
  vm6:
    server: hv1
    interfaces:
      - {cug: ops, mac: "02:00:00:04:00:16", ip: 198.19.4.16}
      - {cug: web, mac: "02:00:00:01:00:16", ip: 198.19.1.16}
  vm7:
    server: hv3
    interfaces:
      - {cug: db, mac: "02:00:00:02:00:17", ip: 198.19.2.17}
      - {cug: mgmt, mac: "02:00:00:05:00:17", ip: 198.19.5.17}
wan:
  clients:
    client1: {ip: 198.18.200.10}
    client2: {ip: 198.18.200.11}
"""


def routed() -> dict[str, Any]:
    return yaml.safe_load(ROUTED)


def refused(edit: Callable[[dict[str, Any]], None]) -> IntentError:
    data = routed()
    edit(data)
    with pytest.raises(IntentError) as info:
        parse_topology(data, "t.yaml")
    return info.value


def assert_problem(err: IntentError, path: str, reason: str) -> None:
    """`reason` (a fragment of it) is reported at exactly `path`, and shown as `source: path: reason`."""
    reasons = [r for p, r in err.problems if p == path]
    assert reasons, f"no problem at {path}; got {err.problems}"
    assert any(reason in r for r in reasons), f"{reason!r} not in {reasons}"
    assert any(line.startswith(f"{err.source}: {path}: ") and reason in line for line in str(err).splitlines())


def iface(data: dict[str, Any], vm: str = "vm1", i: int = 0) -> dict[str, Any]:
    return data["vms"][vm]["interfaces"][i]


def rename(section: dict[str, Any], old: str, new: str) -> None:
    items = list(section.items())
    section.clear()
    section.update((new if k == old else k, v) for k, v in items)


def clients(d: dict[str, Any]) -> dict[str, Any]:
    return d["wan"]["clients"]


# ---------------------------------------------------------------- good input


def test_routed_topology_loads() -> None:
    t = parse_topology(routed())
    assert {n: x.l3vni for n, x in t.tenants.items()} == {"t1": 50001, "t2": 50002}
    assert t.anycast_gateway_mac == DEFAULT_ANYCAST_MAC == "02:52:4e:00:00:01"
    assert str(t.cugs["web"].gateway) == "198.19.1.1" and t.cugs["web"].tenant == "t1"
    assert t.cugs["lab"].gateway is None and t.cugs["lab"].tenant is None
    assert t.wan is not None
    assert t.wan_clients() == {"client1": WanClient(ip=IPv4Address("198.18.200.10")),
                               "client2": WanClient(ip=IPv4Address("198.18.200.11"))}
    assert list(t.wan_clients()) == ["client1", "client2"]


def test_target_yaml_from_the_issue_loads() -> None:
    t = parse_topology(yaml.safe_load("""\
name: issue
tenants:
  t1: {l3vni: 50001}
anycast_gateway_mac: "02:52:4e:00:00:01"
cugs:
  web: {vni: 10100, subnet: 198.19.1.0/24, gateway: 198.19.1.1, tenant: t1}
  db:  {vni: 10200, subnet: 198.19.2.0/24, gateway: 198.19.2.1, tenant: t1}
  lab: {vni: 10300, subnet: 198.19.3.0/24}
datacenters:
  dc1: {servers: [hv1, hv2], border: dcbr1}
wan:
  clients: {client1: {ip: 198.18.200.10}}
"""))
    assert t.node_names() == {"hv1", "hv2", "dcbr1", "client1"}
    assert [t.tenant_of(c) for c in t.cugs] == ["t1", "t1", None]


def test_tenant_of() -> None:
    t = parse_topology(routed())
    assert {c: t.tenant_of(c) for c in t.cugs} == {"web": "t1", "db": "t1", "lab": None, "ops": "t2", "mgmt": "t2"}
    with pytest.raises(KeyError):
        t.tenant_of("nope")


def test_routed_interface() -> None:
    t = parse_topology(routed())
    assert t.routed_interface("vm1") == (0, t.vms["vm1"].interfaces[0])
    assert t.routed_interface("vm4") == (1, t.vms["vm4"].interfaces[1])  # interface 0 is in L2-only lab
    assert t.routed_interface("vm6") == (0, t.vms["vm6"].interfaces[0])  # first routed, whatever the tenant
    assert t.routed_interface("vm3") is None


def test_node_names_include_wan_clients() -> None:
    t = parse_topology(routed())
    assert t.node_names() == {"hv1", "hv2", "hv3", "dc1br", "edge2", "client1", "client2",
                              "vm1", "vm2", "vm3", "vm4", "vm5", "vm6", "vm7"}


def test_old_format_topology_still_loads() -> None:
    t = load_topology(EXAMPLES / "two-dc.yaml")
    assert t.tenants == {} and t.wan is None and t.wan_clients() == {}
    assert t.anycast_gateway_mac == DEFAULT_ANYCAST_MAC
    assert all(c.gateway is None and c.tenant is None for c in t.cugs.values())
    assert all(t.routed_interface(vm) is None for vm in t.vms)
    assert t.node_names() == {"hv1", "hv2", "hv3", "hv4", "dc1br", "dc2br", "vm1", "vm2", "vm3", "vm4", "vm5"}


def test_custom_anycast_mac_is_normalised() -> None:
    data = routed()
    data["anycast_gateway_mac"] = "02-AA-00-00-00-01"
    assert parse_topology(data).anycast_gateway_mac == "02:aa:00:00:00:01"


@pytest.mark.parametrize("mac", ["02:52:4e:01:01:03", "02:52:4e:02:27:74"])
def test_anycast_mac_is_no_router_or_bridge_mac(mac: str) -> None:
    from roamnet.names import bridge_mac, router_mac

    assert router_mac("198.18.1.3") == "02:52:4e:01:01:03" and bridge_mac(10100) == "02:52:4e:02:27:74"
    data = routed()
    data["anycast_gateway_mac"] = mac
    with pytest.raises(IntentError) as e:
        parse_topology(data)
    assert e.value.problems[0][0] == "anycast_gateway_mac" and "router and bridge MACs" in e.value.problems[0][1]


def test_empty_wan() -> None:
    data = routed()
    data["wan"] = {}
    t = parse_topology(data)
    assert t.wan is not None and t.wan.clients == {} and t.wan_clients() == {}


def test_dump_round_trip() -> None:
    """The daemon stores model_dump(mode="json") and reloads it."""
    for t in (parse_topology(routed()), load_topology(EXAMPLES / "two-dc.yaml")):
        assert parse_topology(t.model_dump(mode="json", by_alias=True)) == t


def test_json_schema_has_the_new_keys() -> None:
    schema = topology_json_schema()
    assert {"tenants", "anycast_gateway_mac", "wan"} <= set(schema["properties"])
    assert schema["properties"]["anycast_gateway_mac"]["default"] == DEFAULT_ANYCAST_MAC
    defs = schema["$defs"]
    assert set(defs["Tenant"]["properties"]) == {"l3vni", "default_policy"} and defs["Tenant"]["required"] == ["l3vni"]
    assert {"gateway", "tenant"} <= set(defs["Cug"]["properties"])
    assert set(defs["Cug"]["required"]) == {"vni", "subnet"}
    assert set(defs["Wan"]["properties"]) == {"clients"}
    assert defs["WanClient"]["required"] == ["ip"]
    assert all(defs[d]["additionalProperties"] is False for d in ("Tenant", "Wan", "WanClient"))


def test_constants() -> None:
    assert DEFAULT_ANYCAST_MAC.startswith(RESERVED_MAC_PREFIX + ":")
    assert str(WAN_CLIENT_RANGE) == "198.18.192.0/19"


# ---------------------------------------------------------------- bad CUG gateway / tenant


def test_gateway_outside_subnet() -> None:
    err = refused(lambda d: d["cugs"]["web"].update(gateway="198.19.2.1"))
    assert_problem(err, "cugs.web.gateway", "198.19.2.1 is outside subnet 198.19.1.0/24 of CUG web")


@pytest.mark.parametrize("gw, kind", [("198.19.1.0", "network"), ("198.19.1.255", "broadcast")])
def test_gateway_is_network_or_broadcast(gw: str, kind: str) -> None:
    err = refused(lambda d: d["cugs"]["web"].update(gateway=gw))
    assert_problem(err, "cugs.web.gateway", f"{gw} is the {kind} address of subnet 198.19.1.0/24")


def test_malformed_gateway() -> None:
    assert_problem(refused(lambda d: d["cugs"]["web"].update(gateway="198.19.1.300")),
                   "cugs.web.gateway", "not a valid IPv4 address")


def test_unknown_tenant() -> None:
    assert_problem(refused(lambda d: d["cugs"]["web"].update(tenant="t9")), "cugs.web.tenant", "unknown tenant 't9'")


def test_gateway_without_tenant() -> None:
    err = refused(lambda d: d["cugs"]["lab"].update(gateway="198.19.3.1"))
    assert_problem(err, "cugs.lab.tenant", "a CUG with a gateway needs a tenant")
    assert len(err.problems) == 1


def test_tenant_without_gateway() -> None:
    err = refused(lambda d: d["cugs"]["lab"].update(tenant="t1"))
    assert_problem(err, "cugs.lab.gateway", "a CUG with a tenant needs a gateway")
    assert len(err.problems) == 1


def test_vm_uses_gateway_ip() -> None:
    err = refused(lambda d: iface(d, "vm4", 1).update(ip="198.19.2.1"))
    assert_problem(err, "vms.vm4.interfaces[1].ip", "198.19.2.1 is the gateway of CUG db")


# ---------------------------------------------------------------- bad tenants


def test_duplicate_l3vni() -> None:
    err = refused(lambda d: d["tenants"]["t2"].update(l3vni=50001))
    assert_problem(err, "tenants.t2.l3vni", "L3 VNI 50001 is already used by tenant t1")


def test_l3vni_equals_cug_vni() -> None:
    err = refused(lambda d: d["tenants"]["t2"].update(l3vni=10300))
    assert_problem(err, "tenants.t2.l3vni", "L3 VNI 10300 is already used by CUG lab")


@pytest.mark.parametrize("vni, reason", [(0, "VNI must be in 1..16777215"), ("50001", "valid integer")])
def test_bad_l3vni(vni: object, reason: str) -> None:
    assert_problem(refused(lambda d: d["tenants"]["t1"].update(l3vni=vni)), "tenants.t1.l3vni", reason)


def test_tenant_without_l3vni() -> None:
    assert_problem(refused(lambda d: d["tenants"]["t1"].pop("l3vni")), "tenants.t1.l3vni", "required field is missing")


@pytest.mark.parametrize("name, reason", [("T1", "invalid name 'T1'"), ("wan", "'wan' is a reserved name")])
def test_bad_tenant_name(name: str, reason: str) -> None:
    def edit(d: dict[str, Any]) -> None:
        rename(d["tenants"], "t2", name)
        for cug in ("ops", "mgmt"):
            d["cugs"][cug]["tenant"] = name
    assert_problem(refused(edit), f"tenants.{name}", reason)


# ---------------------------------------------------------------- reserved and anycast MACs


@pytest.mark.parametrize("mac", ["02:52:4e:00:01:00", "02-52-4E-12-34-56"])
def test_vm_mac_in_reserved_prefix(mac: str) -> None:
    err = refused(lambda d: iface(d, "vm2").update(mac=mac))
    assert_problem(err, "vms.vm2.interfaces[0].mac",
                   "MACs 02:52:4e:xx:xx:xx are reserved for roamnet's gateway and router MACs")


def test_reserved_prefix_applies_without_tenants() -> None:
    data = yaml.safe_load((EXAMPLES / "two-dc.yaml").read_text())
    iface(data, "vm3")["mac"] = "02:52:4e:00:00:13"
    with pytest.raises(IntentError) as info:
        parse_topology(data, "t.yaml")
    assert_problem(info.value, "vms.vm3.interfaces[0].mac", "are reserved for roamnet's gateway and router MACs")


def test_vm_mac_is_the_default_anycast_mac() -> None:
    err = refused(lambda d: iface(d, "vm2").update(mac="02:52:4e:00:00:01"))
    assert_problem(err, "vms.vm2.interfaces[0].mac",
                   "02:52:4e:00:00:01 is the anycast gateway MAC (anycast_gateway_mac)")


def test_custom_anycast_mac_equals_vm_mac() -> None:
    err = refused(lambda d: d.update(anycast_gateway_mac="02:00:00:01:00:11"))
    assert_problem(err, "vms.vm1.interfaces[0].mac", "02:00:00:01:00:11 is the anycast gateway MAC")
    assert len(err.problems) == 1


@pytest.mark.parametrize("mac, reason", [("03:00:00:00:00:01", "multicast"), ("02:00:00", "malformed MAC")])
def test_bad_anycast_mac(mac: str, reason: str) -> None:
    assert_problem(refused(lambda d: d.update(anycast_gateway_mac=mac)), "anycast_gateway_mac", reason)


# ---------------------------------------------------------------- bad WAN clients


@pytest.mark.parametrize("ip", ["198.20.0.1", "203.0.113.1", "198.18.1.10", "198.18.224.1"])
def test_client_ip_outside_wan_range(ip: str) -> None:
    err = refused(lambda d: clients(d)["client2"].update(ip=ip))
    assert_problem(err, "wan.clients.client2.ip", f"{ip} is outside 198.18.192.0/19")
    assert_problem(err, "wan.clients.client2.ip", "the rest of 198.18.0.0/16 is the lab underlay")


@pytest.mark.parametrize("ip, kind", [("198.18.192.0", "network"), ("198.18.223.255", "broadcast")])
def test_client_ip_is_network_or_broadcast_of_range(ip: str, kind: str) -> None:
    err = refused(lambda d: clients(d)["client2"].update(ip=ip))
    assert_problem(err, "wan.clients.client2.ip", f"{ip} is the {kind} address of 198.18.192.0/19")


def test_duplicate_client_ip() -> None:
    err = refused(lambda d: clients(d)["client2"].update(ip="198.18.200.10"))
    assert_problem(err, "wan.clients.client2.ip", "duplicate IP 198.18.200.10 (also at wan.clients.client1.ip)")


@pytest.mark.parametrize("name, where", [
    ("vm1", "vms.vm1"),
    ("hv2", "datacenters.dc1.servers[1]"),
    ("edge2", "datacenters.dc2.border"),
    ("dc1br", "datacenters.dc1 (default border)"),
])
def test_client_named_like_another_node(name: str, where: str) -> None:
    err = refused(lambda d: rename(clients(d), "client2", name))
    assert_problem(err, f"wan.clients.{name}", f"WAN client name {name!r} is already used at {where}")


@pytest.mark.parametrize("name, reason", [
    ("Client", "invalid name 'Client'"), ("wan", "'wan' is a reserved name"), ("client_long1", "invalid name")])
def test_bad_client_name(name: str, reason: str) -> None:
    assert_problem(refused(lambda d: rename(clients(d), "client2", name)), f"wan.clients.{name}", reason)


def test_client_without_ip() -> None:
    assert_problem(refused(lambda d: clients(d)["client1"].pop("ip")), "wan.clients.client1.ip", "required field")


@pytest.mark.parametrize("edit, path", [
    (lambda d: d["tenants"]["t1"].update(vrf="x"), "tenants.t1.vrf"),
    (lambda d: d["wan"].update(routers=[]), "wan.routers"),
    (lambda d: clients(d)["client1"].update(mac="02:00:00:00:00:01"), "wan.clients.client1.mac"),
])
def test_unknown_key(edit: Callable[[dict[str, Any]], None], path: str) -> None:
    assert_problem(refused(edit), path, "unknown key")


def test_all_new_problems_are_reported_in_order() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["tenants"]["t2"]["l3vni"] = 50001
        d["cugs"]["web"]["tenant"] = "t9"
        iface(d, "vm2")["ip"] = "198.19.2.1"
        clients(d)["client2"]["ip"] = "198.18.200.10"
    err = refused(edit)
    assert [p for p, _ in err.problems] == [
        "tenants.t2.l3vni", "cugs.web.tenant", "vms.vm2.interfaces[0].ip", "wan.clients.client2.ip"]


# ---------------------------------------------------------------- scenario streams


def ends(src: str, dst: str) -> tuple[str, str, str]:
    a, b, via = Stream(name="s", from_=src, to=dst, proto="udp").endpoints(parse_topology(routed()))
    return str(a), str(b), via


def test_endpoints_shared_cug_wins() -> None:
    assert ends("vm3", "vm4") == ("198.19.3.13", "198.19.3.14", "lab")
    assert ends("vm2", "vm4") == ("198.19.2.12", "198.19.2.14", "db")  # routed CUG, but shared: L2


def test_endpoints_routed_within_tenant() -> None:
    assert ends("vm1", "vm2") == ("198.19.1.11", "198.19.2.12", "tenant:t1")
    assert ends("vm2", "vm1") == ("198.19.2.12", "198.19.1.11", "tenant:t1")
    assert ends("vm4", "vm1") == ("198.19.2.14", "198.19.1.11", "tenant:t1")  # skips vm4's L2-only lab


def test_endpoints_pick_the_senders_first_tenant_the_receiver_has() -> None:
    assert ends("vm6", "vm7") == ("198.19.4.16", "198.19.5.17", "tenant:t2")  # vm6: ops(t2) before web(t1)
    assert ends("vm7", "vm6") == ("198.19.2.17", "198.19.1.16", "tenant:t1")  # vm7: db(t1) before mgmt(t2)


def test_endpoints_wan() -> None:
    assert ends("client1", "vm4") == ("198.18.200.10", "198.19.2.14", "wan")
    assert ends("vm4", "client1") == ("198.19.2.14", "198.18.200.10", "wan")
    assert ends("vm6", "client2") == ("198.19.4.16", "198.18.200.11", "wan")


@pytest.mark.parametrize("src, dst, message", [
    ("vm1", "vm5", "vm1 and vm5 share no CUG and no tenant"),
    ("vm3", "vm1", "vm3 and vm1 share no CUG and no tenant"),
    ("client1", "vm3", "client1 can only reach VMs with an interface in a routed CUG "
                       "(one with a gateway and a tenant); vm3 has none"),
    ("vm3", "client2", "client2 can only reach VMs with an interface in a routed CUG "
                       "(one with a gateway and a tenant); vm3 has none"),
    ("client1", "client2", "a stream needs at least one VM (client1 and client2 are both WAN clients)"),
])
def test_endpoints_errors(src: str, dst: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ends(src, dst)
    assert str(info.value) == message


def scenario(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "topology": routed(),
        "duration": 6,
        "streams": [
            {"name": "l2", "from": "vm3", "to": "vm4", "proto": "udp"},
            {"name": "irb", "from": "vm1", "to": "vm2", "proto": "tcp"},
            {"name": "in", "from": "client1", "to": "vm1", "proto": "udp"},
            {"name": "out", "from": "vm7", "to": "client2", "proto": "tcp"},
        ],
        "steps": [{"at": 2.0, "migrate": "vm1", "to": "hv3"}],
    }
    data.update(changes)
    return data


def scenario_refused(edit: Callable[[dict[str, Any]], None]) -> IntentError:
    data = scenario()
    edit(data)
    with pytest.raises(IntentError) as info:
        parse_scenario(data, "s.yaml")
    return info.value


def test_scenario_with_routed_and_wan_streams() -> None:
    s = parse_scenario(scenario())
    assert [st.endpoints(s.topology)[2] for st in s.streams] == ["lab", "tenant:t1", "wan", "wan"]


@pytest.mark.parametrize("i, key, value, path, message", [
    (0, "to", "vm9", "streams[0].to", "unknown VM or WAN client 'vm9'"),
    (2, "from", "client9", "streams[2].from", "unknown VM or WAN client 'client9'"),
    (2, "to", "client2", "streams[2].to", "a stream needs at least one VM (client1 and client2 are both WAN clients)"),
    (2, "to", "client1", "streams[2].to", "a stream needs two different nodes (from and to are both client1)"),
    (2, "to", "vm3", "streams[2].to", "client1 can only reach VMs with an interface in a routed CUG"),
    (1, "to", "vm5", "streams[1].to", "vm1 and vm5 share no CUG and no tenant"),
])
def test_scenario_stream_errors(i: int, key: str, value: str, path: str, message: str) -> None:
    err = scenario_refused(lambda d: d["streams"][i].update({key: value}))
    assert_problem(err, path, message)
    assert len(err.problems) == 1


def test_scenario_cannot_migrate_a_client() -> None:
    err = scenario_refused(lambda d: d["steps"][0].update(migrate="client1"))
    assert_problem(err, "steps[0].migrate", "unknown VM 'client1'")


def test_scenario_cannot_migrate_to_a_client() -> None:
    err = scenario_refused(lambda d: d["steps"][0].update(to="client1"))
    assert_problem(err, "steps[0].to", "unknown server 'client1'")
