"""Desired state of one NVE, computed from a mapping snapshot by a pure function.

Dynamic L2 extension (draft §3.3): an NVE has a VNI's segment only while it hosts a VM interface of
that CUG, and the flood list of a VNI is exactly the other NVEs that host it.

Make-before-break (a prepared move, see mapping.py): every frame to the moving VM reaches both the
source and the destination server, so whenever the VM runs — before, or right after its pause —
it gets it, with no reaction from any agent:
  * the destination hosts the VM's port already (segment, port in the bridge; the port stays down
    until the VM resumes there) and is in every flood list of the segment;
  * the source and the destination have no bridge entry for the VM's MAC ("dual"): the bridge floods
    it to the local port (delivered while that port is up) and to the VXLAN device, whose unicast
    entry points at the other end (learning is off on VM ports, so no entry appears behind our back);
  * every other NVE keeps its bridge entry on the VXLAN device but has no unicast VXLAN entry for
    the MAC ("replicated"), so the kernel sends it through the segment's head-end-replication list
    (the Linux VXLAN FDB honours NLM_F_APPEND only for the all-zeros and multicast entries: a
    unicast MAC cannot carry two destinations); NVEs that are neither end drop their copy (their
    entry points back at the VXLAN device it came in on).
No frame loops: a bridge never sends a frame back out of the port it came in on, so a copy that
arrived by VXLAN is never sent on by VXLAN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .mapping import Snapshot


@dataclass(frozen=True)
class LocalPort:
    iface_id: str
    vni: int
    mac: str


@dataclass(frozen=True)
class NveDesired:
    nve: str
    vtep: str
    segments: frozenset[int] = frozenset()
    local_ports: dict[str, LocalPort] = field(default_factory=dict)  # iface_id -> port
    remote_macs: dict[tuple[int, str], str] = field(default_factory=dict)  # (vni, mac) -> VTEP
    flood: dict[int, frozenset[str]] = field(default_factory=dict)  # vni -> remote VTEPs
    replicated: frozenset[tuple[int, str]] = frozenset()  # (vni, mac) sent to the whole flood list
    dual: frozenset[tuple[int, str]] = frozenset()  # (vni, mac) with no bridge entry: local port AND VXLAN

    def to_json(self) -> dict:
        return {
            "nve": self.nve,
            "vtep": self.vtep,
            "segments": sorted(self.segments),
            "local_ports": {k: {"vni": p.vni, "mac": p.mac} for k, p in sorted(self.local_ports.items())},
            "remote_macs": [{"vni": v, "mac": m, "vtep": t} for (v, m), t in sorted(self.remote_macs.items())],
            "flood": {str(v): sorted(t) for v, t in sorted(self.flood.items())},
            "replicated": [{"vni": v, "mac": m} for v, m in sorted(self.replicated)],
            "dual": [{"vni": v, "mac": m} for v, m in sorted(self.dual)],
        }


def compute_desired(snap: Snapshot, nve: str) -> NveDesired:
    me = snap.nves[nve]
    prepared = snap.prepared()
    local = {b.iface_id: LocalPort(b.iface_id, b.vni, b.mac) for b in snap.bindings.values() if b.nve == nve}
    local.update({m.iface_id: LocalPort(m.iface_id, m.vni, m.mac) for m in prepared if m.dst == nve})
    segments = frozenset(p.vni for p in local.values())
    remote = {b.key: b.vtep for b in snap.bindings.values() if b.nve != nve and b.vni in segments}
    replicated, dual = set(), set()
    for m in prepared:
        if nve == m.src:  # the VM runs here until it stops: deliver locally and to the destination
            remote[m.key] = m.dst_vtep
            dual.add(m.key)
        elif nve == m.dst:  # the VM will run here: deliver locally (once the port is up) and to the source
            dual.add(m.key)  # the binding (on the source) gave its VXLAN entry
        elif m.vni in segments:  # everybody else: to both, through the segment's flood list
            remote.pop(m.key, None)
            replicated.add(m.key)
    hosts = [(b.vni, b.vtep, b.nve) for b in snap.bindings.values()] + [(m.vni, m.dst_vtep, m.dst) for m in prepared]
    flood = {vni: frozenset(t for v, t, n in hosts if v == vni and n != nve) for vni in segments}
    return NveDesired(nve, me.vtep, segments, local, remote, flood, frozenset(replicated), frozenset(dual))
