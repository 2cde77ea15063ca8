"""FRR BGP-EVPN as the lab's other control plane: the baseline roamnet's migrations are measured against.

Same kernel data plane as roamnet (a bridge `br<vni>` and a VXLAN device `vx<vni>` per segment on
every server), but MACs are learned by the bridges from the VMs' frames and distributed by FRR:
zebra + bgpd in each server's namespace (`advertise-all-vni`, iBGP AS 65000) and a route reflector
(zebra + bgpd) in the DCI router's namespace. A VM that moves is learned by the destination's bridge
from its frames (QEMU's RARP announcements); zebra/bgpd advertise it (MAC mobility: sequence + 1 if
the old route is still known) and the other servers' zebra re-point their FDB entries at the new
VTEP. `located()` reads those kernel FDBs. The VMs' ports keep bridge learning on; the VXLAN ports
have it off (zebra installs remote MACs as extern_learn entries).

The FRR processes themselves (per-instance directories `<workdir>/<node>/`, explicit paths, the pid
journal `<workdir>/frr-pids.json`, `kill_recorded`, stop by our own pids) are `roamnet.wan.frr`'s, shared
with the border routers' BGP (`roamnet.wan.border`). Daemons are only ever started inside lab namespaces.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, nlmsgerr
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT, ndmsg

from roamnet import names
from roamnet.dataplane import netns
from roamnet.dataplane.kernel import ZERO_MAC, ensure_segment
from roamnet.names import DCI_NODE
from roamnet.wan import frr
from roamnet.wan.frr import FRR_BIN_DIR, FrrError, FrrProcesses, check_lab_address


class Lab(Protocol):
    """What this control plane needs of the lab it runs in."""

    name: str
    plan: Any  # roamnet.lab.plan.LabPlan
    topo: Any  # roamnet.intent.model.Topology

    def netlink(self, ns: str) -> Any: ...  # an open pyroute2 IPRoute in namespace `ns`

log = logging.getLogger(__name__)

EVPN_ASN = 65000
READY_TIMEOUT_S = 30.0
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
NLMSG_HDRLEN = 16
NDA_LLADDR_HDR = struct.pack("=HH", 10, 2)  # the nlattr header of NDA_LLADDR holding a 6-byte MAC


class FdbEntry(NamedTuple):
    ifindex: int
    mac: str | None
    flags: int
    state: int
    dst: str | None
    master: int | None


class EvpnError(FrrError):
    pass


class Segment(NamedTuple):
    """Where one VNI's devices are on a VTEP: the namespace holding its bridge and VXLAN port (the
    server's own, or with symmetric IRB its tenant's) and their ifindexes there."""

    ns: str
    bridge: int
    vxlan: int


# ---------------------------------------------------------------- pure: who runs, with which config


@dataclass(frozen=True)
class FrrInstance:
    """One FRR instance (zebra + bgpd): a VTEP on a server, or the route reflector on the DCI router."""

    node: str
    ns: str
    role: str  # "vtep" | "rr"
    address: str  # router-id and BGP update-source: the VTEP address, or the RR's DCI address
    peers: tuple[str, ...]  # BGP neighbors: the RR for a VTEP, every VTEP for the RR

    def label(self, daemon: str) -> str:
        return f"{daemon}@{self.ns}"


def rr_address(plan: Any) -> str:
    """The route reflector's address: the DCI router's side of its link to the first data center (the
    route reflector is part of the underlay's control plane, out of the tenants' and the WAN's reach)."""
    ends = [link.a_if.address for link in plan.links if link.a == DCI_NODE]
    ends += [link.b_if.address for link in plan.links if link.b == DCI_NODE]
    if not ends:
        raise EvpnError("the lab has no DCI router link to put the route reflector on")
    return str(ipaddress.ip_interface(ends[0]).ip)


def plan_instances(plan: Any) -> list[FrrInstance]:
    """The FRR instances of a lab plan: every server (VTEP), then the route reflector on `dci`. Pure."""
    servers = [n for n in plan.nodes.values() if n.kind == "server"]
    rr = rr_address(plan)
    out = [FrrInstance(n.name, n.ns, "vtep", n.vtep, (rr,)) for n in servers]
    out.append(FrrInstance(DCI_NODE, plan.nodes[DCI_NODE].ns, "rr", rr, tuple(n.vtep for n in servers)))
    return out


def frr_config(daemon: str, inst: FrrInstance, *, log_file: str | None = None, asn: int = EVPN_ASN,
               keepalive: int = 3, holdtime: int = 9, connect_retry: int = 1, debug: bool = False) -> str:
    """The configuration file of `daemon` ("zebra" | "bgpd") of one instance. Pure.

    VTEPs: iBGP to the route reflector, only the l2vpn evpn family, `advertise-all-vni` (zebra finds
    the VNIs from the kernel's VXLAN devices; RD/RT are auto-derived: RT = AS:VNI). The RR reflects
    l2vpn evpn to all VTEPs. Fast timers: 3/9 s keepalive/hold, 1 s connect retry, advertisement
    interval (MRAI) 0. Duplicate address detection is off: the benchmark moves the same VM more than
    5 times in 180 s (FRR's default thresholds), which would flag it as a duplicate.
    """
    frr.check_instance(daemon, inst, ("vtep", "rr"))
    check_lab_address(inst.address, f"{inst.node}: address")
    for p in inst.peers:
        check_lab_address(p, f"{inst.node}: peer")
    lines = frr.config_header(daemon, inst.node, inst.ns, inst.role, "roamnet.baselines.evpn", log_file=log_file,
                              debug=debug)
    if daemon == "zebra":
        if debug:
            lines += ["debug zebra vxlan", "debug zebra kernel", "!"]
        return "\n".join(lines + ["end", ""])
    if debug:
        lines += ["debug bgp zebra", "debug bgp updates", "debug bgp neighbor-events", "!"]
    lines += evpn_instance(inst, asn=asn, keepalive=keepalive, holdtime=holdtime, connect_retry=connect_retry)
    return "\n".join(lines + ["end", ""])


def evpn_instance(inst: Any, *, asn: int, keepalive: int, holdtime: int, connect_retry: int,
                  vtep_lines: tuple[str, ...] = ()) -> list[str]:
    """The bgpd `router bgp <asn>` block of a VTEP or route reflector `inst` (role "rr", or any other role
    for a VTEP): iBGP over a peer-group with the l2vpn evpn family only; the RR reflects, a VTEP
    `advertise-all-vni`s with duplicate detection off, after `vtep_lines` (in its address family). Pure."""
    group = "RR" if inst.role != "rr" else "VTEPS"
    lines = [f"router bgp {asn}",
              f" bgp router-id {inst.address}",
              " bgp log-neighbor-changes",
              " no bgp default ipv4-unicast",
              f" timers bgp {keepalive} {holdtime}"]
    if inst.role == "rr":
        lines.append(f" bgp cluster-id {inst.address}")
    lines += [f" neighbor {group} peer-group",
              f" neighbor {group} remote-as {asn}",
              f" neighbor {group} update-source {inst.address}",
              f" neighbor {group} timers connect {connect_retry}",
              f" neighbor {group} advertisement-interval 0"]
    lines += [f" neighbor {p} peer-group {group}" for p in inst.peers]
    lines += [" !", " address-family l2vpn evpn", f"  neighbor {group} activate"]
    if inst.role == "rr":
        lines.append(f"  neighbor {group} route-reflector-client")
    else:
        lines += [*vtep_lines, "  advertise-all-vni", "  no dup-addr-detection"]
    return lines + [" exit-address-family", "exit", "!"]


# ---------------------------------------------------------------- the pid journal (roamnet.frr's)


def read_journal(workdir: Path) -> list[dict]:
    return frr.read_journal(workdir, EvpnError)


def kill_recorded(workdir: Path) -> list[str]:
    """Crash clean-up: end the FRR processes the pid journal in `workdir` records (see
    `roamnet.wan.frr.kill_recorded`: by pid, each only after /proc/<pid>/cmdline shows it is that daemon of
    that instance). Returns what it ended, e.g. "bgpd@rn-x-hv1 (pid 42)"."""
    return frr.kill_recorded(workdir, EvpnError)


# ---------------------------------------------------------------- reading a namespace's FDB


class FdbReader:
    """One namespace's bridge FDB, dumped on its own netlink socket (a plain socket: usable from any
    thread, one dump at a time). Kept open: opening one costs more than a dump.

    Cheap enough to poll every few ms: the kernel filters the dump to one bridge when asked
    (NETLINK_GET_STRICT_CHK + NDA_MASTER), and only the messages whose NDA_LLADDR attribute holds one
    of the wanted MACs (a byte search) are decoded, by pyroute2."""

    def __init__(self, ns: str):
        self.ns = ns
        self.sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)
        self.seq = 0
        self.lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def dump(self, macs: Iterable[str] | None = None, master: int | None = None) -> list[FdbEntry]:
        """FDB entries (of bridge `master` and its ports' devices only, if given) for `macs` (all if None)."""
        wanted = None if macs is None else [NDA_LLADDR_HDR + bytes.fromhex(m.replace(":", "")) for m in macs]
        with self.lock:
            self.seq += 1
            req = ndmsg()
            req["family"] = socket.AF_BRIDGE
            if master is not None:
                req["attrs"] = [("NDA_MASTER", master)]
            req["header"]["type"] = RTM_GETNEIGH
            req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
            req["header"]["sequence_number"] = self.seq
            req.encode()
            self.sock.send(req.data)
            out: list[FdbEntry] = []
            for _ in range(100000):  # bounded: a dump ends with NLMSG_DONE
                data = self.sock.recv(1 << 20)
                off = 0
                while off + NLMSG_HDRLEN <= len(data):
                    length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                    if length < NLMSG_HDRLEN:
                        break
                    raw, off = data[off:off + length], off + ((length + 3) & ~3)
                    if seq != self.seq:
                        continue
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        err = nlmsgerr(raw)
                        err.decode()
                        raise OSError(-err["error"], f"{self.ns}: FDB dump failed: {os.strerror(-err['error'])}")
                    if wanted is not None and not any(w in raw for w in wanted):
                        continue
                    msg = ndmsg(raw)
                    msg.decode()
                    out.append(FdbEntry(msg["ifindex"], msg.get("NDA_LLADDR"), msg["flags"], msg["state"],
                                        msg.get("NDA_DST"), msg.get("NDA_MASTER")))
            raise OSError(f"{self.ns}: FDB dump did not end")


# ---------------------------------------------------------------- the control plane


class FrrEvpn(FrrProcesses):
    """FRR BGP-EVPN as the lab's control plane (see the module's docstring).

    workdir: configs, sockets, pid files, logs and the pid journal; default /run/roamnet/<lab>/frr
    (0700, removed by stop() when start() created it, unless keep_workdir). frr_bin_dir: where zebra
    and bgpd are. debug: FRR's EVPN/zebra/BGP update debugging into the daemons' logs."""

    name = "frr-evpn"
    workdir_name = "frr"
    error = EvpnError

    def __init__(self, workdir: Path | None = None, frr_bin_dir: Path | str = FRR_BIN_DIR,
                 vtysh: str | None = None, ready_timeout: float = READY_TIMEOUT_S, debug: bool = False,
                 keep_workdir: bool = False):
        super().__init__(workdir, frr_bin_dir, vtysh, keep_workdir)
        self.ready_timeout = ready_timeout
        self.debug = debug
        self.instances: list[FrrInstance] = []
        # for located(): per server namespace, VNI -> its Segment, and the readers (one per namespace)
        self._segments: dict[str, dict[int, Segment]] = {}
        self._readers: dict[str, FdbReader] = {}
        self._readers_lock = threading.Lock()
        self._last_miss: dict[tuple[str, str], str] = {}

    # ---- start ----------------------------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        """After the lab's underlay exists, before VMs are plugged: segment devices on every server,
        zebra + bgpd in every server's namespace and on `wan` (the RR), then wait (bounded by
        `ready_timeout`) until every BGP session is Established, every server's zebra knows every VNI
        and its kernel floods each VNI to every other VTEP. On any failure: stops what it started and
        raises EvpnError naming the instance ("bgpd in rn-<lab>-hv1: ...") with the tail of its log."""
        if self.running():
            raise EvpnError(f"{self.name} is already running ({', '.join(self.running())})")
        progress = getattr(lab, "progress", None) or (lambda msg: None)
        try:
            self.prepare_workdir(lab.name)
            self.instances = plan_instances(lab.plan)
            vnis = sorted({c.vni for c in lab.topo.cugs.values()})
            self.check_paths()
            progress(f"{self.name}: VXLAN segments {', '.join(map(str, vnis)) or '-'} on "
                     f"{sum(i.role == 'vtep' for i in self.instances)} servers")
            for inst in self.instances:
                if inst.role == "vtep":
                    self._segments[inst.ns] = self._make_segments(lab, inst, vnis)
            self.write_configs(lambda daemon, inst, log_file:
                               frr_config(daemon, inst, log_file=log_file, debug=self.debug))
            self.launch(progress)
            self._wait_ready(lab, vnis, progress)
        except BaseException:
            self.stop(lab)
            raise

    def _make_segments(self, lab: Lab, inst: FrrInstance, vnis: Iterable[int]) -> dict[int, Segment]:
        """The standard FRR L2VNI devices: the same segments roamnet's agent makes (local VTEP, no
        learning and ARP suppression on the VXLAN port), in the server's namespace."""
        ipr = lab.netlink(inst.ns)
        return {vni: Segment(inst.ns, *ensure_segment(ipr, vni, inst.address)) for vni in vnis}

    def port_namespace(self, lab: Lab, vm: str, server: str, nic: int) -> str:
        """The namespace the hypervisor puts the VM's port `nic` on `server` in: the server's own (the
        L2VNI bridges are there)."""
        return lab.plan.nodes[server].ns

    # ---- readiness ------------------------------------------------------------------------------
    def _rr_sessions(self, rr: FrrInstance) -> dict[str, str]:
        """Peer -> BGP state, as the route reflector sees its l2vpn evpn sessions."""
        out = self.show(rr, "bgpd", "show bgp l2vpn evpn summary json")
        peers = out.get("peers") or out.get("l2VpnEvpn", {}).get("peers") or {}
        return {p: peers.get(p, {}).get("state", "Idle") for p in rr.peers}

    def _vtep_ready(self, lab: Lab, inst: FrrInstance, vnis: list[int], n_vteps: int) -> str | None:
        """None when zebra knows every VNI and the kernel floods each to every other VTEP; else why not."""
        if vnis:
            known = self.show(inst, "zebra", "show evpn vni json")
            missing = [v for v in vnis if str(v) not in known]
            if missing:
                return f"zebra does not know VNI {', '.join(map(str, missing))}"
        if n_vteps < 2 or not vnis:
            return None
        flood: dict[int, set[str]] = {}
        segs = self._segments[inst.ns]
        for ns in sorted({seg.ns for seg in segs.values()}):
            vx_to_vni = {seg.vxlan: vni for vni, seg in segs.items() if seg.ns == ns}
            for e in self._reader(ns).dump([ZERO_MAC]):
                if e.ifindex in vx_to_vni and e.mac == ZERO_MAC and e.dst:
                    flood.setdefault(vx_to_vni[e.ifindex], set()).add(e.dst)
        short = [v for v in vnis if v in segs and len(flood.get(v, ())) < n_vteps - 1]
        if short:
            return f"VNI {short[0]} floods to {len(flood.get(short[0], ()))} of {n_vteps - 1} other VTEPs"
        return None

    def _wait_ready(self, lab: Lab, vnis: list[int], progress: Callable[[str], None]) -> None:
        rr = next(i for i in self.instances if i.role == "rr")
        vteps = [i for i in self.instances if i.role == "vtep"]
        started = time.monotonic()
        deadline = started + self.ready_timeout
        sessions: dict[str, str] = {}
        pending: dict[str, str] = {i.ns: "not checked yet" for i in vteps}
        last_note, note_every = "", 2.0
        next_note = started + 1.0
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(vteps)))) as pool:
            for _ in range(int(self.ready_timeout / 0.1) + 10):  # bounded in count as well as in time
                self.check_alive()
                sessions = self._rr_sessions(rr)
                up = [p for p, s in sessions.items() if s == "Established"]
                if len(up) == len(sessions):
                    todo = [i for i in vteps if i.ns in pending]
                    results = list(pool.map(lambda i: self._vtep_ready(lab, i, vnis, len(vteps)), todo))
                    pending = {i.ns: why for i, why in zip(todo, results) if why is not None}
                note = (f"{self.name}: {len(up)}/{len(sessions)} BGP sessions established, "
                        f"{len(vteps) - len(pending)}/{len(vteps)} servers ready")
                if len(up) == len(sessions) and not pending:
                    progress(note + f" ({time.monotonic() - started:.1f} s)")
                    return
                now = time.monotonic()
                if now >= next_note and note != last_note:
                    progress(note)
                    last_note, next_note = note, now + note_every
                if now > deadline:
                    break
                time.sleep(0.1)
        down = {p: s for p, s in sessions.items() if s != "Established"}
        if down:
            peer, state = next(iter(down.items()))
            vtep = next((i for i in vteps if i.address == peer), None)
            proc = (self.proc(vtep, "bgpd") if vtep is not None else None) or self.proc(rr, "bgpd")
            raise self.failure(proc, f"BGP session {peer} <-> {rr.address} not Established after "
                                      f"{self.ready_timeout:.0f} s (state {state}; "
                                      f"{len(down)} of {len(sessions)} sessions down)")
        ns, why = next(iter(pending.items()))
        proc = next(p for p in self.processes() if p.daemon == "zebra" and p.inst.ns == ns)
        raise self.failure(proc, f"EVPN not ready after {self.ready_timeout:.0f} s: {why} "
                                  f"({len(pending)} of {len(vteps)} servers not ready)")

    # ---- ports and locations --------------------------------------------------------------------
    def attach_port(self, lab: Lab, vm: str, server: str) -> None:
        """Enslave the VM's ports on `server` to their segments' bridges (as libvirt does). The ports
        keep MAC learning on (FRR learns local MACs from the bridge); their state is the lab's."""
        interfaces = lab.topo.vms[vm].interfaces
        for i, members in enumerate(lab.topo.nics(vm)):
            ns = self.port_namespace(lab, vm, server, i)
            ipr = lab.netlink(ns)
            vni = lab.topo.cugs[interfaces[members[0]].cug].vni
            port, br = names.port(vm, i), names.bridge(vni)
            p_idx, b_idx = ipr.link_lookup(ifname=port), ipr.link_lookup(ifname=br)
            if not p_idx:
                raise EvpnError(f"{ns}: no port {port} for {vm}")
            if not b_idx:
                raise EvpnError(f"{ns}: no bridge {br} for VNI {vni} (was {self.name} started?)")
            ipr.link("set", index=p_idx[0], master=b_idx[0])

    def _reader(self, ns: str) -> FdbReader:
        with self._readers_lock:
            r = self._readers.get(ns)
            if r is None:
                r = self._readers[ns] = FdbReader(ns)
            return r

    def located(self, lab: Lab, vm: str, server: str) -> bool:
        """True when every other server's VXLAN FDB sends each MAC of `vm` to `server`'s VTEP, and only
        there (and its bridge, if it has the MAC, has it on the VXLAN port), and `server`'s bridge has
        each MAC on a local port. One FDB dump per server namespace, filtered in the kernel to the VM's
        bridge when the VM has a single segment; safe to poll from any thread."""
        nodes = lab.plan.nodes
        vtep = nodes[server].vtep
        macs = [(lab.topo.cugs[itf.cug].vni, itf.mac.lower()) for itf in lab.topo.vms[vm].interfaces]
        wanted = {mac for _, mac in macs}
        servers = [n for n in nodes.values() if n.kind == "server"]
        miss = self._last_miss.get((vm, server))  # while polling, the server that said no last time
        if miss is not None:  # says no again first: most calls then cost a single dump
            servers.sort(key=lambda n: n.name != miss)
        for node in servers:
            segs = self._segments.get(node.ns)
            if segs is None:
                return False
            entries: dict[str, list[FdbEntry]] = {}
            for ns in sorted({segs[vni].ns for vni, _ in macs}):
                bridges = {segs[vni].bridge for vni, _ in macs if segs[vni].ns == ns}
                entries[ns] = self._reader(ns).dump(wanted, master=next(iter(bridges)) if len(bridges) == 1 else None)
            for vni, mac in macs:
                seg_ns, br_idx, vx_idx = segs[vni]
                dsts, ports = set(), set()
                for e in entries[seg_ns]:
                    if e.mac != mac:
                        continue
                    if e.ifindex == vx_idx and e.dst and e.flags & NTF_SELF:
                        dsts.add(e.dst)
                    elif e.master == br_idx and not e.state & NUD_PERMANENT:
                        ports.add(e.ifindex)
                if (not ports or vx_idx in ports) if node.name == server else (dsts != {vtep} or ports - {vx_idx}):
                    self._last_miss[(vm, server)] = node.name
                    return False
        self._last_miss.pop((vm, server), None)
        return True

    # ---- stop -----------------------------------------------------------------------------------
    def stop(self, lab: Lab | None = None) -> list[str]:
        """End every FRR process this object started, by its own pid: bgpd first, then zebra; SIGTERM,
        SIGKILL after a bounded wait. Returns what it stopped, e.g. ["bgpd@rn-x-hv1", ...]."""
        with self._readers_lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()
        stopped = self.stop_processes()
        if not self.running():
            self._segments.clear()
            self.remove_workdir()
        return stopped
