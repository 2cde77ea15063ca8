"""FRR BGP-EVPN as the lab's other control plane: the baseline roamnet's migrations are measured against.

Same kernel data plane as roamnet (a bridge `br<vni>` and a VXLAN device `vx<vni>` per segment on
every server), but MACs are learned by the bridges from the VMs' frames and distributed by FRR:
zebra + bgpd in each server's namespace (`advertise-all-vni`, iBGP AS 65000) and a route reflector
(zebra + bgpd) in the WAN router's namespace. A VM that moves is learned by the destination's bridge
from its frames (QEMU's RARP announcements); zebra/bgpd advertise it (MAC mobility: sequence + 1 if
the old route is still known) and the other servers' zebra re-point their FDB entries at the new
VTEP. `located()` reads those kernel FDBs. The VMs' ports keep bridge learning on; the VXLAN ports
have it off (zebra installs remote MACs as extern_learn entries).

Each FRR instance lives in its own directory `<workdir>/<node>/` (config, pid file, vty and zserv
sockets, logs) and is started with explicit paths (`-f`, `-i`, `-z`, `--vty_socket`), so instances
never meet each other or a host FRR, and nothing is written under /etc/frr or /var/run/frr. Every
pid is journalled in `<workdir>/frr-pids.json` the moment its process exists; `kill_recorded`
ends them after a crash, by pid, after checking /proc/<pid>/cmdline names that daemon and that
instance directory. Daemons are only ever started inside lab namespaces (through nsenter).
"""

from __future__ import annotations

import grp
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, nlmsgerr
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from . import names, netns
from .agent import ensure_segment
from .labplan import WAN_NODE

if TYPE_CHECKING:
    from .lab import Lab

log = logging.getLogger(__name__)

FRR_BIN_DIR = Path("/usr/lib/frr")  # Debian's `frr` package
DAEMONS = ("zebra", "bgpd")  # start order; stopped in reverse
EVPN_ASN = 65000
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
JOURNAL = "frr-pids.json"
READY_TIMEOUT_S = 30.0
SOCKET_TIMEOUT_S = 10.0  # a daemon's vty/zserv sockets appear within this after its start
TERM_WAIT_S = 5.0  # SIGTERM -> SIGKILL after this
KILL_WAIT_S = 2.0
ZEBRA_NL_BUFSIZE = 16 * 1024 * 1024  # zebra's netlink receive buffer (-s; Debian's /etc/frr/daemons: 90 MB)
SUN_PATH_MAX = 107  # a unix socket path (sun_path is 108 bytes with its NUL)
VTY_GROUP = "frrvty"  # Debian's FRR is built with --enable-vty-group=frrvty
FRR_TMP = Path("/var/tmp/frr")  # FRR keeps per-process log buffers in <daemon>.<pid>/ here (removed at a
#                                 clean exit, left behind by SIGKILL)
AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
ZERO_MAC = "00:00:00:00:00:00"
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


class EvpnError(RuntimeError):
    pass


# ---------------------------------------------------------------- pure: who runs, with which config


@dataclass(frozen=True)
class FrrInstance:
    """One FRR instance (zebra + bgpd): a VTEP on a server, or the route reflector on the WAN router."""

    node: str
    ns: str
    role: str  # "vtep" | "rr"
    address: str  # router-id and BGP update-source: the VTEP address, or the RR's WAN address
    peers: tuple[str, ...]  # BGP neighbors: the RR for a VTEP, every VTEP for the RR

    def label(self, daemon: str) -> str:
        return f"{daemon}@{self.ns}"


def rr_address(plan: Any) -> str:
    """The route reflector's address: the WAN router's side of its link to the first data center."""
    wan_ends = [link.a_if.address for link in plan.links if link.a == WAN_NODE]
    wan_ends += [link.b_if.address for link in plan.links if link.b == WAN_NODE]
    if not wan_ends:
        raise EvpnError("the lab has no WAN router link to put the route reflector on")
    return str(ipaddress.ip_interface(wan_ends[0]).ip)


def plan_instances(plan: Any) -> list[FrrInstance]:
    """The FRR instances of a lab plan: every server (VTEP), then the route reflector on `wan`. Pure."""
    servers = [n for n in plan.nodes.values() if n.kind == "server"]
    rr = rr_address(plan)
    out = [FrrInstance(n.name, n.ns, "vtep", n.vtep, (rr,)) for n in servers]
    out.append(FrrInstance(WAN_NODE, plan.nodes[WAN_NODE].ns, "rr", rr, tuple(n.vtep for n in servers)))
    return out


def _check_lab_address(addr: str, what: str) -> str:
    if ipaddress.ip_address(addr) not in LAB_RANGE:
        raise ValueError(f"{what} {addr} is outside the lab range {LAB_RANGE}")
    return addr


def frr_config(daemon: str, inst: FrrInstance, *, log_file: str | None = None, asn: int = EVPN_ASN,
               keepalive: int = 3, holdtime: int = 9, connect_retry: int = 1, debug: bool = False) -> str:
    """The configuration file of `daemon` ("zebra" | "bgpd") of one instance. Pure.

    VTEPs: iBGP to the route reflector, only the l2vpn evpn family, `advertise-all-vni` (zebra finds
    the VNIs from the kernel's VXLAN devices; RD/RT are auto-derived: RT = AS:VNI). The RR reflects
    l2vpn evpn to all VTEPs. Fast timers: 3/9 s keepalive/hold, 1 s connect retry, advertisement
    interval (MRAI) 0. Duplicate address detection is off: the benchmark moves the same VM more than
    5 times in 180 s (FRR's default thresholds), which would flag it as a duplicate.
    """
    if daemon not in DAEMONS:
        raise ValueError(f"no configuration for daemon {daemon!r}")
    if inst.role not in ("vtep", "rr"):
        raise ValueError(f"unknown role {inst.role!r}")
    if not inst.peers:
        raise ValueError(f"{inst.node}: no BGP peers")
    _check_lab_address(inst.address, f"{inst.node}: address")
    for p in inst.peers:
        _check_lab_address(p, f"{inst.node}: peer")
    lines = [f"! {daemon} of {inst.node} ({inst.role}) in {inst.ns}, written by roamnet.evpn",
             f"hostname {inst.node}"]
    if log_file:
        lines.append(f"log file {log_file}{' debugging' if debug else ' informational'}")
    lines += ["log timestamp precision 3", "!"]
    if daemon == "zebra":
        if debug:
            lines += ["debug zebra vxlan", "debug zebra kernel", "!"]
        return "\n".join(lines + ["end", ""])
    if debug:
        lines += ["debug bgp zebra", "debug bgp updates", "debug bgp neighbor-events", "!"]
    group = "RR" if inst.role == "vtep" else "VTEPS"
    lines += [f"router bgp {asn}",
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
        lines += ["  advertise-all-vni", "  no dup-addr-detection"]
    lines += [" exit-address-family", "exit", "!", "end", ""]
    return "\n".join(lines)


def daemon_argv(bin_dir: Path, daemon: str, instdir: Path, user: str = "root", group: str = VTY_GROUP) -> list[str]:
    """The daemon's own argv (run inside the namespace through nsenter). Every path is explicit and
    inside `instdir`: config, pid file, zserv socket, vty socket directory (the log file is named in
    the config; what comes before it goes to stdout, kept in <daemon>.out); no TCP vty."""
    argv = [str(bin_dir / daemon), "-u", user, "-g", group,
            "-f", str(instdir / f"{daemon}.conf"), "-i", str(instdir / f"{daemon}.pid"),
            "-z", str(instdir / "zserv.api"), "--vty_socket", str(instdir), "-P", "0",
            "--log", "stdout", "--log-level", "warnings"]
    if daemon == "zebra":
        argv += ["-s", str(ZEBRA_NL_BUFSIZE)]
    return argv


def _run_group() -> str:
    # Debian's daemons drop to user `frr`, which could not use our 0700 root-owned workdir (nor act on
    # it without chowning things). They run as root instead: `-u root`. FRR then insists that the user
    # is a member of its vty group (`-u root -g root` fails: "user(root) is not part of vty group
    # specified(frrvty)"), and adding root to frrvty would change the host; naming frrvty as the
    # group (`-g frrvty`) passes that check with no change to the host. The daemons keep uid 0 and
    # only the capabilities FRR asks for, inside a throwaway lab namespace.
    try:
        grp.getgrnam(VTY_GROUP)
        return VTY_GROUP
    except KeyError:  # an FRR build without a vty group
        return "root"


# ---------------------------------------------------------------- the pid journal


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_journal(workdir: Path) -> list[dict]:
    try:
        return list(json.loads((Path(workdir) / JOURNAL).read_text())["processes"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvpnError(f"unreadable pid journal {Path(workdir) / JOURNAL}: {exc}") from None


def _cmdline(pid: int) -> list[str] | None:
    """argv of a live process, None if gone (or a zombie: empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return argv or None


def is_instance_process(pid: int, daemon: str, instdir: str) -> bool:
    """True if pid is FRR's `daemon` of the instance in `instdir` (its own argv, or nsenter about to exec it)."""
    argv = _cmdline(pid)
    if not argv:
        return False
    if os.path.basename(argv[0]) == "nsenter" and "--" in argv:  # between fork and exec
        argv = argv[argv.index("--") + 1:]
    if not argv or os.path.basename(argv[0]) != daemon:
        return False
    return any(a == "--vty_socket" and b == instdir for a, b in zip(argv, argv[1:]))


def _wait_gone(check: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        if not check():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return not check()


def kill_recorded(workdir: Path) -> list[str]:
    """Crash clean-up: end the FRR processes the pid journal in `workdir` records, by pid, each only
    after /proc/<pid>/cmdline shows it is that daemon of that instance (never by name pattern).
    SIGTERM, then SIGKILL after a bounded wait. Returns what it ended, e.g. "bgpd@rn-x-hv1 (pid 42)"."""
    workdir = Path(workdir)
    entries = read_journal(workdir)
    live = [e for e in entries if is_instance_process(int(e["pid"]), e["daemon"], e["instdir"])]
    ended = []
    for daemon in reversed(DAEMONS):
        group = [e for e in live if e["daemon"] == daemon]
        for e in group:
            if is_instance_process(int(e["pid"]), daemon, e["instdir"]):  # verified right before the signal
                with _ignore_gone():
                    os.kill(int(e["pid"]), signal.SIGTERM)
        for e in group:
            pid, inst = int(e["pid"]), e["instdir"]
            if not _wait_gone(lambda: is_instance_process(pid, daemon, inst), TERM_WAIT_S):
                if is_instance_process(pid, daemon, inst):  # checked again: the pid is still that daemon
                    with _ignore_gone():
                        os.kill(pid, signal.SIGKILL)
                    if _wait_gone(lambda: is_instance_process(pid, daemon, inst), KILL_WAIT_S):
                        _drop_log_buffers(daemon, pid)
            ended.append(f"{e['label']} (pid {pid})")
    if (workdir / JOURNAL).exists():
        for e in entries:
            e["running"] = is_instance_process(int(e["pid"]), e["daemon"], e["instdir"])
        _write_json(workdir / JOURNAL, {"processes": entries})
    return ended


def _drop_log_buffers(daemon: str, pid: int) -> None:
    """After `daemon` (pid) was killed: remove the log-buffer directory FRR leaves for exactly that process."""
    d = FRR_TMP / f"{daemon}.{pid}"
    if d.is_dir() and not d.is_symlink():
        shutil.rmtree(d, ignore_errors=True)


class _ignore_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is ProcessLookupError


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
            req["family"] = AF_BRIDGE
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


def _sockets(instdir: Path, daemon: str) -> tuple[Path, ...]:
    return (instdir / f"{daemon}.vty", instdir / "zserv.api") if daemon == "zebra" else (instdir / f"{daemon}.vty",)


@dataclass
class _Proc:
    inst: FrrInstance
    daemon: str
    popen: subprocess.Popen
    instdir: Path
    argv: list[str]
    started_at: float  # time.time()

    @property
    def label(self) -> str:
        return self.inst.label(self.daemon)


class FrrEvpn:
    """FRR BGP-EVPN as the lab's control plane (see the module's docstring).

    workdir: configs, sockets, pid files, logs and the pid journal; default /run/roamnet/<lab>/frr
    (0700, removed by stop() when start() created it, unless keep_workdir). frr_bin_dir: where zebra
    and bgpd are. debug: FRR's EVPN/zebra/BGP update debugging into the daemons' logs."""

    name = "frr-evpn"

    def __init__(self, workdir: Path | None = None, frr_bin_dir: Path | str = FRR_BIN_DIR,
                 vtysh: str | None = None, ready_timeout: float = READY_TIMEOUT_S, debug: bool = False,
                 keep_workdir: bool = False):
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.workdir = self._workdir_arg  # the default is known once start() knows the lab's name
        self._own_workdir: list[Path] = []  # directories start() created, removed by stop() unless kept
        self.bin_dir = Path(frr_bin_dir)
        self.vtysh_bin = vtysh or shutil.which("vtysh") or "/usr/bin/vtysh"
        self.ready_timeout = ready_timeout
        self.debug = debug
        self.keep_workdir = keep_workdir
        self.instances: list[FrrInstance] = []
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        # for located(): per server namespace, VNI -> (bridge ifindex, vxlan ifindex), and the readers
        self._segments: dict[str, dict[int, tuple[int, int]]] = {}
        self._readers: dict[str, FdbReader] = {}
        self._readers_lock = threading.Lock()
        self._last_miss: dict[tuple[str, str], str] = {}

    # ---- paths -----------------------------------------------------------------------------------
    def _prepare_workdir(self, lab: Lab) -> Path:
        self.workdir = self._workdir_arg or Path("/run/roamnet") / lab.name / "frr"
        self._own_workdir = []
        missing = []
        p = self.workdir
        for _ in range(64):  # bounded walk up to an existing ancestor
            if p.exists():
                break
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=0o700)
            self._own_workdir.append(d)
        os.chmod(self.workdir, 0o700)
        return self.workdir

    def instdir(self, inst: FrrInstance) -> Path:
        assert self.workdir is not None
        return self.workdir / inst.node

    def journal_path(self) -> Path | None:
        return self.workdir / JOURNAL if self.workdir else None

    # ---- start ----------------------------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        """After the lab's underlay exists, before VMs are plugged: segment devices on every server,
        zebra + bgpd in every server's namespace and on `wan` (the RR), then wait (bounded by
        `ready_timeout`) until every BGP session is Established, every server's zebra knows every VNI
        and its kernel floods each VNI to every other VTEP. On any failure: stops what it started and
        raises EvpnError naming the instance ("bgpd in rn-<lab>-hv1: ...") with the tail of its log."""
        if self.running():
            raise EvpnError(f"{self.name} is already running ({', '.join(self.running())})")
        self._procs = []
        progress = getattr(lab, "progress", None) or (lambda msg: None)
        try:
            workdir = self._prepare_workdir(lab)
            leftovers = [e["label"] for e in read_journal(workdir)
                         if is_instance_process(int(e["pid"]), e["daemon"], e["instdir"])]
            if leftovers:
                raise EvpnError(f"FRR processes of an earlier run are still alive ({', '.join(leftovers)}); "
                                f"end them with roamnet.evpn.kill_recorded({str(workdir)!r})")
            _write_json(workdir / JOURNAL, {"processes": []})
            self.instances = plan_instances(lab.plan)
            vnis = sorted({c.vni for c in lab.topo.cugs.values()})
            self._check_paths()
            group = _run_group()
            progress(f"{self.name}: VXLAN segments {', '.join(map(str, vnis)) or '-'} on "
                     f"{sum(i.role == 'vtep' for i in self.instances)} servers")
            for inst in self.instances:
                if inst.role == "vtep":
                    self._segments[inst.ns] = self._make_segments(lab, inst, vnis)
            for inst in self.instances:
                d = self.instdir(inst)
                d.mkdir(mode=0o700, exist_ok=True)
                for daemon in DAEMONS:
                    (d / f"{daemon}.conf").write_text(
                        frr_config(daemon, inst, log_file=str(d / f"{daemon}.log"), debug=self.debug))
            for daemon in DAEMONS:  # every zebra listens before any bgpd starts (bgpd would retry, later)
                progress(f"{self.name}: starting {daemon} in {len(self.instances)} namespaces")
                for inst in self.instances:
                    self._spawn(inst, daemon, group)
                self._wait_sockets(daemon)
            self._wait_ready(lab, vnis, progress)
        except BaseException:
            self.stop(lab)
            raise

    def _check_paths(self) -> None:
        for inst in self.instances:
            longest = str(self.instdir(inst) / "zserv.api")
            if len(longest) > SUN_PATH_MAX:
                raise EvpnError(f"workdir {self.workdir} is too long for FRR's unix sockets "
                                f"({longest!r} has {len(longest)} > {SUN_PATH_MAX} characters)")

    @staticmethod
    def _make_segments(lab: Lab, inst: FrrInstance, vnis: Iterable[int]) -> dict[int, tuple[int, int]]:
        """The standard FRR L2VNI devices: the same segments roamnet's agent makes (local VTEP, no
        learning on the VXLAN port; neigh_suppress stays off, the kernel's default)."""
        ipr = lab._nl(inst.ns)
        return {vni: ensure_segment(ipr, vni, inst.address) for vni in vnis}

    def _spawn(self, inst: FrrInstance, daemon: str, group: str) -> None:
        d = self.instdir(inst)
        binary = self.bin_dir / daemon
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise EvpnError(f"{daemon} in {inst.ns}: no executable {binary} (is FRR installed? "
                            f"Debian: apt-get install frr)")
        argv = daemon_argv(self.bin_dir, daemon, d, group=group)
        for f in (*_sockets(d, daemon), d / f"{daemon}.pid"):  # a crashed run's: would look like ours
            f.unlink(missing_ok=True)
        with open(d / f"{daemon}.out", "ab") as out:
            popen = subprocess.Popen(netns.command(inst.ns, argv), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = _Proc(inst, daemon, popen, d, argv, time.time())
        with self._lock:
            self._procs.append(proc)
        self._write_journal()  # at once: a crash from here on still knows this pid
        log.info("started %s (pid %d): %s", proc.label, popen.pid, " ".join(argv))

    def running(self) -> list[str]:
        """Labels of the processes this object started that have not been seen to end."""
        with self._lock:
            return [p.label for p in self._procs if p.popen.poll() is None]

    def _write_journal(self) -> None:
        """Every process this object started, with whether it still runs (`running`)."""
        path = self.journal_path()
        if path is None:
            return
        with self._lock:
            rows = [{"label": p.label, "daemon": p.daemon, "node": p.inst.node, "ns": p.inst.ns,
                     "instdir": str(p.instdir), "pid": p.popen.pid, "argv": p.argv, "started_at": p.started_at,
                     "running": p.popen.returncode is None, "returncode": p.popen.returncode}
                    for p in self._procs]
        with self._journal_lock:
            _write_json(path, {"processes": rows})

    def log_tail(self, proc: _Proc, lines: int = 15) -> str:
        text = []
        for f in (proc.instdir / f"{proc.daemon}.out", proc.instdir / f"{proc.daemon}.log"):
            try:
                text += f.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n    ".join(text[-lines:]) or "(no log)"

    def _failure(self, proc: _Proc, what: str) -> EvpnError:
        return EvpnError(f"{proc.daemon} in {proc.inst.ns}: {what}; log tail:\n    {self.log_tail(proc)}")

    def _check_alive(self) -> None:
        for p in self._procs:
            rc = p.popen.poll()
            if rc is not None:
                raise self._failure(p, f"exited with status {rc}")

    def _wait_sockets(self, daemon: str) -> None:
        """Until every `daemon` listens on its vty socket (zebra: and its zserv socket); then check that
        FRR accepted the configuration (a rejected line is a bug of frr_config, not a lab state)."""
        procs = [p for p in self._procs if p.daemon == daemon]
        deadline, step = time.monotonic() + SOCKET_TIMEOUT_S, 0.02
        for _ in range(int(SOCKET_TIMEOUT_S / step) + 1):
            self._check_alive()
            waiting = [p for p in procs if not all(f.exists() for f in _sockets(p.instdir, daemon))]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise self._failure(waiting[0], f"no vty socket after {SOCKET_TIMEOUT_S:.0f} s")
            time.sleep(step)
        else:
            raise self._failure(procs[0], f"no vty socket after {SOCKET_TIMEOUT_S:.0f} s")
        # The vty socket exists before the configuration is read: FRR reads it in the first event of
        # its loop, before it serves any vty client. So once a daemon answered vtysh, it has read it.
        with ThreadPoolExecutor(max_workers=min(16, len(procs))) as pool:
            list(pool.map(lambda p: self.vtysh(p.inst, daemon, "show version"), procs))
        for p in procs:
            bad = [ln.strip() for ln in self._log_text(p).splitlines()
                   if "No such command" in ln or "Error occurred during reading" in ln]
            if bad:
                raise self._failure(p, "configuration rejected: " + bad[0])

    @staticmethod
    def _log_text(p: _Proc) -> str:
        text = ""
        for f in (p.instdir / f"{p.daemon}.out", p.instdir / f"{p.daemon}.log"):
            try:
                text += f.read_text(errors="replace")
            except OSError:
                pass
        return text

    # ---- readiness ------------------------------------------------------------------------------
    def show(self, inst: FrrInstance, daemon: str, command: str, timeout: float = 5.0) -> Any:
        """`vtysh -c COMMAND` (a JSON show command) against one instance's daemon; parsed."""
        out = self.vtysh(inst, daemon, command, timeout)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError:
            raise EvpnError(f"{daemon} in {inst.ns}: `{command}` gave no JSON: {out[-300:]!r}") from None

    def vtysh(self, inst: FrrInstance, daemon: str, command: str, timeout: float = 5.0) -> str:
        """The output of `vtysh -c COMMAND` against one instance's daemon (reading state only)."""
        argv = [self.vtysh_bin, "--vty_socket", str(self.instdir(inst)), "-d", daemon, "-c", command]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EvpnError(f"{daemon} in {inst.ns}: `{command}` did not answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise EvpnError(f"{daemon} in {inst.ns}: cannot run {self.vtysh_bin}: {exc}") from None
        if p.returncode != 0:
            raise EvpnError(f"{daemon} in {inst.ns}: `{command}` failed ({p.returncode}): "
                            f"{(p.stderr or p.stdout).strip()[-300:]}")
        return p.stdout

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
        vx_to_vni = {vx: vni for vni, (_, vx) in self._segments[inst.ns].items()}
        for e in self._reader(inst.ns).dump([ZERO_MAC]):
            if e.ifindex in vx_to_vni and e.mac == ZERO_MAC and e.dst:
                flood.setdefault(vx_to_vni[e.ifindex], set()).add(e.dst)
        short = [v for v in vnis if len(flood.get(v, ())) < n_vteps - 1]
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
                self._check_alive()
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
            proc = next((p for p in self._procs if p.daemon == "bgpd" and p.inst is vtep), None)
            proc = proc or next(p for p in self._procs if p.daemon == "bgpd" and p.inst is rr)
            raise self._failure(proc, f"BGP session {peer} <-> {rr.address} not Established after "
                                      f"{self.ready_timeout:.0f} s (state {state}; "
                                      f"{len(down)} of {len(sessions)} sessions down)")
        ns, why = next(iter(pending.items()))
        proc = next(p for p in self._procs if p.daemon == "zebra" and p.inst.ns == ns)
        raise self._failure(proc, f"EVPN not ready after {self.ready_timeout:.0f} s: {why} "
                                  f"({len(pending)} of {len(vteps)} servers not ready)")

    # ---- ports and locations --------------------------------------------------------------------
    def attach_port(self, lab: Lab, vm: str, server: str) -> None:
        """Enslave the VM's ports on `server` to their segments' bridges (as libvirt does). The ports
        keep MAC learning on (FRR learns local MACs from the bridge); their state is the lab's."""
        node = lab.plan.nodes[server]
        ipr = lab._nl(node.ns)
        for i, itf in enumerate(lab.topo.vms[vm].interfaces):
            vni = lab.topo.cugs[itf.cug].vni
            port, br = names.port(vm, i), names.bridge(vni)
            p_idx, b_idx = ipr.link_lookup(ifname=port), ipr.link_lookup(ifname=br)
            if not p_idx:
                raise EvpnError(f"{node.ns}: no port {port} for {vm}")
            if not b_idx:
                raise EvpnError(f"{node.ns}: no bridge {br} for VNI {vni} (was {self.name} started?)")
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
            bridges = {segs[vni][0] for vni, _ in macs}
            entries = self._reader(node.ns).dump(wanted, master=next(iter(bridges)) if len(bridges) == 1 else None)
            for vni, mac in macs:
                br_idx, vx_idx = segs[vni]
                dsts, ports = set(), set()
                for e in entries:
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
        stopped = []
        with self._readers_lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()
        for daemon in reversed(DAEMONS):
            with self._lock:
                group = [p for p in self._procs if p.daemon == daemon]
            running = [p for p in group if p.popen.poll() is None]
            for p in running:
                with _ignore_gone():
                    p.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + TERM_WAIT_S
            for p in running:
                try:
                    p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", p.label, p.popen.pid,
                                TERM_WAIT_S)
                    p.popen.kill()
                    try:
                        p.popen.wait(timeout=KILL_WAIT_S)
                    except subprocess.TimeoutExpired:
                        log.error("%s (pid %d) survived SIGKILL", p.label, p.popen.pid)
                        continue
                    _drop_log_buffers(p.daemon, p.popen.pid)
                stopped.append(p.label)
            self._write_journal()
        if not self.running():
            self._segments.clear()
            self._remove_workdir()
        return stopped

    def _remove_workdir(self) -> None:
        """Remove the workdir if start() created it (never one that existed before), unless kept; then
        the parents start() created, each only if empty (/run/roamnet/<lab> may hold other state)."""
        if self.keep_workdir or not self._own_workdir:
            return
        if self._own_workdir[-1] == self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        for d in reversed(self._own_workdir[:-1]):
            try:
                d.rmdir()
            except OSError:  # not empty: someone else's files
                break
        self._own_workdir.clear()
