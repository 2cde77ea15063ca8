"""OVN as the lab's other control plane: the second baseline roamnet's migrations are measured against.

Open vSwitch's userspace (`netdev`) datapath, not the kernel's: this machine's kernel has no
openvswitch module (roamnet and FRR-EVPN forward in the kernel; say so wherever numbers are compared).

Per chassis (every lab server's namespace), in `<workdir>/<server>/` (its run, db and log directory):
  ovsdb-server (conf.db), ovs-vswitchd and ovn-controller, started with that directory as OVS_RUNDIR and
  OVN_RUNDIR. `br-phy` (netdev) holds the server's underlay link and takes over its underlay address and
  route (OVS's userspace tunnels route and ARP through it); `br-int` (netdev, fail_mode=secure) is
  OVN's integration bridge, Geneve to every other chassis (encap IP = the server's VTEP address).
Central, in a namespace of its own (`names.ovn_central_netns`, created and journaled by the lab) and
  `<workdir>/central/`: the NB and SB ovsdb-servers and ovn-northd, reached over unix sockets only.
Logical network: a logical switch per CUG (`ls-<cug>`), a logical switch port per VM interface, named
  by its interface id ("vm1/0"), with its MAC and IP as addresses and `requested-chassis` = its server.
  VM ports join br-int with external_ids:iface-id (as libvirt/Nova plug them).

Moves (`strategy`, chosen when the control plane is made; see `move_options`; `lab.moves.Steered` calls
the `move_*` hooks around the hypervisor's actions):
  classic            the destination port exists before the stop; when the VM resumed there, the
                     orchestrator re-points requested-chassis at it (OpenStack's binding update);
  multichassis-rarp  requested-chassis=src,dst before the stop, activation-strategy=rarp: the
                     destination's copy of the port passes traffic once the VM's RARP reached it;
  multichassis       the same without activation: both copies pass traffic from the start;
  after a move: requested-chassis=dst alone, the source's port removed.

Convergence: `delivering` (the destination's copy of the port passes traffic) and `programmed_everywhere`
(every chassis has processed the Southbound database as it was then: NB_Global.nb_cfg bumped, every
Chassis_Private.nb_cfg caught up, which ovn-controller reports once the flows are in Open vSwitch).

The userspace datapath forwards the ports of this lab (veths, read through packet sockets) in
ovs-vswitchd's main thread, which runs its whole main loop per wake-up. On a loaded machine that thread
waits for a CPU and the kernel drops what no longer fits in the packet sockets' receive buffers
(`datapath_counters` reads those drops and the thread's run-queue wait); `datapath_rt` runs that thread
under SCHED_RR, as the kernel's datapath runs in softirq ahead of every task.

Every process is recorded in `<workdir>/ovn-pids.json` the moment it exists and stopped by its own pid
(`kill_recorded` after a crash, after /proc/<pid>/cmdline shows that daemon with its pid file in that
workdir). Errors name the daemon and its namespace and show the tail of its log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from roamnet import names
from roamnet.dataplane import netns
from roamnet.wan.frr import check_lab_address, ignore_gone, wait_gone, write_json

log = logging.getLogger(__name__)

STRATEGIES = ("classic", "multichassis-rarp", "multichassis")
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")  # Debian's openvswitch-common
NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")  # Debian's ovn-common
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")
JOURNAL = "ovn-pids.json"
CENTRAL = "central"  # the central daemons' directory in the workdir
UPLINK = "uplink"  # a server's underlay link (lab/plan.py)
SOCKET_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0
TERM_WAIT_S = 5.0
KILL_WAIT_S = 2.0
CLI_TIMEOUT_S = 15.0
SUN_PATH_MAX = 107
# what each role runs, in start order; stopped in the reverse order
ROLES = ("nb", "sb", "northd", "ovsdb", "vswitchd", "controller")
BINARY = {"nb": "ovsdb-server", "sb": "ovsdb-server", "northd": "ovn-northd", "ovsdb": "ovsdb-server",
          "vswitchd": "ovs-vswitchd", "controller": "ovn-controller"}


class OvnError(RuntimeError):
    """An OVN or OVS daemon or command failed (the message names it and its namespace)."""


class Lab(Protocol):
    """What this control plane needs of the lab it runs in."""

    name: str
    plan: Any  # roamnet.lab.plan.LabPlan
    topo: Any  # roamnet.intent.model.Topology
    hv: Any  # roamnet.lab.hypervisor.Hypervisor (its VMs' uplink names)

    def netlink(self, ns: str) -> Any: ...
    def add_namespace(self, ns: str) -> None: ...


# ---------------------------------------------------------------- pure: who runs where, with what


@dataclass(frozen=True)
class Chassis:
    """One lab server as an OVN chassis."""

    node: str  # the server, also the chassis name (system-id)
    ns: str
    vtep: str  # Geneve encap IP: the server's underlay address
    prefixlen: int
    routes: tuple[tuple[str, str], ...]  # (destination, gateway) of the server's underlay routes


def plan_chassis(plan: Any) -> list[Chassis]:
    """Every server of a lab plan as a chassis (servers behind a ToR have no underlay of their own:
    ValueError). Pure."""
    out = []
    for n in plan.nodes.values():
        if n.kind != "server":
            continue
        if n.tor:
            raise ValueError(f"{n.name} is behind ToR {n.tor}: the OVN baseline needs servers with their own "
                             "underlay address")
        link = next((lk for lk in plan.links if lk.b == n.name and lk.b_if.name == UPLINK), None)
        if link is None:
            raise ValueError(f"{n.name}: no underlay link {UPLINK!r} in the lab plan")
        addr, plen = link.b_if.address.split("/")
        check_lab_address(addr, f"{n.name}: underlay address")
        routes = tuple((r.dst, r.gateway) for r in n.routes if r.gateway)
        for _, gw in routes:
            check_lab_address(gw, f"{n.name}: underlay gateway")
        out.append(Chassis(n.name, n.ns, addr, int(plen), routes))
    return out


def switch_name(cug: str) -> str:
    return f"ls-{cug}"


def logical_ports(topo: Any) -> list[tuple[str, str, str, str, str]]:
    """(logical switch, port name = interface id, MAC, IP, server) of every VM interface. Pure."""
    out = []
    for vm, spec in topo.vms.items():
        for i, itf in enumerate(spec.interfaces):
            if itf.vlan:
                raise ValueError(f"vms.{vm}.interfaces[{i}]: guest VLAN tags are not modelled by the OVN baseline")
            out.append((switch_name(itf.cug), names.iface_id(vm, i), itf.mac.lower(), str(itf.ip), spec.server))
    return out


def nb_commands(topo: Any) -> list[str]:
    """One ovn-nbctl transaction (arguments joined by `--`) creating the logical network. Pure."""
    args: list[str] = []
    for cug in topo.cugs:
        args += ["--", "ls-add", switch_name(cug)]
    for ls, lsp, mac, ip, server in logical_ports(topo):
        args += ["--", "lsp-add", ls, lsp, "--", "lsp-set-addresses", lsp, f"{mac} {ip}",
                 "--", "set", "Logical_Switch_Port", lsp, f"options:requested-chassis={server}"]
    return args[1:]


def move_options(strategy: str, phase: str, src: str, dst: str) -> tuple[dict[str, str], list[str]]:
    """(options to set, options to remove) on a moving VM's logical ports at `phase` of a move. Pure.

    phases: "ready" (before the VM stops), "resumed" (it runs on dst), "finish" (the move is over)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown OVN move strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    if phase == "ready":
        if strategy == "classic":
            return {}, []
        opts = {"requested-chassis": f"{src},{dst}"}
        if strategy == "multichassis-rarp":
            opts["activation-strategy"] = "rarp"
        return opts, []
    if phase == "resumed":
        return ({"requested-chassis": dst}, []) if strategy == "classic" else ({}, [])
    if phase == "finish":
        return {"requested-chassis": dst}, (["activation-strategy"] if strategy == "multichassis-rarp" else [])
    raise ValueError(f"unknown move phase {phase!r}")


def set_options_args(ports: Iterable[str], opts: dict[str, str], remove: Sequence[str]) -> list[str]:
    """ovn-nbctl arguments that set `opts` and remove `remove` on every port, in one transaction. Pure."""
    args: list[str] = []
    for lsp in ports:
        if opts:
            args += ["--", "set", "Logical_Switch_Port", lsp, *[f"options:{k}={v}" for k, v in opts.items()]]
        for k in remove:
            args += ["--", "remove", "Logical_Switch_Port", lsp, "options", k]
    return args[1:]


def daemon_argv(role: str, d: Path, central: Path | None = None) -> list[str]:
    """The daemon's own argv (run in its namespace through nsenter): every path explicit and in `d`
    (its directory); `central` is the central directory (NB/SB sockets). Pure."""
    common = [f"--pidfile={d / role}.pid", f"--log-file={d / role}.log", "--no-chdir", "-vconsole:off"]
    if role in ("nb", "sb", "ovsdb"):
        db = {"nb": "nb.db", "sb": "sb.db", "ovsdb": "conf.db"}[role]
        return [BINARY[role], str(d / db), f"--remote=punix:{d / role}.sock", f"--unixctl={d / role}.ctl", *common]
    if role == "northd":
        assert central is not None
        return [BINARY[role], f"--ovnnb-db=unix:{central / 'nb.sock'}", f"--ovnsb-db=unix:{central / 'sb.sock'}",
                f"--unixctl={d / role}.ctl", *common]
    if role == "vswitchd":
        return [BINARY[role], f"unix:{d / 'ovsdb.sock'}", f"--unixctl={d / role}.ctl", *common]
    if role == "controller":  # 23.03 has no --unixctl: its control socket goes to OVN_RUNDIR
        return [BINARY[role], f"unix:{d / 'ovsdb.sock'}", *common]
    raise ValueError(f"unknown OVN role {role!r}")


def daemon_env(d: Path) -> dict[str, str]:
    """The environment of a daemon or CLI of the instance in `d`: every default directory is `d` (so
    nothing reaches /var/run/openvswitch, /var/run/ovn, /etc/openvswitch or /var/log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVS_", "OVN_"))}
    for prefix in ("OVS", "OVN"):
        for what in ("RUNDIR", "DBDIR", "LOGDIR", "SYSCONFDIR"):
            env[f"{prefix}_{what}"] = str(d)
    return env


# ---------------------------------------------------------------- the pid journal


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None


def is_recorded_process(pid: int, binary: str, pidfile: str) -> bool:
    """True if pid runs `binary` with `--pidfile=<pidfile>` (or is nsenter about to exec it)."""
    argv = _cmdline(pid)
    if not argv:
        return False
    if os.path.basename(argv[0]) == "nsenter" and "--" in argv:
        argv = argv[argv.index("--") + 1:]
    return bool(argv) and os.path.basename(argv[0]) == binary and f"--pidfile={pidfile}" in argv


def read_journal(workdir: Path) -> list[dict]:
    """The processes the pid journal in `workdir` records ([] if there is none)."""
    path = Path(workdir) / JOURNAL
    try:
        return list(json.loads(path.read_text())["processes"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OvnError(f"unreadable pid journal {path}: {exc}") from None


def kill_recorded(workdir: Path) -> list[str]:
    """Crash clean-up: end the OVN/OVS processes the pid journal in `workdir` records, by pid, each only
    after /proc/<pid>/cmdline shows it is that daemon with that pid file (never by name pattern).
    SIGTERM, SIGKILL after a bounded wait. Returns what it ended. No journal: []."""
    entries = read_journal(workdir)
    ended = []
    for role in reversed(ROLES):
        group = [e for e in entries if e["role"] == role and is_recorded_process(int(e["pid"]), e["binary"],
                                                                                 e["pidfile"])]
        for e in group:
            with ignore_gone():
                os.kill(int(e["pid"]), signal.SIGTERM)
        for e in group:
            pid, binary, pidfile = int(e["pid"]), e["binary"], e["pidfile"]
            if not wait_gone(lambda: is_recorded_process(pid, binary, pidfile), TERM_WAIT_S):
                if is_recorded_process(pid, binary, pidfile):
                    with ignore_gone():
                        os.kill(pid, signal.SIGKILL)
                    wait_gone(lambda: is_recorded_process(pid, binary, pidfile), KILL_WAIT_S)
            ended.append(f"{e['label']} (pid {pid})")
    return ended


# ---------------------------------------------------------------- OVSDB over its unix socket


class Ovsdb:
    """A JSON-RPC connection to one ovsdb-server's unix socket (RFC 7047 `transact`), for the cheap
    reads that polling needs (an ovn-sbctl process costs ~10 ms). Thread-safe; reconnects once."""

    def __init__(self, path: Path, db: str, timeout: float = 2.0):
        self.path, self.db, self.timeout = path, db, timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0
        self._lock = threading.Lock()
        self._dec = json.JSONDecoder()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def select(self, table: str, where: list, columns: list[str]) -> list[dict]:
        return self.transact({"op": "select", "table": table, "where": where, "columns": columns})[0]["rows"]

    def transact(self, *ops: dict) -> list[dict]:
        with self._lock:
            for attempt in (0, 1):
                try:
                    return self._transact(ops)
                except OSError:
                    if self._sock is not None:
                        self._sock.close()
                    self._sock, self._buf = None, b""
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def _transact(self, ops: Sequence[dict]) -> list[dict]:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(str(self.path))
            self._sock = s
        self._id += 1
        self._sock.sendall(json.dumps({"method": "transact", "params": [self.db, *ops], "id": self._id}).encode())
        for _ in range(1000):  # bounded: the reply comes after at most a few echo requests
            msg = self._next()
            if msg.get("method") == "echo":
                self._sock.sendall(json.dumps({"result": msg.get("params"), "error": None,
                                               "id": msg.get("id")}).encode())
                continue
            if msg.get("id") != self._id:
                continue
            if msg.get("error"):
                raise OvnError(f"{self.path}: {msg['error']}")
            result = msg["result"]
            bad = [r for r in result if isinstance(r, dict) and r.get("error")]
            if bad:
                raise OvnError(f"{self.path}: {bad[0]['error']}: {bad[0].get('details', '')}")
            return result
        raise OvnError(f"{self.path}: no reply")

    def _next(self) -> dict:
        assert self._sock is not None
        for _ in range(10000):
            text = self._buf.lstrip()
            if text:
                try:
                    obj, end = self._dec.raw_decode(text.decode())
                    self._buf = text.decode()[end:].encode()
                    return obj
                except ValueError:
                    pass
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError(f"{self.path}: closed")
            self._buf += chunk
        raise OvnError(f"{self.path}: message too long")


def ovsdb_set(value: Any) -> list:
    """The members of an OVSDB set column (a single atom or ["set", [...]])."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def ovsdb_map(value: Any) -> dict:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}


def packet_socket_drops(ss_text: str, pid: int) -> dict[str, int]:
    """Interface -> frames dropped by the packet sockets process `pid` holds, from `ss -0 -m -n -p`
    (skmem's `d<N>`: the kernel found the socket's receive buffer full); "*" for a socket bound to no
    interface. Lines ss wraps (skmem on a line of its own) are joined first. Pure."""
    rows: list[str] = []
    for line in ss_text.splitlines():
        if line[:1].isspace() and rows:
            rows[-1] += " " + line.strip()
        elif line.strip():
            rows.append(line.strip())
    out: dict[str, int] = {}
    for row in rows:
        if f"pid={pid}," not in row or "skmem:(" not in row:
            continue
        fields = row.split()
        local = fields[3] if len(fields) > 3 else ""  # Netid Recv-Q Send-Q Local Peer ...
        iface = local.rsplit(":", 1)[-1] if ":" in local else local
        mem = row.split("skmem:(", 1)[1].split(")", 1)[0]
        drops = next((int(f[1:]) for f in mem.split(",") if f[:1] == "d" and f[1:].isdigit()), 0)
        out[iface] = out.get(iface, 0) + drops
    return out


def thread_schedstat(pid: int, tid: int | None = None) -> tuple[float, float] | None:
    """(CPU ms, ms waited on a run queue) of thread `tid` (default: the main thread) of `pid` so far,
    from /proc/<pid>/task/<tid>/schedstat; None when it is gone."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()[:3]
    except (OSError, ValueError):
        return None
    return int(run_ns) / 1e6, int(wait_ns) / 1e6


def counters_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What `Ovn.datapath_counters` counted between two readings: per chassis (those read both times,
    without error) the socket drops per port, CPU and run-queue wait (ms); and the totals over
    chassis (`socket_drops`, `cpu_ms`, `runq_wait_ms`). Pure."""
    chassis: dict[str, dict[str, Any]] = {}
    for node in sorted(set(before) & set(after)):
        b, a = before[node], after[node]
        if "error" in b or "error" in a:
            chassis[node] = {"error": a.get("error") or b.get("error")}
            continue
        drops = {i: n - b.get("socket_drops", {}).get(i, 0) for i, n in a.get("socket_drops", {}).items()}
        row: dict[str, Any] = {"socket_drops": {i: n for i, n in drops.items() if n}}
        for k in ("cpu_ms", "runq_wait_ms"):
            if k in a and k in b:
                row[k] = round(a[k] - b[k], 1)
        chassis[node] = row
    ok = [r for r in chassis.values() if "error" not in r]
    return {"chassis": chassis, "socket_drops": sum(sum(r["socket_drops"].values()) for r in ok),
            "cpu_ms": round(sum(r.get("cpu_ms", 0.0) for r in ok), 1),
            "runq_wait_ms": round(sum(r.get("runq_wait_ms", 0.0) for r in ok), 1)}


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    role: str
    ns: str
    node: str  # the chassis, or "central"
    dir: Path
    popen: subprocess.Popen
    argv: list[str]

    @property
    def binary(self) -> str:
        return BINARY[self.role]

    @property
    def label(self) -> str:
        what = f"{self.binary}({self.role})" if self.binary == "ovsdb-server" else self.binary
        return f"{what}@{self.ns}"

    @property
    def pidfile(self) -> str:
        return f"{self.dir / self.role}.pid"


def _poll(cond: Callable[[], bool], timeout: float, step: float) -> bool:
    """True as soon as cond() holds, False if it still does not after `timeout` s (bounded)."""
    return wait_gone(lambda: not cond(), timeout, step)


def tx_checksum_off(ns: str, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` in namespace `ns`: frames leave it with their checksums computed
    (OVS's userspace datapath reads them from a packet socket, where a checksum left to offload is
    never filled in)."""
    from pyroute2.ethtool.ioctl import IoctlEthtool

    def off() -> None:
        eth = IoctlEthtool(ifname)
        try:
            eth.set_offload_flag("tx-checksumming", 0)
        finally:
            eth.close()

    netns.call_in(ns, off)


# ---------------------------------------------------------------- the control plane


class Ovn:
    """OVN as the lab's control plane (see the module's docstring).

    strategy: how VMs move (STRATEGIES). workdir: default /run/roamnet/<lab>/ovn (0700, removed by stop()
    when start() created it, unless keep_workdir). datapath_rt: run every ovs-vswitchd's main thread, which
    forwards the lab's packets, under SCHED_RR priority 1 (the kernel's RT throttling still bounds it)."""

    name = "ovn"
    workdir_name = "ovn"

    def __init__(self, strategy: str = "multichassis-rarp", workdir: Path | None = None,
                 ready_timeout: float = READY_TIMEOUT_S, keep_workdir: bool = False, datapath_rt: bool = False):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown OVN move strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
        self.strategy = strategy
        self.name = f"ovn-{strategy}"
        self._workdir_arg = workdir
        self.workdir: Path | None = workdir
        self.ready_timeout = ready_timeout
        self.keep_workdir = keep_workdir
        self.datapath_rt = datapath_rt  # ovs-vswitchd's main thread (the datapath here) under SCHED_RR
        self.chassis: dict[str, Chassis] = {}
        self.central_ns = ""
        self._procs: list[Proc] = []
        self._lock = threading.Lock()
        self._own_workdir: list[Path] = []
        self._sb: Ovsdb | None = None
        self._nb: Ovsdb | None = None
        self._local: dict[str, Ovsdb] = {}  # chassis -> its Open_vSwitch database
        self._chassis_uuid: dict[str, str] = {}

    # ---- paths -----------------------------------------------------------------------------------
    def dir(self, node: str) -> Path:
        assert self.workdir is not None
        return self.workdir / node

    @property
    def central(self) -> Path:
        return self.dir(CENTRAL)

    def _prepare_workdir(self, lab_name: str) -> None:
        self._procs = []
        self.workdir = self._workdir_arg or names.state_dir(lab_name) / self.workdir_name
        leftovers = [e["label"] for e in read_journal(self.workdir)
                     if is_recorded_process(int(e["pid"]), e["binary"], e["pidfile"])]
        if leftovers:
            raise OvnError(f"OVN processes of an earlier run are still alive ({', '.join(leftovers)}); end them "
                           f"with roamnet.baselines.ovn.kill_recorded({str(self.workdir)!r})")
        self._own_workdir = []  # the directories made here, the workdir last: removed by stop()
        p = self.workdir
        for _ in range(64):  # bounded walk up to an existing ancestor
            if p.exists():
                break
            self._own_workdir.insert(0, p)
            p = p.parent
        for d in self._own_workdir:
            d.mkdir(mode=0o700)
        os.chmod(self.workdir, 0o700)
        longest = self.workdir / ("x" * 16) / "br-int.snoop"
        if len(str(longest)) > SUN_PATH_MAX:
            raise OvnError(f"workdir {self.workdir} is too long for OVS's unix sockets")
        self._write_journal()

    def _write_journal(self) -> None:
        if self.workdir is None or not self.workdir.exists():
            return
        with self._lock:
            rows = [{"label": p.label, "role": p.role, "binary": p.binary, "node": p.node, "ns": p.ns,
                     "pid": p.popen.pid, "pidfile": p.pidfile, "argv": p.argv,
                     "running": p.popen.poll() is None} for p in self._procs]
        write_json(self.workdir / JOURNAL, {"processes": rows})

    # ---- processes -------------------------------------------------------------------------------
    def running(self) -> list[str]:
        with self._lock:
            return [p.label for p in self._procs if p.popen.poll() is None]

    def processes(self) -> list[Proc]:
        with self._lock:
            return list(self._procs)

    def _proc(self, node: str, role: str) -> Proc | None:
        return next((p for p in self.processes() if p.node == node and p.role == role), None)

    @staticmethod
    def log_tail(proc: Proc, lines: int = 15) -> str:
        text: list[str] = []
        for f in (proc.dir / f"{proc.role}.out", proc.dir / f"{proc.role}.log"):
            try:
                text += f.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n    ".join(text[-lines:]) or "(no log)"

    def failure(self, proc: Proc | None, what: str) -> OvnError:
        if proc is None:
            return OvnError(what)
        return OvnError(f"{proc.label}: {what}; log tail:\n    {self.log_tail(proc)}")

    def check_alive(self) -> None:
        for p in self.processes():
            rc = p.popen.poll()
            if rc is not None:
                raise self.failure(p, f"exited with status {rc}")

    def _spawn(self, role: str, ns: str, node: str) -> Proc:
        d = self.dir(node)
        binary = shutil.which(BINARY[role], path="/usr/sbin:/usr/bin:/sbin:/bin")
        if binary is None:
            raise OvnError(f"{BINARY[role]} in {ns}: not installed (Debian: apt-get install openvswitch-switch "
                           "ovn-central ovn-host, or `make install`)")
        if not netns.exists(ns):
            raise OvnError(f"{BINARY[role]} in {ns}: no such network namespace")
        argv = daemon_argv(role, d, self.central)
        for f in (d / f"{role}.pid", d / f"{role}.sock", d / f"{role}.ctl"):
            f.unlink(missing_ok=True)
        with open(d / f"{role}.out", "ab") as out:
            popen = subprocess.Popen(netns.command(ns, argv), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=daemon_env(d), start_new_session=True)
        proc = Proc(role, ns, node, d, popen, argv)
        with self._lock:
            self._procs.append(proc)
        self._write_journal()  # at once: a crash from here on still knows this pid
        log.info("started %s (pid %d): %s", proc.label, popen.pid, " ".join(argv))
        return proc

    def _wait_socket(self, proc: Proc, sock: Path) -> None:
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while not sock.exists():
            rc = proc.popen.poll()
            if rc is not None:
                raise self.failure(proc, f"exited with status {rc}")
            if time.monotonic() > deadline:
                raise self.failure(proc, f"no socket {sock} after {SOCKET_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    # ---- commands ----------------------------------------------------------------------------------
    def _run(self, tool: str, node: str, ns: str, args: Sequence[str], blame: str,
             timeout: float = CLI_TIMEOUT_S) -> str:
        """An OVS/OVN command line tool inside namespace `ns` with node's directories; the failure names
        it and shows the log tail of `blame` (the daemon it talks to)."""
        d = self.dir(node)
        db = {"ovs-vsctl": f"--db=unix:{d / 'ovsdb.sock'}",
              "ovn-nbctl": f"--db=unix:{self.central / 'nb.sock'}",
              "ovn-sbctl": f"--db=unix:{self.central / 'sb.sock'}"}[tool]
        argv = [tool, db, f"--timeout={int(timeout)}", *args]
        try:
            p = subprocess.run(netns.command(ns, argv), capture_output=True, text=True, timeout=timeout + 5,
                               stdin=subprocess.DEVNULL, env=daemon_env(d))
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise self.failure(self._proc(node if tool == "ovs-vsctl" else CENTRAL, blame),
                               f"`{' '.join(argv)}` in {ns}: {exc}") from None
        if p.returncode != 0:
            raise self.failure(self._proc(node if tool == "ovs-vsctl" else CENTRAL, blame),
                               f"`{' '.join(argv)}` in {ns} failed ({p.returncode}): "
                               f"{(p.stderr or p.stdout).strip()[-300:]}")
        return p.stdout

    def vsctl(self, ch: Chassis, *args: str) -> str:
        return self._run("ovs-vsctl", ch.node, ch.ns, args, "vswitchd")

    def nbctl(self, *args: str) -> str:
        return self._run("ovn-nbctl", CENTRAL, self.central_ns, args, "northd")

    # ---- start -------------------------------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        """After the lab's underlay exists, before VMs are plugged: the central namespace and daemons,
        every chassis's daemons and bridges, the logical network; then wait (bounded) until every chassis
        is registered with its tunnels and has caught up with the NB database. On any failure: stops what
        it started and raises OvnError naming the daemon and its namespace, with its log tail."""
        if self.running():
            raise OvnError(f"{self.name} is already running ({', '.join(self.running())})")
        progress = getattr(lab, "progress", None) or (lambda msg: None)
        try:
            for schema in (OVS_SCHEMA, NB_SCHEMA, SB_SCHEMA):
                if not schema.exists():
                    raise OvnError(f"no {schema} (Debian: apt-get install openvswitch-switch ovn-central ovn-host)")
            try:
                chassis = plan_chassis(lab.plan)
                nb_args = nb_commands(lab.topo)
            except ValueError as exc:
                raise OvnError(f"{self.name}: {exc}") from None
            self.chassis = {c.node: c for c in chassis}
            self._prepare_workdir(lab.name)
            self.central_ns = names.ovn_central_netns(lab.name)
            lab.add_namespace(self.central_ns)
            progress(f"{self.name}: NB and SB databases and ovn-northd in {self.central_ns}")
            self._start_central()
            progress(f"{self.name}: ovsdb-server, ovs-vswitchd (userspace datapath) and ovn-controller on "
                     f"{len(chassis)} servers")
            for ch in chassis:
                self._start_chassis(lab, ch)
            self.nbctl(*nb_args)
            self._wait_ready(progress)
        except BaseException:
            self.stop(lab)
            raise

    def _make_db(self, schema: Path, db: Path, ns: str) -> None:
        db.unlink(missing_ok=True)
        p = subprocess.run(["ovsdb-tool", "create", str(db), str(schema)], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise OvnError(f"ovsdb-tool create {db} for {ns}: {(p.stderr or p.stdout).strip()[-300:]}")

    def _start_central(self) -> None:
        d = self.central
        d.mkdir(mode=0o700, exist_ok=True)
        for role, schema in (("nb", NB_SCHEMA), ("sb", SB_SCHEMA)):
            self._make_db(schema, d / f"{role}.db", self.central_ns)
        servers = [self._spawn(role, self.central_ns, CENTRAL) for role in ("nb", "sb")]
        for p in servers:
            self._wait_socket(p, d / f"{p.role}.sock")
        northd = self._spawn("northd", self.central_ns, CENTRAL)
        self._wait_socket(northd, d / "northd.ctl")
        self._sb = Ovsdb(d / "sb.sock", "OVN_Southbound")
        self._nb = Ovsdb(d / "nb.sock", "OVN_Northbound")

    def _start_chassis(self, lab: Lab, ch: Chassis) -> None:
        d = self.dir(ch.node)
        d.mkdir(mode=0o700, exist_ok=True)
        ipr = lab.netlink(ch.ns)
        up_idx = ipr.link_lookup(ifname=UPLINK)[0]
        mtu = ipr.get_links(up_idx)[0].get("IFLA_MTU")  # br-phy carries what the underlay link carries
        self._make_db(OVS_SCHEMA, d / "conf.db", ch.ns)
        db = self._spawn("ovsdb", ch.ns, ch.node)
        self._wait_socket(db, d / "ovsdb.sock")
        self.vsctl(ch, "--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                   f"external_ids:system-id={ch.node}", f"external_ids:hostname={ch.node}",
                   f"external_ids:ovn-remote=unix:{self.central / 'sb.sock'}",
                   "external_ids:ovn-encap-type=geneve", f"external_ids:ovn-encap-ip={ch.vtep}",
                   "external_ids:ovn-bridge-datapath-type=netdev")
        vswitchd = self._spawn("vswitchd", ch.ns, ch.node)
        self._wait_socket(vswitchd, d / "vswitchd.ctl")
        # br-phy takes over the underlay link and its address and routes (OVS's userspace tunnels
        # route and resolve next hops through the bridge that holds the address); br-int is OVN's
        self.vsctl(ch, "add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
                   "other_config:disable-in-band=true",
                   "--", "set", "Interface", "br-phy", f"mtu_request={mtu}",
                   "--", "add-port", "br-phy", UPLINK,
                   "--", "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
                   "fail_mode=secure", "other_config:disable-in-band=true")
        phy = ipr.link_lookup(ifname="br-phy")
        if not phy:
            raise self.failure(vswitchd, "made no br-phy device")
        if self.datapath_rt:  # its main thread only (tid = pid): the one that polls these ports
            try:
                os.sched_setscheduler(vswitchd.popen.pid, os.SCHED_RR, os.sched_param(1))
            except OSError as exc:
                raise self.failure(vswitchd, f"cannot run its main thread under SCHED_RR: {exc}") from None
        ipr.addr("del", index=up_idx, address=ch.vtep, prefixlen=ch.prefixlen)
        ipr.link("set", index=phy[0], state="up", mtu=mtu)
        ipr.addr("add", index=phy[0], address=ch.vtep, prefixlen=ch.prefixlen)
        for dst, gw in ch.routes:
            ipr.route("replace", dst=dst, gateway=gw, oif=phy[0])
        self._local[ch.node] = Ovsdb(d / "ovsdb.sock", "Open_vSwitch")
        self._spawn("controller", ch.ns, ch.node)

    # ---- readiness -------------------------------------------------------------------------------
    def _chassis_state(self) -> tuple[dict[str, str], set[str]]:
        """SB chassis name -> uuid, and the chassis that have a Geneve encap."""
        assert self._sb is not None
        rows = self._sb.select("Chassis", [], ["_uuid", "name", "encaps"])
        return {r["name"]: r["_uuid"][1] for r in rows}, {r["name"] for r in rows if ovsdb_set(r["encaps"])}

    def _tunnels(self, node: str) -> int:
        rows = self._local[node].select("Interface", [["type", "==", "geneve"]], ["name", "ofport"])
        return sum(1 for r in rows if isinstance(r["ofport"], int) and r["ofport"] > 0)

    def _wait_ready(self, progress: Callable[[str], None]) -> None:
        started = time.monotonic()
        deadline = started + self.ready_timeout
        want = set(self.chassis)
        why = "not checked yet"
        for _ in range(int(self.ready_timeout / 0.1) + 10):
            self.check_alive()
            uuids, with_encap = self._chassis_state()
            missing = sorted(want - with_encap)
            if missing:
                why = f"chassis {', '.join(missing)} not registered in the SB database"
                blame = self._proc(missing[0], "controller")
            else:
                short = [n for n in sorted(want) if self._tunnels(n) < len(want) - 1]
                if not short:
                    self._chassis_uuid = uuids
                    break
                why = f"{short[0]} has {self._tunnels(short[0])} of {len(want) - 1} Geneve tunnels"
                blame = self._proc(short[0], "vswitchd")
            if time.monotonic() > deadline:
                raise self.failure(blame, f"not ready after {self.ready_timeout:.0f} s: {why}")
            time.sleep(0.1)
        else:
            raise OvnError(f"{self.name}: not ready: {why}")
        # every chassis has processed the logical network (northd -> SB -> ovn-controllers: hv_cfg)
        self._run("ovn-nbctl", CENTRAL, self.central_ns, ["--wait=hv", "sync"], "northd",
                  timeout=max(1.0, deadline - time.monotonic()))
        progress(f"{self.name}: {len(want)} chassis ready ({time.monotonic() - started:.1f} s)")

    # ---- ports -----------------------------------------------------------------------------------
    def attach_port(self, lab: Lab, vm: str, server: str) -> None:
        """Add the VM's ports on `server` to br-int with their interface ids (as libvirt does), and have
        the VM's uplinks compute their checksums (see tx_checksum_off)."""
        ch = self.chassis.get(server)
        if ch is None:
            raise OvnError(f"{self.name}: {server} is no chassis")
        args: list[str] = []
        for i, _ in enumerate(lab.topo.nics(vm)):
            port = names.port(vm, i)
            tx_checksum_off(names.nic_netns(lab.name, vm), lab.hv.uplink(i, server))
            ids = [names.iface_id(vm, j) for j in lab.topo.nics(vm)[i]]
            if len(ids) != 1:
                raise OvnError(f"{self.name}: {vm} NIC {i} carries {len(ids)} interfaces (tagged); not modelled")
            args += ["--", "--may-exist", "add-port", "br-int", port,
                     "--", "set", "Interface", port, f"external_ids:iface-id={ids[0]}"]
        self.vsctl(ch, *args[1:])

    def detach_port(self, lab: Lab, vm: str, server: str) -> None:
        """Take the VM's ports on `server` out of br-int (before the hypervisor deletes them)."""
        args: list[str] = []
        for i, _ in enumerate(lab.topo.nics(vm)):
            args += ["--", "--if-exists", "del-port", "br-int", names.port(vm, i)]
        self.vsctl(self.chassis[server], *args[1:])

    # ---- where a VM is ---------------------------------------------------------------------------
    def _uuid(self, server: str) -> str | None:
        if server not in self._chassis_uuid:
            self._chassis_uuid, _ = self._chassis_state()
        return self._chassis_uuid.get(server)

    def _installed(self, server: str, vm: str, n: int) -> bool:
        """Every port of `vm` on `server` has external_ids:ovn-installed=true (its flows are in)."""
        db = self._local.get(server)
        if db is None:
            return False
        for i in range(n):
            rows = db.select("Interface", [["name", "==", names.port(vm, i)]], ["external_ids"])
            if not rows or ovsdb_map(rows[0]["external_ids"]).get("ovn-installed") != "true":
                return False
        return True

    def _binding_state(self, lab: Lab, vm: str) -> list[tuple[list[str], list[str], dict]]:
        """Per interface of `vm`: (chassis uuids, additional chassis uuids, options)."""
        assert self._sb is not None
        out = []
        for i in range(len(lab.topo.vms[vm].interfaces)):
            rows = self._sb.select("Port_Binding", [["logical_port", "==", names.iface_id(vm, i)]],
                                   ["chassis", "additional_chassis", "options"])
            if not rows:
                out.append(([], [], {}))
                continue
            r = rows[0]
            out.append(([u[1] for u in ovsdb_set(r["chassis"]) if u],
                        [u[1] for u in ovsdb_set(r["additional_chassis"]) if u], ovsdb_map(r["options"])))
        return out

    def located(self, lab: Lab, vm: str, server: str) -> bool:
        """True when every interface of `vm` is bound to `server`'s chassis alone (no additional
        chassis) and `server`'s ovn-controller has installed its flows."""
        uuid = self._uuid(server)
        if uuid is None:
            return False
        state = self._binding_state(lab, vm)
        if not all(ch == [uuid] and not extra for ch, extra, _ in state):
            return False
        return self._installed(server, vm, len(lab.topo.nics(vm)))

    def delivering(self, lab: Lab, vm: str, server: str) -> bool:
        """True when `server`'s copies of `vm`'s ports pass traffic: bound there (as the chassis or an
        additional one), flows installed, and with activation-strategy=rarp activated there."""
        uuid = self._uuid(server)
        if uuid is None:
            return False
        for ch, extra, opts in self._binding_state(lab, vm):
            if uuid not in ch and uuid not in extra:
                return False
            if opts.get("activation-strategy") == "rarp" and uuid in extra:
                if server not in opts.get("additional-chassis-activated", "").split(","):
                    return False
        return self._installed(server, vm, len(lab.topo.nics(vm)))

    def programmed_everywhere(self, lab: Lab, wait: float) -> bool:
        """True once every chassis has processed the Southbound database as it is now (OVN's hv_cfg):
        NB_Global.nb_cfg is bumped, and every chassis's Chassis_Private.nb_cfg must reach that value,
        which ovn-controller writes only after the flows for everything before it are in Open vSwitch.
        Called once the destination delivers, it bounds from above when every chassis sends the VM's
        traffic there (the bump's own trip through northd is included). False after `wait` s."""
        assert self._nb is not None and self._sb is not None
        res = self._nb.transact({"op": "mutate", "table": "NB_Global", "where": [],
                                 "mutations": [["nb_cfg", "+=", 1]]},
                                {"op": "select", "table": "NB_Global", "where": [], "columns": ["nb_cfg"]})
        target = max(int(r["nb_cfg"]) for r in res[1]["rows"])
        want = set(self.chassis)

        def caught_up() -> bool:
            rows = self._sb.select("Chassis_Private", [], ["name", "nb_cfg"])
            done = {r["name"] for r in rows if int(r["nb_cfg"]) >= target}
            return want <= done

        return _poll(caught_up, wait, 0.005)

    def datapath_counters(self) -> dict[str, dict[str, Any]]:
        """Per chassis, what its userspace datapath lost and why, so far: `socket_drops` (per port:
        frames the kernel dropped because ovs-vswitchd had not read its packet socket in time, from
        `ss -0 -m`), and its main thread's `cpu_ms` and `runq_wait_ms` (time it was runnable but waited
        for a CPU, from schedstat). A chassis whose ss fails gets an `error` instead of drops."""
        out: dict[str, dict[str, Any]] = {}
        for node, ch in sorted(self.chassis.items()):
            p = self._proc(node, "vswitchd")
            if p is None or p.popen.poll() is not None:
                continue
            row: dict[str, Any] = {}
            try:
                ss = subprocess.run(netns.command(ch.ns, ["ss", "-0", "-m", "-n", "-p"]), capture_output=True,
                                    text=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)
                if ss.returncode != 0:
                    raise OSError(f"ss exited {ss.returncode}: {ss.stderr.strip()[-200:]}")
                row["socket_drops"] = packet_socket_drops(ss.stdout, p.popen.pid)
            except (OSError, subprocess.SubprocessError) as exc:
                row["error"] = f"ss in {ch.ns}: {exc}"
            st = thread_schedstat(p.popen.pid)
            if st is not None:
                row["cpu_ms"], row["runq_wait_ms"] = round(st[0], 1), round(st[1], 1)
            out[node] = row
        return out

    # ---- moves (lab.moves.Steered drives them) --------------------------------------------------
    steers_moves = True

    def set_move_options(self, lab: Lab, vm: str, phase: str, src: str, dst: str) -> None:
        opts, remove = move_options(self.strategy, phase, src, dst)
        if opts or remove:
            ports = [names.iface_id(vm, i) for i in range(len(lab.topo.vms[vm].interfaces))]
            self.nbctl(*set_options_args(ports, opts, remove))

    def move_ready(self, lab: Lab, vm: str, src: str, to: str, wait: float) -> dict:
        """Before the VM stops (its port on `to` exists, in br-int): the strategy's options; with a
        multi-chassis strategy, wait until `to` is an additional chassis of every port."""
        started = time.monotonic()
        self.set_move_options(lab, vm, "ready", src, to)
        if self.strategy != "classic":
            if not _poll(lambda: self._additional(lab, vm, to), wait, 0.005):
                raise OvnError(f"{self.name}: {to} did not become an additional chassis of {vm} within {wait:.0f} s")
        return {"prepared_ms": round((time.monotonic() - started) * 1000, 1)}

    def _additional(self, lab: Lab, vm: str, to: str) -> bool:
        uuid = self._uuid(to)
        return uuid is not None and all(uuid in extra for _, extra, _ in self._binding_state(lab, vm))

    def move_resumed(self, lab: Lab, vm: str, src: str, to: str) -> None:
        self.set_move_options(lab, vm, "resumed", src, to)

    def move_finish(self, lab: Lab, vm: str, src: str, to: str, wait: float) -> None:
        """The move is over: bound to `to` alone (waited for, bounded), the source's port out of br-int."""
        self.set_move_options(lab, vm, "finish", src, to)
        if not _poll(lambda: self.located(lab, vm, to), wait, 0.005):
            log.warning("%s: %s not bound to %s alone within %.0f s", self.name, vm, to, wait)
        self.detach_port(lab, vm, src)

    # ---- stop ------------------------------------------------------------------------------------
    def stop(self, lab: Lab | None = None) -> list[str]:
        """End every process this object started, by its own pid, ovn-controllers first, the databases
        last; SIGTERM, SIGKILL after a bounded wait. Returns their labels. The central namespace goes
        with the lab's other namespaces."""
        for db in [self._sb, self._nb, *self._local.values()]:
            if db is not None:
                db.close()
        self._sb, self._nb, self._local = None, None, {}
        stopped = []
        for role in reversed(ROLES):
            group = [p for p in self.processes() if p.role == role and p.popen.poll() is None]
            for p in group:
                with ignore_gone():
                    p.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + TERM_WAIT_S
            for p in group:
                try:
                    p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM: SIGKILL", p.label, p.popen.pid)
                    p.popen.kill()
                    try:
                        p.popen.wait(timeout=KILL_WAIT_S)
                    except subprocess.TimeoutExpired:
                        log.error("%s (pid %d) survived SIGKILL", p.label, p.popen.pid)
                        continue
                stopped.append(p.label)
            self._write_journal()
        own = self._own_workdir
        if not self.running() and not self.keep_workdir and own and own[-1] == self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            for d in reversed(self._own_workdir[:-1]):  # parents made for it, each only if empty
                try:
                    d.rmdir()
                except OSError:
                    break
            self._own_workdir = []
        return stopped
