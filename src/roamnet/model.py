"""The intent model: a lab's data centers, servers, closed user groups (CUGs), VMs,
tenants (routing domains of CUGs with an anycast gateway) and WAN clients.

Validation happens in two phases: pydantic checks each field (types, ranges, names,
unknown keys), then `Topology` cross-checks references and uniqueness. Every problem
is reported as an `IntentError` entry `(YAML path, reason)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

LAB_NAME_RE = r"^[a-z][a-z0-9-]{0,19}$"
NODE_NAME_RE = r"^[a-z][a-z0-9_]{0,10}$"  # node names become parts of Linux interface names
RESERVED_NAMES = frozenset({"wan"})
TENANT_RANGE = IPv4Network("198.19.0.0/16")  # RFC 2544; the underlay uses 198.18.0.0/16
WAN_CLIENT_RANGE = IPv4Network("198.18.192.0/19")  # the only part of the underlay /16 left to WAN clients
DEFAULT_ANYCAST_MAC = "02:52:4e:00:00:01"  # the distributed gateway's MAC, the same on every NVE
RESERVED_MAC_PREFIX = "02:52:4e"  # roamnet's gateway and router MACs; never a VM's
ROUTER_MAC_PREFIX = RESERVED_MAC_PREFIX + ":01:"  # NVE router MACs (desired.router_mac); never the anycast MAC
BRIDGE_MAC_PREFIX = RESERVED_MAC_PREFIX + ":02:"  # segment bridges' own MACs (names.bridge_mac)
VNI_MAX = 2**24 - 1
MAC_RE = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"  # accepted input; stored as lowercase xx:xx:..

Problem = tuple[str, str]  # (YAML path, reason)


class IntentError(ValueError):
    """An invalid intent (topology or scenario): every problem found, with its YAML path."""

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(
            f"{self.source}: {path}: {reason}" if path else f"{self.source}: {reason}"
            for path, reason in self.problems
        )


class CrossCheckError(ValueError):
    """Raised inside a model validator; its problems' paths are relative to that model."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {r}" if p else r for p, r in problems))


# ---------------------------------------------------------------- field types


def _not_reserved(name: str) -> str:
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is a reserved name")
    return name


def _mac(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("MAC address must be a quoted string (YAML read it as a number)")
    if not isinstance(value, str):
        raise ValueError(f"MAC address must be a string, got {type(value).__name__}")
    octets = re.split(r"[:-]", value.strip().lower())
    if len(octets) != 6 or not all(re.fullmatch(r"[0-9a-f]{2}", o) for o in octets):
        raise ValueError(f"malformed MAC address {value!r} (expected six hex octets like 02:00:00:01:00:01)")
    if int(octets[0], 16) & 1:
        raise ValueError(f"{value} is a multicast MAC address (low bit of the first octet must be 0)")
    if all(o == "00" for o in octets):
        raise ValueError("the all-zero MAC address is not allowed")
    return ":".join(octets)


def _vni(vni: int) -> int:
    if not 1 <= vni <= VNI_MAX:
        raise ValueError(f"VNI must be in 1..{VNI_MAX}, got {vni}")
    return vni


def _tenant_subnet(net: IPv4Network) -> IPv4Network:
    if not net.subnet_of(TENANT_RANGE):
        raise ValueError(
            f"{net} is outside {TENANT_RANGE} (tenant subnets must come from {TENANT_RANGE}; "
            "198.18.0.0/16 is the underlay)"
        )
    return net


def _wan_client_ip(ip: IPv4Address) -> IPv4Address:
    if ip not in WAN_CLIENT_RANGE:
        raise ValueError(
            f"{ip} is outside {WAN_CLIENT_RANGE} (WAN client addresses must come from {WAN_CLIENT_RANGE}; "
            "the rest of 198.18.0.0/16 is the lab underlay)"
        )
    if ip in (WAN_CLIENT_RANGE.network_address, WAN_CLIENT_RANGE.broadcast_address):
        kind = "network" if ip == WAN_CLIENT_RANGE.network_address else "broadcast"
        raise ValueError(f"{ip} is the {kind} address of {WAN_CLIENT_RANGE}")
    return ip


LabName = Annotated[str, StringConstraints(pattern=LAB_NAME_RE)]
NodeName = Annotated[str, StringConstraints(pattern=NODE_NAME_RE), AfterValidator(_not_reserved)]
Mac = Annotated[str, BeforeValidator(_mac), WithJsonSchema({"type": "string", "pattern": MAC_RE})]
Vni = Annotated[int, Strict(), AfterValidator(_vni),
                WithJsonSchema({"type": "integer", "minimum": 1, "maximum": VNI_MAX})]
TenantSubnet = Annotated[IPv4Network, AfterValidator(_tenant_subnet)]
WanClientIp = Annotated[IPv4Address, AfterValidator(_wan_client_ip)]


class Model(BaseModel):
    """Base of all intent models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- models


class Datacenter(Model):
    servers: list[NodeName] = Field(min_length=1)
    border: NodeName | None = None


class Tenant(Model):
    """A routing domain: its CUGs are routed to each other (symmetric IRB over `l3vni`)."""

    l3vni: Vni


class Cug(Model):
    """An L2 segment; with a `gateway` and a `tenant` it is also routed (distributed anycast gateway)."""

    vni: Vni
    subnet: TenantSubnet
    gateway: IPv4Address | None = None
    tenant: NodeName | None = None


class VmInterface(Model):
    cug: NodeName
    mac: Mac
    ip: IPv4Address


class Vm(Model):
    server: NodeName
    interfaces: list[VmInterface] = Field(min_length=1)

    def interface_in(self, cug: str) -> VmInterface | None:
        """This VM's interface in `cug`, if any."""
        return next((i for i in self.interfaces if i.cug == cug), None)


class WanClient(Model):
    ip: WanClientIp


class Wan(Model):
    """The outside world, reached through the data centers' border routers."""

    clients: dict[NodeName, WanClient] = Field(default_factory=dict)


class Topology(Model):
    """A lab: data centers of servers, CUGs (L2 segments), VMs attached to CUGs, tenants
    routing CUGs to each other, and WAN clients."""

    name: LabName
    datacenters: dict[NodeName, Datacenter] = Field(min_length=1)
    tenants: dict[NodeName, Tenant] = Field(default_factory=dict)
    anycast_gateway_mac: Mac = DEFAULT_ANYCAST_MAC
    cugs: dict[NodeName, Cug] = Field(default_factory=dict)
    vms: dict[NodeName, Vm] = Field(default_factory=dict)
    wan: Wan | None = None

    def server_dc(self) -> dict[str, str]:
        """Server name -> data center name, in file order."""
        return {s: dc for dc, d in self.datacenters.items() for s in d.servers}

    def border_of(self, dc: str) -> str:
        """Node name of `dc`'s border router (explicit, or f"{dc}br")."""
        return self.datacenters[dc].border or f"{dc}br"

    def node_names(self) -> set[str]:
        """Names of all nodes: servers, borders, VMs and WAN clients."""
        return (set(self.server_dc()) | {self.border_of(dc) for dc in self.datacenters} | set(self.vms)
                | set(self.wan_clients()))

    def wan_clients(self) -> dict[str, WanClient]:
        """WAN client name -> client, in file order (empty without `wan`)."""
        return dict(self.wan.clients) if self.wan is not None else {}

    def tenant_of(self, cug: str) -> str | None:
        """Tenant of `cug` (KeyError if unknown), or None for an L2-only CUG."""
        return self.cugs[cug].tenant

    def routed_interface(self, vm: str) -> tuple[int, VmInterface] | None:
        """(index, interface) of `vm`'s first interface in a routed CUG (one with a tenant), or None."""
        return next(((i, itf) for i, itf in enumerate(self.vms[vm].interfaces)
                     if self.tenant_of(itf.cug) is not None), None)

    @model_validator(mode="after")
    def _cross_check(self) -> Topology:
        problems = _check_topology(self)
        if problems:
            raise CrossCheckError(problems)
        return self


def _check_topology(t: Topology) -> list[Problem]:
    problems: list[Problem] = []
    nodes: dict[str, str] = {}  # node name -> path where it was defined

    def node(name: str, path: str, kind: str) -> None:
        if name in nodes:
            problems.append((path, f"{kind} name {name!r} is already used at {nodes[name]}"))
        else:
            nodes[name] = path

    server_dcs: dict[str, str] = {}
    for dc, d in t.datacenters.items():
        for i, server in enumerate(d.servers):
            if server in server_dcs:
                other = server_dcs[server]
                reason = f"listed twice in {dc}" if other == dc else f"already in datacenter {other}"
                problems.append((f"datacenters.{dc}.servers[{i}]", f"server {server!r} is {reason}"))
                continue
            server_dcs[server] = dc
            node(server, f"datacenters.{dc}.servers[{i}]", "server")
        if d.border is not None:
            node(d.border, f"datacenters.{dc}.border", "border")
        else:
            border = t.border_of(dc)
            if not re.fullmatch(NODE_NAME_RE, border):
                problems.append((f"datacenters.{dc}", f"default border name {border!r} does not match "
                                 f"{NODE_NAME_RE}; set `border:` or shorten the datacenter name"))
            else:
                node(border, f"datacenters.{dc} (default border)", "border")

    if t.anycast_gateway_mac.startswith((ROUTER_MAC_PREFIX, BRIDGE_MAC_PREFIX)):
        problems.append(("anycast_gateway_mac", f"MACs {ROUTER_MAC_PREFIX}xx:xx and {BRIDGE_MAC_PREFIX}xx:xx "
                         "are roamnet's router and bridge MACs"))
    servers = t.server_dc()
    cug_vnis: dict[int, str] = {}  # VNI -> first CUG using it
    for name, cug in t.cugs.items():
        cug_vnis.setdefault(cug.vni, name)
    l3vnis: dict[int, str] = {}
    for name, tenant in t.tenants.items():
        path = f"tenants.{name}.l3vni"
        if tenant.l3vni in l3vnis:
            problems.append((path, f"L3 VNI {tenant.l3vni} is already used by tenant {l3vnis[tenant.l3vni]}"))
        elif tenant.l3vni in cug_vnis:
            problems.append((path, f"L3 VNI {tenant.l3vni} is already used by CUG {cug_vnis[tenant.l3vni]}"))
        l3vnis.setdefault(tenant.l3vni, name)

    vnis: dict[int, str] = {}
    subnets: dict[str, IPv4Network] = {}
    for name, cug in t.cugs.items():
        if cug.vni in vnis:
            problems.append((f"cugs.{name}.vni", f"VNI {cug.vni} is already used by CUG {vnis[cug.vni]}"))
        vnis.setdefault(cug.vni, name)
        for other, net in subnets.items():
            if cug.subnet.overlaps(net):
                problems.append((f"cugs.{name}.subnet", f"{cug.subnet} overlaps {net} of CUG {other}"))
        subnets[name] = cug.subnet
        if cug.tenant is not None and cug.tenant not in t.tenants:
            problems.append((f"cugs.{name}.tenant", f"unknown tenant {cug.tenant!r}"))
        if cug.gateway is not None and cug.tenant is None:
            problems.append((f"cugs.{name}.tenant", "a CUG with a gateway needs a tenant "
                             "(add `tenant:` or remove `gateway:`)"))
        if cug.tenant is not None and cug.gateway is None:
            problems.append((f"cugs.{name}.gateway", "a CUG with a tenant needs a gateway "
                             "(add `gateway:` or remove `tenant:`)"))
        gw, net = cug.gateway, cug.subnet
        if gw is not None and gw not in net:
            problems.append((f"cugs.{name}.gateway", f"{gw} is outside subnet {net} of CUG {name}"))
        elif gw is not None and gw in (net.network_address, net.broadcast_address):
            kind = "network" if gw == net.network_address else "broadcast"
            problems.append((f"cugs.{name}.gateway", f"{gw} is the {kind} address of subnet {net}"))

    macs: dict[str, str] = {}
    ips: dict[IPv4Address, str] = {}
    for name, vm in t.vms.items():
        node(name, f"vms.{name}", "VM")
        if vm.server not in servers:
            problems.append((f"vms.{name}.server", f"unknown server {vm.server!r}"))
        seen_cugs: set[str] = set()
        for i, iface in enumerate(vm.interfaces):
            path = f"vms.{name}.interfaces[{i}]"
            if iface.mac in macs:
                problems.append((f"{path}.mac", f"duplicate MAC {iface.mac} (also at {macs[iface.mac]})"))
            elif iface.mac == t.anycast_gateway_mac:
                problems.append((f"{path}.mac", f"{iface.mac} is the anycast gateway MAC (anycast_gateway_mac)"))
            elif iface.mac.startswith(RESERVED_MAC_PREFIX + ":"):
                problems.append((f"{path}.mac", f"MACs {RESERVED_MAC_PREFIX}:xx:xx:xx are reserved for "
                                 "roamnet's gateway and router MACs"))
            macs.setdefault(iface.mac, f"{path}.mac")
            if iface.ip in ips:
                problems.append((f"{path}.ip", f"duplicate IP {iface.ip} (also at {ips[iface.ip]})"))
            ips.setdefault(iface.ip, f"{path}.ip")
            cug = t.cugs.get(iface.cug)
            if cug is None:
                problems.append((f"{path}.cug", f"unknown CUG {iface.cug!r}"))
                continue
            if iface.cug in seen_cugs:
                problems.append((f"{path}.cug", f"{name} already has an interface in CUG {iface.cug}"))
            seen_cugs.add(iface.cug)
            net = cug.subnet
            if iface.ip not in net:
                problems.append((f"{path}.ip", f"{iface.ip} is outside subnet {net} of CUG {iface.cug}"))
            elif iface.ip in (net.network_address, net.broadcast_address):
                kind = "network" if iface.ip == net.network_address else "broadcast"
                problems.append((f"{path}.ip", f"{iface.ip} is the {kind} address of subnet {net}"))
            elif iface.ip == cug.gateway:
                problems.append((f"{path}.ip", f"{iface.ip} is the gateway of CUG {iface.cug}"))

    client_ips: dict[IPv4Address, str] = {}
    for name, client in t.wan_clients().items():
        path = f"wan.clients.{name}"
        node(name, path, "WAN client")
        if client.ip in client_ips:
            problems.append((f"{path}.ip", f"duplicate IP {client.ip} (also at {client_ips[client.ip]})"))
        client_ips.setdefault(client.ip, f"{path}.ip")
    return problems


# ---------------------------------------------------------------- errors and loading


def yaml_path(loc: Iterable[int | str], data: Any = None) -> str:
    """Render a pydantic `loc` as a YAML path (`vms.vm1.interfaces[0].ip`), using `data`
    to tell list indices from mapping keys."""
    out = ""
    cur = data
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int) and not isinstance(cur, Mapping):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        try:
            cur = cur[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            cur = None
    return out


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def problems_from(err: ValidationError, data: Any) -> list[Problem]:
    """Convert pydantic errors to (YAML path, reason) problems."""
    problems: list[Problem] = []
    for e in err.errors():
        path = yaml_path(e["loc"], data)
        exc = (e.get("ctx") or {}).get("error")
        if isinstance(exc, CrossCheckError):
            problems += [(_join(path, p), r) for p, r in exc.problems]
        elif isinstance(exc, ValueError):
            problems.append((path, str(exc)))
        else:
            problems.append((path, _reason(e)))
    return problems


def _reason(e: Any) -> str:
    kind, value = e["type"], e.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "string_pattern_mismatch":
        hint = " (node names become parts of Linux interface names)" if e["ctx"]["pattern"] == NODE_NAME_RE else ""
        return f"invalid name {value!r}: must match {e['ctx']['pattern']}{hint}"
    msg = e["msg"][0].lower() + e["msg"][1:]
    if value is None or isinstance(value, (str, int, float, bool)):
        msg += f" (got {value!r})"
    return msg


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse YAML text whose top level must be a mapping."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise IntentError(source, [("", f"YAML error{where}: {e.problem or e.context}")]) from None
    except yaml.YAMLError as e:
        raise IntentError(source, [("", f"YAML error: {e}")]) from None
    if not isinstance(data, dict):
        kinds = {type(None): "an empty file", list: "a list", str: "a string", bool: "a boolean"}
        got = kinds.get(type(data), "a number")
        raise IntentError(source, [("", f"top level must be a mapping, got {got}")])
    return data


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping; errors are IntentErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntentError(str(path), [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise IntentError(str(path), [("", f"cannot read file: {getattr(e, 'strerror', None) or e}")]) from None
    return read_yaml(text, str(path))


def parse_topology(data: Any, source: str = "<inline>") -> Topology:
    """Validate a topology given as plain data (e.g. parsed YAML)."""
    if not isinstance(data, Mapping):
        raise IntentError(source, [("", f"a topology must be a mapping, got {type(data).__name__}")])
    try:
        return Topology.model_validate(data)
    except ValidationError as e:
        raise IntentError(source, problems_from(e, data)) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file."""
    return parse_topology(read_yaml_file(path), str(path))


def topology_json_schema() -> dict[str, Any]:
    """JSON Schema of the topology file format."""
    schema = Topology.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "roamnet topology"}
