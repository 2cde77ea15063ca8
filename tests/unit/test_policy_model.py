"""Policies, per-tenant address scopes and the ARP knob in the intent model: good rules parse,
every bad rule is refused with its YAML path, tenants may reuse subnets and IPs (not with a WAN),
and a stream addressed to an IP several VMs have is ambiguous."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
import yaml

from roamnet.intent.model import Endpoint, IntentError, Policy, parse_topology, topology_json_schema
from roamnet.intent.scenario import parse_scenario

TWO_TENANTS = """\
name: scopes
datacenters:
  dc1: {servers: [hv1, hv2]}
tenants:
  t1: {l3vni: 50001}
  t2: {l3vni: 50002, default_policy: deny}
cugs:
  web: {vni: 10100, subnet: 198.19.1.0/24, gateway: 198.19.1.1, tenant: t1}
  db: {vni: 10200, subnet: 198.19.2.0/24, gateway: 198.19.2.1, tenant: t1}
  web2: {vni: 10300, subnet: 198.19.1.0/24, gateway: 198.19.1.1, tenant: t2}
  lan: {vni: 10400, subnet: 198.19.1.0/24, flood_unknown_arp: false}
vms:
  vm1:
    server: hv1
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:01", ip: 198.19.1.10}
  vm2:
    server: hv2
    interfaces:
      - {cug: db, mac: "02:00:00:02:00:02", ip: 198.19.2.20}
  vm3:
    server: hv2
    interfaces:
      - {cug: lan, mac: "02:00:00:04:00:03", ip: 198.19.1.10}
  vm7:
    server: hv2
    interfaces:
      - {cug: web2, mac: "02:00:00:03:00:07", ip: 198.19.1.10}
  vm8:
    server: hv1
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:08", ip: 198.19.1.18}
      - {cug: web2, mac: "02:00:00:03:00:08", ip: 198.19.1.28}
policies:
  - {name: web_db, from: {cug: web}, to: {cug: db}, proto: tcp, ports: [5432], action: allow}
  - {name: ping, from: {vm: vm7}, to: {any: true}, proto: icmp, action: deny}
  - {name: lab, from: {prefix: 198.18.0.0/15}, to: {prefix: 198.19.1.10/32}, action: deny, tenant: t2}
"""


def data() -> dict[str, Any]:
    return yaml.safe_load(TWO_TENANTS)


def refused(edit: Callable[[dict[str, Any]], None]) -> IntentError:
    """Parse TWO_TENANTS, edited, and return the error."""
    d = data()
    edit(d)
    with pytest.raises(IntentError) as info:
        parse_topology(d)
    return info.value


def assert_problem(err: IntentError, path: str, fragment: str) -> None:
    reasons = [reason for p, reason in err.problems if p == path]
    assert reasons, f"no problem at {path}; got {err.problems}"
    assert any(fragment in r for r in reasons), f"{fragment!r} not in {reasons}"
    assert f"{err.source}: {path}: " in str(err)


def policy(d: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return d["policies"][i]


def add_policy(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """An edit appending one policy (policies[3]); `from_` stands for `from`."""
    rule = {"name": "extra", "action": "allow", **fields}
    rule["from"] = rule.pop("from_", {"any": True})
    rule.setdefault("to", {"any": True})
    return lambda d: d["policies"].append(rule)


# ---------------------------------------------------------------- good input


def test_policies_parse_with_from_alias_and_defaults() -> None:
    t = parse_topology(data())
    web_db, ping, lab = t.policies
    assert web_db.name == "web_db" and web_db.from_ == Endpoint(cug="web") and web_db.to == Endpoint(cug="db")
    assert (web_db.proto, web_db.ports, web_db.action, web_db.tenant) == ("tcp", [5432], "allow", None)
    assert ping.from_.vm == "vm7" and ping.to.any is True and ping.ports == []
    assert lab.from_.prefix == IPv4Network("198.18.0.0/15") and lab.to.prefix == IPv4Network("198.19.1.10/32")
    assert lab.proto == "any" and lab.tenant == "t2"
    rule = Policy.model_validate({"name": "p", "from": {"any": True}, "to": {"vm": "vm1"}, "action": "deny"})
    assert rule.proto == "any" and rule.ports == [] and rule.tenant is None
    assert Policy(name="p", from_=Endpoint(any=True), to=Endpoint(any=True), action="allow").from_.any is True


def test_policy_dump_uses_from_and_round_trips() -> None:
    t = parse_topology(data())
    dumped = t.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["policies"][0]["from"] == {"cug": "web"} and "from_" not in dumped["policies"][0]
    assert parse_topology(dumped) == t


def test_no_policies_is_fine() -> None:
    d = data()
    del d["policies"]
    assert parse_topology(d).policies == []


def test_default_policy_and_flood_unknown_arp_defaults() -> None:
    t = parse_topology(data())
    assert t.tenants["t1"].default_policy == "allow" and t.tenants["t2"].default_policy == "deny"
    assert t.cugs["web"].flood_unknown_arp is True and t.cugs["lan"].flood_unknown_arp is False


def test_json_schema_shows_the_new_keys() -> None:
    schema = topology_json_schema()
    defs = schema["$defs"]
    assert "policies" in schema["properties"]
    assert "from" in defs["Policy"]["properties"] and "from_" not in defs["Policy"]["properties"]
    assert set(defs["Policy"]["required"]) == {"name", "from", "to", "action"}
    assert defs["Policy"]["additionalProperties"] is False and defs["Endpoint"]["additionalProperties"] is False
    assert defs["Tenant"]["properties"]["default_policy"]["default"] == "allow"
    assert defs["Cug"]["properties"]["flood_unknown_arp"]["default"] is True
    assert all(d.get("description") for d in defs["Policy"]["properties"].values() if "$ref" not in d)


# ---------------------------------------------------------------- address scopes


def test_two_tenants_share_a_subnet_and_ips() -> None:
    t = parse_topology(data())
    assert t.scope_of("web") == "t1" and t.scope_of("web2") == "t2" and t.scope_of("lan") == "cug:lan"
    assert t.owners_of_ip("198.19.1.10") == [("vm1", 0), ("vm3", 0), ("vm7", 0)]
    assert t.owners_of_ip(IPv4Address("198.19.1.28")) == [("vm8", 1)]
    assert t.owners_of_ip("198.19.9.9") == [] and t.owners_of_ip("not-an-ip") == []
    assert t.owner_of_ip("198.19.1.10") == ("vm1", 0) and t.owner_of_ip("198.19.9.9") is None


def test_scope_of_unknown_cug() -> None:
    with pytest.raises(KeyError):
        parse_topology(data()).scope_of("nope")


def test_same_tenant_duplicate_ip() -> None:
    err = refused(lambda d: d["vms"]["vm8"]["interfaces"][0].update(ip="198.19.1.10"))
    assert_problem(err, "vms.vm8.interfaces[0].ip", "duplicate IP 198.19.1.10 in tenant t1")
    assert_problem(err, "vms.vm8.interfaces[0].ip", "vms.vm1.interfaces[0].ip")
    assert len(err.problems) == 1


def test_same_l2_only_cug_duplicate_ip() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["vms"]["vm9"] = {"server": "hv1", "interfaces": [{"cug": "lan", "mac": "02:00:00:04:00:09",
                                                            "ip": "198.19.1.10"}]}
    assert_problem(refused(edit), "vms.vm9.interfaces[0].ip", "duplicate IP 198.19.1.10 in CUG lan (L2-only)")


def test_same_tenant_overlapping_subnets() -> None:
    err = refused(lambda d: d["cugs"]["db"].update(subnet="198.19.1.0/25", gateway="198.19.1.126"))
    assert_problem(err, "cugs.db.subnet", "198.19.1.0/25 overlaps 198.19.1.0/24 of CUG web")
    assert_problem(err, "cugs.db.subnet", "tenant, here t1")


def test_l2_only_cugs_may_overlap_each_other() -> None:
    d = data()
    d["cugs"]["lan2"] = {"vni": 10500, "subnet": "198.19.1.0/25"}
    assert set(parse_topology(d).cugs) == {"web", "db", "web2", "lan", "lan2"}


def test_wan_with_overlapping_tenants() -> None:
    err = refused(lambda d: d.update(wan={"clients": {"c1": {"ip": "198.18.200.1"}}}))
    assert_problem(err, "cugs.web2.subnet", "198.19.1.0/24 overlaps 198.19.1.0/24 of CUG web (tenant t1)")
    assert_problem(err, "cugs.web2.subnet", "the WAN has one routing table")
    assert not any(p == "cugs.lan.subnet" for p, _ in err.problems)  # an L2-only CUG never reaches the WAN


def test_wan_without_clients_allows_overlapping_tenants() -> None:
    d = data()
    d["wan"] = {"clients": {}}
    parse_topology(d)


def test_mac_stays_unique_across_tenants() -> None:
    err = refused(lambda d: d["vms"]["vm7"]["interfaces"][0].update(mac="02:00:00:01:00:01"))
    assert_problem(err, "vms.vm7.interfaces[0].mac", "duplicate MAC 02:00:00:01:00:01")


# ---------------------------------------------------------------- bad policies (field checks)


def test_unknown_action() -> None:
    err = refused(lambda d: policy(d).update(action="permit"))
    assert_problem(err, "policies[0].action", "'permit'")
    assert_problem(err, "policies[0].action", "'allow' or 'deny'")


def test_unknown_proto() -> None:
    assert_problem(refused(lambda d: policy(d).update(proto="sctp")), "policies[0].proto",
                   "'tcp', 'udp', 'icmp' or 'any'")


def test_missing_action_and_to() -> None:
    def edit(d: dict[str, Any]) -> None:
        del policy(d)["action"], policy(d)["to"]
    err = refused(edit)
    assert_problem(err, "policies[0].action", "required field is missing")
    assert_problem(err, "policies[0].to", "required field is missing")


def test_unknown_key_in_policy_and_endpoint() -> None:
    def edit(d: dict[str, Any]) -> None:
        policy(d)["port"] = 80
        policy(d)["from"]["tenant"] = "t1"
    err = refused(edit)
    assert_problem(err, "policies[0].port", "unknown key")
    assert_problem(err, "policies[0].from.tenant", "unknown key")


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_port_out_of_range(port: int) -> None:
    err = refused(lambda d: policy(d).update(ports=[80, port]))
    assert_problem(err, "policies[0].ports[1]", f"port {port} is outside 1..65535")


def test_port_must_be_an_integer() -> None:
    assert_problem(refused(lambda d: policy(d).update(ports=["80"])), "policies[0].ports[0]", "integer")


@pytest.mark.parametrize("prefix, fragment", [
    ("198.19.1.300/24", "malformed IPv4 prefix '198.19.1.300/24'"),
    ("198.19.1.0/33", "malformed IPv4 prefix"),
    ("web", "malformed IPv4 prefix 'web'"),
    ("198.19.1.5/24", "198.19.1.5/24 has host bits set (did you mean 198.19.1.0/24?)"),
])
def test_bad_prefix(prefix: str, fragment: str) -> None:
    err = refused(lambda d: policy(d, 2).update(to={"prefix": prefix}))
    assert_problem(err, "policies[2].to.prefix", fragment)


def test_prefix_must_be_a_string() -> None:
    assert_problem(refused(lambda d: policy(d, 2).update(to={"prefix": 5})), "policies[2].to.prefix",
                   "a prefix must be a string")


@pytest.mark.parametrize("end, got", [
    ({"cug": "web", "vm": "vm1"}, "got cug, vm"),
    ({}, "got none"),
    ({"prefix": "198.19.1.0/24", "any": True}, "got prefix, any"),
])
def test_endpoint_needs_exactly_one(end: dict[str, Any], got: str) -> None:
    err = refused(lambda d: policy(d).update({"from": end}))
    assert_problem(err, "policies[0].from", f"give exactly one of cug, vm, prefix, any ({got})")


def test_endpoint_not_a_mapping() -> None:
    assert_problem(refused(lambda d: policy(d).update(to="web")), "policies[0].to", "an endpoint is a mapping")


def test_any_false() -> None:
    assert_problem(refused(lambda d: policy(d).update(to={"any": False})), "policies[0].to", "write `any: true`")


# ---------------------------------------------------------------- bad policies (cross checks)


def test_unknown_cug_and_vm_in_endpoints() -> None:
    def edit(d: dict[str, Any]) -> None:
        policy(d, 1).update({"from": {"vm": "vm99"}})
        policy(d, 0).update(to={"cug": "nope"})
    err = refused(edit)
    assert_problem(err, "policies[0].to.cug", "unknown CUG 'nope'")
    assert_problem(err, "policies[1].from.vm", "unknown VM 'vm99'")
    assert len(err.problems) == 2


@pytest.mark.parametrize("proto", ["icmp", "any"])
def test_ports_need_tcp_or_udp(proto: str) -> None:
    err = refused(lambda d: policy(d).update(proto=proto))
    assert_problem(err, "policies[0].ports", "ports need proto tcp or udp")


def test_duplicate_policy_name() -> None:
    err = refused(add_policy(name="ping"))
    assert_problem(err, "policies[3].name", "duplicate policy name 'ping' (also policies[1])")


def test_endpoints_in_different_tenants() -> None:
    err = refused(add_policy(from_={"cug": "web"}, to={"vm": "vm7"}))
    assert_problem(err, "policies[3]", "from is in tenant t1, to in tenant t2: different tenants never reach")


def test_l2_only_cug_is_a_scope_of_its_own() -> None:
    err = refused(add_policy(from_={"cug": "lan"}, to={"cug": "web"}))
    assert_problem(err, "policies[3]", "from is in CUG lan (L2-only), to in tenant t1")


def test_vm_in_several_tenants_shares_one_with_each_side() -> None:
    d = data()
    add_policy(from_={"vm": "vm8"}, to={"cug": "web2"})(d)
    d["policies"].append({"name": "back", "from": {"vm": "vm1"}, "to": {"vm": "vm8"}, "action": "deny"})
    parse_topology(d)


def test_vm_in_several_tenants_still_needs_a_shared_one() -> None:
    err = refused(add_policy(from_={"vm": "vm8"}, to={"vm": "vm3"}))
    assert_problem(err, "policies[3]", "from is in tenants t1 and t2, to in CUG lan (L2-only)")


def test_unknown_policy_tenant() -> None:
    assert_problem(refused(lambda d: policy(d, 2).update(tenant="t9")), "policies[2].tenant", "unknown tenant 't9'")


def test_endpoint_outside_the_policy_tenant() -> None:
    err = refused(add_policy(from_={"cug": "web"}, to={"prefix": "198.19.2.0/24"}, tenant="t2"))
    assert_problem(err, "policies[3].tenant", "from (CUG web) is in tenant t1, not in tenant t2")


def test_vm_endpoint_inside_the_policy_tenant() -> None:
    d = data()
    add_policy(from_={"vm": "vm8"}, to={"prefix": "198.19.2.0/24"}, tenant="t2")(d)
    assert parse_topology(d).policies[3].tenant == "t2"


# ---------------------------------------------------------------- scenarios


def scenario(to: str) -> dict[str, Any]:
    return {"topology": parse_topology(data()), "duration": 5,
            "streams": [{"name": "s1", "from": "vm8", "to": to, "proto": "udp"}]}


def test_stream_to_an_ambiguous_ip() -> None:
    with pytest.raises(IntentError) as info:
        parse_scenario(scenario("198.19.1.10"))
    assert_problem(info.value, "streams[0].to",
                   "ambiguous: vm1, vm3 and vm7 have 198.19.1.10 (tenant t1, CUG lan (L2-only) and tenant t2); "
                   "name the VM instead")


def test_stream_to_an_ip_two_tenants_share() -> None:
    d = data()
    del d["vms"]["vm3"]
    with pytest.raises(IntentError) as info:
        parse_scenario({**scenario("198.19.1.10"), "topology": parse_topology(d)})
    assert_problem(info.value, "streams[0].to",
                   "ambiguous: vm1 and vm7 have 198.19.1.10 (tenants t1 and t2); name the VM instead")


def test_stream_to_a_vm_by_name_or_unique_ip() -> None:
    s = parse_scenario(scenario("vm7"))
    assert s.streams[0].endpoints(s.topology) == (IPv4Address("198.19.1.28"), IPv4Address("198.19.1.10"), "web2")
    s = parse_scenario(scenario("198.19.2.20"))
    assert s.streams[0].target(s.topology) == ("vm2", 0)



def test_rule_names_may_have_dashes_and_dots_but_not_spaces() -> None:
    d = data()
    add_policy(name="web-to-db.v2")(d)
    assert parse_topology(d).policies[3].name == "web-to-db.v2"
    assert_problem(refused(add_policy(name="web to db")), "policies[3].name", "invalid name")
