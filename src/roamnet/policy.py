"""Policies that follow the VM (draft §3.5): the intent's rules, resolved once to address sets, and
what the NVE hosting a VM port enforces for it. Pure: no I/O here.

Semantics (the intent's `policies:` and each tenant's `default_policy`):
  * rules in order, first match wins; an endpoint is a CUG (its subnet), a VM (its addresses), a
    prefix or anything;
  * inside one CUG traffic is allowed unless a rule says otherwise; across CUGs of a tenant, the
    tenant's default applies when no rule matches; different tenants never reach each other (their
    VRFs are separate, no rule is needed for that);
  * a rule belongs to a scope: the tenant of its CUG/VM endpoints (an L2-only CUG is a scope of its
    own), its `tenant:`, or every scope when its endpoints are only prefixes or `any`.

Where it is enforced: at the VM's own port, on the NVE that hosts it, so it moves with the VM.
  * `out` (frames from the VM): port security first (source MAC, source IP, ARP sender fields must
    be the VM's own, as the mapping binds them; anything but IPv4, ARP and RARP is dropped), then
    every rule whose source side holds the VM, matched on the destination;
  * `in` (frames to the VM): sources inside the VM's scope were judged at their own port already and
    pass; others (a WAN client, a prefix) meet the rules whose destination side holds the VM.
The filter is stateless (this kernel has no bridge connection tracking, and a stateless filter has
no state to migrate with the VM): an allowed rule also lets its replies through the other way
(TCP: anything but a bare SYN, so the replying side cannot open a connection; UDP: only from the
rule's ports, so a UDP rule without ports needs its reverse rule for replies). ICMP echo replies and
errors always pass.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mapping import Segment
    from .model import Endpoint, Topology

ALLOW, DENY = "allow", "deny"
ANY_PROTO = "any"


@dataclass(frozen=True)
class Rule:
    """One intent rule with its endpoints resolved to prefixes (None: any address)."""

    name: str
    scopes: tuple[str, ...] | None  # tenants / "cug:<name>" it applies in (None: every scope)
    src: tuple[str, ...] | None
    dst: tuple[str, ...] | None
    proto: str = ANY_PROTO  # tcp | udp | icmp | any
    ports: tuple[int, ...] = ()  # destination ports (tcp, udp); () any
    action: str = ALLOW

    def to_json(self) -> dict:
        return {"name": self.name, "scopes": list(self.scopes) if self.scopes is not None else None,
                "src": list(self.src) if self.src is not None else None,
                "dst": list(self.dst) if self.dst is not None else None,
                "proto": self.proto, "ports": list(self.ports), "action": self.action}

    @classmethod
    def from_json(cls, d: dict) -> Rule:
        def tup(v):
            return tuple(v) if v is not None else None
        return cls(d["name"], tup(d["scopes"]), tup(d["src"]), tup(d["dst"]), d["proto"],
                   tuple(d["ports"]), d["action"])


@dataclass(frozen=True)
class PolicySet:
    rules: tuple[Rule, ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)  # tenant -> allow | deny

    def to_json(self) -> dict:
        return {"rules": [r.to_json() for r in self.rules], "defaults": dict(sorted(self.defaults.items()))}

    @classmethod
    def from_json(cls, d: dict) -> PolicySet:
        return cls(tuple(Rule.from_json(r) for r in d.get("rules", [])), dict(d.get("defaults", {})))


def scope_of(segment: Segment) -> str:
    """A routed CUG's scope is its tenant; an L2-only CUG is a scope of its own."""
    return segment.tenant or f"cug:{segment.name}"


# ---- intent -> rules ----------------------------------------------------------------------------

def resolve(topo: Topology) -> PolicySet:
    """The intent's policies with CUGs and VMs replaced by their addresses (they never change: a move
    changes where a VM is, not what it is)."""
    rules = []
    for p in topo.policies:
        scopes = _meet(_meet(_scopes(topo, p.from_), _scopes(topo, p.to)),
                       (p.tenant,) if p.tenant else None)
        rules.append(Rule(p.name, scopes, _prefixes(topo, p.from_, scopes), _prefixes(topo, p.to, scopes),
                          p.proto, tuple(p.ports), p.action))
    return PolicySet(tuple(rules), {name: t.default_policy for name, t in topo.tenants.items()})


def _scopes(topo: Topology, ep: Endpoint) -> tuple[str, ...] | None:
    if ep.cug is not None:
        return (topo.scope_of(ep.cug),)
    if ep.vm is not None:
        return tuple(dict.fromkeys(topo.scope_of(i.cug) for i in topo.vms[ep.vm].interfaces))
    return None


def _meet(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(s for s in a if s in b)


def _prefixes(topo: Topology, ep: Endpoint, scopes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if ep.cug is not None:
        return (str(topo.cugs[ep.cug].subnet),)
    if ep.vm is not None:
        return tuple(f"{i.ip}/32" for i in topo.vms[ep.vm].interfaces
                     if scopes is None or topo.scope_of(i.cug) in scopes)
    if ep.prefix is not None:
        return (str(ep.prefix),)
    return None


# ---- rules -> one port's filter -----------------------------------------------------------------

@dataclass(frozen=True)
class Clause:
    """One line of a port's filter: packets to (out) / from (in) `peer` with `proto` and `ports`."""

    action: str
    peer: tuple[str, ...] | None = None  # prefixes of the other end (None: any)
    proto: str = ANY_PROTO
    ports: tuple[int, ...] = ()
    reply: bool = False  # a reply of an allowed rule: `ports` are source ports, no bare TCP SYN
    rule: str = ""  # the rule it comes from ("" for the built-in ones)
    local: tuple[str, ...] | None = None  # the VM's own addresses it is about (None: all of them)


@dataclass(frozen=True)
class PortFilter:
    """What the NVE hosting VM interface `iface_id` enforces at its port."""

    iface_id: str
    mac: str
    ips: tuple[str, ...]  # every address of the VM (a multi-homed guest may answer on any interface
    #                       with the address that was asked for)
    out: tuple[Clause, ...]  # from the VM, after port security
    inbound: tuple[Clause, ...]  # to the VM


def _held(prefixes: tuple[str, ...] | None, ips: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses of `ips` inside `prefixes` (None: anything)."""
    if prefixes is None:
        return ips
    nets = [ipaddress.ip_network(p) for p in prefixes]
    return tuple(ip for ip in ips if any(ipaddress.ip_address(ip) in n for n in nets))


def _holds(prefixes: tuple[str, ...] | None, ips: tuple[str, ...]) -> bool:
    return bool(_held(prefixes, ips))


def _local(prefixes: tuple[str, ...] | None, ips: tuple[str, ...]) -> tuple[str, ...] | None:
    held = _held(prefixes, ips)
    return None if held == ips else tuple(f"{ip}/32" for ip in held)


def _reply(r: Rule, peer: tuple[str, ...] | None, local: tuple[str, ...] | None) -> list[Clause]:
    """Replies of allowed rule `r` coming back from `peer` (ICMP replies always pass)."""
    if r.action != ALLOW or r.proto == "icmp":
        return []
    protos = ("tcp", "udp") if r.proto == ANY_PROTO else (r.proto,)
    # a UDP reply is told from a new flow only by its source port: none without the rule's ports
    return [Clause(ALLOW, peer, p, r.ports, True, r.name, local) for p in protos if p == "tcp" or r.ports]


def port_filter(policy: PolicySet, segments: dict[int, Segment], iface_id: str, vni: int, mac: str,
                ips: tuple[str, ...]) -> PortFilter:
    """The filter of one VM port (interface `iface_id` in CUG `vni`; `ips`: every address of its VM).
    Pure."""
    seg = segments.get(vni)
    scope = scope_of(seg) if seg is not None else f"vni:{vni}"
    rules = [r for r in policy.rules if r.scopes is None or scope in r.scopes]
    default = policy.defaults.get(seg.tenant, ALLOW) if seg is not None and seg.tenant else ALLOW
    subnet = (seg.subnet,) if seg is not None else tuple(f"{ip}/32" for ip in ips)
    trusted = tuple(sorted({s.subnet for s in segments.values() if scope_of(s) == scope})) or subnet

    out: list[Clause] = []
    for r in rules:  # replies to what this VM was allowed to receive
        if _holds(r.dst, ips):
            out += _reply(r, r.src, _local(r.dst, ips))
    out += [Clause(r.action, r.dst, r.proto, r.ports, rule=r.name, local=_local(r.src, ips))
            for r in rules if _holds(r.src, ips)]
    out.append(Clause(ALLOW, subnet, rule="same CUG"))
    out.append(Clause(default, rule="default"))

    inbound = [Clause(ALLOW, trusted, rule="scope")]  # judged at the sender's own port
    for r in rules:
        if _holds(r.src, ips):
            inbound += _reply(r, r.dst, _local(r.src, ips))
    inbound += [Clause(r.action, r.src, r.proto, r.ports, rule=r.name, local=_local(r.dst, ips))
                for r in rules if _holds(r.dst, ips)]
    inbound.append(Clause(default, rule="default"))
    return PortFilter(iface_id, mac, tuple(ips), tuple(out), tuple(inbound))


def allowed(policy: PolicySet, segments: dict[int, Segment], src: tuple[int, str], dst: tuple[int, str],
            proto: str, port: int) -> bool:
    """Whether a new flow from `src` = (VNI, IP) to `dst` = (VNI, IP) passes: the reference semantics
    the filters implement (tests compute the expected reachability matrix with it)."""
    s_seg, d_seg = segments.get(src[0]), segments.get(dst[0])
    if s_seg is None or d_seg is None or scope_of(s_seg) != scope_of(d_seg):
        return False
    if src[0] != dst[0] and not (s_seg.tenant and s_seg.gateway and d_seg.gateway):
        return False  # L2-only CUGs are not routed anywhere
    for r in policy.rules:
        if r.scopes is not None and scope_of(s_seg) not in r.scopes:
            continue
        if (_holds(r.src, (src[1],)) and _holds(r.dst, (dst[1],))
                and r.proto in (ANY_PROTO, proto) and (not r.ports or port in r.ports)):
            return r.action == ALLOW
    if src[0] == dst[0]:
        return True
    return policy.defaults.get(s_seg.tenant, ALLOW) == ALLOW
