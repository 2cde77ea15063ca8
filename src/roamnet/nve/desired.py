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

ARP suppression (the EVPN way, RFC 7432 §10): every NVE has, on each segment's bridge, a neighbour
entry per VM IP of the segment from the mapping, and `neigh_suppress` on the VXLAN port; the bridge
answers a request for a remote VM itself and never floods a request for a known IP to VXLAN (a local
VM answers for itself). Requests for IPs the mapping does not know still flood, unless the CUG
says otherwise (`arp_flood`: the NVE then drops ARP requests heading for VXLAN).

Port filters (portfilter.py, filters.py): every VM port hosted here gets its filter (port security and
the policy) as soon as the port is in the desired state, so a prepared move's destination has it
before the VM can run there, and the source drops it when the port goes.

A ToR is the NVE of the servers of its L2 domain (draft §3.1): a VM there is reached through the
VLAN port of the server's trunk for the domain VLAN of the VM's CUG (the "attachment"
"<server>:<VLAN>"). A prepared move between two servers behind one ToR involves that ToR only: it
delivers to both trunks (no bridge entry), and every other NVE keeps the ToR's VTEP for the MAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roamnet.mapping.records import TOR, Snapshot
from roamnet.nve.portfilter import PortFilter, port_filter
from roamnet.nve.underlay import allowed_vteps
from roamnet.nve.vrf import VrfDesired, compute_vrfs


@dataclass(frozen=True)
class LocalPort:
    iface_id: str
    vni: int
    mac: str
    attachment: str = ""  # the bridge port that reaches it: the VM's port (its iface_id) on a server,
    #                       "<server>:<VLAN>" (a trunk's VLAN port) on a ToR
    guest_vlan: int = 0  # the guest's own tag on that interface (0: untagged)


def trunk_attachment(server: str, vlan: int) -> str:
    return f"{server}:{vlan}"


def is_trunk(attachment: str) -> bool:
    """A trunk VLAN port (the NVE creates it) rather than a VM's port (the hypervisor creates it)."""
    return ":" in attachment

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
    vrfs: dict[str, VrfDesired] = field(default_factory=dict)  # tenant -> its VRF here (see below)
    attachments: dict[str, int] = field(default_factory=dict)  # bridge port -> VNI of its bridge
    arp: dict[tuple[int, str], str] = field(default_factory=dict)  # (VNI, IP) -> MAC: every VM IP of
    #   the hosted segments, as neighbour entries of the segment's bridge (ARP suppression, below)
    filters: dict[str, PortFilter] = field(default_factory=dict)  # iface_id -> its port's filter
    #   (port security and policy, portfilter.py), for every VM port on this NVE: a prepared move's
    #   destination port has it before the VM can be activated there
    arp_flood: dict[int, bool] = field(default_factory=dict)  # hosted VNI -> ARP for unknown IPs floods
    vteps: frozenset[str] = frozenset()  # the only sources VXLAN is accepted from (underlay.py)

    def to_json(self) -> dict:
        return {
            "nve": self.nve,
            "vtep": self.vtep,
            "segments": sorted(self.segments),
            "local_ports": {k: {"vni": p.vni, "mac": p.mac, "via": p.attachment, "guest_vlan": p.guest_vlan}
                            for k, p in sorted(self.local_ports.items())},
            "attachments": dict(sorted(self.attachments.items())),
            "arp": [{"vni": v, "ip": ip, "mac": m} for (v, ip), m in sorted(self.arp.items())],
            "remote_macs": [{"vni": v, "mac": m, "vtep": t} for (v, m), t in sorted(self.remote_macs.items())],
            "flood": {str(v): sorted(t) for v, t in sorted(self.flood.items())},
            "replicated": [{"vni": v, "mac": m} for v, m in sorted(self.replicated)],
            "dual": [{"vni": v, "mac": m} for v, m in sorted(self.dual)],
            "vrfs": {t: v.to_json() for t, v in sorted(self.vrfs.items())},
            "filters": {k: {"mac": f.mac, "ips": list(f.ips), "out": len(f.out), "in": len(f.inbound)}
                        for k, f in sorted(self.filters.items())},
            "arp_flood": {str(v): f for v, f in sorted(self.arp_flood.items())},
            "vxlan_from": sorted(self.vteps),
        }


def compute_desired(snap: Snapshot, nve: str, tenants: frozenset[str] | None = None,
                    l2: frozenset[int] | None = None) -> NveDesired:
    """NVE `nve`'s desired state (a scoped pass, nve/partial.py: `tenants`, only those tenants' VRFs; `l2`,
    only those VNIs' segments, ports, entries and filters). Pure."""
    snap = snap.running()  # a stopped VM (cold move): no port, no entries, no ARP answer, no flood-list place
    me = snap.nves[nve]
    prepared = snap.prepared()
    alloc = snap.vlans.get(me.domain, {}) if me.role == TOR else {}

    def port_at(node: str, iface: str, vni: int, mac: str) -> LocalPort | None:
        """The port of `iface` on `node` as this NVE reaches it (None: not through this NVE, or its
        domain has no VLAN for the CUG yet)."""
        guest = snap.ports[iface].vlan if iface in snap.ports else 0
        if node == nve:
            return LocalPort(iface, vni, mac, iface, guest)
        if snap.serving(node) != nve or vni not in alloc:
            return None
        return LocalPort(iface, vni, mac, trunk_attachment(node, alloc[vni]), guest)

    local: dict[str, LocalPort] = {}
    attachments: dict[str, int] = {}
    for b in snap.bindings.values():
        if (p := port_at(b.nve, b.iface_id, b.vni, b.mac)) is not None:
            local[p.iface_id], attachments[p.attachment] = p, p.vni
    for m in prepared:
        if (p := port_at(m.dst, m.iface_id, m.vni, m.mac)) is not None:
            local.setdefault(p.iface_id, p)  # a move inside one ToR: the binding's port stays the local one
            attachments[p.attachment] = p.vni
    vrfs = compute_vrfs(snap, nve, frozenset(attachments.values()), tenants)  # every segment here counts
    bindings = snap.bindings.values()
    if l2 is not None:
        local = {i: p for i, p in local.items() if p.vni in l2}
        attachments = {a: v for a, v in attachments.items() if v in l2}
        bindings = [b for b in bindings if b.vni in l2]
        prepared = [m for m in prepared if m.vni in l2]
    segments = frozenset(attachments.values())
    remote = {b.key: b.vtep for b in bindings if b.vtep != me.vtep and b.vni in segments}
    replicated, dual = set(), set()
    for m in prepared:
        src = snap.bindings.get(m.key)
        if src is not None and src.vtep == m.dst_vtep:  # inside one ToR: no other NVE takes part
            if src.vtep == me.vtep:
                dual.add(m.key)  # no bridge entry: both servers' trunks get its frames
        elif src is not None and src.vtep == me.vtep:  # the VM runs here until it stops: deliver
            remote[m.key] = m.dst_vtep                   # locally and to the destination
            dual.add(m.key)
        elif m.dst_vtep == me.vtep:  # the VM will run here: deliver locally (once the port is up) and
            dual.add(m.key)           # to the source (the binding gave its VXLAN entry)
        elif m.vni in segments:  # everybody else: to both, through the segment's flood list
            remote.pop(m.key, None)
            replicated.add(m.key)
    hosts = [(b.vni, b.vtep) for b in bindings] + [(m.vni, m.dst_vtep) for m in prepared]
    flood = {vni: frozenset(t for v, t in hosts if v == vni and t != me.vtep) for vni in segments}
    arp = {(b.vni, ip): b.mac for b in bindings if b.vni in segments for ip in b.ips}
    filters = port_filters(snap, [p.iface_id for p in local.values() if p.attachment == p.iface_id])
    #         (a VM port here, not one behind a trunk: that one's server filters it)
    arp_flood = {vni: snap.segments[vni].flood_unknown_arp if vni in snap.segments else True for vni in segments}
    return NveDesired(nve, me.vtep, segments, local, remote, flood, frozenset(replicated), frozenset(dual),
                      vrfs, attachments, arp, filters, arp_flood, allowed_vteps(snap))


def port_filters(snap: Snapshot, ifaces: list[str]) -> dict[str, PortFilter]:
    """The filters of the VM ports of `ifaces` (known to the mapping). Port security binds every
    address of the VM, on each of its ports (in the order of its interfaces' ids). Pure."""
    vms = {snap.ports[i].vm for i in ifaces if i in snap.ports}
    of_vm: dict[str, list] = {}
    for lp in snap.ports.values():
        if lp.vm in vms:
            of_vm.setdefault(lp.vm, []).append(lp)
    vm_ips = {vm: tuple(dict.fromkeys(ip for lp in sorted(lps, key=lambda p: p.iface_id) for ip in lp.ips))
              for vm, lps in of_vm.items()}
    return {i: _port_filter(snap, i, vm_ips[snap.ports[i].vm]) for i in ifaces if i in snap.ports}


_FILTERS: dict[tuple, tuple] = {}  # (iface, vni, mac, ips) -> (policy, segments, filter)
FILTERS_MAX = 50_000


def _port_filter(snap: Snapshot, iface: str, ips: tuple[str, ...]) -> PortFilter:
    """`port_filter`, remembered while the snapshot's policy and CUGs are the very same objects (a
    view of the mapping replaces them when they change: nve/interest.py projections share them)."""
    port = snap.ports[iface]
    key = (iface, port.vni, port.mac, ips)
    hit = _FILTERS.get(key)
    if hit is not None and hit[0] is snap.policy and hit[1] is snap.segments:
        return hit[2]
    f = port_filter(snap.policy, snap.segments, iface, port.vni, port.mac, ips)
    if len(_FILTERS) >= FILTERS_MAX:
        _FILTERS.clear()
    _FILTERS[key] = (snap.policy, snap.segments, f)
    return f
