"""What the NVE hosting a VM port enforces for it (draft §3.5): port security and the rules of its
side, as ordered clauses. Pure: no I/O here (`nve.filters` renders it for nftables).

Where it is enforced: at the VM's own port, on the NVE that hosts it, so it moves with the VM.
  * `out` (frames from the VM): port security first (source MAC, source IP, ARP sender fields must
    be the VM's own, as the mapping binds them; anything but IPv4, ARP and RARP is dropped), then
    every rule whose source side holds the VM, matched on the destination;
  * `in` (frames to the VM): sources inside the VM's scope were judged at their own port already and
    pass; others (a WAN client, a prefix) meet the rules whose destination side holds the VM.
Evaluating only the rules whose one side holds the VM, in order, at that VM's port gives exactly the
global first-match verdict (`mapping.policy.allowed`).
The filter is stateless (this kernel has no bridge connection tracking, and a stateless filter has
no state to migrate with the VM): an allowed rule also lets its replies through the other way
(TCP: anything but a bare SYN, so the replying side cannot open a connection; UDP: only from the
rule's ports, so a UDP rule without ports needs its reverse rule for replies). ICMP echo replies and
errors always pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from roamnet.mapping.policy import held, holds, scope_of
from roamnet.mapping.records import ALLOW, ANNOUNCE_PPS, ANY_PROTO, ARP_PPS, BUM_PPS, PolicySet, Rule, Segment


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
    announce_pps: int = ANNOUNCE_PPS  # the port's budgets (its CUG's): RARP + gratuitous ARP, ARP requests,
    arp_pps: int = ARP_PPS  #          broadcast and multicast
    bum_pps: int = BUM_PPS


def _local(prefixes: tuple[str, ...] | None, ips: tuple[str, ...]) -> tuple[str, ...] | None:
    inside = held(prefixes, ips)
    return None if inside == ips else tuple(f"{ip}/32" for ip in inside)


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
        if holds(r.dst, ips):
            out += _reply(r, r.src, _local(r.dst, ips))
    out += [Clause(r.action, r.dst, r.proto, r.ports, rule=r.name, local=_local(r.src, ips))
            for r in rules if holds(r.src, ips)]
    out.append(Clause(ALLOW, subnet, rule="same CUG"))
    out.append(Clause(default, rule="default"))

    inbound = [Clause(ALLOW, trusted, rule="scope")]  # judged at the sender's own port
    for r in rules:
        if holds(r.src, ips):
            inbound += _reply(r, r.dst, _local(r.src, ips))
    inbound += [Clause(r.action, r.src, r.proto, r.ports, rule=r.name, local=_local(r.dst, ips))
                for r in rules if holds(r.dst, ips)]
    inbound.append(Clause(default, rule="default"))
    budgets = (seg.announce_pps, seg.arp_pps, seg.bum_pps) if seg is not None else (ANNOUNCE_PPS, ARP_PPS, BUM_PPS)
    return PortFilter(iface_id, mac, tuple(ips), tuple(out), tuple(inbound), *budgets)
