"""Reconcile = diff(desired, actual) -> ordered, idempotent changes. Pure: no I/O here.

`Actual` is what an NVE's kernel holds of roamnet's own objects (read by the agent); `plan` returns
the changes that make it equal to the desired state, in an order that never loses a forwarding
entry that is still right: create segments, attach ports, program entries, then remove what is stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roamnet.mapping.records import Snapshot
from roamnet.nve.claimants import MISSING as NO_CLAIMANTS
from roamnet.nve.claimants import Claimant, Claimants, claimant_ports, plan_claimants
from roamnet.nve.claimants import result as claimants_result
from roamnet.nve.desired import NveDesired, is_trunk
from roamnet.nve.filters import Table, desired_table, plan_table
from roamnet.nve.portfilter import PortFilter
from roamnet.nve.underlay import MISSING, Underlay, plan_underlay
from roamnet.nve.vrf import VrfDesired

VXLAN_PORT = "vx"  # a bridge entry that points at the segment's VXLAN device


@dataclass
class Actual:
    segments: set[int] = field(default_factory=set)
    ports: dict[str, int | None] = field(default_factory=dict)  # bridge port (a VM's iface_id, or a
    #   trunk VLAN port "<server>:<VLAN>") -> VNI of the bridge it is in (None: in none, or incomplete)
    orphans: set[str] = field(default_factory=set)  # VLAN ports whose tagged device is gone ("<dev>/<vid>")
    arp: dict[tuple[int, str], str] = field(default_factory=dict)  # (VNI, IP) -> MAC: our neighbour entries
    bridge_fdb: dict[tuple[int, str], str] = field(default_factory=dict)  # (vni, mac) -> iface_id | "vx"
    remote_macs: dict[tuple[int, str], set[str]] = field(default_factory=dict)  # (vni, mac) -> VTEPs
    flood: dict[int, set[str]] = field(default_factory=dict)  # vni -> VTEPs
    vrfs: dict[str, VrfActual] = field(default_factory=dict)  # tenant -> what its namespace holds of ours
    devices: dict[str, str] = field(default_factory=dict)  # iface_id -> device of its bridge port (VM
    #   ports that exist here)
    table: Table = field(default_factory=lambda: Table(base_ok=False))  # our nftables table
    underlay: Underlay = MISSING  # our `ip roamnet` table: the VTEPs VXLAN is accepted from
    claimants: Claimants = NO_CLAIMANTS  # our `netdev roamnet` table: the claimant ports' chains

    def copy(self) -> Actual:
        """A copy `apply_to` may change without changing this one (the nftables tables' models are
        replaced whole, never changed: shared). For a server of 113 VM ports, 900 ARP entries and 244 filter
        chains (benchmarks/scale.py) a deep copy took 28 ms, this 0.25 ms."""
        return Actual(set(self.segments), dict(self.ports), set(self.orphans), dict(self.arp), dict(self.bridge_fdb),
                      {k: set(v) for k, v in self.remote_macs.items()}, {k: set(v) for k, v in self.flood.items()},
                      {t: v.copy() for t, v in self.vrfs.items()}, dict(self.devices), self.table, self.underlay,
                      self.claimants)


@dataclass
class VrfActual:
    l3vni: int | None = None  # the L3 VNI device (None: absent)
    transit_rule: bool = False  # a border's rule looking up the transit table first
    irbs: dict[int, str] = field(default_factory=dict)  # VNI -> gateway "ip/plen" of a complete gateway
    #                                                     interface ("" if some part is missing)
    neighbors: dict[str, tuple[int, str]] = field(default_factory=dict)  # IP -> (VNI, MAC), static
    routes: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, prefix) -> VTEP | ""
    rmacs: dict[str, str] = field(default_factory=dict)  # VTEP -> router MAC (neighbor + FDB entry)
    guard: set[str] = field(default_factory=set)  # subnets blackholed as sources from the WAN handoff

    def copy(self) -> VrfActual:
        return VrfActual(self.l3vni, self.transit_rule, dict(self.irbs), dict(self.neighbors), dict(self.routes),
                         dict(self.rmacs), set(self.guard))


@dataclass(frozen=True)
class Change:
    op: str  # add-segment | attach-port | set-bridge-entry | del-bridge-entry | set-remote | del-remote
    #          add-flood | del-flood | set-arp | del-arp | detach-port | del-vlan-port | del-segment
    vni: int
    mac: str = ""
    target: str = ""  # bridge port (iface_id, trunk attachment), "vx", a VTEP address or an IP (arp)

    def __str__(self) -> str:
        return " ".join(x for x in (self.op, str(self.vni), self.mac, self.target) if x)


def plan(want: NveDesired, have: Actual) -> list[Change]:
    out: list[Change] = []
    for vni in sorted(want.segments - have.segments):
        out.append(Change("add-segment", vni))
    # a VM's port is the hypervisor's: attached once it exists; a trunk VLAN port is made here
    exists = {att for att in want.attachments if att in have.ports or is_trunk(att)}
    for att, vni in sorted(want.attachments.items()):
        if att in exists and have.ports.get(att) != vni:
            out.append(Change("attach-port", vni, target=att))

    want_bridge = {(p.vni, p.mac): p.attachment for p in want.local_ports.values() if p.attachment in exists}
    want_bridge.update({k: VXLAN_PORT for k in want.remote_macs})
    want_bridge.update({k: VXLAN_PORT for k in want.replicated})
    for key in want.dual:  # no entry: the bridge floods it to the local port and the VXLAN device
        want_bridge.pop(key, None)
    for key, target in sorted(want_bridge.items()):
        if have.bridge_fdb.get(key) != target:
            out.append(Change("set-bridge-entry", key[0], key[1], target))
    for key, vtep in sorted(want.remote_macs.items()):
        vteps = have.remote_macs.get(key, set())
        if vtep in vteps:
            continue
        if len(vteps) > 1:  # "replace" rewrites one destination: clear the others first
            out.extend(Change("del-remote", key[0], key[1], v) for v in sorted(vteps))
        out.append(Change("set-remote", key[0], key[1], vtep))
    for vni, vteps in sorted(want.flood.items()):
        for vtep in sorted(vteps - have.flood.get(vni, set())):
            out.append(Change("add-flood", vni, target=vtep))
    for (vni, ip), mac in sorted(want.arp.items()):
        if have.arp.get((vni, ip)) != mac:
            out.append(Change("set-arp", vni, mac, ip))

    # removals: only inside segments that stay (a removed segment takes its entries with it)
    keep = want.segments & have.segments
    for key in sorted(set(have.bridge_fdb) - set(want_bridge)):
        if key[0] in keep:
            out.append(Change("del-bridge-entry", key[0], key[1]))
    for key, vteps in sorted(have.remote_macs.items()):
        if key[0] not in keep:
            continue
        wanted = want.remote_macs.get(key)
        if wanted is None:
            out.extend(Change("del-remote", key[0], key[1], v) for v in sorted(vteps))
        elif wanted in vteps:
            out.extend(Change("del-remote", key[0], key[1], v) for v in sorted(vteps - {wanted}))
    for vni in sorted(keep):
        for vtep in sorted(have.flood.get(vni, set()) - want.flood.get(vni, frozenset())):
            out.append(Change("del-flood", vni, target=vtep))
    for (vni, ip), mac in sorted(have.arp.items()):
        if vni in keep and (vni, ip) not in want.arp:
            out.append(Change("del-arp", vni, mac, ip))
    for att in sorted(have.ports):
        if is_trunk(att) and att not in want.attachments:
            out.append(Change("detach-port", have.ports[att] or 0, target=att))
    out.extend(Change("del-vlan-port", 0, target=o) for o in sorted(have.orphans))
    for vni in sorted(have.segments - want.segments):
        out.append(Change("del-segment", vni))
    return out


@dataclass(frozen=True)
class FilterChange:
    """One nftables transaction that makes the table `want` (filters.py): all of it or nothing."""

    commands: tuple
    want: Table
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    op: str = "set-filters"

    def __str__(self) -> str:
        return " ".join([self.op, *("+" + c for c in self.added), *("-" + c for c in self.removed)])

    def result(self) -> Table:
        """The table once the transaction went through (chains by name, maps)."""
        return Table({n: [] for n in self.want.chains}, dict(self.want.ingress), dict(self.want.egress))


def plan_filters(filters: dict[str, PortFilter], arp_flood: dict[int, bool], have: Actual) -> list[FilterChange]:
    """The filters of the VM ports that exist here (a port is attached to its bridge only in a pass
    that has put its filter first) and the ARP guards of the hosted segments."""
    table = desired_table({i: (have.devices[i], f) for i, f in filters.items() if i in have.devices}, arp_flood)
    cmds = plan_table(table, have.table)
    if not cmds:
        return []
    return [FilterChange(tuple(cmds), table, tuple(sorted(set(table.chains) - set(have.table.chains))),
                         tuple(sorted(set(have.table.chains) - set(table.chains))))]


@dataclass(frozen=True)
class UnderlayChange:
    """One nftables transaction that makes the NVE accept VXLAN from exactly `want` (underlay.py)."""

    commands: tuple
    want: frozenset[str]
    op: str = "set-vteps"

    def __str__(self) -> str:
        return f"{self.op} {','.join(sorted(self.want)) or '-'}"


def plan_vteps(want: frozenset[str], have: Actual) -> list[UnderlayChange]:
    cmds = plan_underlay(want, have.underlay)
    return [UnderlayChange(tuple(cmds), want)] if cmds else []


@dataclass(frozen=True)
class ClaimantChange:
    """One nftables transaction that gives exactly the ports of `want` a claimant chain (claimants.py)."""

    commands: tuple
    want: tuple[Claimant, ...]
    op: str = "set-claimants"

    def __str__(self) -> str:
        return f"{self.op} {','.join(c.device for c in self.want) or '-'}"


def plan_claimant_ports(snap: Snapshot, local: set[str], have: Actual) -> list[ClaimantChange]:
    """Block the VM ports that exist here for interfaces bound elsewhere (`local`: the interfaces whose
    port belongs in a bridge here); first in a pass, so a port stops being blocked in the pass that
    attaches it."""
    want = claimant_ports(snap, local, have.devices)
    cmds = plan_claimants(want, have.claimants)
    return [ClaimantChange(tuple(cmds), tuple(want))] if cmds else []


@dataclass(frozen=True)
class VrfChange:
    op: str  # add-l3vni | add-irb | set-guard | set-rmac | set-route | set-neighbor
    #          del-route | del-neighbor | del-rmac | del-irb | del-l3vni | del-guard
    tenant: str
    key: str = ""  # VNI (irb), VTEP (rmac), "table prefix" (route), IP (neighbor)
    value: str = ""  # gateway, MAC, next-hop VTEP ("" blackhole), "vni mac"

    def __str__(self) -> str:
        return " ".join(x for x in (self.op, self.tenant, self.key, self.value) if x)


def plan_vrfs(want: dict[str, VrfDesired], have: dict[str, VrfActual]) -> list[VrfChange]:
    """The changes that make every tenant namespace hold what `want` says: devices, then entries,
    then removals (a route's next hop and its router MAC exist before the route)."""
    out: list[VrfChange] = []
    for name, w in sorted(want.items()):
        h = have.get(name) or VrfActual()
        if h.l3vni != w.l3vni or h.transit_rule != w.border:
            out.append(VrfChange("add-l3vni", name, str(w.l3vni), "border" if w.border else ""))
        for vni, gw in sorted(w.gateways.items()):
            if h.irbs.get(vni) != gw:
                out.append(VrfChange("add-irb", name, str(vni), f"{gw} {w.anycast_mac}"))
        out.extend(VrfChange("set-guard", name, net) for net in sorted(w.guard - h.guard))
        for vtep, mac in sorted(w.rmacs.items()):
            if h.rmacs.get(vtep) != mac:
                out.append(VrfChange("set-rmac", name, vtep, mac))
        for (table, prefix), via in sorted(w.routes.items()):
            if h.routes.get((table, prefix), None) != via:
                out.append(VrfChange("set-route", name, f"{table} {prefix}", via))
        for ip, (vni, mac) in sorted(w.neighbors.items()):
            if h.neighbors.get(ip) != (vni, mac):
                out.append(VrfChange("set-neighbor", name, ip, f"{vni} {mac}"))
    for name, h in sorted(have.items()):
        w = want.get(name)
        if w is None:  # the whole VRF goes: its gateway interfaces, then the L3 VNI (and its entries)
            out.extend(VrfChange("del-guard", name, net) for net in sorted(h.guard))
            out.extend(VrfChange("del-irb", name, str(vni)) for vni in sorted(h.irbs))
            if h.l3vni is not None:
                out.append(VrfChange("del-l3vni", name, str(h.l3vni)))
            continue
        out.extend(VrfChange("del-route", name, f"{t} {p}") for t, p in sorted(set(h.routes) - set(w.routes)))
        for ip, (vni, _) in sorted(h.neighbors.items()):
            if ip not in w.neighbors:
                out.append(VrfChange("del-neighbor", name, ip, str(vni)))
        out.extend(VrfChange("del-rmac", name, v, h.rmacs[v]) for v in sorted(set(h.rmacs) - set(w.rmacs)))
        out.extend(VrfChange("del-irb", name, str(v)) for v in sorted(set(h.irbs) - set(w.gateways)))
        out.extend(VrfChange("del-guard", name, net) for net in sorted(h.guard - w.guard))
    return out


STRUCTURAL = frozenset({"add-segment", "del-segment", "attach-port",  # change devices, not only entries
                        "detach-port", "del-vlan-port", "add-vlan", "del-vlan",
                        "add-l3vni", "del-l3vni", "add-irb", "del-irb"})


def apply_to(have: Actual, changes: list[Change | VrfChange | FilterChange | UnderlayChange | ClaimantChange]) -> Actual:
    """What the kernel holds after `changes` succeeded: the agent's cache between kernel reads, and
    a model of the kernel for tests. (A removed bridge also detaches its ports: after a structural
    change the agent reads the kernel again rather than trusting this.)"""
    for c in changes:
        if isinstance(c, VrfChange):
            _apply_vrf(have.vrfs.setdefault(c.tenant, VrfActual()), c)
            continue
        if isinstance(c, FilterChange):
            have.table = c.result()
            continue
        if isinstance(c, UnderlayChange):
            have.underlay = Underlay(c.want)
            continue
        if isinstance(c, ClaimantChange):
            have.claimants = claimants_result(list(c.want))
            continue
        key = (c.vni, c.mac)
        if c.op == "add-segment":
            have.segments.add(c.vni)
        elif c.op == "del-segment":
            have.segments.discard(c.vni)
            have.flood.pop(c.vni, None)
            for d in (have.bridge_fdb, have.remote_macs, have.arp):
                for k in [k for k in d if k[0] == c.vni]:
                    del d[k]
        elif c.op == "attach-port":
            have.ports[c.target] = c.vni
        elif c.op == "detach-port":
            have.ports.pop(c.target, None)
        elif c.op == "del-vlan-port":
            have.orphans.discard(c.target)
        elif c.op == "set-bridge-entry":
            have.bridge_fdb[key] = c.target
        elif c.op == "del-bridge-entry":
            have.bridge_fdb.pop(key, None)
        elif c.op == "set-remote":  # NLM_F_REPLACE: the entry has this one destination afterwards
            have.remote_macs[key] = {c.target}
        elif c.op == "del-remote":
            have.remote_macs.get(key, set()).discard(c.target)
            if not have.remote_macs.get(key, True):
                del have.remote_macs[key]
        elif c.op == "add-flood":
            have.flood.setdefault(c.vni, set()).add(c.target)
        elif c.op == "del-flood":
            have.flood.get(c.vni, set()).discard(c.target)
        elif c.op == "set-arp":
            have.arp[(c.vni, c.target)] = c.mac
        elif c.op == "del-arp":
            have.arp.pop((c.vni, c.target), None)
    return have


def _apply_vrf(v: VrfActual, c: VrfChange) -> None:
    if c.op == "set-route":
        table, prefix = c.key.split(" ")
        v.routes[(table, prefix)] = c.value
    elif c.op == "del-route":
        table, prefix = c.key.split(" ")
        v.routes.pop((table, prefix), None)
    elif c.op == "set-neighbor":
        vni, mac = c.value.split(" ")
        v.neighbors[c.key] = (int(vni), mac)
    elif c.op == "del-neighbor":
        v.neighbors.pop(c.key, None)
    elif c.op == "set-rmac":
        v.rmacs[c.key] = c.value
    elif c.op == "del-rmac":
        v.rmacs.pop(c.key, None)
    elif c.op == "add-l3vni":
        v.l3vni, v.transit_rule = int(c.key), c.value == "border"
    elif c.op == "add-irb":
        v.irbs[int(c.key)] = c.value.split(" ")[0]
    elif c.op == "del-irb":
        v.irbs.pop(int(c.key), None)
    elif c.op == "set-guard":
        v.guard.add(c.key)
    elif c.op == "del-guard":
        v.guard.discard(c.key)
    elif c.op == "del-l3vni":
        v.l3vni, v.routes, v.rmacs = None, {}, {}
