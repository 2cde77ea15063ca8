"""Intent -> mapping records: what `roamnet` writes into the mapping for a topology. Pure.

The NVEs are the topology's (`compile_nves`), with VTEP addresses from where the intent is deployed
(the topology's `vteps:` on real hosts, the lab's plan in a lab); everything else follows from the topology: tenants, CUGs, the policy with CUGs and VMs
resolved to their addresses, L2 domains, one logical port per VM interface and its first binding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from roamnet import names
from roamnet.intent.model import Endpoint, Limits, Topology
from roamnet.mapping.records import (
    ANNOUNCE_PPS,
    ARP_PPS,
    BUM_PPS,
    MAX_MOVES,
    WINDOW_S,
    Binding,
    Domain,
    LogicalPort,
    MappingRecords,
    Nve,
    PolicySet,
    Rule,
    Segment,
    Tenant,
)


def _inherit(own: Any, fabric: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Each of `defaults`' settings: the CUG's own, else the fabric's, else the default."""
    out = {}
    for key, default in defaults.items():
        mine = getattr(own, key) if own is not None else None
        theirs = getattr(fabric, key)
        out[key] = mine if mine is not None else theirs if theirs is not None else default
    return out


def _limits(topo: Topology, cug: Limits | None) -> dict[str, int]:
    """A CUG's per-port budgets: its own, else the fabric's, else roamnet's defaults (records)."""
    got = _inherit(cug, topo.limits, {"announce": ANNOUNCE_PPS, "arp": ARP_PPS, "bum": BUM_PPS})
    return {f"{kind}_pps": v for kind, v in got.items()}


def compile_topology(topo: Topology, nves: Iterable[Nve]) -> MappingRecords:
    """The mapping records of `topo` deployed on `nves` (every server, ToR and border with an agent).
    Each VM interface starts bound to its server with sequence 0."""
    nves = tuple(nves)
    by_name = {n.name: n for n in nves}
    tenants = tuple(Tenant(t, spec.l3vni, topo.anycast_gateway_mac) for t, spec in topo.tenants.items())
    segments = tuple(
        Segment(spec.vni, cug, str(spec.subnet),
                f"{spec.gateway}/{spec.subnet.prefixlen}" if spec.gateway is not None else "",
                spec.tenant or "", spec.flood_unknown_arp, **_limits(topo, spec.limits),
                **_inherit(spec.mobility, topo.mobility, {"max_moves": MAX_MOVES, "window_s": WINDOW_S, "hold_down_s": 0.0}))
        for cug, spec in topo.cugs.items())
    domains = tuple(Domain(d.name, d.dc, d.tor, tuple(d.servers), *d.vlans) for d in topo.tors().values())
    ports, bindings = [], []
    for vm, spec in topo.vms.items():
        nve = by_name[spec.server]
        for i, itf in enumerate(spec.interfaces):
            vni = topo.cugs[itf.cug].vni
            port = LogicalPort(names.iface_id(vm, i), vm, vni, itf.mac, (str(itf.ip),), itf.vlan or 0, itf.sticky)
            ports.append(port)
            # detached: no port exists yet; the server's agent says so once the hypervisor plugs it
            bindings.append(Binding(vni, itf.mac, nve.name, nve.vtep, 0, port.ips, port.iface_id, detached=True))
    return MappingRecords(tenants, segments, compile_policy(topo), domains, nves, tuple(ports), tuple(bindings))


def compile_nves(topo: Topology, vteps: Mapping[str, str]) -> tuple[Nve, ...]:
    """Every NVE of `topo` (`Topology.nves`) with its VTEP address from `vteps` (node -> address: the
    topology's own `vteps:` on real hosts, the lab plan's in a lab); a server behind a ToR gets its ToR's."""
    return tuple(Nve(n.name, str(vteps[n.tor or n.name]), n.dc, n.role, n.tor, n.domain) for n in topo.nves())


def compile_policy(topo: Topology) -> PolicySet:
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
