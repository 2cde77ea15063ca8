"""The namespace lab engine: builds a LabPlan in network namespaces, runs the NVE agents, migrates VMs.

A VM is two namespaces: the guest (`rn-<lab>-<vm>`, its eth<i> carry the intent's MAC and IP and
its sockets) and the hypervisor side of its NICs (`rn-<lab>-<vm>.nic`, a bridge per NIC joining the
guest's veth peer `tap<i>` and the uplink `up<i>`). Plugging the VM into a server creates the veth
`up<i>` <-> `<vm>-e<i>` with the server end in the server's namespace, its alias carrying the VM
interface id. Migrating creates the destination's pair (down) first, flips the source's down (the VM
stops), waits the pause, flips the destination's up (the VM resumes) and sends QEMU-style RARP
announcements; the guest's link never loses carrier, so its IP, MAC, ARP cache and sockets are
untouched. Lab namespaces are never linked to the host's namespace.

Moves are make-before-break by default (phases prepare -> resume -> activate -> complete, see
mapping.py); `prepare=False` keeps the learn-driven path (the destination NVE claims the port when
it comes up). The control plane is roamnet's (mapping system + one agent per server) unless another
one is given, e.g. `evpn.FrrEvpn()` for the FRR BGP-EVPN baseline on the same kernel data plane.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pyroute2 import IPRoute

from . import names, netns, vlan
from .agent import Agent
from .desired import compute_desired
from .labplan import UNDERLAY_MTU, LabPlan, Node, build_plan, check_addresses, nic_ns
from .mapping import ACTIVATED, Binding, Domain, LogicalPort, MappingSystem, MoveRefused, Nve, Segment, Snapshot, Tenant
from .model import Topology
from .filters import FAMILY, TABLE, Table, counters, read_table
from .nft import Nft
from .policy import resolve as resolve_policy
from .store import MemoryStore, Store

if TYPE_CHECKING:
    from .border import BorderBgp

log = logging.getLogger(__name__)

ANNOUNCE_AT_MS = (0, 50, 200, 450, 800)  # QEMU's self-announce schedule (50 ms, +100 ms steps)
GUEST_MTU = 1500
RTNH_F_ONLINK = 0x4
UPLINK_INDEX_BASE = 100000  # ifindexes of VM uplinks in the NIC namespaces (see _create_port)
PREPARE_TIMEOUT_S = 30.0  # a prepared move not activated by then is rolled back
EXPIRE_MARGIN_S = 0.05  # the prepare timer fires this long after the mapping's deadline
ACTIVATE_WAIT_S = 1.0  # after resuming, the orchestrator activates explicitly if no announcement did


class ControlPlane(Protocol):
    """Another control plane for the lab's servers (roamnet's own agents when none is given)."""

    name: str

    def start(self, lab: Lab) -> None: ...
    def attach_port(self, lab: Lab, vm: str, server: str) -> None: ...
    def located(self, lab: Lab, vm: str, server: str) -> bool: ...
    def stop(self, lab: Lab) -> list[str]: ...


class LabError(Exception):
    pass


def poll(cond: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    """True as soon as cond() holds, False if it still does not after `timeout` s (bounded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def rarp_frame(mac: str) -> bytes:
    """A RARP request as QEMU sends it after a migration (sha = tha = the NIC's MAC, IPs zero)."""
    m = bytes.fromhex(mac.replace(":", ""))
    return (b"\xff" * 6 + m + struct.pack("!H", 0x8035)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + m + b"\0" * 4 + m + b"\0" * 4 + b"\0" * 18)


def _agent_row(a: Agent) -> dict:
    return {"reconciles": a.stats.reconciles, "changes": a.stats.changes_applied,
            "moves_reported": a.stats.moves_reported, "converged_revision": a.stats.converged_revision,
            "errors": a.stats.errors[-5:]}


class Lab:
    def __init__(self, topo: Topology, store: Store | None = None, journal: Path | None = None,
                 progress: Callable[[str], None] | None = None, control_plane: ControlPlane | None = None,
                 wan_bgp: bool = True, border: BorderBgp | None = None):
        self.topo = topo
        self.control_plane = control_plane
        # FRR (BGP) on the borders' tenant namespaces and the WAN router, when there are tenants;
        # `border` overrides how (e.g. another FRR location), wan_bgp=False leaves the WAN unrouted
        self.wan_bgp = wan_bgp and bool(topo.tenants)
        self._border_arg = border
        self.border: BorderBgp | None = None
        self.pending: dict[str, dict] = {}  # vm -> its prepared move (to, timer, from)
        self.plan: LabPlan = build_plan(topo)
        check_addresses(self.plan)
        self.mapping = MappingSystem(store or MemoryStore())
        self.agents: dict[str, Agent] = {}
        self.location: dict[str, str] = {vm: v.server for vm, v in topo.vms.items()}
        self.migrations: list[dict] = []
        self.created: list[str] = []
        self.journal = journal
        self.progress = progress or (lambda msg: None)
        self._lock = threading.Lock()
        self._handles: dict[str, IPRoute] = {}
        self._uplink_index = UPLINK_INDEX_BASE

    def _nl(self, ns: str) -> IPRoute:
        """A netlink handle in namespace `ns`, kept open (opening one costs ~8 ms)."""
        if ns not in self._handles:
            self._handles[ns] = IPRoute(netns=ns)
        return self._handles[ns]

    @property
    def name(self) -> str:
        return self.topo.name

    # ---- bookkeeping ---------------------------------------------------------------------------
    def _record(self) -> None:
        if self.journal:
            tmp = self.journal.with_suffix(".tmp")
            tmp.write_text(json.dumps({"lab": self.name, "namespaces": self.created}))
            os.replace(tmp, self.journal)

    def _new_ns(self, ns: str) -> None:
        if netns.exists(ns):
            raise LabError(f"namespace {ns} already exists (is lab {self.name} already up?)")
        self.created.append(ns)
        self._record()  # journal first: a crash after this still knows what to remove
        netns.create(ns)
        netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        ipr = self._nl(ns)
        ipr.link("set", index=1, state="up")

    # ---- up / down -----------------------------------------------------------------------------
    def up(self, converge_timeout: float = 20.0) -> None:
        if self.control_plane is not None and self.topo.tors():
            raise LabError(f"{self.control_plane.name} drives server NVEs only: this lab has ToR NVEs "
                           f"({', '.join(self.topo.tors())})")
        try:
            self._build_underlay()
            if self.control_plane is not None:
                self.progress(f"starting {self.control_plane.name}")
                self.control_plane.start(self)
                self.progress("starting VMs")
                for vm in self.topo.vms:
                    self._build_vm(vm)
                    self._plug(vm, self.location[vm])
                self._wait_located(converge_timeout)
                return
            self._register()
            for node in self._agent_nodes():
                self.agents[node.name] = self._new_agent(node.name)
                self.agents[node.name].start()
            if self.wan_bgp:
                from .border import BorderBgp

                self.progress("starting FRR (BGP) on the border routers and the WAN router")
                self.border = self._border_arg or BorderBgp()
                self.border.start(self)
            self.progress("starting VMs")
            for vm in self.topo.vms:
                self._build_vm(vm)
                self._plug(vm, self.location[vm])
            if not self.wait_converged(converge_timeout):
                raise LabError(f"NVE agents did not converge within {converge_timeout:.0f} s: "
                               + "; ".join(e for a in self.agents.values() for e in a.stats.errors[-3:]))
        except BaseException:
            self.down()
            raise

    def _wait_located(self, timeout: float) -> None:
        """Another control plane learns MACs from frames: announce every VM, wait until all are known."""
        for vm in self.topo.vms:
            threading.Thread(target=self._announce, args=(vm,), daemon=True, name=f"announce:{vm}").start()
        deadline = time.monotonic() + timeout
        waiting = set(self.topo.vms)
        while waiting and time.monotonic() < deadline:
            waiting = {vm for vm in waiting if not self.control_plane.located(self, vm, self.location[vm])}
            time.sleep(0.05)
        if waiting:
            raise LabError(f"{self.control_plane.name} did not learn {', '.join(sorted(waiting))} "
                           f"within {timeout:.0f} s")

    def down(self) -> list[str]:
        for pending in self.pending.values():
            pending["timer"].cancel()
        self.pending.clear()
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()
        for cp in (self.control_plane, self.border):
            if cp is None:
                continue
            try:
                cp.stop(self)
            except Exception:  # the namespaces must go whatever happened
                log.exception("%s: stop failed", cp.name)
        self.border = None
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        removed = []
        for ns in reversed(self.created):
            netns.remove(ns)
            removed.append(ns)
        self.created.clear()
        self._record()
        return removed

    def _build_underlay(self) -> None:
        routers = [n for n in self.plan.nodes.values() if n.kind != "vm"]
        self.progress(f"creating {len(routers)} servers and routers")
        for node in routers:
            self._new_ns(node.ns)
            if node.forwarding:
                netns.sysctl(node.ns, "net.ipv4.ip_forward", 1)
            if node.kind == "vrf":  # routes are symmetric only per flow: no reverse-path filtering
                for conf in ("all", "default"):
                    netns.sysctl(node.ns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        self.progress(f"wiring {len(self.plan.links)} underlay links")
        for link in self.plan.links:
            a, b = self.plan.nodes[link.a], self.plan.nodes[link.b]
            ipr = self._nl(a.ns)
            ipr.link("add", ifname=link.a_if.name, kind="veth", mtu=UNDERLAY_MTU,
                     peer={"ifname": link.b_if.name, "mtu": UNDERLAY_MTU})
            peer = ipr.link_lookup(ifname=link.b_if.name)[0]
            ipr.link("set", index=peer, net_ns_fd=b.ns)
            self._address(ipr, link.a_if.name, link.a_if.address)
            ipr = self._nl(b.ns)
            self._address(ipr, link.b_if.name, link.b_if.address)
        for node in self.plan.nodes.values():
            if node.routes:
                ipr = self._nl(node.ns)
                for r in node.routes:
                    via = {"oif": ipr.link_lookup(ifname=r.dev)[0]} if r.dev else {}
                    if r.gateway:
                        via["gateway"] = r.gateway
                        if r.dev:
                            via["flags"] = RTNH_F_ONLINK
                    ipr.route("add", dst=r.dst, **via)

    @staticmethod
    def _address(ipr: IPRoute, ifname: str, cidr: str) -> None:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if cidr:  # else an L2 trunk
            addr, plen = cidr.split("/")
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")

    def _nves(self) -> list[Node]:
        """The lab's NVEs: every server of a trivial domain, every ToR; every border too when there
        are tenants (a DCBR is an NVE of every tenant)."""
        return [n for n in self.plan.nodes.values() if n.is_nve and (n.kind != "border" or self.topo.tenants)]

    def _agent_nodes(self) -> list[Node]:
        """Nodes with an agent: the NVEs, and the servers behind ToRs (their hypervisor switches)."""
        return self._nves() + [n for n in self.plan.nodes.values() if n.kind == "server" and n.tor]

    def _vrf_namespaces(self, node: str) -> dict[str, str]:
        return {t: self.plan.vrf(node, t).ns for t in self.topo.tenants}

    def _new_agent(self, node: str) -> Agent:
        nve = self.mapping.snapshot().nves[node]
        if nve.tor:
            from .switch import SwitchAgent

            return SwitchAgent(self.mapping, nve, self.plan.nodes[node].ns)
        return Agent(self.mapping, nve, self.plan.nodes[node].ns, self._vrf_namespaces(node))

    def _register(self) -> None:
        for t, spec in self.topo.tenants.items():
            self.mapping.register_tenant(Tenant(t, spec.l3vni, self.topo.anycast_gateway_mac))
        for cug, spec in self.topo.cugs.items():
            gw = f"{spec.gateway}/{spec.subnet.prefixlen}" if spec.gateway is not None else ""
            self.mapping.register_segment(Segment(spec.vni, cug, str(spec.subnet), gw, spec.tenant or "",
                                                  spec.flood_unknown_arp))
        self.mapping.register_policy(resolve_policy(self.topo))  # before any VM: ports start filtered
        for dom in self.topo.tors().values():
            self.mapping.register_domain(Domain(dom.name, dom.dc, dom.tor, tuple(dom.servers), *dom.vlans))
        for node in self._agent_nodes():
            self.mapping.register_nve(Nve(node.name, node.vtep, node.dc, node.kind, node.tor, node.domain))
        snap = self.mapping.snapshot()
        for vm, spec in self.topo.vms.items():
            nve = snap.nves[spec.server]
            for i, itf in enumerate(spec.interfaces):
                vni = self.topo.cugs[itf.cug].vni
                port = LogicalPort(names.iface_id(vm, i), vm, vni, itf.mac, (str(itf.ip),), itf.vlan or 0)
                self.mapping.register_port(port)
                try:
                    self.mapping.advertise(Binding(vni, itf.mac, nve.name, nve.vtep, 0, port.ips, port.iface_id))
                except MoveRefused as exc:
                    raise LabError(f"{vm} cannot start on {spec.server}: {exc}") from None

    def _build_vm(self, vm: str) -> None:
        guest, nic = names.netns(self.name, vm), nic_ns(self.name, vm)
        self._new_ns(guest)
        self._new_ns(nic)
        spec = self.topo.vms[vm]
        n = self._nl(nic)
        nics = self.topo.nics(vm)
        for k, _ in enumerate(nics):
            n.link("add", ifname=f"nic{k}", kind="bridge", br_stp_state=0)
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

    # ---- the hypervisor's side of a migration ---------------------------------------------------
    # A hypervisor creates the destination tap before it stops the VM, and the source tap goes away
    # after the VM runs on the destination. The NVE sees a port "appear" when it comes up.
    @staticmethod
    def _uplink(i: int, server: str) -> str:
        return f"u{i}-{server}"

    def _create_port(self, vm: str, server: str) -> None:
        """Create the VM's ports on `server`, down, and their uplinks in the NIC namespace, detached."""
        nic, srv_ns = nic_ns(self.name, vm), self.plan.nodes[server].ns
        n = self._nl(nic)
        spec = self.topo.vms[vm]
        for i, members in enumerate(self.topo.nics(vm)):
            port, up = names.port(vm, i), self._uplink(i, server)
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
            n.link("set", index=pidx, net_ns_fd=srv_ns)
            n.link("set", index=n.link_lookup(ifname=up)[0], state="up")
        if self.control_plane is not None:
            self.control_plane.attach_port(self, vm, server)  # the hypervisor's bridge (libvirt's job)

    def _switch(self, vm: str, server: str, up: bool) -> None:
        """Connect (up=True) or disconnect the VM's NICs to/from its ports on `server`: fast link flips."""
        nic, srv_ns = nic_ns(self.name, vm), self.plan.nodes[server].ns
        s, n = self._nl(srv_ns), self._nl(nic)
        for i in range(len(self.topo.nics(vm))):
            uidx = n.link_lookup(ifname=self._uplink(i, server))[0]
            pidx = s.link_lookup(ifname=names.port(vm, i))[0]
            if up:
                n.link("set", index=uidx, master=n.link_lookup(ifname=f"nic{i}")[0])
                s.link("set", index=pidx, state="up")
            else:
                s.link("set", index=pidx, state="down")
                n.link("set", index=uidx, master=0)

    def _plug(self, vm: str, server: str) -> None:
        self._create_port(vm, server)
        self._switch(vm, server, up=True)

    def _remove_port(self, vm: str, server: str) -> None:
        s = self._nl(self.plan.nodes[server].ns)
        for i in range(len(self.topo.nics(vm))):
            for idx in s.link_lookup(ifname=names.port(vm, i)):
                s.link("del", index=idx)

    def _announce(self, vm: str) -> None:
        """Send QEMU's RARP self-announcements on every NIC of the VM, on QEMU's schedule."""
        spec = self.topo.vms[vm]
        socks, macs = [], []
        for i, members in enumerate(self.topo.nics(vm)):  # one per NIC, untagged, as QEMU does
            s = netns.socket_in(nic_ns(self.name, vm), socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((self._uplink(i, self.location[vm]), 0))
            socks.append(s)
            macs.append(spec.interfaces[members[0]].mac)
        t0 = time.monotonic()
        try:
            for at in ANNOUNCE_AT_MS:
                time.sleep(max(0.0, t0 + at / 1000 - time.monotonic()))
                for s, mac in zip(socks, macs):
                    try:
                        s.send(rarp_frame(mac))
                    except OSError as exc:  # the VM moved again meanwhile
                        log.info("announce %s: %s", vm, exc)
        finally:
            for s in socks:
                s.close()

    def _check_move(self, vm: str, to: str) -> str:
        if vm not in self.topo.vms:
            raise LabError(f"no VM {vm!r} in lab {self.name}")
        if to in self.plan.nodes and self.plan.nodes[to].kind == "tor":
            raise LabError(f"{to} is the ToR switch of domain {self.plan.nodes[to].domain}: it hosts no VMs")
        if to not in self.plan.nodes or self.plan.nodes[to].kind != "server":
            raise LabError(f"no server {to!r} in lab {self.name}")
        if vm in self.pending:
            raise LabError(f"{vm}: a move to {self.pending[vm]['to']} is already in progress")
        if self.location[vm] == to:
            raise LabError(f"{vm} is already on {to}")
        return self.location[vm]

    def _ifaces(self, vm: str) -> list[str]:
        return [names.iface_id(vm, i) for i in range(len(self.topo.vms[vm].interfaces))]

    def _bound_at(self, vm: str, server: str) -> Callable[[Snapshot], bool]:
        """Predicate on a snapshot: every interface of `vm` is bound to `server`."""
        ifaces = self._ifaces(vm)
        return lambda s: all((b := s.binding_of(i)) is not None and b.nve == server for i in ifaces)

    def _activated(self, snap: Snapshot, vm: str) -> bool:
        return all((m := snap.migrations.get(i)) is not None and m.state == ACTIVATED for i in self._ifaces(vm))

    def _stop_and_resume(self, vm: str, src: str, to: str, pause_ms: int) -> tuple[float, float]:
        """The hypervisor's stop-and-copy: the VM stops on `src`, and after the pause runs on `to`."""
        at = time.monotonic()
        self._switch(vm, src, up=False)
        time.sleep(pause_ms / 1000)
        self._switch(vm, to, up=True)
        resumed = time.monotonic()
        self.location[vm] = to
        threading.Thread(target=self._announce, args=(vm,), daemon=True, name=f"announce:{vm}").start()
        return at, resumed

    def _record_move(self, rec: dict, at: float, resumed: float) -> dict:
        rec.update({"at_mono": at, "resumed_mono": resumed, "dark_ms": round((resumed - at) * 1000, 1),
                    "dc_from": self.plan.nodes[rec["from"]].dc, "dc_to": self.plan.nodes[rec["to"]].dc})
        self.migrations.append(rec)
        return rec

    # ---- make-before-break phases (roamnet's control plane) -------------------------------------
    def prepare(self, vm: str, to: str, timeout: float = PREPARE_TIMEOUT_S, wait: float = 10.0) -> dict:
        """Phase 1: the destination gets the VM's port (down) and every NVE gets ready; rolled back by
        itself if not activated within `timeout` s."""
        with self._lock:
            return self._prepare(vm, to, timeout, wait)

    def _prepare(self, vm: str, to: str, timeout: float, wait: float) -> dict:
        if self.control_plane is not None:
            raise LabError(f"{self.control_plane.name} has no prepared moves (use prepare=False)")
        src = self._check_move(vm, to)
        started = time.monotonic()
        self._create_port(vm, to)
        done = []
        try:
            for iface in self._ifaces(vm):
                done.append(self.mapping.prepare(iface, to, timeout))
            if not self.wait_converged(wait):
                raise LabError(f"{vm}: NVEs did not program the prepared move within {wait:.0f} s")
        except (MoveRefused, LabError) as exc:
            for mig in done:
                self.mapping.abort(mig.iface_id)
            self._remove_port(vm, to)
            raise LabError(f"{vm}: prepare failed, rolled back: {exc}") from None
        timer = threading.Timer(timeout + EXPIRE_MARGIN_S, self._expire, args=(vm,))
        timer.daemon = True
        self.pending[vm] = {"from": src, "to": to, "timer": timer, "resumed": False}
        timer.start()
        return {"vm": vm, "from": src, "to": to, "phase": "prepared", "timeout_s": timeout,
                "prepared_ms": round((time.monotonic() - started) * 1000, 1)}

    def _pending(self, vm: str) -> dict:
        if vm not in self.pending:
            raise LabError(f"{vm}: no move in progress (prepare it first)")
        return self.pending[vm]

    def resume(self, vm: str, pause_ms: int = 0) -> dict:
        """Phase 2 (the hypervisor's part): stop on the source, pause, run on the destination, announce."""
        with self._lock:
            p = self._pending(vm)
            if p["resumed"]:
                raise LabError(f"{vm} already runs on {p['to']}")
            at, resumed = self._stop_and_resume(vm, p["from"], p["to"], pause_ms)
            p["resumed"] = True
            return {"vm": vm, "from": p["from"], "to": p["to"], "phase": "resumed", "pause_ms": pause_ms,
                    "dark_ms": round((resumed - at) * 1000, 1)}

    def activate(self, vm: str) -> dict:
        """Phase 3, explicitly (normally the VM's first announcement on its new port activates)."""
        with self._lock:
            p = self._pending(vm)
            for iface in self._ifaces(vm):
                try:
                    self.mapping.activate(iface)
                except MoveRefused as exc:
                    raise LabError(str(exc)) from None
            return {"vm": vm, "to": p["to"], "phase": "activated"}

    def complete(self, vm: str, wait: float = 10.0) -> dict:
        """Phase 4: once every NVE programmed the activation, forget the move; the source tap goes."""
        with self._lock:
            return self._complete(vm, wait)

    def _complete(self, vm: str, wait: float) -> dict:
        p = self._pending(vm)
        snap = self.mapping.snapshot()
        if not self._activated(snap, vm):
            raise LabError(f"{vm}: the move to {p['to']} is not activated yet")
        converged = self.wait_converged(wait, snap.revision)
        for iface in self._ifaces(vm):
            self.mapping.complete(iface)
        p["timer"].cancel()
        del self.pending[vm]
        self._remove_port(vm, p["from"])
        return {"vm": vm, "from": p["from"], "to": p["to"], "phase": "completed", "converged": converged}

    def abort(self, vm: str) -> dict:
        """Roll back a prepared move that was not activated: the VM stays where it runs."""
        with self._lock:
            return self._abort(vm)

    def _abort(self, vm: str) -> dict:
        self._pending(vm)
        try:
            for iface in self._ifaces(vm):
                self.mapping.abort(iface)
        except MoveRefused as exc:
            raise LabError(f"{vm}: cannot roll back: {exc}") from None
        return self._undo(vm)

    def _undo(self, vm: str) -> dict:
        """The lab's side of a rollback (the mapping's is done): the hypervisor's port goes."""
        p = self.pending.pop(vm)
        p["timer"].cancel()
        if p["resumed"]:  # the hypervisor moves it back (a migration that failed after the switch)
            self._stop_and_resume(vm, p["to"], p["from"], 0)
        self._remove_port(vm, p["to"])
        log.info("%s: move to %s rolled back", vm, p["to"])
        return {"vm": vm, "from": p["from"], "to": p["to"], "phase": "rolled-back"}

    def _expire(self, vm: str) -> None:
        """The prepare timer: the mapping rolls back what is past its deadline; the lab follows."""
        with self._lock:
            expired = {m.iface_id for m in self.mapping.expire()}
            if vm in self.pending and expired & set(self._ifaces(vm)):
                self._undo(vm)
                self.migrations.append({"vm": vm, "rolled_back": True, "at_mono": time.monotonic()})

    # ---- a whole move ----------------------------------------------------------------------------
    def migrate(self, vm: str, to: str, pause_ms: int = 0, wait: float = 10.0, prepare: bool = True) -> dict:
        """Live-migrate `vm` to server `to`; returns the migration record."""
        with self._lock:
            if self.control_plane is not None:
                return self._migrate_other(vm, to, pause_ms, wait)
            if not prepare:
                return self._migrate_learn(vm, to, pause_ms, wait)
            prep = self._prepare(vm, to, PREPARE_TIMEOUT_S, wait)
            at, resumed = self._stop_and_resume(vm, prep["from"], to, pause_ms)
            self.pending[vm]["resumed"] = True
            snap = self.mapping.wait_for(self._bound_at(vm, to), ACTIVATE_WAIT_S)
            activated_by = "announcement"
            if snap is None:  # no announcement heard: the orchestrator knows the VM runs there
                activated_by = "explicit"
                for iface in self._ifaces(vm):
                    self.mapping.activate(iface)
                snap = self.mapping.snapshot()
            activated = time.monotonic()
            converged = self.wait_converged(wait, snap.revision)
            done = time.monotonic()
            self._complete(vm, wait)
            rec = {"vm": vm, "from": prep["from"], "to": to, "pause_ms": pause_ms, "mode": "prepared",
                   "prepared_ms": prep["prepared_ms"], "activated_by": activated_by,
                   "activated_mono": activated,
                   "mapped_ms": round((activated - resumed) * 1000, 1),
                   "converged_ms": round((done - resumed) * 1000, 1) if converged else None,
                   "programmed_ms": round((done - activated) * 1000, 1) if converged else None}
            return self._record_move(rec, at, resumed)

    def _migrate_learn(self, vm: str, to: str, pause_ms: int, wait: float) -> dict:
        """The learn-driven path: nothing prepared; the destination NVE claims the port when it comes up."""
        src = self._check_move(vm, to)
        self._create_port(vm, to)  # pre-copy: the destination tap exists, down
        at, resumed = self._stop_and_resume(vm, src, to, pause_ms)
        snap = self.mapping.wait_for(self._bound_at(vm, to), wait)
        mapped = time.monotonic()
        converged = snap is not None and self.wait_converged(wait, snap.revision)
        done = time.monotonic()
        self._remove_port(vm, src)  # the source's tap goes away once the VM runs elsewhere
        rec = {"vm": vm, "from": src, "to": to, "pause_ms": pause_ms, "mode": "learn",
               "activated_mono": mapped if snap else None,
               "mapped_ms": round((mapped - resumed) * 1000, 1) if snap else None,
               "converged_ms": round((done - resumed) * 1000, 1) if converged else None,
               "programmed_ms": round((done - mapped) * 1000, 1) if converged else None}
        return self._record_move(rec, at, resumed)

    def _migrate_other(self, vm: str, to: str, pause_ms: int, wait: float) -> dict:
        """Another control plane: the same hypervisor actions; converged when it locates the VM."""
        cp = self.control_plane
        src = self._check_move(vm, to)
        self._create_port(vm, to)
        at, resumed = self._stop_and_resume(vm, src, to, pause_ms)
        located = poll(lambda: cp.located(self, vm, to), wait, step=0.001)
        done = time.monotonic()
        self._remove_port(vm, src)
        rec = {"vm": vm, "from": src, "to": to, "pause_ms": pause_ms, "mode": cp.name,
               "activated_mono": None, "mapped_ms": None,
               "converged_ms": round((done - resumed) * 1000, 1) if located else None, "programmed_ms": None}
        return self._record_move(rec, at, resumed)

    # ---- agents --------------------------------------------------------------------------------
    def wait_converged(self, timeout: float, revision: int | None = None) -> bool:
        """Wait until every agent has programmed the mapping at `revision` (default: now)."""
        target = self.mapping.store.revision if revision is None else revision
        return poll(lambda: all(a.stats.converged_revision >= target for a in self.agents.values()), timeout)

    def restart_agent(self, server: str) -> dict:
        """Stop a server's agent and start a new one on the same kernel state; returns its first pass."""
        if server not in self.agents:
            raise LabError(f"no NVE agent on {server!r}")
        self.agents[server].stop()
        agent = self._new_agent(server)
        first = agent.reconcile()
        self.agents[server] = agent
        agent.start()
        return {"server": server, "changes_on_restart": [str(c) for c in first]}

    # ---- the WAN edge --------------------------------------------------------------------------
    def border_namespaces(self) -> list[tuple[str, str]]:
        """(border, namespace) of every border's tenant namespace (each has a handoff `wan`)."""
        return [(n.parent, n.ns) for n in self.plan.nodes.values()
                if n.kind == "vrf" and self.plan.nodes[n.parent].kind == "border"]

    def handoff_counters(self) -> dict[str, dict[str, int]]:
        """Per border (summed over tenants): packets received from the WAN ("in", entering the data
        center) and sent to it ("out") on the handoff interfaces."""
        out: dict[str, dict[str, int]] = {}
        for border, ns in self.border_namespaces():
            ipr = self._nl(ns)
            link = ipr.get_links(ipr.link_lookup(ifname="wan")[0])[0]
            stats = link.get("IFLA_STATS64")
            c = out.setdefault(border, {"in": 0, "out": 0})
            c["in"] += stats["rx_packets"]
            c["out"] += stats["tx_packets"]
        return out

    # ---- port filters --------------------------------------------------------------------------
    def filter_tables(self) -> dict[str, Table]:
        """Each NVE's (and hypervisor switch's) nftables table as it is now (filters.Table; counters
        included)."""
        out: dict[str, Table] = {}
        for node in self._agent_nodes():
            agent = self.agents.get(node.name)
            nft = agent.kernel.nft if agent is not None else Nft(node.ns)  # (no agents: another control plane)
            try:
                out[node.name] = read_table(nft.list_table(FAMILY, TABLE))
            finally:
                if agent is None:
                    nft.close()
        return out

    def filter_counters(self) -> dict[str, dict[str, int]]:
        """Per NVE: packets its filters counted by kind (ARP requests answered here, ARP frames to and
        from VXLAN, unknown-IP requests dropped, spoofing drops, policy denies; filters.TOTALS)."""
        return {name: counters(t) for name, t in self.filter_tables().items()}

    # ---- inspect -------------------------------------------------------------------------------
    def inspect(self) -> dict:
        snap = self.mapping.snapshot()
        tables = self.filter_tables()
        nodes = []
        for name, node in self.plan.nodes.items():
            row = {"name": name, "kind": node.kind, "namespace": node.ns, "dc": node.dc}
            if node.kind == "vrf":
                row.update({"tenant": node.tenant, "parent": node.parent})
            if node.kind == "client":
                row["ip"] = str(self.topo.wan_clients()[name].ip)
            if node.tor:
                row.update({"tor": node.tor, "domain": node.domain})
                a = self.agents.get(name)
                if a:
                    from .switch import compute_switch

                    sw = compute_switch(snap, name)
                    row["switch"] = sw.to_json()
                    row["agent"] = _agent_row(a)
                    row["filters"] = {"ports": sorted(sw.filters),
                                      "counters": counters(tables[name]) if name in tables else {}}
            elif node.is_nve and node.vtep:
                row["vtep"] = node.vtep
                if node.kind == "tor":
                    row["domain"] = node.domain
                a = self.agents.get(name)
                if a:
                    want = compute_desired(snap, name)
                    row["segments"] = sorted(want.segments)
                    if node.kind == "tor":
                        row["trunk_vlans"] = sorted(want.attachments)
                    if want.vrfs:
                        row["vrfs"] = {t: {"l3vni": v.l3vni, "router_mac": v.rmac,
                                           "gateways": sorted(v.gateways.values()),
                                           "host_routes": sum(p.endswith("/32") for _, p in v.routes),
                                           "default_via": v.routes.get(("main", "0.0.0.0/0"))}
                                       for t, v in want.vrfs.items()}
                    row["agent"] = _agent_row(a)
                    row["filters"] = {"ports": sorted(want.filters),
                                      "counters": counters(tables[name]) if name in tables else {}}
            if node.kind == "vm":
                row["server"] = self.location[name]
                row["dc"] = self.plan.nodes[self.location[name]].dc
                row["interfaces"] = [{"cug": i.cug, "mac": i.mac, "ip": str(i.ip), "guest_vlan": i.vlan}
                                     for i in self.topo.vms[name].interfaces]
            nodes.append(row)
        return {"lab": self.name, "nodes": nodes, "namespaces": list(self.created),
                "mapping": snap.to_json(), "migrations": self.migrations,
                "pending": {vm: {k: v for k, v in p.items() if k in ("from", "to", "resumed")}
                            for vm, p in self.pending.items()},
                "control_plane": self.control_plane.name if self.control_plane else "roamnet",
                "wan_bgp": self._wan_bgp_state()}

    def _wan_bgp_state(self) -> dict | None:
        if self.border is None:
            return None
        try:
            return {"sessions": self.border.sessions(), "wan_routes": self.border.wan_routes()}
        except Exception as exc:  # inspect must answer even when FRR does not
            return {"error": str(exc)}

