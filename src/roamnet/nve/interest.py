"""An NVE's interest: the part of the mapping its desired state depends on, taken from an indexed view
(mapping/view.py) without looking at the rest. Pure.

`project(view, nve, ifaces)` returns a `Snapshot` holding only that part, and the `Interest` that
says which later changes could alter it. The part is:
  * every NVE, tenant, CUG, domain, VLAN allocation and the policy (small tables, shared as they are);
  * the bindings and moves of the NVE itself, and of the servers behind it when it is a ToR (`served`);
  * every binding and move of the VNIs it hosts or is the destination of a prepared move in (`hosted`):
    its flood lists, remote MACs, ARP entries, and the moves it delivers to both ends of;
  * every binding of the routed CUGs of the tenants it has a VRF for (a border: every tenant; a
    server: the tenants of the routed CUGs it hosts, and of its activated moves away, whose VRF it
    keeps until they complete): the host routes;
  * the ports of every VM with a port here (port security binds all of a VM's addresses), and the
    ports and bindings of the VM interfaces whose port exists in its kernel (`ifaces`: a claimant
    port, a port that just arrived: what the agent claims by).
`compute_desired(project(view, nve, ifaces)[0], nve)` equals `compute_desired(view.snapshot(), nve)`
(and so does `compute_switch` for a server behind a ToR): the property tests in
tests/unit/test_interest.py check it over random histories. The projection costs what the NVE's part
holds, not what the mapping holds.

A pass after a batch of changes needs less than the part: only the VNIs the batch touched, closed
under "same tenant" (`scope_of`: a tenant's VRF depends on every routed CUG of the tenant).
`project(..., within=scope.vnis)` holds only those VNIs' bindings and moves; what
`compute_desired(..., tenants=scope.tenants)` computes from it is exactly the desired state's part
for those VNIs and tenants (nve/partial.py merges it into the last whole one). The Interest it returns
is still the whole part's: it costs the NVE's own records and the table of CUGs, not the bindings.

`concerned(view, touched)` is the same definition read the other way: the NVEs whose part holds
something a change touched, found from the touched VNIs' records without projecting any NVE. A waiter
waits for those (orchestrator/moves.py), not for every NVE: at 1,000 NVEs a move concerns a few dozen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from roamnet.mapping.records import ACTIVATED, BORDER, Snapshot, at_prefix, sync_prefix, vni_prefix
from roamnet.mapping.view import MappingView, Touched
from roamnet.nve.vrf import routed_cugs


@dataclass(frozen=True)
class Interest:
    """What a projection depended on: a later change that touches none of it leaves it as it is."""

    revision: int
    vnis: frozenset[int] = frozenset()
    nves: frozenset[str] = frozenset()  # the NVE and the servers it serves
    ifaces: frozenset[str] = frozenset()  # VM interfaces with a port here or in the kernel

    def concerns(self, t: Touched) -> bool:
        return bool(t.general or t.reloaded or self.vnis & t.vnis or self.nves & t.nves or self.ifaces & t.ifaces)


@dataclass(frozen=True)
class Scope:
    """The VNIs and tenants a pass recomputes: the L2 pieces of `l2` (the VNIs the changes touched) and the
    VRFs of `tenants`, from the records of `vnis` (closed: every routed VNI of each of `tenants` is in
    `vnis`, and the tenant of every routed VNI of `vnis` is in `tenants`; `l2` is part of `vnis`)."""

    vnis: frozenset[int]
    tenants: frozenset[str]
    l2: frozenset[int]

    def __or__(self, other: Scope) -> Scope:
        return Scope(self.vnis | other.vnis, self.tenants | other.tenants, self.l2 | other.l2)


def scope_of(view: MappingView, vnis: Iterable[int], ifaces: Iterable[str] = (), tenants: Iterable[str] = ()) -> Scope:
    """What a batch that touched `vnis` and `ifaces` (a port's filter binds its VM's every address, so
    the VNIs of the ports of `ifaces` count) can change on any NVE: those VNIs and their tenants, with
    every routed VNI of those tenants (and of `tenants`)."""
    touched = set(vnis)
    for iface in ifaces:
        port = view.ports.get(iface)
        if port is not None:
            touched.add(port.vni)
    routed = routed_cugs(view.segments, view.tenants)
    tenants = frozenset(routed[v].tenant for v in touched if v in routed) | frozenset(tenants)
    return Scope(frozenset(touched | {v for v, s in routed.items() if s.tenant in tenants}), tenants,
                 frozenset(touched))


def served_by(view: MappingView, nve: str) -> frozenset[str]:
    """`nve` and the servers behind it (a ToR's)."""
    return frozenset([nve] + [n.name for n in view.nves.values() if n.tor == nve])


def project(view: MappingView, nve: str, ifaces: Iterable[str] = (),
            within: frozenset[int] | None = None) -> tuple[Snapshot, Interest]:
    """The part of `view` that NVE `nve` (with VM ports for `ifaces` in its kernel) depends on; with
    `within` (a `Scope`'s VNIs), only the bindings and moves of those VNIs (the Interest is the whole part's)."""
    served = served_by(view, nve)
    me = view.nves.get(nve)
    local = [b for s in served for b in view.at_nve.get(s, {}).values()]
    incoming = [m for s in served for m in view.prepared_to.get(s, {}).values()]
    hosted = {b.vni for b in local} | {m.vni for m in incoming}
    routed = routed_cugs(view.segments, view.tenants)
    if me is not None and me.role == BORDER:
        tenants = set(view.tenants)
    else:
        leaving = {m.vni for s in served for m in view.moving_from.get(s, {}).values() if m.state == ACTIVATED}
        tenants = {routed[v].tenant for v in hosted | leaving if v in routed}
    vnis = hosted | {v for v, s in routed.items() if s.tenant in tenants}

    take = vnis if within is None else vnis & within
    bindings = {(vni, mac): b for vni in take for mac, b in view.by_vni.get(vni, {}).items()}
    migrations = {i: m for vni in take for i, m in view.migrations_by_vni.get(vni, {}).items()}
    here = {b.iface_id for b in local} | {m.iface_id for m in incoming}
    ports = {}
    for iface in here:
        port = view.ports.get(iface)
        if port is not None:
            ports.update(view.ports_by_vm.get(port.vm, {}))
    kernel = set(ifaces)
    for iface in kernel:
        port = view.ports.get(iface)
        if port is None:
            continue
        ports[iface] = port
        b = view.bindings.get((port.vni, port.mac))
        if b is not None and (within is None or b.vni in within):
            bindings[b.key] = b
    snap = Snapshot(view.revision, view.nves, ports, bindings, migrations, view.tenants, view.segments,
                    view.domains, view.vlans, view.policy)
    return snap, Interest(view.revision, frozenset(vnis), served, frozenset(here | kernel | set(ports)))


def watched(view: MappingView, nve: str, ifaces: Iterable[str] = ()) -> frozenset[str]:
    """The store prefixes NVE `nve` (with VM ports for `ifaces` in its kernel) must watch for `project`
    to see its whole part: its sync key; the /at/ index of every NVE it serves (which VNIs they have
    bindings or moves in); and the bindings and moves of those VNIs, of its kernel ports' VNIs and of
    every routed CUG of their tenants (a border: of every tenant). Read from what every agent watches
    anyway (the small tables, the ports, its index): the prefixes it names are the ones to add.
    tests/unit/test_interest.py checks that a view holding only these projects as the whole one does."""
    served = served_by(view, nve)
    vnis = {vni for s in served for vni in view.hosting.get(s, {}).values()}
    for iface in ifaces:
        port = view.ports.get(iface)
        if port is not None:
            vnis.add(port.vni)
    routed = routed_cugs(view.segments, view.tenants)
    me = view.nves.get(nve)
    tenants = set(view.tenants) if me is not None and me.role == BORDER else \
        {routed[v].tenant for v in vnis if v in routed}
    vnis |= {v for v, s in routed.items() if s.tenant in tenants}
    return frozenset([sync_prefix(nve), *(at_prefix(s) for s in served),
                      *(vni_prefix(v) for v in vnis)])


def concerned(view: MappingView, touched: Touched) -> frozenset[str]:
    """The NVEs whose part (`project`) a change that touched `touched` may alter, read from `view` after the
    change (`touched.nves` names the NVEs a changed record was on before it: a binding's old NVE, a move's
    ends): every NVE if it touched the small tables. A superset: an NVE outside it computes the same
    desired state before and after (tests/unit/test_concern.py checks it over random histories). Not
    counted: an NVE concerned only because a VM port the mapping does not place there is in its kernel."""
    if touched.general or touched.reloaded:
        return frozenset(view.nves)
    vnis = set(touched.vnis)
    nves = set(touched.nves)
    for iface in touched.ifaces:
        port = view.ports.get(iface)
        if port is not None:
            vnis.add(port.vni)
        b = view.binding_of(iface)
        if b is not None:
            nves.add(b.nve)
    routed = routed_cugs(view.segments, view.tenants)
    tenants = {routed[v].tenant for v in vnis if v in routed}
    if tenants:  # every holder of those tenants' VRFs: the borders and the servers of their routed CUGs
        nves.update(n.name for n in view.nves.values() if n.role == BORDER)
        vnis.update(v for v, s in routed.items() if s.tenant in tenants)
    for v in vnis:
        nves.update(b.nve for b in view.by_vni.get(v, {}).values())
        for m in view.migrations_by_vni.get(v, {}).values():  # an incoming move; a VRF kept until completion
            nves.update((m.src, m.dst))
    nves.update(view.nves[n].tor for n in list(nves) if n in view.nves and view.nves[n].tor)  # what ToRs serve
    return frozenset(n for n in nves if n in view.nves)
