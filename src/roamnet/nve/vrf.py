"""Desired state of a tenant's VRF on one NVE: distributed anycast gateway and symmetric IRB
(RFC 9135). Pure.

A tenant is a VRF: on every NVE that hosts one of its routed CUGs, and on every border (DCBR), a
namespace holds the tenant's routing table. Each hosted routed CUG has a gateway interface there
with the CUG's gateway IP and the fabric-wide anycast MAC (so a VM's ARP entry for its gateway is
right on every server). Between NVEs, routed traffic rides the tenant's L3 VNI: the ingress NVE
routes it to a /32 host route whose next hop is the egress NVE's VTEP, with that NVE's router MAC
as destination MAC; the egress NVE routes it again into the VM's CUG. Each server's default route
points at its own data center's border; a border announces (over BGP, to the WAN) the tenant's
subnets and the /32s of the VMs in its data center, and forwards to the others without announcing
them (the "transit" table).

Make-before-break for routed traffic (a prepared move, see desired.py for the L2 half): the
destination NVE delivers the moving VM's addresses locally from prepare on (neighbour entries on the
CUG's gateway interface, no /32 back to the source), every other NVE and border keeps its /32 on the
source until activation, and the source keeps delivering locally. Routed into the CUG's bridge on
either end, a packet for the VM meets the L2 "dual" state of the prepared move (no bridge entry for
the VM's MAC): it goes to the local port AND over the CUG's VNI to the other end. So whatever NVE
routes it, the packet reaches the VM before, during and after its pause, and activation, which
switches the senders' /32s to the destination, can be applied by the NVEs in any order: the
destination already delivers, and the source (local until its agent updates, then a /32 to the
destination over the L3 VNI) forwards to it. Without the destination's local delivery, a sender that
switched first met a destination still routing back to the source, which by then routed to the
destination: a loop until the TTL ran out. The source keeps the tenant's VRF (a /32 to the
destination, no gateway) until the move completes, even when the VM was the tenant's last one there:
senders that have not switched yet still route to it, and completion waits until they all have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roamnet import names
from roamnet.mapping.records import ACTIVATED, BORDER, Snapshot

MAIN, TRANSIT = "main", "transit"  # a border's announced routes, and the ones it only forwards
BLACKHOLE = ""  # a route with no next hop: a border's covering route for a subnet


@dataclass(frozen=True)
class VrfDesired:
    tenant: str
    l3vni: int
    rmac: str  # this NVE's router MAC (the L3 VNI device's address)
    anycast_mac: str
    border: bool = False  # a border: the transit table is looked up first
    gateways: dict[int, str] = field(default_factory=dict)  # hosted routed VNI -> gateway "ip/plen"
    neighbors: dict[str, tuple[int, str]] = field(default_factory=dict)  # local VM IP -> (VNI, MAC)
    routes: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, prefix) -> VTEP | BLACKHOLE
    rmacs: dict[str, str] = field(default_factory=dict)  # next-hop VTEP -> its router MAC
    guard: frozenset[str] = frozenset()  # a border: the tenant's subnets, which no packet coming in
    #   from the WAN may have as source (they are the tenant's own; ingress filtering, BCP 38): with
    #   two tenants sharing addresses, one tenant's VMs would otherwise reach the other's through
    #   the WAN as if they were its own VMs, which its VMs' filters trust

    def to_json(self) -> dict:
        return {
            "tenant": self.tenant, "l3vni": self.l3vni, "rmac": self.rmac, "border": self.border,
            "gateways": {str(v): g for v, g in sorted(self.gateways.items())},
            "neighbors": {ip: {"vni": v, "mac": m} for ip, (v, m) in sorted(self.neighbors.items())},
            "routes": [{"table": t, "prefix": p, "via": via or "blackhole"}
                       for (t, p), via in sorted(self.routes.items())],
            "wan_source_guard": sorted(self.guard),
        }


_ROUTED: list = [None, None, 0, 0, {}]  # (CUG table, tenant table, their sizes, the routed CUGs)


def routed_cugs(segments: dict, tenants: dict) -> dict:
    """VNI -> CUG of the routed CUGs (a gateway, a known tenant). Remembered while both tables are the very
    same objects (a view of the mapping replaces a table that changes, and every pass asks): do not change
    the result."""
    seen_segments, seen_tenants, n_segments, n_tenants, routed = _ROUTED
    if (seen_segments is segments and seen_tenants is tenants and n_segments == len(segments)
            and n_tenants == len(tenants)):
        return routed
    routed = {vni: s for vni, s in segments.items() if s.tenant and s.gateway and s.tenant in tenants}
    _ROUTED[:] = [segments, tenants, len(segments), len(tenants), routed]
    return routed


def compute_vrfs(snap: Snapshot, nve: str, segments: frozenset[int],
                 only: frozenset[str] | None = None) -> dict[str, VrfDesired]:
    """The tenant VRFs NVE `nve` has, given the L2 segments it hosts (`only`: of those tenants alone; each
    depends on the bindings and moves of its own routed CUGs, nothing else of them). Pure."""
    me = snap.nves[nve]
    is_border = me.role == BORDER
    routed = routed_cugs(snap.segments, snap.tenants)
    here = {n for n in snap.nves if snap.serving(n) == nve}  # its own VMs: neighbours, not routes
    present = set(snap.tenants) if is_border else {routed[v].tenant for v in segments if v in routed}
    present |= {routed[m.vni].tenant for m in snap.migrations.values()  # a source forwards until complete
                if m.state == ACTIVATED and m.src in here and m.vni in routed}
    if only is not None:
        present &= only
    border_vtep = next((n.vtep for n in snap.nves.values() if n.role == BORDER and n.dc == me.dc), None)
    of_tenant: dict[str, list] = {name: [] for name in present}  # each present tenant's bindings, in one scan
    for b in snap.bindings.values():
        seg = routed.get(b.vni)
        if seg is not None and seg.tenant in of_tenant:
            of_tenant[seg.tenant].append(b)
    arriving = {m.key for m in snap.prepared() if m.dst in here}  # prepared moves to here: local already
    elsewhere = {n.name for n in snap.nves.values() if n.dc != me.dc} if is_border else set()  # transit
    out: dict[str, VrfDesired] = {}
    for name in sorted(present):
        t = snap.tenants[name]
        mine = {vni: s for vni, s in routed.items() if s.tenant == name}
        gateways = {} if is_border else {v: s.gateway for v, s in mine.items() if v in segments}
        neighbors: dict[str, tuple[int, str]] = {}
        routes: dict[tuple[str, str], str] = {}
        for b in of_tenant[name]:
            if b.nve in here or b.key in arriving:
                for ip in b.ips:
                    neighbors[ip] = (b.vni, b.mac)
                continue
            table = TRANSIT if b.nve in elsewhere else MAIN
            for ip in b.ips:
                routes[(table, ip + "/32")] = b.vtep
        if is_border:
            routes.update({(MAIN, s.subnet): BLACKHOLE for s in mine.values()})
        elif border_vtep is not None:
            routes[(MAIN, "0.0.0.0/0")] = border_vtep
        rmacs = {v: names.router_mac(v) for v in set(routes.values()) if v != BLACKHOLE}
        guard = frozenset(s.subnet for s in mine.values()) if is_border else frozenset()
        out[name] = VrfDesired(name, t.l3vni, names.router_mac(me.vtep), t.anycast_mac, is_border,
                               gateways, neighbors, routes, rmacs, guard)
    return out
