"""One NVE's kernel objects, through netlink (pyroute2): segments (bridge br<vni> + VXLAN vx<vni>),
VM ports in bridges, static bridge entries, VXLAN unicast and flood entries, ARP-suppression
neighbours, and the tenant VRFs (vrf.py) and port filters (nft.py) beside them.

`Kernel.read()` gives what the namespace holds of roamnet's own objects (`nve.plan.Actual`: only
objects carrying roamnet's aliases), `apply(changes)` applies a plan in order and collects errors
instead of stopping. `watch()` reports link events and VM announcements (announce.py) to the agent.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_SELF, NUD_NOARP, NUD_PERMANENT

from roamnet import names
from roamnet.dataplane import announce, netns, vlan
from roamnet.dataplane.nflog import NflogSocket
from roamnet.dataplane.nft import Nft, read_claimants_table, read_table_briefly, read_underlay_table
from roamnet.dataplane.vrf import VrfKernel
from roamnet.nve.claimants import CLAIM_PREFIX
from roamnet.nve.desired import is_trunk, trunk_attachment
from roamnet.nve.filters import Table
from roamnet.nve.plan import VXLAN_PORT, Actual, Change, ClaimantChange, FilterChange, UnderlayChange, VrfChange
from roamnet.nve.underlay import Underlay

ZERO_MAC = "00:00:00:00:00:00"  # a VXLAN flood entry's MAC (head-end replication)

__all__ = ["NTF_MASTER", "NTF_SELF", "NUD_NOARP", "NUD_PERMANENT", "Kernel", "KernelBase", "VmPorts",
           "attach", "ensure_segment", "read_vm_ports"]


def ensure_segment(ipr: IPRoute, vni: int, vtep: str) -> tuple[int, int]:
    """Make VNI `vni`'s segment exist (idempotent): bridge br<vni> (STP off) and VXLAN vx<vni> (UDP
    4789, local `vtep`, no learning, MTU 1500) enslaved to it with bridge-port learning off, both up
    and tagged with roamnet's segment alias. The same devices serve FRR-EVPN's L2VNI (evpn.py).
    Returns (bridge ifindex, vxlan ifindex)."""
    br, vx, alias = names.bridge(vni), names.vxlan(vni), names.SEGMENT_ALIAS + str(vni)
    if not ipr.link_lookup(ifname=br):
        # a MAC of its own: a bridge that takes its ports' lowest MAC changes it when ports come and
        # go, and the kernel then flushes the bridge's neighbour entries (the gateway's, see vrf.py).
        # No multicast snooping: a snooping bridge joins 224.0.0.106 itself and sends IGMP reports of
        # its own into the tenant's segment (over VXLAN to every NVE of the CUG, and to its VMs)
        ipr.link("add", ifname=br, kind="bridge", br_stp_state=0, br_mcast_snooping=0, address=names.bridge_mac(vni))
    br_idx = ipr.link_lookup(ifname=br)[0]
    ipr.link("set", index=br_idx, ifalias=alias, state="up")
    if not ipr.link_lookup(ifname=vx):
        ipr.link("add", ifname=vx, kind="vxlan", vxlan_id=vni, vxlan_port=names.VXLAN_UDP_PORT,
                 vxlan_learning=0, vxlan_local=vtep, mtu=names.OVERLAY_MTU)
    vx_idx = ipr.link_lookup(ifname=vx)[0]
    ipr.link("set", index=vx_idx, ifalias=alias, master=br_idx, state="up")
    # no learning; ARP for IPs the bridge knows never floods to VXLAN (see desired.py)
    ipr.brport("set", index=vx_idx, learning=0, neigh_suppress=1)
    return br_idx, vx_idx


@dataclass
class VmPorts:
    """The VM ports (taps) in a namespace, as the hypervisor made them, and how each VM interface
    reaches a bridge: through the tap itself (untagged) or through the tap's VLAN port for the guest's
    own tag."""

    bridge_port: dict[str, int] = field(default_factory=dict)  # iface_id -> ifindex of its bridge port
    master: dict[str, int | None] = field(default_factory=dict)  # iface_id -> that port's bridge (None:
    #                                                               none, or its VLAN port is incomplete)
    guest_vlan: dict[str, int] = field(default_factory=dict)  # iface_id -> the guest's tag (0: untagged)
    tap: dict[str, str] = field(default_factory=dict)  # iface_id -> the tap's name
    up: list[str] = field(default_factory=list)  # iface_ids whose tap is up
    by_device: dict[int, list[str]] = field(default_factory=dict)  # ifindex (tap or VLAN port) -> iface_ids
    orphans: set[str] = field(default_factory=set)  # VLAN ports ("<dev>/<vid>") whose tagged device is gone


def read_vm_ports(links: list, vports: dict[tuple[str, int], vlan.VlanPort]) -> VmPorts:
    """Pure over a link dump and the VLAN ports read from it. A VLAN port of a tap is an orphan once
    the tap is gone or no longer carries that guest VLAN; a VLAN port of any other device (a trunk)
    belongs to the NVE's plan while the device exists."""
    out = VmPorts()
    names_here = {link.get("ifname") for link in links}
    taps = {link.get("ifname") for link in links if names.ifaces_from_alias(link.get("IFLA_IFALIAS"))}
    for link in links:
        entries = names.ifaces_from_alias(link.get("IFLA_IFALIAS"))
        tap, idx = link.get("ifname"), link["index"]
        for iface, g in entries:
            out.tap[iface], out.guest_vlan[iface] = tap, g
            if link["flags"] & IFF_UP:
                out.up.append(iface)
            if g == 0:
                out.bridge_port[iface], out.master[iface] = idx, link.get("IFLA_MASTER") or None
            else:
                vp = vports.get((tap, g))
                if vp is not None:
                    out.bridge_port[iface] = vp.index
                out.master[iface] = vp.master or None if vp is not None and vp.complete else None
            devices = {idx, out.bridge_port.get(iface, idx)}  # an announcement comes in on the tap
            for dev in devices:
                out.by_device.setdefault(dev, []).append(iface)
    wanted = {(out.tap[i], g) for i, g in out.guest_vlan.items() if g}
    for tagged, vid in vports:
        gone = tagged not in names_here
        if gone or ((tagged, vid) not in wanted and tagged in taps):
            out.orphans.add(f"{tagged}/{vid}")
    return out


def attach(ipr: IPRoute, vm: VmPorts, att: str, bridge: int, learning: bool) -> int:
    """Put bridge port `att` into bridge `bridge`: a trunk's VLAN port "<trunk>:<VLAN>" (made whole
    first), a VM interface's VLAN port on its tap (guest-tagged; made whole first) or the tap itself.
    Returns the bridge port's ifindex."""
    if is_trunk(att):
        tagged, vid = att.rsplit(":", 1)
        idx = vlan.ensure_port(ipr, tagged, int(vid))
    elif vm.guest_vlan.get(att):
        idx = vlan.ensure_port(ipr, vm.tap[att], vm.guest_vlan[att])
    elif att in vm.bridge_port:
        idx = vm.bridge_port[att]
    else:
        raise LookupError(f"no port for {att}")
    ipr.link("set", index=idx, master=bridge)
    ipr.brport("set", index=idx, learning=int(learning))
    return idx


class KernelBase:
    """What every agent's kernel side shares: the VM ports found by the last read, and applying
    changes by name (`add-segment` -> `_add_segment`), collecting errors instead of stopping."""

    ns: str
    nft: Nft
    _index: dict[str, int]
    _vm: VmPorts
    _table: Table | None = None  # our nftables table as last read or written; None: read it next time.
    #   Only this agent writes it, so its own writes say what it holds: it is read again at the
    #   periodic resync (`forget_filters`) and after a failed write, not on every link event
    _underlay: Underlay | None = None  # our `ip roamnet` table (the VXLAN guard), the same way

    def port_named(self, ifname: str) -> list[str]:
        """The VM interfaces whose port is device `ifname`, as last read (up or down)."""
        idx = self._index.get(ifname)
        return list(self._vm.by_device.get(idx, [])) if idx else []

    def _apply_one(self, ch) -> None:
        getattr(self, "_" + ch.op.replace("-", "_"))(ch)

    def _set_filters(self, ch: FilterChange) -> None:
        self._table = None  # unknown until the transaction went through
        self.nft.run(list(ch.commands))  # one transaction
        self._table = ch.result()

    def forget_filters(self) -> None:
        self._table = None
        self._underlay = None

    def _read_filters(self, act: Actual, links: list, vm: VmPorts) -> None:
        """The VM ports' devices and our nftables table, into `act`."""
        dev_names = {link["index"]: link.get("ifname") for link in links}
        act.devices = {iface: dev_names[idx] for iface, idx in vm.bridge_port.items() if idx in dev_names}
        if self._table is None:
            self._table = read_table_briefly(self.nft)
        act.table = self._table

    def _read_underlay(self, act: Actual) -> None:
        if self._underlay is None:
            self._underlay = read_underlay_table(self.nft)[0]
        act.underlay = self._underlay

    def _set_vteps(self, ch: UnderlayChange) -> None:
        self._underlay = None  # unknown until the transaction went through
        self.nft.run(list(ch.commands))
        self._underlay = Underlay(ch.want)

    def _read_claimants(self, act: Actual) -> None:
        """Read at every kernel read (not cached): the kernel may drop a claimant chain with its device."""
        act.claimants = read_claimants_table(self.nft)[0]

    def _set_claimants(self, ch: ClaimantChange) -> None:
        self.nft.run(list(ch.commands))

    def apply(self, changes: list) -> list[str]:
        """Apply changes in order; returns the errors (the next reconcile retries what failed)."""
        errors = []
        for ch in changes:
            try:
                self._apply_one(ch)
            except (NetlinkError, LookupError, OSError) as exc:
                errors.append(f"{self.ns}: {ch}: {exc}")
        return errors

    def watch(self, stop: threading.Event, on_link: Callable[[], None],
              on_announcement: Callable[[str, str], None]) -> None:
        """Until `stop`: call on_link() for every netlink link event in the namespace, and
        on_announcement(ifname, mac) for every RARP / gratuitous ARP a VM port's filter passed and
        logged (nflog group names.ANNOUNCE_LOG_GROUP, see nve/filters.py), and for every frame a
        claimant port logged (nve/claimants.py: evidence that the VM runs there): only frames that
        came in on a VM port, passed its filter and fit its budget ever reach this process."""
        nl = netns.socket_in(self.ns, socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        nl.bind((0, RTMGRP_LINK))
        try:
            ann = NflogSocket(self.ns, names.ANNOUNCE_LOG_GROUP)
        except BaseException:
            nl.close()
            raise
        socks = [nl, ann]
        try:
            while not stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.2)
                for s in ready:
                    if s is nl:
                        s.recv(65536)
                        on_link()
                        continue
                    for logged in ann.recv():
                        mac = (announce.source_mac(logged.frame) if logged.prefix == CLAIM_PREFIX
                               else announce.parse_announcement(logged.frame))
                        ifname = self.device_named(logged.ifindex)
                        if mac is not None and ifname:
                            on_announcement(ifname, mac)
        finally:
            for s in socks:
                s.close()

    def device_named(self, ifindex: int) -> str:
        """The name of device `ifindex` as last read ("" if unknown)."""
        return next((name for name, idx in self._index.items() if idx == ifindex), "")


class Kernel(KernelBase):
    """One NVE's kernel objects, through netlink. Only touches objects carrying roamnet's aliases."""

    def __init__(self, ns: str, vtep: str, vrf_namespaces: dict[str, str] | None = None):
        self.ns, self.vtep = ns, vtep
        self.ipr = IPRoute(netns=ns)
        self.vrfs = VrfKernel(self.ipr, vtep, vrf_namespaces or {})
        self.nft = Nft(ns)
        self._index: dict[str, int] = {}  # device name -> ifindex
        self._port_index: dict[str, int] = {}  # bridge port (iface_id, trunk attachment) -> ifindex
        self._bridge_dev: dict[tuple[int, str], int] = {}  # (vni, mac) -> device of its static entry
        self._vm = VmPorts()

    def close(self) -> None:
        self.vrfs.close()
        self.nft.close()
        self.ipr.close()

    # ---- read ----------------------------------------------------------------------------------
    def read(self) -> tuple[Actual, list[str]]:
        """The actual state, and the VM interfaces whose ports are up (active here)."""
        act = Actual()
        # built aside and swapped in at the end: the announcement thread reads them meanwhile
        index: dict[str, int] = {}
        bridges: dict[int, int] = {}  # ifindex -> vni
        vxlans: dict[int, int] = {}
        gateways: dict[int, tuple[int, int]] = {}  # ifindex -> (VNI, master) of a CUG's gateway port
        links = self.ipr.get_links()
        for link in links:
            name, idx = link.get("ifname"), link["index"]
            index[name] = idx
            alias = link.get("IFLA_IFALIAS") or ""
            kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            if alias.startswith(names.SEGMENT_ALIAS):
                vni = int(alias[len(names.SEGMENT_ALIAS):])
                (bridges if kind == "bridge" else vxlans)[idx] = vni
            elif alias.startswith(names.GATEWAY_ALIAS):
                gateways[idx] = (int(alias[len(names.GATEWAY_ALIAS):]), link.get("IFLA_MASTER") or 0)
        vports = vlan.read_ports(self.ipr, links)
        vm = read_vm_ports(links, vports)
        port_index = dict(vm.bridge_port)  # bridge port (iface_id or trunk attachment) -> ifindex
        act.ports = {iface: bridges.get(m) if m else None for iface, m in vm.master.items()}
        for (tagged, vid), vp in vports.items():
            if tagged not in vm.tap.values() and f"{tagged}/{vid}" not in vm.orphans:
                att = trunk_attachment(tagged, vid)
                port_index[att] = vp.index
                act.ports[att] = bridges.get(vp.master) if vp.complete else None
        act.orphans = set(vm.orphans)
        self._read_filters(act, links, vm)
        self._read_underlay(act)
        self._read_claimants(act)
        port_names = {idx: att for att, idx in port_index.items()}
        act.segments = set(bridges.values()) & set(vxlans.values())
        bridge_dev: dict[tuple[int, str], int] = {}
        for entry in self.ipr.fdb("dump"):
            idx, mac = entry["ifindex"], entry.get("NDA_LLADDR")
            master = entry.get("NDA_MASTER")
            if idx in vxlans and entry["flags"] & NTF_SELF and entry.get("NDA_DST"):
                vni, dst = vxlans[idx], entry.get("NDA_DST")
                if mac == ZERO_MAC:
                    act.flood.setdefault(vni, set()).add(dst)
                else:
                    act.remote_macs.setdefault((vni, mac), set()).add(dst)
            elif master in bridges and entry["state"] == NUD_NOARP and idx not in gateways:
                target = VXLAN_PORT if idx in vxlans else port_names.get(idx, f"ifindex:{idx}")
                act.bridge_fdb[(bridges[master], mac)] = target
                bridge_dev[(bridges[master], mac)] = idx
        self._index, self._port_index, self._bridge_dev, self._vm = index, port_index, bridge_dev, vm
        # the bridges' permanent neighbour entries: ours (protocol 77) answer ARP for VMs; a gateway
        # is whole when its port is in its CUG's bridge and the bridge knows the gateway's MAC
        known = set()
        for n in self.ipr.get_neighbours(family=socket.AF_INET) if bridges else ():
            if not n["state"] & NUD_PERMANENT or n["ifindex"] not in bridges:
                continue
            if n.get("NDA_PROTOCOL") == names.PROTO:
                act.arp[(bridges[n["ifindex"]], n.get("NDA_DST"))] = n.get("NDA_LLADDR")
            else:
                known.add(n["ifindex"])
        act.vrfs = self.vrfs.read({vni: bridges.get(m) == vni and m in known for vni, m in gateways.values()})
        return act, list(vm.up)

    # ---- apply ---------------------------------------------------------------------------------
    def _idx(self, name: str) -> int:
        if name not in self._index:
            found = self.ipr.link_lookup(ifname=name)
            if not found:
                raise LookupError(f"{self.ns}: no device {name}")
            self._index[name] = found[0]
        return self._index[name]

    def _port_idx(self, att: str) -> int:
        """A bridge port as last read (VM ports are the hypervisor's; the plan made trunk ports)."""
        if att not in self._port_index:
            raise LookupError(f"{self.ns}: no port for {att}")
        return self._port_index[att]

    def _apply_one(self, ch: Change | VrfChange | FilterChange) -> None:
        if isinstance(ch, VrfChange):
            self.vrfs.apply(ch)
        else:
            super()._apply_one(ch)

    def _add_segment(self, ch: Change) -> None:
        br, vx = ensure_segment(self.ipr, ch.vni, self.vtep)
        self._index.update({names.bridge(ch.vni): br, names.vxlan(ch.vni): vx})

    def _del_segment(self, ch: Change) -> None:
        for name in (names.vxlan(ch.vni), names.bridge(ch.vni)):
            for idx in self.ipr.link_lookup(ifname=name):
                link = self.ipr.get_links(idx)[0]
                if (link.get("IFLA_IFALIAS") or "").startswith(names.SEGMENT_ALIAS):
                    self.ipr.link("del", index=idx)
            self._index.pop(name, None)

    def _attach_port(self, ch: Change) -> None:
        # only enslaved: whether the port is up is the hypervisor's business (a prepared move's port
        # stays down until the VM resumes on it). No learning: every MAC comes from the mapping.
        idx = attach(self.ipr, self._vm, ch.target, self._idx(names.bridge(ch.vni)), learning=False)
        self._port_index[ch.target] = idx

    def _detach_port(self, ch: Change) -> None:
        tagged, vid = ch.target.rsplit(":", 1)
        vlan.remove_port(self.ipr, tagged, int(vid))
        self._port_index.pop(ch.target, None)

    def _del_vlan_port(self, ch: Change) -> None:
        tagged, vid = ch.target.rsplit("/", 1)
        vlan.remove_port(self.ipr, tagged, int(vid))

    def _set_bridge_entry(self, ch: Change) -> None:
        dev = self._idx(names.vxlan(ch.vni)) if ch.target == VXLAN_PORT else self._port_idx(ch.target)
        self.ipr.fdb("replace", ifindex=dev, lladdr=ch.mac, master=self._idx(names.bridge(ch.vni)),
                     state=NUD_NOARP, flags=NTF_MASTER)
        self._bridge_dev[(ch.vni, ch.mac)] = dev

    def _del_bridge_entry(self, ch: Change) -> None:
        dev = self._bridge_dev.get((ch.vni, ch.mac))
        if dev is None:
            raise LookupError(f"{self.ns}: no static entry for {ch.mac} in VNI {ch.vni}")
        self.ipr.fdb("del", ifindex=dev, lladdr=ch.mac, master=self._idx(names.bridge(ch.vni)), flags=NTF_MASTER)
        self._bridge_dev.pop((ch.vni, ch.mac), None)

    def _set_remote(self, ch: Change) -> None:
        self.ipr.fdb("replace", ifindex=self._idx(names.vxlan(ch.vni)), lladdr=ch.mac, dst=ch.target, flags=NTF_SELF)

    def _del_remote(self, ch: Change) -> None:
        self.ipr.fdb("del", ifindex=self._idx(names.vxlan(ch.vni)), lladdr=ch.mac, dst=ch.target, flags=NTF_SELF)

    def _set_arp(self, ch: Change) -> None:
        self.ipr.neigh("replace", dst=ch.target, lladdr=ch.mac, ifindex=self._idx(names.bridge(ch.vni)),
                       state=NUD_PERMANENT, protocol=names.PROTO)

    def _del_arp(self, ch: Change) -> None:
        self.ipr.neigh("del", dst=ch.target, ifindex=self._idx(names.bridge(ch.vni)))

    def _add_flood(self, ch: Change) -> None:
        self.ipr.fdb("append", ifindex=self._idx(names.vxlan(ch.vni)), lladdr=ZERO_MAC, dst=ch.target, flags=NTF_SELF)

    def _del_flood(self, ch: Change) -> None:
        self.ipr.fdb("del", ifindex=self._idx(names.vxlan(ch.vni)), lladdr=ZERO_MAC, dst=ch.target, flags=NTF_SELF)
