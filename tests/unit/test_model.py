"""The topology model: good examples load, every bad input is refused with its YAML path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml

from roamnet.intent.model import IntentError, Topology, VmInterface, load_topology, parse_topology, topology_json_schema

EXAMPLE = Path(str(resources.files("roamnet").joinpath("examples", "two-dc.yaml")))

SMALL = """\
name: small
datacenters:
  dc1: {servers: [hv1, hv2]}
  dc2: {servers: [hv3], border: edge2}
cugs:
  web: {vni: 10100, subnet: 198.19.1.0/24}
  db: {vni: 10200, subnet: 198.19.2.0/24}
vms:
  vm1:
    server: hv1
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:01", ip: 198.19.1.11}
  vm2:
    server: hv3
    interfaces:
      - {cug: web, mac: "02:00:00:01:00:02", ip: 198.19.1.12}
      - {cug: db, mac: "02:00:00:02:00:02", ip: 198.19.2.12}
"""


def small() -> dict[str, Any]:
    return yaml.safe_load(SMALL)


def refused(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> IntentError:
    """Write SMALL, edited, to bad.yaml; load it and return the error."""
    data = small()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(IntentError) as info:
        load_topology(path)
    assert info.value.source == str(path)
    return info.value


def assert_problem(err: IntentError, path: str, fragment: str) -> None:
    reasons = [reason for p, reason in err.problems if p == path]
    assert reasons, f"no problem at {path}; got {err.problems}"
    assert any(fragment in r for r in reasons), f"{fragment!r} not in {reasons}"
    line = next(line for line in str(err).splitlines() if f": {path}: " in line)
    assert line.startswith(f"{err.source}: {path}: ")
    assert "bad.yaml" in str(err) or err.source == "<inline>"


def iface(data: dict[str, Any], vm: str = "vm1", i: int = 0) -> dict[str, Any]:
    return data["vms"][vm]["interfaces"][i]


def iface_of(t: Topology, vm: str, i: int) -> VmInterface:
    return t.vms[vm].interfaces[i]


# ---------------------------------------------------------------- good input


def test_small_topology_loads() -> None:
    t = parse_topology(small())
    assert isinstance(t, Topology)
    assert t.server_dc() == {"hv1": "dc1", "hv2": "dc1", "hv3": "dc2"}
    assert list(t.server_dc()) == ["hv1", "hv2", "hv3"]
    assert t.border_of("dc1") == "dc1br"
    assert t.border_of("dc2") == "edge2"
    assert t.node_names() == {"hv1", "hv2", "hv3", "dc1br", "edge2", "vm1", "vm2"}
    assert t.cugs["web"].subnet == IPv4Network("198.19.1.0/24")
    assert iface_of(t, "vm2", 1).ip == IPv4Address("198.19.2.12")


def test_packaged_two_dc_example_loads() -> None:
    t = load_topology(EXAMPLE)
    assert t.name == "two-dc"
    assert t.server_dc() == {"hv1": "dc1", "hv2": "dc1", "hv3": "dc2", "hv4": "dc2"}
    assert {n: c.vni for n, c in t.cugs.items()} == {"web": 10100, "db": 10200}
    assert {n: (vm.server, str(vm.interfaces[0].ip)) for n, vm in t.vms.items()} == {
        "vm1": ("hv1", "198.19.1.11"),
        "vm2": ("hv2", "198.19.1.12"),
        "vm3": ("hv4", "198.19.1.13"),
        "vm4": ("hv2", "198.19.2.14"),
        "vm5": ("hv4", "198.19.2.15"),
    }


def test_examples_use_only_benchmark_addresses() -> None:
    for entry in resources.files("roamnet").joinpath("examples").iterdir():
        text = entry.read_text()
        for private in ("10.", "172.16.", "192.168."):
            assert f" {private}" not in text and f":{private}" not in text, entry.name


def test_mac_is_normalised_to_lowercase_colons() -> None:
    data = small()
    iface(data)["mac"] = "02-00-00-0A-0B-0C"
    assert iface_of(parse_topology(data), "vm1", 0).mac == "02:00:00:0a:0b:0c"


def test_cugs_and_vms_are_optional() -> None:
    t = parse_topology({"name": "bare", "datacenters": {"dc1": {"servers": ["hv1"]}}})
    assert t.cugs == {} and t.vms == {}


# ---------------------------------------------------------------- bad input, one test each


def test_unknown_server(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["vms"]["vm1"].update(server="hv9"))
    assert_problem(err, "vms.vm1.server", "unknown server 'hv9'")


def test_unknown_cug(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d).update(cug="app"))
    assert_problem(err, "vms.vm1.interfaces[0].cug", "unknown CUG 'app'")


def test_duplicate_mac(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm2", 1).update(mac="02:00:00:01:00:01"))
    assert_problem(err, "vms.vm2.interfaces[1].mac", "duplicate MAC 02:00:00:01:00:01")
    assert_problem(err, "vms.vm2.interfaces[1].mac", "vms.vm1.interfaces[0].mac")


def test_duplicate_mac_differently_spelled(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm2").update(mac="02-00-00-01-00-01"))
    assert_problem(err, "vms.vm2.interfaces[0].mac", "duplicate MAC")


def test_duplicate_ip(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm2").update(ip="198.19.1.11"))
    assert_problem(err, "vms.vm2.interfaces[0].ip", "duplicate IP 198.19.1.11")


def test_ip_outside_subnet(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d).update(ip="198.19.2.5"))
    assert_problem(err, "vms.vm1.interfaces[0].ip", "198.19.2.5 is outside subnet 198.19.1.0/24 of CUG web")
    assert f"{tmp_path / 'bad.yaml'}: vms.vm1.interfaces[0].ip: 198.19.2.5 is outside subnet" in str(err)


@pytest.mark.parametrize("ip, kind", [("198.19.1.0", "network"), ("198.19.1.255", "broadcast")])
def test_ip_is_network_or_broadcast(tmp_path: Path, ip: str, kind: str) -> None:
    err = refused(tmp_path, lambda d: iface(d).update(ip=ip))
    assert_problem(err, "vms.vm1.interfaces[0].ip", f"{ip} is the {kind} address")


@pytest.mark.parametrize("vni", [0, 16777216])
def test_vni_out_of_range(tmp_path: Path, vni: int) -> None:
    err = refused(tmp_path, lambda d: d["cugs"]["db"].update(vni=vni))
    assert_problem(err, "cugs.db.vni", f"VNI must be in 1..16777215, got {vni}")


def test_vni_must_be_an_integer(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["cugs"]["db"].update(vni="10200"))
    assert_problem(err, "cugs.db.vni", "valid integer")


def test_duplicate_vni(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["cugs"]["db"].update(vni=10100))
    assert_problem(err, "cugs.db.vni", "VNI 10100 is already used by CUG web")


@pytest.mark.parametrize(
    "mac, fragment",
    [
        ("02:00:00:01:00", "malformed MAC"),
        ("02:00:00:01:00:zz", "malformed MAC"),
        ("03:00:00:01:00:01", "multicast"),
        ("00:00:00:00:00:00", "all-zero"),
        (2520600001, "quoted string"),  # what YAML makes of an unquoted 12:00:00:01:00:01-like MAC
    ],
)
def test_bad_mac(tmp_path: Path, mac: object, fragment: str) -> None:
    err = refused(tmp_path, lambda d: iface(d).update(mac=mac))
    assert_problem(err, "vms.vm1.interfaces[0].mac", fragment)


def test_unquoted_sexagesimal_mac_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace('"02:00:00:01:00:01"', "12:00:00:01:00:01"))
    with pytest.raises(IntentError) as info:
        load_topology(path)
    assert_problem(info.value, "vms.vm1.interfaces[0].mac", "quoted string")


def test_malformed_ip(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d, "vm2", 1).update(ip="198.19.2.300"))
    assert_problem(err, "vms.vm2.interfaces[1].ip", "not a valid IPv4 address (got '198.19.2.300')")


def test_malformed_subnet(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["cugs"]["web"].update(subnet="198.19.1.5/24"))
    assert_problem(err, "cugs.web.subnet", "not a valid IPv4 network")


@pytest.mark.parametrize("subnet", ["198.18.1.0/24", "198.51.100.0/24", "198.0.0.0/8"])
def test_subnet_outside_tenant_range(tmp_path: Path, subnet: str) -> None:
    err = refused(tmp_path, lambda d: d["cugs"]["db"].update(subnet=subnet))
    assert_problem(err, "cugs.db.subnet", f"{subnet} is outside 198.19.0.0/16")


def test_overlapping_subnets(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:  # subnets only need to be distinct within one tenant
        d["tenants"] = {"t1": {"l3vni": 50001}}
        d["cugs"]["web"].update(gateway="198.19.1.1", tenant="t1")
        d["cugs"]["db"].update(subnet="198.19.1.128/25", gateway="198.19.1.129", tenant="t1")

    err = refused(tmp_path, edit)
    assert_problem(err, "cugs.db.subnet", "198.19.1.128/25 overlaps 198.19.1.0/24 of CUG web")


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["datacenters"]["dc1"].update(boarder="x"), "datacenters.dc1.boarder"),
        (lambda d: d["cugs"]["web"].update(mtu=1500), "cugs.web.mtu"),
        (lambda d: iface(d, "vm2", 1).update(mtu=1500), "vms.vm2.interfaces[1].mtu"),
    ],
)
def test_unknown_key(tmp_path: Path, edit: Callable[[dict[str, Any]], None], path: str) -> None:
    assert_problem(refused(tmp_path, edit), path, "unknown key")


def test_missing_field(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: iface(d).pop("ip"))
    assert_problem(err, "vms.vm1.interfaces[0].ip", "required field is missing")


def test_no_datacenter(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d.update(datacenters={}))
    assert_problem(err, "datacenters", "at least 1 item")


def test_vm_without_interfaces(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["vms"]["vm1"].update(interfaces=[]))
    assert_problem(err, "vms.vm1.interfaces", "at least 1 item")


def test_bad_lab_name(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d.update(name="Small_Lab"))
    assert_problem(err, "name", "invalid name 'Small_Lab'")


def rename(section: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d[section] = {new if k == old else k: v for k, v in d[section].items()}
    return edit


@pytest.mark.parametrize(
    "edit, path, bad",
    [
        (rename("datacenters", "dc1", "DC1"), "datacenters.DC1", "DC1"),
        (rename("cugs", "web", "web-1"), "cugs.web-1", "web-1"),
        (rename("vms", "vm1", "a_very_long_vm"), "vms.a_very_long_vm", "a_very_long_vm"),
        (lambda d: d["datacenters"]["dc1"]["servers"].__setitem__(1, "2hv"), "datacenters.dc1.servers[1]", "2hv"),
        (lambda d: d["datacenters"]["dc2"].update(border="Edge"), "datacenters.dc2.border", "Edge"),
    ],
)
def test_bad_node_name(tmp_path: Path, edit: Callable[[dict[str, Any]], None], path: str, bad: str) -> None:
    assert_problem(refused(tmp_path, edit), path, f"invalid name {bad!r}: must match ^[a-z][a-z0-9_]{{0,10}}$")


def test_wan_is_reserved(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["datacenters"]["dc1"]["servers"].append("wan"))
    assert_problem(err, "datacenters.dc1.servers[2]", "'wan' is a reserved name")


def test_vm_named_like_a_server(tmp_path: Path) -> None:
    err = refused(tmp_path, rename("vms", "vm2", "hv2"))
    assert_problem(err, "vms.hv2", "VM name 'hv2' is already used at datacenters.dc1.servers[1]")


def test_border_named_like_a_server(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["datacenters"]["dc2"].update(border="hv1"))
    assert_problem(err, "datacenters.dc2.border", "border name 'hv1' is already used")


def test_default_border_too_long(tmp_path: Path) -> None:
    err = refused(tmp_path, rename("datacenters", "dc1", "datacenter1"))
    assert_problem(err, "datacenters.datacenter1", "default border name 'datacenter1br'")


def test_server_in_two_datacenters(tmp_path: Path) -> None:
    err = refused(tmp_path, lambda d: d["datacenters"]["dc2"]["servers"].append("hv2"))
    assert_problem(err, "datacenters.dc2.servers[1]", "server 'hv2' is already in datacenter dc1")


def test_all_problems_are_reported(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["vms"]["vm1"]["server"] = "hv9"
        iface(d, "vm2")["ip"] = "198.19.1.11"
        d["cugs"]["db"]["vni"] = 10100
    err = refused(tmp_path, edit)
    assert [p for p, _ in err.problems] == ["cugs.db.vni", "vms.vm1.server", "vms.vm2.interfaces[0].ip"]
    assert len(str(err).splitlines()) == 3


def test_field_errors_are_all_reported(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["cugs"]["web"]["vni"] = 0
        iface(d, "vm2", 1)["mac"] = "nope"
        d["extra"] = 1
    paths = {p for p, _ in refused(tmp_path, edit).problems}
    assert paths == {"cugs.web.vni", "vms.vm2.interfaces[1].mac", "extra"}


def test_inline_source_and_no_pydantic_noise() -> None:
    data = small()
    data["cugs"]["web"]["vni"] = "x"
    with pytest.raises(IntentError) as info:
        parse_topology(data)
    text = str(info.value)
    assert text.startswith("<inline>: cugs.web.vni: ")
    assert "pydantic" not in text and "validation error" not in text
    assert len(text.splitlines()) == 1


def test_integer_dict_key_is_not_shown_as_index() -> None:
    data = small()
    data["vms"][7] = copy.deepcopy(data["vms"].pop("vm1"))
    with pytest.raises(IntentError) as info:
        parse_topology(data)
    assert [p for p, _ in info.value.problems] == ["vms.7"]


# ---------------------------------------------------------------- loader and schema


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(IntentError) as info:
        load_topology(path)
    assert str(info.value) == f"{path}: file not found"


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndatacenters: {dc1: [\n")
    with pytest.raises(IntentError) as info:
        load_topology(path)
    assert str(info.value).startswith(f"{path}: YAML error at line ")


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(SMALL + "  vm1:\n    server: hv2\n    interfaces: []\n")
    with pytest.raises(IntentError) as info:
        load_topology(path)
    assert "duplicate key 'vm1'" in str(info.value)


@pytest.mark.parametrize(
    "text, got",
    [("- a\n- b\n", "a list"), ("", "an empty file"), ("42\n", "a number"), ("just text\n", "a string")],
)
def test_top_level_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    path = tmp_path / "top.yaml"
    path.write_text(text)
    with pytest.raises(IntentError) as info:
        load_topology(path)
    assert str(info.value) == f"{path}: top level must be a mapping, got {got}"


def test_json_schema() -> None:
    schema = topology_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "roamnet topology"
    assert set(schema["properties"]) == {"name", "datacenters", "tenants", "anycast_gateway_mac", "cugs", "vms", "wan", "limits", "mobility",
                                        "policies", "vteps"}
    assert set(schema["required"]) == {"name", "datacenters"}
    assert schema["additionalProperties"] is False
    assert {"VmInterface", "Tenant", "Wan", "WanClient"} <= set(schema["$defs"])
