"""FRR (zebra + bgpd) instances inside lab namespaces: the process machinery that FRR's users share.

Users: `evpn.FrrEvpn` (the BGP-EVPN baseline control plane) and `border.BorderBgp` (eBGP from the
data-center border routers to the WAN router). Each subclasses `FrrProcesses` and adds what it runs
(which instances, with which configuration) and what "ready" means.

Each FRR instance lives in its own directory `<workdir>/<instance node>/` (config, pid file, vty and
zserv sockets, logs) and is started with explicit paths (`-f`, `-i`, `-z`, `--vty_socket`), so
instances never meet each other or a host FRR, and nothing is written under /etc/frr or /var/run/frr.
Daemons are only ever started inside lab namespaces (through nsenter). Every pid is journalled in
`<workdir>/frr-pids.json` the moment its process exists; `kill_recorded(workdir)` ends them after a
crash, by pid, after checking /proc/<pid>/cmdline names that daemon and that instance directory.
`FrrProcesses.stop()` ends exactly the processes the object started, by their own pids.

An instance is any object with `node` (its directory's name, unique in the workdir), `ns` (the lab
namespace it runs in) and `label(daemon)` ("bgpd@<ns>").
"""

from __future__ import annotations

import grp
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from roamnet import names
from roamnet.dataplane import netns

log = logging.getLogger(__name__)

FRR_BIN_DIR = Path("/usr/lib/frr")  # Debian's `frr` package
DAEMONS = ("zebra", "bgpd")  # start order; stopped in reverse
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
JOURNAL = "frr-pids.json"
SOCKET_TIMEOUT_S = 10.0  # a daemon's vty/zserv sockets appear within this after its start
TERM_WAIT_S = 5.0  # SIGTERM -> SIGKILL after this
KILL_WAIT_S = 2.0
ZEBRA_NL_BUFSIZE = 16 * 1024 * 1024  # zebra's netlink receive buffer (-s; Debian's /etc/frr/daemons: 90 MB)
SUN_PATH_MAX = 107  # a unix socket path (sun_path is 108 bytes with its NUL)
VTY_GROUP = "frrvty"  # Debian's FRR is built with --enable-vty-group=frrvty
FRR_TMP = Path("/var/tmp/frr")  # FRR keeps per-process log buffers in <daemon>.<pid>/ here (removed at a
#                                 clean exit, left behind by SIGKILL)
REJECTED_MARKERS = ("No such command", "Error occurred during reading")  # FRR's log lines for a bad config line


class FrrError(RuntimeError):
    """An FRR instance failed (its message names the daemon and namespace), or the journal is unreadable."""


class Instance(Protocol):
    node: str
    ns: str

    def label(self, daemon: str) -> str: ...


# ---------------------------------------------------------------- pure helpers


def check_instance(daemon: str, inst: Any, roles: Sequence[str]) -> None:
    """What every FRR configuration needs of its instance: a daemon we configure, a known role, peers."""
    if daemon not in DAEMONS:
        raise ValueError(f"no configuration for daemon {daemon!r}")
    if inst.role not in roles:
        raise ValueError(f"unknown role {inst.role!r}")
    if not inst.peers:
        raise ValueError(f"{inst.node}: no BGP peers")


def check_lab_address(addr: str, what: str) -> str:
    """`addr` if it lies in the lab range 198.18.0.0/15; ValueError naming `what` otherwise."""
    if ipaddress.ip_address(addr) not in LAB_RANGE:
        raise ValueError(f"{what} {addr} is outside the lab range {LAB_RANGE}")
    return addr


def config_header(daemon: str, node: str, ns: str, role: str, writer: str, *, log_file: str | None = None,
                  debug: bool = False, first: Sequence[str] = ()) -> list[str]:
    """The first lines of an instance's config: a comment, `first` (commands that must come first,
    e.g. `frr defaults datacenter`), hostname, log file and timestamp precision."""
    lines = [f"! {daemon} of {node} ({role}) in {ns}, written by {writer}", *first, f"hostname {node}"]
    if log_file:
        lines.append(f"log file {log_file}{' debugging' if debug else ' informational'}")
    return lines + ["log timestamp precision 3", "!"]


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


def run_group() -> str:
    """The group FRR's daemons are started with (`-g`).

    Debian's daemons drop to user `frr`, which could not use our 0700 root-owned workdir (nor act on
    it without chowning things). They run as root instead: `-u root`. FRR then insists that the user
    is a member of its vty group (`-u root -g root` fails: "user(root) is not part of vty group
    specified(frrvty)"), and adding root to frrvty would change the host; naming frrvty as the
    group (`-g frrvty`) passes that check with no change to the host. The daemons keep uid 0 and
    only the capabilities FRR asks for, inside a throwaway lab namespace."""
    try:
        grp.getgrnam(VTY_GROUP)
        return VTY_GROUP
    except KeyError:  # an FRR build without a vty group
        return "root"


def sockets(instdir: Path, daemon: str) -> tuple[Path, ...]:
    """The unix sockets `daemon` of the instance in `instdir` listens on once it is up."""
    return (instdir / f"{daemon}.vty", instdir / "zserv.api") if daemon == "zebra" else (instdir / f"{daemon}.vty",)


# ---------------------------------------------------------------- the pid journal


def write_json(path: Path, data: Any) -> None:
    """Write `data` to `path` atomically (0600, fsynced, renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_journal(workdir: Path, error: type[FrrError] = FrrError) -> list[dict]:
    """The processes the pid journal in `workdir` records ([] if there is none)."""
    try:
        return list(json.loads((Path(workdir) / JOURNAL).read_text())["processes"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise error(f"unreadable pid journal {Path(workdir) / JOURNAL}: {exc}") from None


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


def wait_gone(check: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """True once check() is false, polling at most `timeout` s (bounded in count as well)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        if not check():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return not check()


class ignore_gone:
    """`with ignore_gone():` around a signal to a process that may have exited meanwhile."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is ProcessLookupError


def drop_log_buffers(daemon: str, pid: int) -> None:
    """After `daemon` (pid) ended: remove the log-buffer directory FRR left for exactly that process (it
    leaves it when killed, and at times when it ends on SIGTERM: seen with zebra)."""
    d = FRR_TMP / f"{daemon}.{pid}"
    if d.is_dir() and not d.is_symlink():
        shutil.rmtree(d, ignore_errors=True)


def kill_recorded(workdir: Path, error: type[FrrError] = FrrError) -> list[str]:
    """Crash clean-up: end the FRR processes the pid journal in `workdir` records, by pid, each only
    after /proc/<pid>/cmdline shows it is that daemon of that instance (never by name pattern).
    SIGTERM, then SIGKILL after a bounded wait. Returns what it ended, e.g. "bgpd@rn-x-hv1 (pid 42)".
    A workdir without a journal (or none at all) is not an error: returns []."""
    workdir = Path(workdir)
    entries = read_journal(workdir, error)
    live = [e for e in entries if is_instance_process(int(e["pid"]), e["daemon"], e["instdir"])]
    ended = []
    for daemon in reversed(DAEMONS):
        group = [e for e in live if e["daemon"] == daemon]
        for e in group:
            if is_instance_process(int(e["pid"]), daemon, e["instdir"]):  # verified right before the signal
                with ignore_gone():
                    os.kill(int(e["pid"]), signal.SIGTERM)
        for e in group:
            pid, inst = int(e["pid"]), e["instdir"]
            if not wait_gone(lambda: is_instance_process(pid, daemon, inst), TERM_WAIT_S):
                if is_instance_process(pid, daemon, inst):  # checked again: the pid is still that daemon
                    with ignore_gone():
                        os.kill(pid, signal.SIGKILL)
                    if not wait_gone(lambda: is_instance_process(pid, daemon, inst), KILL_WAIT_S):
                        ended.append(f"{e['label']} (pid {pid})")
                        continue
            drop_log_buffers(daemon, pid)  # gone: its buffers (a daemon that ends on SIGTERM may leave them too)
            ended.append(f"{e['label']} (pid {pid})")
    if (workdir / JOURNAL).exists():
        for e in entries:
            e["running"] = is_instance_process(int(e["pid"]), e["daemon"], e["instdir"])
        write_json(workdir / JOURNAL, {"processes": entries})
    return ended


# ---------------------------------------------------------------- running instances


@dataclass
class Proc:
    """One daemon process an FrrProcesses object started."""

    inst: Any  # an Instance
    daemon: str
    popen: subprocess.Popen
    instdir: Path
    argv: list[str]
    started_at: float  # time.time()

    @property
    def label(self) -> str:
        return self.inst.label(self.daemon)

    @property
    def pid(self) -> int:
        return self.popen.pid


class FrrProcesses:
    """The FRR daemons (zebra, then bgpd) of a set of instances, each in its lab namespace.

    A subclass sets `name` (for messages), `workdir_name` (the default workdir is
    /run/roamnet/<lab>/<workdir_name>) and `error` (the FrrError subclass it raises), and drives:
    `prepare_workdir(lab)`, `instances = [...]`, `check_paths()`, `write_configs(render)`,
    `launch(progress)`, then its own readiness wait with `check_alive()`, `vtysh()`/`show()`,
    `failure()`; on any failure `stop()`.

    workdir: configs, sockets, pid files, logs and the pid journal (0700; removed by stop() when
    prepare_workdir() created it, unless keep_workdir; a workdir that existed before is kept).
    frr_bin_dir: where zebra and bgpd are. vtysh: the vtysh binary (default: from PATH)."""

    name = "frr"
    workdir_name = "frr"
    error: type[FrrError] = FrrError

    def __init__(self, workdir: Path | str | None = None, frr_bin_dir: Path | str = FRR_BIN_DIR,
                 vtysh: str | None = None, keep_workdir: bool = False):
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.workdir = self._workdir_arg  # the default is known once prepare_workdir() knows the lab's name
        self._own_workdir: list[Path] = []  # directories prepare_workdir() created, removed by stop()
        self.bin_dir = Path(frr_bin_dir)
        self.vtysh_bin = vtysh or shutil.which("vtysh") or "/usr/bin/vtysh"
        self.keep_workdir = keep_workdir
        self.instances: list[Any] = []
        self._procs: list[Proc] = []
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._journal_ours = False  # the journal is this run's (an earlier run's is never overwritten)

    # ---- paths -----------------------------------------------------------------------------------
    def default_workdir(self, lab_name: str) -> Path:
        return names.state_dir(lab_name) / self.workdir_name

    def prepare_workdir(self, lab_name: str) -> Path:
        """Create the workdir (0700, and the parents it lacks), refuse if an earlier run's daemons
        recorded there still live, and start an empty pid journal. Forgets earlier processes."""
        self._procs = []
        self._journal_ours = False
        self.workdir = self._workdir_arg or self.default_workdir(lab_name)
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
        leftovers = [e["label"] for e in read_journal(self.workdir, self.error)
                     if is_instance_process(int(e["pid"]), e["daemon"], e["instdir"])]
        if leftovers:
            raise self.error(f"FRR processes of an earlier run are still alive ({', '.join(leftovers)}); "
                             f"end them with roamnet.wan.frr.kill_recorded({str(self.workdir)!r})")
        write_json(self.workdir / JOURNAL, {"processes": []})
        self._journal_ours = True
        return self.workdir

    def instdir(self, inst: Instance) -> Path:
        assert self.workdir is not None
        return self.workdir / inst.node

    def journal_path(self) -> Path | None:
        return self.workdir / JOURNAL if self.workdir else None

    def check_paths(self) -> None:
        """Every instance's unix socket paths fit in sun_path."""
        for inst in self.instances:
            longest = str(self.instdir(inst) / "zserv.api")
            if len(longest) > SUN_PATH_MAX:
                raise self.error(f"workdir {self.workdir} is too long for FRR's unix sockets "
                                 f"({longest!r} has {len(longest)} > {SUN_PATH_MAX} characters)")

    def write_configs(self, render: Callable[[str, Any, str], str]) -> None:
        """Each instance's directory (0700) and its daemons' configs: render(daemon, inst, log_file)."""
        for inst in self.instances:
            d = self.instdir(inst)
            d.mkdir(mode=0o700, exist_ok=True)
            for daemon in DAEMONS:
                (d / f"{daemon}.conf").write_text(render(daemon, inst, str(d / f"{daemon}.log")))

    # ---- start ----------------------------------------------------------------------------------
    def launch(self, progress: Callable[[str], None] = lambda msg: None) -> None:
        """Every instance's zebra, then (once every zebra listens) every bgpd; each daemon's sockets
        awaited (bounded) and its configuration checked accepted."""
        group = run_group()
        for daemon in DAEMONS:  # every zebra listens before any bgpd starts (bgpd would retry, later)
            progress(f"{self.name}: starting {daemon} in {len(self.instances)} namespaces")
            for inst in self.instances:
                self.spawn(inst, daemon, group)
            self.wait_sockets(daemon)

    def spawn(self, inst: Instance, daemon: str, group: str | None = None) -> Proc:
        """Start `daemon` of `inst` in its namespace (nsenter); its pid is journalled at once."""
        d = self.instdir(inst)
        binary = self.bin_dir / daemon
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise self.error(f"{daemon} in {inst.ns}: no executable {binary} (is FRR installed? "
                             f"Debian: apt-get install frr)")
        if not netns.exists(inst.ns):  # never the host's namespace: nsenter needs the lab's
            raise self.error(f"{daemon} in {inst.ns}: no such network namespace")
        argv = daemon_argv(self.bin_dir, daemon, d, group=group or run_group())
        for f in (*sockets(d, daemon), d / f"{daemon}.pid"):  # a crashed run's: would look like ours
            f.unlink(missing_ok=True)
        with open(d / f"{daemon}.out", "ab") as out:
            popen = subprocess.Popen(self.command(inst, daemon, argv), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(inst, daemon, popen, d, argv, time.time())
        with self._lock:
            self._procs.append(proc)
        self.write_journal()  # at once: a crash from here on still knows this pid
        log.info("started %s (pid %d): %s", proc.label, popen.pid, " ".join(argv))
        return proc

    def command(self, inst: Instance, daemon: str, argv: list[str]) -> list[str]:
        """The command line that runs `argv` (the daemon's) in the instance's namespace. The pid it starts
        must become the daemon's (each wrapper execs): the journal and stop() go by that pid."""
        return netns.command(inst.ns, argv)

    def running(self) -> list[str]:
        """Labels of the processes this object started that have not been seen to end."""
        with self._lock:
            return [p.label for p in self._procs if p.popen.poll() is None]

    def processes(self) -> list[Proc]:
        """Every process this object started (since its last start), running or not."""
        with self._lock:
            return list(self._procs)

    def proc(self, inst: Instance, daemon: str) -> Proc | None:
        with self._lock:
            return next((p for p in self._procs if p.daemon == daemon and p.inst is inst), None)

    def write_journal(self) -> None:
        """Every process this object started, with whether it still runs (`running`)."""
        path = self.journal_path()
        if path is None or not self._journal_ours:
            return
        with self._lock:
            rows = [{"label": p.label, "daemon": p.daemon, "node": p.inst.node, "ns": p.inst.ns,
                     "instdir": str(p.instdir), "pid": p.popen.pid, "argv": p.argv, "started_at": p.started_at,
                     "running": p.popen.returncode is None, "returncode": p.popen.returncode}
                    for p in self._procs]
        with self._journal_lock:
            write_json(path, {"processes": rows})

    @staticmethod
    def log_text(proc: Proc) -> str:
        text = ""
        for f in (proc.instdir / f"{proc.daemon}.out", proc.instdir / f"{proc.daemon}.log"):
            try:
                text += f.read_text(errors="replace")
            except OSError:
                pass
        return text

    def log_tail(self, proc: Proc, lines: int = 15) -> str:
        text = []
        for f in (proc.instdir / f"{proc.daemon}.out", proc.instdir / f"{proc.daemon}.log"):
            try:
                text += f.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n    ".join(text[-lines:]) or "(no log)"

    def failure(self, proc: Proc, what: str) -> FrrError:
        """The error for `proc`: "<daemon> in <ns>: <what>; log tail: ..."."""
        return self.error(f"{proc.daemon} in {proc.inst.ns}: {what}; log tail:\n    {self.log_tail(proc)}")

    def check_alive(self) -> None:
        """Raise the failure of the first process this object started that has exited."""
        for p in self.processes():
            rc = p.popen.poll()
            if rc is not None:
                raise self.failure(p, f"exited with status {rc}")

    def wait_sockets(self, daemon: str) -> None:
        """Until every `daemon` listens on its vty socket (zebra: and its zserv socket); then check that
        FRR accepted the configuration (a rejected line is a bug of the config writer, not a lab state)."""
        procs = [p for p in self.processes() if p.daemon == daemon]
        if not procs:
            return
        deadline, step = time.monotonic() + SOCKET_TIMEOUT_S, 0.02
        for _ in range(int(SOCKET_TIMEOUT_S / step) + 1):
            self.check_alive()
            waiting = [p for p in procs if not all(f.exists() for f in sockets(p.instdir, daemon))]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise self.failure(waiting[0], f"no vty socket after {SOCKET_TIMEOUT_S:.0f} s")
            time.sleep(step)
        else:
            raise self.failure(procs[0], f"no vty socket after {SOCKET_TIMEOUT_S:.0f} s")
        # The vty socket exists before the configuration is read: FRR reads it in the first event of
        # its loop, before it serves any vty client. So once a daemon answered vtysh, it has read it.
        with ThreadPoolExecutor(max_workers=min(16, len(procs))) as pool:
            list(pool.map(lambda p: self.vtysh(p.inst, daemon, "show version"), procs))
        for p in procs:
            bad = [ln.strip() for ln in self.log_text(p).splitlines() if any(m in ln for m in REJECTED_MARKERS)]
            if bad:
                raise self.failure(p, "configuration rejected: " + bad[0])

    # ---- reading state --------------------------------------------------------------------------
    def show(self, inst: Instance, daemon: str, command: str, timeout: float = 5.0) -> Any:
        """`vtysh -c COMMAND` (a JSON show command) against one instance's daemon; parsed."""
        out = self.vtysh(inst, daemon, command, timeout)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError:
            raise self.error(f"{daemon} in {inst.ns}: `{command}` gave no JSON: {out[-300:]!r}") from None

    def configure(self, inst: Instance, daemon: str, lines: list[str], timeout: float = 5.0) -> str:
        """Apply configuration `lines` (entered after `configure terminal`) to one instance's running
        daemon; FrrError naming the instance when vtysh fails."""
        return self.vtysh(inst, daemon, "configure terminal", timeout, more=lines)

    def vtysh(self, inst: Instance, daemon: str, command: str, timeout: float = 5.0,
              more: Sequence[str] = ()) -> str:
        """The output of `vtysh -c COMMAND [-c MORE...]` against one instance's daemon (its own vty
        socket only)."""
        argv = [self.vtysh_bin, "--vty_socket", str(self.instdir(inst)), "-d", daemon, "-c", command]
        argv += [arg for line in more for arg in ("-c", line)]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise self.error(f"{daemon} in {inst.ns}: `{command}` did not answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise self.error(f"{daemon} in {inst.ns}: cannot run {self.vtysh_bin}: {exc}") from None
        if p.returncode != 0:
            raise self.error(f"{daemon} in {inst.ns}: `{command}` failed ({p.returncode}): "
                             f"{(p.stderr or p.stdout).strip()[-300:]}")
        return p.stdout

    # ---- stop -----------------------------------------------------------------------------------
    def stop_processes(self) -> list[str]:
        """End every process this object started, by its own pid: bgpd first, then zebra; SIGTERM,
        SIGKILL after a bounded wait; the journal updated. Returns the labels stopped."""
        stopped = []
        for daemon in reversed(DAEMONS):
            group = [p for p in self.processes() if p.daemon == daemon]
            running = [p for p in group if p.popen.poll() is None]
            for p in running:
                with ignore_gone():
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
                drop_log_buffers(p.daemon, p.popen.pid)  # ended: what it left (after SIGTERM, too, at times)
                stopped.append(p.label)
            self.write_journal()
        return stopped

    def stop(self, lab: Any = None) -> list[str]:
        """stop_processes(); then, if none is left running, remove the workdir (if ours)."""
        stopped = self.stop_processes()
        if not self.running():
            self.remove_workdir()
        return stopped

    def remove_workdir(self) -> None:
        """Remove the workdir if prepare_workdir() created it (never one that existed before), unless
        kept; then the parents it created, each only if empty (/run/roamnet/<lab> may hold other state)."""
        if self.keep_workdir or not self._own_workdir:
            return
        if self._own_workdir[-1] == self.workdir:
            self._journal_ours = False  # gone with the workdir: a later stop() writes no journal
            shutil.rmtree(self.workdir, ignore_errors=True)
        for d in reversed(self._own_workdir[:-1]):
            try:
                d.rmdir()
            except OSError:  # not empty: someone else's files
                break
        self._own_workdir.clear()
