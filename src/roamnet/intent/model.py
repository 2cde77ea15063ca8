"""The intent model: a lab's data centers, servers, closed user groups (CUGs), VMs,
tenants (routing domains of CUGs with an anycast gateway), WAN clients and policies (ordered
allow/deny rules between CUGs, VMs and prefixes).

Addresses are unique per scope: the scope of a routed CUG is its tenant, an L2-only CUG is a
scope of its own. Two tenants may thus reuse a subnet and its IPs (unless the lab has WAN
clients: the WAN has one routing table, so routed CUGs of all tenants need distinct subnets).

A data center's servers are grouped in L2 physical domains (draft §3.1). A server listed
directly under `servers:` is a trivial domain of its own (the NVE is in the server). A domain
with a `tor` is non-trivial: its servers reach the ToR switch, which is the NVE, over 802.1Q
trunks, and each CUG present in the domain takes a VLAN of the domain's `vlans` range (VLAN
IDs only mean something inside one domain).

Validation happens in two phases: pydantic checks each field (types, ranges, names,
unknown keys), then `Topology` cross-checks references and uniqueness. Every problem
is reported as an `IntentError` entry `(YAML path, reason)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

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

from roamnet.names import BRIDGE_MAC_PREFIX, DEFAULT_ANYCAST_MAC, RESERVED_MAC_PREFIX, ROUTER_MAC_PREFIX

LAB_NAME_RE = r"^[a-z][a-z0-9-]{0,19}$"
NODE_NAME_RE = r"^[a-z][a-z0-9_]{0,10}$"  # node names become parts of Linux interface names
RULE_NAME_RE = r"^[a-z][a-z0-9_.-]{0,62}$"  # rule names appear in nftables rule comments (deny:<name>)
RESERVED_NAMES = frozenset({"wan", "dci"})  # the lab's WAN and DCI routers
TENANT_RANGE = IPv4Network("198.19.0.0/16")  # RFC 2544; the underlay uses 198.18.0.0/16
WAN_CLIENT_RANGE = IPv4Network("198.18.192.0/19")  # the only part of the underlay /16 left to WAN clients
VNI_MAX = 2**24 - 1
MAC_RE = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"  # accepted input; stored as lowercase xx:xx:..
VLAN_MAX = 4094  # 0 and 4095 are reserved by 802.1Q
DEFAULT_VLANS = (2, VLAN_MAX)  # a ToR domain's range when `vlans:` is omitted (VLAN 1 is often the native one)
VLAN_RANGE_RE = r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$"  # "lo-hi" (or one ID); stored as "lo-hi"
PORT_MAX = 65535
PREFIX_RE = r"^\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?$"  # a policy prefix: "a.b.c.d/len" (a bare address is a /32)
ENDPOINT_KINDS = ("cug", "vm", "prefix", "any")  # a policy endpoint gives exactly one of these

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


def _vlan_id(vlan: int) -> int:
    if not 1 <= vlan <= VLAN_MAX:
        raise ValueError(f"VLAN ID must be in 1..{VLAN_MAX}, got {vlan}")
    return vlan


def _vlan_range(value: Any) -> str:
    """Parse a VLAN range: "lo-hi", or one VLAN ID (int); normalised to "lo-hi"."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f'a VLAN range must be a string "lo-hi" or one VLAN ID, got {type(value).__name__}')
    if isinstance(value, int):
        lo = hi = value
    else:
        m = re.fullmatch(VLAN_RANGE_RE, value)
        if m is None:
            raise ValueError(f'malformed VLAN range {value!r} (expected "lo-hi" like "100-199", or one VLAN ID)')
        lo, hi = int(m[1]), int(m[2] or m[1])
    if not (1 <= lo <= VLAN_MAX and 1 <= hi <= VLAN_MAX):
        raise ValueError(f"VLAN range {lo}-{hi} is outside 1..{VLAN_MAX}")
    if lo > hi:
        raise ValueError(f"VLAN range {lo}-{hi} is empty (its low end is above its high end)")
    return f"{lo}-{hi}"


def parse_vlan_range(text: str) -> tuple[int, int]:
    """(lo, hi) of a VLAN range as stored ("lo-hi")."""
    lo, _, hi = _vlan_range(text).partition("-")
    return int(lo), int(hi)


def _port(port: int) -> int:
    if not 1 <= port <= PORT_MAX:
        raise ValueError(f"port {port} is outside 1..{PORT_MAX}")
    return port


def _prefix(value: Any) -> IPv4Network:
    """Parse a policy prefix strictly: "a.b.c.d/len" without host bits (a bare address is a /32)."""
    if isinstance(value, IPv4Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f'a prefix must be a string "address/length" like 198.19.1.0/24, got {type(value).__name__}')
    try:
        return IPv4Network(value.strip())
    except ValueError:
        pass
    try:
        loose = IPv4Network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f'malformed IPv4 prefix {value!r} (expected "address/length" like 198.19.1.0/24)') from None
    raise ValueError(f"{value.strip()} has host bits set (did you mean {loose}?)")


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
RuleName = Annotated[str, StringConstraints(pattern=RULE_NAME_RE)]
NodeName = Annotated[str, StringConstraints(pattern=NODE_NAME_RE), AfterValidator(_not_reserved)]
Mac = Annotated[str, BeforeValidator(_mac), WithJsonSchema({"type": "string", "pattern": MAC_RE})]
Vni = Annotated[int, Strict(), AfterValidator(_vni),
                WithJsonSchema({"type": "integer", "minimum": 1, "maximum": VNI_MAX})]
VlanId = Annotated[int, Strict(), AfterValidator(_vlan_id),
                   WithJsonSchema({"type": "integer", "minimum": 1, "maximum": VLAN_MAX})]
VlanRange = Annotated[str, BeforeValidator(_vlan_range), WithJsonSchema({"anyOf": [
    {"type": "string", "pattern": VLAN_RANGE_RE},
    {"type": "integer", "minimum": 1, "maximum": VLAN_MAX},
]})]
Port = Annotated[int, Strict(), AfterValidator(_port),
                WithJsonSchema({"type": "integer", "minimum": 1, "maximum": PORT_MAX})]
Prefix = Annotated[IPv4Network, BeforeValidator(_prefix), WithJsonSchema({"type": "string", "pattern": PREFIX_RE})]
TenantSubnet = Annotated[IPv4Network, AfterValidator(_tenant_subnet)]
WanClientIp = Annotated[IPv4Address, AfterValidator(_wan_client_ip)]


class Model(BaseModel):
    """Base of all intent models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- models


class Domain(Model):
    """An L2 physical domain (§3.1): with a `tor`, the ToR switch is the NVE of its servers, which
    reach it over 802.1Q trunks, one VLAN of `vlans` per CUG; without one, the NVE is in each server."""

    tor: NodeName | None = Field(default=None, description=(
        "node name of the ToR switch, the NVE of this domain's servers (omit: the NVE is in each server)"))
    servers: list[NodeName] = Field(min_length=1, description="servers of this domain")
    vlans: VlanRange | None = Field(default=None, description=(
        'VLAN IDs the ToR gives to CUGs in this domain: "lo-hi" or one ID, within 1..4094 '
        f'(default "{DEFAULT_VLANS[0]}-{DEFAULT_VLANS[1]}"); only for a domain with a tor'))

    def vlan_range(self) -> tuple[int, int] | None:
        """(lo, hi) of the VLANs this domain allocates (the default without `vlans:`); None without a tor."""
        if self.tor is None:
            return None
        return parse_vlan_range(self.vlans) if self.vlans is not None else DEFAULT_VLANS


class Datacenter(Model):
    """A data center: servers grouped in L2 physical domains, and a border router. At least one
    server in all (in `servers:` or in a domain)."""

    servers: list[NodeName] = Field(default_factory=list, description=(
        "servers that are each a trivial L2 physical domain of their own (the NVE is in the server)"))
    domains: dict[NodeName, Domain] = Field(default_factory=dict, description=(
        "L2 physical domains by name (names unique in the topology and distinct from node names)"))
    border: NodeName | None = None


@dataclass(frozen=True)
class DomainInfo:
    """One L2 physical domain, resolved: a declared one, or the trivial domain of a server listed
    directly in its data center's `servers:` (named after that server)."""

    name: str
    dc: str
    tor: str | None  # None: trivial, the NVE is in each server
    servers: tuple[str, ...]
    vlans: tuple[int, int] | None  # (lo, hi) the ToR allocates from; None when trivial

    @property
    def trivial(self) -> bool:
        return self.tor is None


@dataclass(frozen=True)
class NveInfo:
    """One NVE of the topology (an overlay edge with a VTEP): a server of a trivial domain, a ToR, a
    border when there are tenants (a DCBR is an NVE of every tenant), or a server behind a ToR (a
    hypervisor switch: `tor` names its ToR, whose VTEP it shares)."""

    name: str
    dc: str
    role: str  # server | tor | border
    tor: str = ""
    domain: str = ""  # a ToR's, or a server behind one: its non-trivial domain


class Tenant(Model):
    """A routing domain: its CUGs are routed to each other (symmetric IRB over `l3vni`)."""

    l3vni: Vni
    default_policy: Literal["allow", "deny"] = Field(default="allow", description=(
        "what crosses CUGs of this tenant when no policy rule matches; inside one CUG traffic is "
        "allowed unless a rule says otherwise"))


PerSecond = Annotated[int, Strict(), Field(ge=1, le=1_000_000)]


class Limits(Model):
    """Budgets of each VM port, in packets per second (burst: twice the rate); omitted ones inherit
    (a CUG's from the fabric's `limits:`, the fabric's from roamnet's defaults). Over budget: dropped
    at the port and counted by kind."""

    announce: PerSecond | None = Field(default=None, description=(
        "RARPs and gratuitous ARPs a VM port may send (what moves a VM; the agent reads only these)"))
    arp: PerSecond | None = Field(default=None, description="ARP requests a VM port may send")
    bum: PerSecond | None = Field(default=None, description=(
        "broadcast and multicast frames from a VM port that head for VXLAN (one copy per NVE of the CUG)"))


class Mobility(Model):
    """Duplicate detection (RFC 7432 §15.1): `max_moves` moves of one MAC within `window_s` seconds mean
    two hosts claim it (a clone, a loop): the binding freezes where it is. Omitted ones inherit (a
    CUG's from the fabric's `mobility:`, the fabric's from the defaults 5 and 180, as EVPN's)."""

    max_moves: Annotated[int, Strict(), Field(ge=2, le=1000)] | None = Field(default=None, description=(
        "moves within the window that freeze a MAC (the last of them does not happen)"))
    window_s: Annotated[float, Field(gt=0, le=86400)] | None = Field(default=None, description="the window, in seconds")
    hold_down_s: Annotated[float, Field(ge=0, le=86400)] | None = Field(default=None, description=(
        "a frozen MAC thaws after this many seconds (0, the default: only `roamnet lab unfreeze` thaws it)"))


class Cug(Model):
    """An L2 segment; with a `gateway` and a `tenant` it is also routed (distributed anycast gateway).
    A routed CUG's addresses are unique in its tenant; an L2-only CUG is an address scope of its own."""

    vni: Vni
    subnet: TenantSubnet
    gateway: IPv4Address | None = None
    tenant: NodeName | None = None
    flood_unknown_arp: bool = Field(default=True, description=(
        "whether ARP requests for IPs the mapping does not know are flooded to the other NVEs of the "
        "segment; requests for known IPs are always answered locally"))
    limits: Limits | None = Field(default=None, description="this CUG's per-port budgets (default: the fabric's)")
    mobility: Mobility | None = Field(default=None, description="this CUG's duplicate detection (default: the fabric's)")


class VmInterface(Model):
    """One interface of a VM in one CUG. Interfaces of a VM sharing a MAC are one NIC carrying
    several guest VLANs (a trunk): each of them needs a distinct `vlan` and a distinct CUG."""

    cug: NodeName
    mac: Mac
    ip: IPv4Address
    vlan: VlanId | None = Field(default=None, description=(
        "802.1Q tag the guest itself puts on this interface's frames (part of the VM, kept across moves)"))
    sticky: bool = Field(default=False, description=(
        "never moved by what an NVE sees (a port up, an announcement), only by a planned move: for "
        "gateways, appliances and the like; a claim of its MAC elsewhere is refused and counted"))


GUEST_KINDS = ("namespace", "qemu")
GUEST_MEMORY_MIB = (64, 4096)  # a QEMU guest's memory range, MiB


class Vm(Model):
    server: NodeName
    interfaces: list[VmInterface] = Field(min_length=1)
    guest: Literal["namespace", "qemu"] = Field(default="namespace", description=(
        "what runs the VM in the lab: `namespace` (network namespaces, moved by link flips) or `qemu` (a real "
        "guest, live-migrated by QEMU; `make install` builds its kernel and initramfs)"))
    memory: Annotated[int, Strict()] | None = Field(default=None, description=(
        f"a QEMU guest's memory in MiB ({GUEST_MEMORY_MIB[0]}..{GUEST_MEMORY_MIB[1]}; default 128)"))

    def interface_in(self, cug: str) -> VmInterface | None:
        """This VM's interface in `cug`, if any."""
        return next((i for i in self.interfaces if i.cug == cug), None)


class WanClient(Model):
    ip: WanClientIp


class Wan(Model):
    """The outside world, reached through the data centers' border routers."""

    clients: dict[NodeName, WanClient] = Field(default_factory=dict)


class Endpoint(Model):
    """One side of a policy rule: exactly one of `cug`, `vm`, `prefix`, `any`."""

    cug: NodeName | None = Field(default=None, description="every VM interface in this CUG")
    vm: NodeName | None = Field(default=None, description="every interface of this VM")
    prefix: Prefix | None = Field(default=None, description=(
        'addresses in this IPv4 prefix, "address/length" without host bits (a bare address is a /32)'))
    any: Literal[True] | None = Field(default=None, description="`any: true`: every address")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError("an endpoint is a mapping with exactly one of cug, vm, prefix, any "
                             f"(like {{cug: web}} or {{any: true}}), got {data!r}")
        if data.get("any") is False:
            raise ValueError("`any: false` matches nothing: write `any: true`, or give cug, vm or prefix instead")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Endpoint:
        given = self.kinds()
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(ENDPOINT_KINDS)} "
                             f"(got {', '.join(given) if given else 'none'})")
        return self

    def kinds(self) -> list[str]:
        """Which of cug, vm, prefix, any this endpoint gives (exactly one once validated)."""
        return [k for k in ENDPOINT_KINDS if getattr(self, k) is not None]


class Policy(Model):
    """One rule: traffic `from` one endpoint `to` another (one direction), matching `proto` and
    `ports` (destination ports), is allowed or denied. Rules are tried in order; the first match wins."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # Policy(from_=...) in code, `from:` in YAML

    name: RuleName = Field(description="name of the rule, unique among policies")
    from_: Endpoint = Field(alias="from", description="source: exactly one of cug, vm, prefix, any")
    to: Endpoint = Field(description="destination: exactly one of cug, vm, prefix, any")
    proto: Literal["tcp", "udp", "icmp", "any"] = Field(default="any", description="protocol the rule matches")
    ports: list[Port] = Field(default_factory=list, description=(
        "destination ports (1..65535), only with proto tcp or udp; empty: every port"))
    action: Literal["allow", "deny"] = Field(description="what happens to matching traffic")
    tenant: NodeName | None = Field(default=None, description=(
        "tenant the rule applies in, for a rule whose endpoints are only prefix/any (omit: the tenant "
        "of its cug/vm endpoints); a cug or vm endpoint must be in it"))


class Topology(Model):
    """A lab: data centers of servers, CUGs (L2 segments), VMs attached to CUGs, tenants
    routing CUGs to each other, and WAN clients."""

    name: LabName
    datacenters: dict[NodeName, Datacenter] = Field(min_length=1)
    tenants: dict[NodeName, Tenant] = Field(default_factory=dict)
    anycast_gateway_mac: Mac = DEFAULT_ANYCAST_MAC
    limits: Limits = Field(default_factory=Limits, description="every VM port's budgets, unless its CUG says")
    mobility: Mobility = Field(default_factory=Mobility, description="duplicate detection, unless a CUG says")
    cugs: dict[NodeName, Cug] = Field(default_factory=dict)
    vms: dict[NodeName, Vm] = Field(default_factory=dict)
    wan: Wan | None = None
    policies: list[Policy] = Field(default_factory=list, description=(
        "policy rules, in order: the first rule matching a packet decides; without a match a tenant's "
        "default_policy applies between its CUGs, and traffic inside one CUG is allowed"))
    vteps: dict[NodeName, IPv4Address] = Field(default_factory=dict, description=(
        "the VTEP address of every NVE on real hosts (servers listed in `servers:`, ToRs, and borders when "
        "there are tenants), for `roamnet apply`: all of them or none (then apply uses the lab plan's "
        "addresses); a server behind a ToR has its ToR's. The lab builds its own underlay and ignores them"))

    def server_dc(self) -> dict[str, str]:
        """Server name -> data center name, for all servers: data center by data center, the ones
        listed directly in `servers:` first, then the domains' in file order."""
        out: dict[str, str] = {}
        for dc, d in self.datacenters.items():
            for s in [*d.servers, *(s for dom in d.domains.values() for s in dom.servers)]:
                out.setdefault(s, dc)
        return out

    def domains(self) -> dict[str, DomainInfo]:
        """Domain name -> domain, for every domain: data center by data center, one trivial domain
        per server listed directly in `servers:` (named after it), then the declared ones."""
        out: dict[str, DomainInfo] = {}
        for dc, d in self.datacenters.items():
            for s in d.servers:
                out.setdefault(s, DomainInfo(s, dc, None, (s,), None))
            for name, dom in d.domains.items():
                out.setdefault(name, DomainInfo(name, dc, dom.tor, tuple(dom.servers), dom.vlan_range()))
        return out

    def domain_of(self, server: str) -> DomainInfo:
        """The domain `server` belongs to (KeyError if it is no server)."""
        info = next((d for d in self.domains().values() if server in d.servers), None)
        if info is None:
            raise KeyError(server)
        return info

    def tors(self) -> dict[str, DomainInfo]:
        """ToR node name -> its (non-trivial) domain, in file order."""
        return {d.tor: d for d in self.domains().values() if d.tor is not None}

    def nics(self, vm: str) -> list[tuple[int, ...]]:
        """`vm`'s NICs: indices of its interfaces grouped by MAC, in order of first appearance
        (e.g. [(0,), (1, 2)]: interfaces 1 and 2 are guest VLANs of one NIC)."""
        groups: dict[str, list[int]] = {}
        for i, itf in enumerate(self.vms[vm].interfaces):
            groups.setdefault(itf.mac, []).append(i)
        return [tuple(g) for g in groups.values()]

    def owners_of_ip(self, ip: IPv4Address | str) -> list[tuple[str, int | None]]:
        """Every (VM name, interface index) and (WAN client name, None) having address `ip`, VMs
        first, in file order (empty if nobody has it or `ip` is no address). Addresses are unique
        per scope (see `scope_of`), so VMs of several tenants may share one."""
        try:
            addr = IPv4Address(ip)
        except ValueError:
            return []
        owners: list[tuple[str, int | None]] = [
            (name, i) for name, vm in self.vms.items() for i, itf in enumerate(vm.interfaces) if itf.ip == addr]
        return owners + [(name, None) for name, c in self.wan_clients().items() if c.ip == addr]

    def owner_of_ip(self, ip: IPv4Address | str) -> tuple[str, int | None] | None:
        """The first of `owners_of_ip(ip)`, or None."""
        return next(iter(self.owners_of_ip(ip)), None)

    def nves(self) -> list[NveInfo]:
        """Every NVE, data center by data center: its border when there are tenants, then its domains'
        (a server of a trivial domain; a ToR followed by the servers behind it)."""
        out: list[NveInfo] = []
        for dc in self.datacenters:
            if self.tenants:
                out.append(NveInfo(self.border_of(dc), dc, "border"))
            for d in self.domains().values():
                if d.dc != dc:
                    continue
                if d.tor is None:
                    out.append(NveInfo(d.servers[0], dc, "server"))
                else:
                    out.append(NveInfo(d.tor, dc, "tor", domain=d.name))
                    out += [NveInfo(s, dc, "server", d.tor, d.name) for s in d.servers]
        return out

    def border_of(self, dc: str) -> str:
        """Node name of `dc`'s border router (explicit, or f"{dc}br")."""
        return self.datacenters[dc].border or f"{dc}br"

    def node_names(self) -> set[str]:
        """Names of all nodes: servers, ToR switches, borders, VMs and WAN clients."""
        return (set(self.server_dc()) | set(self.tors()) | {self.border_of(dc) for dc in self.datacenters}
                | set(self.vms) | set(self.wan_clients()))

    def wan_clients(self) -> dict[str, WanClient]:
        """WAN client name -> client, in file order (empty without `wan`)."""
        return dict(self.wan.clients) if self.wan is not None else {}

    def tenant_of(self, cug: str) -> str | None:
        """Tenant of `cug` (KeyError if unknown), or None for an L2-only CUG."""
        return self.cugs[cug].tenant

    def scope_of(self, cug: str) -> str:
        """Address scope of `cug` (KeyError if unknown): its tenant's name for a routed CUG,
        "cug:<name>" for an L2-only CUG (a scope of its own)."""
        tenant = self.cugs[cug].tenant
        return tenant if tenant is not None else f"cug:{cug}"

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

    server_at: dict[str, tuple[str, str]] = {}  # server -> (data center, path where it was listed)

    def server(name: str, dc: str, path: str) -> None:
        if name in server_at:
            other, where = server_at[name]
            reason = f"listed twice in {dc}" if other == dc else f"already in datacenter {other}"
            problems.append((path, f"server {name!r} is {reason} (also at {where})"))
            return
        server_at[name] = (dc, path)
        node(name, path, "server")

    for dc, d in t.datacenters.items():
        for i, s in enumerate(d.servers):
            server(s, dc, f"datacenters.{dc}.servers[{i}]")
        for name, dom in d.domains.items():
            path = f"datacenters.{dc}.domains.{name}"
            if dom.tor is not None:
                node(dom.tor, f"{path}.tor", "ToR")
            elif dom.vlans is not None:
                problems.append((f"{path}.vlans", "only a domain with a tor allocates VLANs (without `tor:` the "
                                 "NVE is in each server and no VLAN is used); add `tor:` or remove `vlans:`"))
            for i, s in enumerate(dom.servers):
                server(s, dc, f"{path}.servers[{i}]")
        if not d.servers and not d.domains:
            problems.append((f"datacenters.{dc}", f"datacenter {dc} has no server: list at least one in "
                             "`servers:` or in a domain of `domains:`"))
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
    one_table = bool(t.wan_clients())  # the WAN routes all tenants' subnets in one table
    for name, cug in t.cugs.items():
        if cug.vni in vnis:
            problems.append((f"cugs.{name}.vni", f"VNI {cug.vni} is already used by CUG {vnis[cug.vni]}"))
        vnis.setdefault(cug.vni, name)
        for other, net in subnets.items():
            if not cug.subnet.overlaps(net):
                continue
            other_tenant = t.cugs[other].tenant
            if cug.tenant is not None and cug.tenant == other_tenant:
                problems.append((f"cugs.{name}.subnet", f"{cug.subnet} overlaps {net} of CUG {other} (CUGs of "
                                 f"one tenant, here {cug.tenant}, need distinct subnets)"))
            elif one_table and cug.tenant is not None and other_tenant is not None:
                problems.append((f"cugs.{name}.subnet", f"{cug.subnet} overlaps {net} of CUG {other} (tenant "
                                 f"{other_tenant}): the WAN has one routing table, so tenants that reach the WAN "
                                 "need distinct subnets"))
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

    macs: dict[str, tuple[str, str]] = {}  # MAC -> (VM, path where it was first used)
    ips: dict[tuple[str, IPv4Address], str] = {}  # (address scope, IP) -> path where it was first used
    for name, vm in t.vms.items():
        node(name, f"vms.{name}", "VM")
        if vm.server not in servers:
            problems.append((f"vms.{name}.server", _not_a_server(t, vm.server)))
        seen_cugs: set[str] = set()
        for i, iface in enumerate(vm.interfaces):
            path = f"vms.{name}.interfaces[{i}]"
            if iface.mac in macs:
                owner, where = macs[iface.mac]
                if owner != name:
                    problems.append((f"{path}.mac", f"duplicate MAC {iface.mac} (also at {where}; only "
                                     "interfaces of one VM may share a MAC, as guest VLANs of one NIC)"))
            elif iface.mac == t.anycast_gateway_mac:
                problems.append((f"{path}.mac", f"{iface.mac} is the anycast gateway MAC (anycast_gateway_mac)"))
            elif iface.mac.startswith(RESERVED_MAC_PREFIX + ":"):
                problems.append((f"{path}.mac", f"MACs {RESERVED_MAC_PREFIX}:xx:xx:xx are reserved for "
                                 "roamnet's gateway and router MACs"))
            macs.setdefault(iface.mac, (name, f"{path}.mac"))
            if iface.cug in t.cugs:  # (an unknown CUG is reported below)
                key = (t.scope_of(iface.cug), iface.ip)
                if key in ips:
                    problems.append((f"{path}.ip", f"duplicate IP {iface.ip} in {_scope_text(key[0])} "
                                     f"(also at {ips[key]}; addresses are unique per tenant, and per "
                                     "L2-only CUG)"))
                ips.setdefault(key, f"{path}.ip")
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
        problems += _check_nics(t, name)
        problems += _check_guest(name, vm)

    client_ips: dict[IPv4Address, str] = {}
    for name, client in t.wan_clients().items():
        path = f"wan.clients.{name}"
        node(name, path, "WAN client")
        if client.ip in client_ips:
            problems.append((f"{path}.ip", f"duplicate IP {client.ip} (also at {client_ips[client.ip]})"))
        client_ips.setdefault(client.ip, f"{path}.ip")
    problems += _check_vteps(t)
    problems += _check_domain_names(t, nodes)
    problems += _check_vlan_capacity(t)
    problems += _check_policies(t)
    return problems


def _check_vteps(t: Topology) -> list[Problem]:
    """`vteps:` names NVEs only (a server behind a ToR has its ToR's), gives unicast addresses, each
    once, and gives one for every NVE, or is left out."""
    if not t.vteps:
        return []
    problems: list[Problem] = []
    nves = {n.name: n for n in t.nves()}
    borders = {t.border_of(dc) for dc in t.datacenters}
    seen: dict[IPv4Address, str] = {}
    for name, ip in t.vteps.items():
        path = f"vteps.{name}"
        nve = nves.get(name)
        if nve is not None and nve.tor:
            problems.append((path, f"server {name} is behind ToR {nve.tor}, which is its NVE: give {nve.tor}'s "
                             "VTEP instead"))
        elif nve is None and name in borders:
            problems.append((path, f"border {name} is an NVE only when there are tenants: remove it"))
        elif nve is None:
            problems.append((path, f"{name!r} is no NVE (servers listed in `servers:`, ToRs and, when there are "
                             "tenants, borders have a VTEP)"))
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.packed == b"\xff" * 4:
            problems.append((path, f"{ip} is no unicast host address"))
        elif ip in seen:
            problems.append((path, f"VTEP {ip} is already {seen[ip]}'s (at vteps.{seen[ip]})"))
        seen.setdefault(ip, name)
    missing = [n.name for n in nves.values() if not n.tor and n.name not in t.vteps]
    if missing:
        problems.append(("vteps", f"no VTEP for {', '.join(missing)}: give every NVE's VTEP, or none (then "
                         "`roamnet apply` uses the lab plan's addresses)"))
    return problems


def _scope_text(scope: str) -> str:
    """An address scope (see `Topology.scope_of`) in words: "tenant t1" or "CUG lan (L2-only)"."""
    return f"CUG {scope[4:]} (L2-only)" if scope.startswith("cug:") else f"tenant {scope}"


def _scopes_text(scopes: Iterable[str]) -> str:
    """Several scopes in words: "tenant t1", "tenants t1 and t2", "tenant t1 and CUG lan (L2-only)"."""
    ordered = sorted(scopes)
    tenants = [s for s in ordered if not s.startswith("cug:")]
    words = ([f"tenant{'s' if len(tenants) > 1 else ''} {' and '.join(tenants)}"] if tenants else [])
    words += [_scope_text(s) for s in ordered if s.startswith("cug:")]
    return " and ".join(words)


def _check_policies(t: Topology) -> list[Problem]:
    """Policies name known CUGs and VMs, give ports only for tcp/udp, have unique names, and
    both endpoints (and `tenant:`) share an address scope: different tenants never reach each other."""
    problems: list[Problem] = []
    names: dict[str, int] = {}  # policy name -> first index using it

    def scopes(end: Endpoint, path: str) -> set[str] | None:
        """Scopes `end` is in (None: any scope, a prefix or any); reports an unknown CUG or VM (empty set)."""
        if end.cug is not None:
            if end.cug not in t.cugs:
                problems.append((f"{path}.cug", f"unknown CUG {end.cug!r}"))
                return set()
            return {t.scope_of(end.cug)}
        if end.vm is not None:
            vm = t.vms.get(end.vm)
            if vm is None:
                problems.append((f"{path}.vm", f"unknown VM {end.vm!r}"))
                return set()
            return {t.scope_of(i.cug) for i in vm.interfaces if i.cug in t.cugs}
        return None

    for i, pol in enumerate(t.policies):
        path = f"policies[{i}]"
        if pol.name in names:
            problems.append((f"{path}.name", f"duplicate policy name {pol.name!r} (also policies[{names[pol.name]}])"))
        names.setdefault(pol.name, i)
        if pol.ports and pol.proto not in ("tcp", "udp"):
            problems.append((f"{path}.ports", f"ports need proto tcp or udp (proto is {pol.proto}): "
                             "set `proto:` or remove `ports:`"))
        src, dst = scopes(pol.from_, f"{path}.from"), scopes(pol.to, f"{path}.to")
        if pol.tenant is not None and pol.tenant not in t.tenants:
            problems.append((f"{path}.tenant", f"unknown tenant {pol.tenant!r}"))
        elif pol.tenant is not None:
            for side, end, sc in (("from", pol.from_, src), ("to", pol.to, dst)):
                if sc and pol.tenant not in sc:
                    what = f"CUG {end.cug}" if end.cug is not None else f"VM {end.vm}"
                    problems.append((f"{path}.tenant", f"{side} ({what}) is in {_scopes_text(sc)}, not in tenant "
                                     f"{pol.tenant}: a rule applies in one tenant; fix `tenant:` or the endpoint"))
        if src and dst and not src & dst:
            l2 = " (an L2-only CUG is a scope of its own)" if any(s.startswith("cug:") for s in src | dst) else ""
            problems.append((path, f"from is in {_scopes_text(src)}, to in {_scopes_text(dst)}: different "
                             f"tenants never reach each other{l2}; fix an endpoint or remove the rule"))
    return problems


def _not_a_server(t: Topology, name: str) -> str:
    """Why a VM cannot be on `name`, which is no server."""
    tor = t.tors().get(name)
    if tor is not None:
        return (f"{name} is the ToR switch of domain {tor.name}, and a ToR hosts no VMs "
                f"(put the VM on one of its servers: {', '.join(tor.servers)})")
    return f"unknown server {name!r}"


def _check_nics(t: Topology, vm: str) -> list[Problem]:
    """Interfaces of `vm` sharing a MAC (one NIC, a trunk) each need a distinct guest VLAN.
    (Distinct CUGs are checked for all interfaces of a VM.)"""
    problems: list[Problem] = []
    interfaces = t.vms[vm].interfaces
    for nic in t.nics(vm):
        if len(nic) < 2:
            continue
        mac, shared = interfaces[nic[0]].mac, ", ".join(f"interfaces[{i}]" for i in nic)
        vlans: dict[int, int] = {}  # guest VLAN -> first interface index using it
        for i in nic:
            path, vlan = f"vms.{vm}.interfaces[{i}].vlan", interfaces[i].vlan
            if vlan is None:
                problems.append((path, f"{shared} share MAC {mac}: they are one NIC carrying several guest "
                                 "VLANs, so each needs a `vlan`"))
            elif vlan in vlans:
                problems.append((path, f"guest VLAN {vlan} is already used on this NIC (MAC {mac}) "
                                 f"by interfaces[{vlans[vlan]}]"))
            else:
                vlans[vlan] = i
    return problems


def _check_guest(name: str, vm: Vm) -> list[Problem]:
    """`memory` is a QEMU guest's, in range."""
    if vm.memory is None:
        return []
    path = f"vms.{name}.memory"
    if vm.guest != "qemu":
        return [(path, "only a QEMU guest has memory (add `guest: qemu`, or remove `memory`)")]
    lo, hi = GUEST_MEMORY_MIB
    if not lo <= vm.memory <= hi:
        return [(path, f"a QEMU guest's memory is {lo}..{hi} MiB, got {vm.memory}")]
    return []


def _check_domain_names(t: Topology, nodes: Mapping[str, str]) -> list[Problem]:
    """Domain names are unique in the whole topology and are no node names (a server listed
    directly is a trivial domain named after itself)."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for dc, d in t.datacenters.items():
        for name in d.domains:
            path = f"datacenters.{dc}.domains.{name}"
            if name in seen:
                problems.append((path, f"domain name {name!r} is already used at {seen[name]}"))
            elif name in nodes:
                problems.append((path, f"domain name {name!r} is already a node name (at {nodes[name]}); "
                                 "domains and nodes need distinct names"))
            seen.setdefault(name, path)
    return problems


def _check_vlan_capacity(t: Topology) -> list[Problem]:
    """Each ToR domain's VLAN range holds the CUGs of the VMs initially on its servers."""
    problems: list[Problem] = []
    for dc, d in t.datacenters.items():
        for name, dom in d.domains.items():
            vlans = dom.vlan_range()
            if vlans is None:
                continue
            members = set(dom.servers)
            needed = {itf.cug for vm in t.vms.values() if vm.server in members for itf in vm.interfaces}
            cugs = [c for c in t.cugs if c in needed]
            size = vlans[1] - vlans[0] + 1
            if len(cugs) > size:
                problems.append((f"datacenters.{dc}.domains.{name}.vlans",
                                 f"domain {name} runs out of VLANs: its range {vlans[0]}-{vlans[1]} holds {size}, "
                                 f"but {len(cugs)} CUGs need a VLAN at start ({', '.join(cugs)})"))
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
    if kind == "literal_error":
        return f"unknown value {value!r}: must be {e['ctx']['expected']}"
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
