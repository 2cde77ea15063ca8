"""A scoped pass: recompute and diff only the VNIs and tenants a batch of mapping changes touched. Pure.

An NVE's desired state falls apart into pieces that depend on disjoint parts of the mapping:
  * per VNI: the segment, its ports and attachments, remote MACs, flood list, replicated and dual
    entries, ARP entries, the ARP guard, and the filters of the VM ports in it (a filter binds every
    address of its VM: a port change touches every interface of the VM, so their VNIs are in scope);
  * per tenant: its VRF (every routed CUG of the tenant: `interest.scope_of` closes a scope over it);
  * the VTEPs VXLAN is accepted from: the NVEs alone (a change of an NVE is `general`: a whole pass).
So after a batch that touched a `Scope`, the agent computes the desired state of the scope alone from
a projection restricted to it (`interest.project(..., within=scope.vnis)`,
`compute_desired(..., tenants=scope.tenants, l2=scope.l2)`: the VRFs of the touched tenants, which
need every routed CUG of theirs, and the L2 pieces of the touched VNIs alone, so a server that hosts
another CUG of the moved VM's tenant recomputes its VRF and nothing of its L2), `merge`s it into the
last whole desired state, and
plans against the kernel's state `restrict`ed to the scope: what lies outside it is already as
wanted, since the last pass made it so and nothing outside the scope changed.

A pass after a kernel event (a VM port came or went: every move's source and destination) reads the
kernel again, then `drift` says where the fresh read differs from what the agent held: those VNIs,
tenants and VM interfaces join the scope. Outside them the kernel is as the last pass left it, so the
pass stays scoped (the claimant chains, filters and VXLAN guard are planned whole in such a pass).

`merge(last, part, scope)` equals `compute_desired` of the whole part, and the plan of a restricted pass
equals the whole plan's changes to the scope: the property tests in tests/unit/test_partial.py check
both over random histories. Work per pass follows the scope (a move: one CUG and its tenant), not
what the NVE holds (a border: every tenant's host routes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from roamnet.nve.desired import NveDesired
from roamnet.nve.interest import Scope
from roamnet.nve.plan import Actual


def merge(last: NveDesired, part: NveDesired, scope: Scope) -> NveDesired:
    """`last` with its pieces of `scope` replaced by `part`'s (computed for the scope alone)."""
    vnis, tenants = scope.l2, scope.tenants

    def by_vni(old: dict, new: dict, vni_of) -> dict:
        out = {k: v for k, v in old.items() if vni_of(k) not in vnis}
        out.update(new)
        return out

    def key_vni(k):
        return k[0]

    def own_vni(k):
        return k

    local = by_vni(last.local_ports, part.local_ports, lambda i: last.local_ports[i].vni)
    return replace(
        last,
        vtep=part.vtep,
        segments=frozenset(v for v in last.segments if v not in vnis) | part.segments,
        local_ports=local,
        remote_macs=by_vni(last.remote_macs, part.remote_macs, key_vni),
        flood=by_vni(last.flood, part.flood, own_vni),
        replicated=frozenset(k for k in last.replicated if k[0] not in vnis) | part.replicated,
        dual=frozenset(k for k in last.dual if k[0] not in vnis) | part.dual,
        vrfs={**{t: v for t, v in last.vrfs.items() if t not in tenants}, **part.vrfs},
        attachments=by_vni(last.attachments, part.attachments, lambda a: last.attachments[a]),
        arp=by_vni(last.arp, part.arp, key_vni),
        filters=by_vni(last.filters, part.filters, lambda i: last.local_ports[i].vni),
        arp_flood=by_vni(last.arp_flood, part.arp_flood, own_vni),
        vteps=part.vteps,
    )


class Drift(NamedTuple):
    """Where a fresh kernel read differs from the state an agent held."""

    vnis: frozenset[int]
    tenants: frozenset[str]
    ifaces: frozenset[str]  # bridge ports (VM interfaces, trunk attachments) and VM ports up or gone


def drift(held: tuple[Actual, list[str]], read: tuple[Actual, list[str]]) -> Drift | None:
    """What differs between `held` and `read` (each: the kernel's state and its VM ports that are up), or
    None when a whole pass is needed (orphan VLAN ports are left to whole passes)."""
    (a, up_a), (b, up_b) = held, read
    if a.orphans != b.orphans:
        return None
    vnis: set[int] = set(a.segments ^ b.segments)
    ifaces: set[str] = set(up_a) ^ set(up_b)

    def by_key(x: dict, y: dict, vni_of) -> None:
        for k in x.keys() | y.keys():
            if x.get(k) != y.get(k):
                vnis.add(vni_of(k))

    by_key(a.arp, b.arp, lambda k: k[0])
    by_key(a.bridge_fdb, b.bridge_fdb, lambda k: k[0])
    by_key(a.remote_macs, b.remote_macs, lambda k: k[0])
    by_key(a.flood, b.flood, lambda k: k)
    for port in a.ports.keys() | b.ports.keys():
        if a.ports.get(port, -1) != b.ports.get(port, -1):
            ifaces.add(port)
            vnis.update(v for v in (a.ports.get(port), b.ports.get(port)) if v is not None)
    for iface in a.devices.keys() | b.devices.keys():
        if a.devices.get(iface) != b.devices.get(iface):
            ifaces.add(iface)
    tenants = frozenset(t for t in a.vrfs.keys() | b.vrfs.keys() if a.vrfs.get(t) != b.vrfs.get(t))
    return Drift(frozenset(vnis), tenants, frozenset(ifaces))


def restrict(have: Actual, scope: Scope, part: NveDesired) -> Actual:
    """What the kernel holds of `scope` (`part`: the scope's desired state; a VM port it attaches counts
    wherever it is now). The bridge-port map, the filters, the VXLAN guard and the claimant chains stay
    whole (they are planned over the whole desired state); orphan VLAN ports are left to whole passes."""
    vnis = scope.l2
    return Actual(
        segments={v for v in have.segments if v in vnis},
        ports={a: v for a, v in have.ports.items() if v in vnis or a in part.attachments},
        arp={k: m for k, m in have.arp.items() if k[0] in vnis},
        bridge_fdb={k: t for k, t in have.bridge_fdb.items() if k[0] in vnis},
        remote_macs={k: t for k, t in have.remote_macs.items() if k[0] in vnis},
        flood={v: t for v, t in have.flood.items() if v in vnis},
        vrfs={t: have.vrfs[t] for t in scope.tenants if t in have.vrfs},
        devices=have.devices, table=have.table, underlay=have.underlay, claimants=have.claimants,
    )
