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
domain's VLAN allocation) by a pure function, like an NVE's; the agent that drives it is `SwitchAgent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyroute2 import IPRoute

from . import names, vlan
from .agent import NTF_MASTER, NUD_NOARP, Agent, KernelBase, VmPorts, attach, read_vm_ports
from .desired import port_filters
from .mapping import Snapshot
from .nft import Nft
from .policy import PortFilter
from .reconcile import Actual, Change, plan_filters


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


class SwitchKernel(KernelBase):
    """The switch's kernel objects in the server's namespace, through netlink."""

    def __init__(self, ns: str):
        self.ns = ns
        self.ipr = IPRoute(netns=ns)
        self.nft = Nft(ns)
        self._vm = VmPorts()
        self._index: dict[str, int] = {}
        self._dev: dict[tuple[int, str], int] = {}  # (VLAN, MAC) -> device of its static entry
        self._trunk_ports: dict[int, int] = {}  # VLAN -> the trunk's VLAN port
        self._bridges: dict[int, int] = {}  # VLAN -> its bridge, as last read or made

    def close(self) -> None:
        self.nft.close()
        self.ipr.close()

    def read(self) -> tuple[SwitchActual, list[str]]:
        links = self.ipr.get_links()
        self._index = {link.get("ifname"): link["index"] for link in links}
        bridges = {}  # ifindex -> domain VLAN
        for link in links:
            alias = link.get("IFLA_IFALIAS") or ""
            if alias.startswith(names.SWITCH_ALIAS):
                bridges[link["index"]] = int(alias[len(names.SWITCH_ALIAS):])
        self._bridges = {v: idx for idx, v in bridges.items()}
        vports = vlan.read_ports(self.ipr, links)
        vm = read_vm_ports(links, vports)
        act = SwitchActual()
        act.vlans = {v for (t, v), vp in vports.items()
                     if t == names.TRUNK and vp.complete and bridges.get(vp.master) == v}
        act.ports = {i: bridges.get(m) if m else None for i, m in vm.master.items()}
        act.orphans = set(vm.orphans)
        ports = {vm.bridge_port[i]: i for i in vm.master if i in vm.bridge_port}
        ports.update({vp.index: names.TRUNK for (t, _), vp in vports.items() if t == names.TRUNK})
        self._dev = {}
        for entry in self.ipr.fdb("dump"):
            master = entry.get("NDA_MASTER")
            if master in bridges and entry["state"] == NUD_NOARP and entry["ifindex"] in ports:
                key = (bridges[master], entry.get("NDA_LLADDR"))
                act.bridge_fdb[key] = ports[entry["ifindex"]]
                self._dev[key] = entry["ifindex"]
        self._vm = vm
        self._trunk_ports = {v: vp.index for (t, v), vp in vports.items() if t == names.TRUNK}
        self._read_filters(act, links, vm)
        return act, list(vm.up)

    def _bridge(self, v: int) -> int:
        """Bridge hs<v>, made if missing (the last read knows the ones that exist)."""
        if v in self._bridges:
            return self._bridges[v]
        name = names.switch_bridge(v)
        if not self.ipr.link_lookup(ifname=name):
            self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0)
        idx = self.ipr.link_lookup(ifname=name)[0]
        self.ipr.link("set", index=idx, ifalias=f"{names.SWITCH_ALIAS}{v}", state="up")
        self._bridges[v] = idx
        return idx

    def _add_vlan(self, ch: Change) -> None:
        self._trunk_ports[ch.vni] = attach(self.ipr, self._vm, f"{names.TRUNK}:{ch.vni}", self._bridge(ch.vni),
                                           learning=False)

    def _attach_port(self, ch: Change) -> None:
        self._vm.bridge_port[ch.target] = attach(self.ipr, self._vm, ch.target, self._bridge(ch.vni), learning=False)

    def _set_bridge_entry(self, ch: Change) -> None:
        dev = self._trunk_ports.get(ch.vni) if ch.target == names.TRUNK else self._vm.bridge_port.get(ch.target)
        if dev is None:
            raise LookupError(f"no port for {ch.target} in VLAN {ch.vni}")
        self.ipr.fdb("replace", ifindex=dev, lladdr=ch.mac, master=self._bridge(ch.vni), state=NUD_NOARP,
                     flags=NTF_MASTER)

    def _del_bridge_entry(self, ch: Change) -> None:
        dev = self._dev.get((ch.vni, ch.mac))
        if dev is not None:
            self.ipr.fdb("del", ifindex=dev, lladdr=ch.mac, master=self._bridge(ch.vni), flags=NTF_MASTER)

    def _del_vlan_port(self, ch: Change) -> None:
        tagged, vid = ch.target.rsplit("/", 1)
        vlan.remove_port(self.ipr, tagged, int(vid))

    def _del_vlan(self, ch: Change) -> None:
        vlan.remove_port(self.ipr, names.TRUNK, ch.vni)
        for idx in self.ipr.link_lookup(ifname=names.switch_bridge(ch.vni)):
            self.ipr.link("del", index=idx)
        self._bridges.pop(ch.vni, None)


class SwitchAgent(Agent):
    """The agent of a server behind a ToR: drives its hypervisor switch from the mapping, and reports
    the VMs that arrive on it (port up, RARP/GARP) exactly as an NVE's agent does."""

    def _make_kernel(self):
        return SwitchKernel(self.ns)

    def _changes(self, snap: Snapshot, actual: Actual) -> tuple[list[Change], bool]:
        want = compute_switch(snap, self.nve.name)
        # filters first: a VM port is attached only in a pass that has given it its filter
        return plan_filters(want.filters, {}, actual) + plan_switch(want, actual), all(i in actual.ports for i in want.ports)
