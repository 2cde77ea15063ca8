"""Lab tests: real network namespaces, the real kernel VXLAN data plane, run as root.

Every test in this directory is marked `lab`. Without root (or without `ip`/`nsenter`/`bridge`)
they are skipped — unless the environment says the lab is required (`CI=true` or
`ROAMNET_REQUIRE_LAB=1`), in which case every lab test errors out: CI must never silently skip them.

Safety rules the fixtures enforce:
  * each test uses its own lab name (checked: a name is handed out once per session), suffixed with
    three characters of this run (pid-derived, or $ROAMNET_TEST_LAB_SUFFIX) so that two concurrent
    runs of the suite on one host never meet;
  * a lab is only built if none of its namespaces exists yet (we never touch what we did not create);
  * every lab is torn down in `finally`, and afterwards none of its namespaces may remain;
  * processes are ended only by their own pid; every wait is bounded.
Addresses: underlay 198.18.0.0/16 (labplan), tenants 198.19.0.0/16 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

LAB_DIR = Path(__file__).resolve().parent
ROAMNET = str(Path(sys.executable).parent / "roamnet")  # the venv's console script
REQUIRED_TOOLS = ("ip", "nsenter", "bridge")


# ---------------------------------------------------------------- root / CI gate


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def lab_required() -> bool:
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("ROAMNET_REQUIRE_LAB"))


def lab_unavailable() -> str | None:
    """Why the lab cannot run on this host, or None."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (the lab needs network namespaces and netlink)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        problems.append(f"missing command(s): {', '.join(missing)}")
    return "; ".join(problems) or None


def _in_lab_dir(item: pytest.Item) -> bool:
    try:
        Path(str(item.path)).resolve().relative_to(LAB_DIR)
        return True
    except ValueError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _in_lab_dir(item):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session", autouse=True)
def _lab_host() -> None:
    """Skip the lab tests on a host that cannot run them; fail them if the lab is required."""
    reason = lab_unavailable()
    if reason is None:
        return
    if lab_required():
        pytest.fail(f"lab tests are required here (CI=true or ROAMNET_REQUIRE_LAB=1) but cannot run: {reason}",
                    pytrace=False)
    pytest.skip(f"lab tests skipped: {reason} (set ROAMNET_REQUIRE_LAB=1 to make this an error)")


# ---------------------------------------------------------------- independent views of the host


def netns_list() -> list[str]:
    """Names from `ip netns list` (independent of roamnet's own netns helpers)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def run(argv: list[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, bounded; on failure the assertion shows its output."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert p.returncode == 0, f"{' '.join(argv)} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def ip_json(ns: str, *args: str) -> Any:
    """`ip -n NS -j ARGS...` parsed."""
    out = run(["ip", "-n", ns, "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def roamnet_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """The real `roamnet` command line, as a user runs it."""
    return subprocess.run([ROAMNET, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def daemon_pids(lab: str) -> list[int]:
    """Pids of every process whose cmdline is `... -m roamnet.lab.daemon LAB` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if "roamnet.lab.daemon" in argv and argv and argv[-1] == lab:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="session")
def host() -> Any:
    """Helpers for independent checks, as a namespace object."""

    class Host:
        netns_list = staticmethod(netns_list)
        run = staticmethod(run)
        ip_json = staticmethod(ip_json)
        roamnet = staticmethod(roamnet_cli)
        daemon_pids = staticmethod(daemon_pids)

    return Host


# ---------------------------------------------------------------- lab names and topologies


_USED_NAMES: set[str] = set()
_PLANNED: dict[str, list[str]] = {}  # lab name -> every namespace its plan has


def _run_suffix() -> str:
    """Three base-36 characters from our pid: two concurrent runs of this suite never share a lab."""
    n, out = os.getpid() % 36**3, ""
    for _ in range(3):
        n, r = divmod(n, 36)
        out = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + out
    return out


RUN_SUFFIX = os.environ.get("ROAMNET_TEST_LAB_SUFFIX") or _run_suffix()


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """After the session: no namespace of any lab these tests built may remain."""
    yield
    if os.geteuid() != 0 or not shutil.which("ip"):
        return
    present = set(netns_list())
    left = sorted(ns for planned in _PLANNED.values() for ns in planned if ns in present)
    left += sorted(ns for ns in present for name in _USED_NAMES if ns.startswith(f"rn-{name}-"))
    assert not left, f"lab namespaces left behind after the session: {sorted(set(left))}"


def claim_lab_name(base: str) -> str:
    """This test's own lab name: `base` plus this run's suffix, handed out once, with no namespace yet."""
    name = f"{base}-{RUN_SUFFIX}"
    assert len(name) <= 20, f"lab name {name!r} is too long (at most 20 characters)"
    assert name not in _USED_NAMES, f"lab name {name!r} is used by two tests; each test needs its own lab"
    _USED_NAMES.add(name)
    clash = sorted(ns for ns in netns_list() if ns.startswith(f"rn-{name}-"))
    assert not clash, f"namespaces of lab {name!r} exist before the test built it (not ours, not touching): {clash}"
    return name


def planned_namespaces(topo: dict[str, Any]) -> list[str]:
    """Every namespace the lab of `topo` will create; refuses if any exists already (not ours)."""
    from roamnet.intent.model import parse_topology
    from roamnet.lab.plan import build_plan

    name = topo["name"]
    assert name in _USED_NAMES, f"lab {name!r}: get its name from the lab_name fixture"
    planned = build_plan(parse_topology(topo, f"<{name}>")).namespaces()
    _PLANNED[name] = planned
    clash = sorted(set(planned) & set(netns_list()))
    assert not clash, f"namespaces of lab {name!r} exist before the test built it (not ours, not touching): {clash}"
    return planned


VmSpec = tuple  # (server, cug) or (server, cug, host_octet)

DEFAULT_DCS = {"dc1": ["hv1", "hv2"], "dc2": ["hv3"]}
DEFAULT_CUGS = {"web": (10100, 1), "db": (10200, 2)}  # name -> (VNI, third octet of 198.19.X.0/24)
DEFAULT_VMS: dict[str, VmSpec] = {"vm1": ("hv1", "web"), "vm2": ("hv2", "web"), "vm3": ("hv3", "web")}


def build_topology(name: str, datacenters: dict[str, list[str]] | None = None,
                   vms: dict[str, VmSpec] | None = None,
                   cugs: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """A small topology as plain data. VM `vmN` gets IP 198.19.<cug>.(10+N) and MAC 02:00:00:<cug>:00:<10+N>."""
    datacenters = DEFAULT_DCS if datacenters is None else datacenters
    vms = DEFAULT_VMS if vms is None else vms
    cugs = DEFAULT_CUGS if cugs is None else cugs
    vm_data = {}
    for i, (vm, spec) in enumerate(vms.items(), start=1):
        server, cug = spec[0], spec[1]
        digits = "".join(c for c in vm if c.isdigit())
        host_octet = spec[2] if len(spec) > 2 else 10 + (int(digits) if digits else i)
        octet = cugs[cug][1]
        vm_data[vm] = {"server": server, "interfaces": [
            {"cug": cug, "mac": f"02:00:00:{octet:02x}:00:{host_octet:02x}", "ip": f"198.19.{octet}.{host_octet}"}]}
    return {
        "name": name,
        "datacenters": {dc: {"servers": list(servers)} for dc, servers in datacenters.items()},
        "cugs": {c: {"vni": vni, "subnet": f"198.19.{octet}.0/24"} for c, (vni, octet) in cugs.items()},
        "vms": vm_data,
    }


@pytest.fixture
def make_topology() -> Callable[..., dict[str, Any]]:
    """Factory: make_topology(name, datacenters=..., vms={"vm1": ("hv1", "web")}, cugs=...)."""
    return build_topology


@pytest.fixture
def lab_name() -> Callable[[str], str]:
    """lab_name("t-move-intra") -> "t-move-intra-<run suffix>": this test's own lab, checked unused and absent."""
    return claim_lab_name


@pytest.fixture
def lab_namespaces() -> Callable[[dict[str, Any]], list[str]]:
    """lab_namespaces(topology_dict): the namespaces its lab will have; asserts none exists yet."""
    return planned_namespaces


# ---------------------------------------------------------------- the Lab context manager


@contextlib.contextmanager
def running_lab(topo: dict[str, Any], converge_timeout: float = 30.0, **lab_args: Any) -> Iterator[Any]:
    """Build a Lab from topology data; always `lab.down()`; then none of its namespaces may remain."""
    from roamnet.intent.model import parse_topology
    from roamnet.lab.engine import Lab

    name = topo["name"]
    planned = planned_namespaces(topo)
    lab = Lab(parse_topology(topo, f"<{name}>"), **lab_args)
    assert sorted(lab.plan.namespaces()) == sorted(planned)
    try:
        lab.up(converge_timeout=converge_timeout)
        yield lab
    finally:
        lab.down()
        left = sorted(set(planned) & set(netns_list()))
        assert not left, f"lab {name}: namespaces left after lab.down(): {left}"


@pytest.fixture
def lab_up() -> Callable[..., contextlib.AbstractContextManager]:
    """`with lab_up(topology_dict) as lab:` — a running roamnet.lab.Lab, torn down in finally."""
    return running_lab


# ---------------------------------------------------------------- traffic endpoints


class Endpoint:
    """A `python -m roamnet.experiments.traffic` process inside a namespace; stdout collected by a thread."""

    def __init__(self, ns: str, argv: list[str]):
        from roamnet.dataplane import netns

        self.popen = subprocess.Popen(netns.command(ns, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._err: list[str] = []
        self._t_out = threading.Thread(target=self._read, daemon=True)
        self._t_err = threading.Thread(target=lambda: self._err.extend(self.popen.stderr), daemon=True)
        self._t_out.start()
        self._t_err.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line)
            if '"ready"' in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.ready.is_set():
            if self.popen.poll() is not None:
                self._t_out.join(timeout=1)
                break
            self.ready.wait(0.05)
        assert self.ready.is_set(), f"receiver not ready: {''.join(self.lines)[-300:]} {''.join(self._err)[-500:]}"

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"traffic endpoint {self.popen.args[-12:]} did not finish within {timeout:.0f} s")
        self._t_out.join(timeout=5)
        self._t_err.join(timeout=5)
        finals = [ln for ln in self.lines if ln.startswith("{") and '"role"' in ln]
        assert finals, f"no final line from endpoint; stderr: {''.join(self._err)[-500:]}"
        return json.loads(finals[-1])

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # its own pid only
            self.popen.wait(timeout=5)


class Flow:
    def __init__(self, name: str, proto: str, src: str, dst: str, rate: float, start_at: float, duration: float,
                 linger: float, recv: Endpoint, send: Endpoint):
        self.name, self.proto, self.src, self.dst, self.rate = name, proto, src, dst, rate
        self.start_at, self.duration, self.linger = start_at, duration, linger
        self.recv, self.send = recv, send

    def finish(self, migrations: list[dict] | None = None) -> Any:
        """Wait for both ends (bounded) and summarize like a scenario report does."""
        from roamnet.experiments.report import summarize

        budget = max(1.0, self.start_at + self.duration + self.linger + 15 - time.monotonic())
        send_out = self.send.result(timeout=budget)
        recv_out = self.recv.result(timeout=budget)
        return summarize(self.name, self.proto, self.src, self.dst, self.rate, send_out, recv_out, migrations)


@pytest.fixture
def traffic() -> Iterator[Callable[..., Flow]]:
    """start(lab, name, proto, src, dst, port, start_at, duration, rate=1000, linger=1.0) -> Flow.

    src is a VM or WAN client, dst one too or an address of one; the destination address is the scenario's (roamnet.intent.scenario).
    The receiver runs in the destination's namespace, the sender in the source's; both stop by
    themselves at start_at + duration (+ linger); teardown kills leftovers by their own pid."""
    from roamnet import names
    from roamnet.experiments.traffic import recv_argv, send_argv

    endpoints: list[Endpoint] = []

    def start(lab: Any, name: str, proto: str, src: str, dst: str, port: int, start_at: float, duration: float,
              rate: float = 1000, linger: float = 1.0) -> Flow:
        from roamnet.intent.scenario import Stream

        stream = Stream(name=name, from_=src, to=dst, proto=proto)
        dst_ip = str(stream.endpoints(lab.topo)[1])
        recv = Endpoint(names.netns(lab.name, stream.receiver(lab.topo)),
                        recv_argv(proto, dst_ip, port, start_at, duration, linger))
        endpoints.append(recv)
        recv.wait_ready()
        send = Endpoint(names.netns(lab.name, src), send_argv(proto, dst_ip, port, rate, start_at, duration))
        endpoints.append(send)
        return Flow(name, proto, src, dst, rate, start_at, duration, linger, recv, send)

    try:
        yield start
    finally:
        for ep in endpoints:
            ep.kill()


def run_scenario_cleaned(data: dict[str, Any], base_dir: Path) -> tuple[Any, float]:
    """Parse and run a scenario on its topology's lab: (report, t0). run_scenario tears its lab down itself;
    the clean-up of the lab's state directory here is only a safety net."""
    from roamnet.experiments.runner import run_scenario
    from roamnet.intent.scenario import parse_scenario
    from roamnet.lab.state import cleanup, state_dir

    name = data["topology"]["name"]
    scn = parse_scenario(data, f"<{name}>", base_dir)
    try:
        return run_scenario(scn)
    finally:
        if state_dir(name).exists():
            cleanup(name)


def vm_ip(topo: dict[str, Any], vm: str) -> str:
    return topo["vms"][vm]["interfaces"][0]["ip"]


def vm_mac(topo: dict[str, Any], vm: str) -> str:
    return topo["vms"][vm]["interfaces"][0]["mac"]


@pytest.fixture(scope="session")
def addr() -> Any:
    class Addr:
        ip = staticmethod(vm_ip)
        mac = staticmethod(vm_mac)

    return Addr


# ---------------------------------------------------------------- FRR

FRR_BIN = Path("/usr/lib/frr")  # Debian's frr package


def host_frr_state() -> dict[str, Any]:
    """What a host FRR owns: /etc/frr's files (with their content) and /var/run/frr's entries."""
    etc = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path("/etc/frr").glob("*"))
           if p.is_file()} if Path("/etc/frr").is_dir() else None
    run = sorted(os.listdir("/var/run/frr")) if Path("/var/run/frr").is_dir() else None
    return {"/etc/frr": etc, "/var/run/frr": run}


@pytest.fixture(scope="module")
def frr_required() -> Iterator[None]:
    """The module's tests run FRR: skip them without it (fail them when the lab is required), and
    check afterwards that the host's own FRR files were not touched."""
    missing = [str(FRR_BIN / d) for d in ("zebra", "bgpd") if not (FRR_BIN / d).exists()]
    missing += [] if shutil.which("vtysh") else ["vtysh"]
    if missing:
        msg = f"FRR is not installed (missing {', '.join(missing)}; Debian: apt-get install frr)"
        if lab_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    before = host_frr_state()
    yield
    assert host_frr_state() == before, "an FRR lab test changed /etc/frr or /var/run/frr"


# ---------------------------------------------------------------- OVN

OVN_BINARIES = ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool", "ovn-northd", "ovn-nbctl", "ovn-controller")
OVN_HOST_PATHS = ("/var/run/openvswitch", "/var/run/ovn", "/etc/openvswitch", "/etc/ovn", "/var/log/openvswitch",
                  "/var/log/ovn", "/var/lib/openvswitch", "/var/lib/ovn")


def host_ovn_state() -> dict[str, Any]:
    """What a host Open vSwitch or OVN owns: the entries of its run, config, log and db directories."""
    return {p: sorted(os.listdir(p)) if Path(p).is_dir() else None for p in OVN_HOST_PATHS}


@pytest.fixture(scope="module")
def ovn_required() -> Iterator[None]:
    """The module's tests run OVN: skip them without it (fail them when the lab is required), and
    check afterwards that the host's own Open vSwitch / OVN directories were not touched."""
    missing = [b for b in OVN_BINARIES if shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        msg = (f"OVN is not installed (missing {', '.join(missing)}; Debian: apt-get install openvswitch-switch "
               "ovn-central ovn-host, or `make install`)")
        if lab_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    before = host_ovn_state()
    yield
    assert host_ovn_state() == before, "an OVN lab test changed the host's Open vSwitch / OVN directories"


def netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def proc_netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def frr_decoy(daemon: str, instdir: str) -> subprocess.Popen:
    """A process that looks like another lab's FRR daemon (its argv[0] and --vty_socket): must survive."""
    return subprocess.Popen([str(FRR_BIN / daemon), "-c", "import time; time.sleep(120)", "--vty_socket", instdir],
                            executable=sys.executable, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- captures and FRR journals


SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID = 263, 8, 1 << 4


class Sniffer:
    """Frames matching `keep(ether, outgoing)` on device `dev` of namespace `ns`, in a bounded thread.
    802.1Q tags the kernel keeps out of band (VLAN acceleration) are put back into the frame from the
    packet's auxiliary data, as libpcap does, so scapy sees its Dot1Q layer."""

    def __init__(self, ns: str, dev: str, keep: Callable[[Any, bool], bool], seconds: float = 60.0):
        self.frames: list[Any] = []
        self._keep = keep
        from roamnet.dataplane import netns

        self._sock = netns.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self._sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self._sock.bind((dev, 0))
        self._sock.settimeout(0.05)
        self._until = time.monotonic() + seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _with_tag(frame: bytes, ancdata: list) -> bytes:
        for level, kind, data in ancdata:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
                status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", data[:20])
                if status & TP_STATUS_VLAN_VALID:
                    return frame[:12] + struct.pack("!HH", tpid or 0x8100, tci) + frame[12:]
        return frame

    def _run(self) -> None:
        try:
            while time.monotonic() < self._until:
                try:
                    frame, ancdata, _, addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(32))
                except TimeoutError:
                    if self._stop.is_set():  # stopped, and everything queued before has been read
                        break
                    continue
                except OSError:  # the device went away (a pruned segment): nothing more to see
                    break
                from scapy.layers.l2 import Ether

                eth = Ether(self._with_tag(frame, ancdata))
                if self._keep(eth, addr[2] == 4):
                    self.frames.append(eth)
        finally:
            self._sock.close()

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.frames


def recorded_frr(workdir: Path) -> list[dict]:
    """The pid journal an FRR control plane keeps in `workdir`, read as a file."""
    return json.loads((Path(workdir) / "frr-pids.json").read_text())["processes"]


def frr_still_runs(row: dict) -> bool:
    """Independent of roamnet: does pid still run that daemon of that instance (per /proc)?"""
    try:
        argv = Path(f"/proc/{row['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    argv = [a.decode() for a in argv if a]
    return bool(argv) and Path(argv[0]).name == row["daemon"] and row["instdir"] in argv


def wait_resynced(lab: Any, nodes: list[str] | None = None, timeout: float = 10.0) -> None:
    """Wait until every agent of `nodes` (default: all) has published a periodic resync that started
    after this call (its kernel read again, not its cache): observable, not a sleep."""
    nodes = list(lab.agents) if nodes is None else nodes
    before = {n: s.resyncs for n, s in lab.mapping.statuses.all().items()}
    deadline = time.monotonic() + timeout
    while True:
        now = lab.mapping.statuses.all()
        behind = [n for n in nodes if n not in now or now[n].resyncs < before.get(n, 0) + 2]
        if not behind:
            return
        assert time.monotonic() < deadline, f"no resync published within {timeout} s by {', '.join(behind)}"
        time.sleep(0.05)


def lost_between(result: Any, start: float, end: float) -> list[int]:
    """Sequence numbers of a stream's datagrams that were sent between monotonic times `start` and
    `end` (by the sender's schedule: first + seq / rate) and never received. Receive-time gaps would
    also show a receiver that was only descheduled; this shows what the network lost."""
    if result.first is None or not result.rate:
        return []
    got = {seq for seq, _ in result.records}
    lo = max(0, int((start - result.first) * result.rate))
    hi = min(result.sent, int((end - result.first) * result.rate) + 1)
    return [s for s in range(lo, hi) if s not in got]
