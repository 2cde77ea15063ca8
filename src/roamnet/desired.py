"""Desired state of one NVE, computed from a mapping snapshot by a pure function.

Dynamic L2 extension (draft §3.3): an NVE has a VNI's segment only while it hosts a VM interface of
that CUG, and the flood list of a VNI is exactly the other NVEs that host it.
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

    def to_json(self) -> dict:
        return {
            "nve": self.nve,
            "vtep": self.vtep,
            "segments": sorted(self.segments),
            "local_ports": {k: {"vni": p.vni, "mac": p.mac} for k, p in sorted(self.local_ports.items())},
            "remote_macs": [{"vni": v, "mac": m, "vtep": t} for (v, m), t in sorted(self.remote_macs.items())],
            "flood": {str(v): sorted(t) for v, t in sorted(self.flood.items())},
        }


def compute_desired(snap: Snapshot, nve: str) -> NveDesired:
    me = snap.nves[nve]
    local = {b.iface_id: LocalPort(b.iface_id, b.vni, b.mac) for b in snap.bindings.values() if b.nve == nve}
    segments = frozenset(p.vni for p in local.values())
    remote = {b.key: b.vtep for b in snap.bindings.values() if b.nve != nve and b.vni in segments}
    flood = {
        vni: frozenset(b.vtep for b in snap.bindings.values() if b.vni == vni and b.nve != nve)
        for vni in segments
    }
    return NveDesired(nve, me.vtep, segments, local, remote, flood)
