"""Desired state of one NVE, computed from a mapping snapshot by a pure function.

Dynamic L2 extension (draft §3.3): an NVE has a VNI's segment only while it hosts a VM interface of
that CUG, and the flood list of a VNI is exactly the other NVEs that host it.

Make-before-break (a prepared move, see mapping.py): the destination already hosts the VM's port
(segment, port in the bridge, static entry; the port stays down until the VM resumes there) and is in
everybody's flood list. Every other NVE of the segment delivers the VM's frames to both places: its
bridge entry still points at the VXLAN device, but the unicast VXLAN entry is withdrawn, so the
kernel sends those frames through the segment's head-end-replication list (the Linux VXLAN FDB
honours NLM_F_APPEND only for the all-zeros and multicast entries: a unicast MAC cannot carry two
destinations). NVEs that are neither source nor destination drop the copy (their entry points back
at the VXLAN device it came in on). The source keeps the VM on its port while that port is up, and
sends the VM's frames to the destination as soon as it is down (the VM stopped here).
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

    def to_json(self) -> dict:
        return {
            "nve": self.nve,
            "vtep": self.vtep,
            "segments": sorted(self.segments),
            "local_ports": {k: {"vni": p.vni, "mac": p.mac} for k, p in sorted(self.local_ports.items())},
            "remote_macs": [{"vni": v, "mac": m, "vtep": t} for (v, m), t in sorted(self.remote_macs.items())],
            "flood": {str(v): sorted(t) for v, t in sorted(self.flood.items())},
            "replicated": [{"vni": v, "mac": m} for v, m in sorted(self.replicated)],
        }


def compute_desired(snap: Snapshot, nve: str, up_ports: frozenset[str] | set[str] = frozenset()) -> NveDesired:
    """What `nve` must program. `up_ports`: the VM ports that are up in its kernel (only used for a
    prepared move's source, to know whether the VM still runs there)."""
    me = snap.nves[nve]
    prepared = snap.prepared()
    moving = {m.key: m for m in prepared}
    local = {b.iface_id: LocalPort(b.iface_id, b.vni, b.mac) for b in snap.bindings.values() if b.nve == nve}
    local.update({m.iface_id: LocalPort(m.iface_id, m.vni, m.mac) for m in prepared if m.dst == nve})
    remote = {b.key: b.vtep for b in snap.bindings.values() if b.nve != nve}
    for m in prepared:
        if m.src == nve and m.iface_id not in up_ports:  # the VM stopped here: forward to where it resumes
            local.pop(m.iface_id, None)
            remote[m.key] = m.dst_vtep
    segments = frozenset(p.vni for p in local.values()) | {m.vni for m in prepared if m.src == nve}
    mine = {(p.vni, p.mac) for p in local.values()}
    remote = {k: v for k, v in remote.items() if k[0] in segments and k not in mine}
    hosts = [(b.vni, b.vtep, b.nve) for b in snap.bindings.values()] + [(m.vni, m.dst_vtep, m.dst) for m in prepared]
    flood = {vni: frozenset(t for v, t, n in hosts if v == vni and n != nve) for vni in segments}
    replicated = frozenset(k for k, m in moving.items() if k in remote and nve not in (m.src, m.dst))
    for k in replicated:
        del remote[k]
    return NveDesired(nve, me.vtep, segments, local, remote, flood, replicated)
