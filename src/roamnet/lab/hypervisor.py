"""The lab's hypervisor: what QEMU and libvirt do for a VM, played with namespaces and link flips.

A VM is two namespaces: the guest (`rn-<lab>-<vm>`, its eth<i> carry the intent's MAC and IP and
its sockets) and the hypervisor side of its NICs (`rn-<lab>-<vm>.nic`, a bridge `nic<i>` per NIC
joining the guest's veth peer `tap<i>` and an uplink `u<i>-<server>`). Plugging the VM into a server
creates the veth `u<i>-<server>` <-> `<vm>-e<i>` with the server end in the server's namespace, its
alias carrying the VM interface ids (like OVN's iface-id). A live migration creates the destination's
pair (down) first, flips the source's down (the VM stops), waits the pause, flips the destination's
up (the VM resumes) and sends QEMU-style RARP announcements; the guest's link never loses carrier, so
its IP, MAC, ARP cache and sockets are untouched. The NIC bridges are silent (see build_vm): every
frame a server's VM port receives is the guest's or QEMU's announcement. Lab namespaces are never
linked to the host's.

A QEMU guest (`vms.<vm>.guest: qemu`) is a real VM instead (lab/qemu.py): no namespace of its own, a QEMU
process in its server's namespace whose taps are its ports, and a live migration is QEMU's own
(`stop_and_resume` returns QEMU's STOP and RESUME times and its figures).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from roamnet import names
from roamnet.dataplane import netns, vlan
from roamnet.dataplane.announce import garp_frame, rarp_frame
from roamnet.intent.model import Topology
from roamnet.lab.errors import LabError
from roamnet.lab.plan import LabPlan, nic_ns
from roamnet.lab.qemu import DEFAULT_DOWNTIME_MS, QemuGuests

log = logging.getLogger(__name__)

ANNOUNCE_AT_MS = (0, 50, 200, 450, 800)  # QEMU's self-announce schedule (50 ms, +100 ms steps)
GUEST_MTU = names.OVERLAY_MTU
UPLINK_INDEX_BASE = 100000  # ifindexes of VM uplinks in the NIC namespaces (see create_port)


@dataclass
class Switchover:
    """A live migration's stop-and-copy as the hypervisor saw it: when the VM stopped and resumed
    (monotonic s), and the hypervisor's own figures for the move's record (QEMU's)."""

    stopped: float
    resumed: float
    figures: dict = field(default_factory=dict)


class Hypervisor:
    """Every VM of one lab: where each runs, and the hypervisor's actions on it."""

    def __init__(self, topo: Topology, plan: LabPlan, netlink: Callable[[str], IPRoute],
                 new_namespace: Callable[[str], None], port_created: Callable[[str, str], None] | None = None,
                 qemu_dir: Path | None = None, port_namespace: Callable[[str, str, int], str] | None = None):
        self.topo, self.plan = topo, plan
        self._nl, self._new_ns = netlink, new_namespace
        self._port_created = port_created  # another control plane's bridge hook (libvirt's job)
        self._port_namespace = port_namespace  # another control plane's: where a port's bridge is
        # announcements also carry a gratuitous ARP per untagged address (a guest with virtio's guest
        # announce, which another control plane needs to learn a moved VM's IP: FRR-EVPN with IRB)
        self.garp = False
        self.location: dict[str, str] = {vm: v.server for vm, v in topo.vms.items()}
        self._uplink_index = UPLINK_INDEX_BASE
        # QEMU guests' processes (lab/qemu.py), their files in `qemu_dir` (the lab's state directory)
        self.qemu: QemuGuests | None = None
        if any(v.guest == "qemu" for v in topo.vms.values()):
            if qemu_dir is None:
                raise LabError("QEMU guests need the lab's state directory for their sockets and pid files")
            self.qemu = QemuGuests(topo, qemu_dir, lambda s: plan.nodes[s].ns,
                                   lambda s: plan.nodes[s].vtep, netlink)

    def is_qemu(self, vm: str) -> bool:
        return self.topo.vms[vm].guest == "qemu"

    @property
    def lab(self) -> str:
        return self.topo.name

    def nics(self, vm: str) -> list[list[int]]:
        return self.topo.nics(vm)

    # ---- a VM's own namespaces -------------------------------------------------------------------
    def build_vm(self, vm: str) -> None:
        if self.is_qemu(vm):  # no namespaces: its QEMU starts when it is plugged in
            return
        guest, nic = names.netns(self.lab, vm), nic_ns(self.lab, vm)
        self._new_ns(guest)
        self._new_ns(nic)
        spec = self.topo.vms[vm]
        n = self._nl(nic)
        nics = self.nics(vm)
        for k, _ in enumerate(nics):
            # nic<k> is the lab's stand-in for the wire between a QEMU tap and the server's port, so
            # it must send nothing of its own (a real tap carries only the guest's frames): no STP,
            # and no multicast snooping, whose snooper join (224.0.0.106, RFC 4286) has the bridge's
            # own IPv4 stack send IGMPv3 reports from the bridge's MAC out of the uplink, which the
            # server's port filter then rightly drops as spoofed (issue 13). IPv6 (MLD, ND) is off
            # in every lab namespace, and the bridge has no address (no ARP).
            n.link("add", ifname=f"nic{k}", kind="bridge", br_stp_state=0, br_mcast_snooping=0)
            n.link("add", ifname=f"tap{k}", kind="veth", mtu=GUEST_MTU, peer={"ifname": f"eth{k}", "mtu": GUEST_MTU})
            n.link("set", index=n.link_lookup(ifname=f"eth{k}")[0], net_ns_fd=guest)
            br = n.link_lookup(ifname=f"nic{k}")[0]
            n.link("set", index=br, state="up")
            n.link("set", index=n.link_lookup(ifname=f"tap{k}")[0], master=br, state="up")
        g = self._nl(guest)
        devices: dict[int, int] = {}  # interface index -> the guest's device carrying it
        for k, members in enumerate(nics):
            eth = g.link_lookup(ifname=f"eth{k}")[0]
            g.link("set", index=eth, address=spec.interfaces[members[0]].mac, state="up")
            for i in members:
                itf = spec.interfaces[i]
                # a guest-tagged interface is the guest's VLAN sub-interface of its NIC
                dev = vlan.ensure_port(g, f"eth{k}", itf.vlan, mtu=GUEST_MTU) if itf.vlan else eth
                if itf.vlan:
                    g.link("set", index=dev, address=itf.mac)
                g.addr("add", index=dev, address=str(itf.ip), prefixlen=self.topo.cugs[itf.cug].subnet.prefixlen)
                devices[i] = dev
        routed = self.topo.routed_interface(vm)
        if routed is not None:  # the anycast gateway of its first routed CUG
            i, itf = routed
            g.route("add", dst="0.0.0.0/0", gateway=str(self.topo.cugs[itf.cug].gateway), oif=devices[i])

    # ---- ports on servers ------------------------------------------------------------------------
    # A hypervisor creates the destination tap before it stops the VM, and the source tap goes away
    # after the VM runs on the destination. The NVE sees a port "appear" when it comes up.
    @staticmethod
    def uplink(i: int, server: str) -> str:
        return f"u{i}-{server}"

    def port_ns(self, vm: str, server: str, i: int) -> str:
        """The namespace of the VM's port `i` on `server`: the server's, unless the control plane keeps
        that port's bridge elsewhere (FRR-EVPN with symmetric IRB: in the tenant's namespace)."""
        if self._port_namespace is not None:
            return self._port_namespace(vm, server, i)
        return self.plan.nodes[server].ns

    def create_port(self, vm: str, server: str) -> None:
        """Create the VM's ports on `server`, down, and their uplinks in the NIC namespace, detached.
        A QEMU guest's: its QEMU there, waiting for a migration, its taps up (as libvirt does)."""
        if self.is_qemu(vm):
            self.qemu.start(vm, server, incoming=True)
            if self._port_created is not None:
                self._port_created(vm, server)
            return
        nic = nic_ns(self.lab, vm)
        n = self._nl(nic)
        spec = self.topo.vms[vm]
        for i, members in enumerate(self.nics(vm)):
            port, up = names.port(vm, i), self.uplink(i, server)
            # The uplink gets an ifindex no port can have (ports keep a small one): a veth whose
            # ifindex equals its peer's (in another namespace) has its carrier changes treated as
            # not urgent by the kernel's linkwatch (linkwatch_urgent_event compares ifindex with
            # iflink), and a bridge then starts forwarding on it up to a second late.
            self._uplink_index += 1
            n.link("add", ifname=up, kind="veth", index=self._uplink_index, mtu=GUEST_MTU,
                   peer={"ifname": port, "mtu": GUEST_MTU})
            pidx = n.link_lookup(ifname=port)[0]
            n.link("set", index=pidx, ifalias=names.port_alias(
                [(names.iface_id(vm, j), spec.interfaces[j].vlan or 0) for j in members]))
            n.link("set", index=pidx, net_ns_fd=self.port_ns(vm, server, i))
            n.link("set", index=n.link_lookup(ifname=up)[0], state="up")
        if self._port_created is not None:
            self._port_created(vm, server)

    def port_up(self, vm: str, server: str) -> None:
        """Bring the VM's ports on `server` up before the VM runs there, their uplinks still out of the
        NIC bridge: a prepared move's destination, as libvirt's tap is up from the start of an incoming
        migration. The bridge port then forwards long before the switch, which only has to attach the
        uplinks (a port brought up at the switch forwards once the kernel's linkwatch has run, a few
        ms later on a busy machine: packets lost right after the resume). A QEMU guest: its own taps."""
        if self.is_qemu(vm):
            return
        for i in range(len(self.nics(vm))):
            s = self._nl(self.port_ns(vm, server, i))
            s.link("set", index=s.link_lookup(ifname=names.port(vm, i))[0], state="up")

    def switch(self, vm: str, server: str, up: bool) -> None:
        """Connect (up=True) or disconnect the VM's NICs to/from its ports on `server`: fast link flips."""
        if self.is_qemu(vm):
            raise LabError(f"{vm} is a QEMU guest: its ports are its QEMU's taps, there are no links to flip")
        n = self._nl(nic_ns(self.lab, vm))
        for i in range(len(self.nics(vm))):
            s = self._nl(self.port_ns(vm, server, i))
            uidx = n.link_lookup(ifname=self.uplink(i, server))[0]
            pidx = s.link_lookup(ifname=names.port(vm, i))[0]
            if up:
                n.link("set", index=uidx, master=n.link_lookup(ifname=f"nic{i}")[0])
                s.link("set", index=pidx, state="up")
            else:
                s.link("set", index=pidx, state="down")
                n.link("set", index=uidx, master=0)

    def plug(self, vm: str, server: str) -> None:
        if self.is_qemu(vm):  # its QEMU boots the guest there
            self.qemu.start(vm, server)
            if self._port_created is not None:
                self._port_created(vm, server)
            return
        self.create_port(vm, server)
        self.switch(vm, server, up=True)

    def cold_boot(self, vm: str) -> None:
        """What a cold boot leaves of the guest's network state: no neighbour (ARP) entries."""
        g = self._nl(names.netns(self.lab, vm))
        for n in g.get_neighbours(family=socket.AF_INET):
            g.neigh("del", dst=n.get_attr("NDA_DST"), ifindex=n["ifindex"])

    def remove_port(self, vm: str, server: str) -> None:
        if self.is_qemu(vm):  # its QEMU there ends (by its pid), and its taps with it
            self.qemu.stop(vm, server)
            return
        for i in range(len(self.nics(vm))):
            s = self._nl(self.port_ns(vm, server, i))
            for idx in s.link_lookup(ifname=names.port(vm, i)):
                s.link("del", index=idx)

    # ---- a live migration's switch-over ----------------------------------------------------------
    def stop_and_resume(self, vm: str, src: str, to: str, pause_ms: int, announce: bool = True) -> Switchover:
        """The hypervisor's stop-and-copy: the VM stops on `src`, and after the pause runs on `to`
        and announces itself (unless announce=False; a namespace VM only). A QEMU guest: QEMU's live
        migration, `pause_ms` its downtime-limit (qemu.MigrationFailed, a LabError, when it fails:
        the guest still runs on `src`)."""
        if self.is_qemu(vm):
            figures = self.qemu.migrate(vm, src, to, pause_ms or DEFAULT_DOWNTIME_MS)
            self.location[vm] = to
            return Switchover(figures.pop("stopped"), figures.pop("resumed"), figures)
        at = time.monotonic()
        self.switch(vm, src, up=False)
        time.sleep(pause_ms / 1000)
        self.switch(vm, to, up=True)
        resumed = time.monotonic()
        self.location[vm] = to
        if announce:
            self.announce_async(vm)
        return Switchover(at, resumed)

    def announce_async(self, vm: str) -> None:
        threading.Thread(target=self.announce, args=(vm,), daemon=True, name=f"announce:{vm}").start()

    def announce(self, vm: str) -> None:
        """Send QEMU's RARP self-announcements on every NIC of the VM, on QEMU's schedule (a QEMU
        guest's QEMU sends its own: QMP announce-self)."""
        if self.is_qemu(vm):
            self.qemu.announce(vm, self.location[vm])
            return
        spec = self.topo.vms[vm]
        socks, frames = [], []
        for i, members in enumerate(self.nics(vm)):  # one per NIC, untagged, as QEMU does
            s = netns.socket_in(nic_ns(self.lab, vm), socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((self.uplink(i, self.location[vm]), 0))
            socks.append(s)
            mac = spec.interfaces[members[0]].mac
            frames.append([rarp_frame(mac)] + [garp_frame(mac, str(spec.interfaces[j].ip)) for j in members
                                               if self.garp and not spec.interfaces[j].vlan])
        t0 = time.monotonic()
        try:
            for at in ANNOUNCE_AT_MS:
                time.sleep(max(0.0, t0 + at / 1000 - time.monotonic()))
                for s, nic_frames in zip(socks, frames):
                    try:
                        for frame in nic_frames:
                            s.send(frame)
                    except OSError as exc:  # the VM moved again meanwhile
                        log.info("announce %s: %s", vm, exc)
        finally:
            for s in socks:
                s.close()
