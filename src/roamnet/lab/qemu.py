"""QEMU guests in the lab (`vms.<vm>.guest: qemu`): real VMs, live-migrated by QEMU itself.

A guest's QEMU runs in its server's namespace (nsenter), with one tap per NIC as the VM's port: QEMU
creates the tap (so it goes with the process), the lab gives it the port's name, MTU and roamnet's alias
(`names.port`, `names.port_alias`, as the namespace VMs' ports have) and brings it up, as libvirt does.
The guest is the kernel and initramfs `make install` builds (guest/build.sh, in build/guest): its /init
configures each interface from the kernel command line (`guest_cmdline`), runs a UDP echo (and a TCP
echo) and a shell on its serial console, which the lab reaches over a unix socket (`console`).

A migration (`QemuGuests.migrate`) starts QEMU on the destination with `-incoming` listening on the
destination server's underlay address (so the migration stream crosses the lab's underlay, and the
data-center interconnect between data centers, like a real one), sets `downtime-limit` (the scenario's
pause) and `max-bandwidth`, runs `migrate` over QMP and polls `query-migrate`. The blackout is QEMU's: the
STOP event on the source to the RESUME event on the destination, by their QMP timestamps. QEMU's own RARP
announcements (and the guest kernel's gratuitous ARPs) follow RESUME. A migration that fails leaves the
guest running on the source (QEMU resumes it); the caller rolls the move back.

Every QEMU's pid is written in the lab's state directory (`<state>/qemu/*.pid`, next to its QMP and
console sockets), so lab down and the crash clean-up (lab/state.py) end it by its own pid. The accelerator
is chosen once per machine by a boot probe (`accel`): KVM when a guest boots under it, TCG otherwise (a
/dev/kvm that exists may still fail to run a stock kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from roamnet import names
from roamnet.dataplane import netns
from roamnet.intent.model import Topology
from roamnet.lab.errors import LabError
from roamnet.lab.processes import terminate

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
DEFAULT_MEMORY_MIB = 128
UDP_ECHO_PORT = 7  # the guest's rnguest udp-echo (and tcp-echo) port
UDP_REPLY_PORT = 9007  # where the guest's UDP echo answers (the sender's address, this port)
DEFAULT_DOWNTIME_MS = 30  # QEMU's downtime-limit when the move asks for no pause
MAX_BANDWIDTH = 10 << 30  # bytes/s: the lab's underlay is a veth, not a NIC
INCOMING_PORT_BASE = 4400  # destination QEMUs listen on <server's underlay address>:<this + n>
BOOT_TIMEOUT_S = 60.0  # a TCG boot on a busy machine
PROBE_TIMEOUT_S = 10.0  # a KVM boot that works says ready within this
MIGRATE_TIMEOUT_S = 60.0
RESUME_WAIT_S = 5.0
TCP_LOG = "/run/rnguest-tcp.log"  # the guest's TCP echo: how each connection ended (guest/init, rnguest.c)
READY = "roamnet-guest: ready"
CONSOLE_DONE = "RN-CONSOLE-DONE"


class MigrationFailed(LabError):
    """QEMU's migration did not complete; the guest still runs on the source."""


# ---- pure parts ----------------------------------------------------------------------------------

def guest_dir() -> Path:
    """Where `make install` (guest/build.sh) put the guest: $ROAMNET_GUEST_DIR, else the repository's build/guest."""
    env = os.environ.get("ROAMNET_GUEST_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "build" / "guest"


def guest_image() -> tuple[Path, Path]:
    """(kernel, initramfs) of the lab's guest; LabError naming what to run when they are missing."""
    d = guest_dir()
    kernel, initrd = d / "vmlinuz", d / "initrd.img"
    missing = [str(p) for p in (kernel, initrd) if not p.is_file()]
    if missing:
        raise LabError(f"the QEMU guest is not built (missing {', '.join(missing)}): run `make install` "
                       "(or `make guest`) as root in the repository, or set ROAMNET_GUEST_DIR")
    return kernel, initrd


def guest_cmdline(topo: Topology, vm: str, mtu: int = names.OVERLAY_MTU, probe: bool = False) -> str:
    """The guest kernel's command line: its interfaces (NIC MAC, guest VLAN, MAC, address), gateway and
    traffic endpoints, read by guest/init."""
    base = ["console=ttyS0", "quiet", "panic=-1"]
    if probe:
        return " ".join([*base, "rn.probe"])
    spec = topo.vms[vm]
    parts = [*base, f"rn.mtu={mtu}"]
    for members in topo.nics(vm):
        nic_mac = spec.interfaces[members[0]].mac
        for i in members:
            itf = spec.interfaces[i]
            plen = topo.cugs[itf.cug].subnet.prefixlen
            parts.append(f"rn.if={nic_mac},{itf.vlan or 0},{itf.mac},{itf.ip}/{plen}")
    routed = topo.routed_interface(vm)
    if routed is not None:
        parts.append(f"rn.gw={topo.cugs[routed[1].cug].gateway}")
    parts += [f"rn.udp={UDP_ECHO_PORT},{UDP_REPLY_PORT}", f"rn.tcp={UDP_ECHO_PORT}"]
    return " ".join(parts)


@dataclass(frozen=True)
class Paths:
    """One QEMU's files in the lab's state directory (unix socket paths stay short: < 108 bytes)."""

    workdir: Path
    tag: str  # "<vm>@<server>"

    def file(self, kind: str) -> Path:
        return self.workdir / f"{self.tag}.{kind}"

    @property
    def qmp(self) -> Path:
        return self.file("qmp")

    @property
    def console(self) -> Path:
        return self.file("console")

    @property
    def log(self) -> Path:
        """The console's output, whoever is connected."""
        return self.file("log")

    @property
    def pid(self) -> Path:
        return self.file("pid")


def qemu_argv(topo: Topology, vm: str, paths: Paths, accel: str, kernel: Path, initrd: Path,
              incoming: str | None = None, cmdline: str | None = None) -> list[str]:
    """QEMU's command line for `vm`: booting, or waiting for a migration on `incoming` ("tcp:addr:port",
    the same devices as the source's). QEMU creates a tap per NIC, named as the VM's port (`names.port`)."""
    spec = topo.vms[vm]
    argv = [QEMU, "-name", f"{topo.name}/{paths.tag}", "-accel", accel, "-m", str(spec.memory or DEFAULT_MEMORY_MIB),
            "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline or guest_cmdline(topo, vm),
            "-chardev", f"socket,id=con,path={paths.console},server=on,wait=off,logfile={paths.log},logappend=on",
            "-serial", "chardev:con",
            "-qmp", f"unix:{paths.qmp},server=on,wait=off"]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    for k, members in enumerate(topo.nics(vm)):
        argv += ["-netdev", f"tap,id=n{k},ifname={names.port(vm, k)},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n{k},mac={spec.interfaces[members[0]].mac},romfile="]
    if incoming:
        argv += ["-incoming", incoming]
    return argv


@dataclass(frozen=True)
class TcpSession:
    """One connection the guest's TCP echo served, as its log says it ended."""

    peer: str  # "ip:port"
    outcome: str  # "closed" (the peer closed: EOF) | "broken" (a reset, or a peer that stopped answering)
    echoed: int  # bytes echoed
    reason: str = ""  # why it broke

    @property
    def peer_ip(self) -> str:
        return self.peer.rsplit(":", 1)[0]


def parse_tcp_log(text: str) -> list[TcpSession]:
    """The lines of the guest's TCP_LOG ("tcp PEER closed BYTES" / "tcp PEER broken BYTES REASON"); other
    lines (a console's noise) are skipped."""
    out = []
    for line in text.splitlines():
        w = line.split(maxsplit=4)
        if len(w) >= 4 and w[0] == "tcp" and w[2] in ("closed", "broken") and w[3].isdigit():
            out.append(TcpSession(w[1], w[2], int(w[3]), w[4] if len(w) > 4 else ""))
    return out


def domain_xml(topo: Topology, vm: str) -> str:
    """The libvirt domain XML of `vm`'s QEMU as the hook reads it (libvirt hands it to /etc/libvirt/hooks/qemu
    on stdin): its name and one `<interface>` per NIC, with the NIC's MAC and its tap (`names.port`)."""
    from xml.sax.saxutils import quoteattr

    spec = topo.vms[vm]
    nics = "".join(f"<interface type='ethernet'><mac address={quoteattr(spec.interfaces[members[0]].mac)}/>"
                   f"<target dev={quoteattr(names.port(vm, k))}/><model type='virtio'/></interface>"
                   for k, members in enumerate(topo.nics(vm)))
    return (f"<domain type='qemu'><name>{vm}</name><memory unit='MiB'>{spec.memory or DEFAULT_MEMORY_MIB}</memory>"
            f"<devices>{nics}</devices></domain>")


def event_time(event: dict) -> float:
    """A QMP event's timestamp (QEMU's host clock, s since the epoch)."""
    ts = event["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def set_up(sock: socket.socket, ifname: str) -> None:
    """Bring device `ifname` up (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP) in the namespace of `sock`."""
    name = ifname.encode()
    got = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH", name, 0).ljust(40, b"\0"))
    flags = struct.unpack_from("H", got, 16)[0]
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", name, flags | IFF_UP).ljust(40, b"\0"))


def console_run(path: Path, command: str, timeout: float = 10.0) -> str:
    """Run a shell command on a guest's serial console (the unix socket at `path`, one client at a time);
    returns its output (stdout and stderr)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.connect(str(path))
        marker = CONSOLE_DONE.replace("-", "'-'", 1)  # the shell prints the marker; the command line does not
        s.sendall(f"{command}; echo; echo {marker}\n".encode())
        out, deadline = b"", time.monotonic() + timeout
        while CONSOLE_DONE.encode() not in out:
            if time.monotonic() > deadline:
                raise LabError(f"{path.name}: no answer on the console within {timeout:.0f} s to {command!r}: "
                               f"{out.decode(errors='replace')[-200:]}")
            with contextlib.suppress(TimeoutError):
                out += s.recv(65536)
    except OSError as exc:
        raise LabError(f"{path.name}: the console does not answer: {exc}") from None
    finally:
        s.close()
    text = out.decode(errors="replace").replace("\r", "")
    return text[:text.index(CONSOLE_DONE)].strip()


# ---- the accelerator -----------------------------------------------------------------------------

def accel() -> str:
    """"kvm" or "tcg" for this machine: $ROAMNET_QEMU_ACCEL, else a probe's cached answer
    (/run/roamnet/qemu-accel), else a boot probe: a guest that boots under KVM within PROBE_TIMEOUT_S."""
    forced = os.environ.get("ROAMNET_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    cache = names.run_dir() / "qemu-accel"
    with contextlib.suppress(OSError):
        cached = cache.read_text().strip()
        if cached in ("kvm", "tcg"):
            return cached
    found = "kvm" if os.path.exists("/dev/kvm") and _boots("kvm") else "tcg"
    names.run_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    cache.write_text(found + "\n")
    log.info("QEMU accelerator for lab guests: %s (boot probe)", found)
    return found


def _boots(accel_name: str) -> bool:
    kernel, initrd = guest_image()
    run = names.run_dir()
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = run / f"qemu-probe-{os.getpid()}.log"
    argv = [QEMU, "-accel", accel_name, "-m", "64", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-serial", f"file:{out}",
            "-append", "console=ttyS0 quiet panic=-1 rn.probe"] + (["-cpu", "host"] if accel_name == "kvm" else [])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while time.monotonic() < deadline:
            if out.exists() and READY in out.read_text(errors="replace"):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()  # its own pid
        proc.wait(timeout=10)
        out.unlink(missing_ok=True)


# ---- QMP (qemu.qmp, from PyPI) -------------------------------------------------------------------

async def _qmp(path: Path, name: str):
    from qemu.qmp import QMPClient

    client = QMPClient(name)
    await client.connect(str(path))
    return client


def qmp_run(path: Path, name: str, command: str, args: dict | None = None, timeout: float = 10.0) -> object:
    """One QMP command on the monitor at `path` (a connection of its own: QEMU serves one at a time)."""
    async def go():
        client = await _qmp(path, name)
        try:
            return await client.execute(command, args or {})
        finally:
            await client.disconnect()

    return asyncio.run(asyncio.wait_for(go(), timeout))


@dataclass
class Instance:
    """One QEMU process of a guest on a server."""

    vm: str
    server: str
    paths: Paths
    proc: subprocess.Popen
    incoming: str | None = None  # "tcp:addr:port" while it waits for a migration
    boot_ms: float | None = None  # QEMU's start to the guest's "ready" on the console (a booted one)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class QemuGuests:
    """Every QEMU of one lab; the Hypervisor hands QEMU guests' actions here."""

    topo: Topology
    workdir: Path  # <lab state dir>/qemu (0700)
    server_ns: Callable[[str], str]  # server -> its namespace
    server_address: Callable[[str], str]  # server -> its underlay address (where an incoming QEMU listens)
    netlink: Callable[[str], IPRoute]
    max_bandwidth: int = MAX_BANDWIDTH  # bytes/s; lower it to make a migration last (tests)
    # when the destination's taps come up: "stop" (the source stopped: STOP on its QMP, as the namespace
    # VMs' link flip) or "start" (when its QEMU starts, as libvirt does for the whole pre-copy)
    dest_up: str = "stop"
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    migrating: dict[str, dict] = field(default_factory=dict)  # vm -> QEMU's last query-migrate while it runs
    _accel: str | None = None
    _port: int = INCOMING_PORT_BASE

    @property
    def accel(self) -> str:
        if self._accel is None:
            self._accel = accel()
        return self._accel

    def instance(self, vm: str, server: str) -> Instance:
        inst = self.instances.get((vm, server))
        if inst is None:
            raise LabError(f"{vm}: no QEMU on {server}")
        return inst

    # ---- processes -------------------------------------------------------------------------------
    def start(self, vm: str, server: str, incoming: bool = False) -> Instance:
        """Start `vm`'s QEMU on `server` (booting, or waiting for a migration) with its taps as the VM's
        ports (named, aliased, up); a booting guest is waited for until it says ready."""
        if (vm, server) in self.instances:
            raise LabError(f"{vm}: a QEMU already runs on {server}")
        kernel, initrd = guest_image()
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = Paths(self.workdir, f"{vm}@{server}")
        for p in (paths.qmp, paths.console, paths.log):
            p.unlink(missing_ok=True)
        uri = None
        if incoming:
            self._port += 1
            uri = f"tcp:{self.server_address(server)}:{self._port}"
        argv = qemu_argv(self.topo, vm, paths, self.accel, kernel, initrd, incoming=uri)
        with open(paths.file("stderr"), "ab") as err:
            proc = subprocess.Popen(netns.command(self.server_ns(server), argv), stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, start_new_session=True)
        paths.pid.write_text(str(proc.pid))  # nsenter execs QEMU: the same pid (lab/state.py ends it by it)
        inst = Instance(vm, server, paths, proc, uri)
        self.instances[(vm, server)] = inst
        started = time.monotonic()
        try:
            self._ports_named(inst, up=not incoming or self.dest_up == "start")
            self._wait(inst, lambda: paths.qmp.exists(), "its QMP socket", 10.0)
            if not incoming:
                self._wait(inst, lambda: READY in self.console_log(vm, server), "the guest to boot", BOOT_TIMEOUT_S)
                inst.boot_ms = round((time.monotonic() - started) * 1000)
        except BaseException:
            self.stop(vm, server)
            raise
        return inst

    def _wait(self, inst: Instance, cond: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if not inst.running():
                raise LabError(f"{inst.vm}: QEMU on {inst.server} exited ({inst.proc.returncode}) waiting for "
                               f"{what}: {self._stderr(inst)}")
            if time.monotonic() > deadline:
                raise LabError(f"{inst.vm}: QEMU on {inst.server}: no sign of {what} within {timeout:.0f} s")
            time.sleep(0.02)

    @staticmethod
    def _stderr(inst: Instance) -> str:
        with contextlib.suppress(OSError):
            return inst.paths.file("stderr").read_text(errors="replace")[-400:].strip()
        return ""

    def _ports_named(self, inst: Instance, up: bool) -> None:
        """QEMU created the taps (down): give each the port's MTU and alias, and bring it up if `up`."""
        ipr = self.netlink(self.server_ns(inst.server))
        spec = self.topo.vms[inst.vm]
        for k, members in enumerate(self.topo.nics(inst.vm)):
            port = names.port(inst.vm, k)
            self._wait(inst, lambda: bool(ipr.link_lookup(ifname=port)), f"its tap {port}", 10.0)
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, mtu=names.OVERLAY_MTU, ifalias=names.port_alias(
                [(names.iface_id(inst.vm, j), spec.interfaces[j].vlan or 0) for j in members]))
        if up:
            self._ports_up(inst)

    def _ports_up(self, inst: Instance) -> None:
        ipr = self.netlink(self.server_ns(inst.server))
        for k in range(len(self.topo.nics(inst.vm))):
            ipr.link("set", index=ipr.link_lookup(ifname=names.port(inst.vm, k))[0], state="up")

    def stop(self, vm: str, server: str) -> None:
        """End `vm`'s QEMU on `server` by its pid (its taps go with it); its files go too."""
        inst = self.instances.pop((vm, server), None)
        if inst is None:
            return
        terminate(inst.proc)
        for suffix in ("pid", "qmp", "console", "log", "stderr"):
            inst.paths.file(suffix).unlink(missing_ok=True)

    def stop_all(self) -> None:
        for vm, server in list(self.instances):
            self.stop(vm, server)

    # ---- the guest -------------------------------------------------------------------------------
    def console_log(self, vm: str, server: str) -> str:
        with contextlib.suppress(OSError):
            return self.instance(vm, server).paths.log.read_text(errors="replace")
        return ""

    def console(self, vm: str, server: str, command: str, timeout: float = 10.0) -> str:
        """Run a shell command on the guest's serial console; returns its output (stdout and stderr)."""
        return console_run(self.instance(vm, server).paths.console, command, timeout)

    def tcp_sessions(self, vm: str, server: str) -> list[TcpSession]:
        """The connections the guest's TCP echo served and how each ended (its log, read on the console)."""
        return parse_tcp_log(self.console(vm, server, f"cat {TCP_LOG} 2>/dev/null"))

    def announce(self, vm: str, server: str) -> None:
        """QEMU's self-announcement again (QMP announce-self: RARP on every NIC, on QEMU's schedule)."""
        inst = self.instance(vm, server)
        qmp_run(inst.paths.qmp, vm, "announce-self",
                {"initial": 50, "max": 550, "rounds": 5, "step": 100})

    # ---- a live migration ------------------------------------------------------------------------
    def migrate(self, vm: str, src: str, to: str, downtime_ms: int) -> dict:
        """QEMU's live migration of `vm` from `src` to the QEMU waiting on `to` (started if none is).
        Returns QEMU's figures and the STOP (source) and RESUME (destination) times (monotonic); raises
        MigrationFailed (the guest runs on the source) when QEMU's migration fails."""
        source = self.instance(vm, src)
        dest = self.instances.get((vm, to))
        if dest is not None and dest.incoming is None:  # e.g. the paused source of an earlier move
            self.stop(vm, to)
            dest = None
        if dest is None:
            dest = self.start(vm, to, incoming=True)
        try:
            out = asyncio.run(self._migrate(vm, source, dest, downtime_ms))
        except MigrationFailed:
            raise
        except Exception as exc:  # QMP refused or lost (e.g. the destination QEMU died): QEMU's side failed
            raise MigrationFailed(f"{vm}: QEMU's migration from {src} to {to} failed: {type(exc).__name__}: "
                                  f"{exc}") from None
        finally:
            self.migrating.pop(vm, None)
        dest.incoming = None
        return out

    async def _migrate(self, vm: str, source: Instance, dest: Instance, downtime_ms: int) -> dict:
        from qemu.qmp import EventListener

        offset = time.time() - time.monotonic()  # QMP timestamps are QEMU's host clock
        src_qmp = await _qmp(source.paths.qmp, f"{vm}@{source.server}")
        try:
            dst_qmp = await _qmp(dest.paths.qmp, f"{vm}@{dest.server}")
        except Exception:
            await src_qmp.disconnect()
            raise
        stopped, resumed = EventListener(("STOP",)), EventListener(("RESUME",))
        try:
            with src_qmp.listen(stopped), dst_qmp.listen(resumed):
                await src_qmp.execute("migrate-set-capabilities",
                                      {"capabilities": [{"capability": "events", "state": True}]})
                await src_qmp.execute("migrate-set-parameters",
                                      {"downtime-limit": downtime_ms, "max-bandwidth": self.max_bandwidth})
                started = time.monotonic()
                stop_seen = asyncio.create_task(self._on_stop(stopped, dest))
                await src_qmp.execute("migrate", {"uri": dest.incoming})
                info = await self._until_done(vm, src_qmp, started)
                if info.get("status") != "completed":
                    stop_seen.cancel()
                    raise MigrationFailed(f"{vm}: QEMU's migration from {source.server} to {dest.server} "
                                          f"{info.get('status')}: {info.get('error-desc', 'no reason given')}")
                stop_ev = await asyncio.wait_for(stop_seen, RESUME_WAIT_S)
                resume_ev = await asyncio.wait_for(resumed.get(), RESUME_WAIT_S)
                info = await self._downtime(src_qmp, info)
        finally:
            for client in (src_qmp, dst_qmp):  # a dead QEMU's monitor fails to say goodbye: not the news
                with contextlib.suppress(Exception):
                    await client.disconnect()
        stop_t, resume_t = event_time(stop_ev) - offset, event_time(resume_ev) - offset
        return {"stopped": stop_t, "resumed": resume_t, "qemu_total_ms": info.get("total-time"),
                "qemu_downtime_ms": info.get("downtime"), "blackout_ms": round((resume_t - stop_t) * 1000, 1),
                "transferred_bytes": info.get("ram", {}).get("transferred"), "downtime_limit_ms": downtime_ms,
                "accel": self.accel, "dest_up": self.dest_up}

    async def _on_stop(self, stopped, dest: Instance) -> dict:
        """The source's STOP event; the destination's taps come up then (dest_up "stop"): what is sent to
        the VM in the blackout waits in them for the guest, and none of the pre-copy's frames do. (An
        ioctl on a socket opened in the server's namespace beforehand: pyroute2 runs an event loop of
        its own, which cannot run inside this one.)"""
        socks = [] if self.dest_up != "stop" else [
            netns.socket_in(self.server_ns(dest.server), socket.AF_INET, socket.SOCK_DGRAM)]
        try:
            event = await stopped.get()
            for s in socks:
                for k in range(len(self.topo.nics(dest.vm))):
                    set_up(s, names.port(dest.vm, k))
            return event
        finally:
            for s in socks:
                s.close()

    async def _until_done(self, vm: str, qmp, started: float) -> dict:
        while True:
            info = await qmp.execute("query-migrate")
            self.migrating[vm] = info
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            if time.monotonic() - started > MIGRATE_TIMEOUT_S:
                with contextlib.suppress(Exception):
                    await qmp.execute("migrate_cancel")
                return {"status": "timed out", "error-desc": f"not completed within {MIGRATE_TIMEOUT_S:.0f} s"}
            await asyncio.sleep(0.005)

    @staticmethod
    async def _downtime(qmp, info: dict) -> dict:
        """query-migrate says downtime 0 when it first reports completed: read it again a moment later."""
        for _ in range(20):
            if info.get("downtime"):
                return info
            await asyncio.sleep(0.025)
            info = await qmp.execute("query-migrate")
        return info
