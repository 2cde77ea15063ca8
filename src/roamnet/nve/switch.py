"""The hypervisor switch of a server in a non-trivial L2 domain (draft §3.1).

Such a server is no NVE: its ToR is. It joins the ToR by an 802.1Q trunk and keeps, per domain VLAN
in use on it, a bridge `hs<VLAN>` holding the trunk's VLAN port and the VM ports of that VLAN's CUG:
an untagged VM interface's tap itself, or, for an interface the guest tags itself, the tap's VLAN
port for the guest's tag. So the guest's own tag is mapped to the domain's VLAN on the way out and
back on the way in, and the guest sees its own tags whatever VLAN its CUG has in this domain.
No bridge learns: every MAC of the CUG has a static entry from the mapping (a local VM's port, or
the trunk for the others), as on an NVE. A learned entry would outlive a move: a VM that arrives
here keeps the trunk as its learned port until it sends something on its VLAN, and QEMU's RARP is
untagged.

Desired state comes from the mapping (the bindings to this server, moves prepared to it, and the
domain's VLAN allocation) by a pure function, like an NVE's; `dataplane.switch.SwitchKernel` holds it
in the kernel and `agent.switch.SwitchAgent` drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roamnet import names
from roamnet.mapping.records import Snapshot
from roamnet.nve.desired import port_filters
from roamnet.nve.plan import Actual, Change
from roamnet.nve.portfilter import PortFilter


@dataclass(frozen=True)
class SwitchDesired:
    server: str
    vlans: frozenset[int] = frozenset()  # domain VLANs in use here: a bridge each, with the trunk's VLAN port
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)  # iface_id -> (domain VLAN, guest VLAN)
    fdb: dict[tuple[int, str], str] = field(default_factory=dict)  # (VLAN, MAC) -> iface_id | TRUNK
    filters: dict[str, PortFilter] = field(default_factory=dict)  # iface_id -> its VM port's filter: a
    #   VM behind a ToR is filtered here, at its own port (the ToR sees only the trunk)

    def to_json(self) -> dict:
        return {"server": self.server, "vlans": sorted(self.vlans),
                "ports": {i: {"vlan": v, "guest_vlan": g} for i, (v, g) in sorted(self.ports.items())},
                "fdb": [{"vlan": v, "mac": m, "port": t} for (v, m), t in sorted(self.fdb.items())]}


def compute_switch(snap: Snapshot, server: str) -> SwitchDesired:
    """What `server`'s hypervisor switch holds: pure. An interface whose CUG has no VLAN in the domain
    yet (the allocation is written before the binding, so only for a moment) is left out."""
    snap = snap.running()
    domain = snap.domain_of(server)
    alloc = snap.vlans.get(domain.name, {}) if domain is not None else {}
    here = {b.iface_id: b.vni for b in snap.bindings.values() if b.nve == server}
    here.update({m.iface_id: m.vni for m in snap.prepared() if m.dst == server})
    ports = {i: (alloc[vni], snap.ports[i].vlan if i in snap.ports else 0)
             for i, vni in here.items() if vni in alloc}
    vlans = frozenset(v for v, _ in ports.values())
    moving = {m.key for m in snap.prepared() if server in (m.dst, snap.bindings[m.key].nve if m.key in snap.bindings else "")}
    fdb: dict[tuple[int, str], str] = {}
    for b in snap.bindings.values():
        v = alloc.get(b.vni)
        if v in vlans and b.key not in moving:  # a prepared move here or away: no entry, both get it
            fdb[(v, b.mac)] = b.iface_id if b.nve == server else names.TRUNK
    return SwitchDesired(server, vlans, ports, fdb, port_filters(snap, list(ports)))


@dataclass
class SwitchActual(Actual):
    vlans: set[int] = field(default_factory=set)  # complete: bridge hs<V> with the trunk's VLAN port V in it
    # ports (inherited): iface_id -> domain VLAN of the bridge its bridge port is in (None: none)
    # bridge_fdb (inherited): (VLAN, MAC) -> iface_id | TRUNK, the static entries


def plan_switch(want: SwitchDesired, have: SwitchActual) -> list[Change]:
    """Bridges (with their trunk VLAN port) first, then VM ports into them, then removals."""
    out = [Change("add-vlan", v) for v in sorted(want.vlans - have.vlans)]
    for iface, (v, _) in sorted(want.ports.items()):
        if iface in have.ports and have.ports[iface] != v:  # the hypervisor made the tap
            out.append(Change("attach-port", v, target=iface))
    attached = {i for i, (v, _) in want.ports.items() if i in have.ports}
    want_fdb = {k: t for k, t in want.fdb.items() if t == names.TRUNK or t in attached}
    for (v, mac), target in sorted(want_fdb.items()):
        if have.bridge_fdb.get((v, mac)) != target:
            out.append(Change("set-bridge-entry", v, mac, target))
    for (v, mac) in sorted(set(have.bridge_fdb) - set(want_fdb)):
        if v in want.vlans:  # a removed bridge takes its entries with it
            out.append(Change("del-bridge-entry", v, mac))
    out.extend(Change("del-vlan-port", 0, target=o) for o in sorted(have.orphans))
    out.extend(Change("del-vlan", v) for v in sorted(have.vlans - want.vlans))
    return out
