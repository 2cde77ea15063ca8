"""libvirt's part in a lab move: the qemu hook run at the points of a live migration where libvirtd runs
/etc/libvirt/hooks/qemu, so that the lab's QEMU migration exercises the path of a real host
(orchestrator/libvirt.py decides, orchestrator/moves.py acts on the mapping).

The points, in libvirt's order (libvirt's hooks documentation, "QEMU guest migration"), and what the
lab does between them:

    destination  migrate begin -     the move is prepared (make before break); a failure refuses the migration
    destination  prepare begin -     (nothing for roamnet)
                 ...                 the destination's QEMU starts with -incoming: its taps are the VM's ports
    destination  start begin -       (nothing for roamnet)
                 ...                 QEMU's live migration: pre-copy, STOP, RESUME, QEMU's RARPs
    destination  started begin -     (nothing for roamnet; the destination's agent activates the move on the RARP)
                 ...                 the source's QEMU ends
    source       stopped end -       (nothing for roamnet)
    source       release end migrated   the move is completed (activated first if no RARP did it yet)

and after a failed migration (the guest runs on the source):

                 ...                 the destination's QEMU ends
    destination  stopped end -       (nothing for roamnet)
    destination  release end failed  the move, never activated, is aborted

A hook is run either in this process (`in_process`: `orchestrator.libvirt.run_hook` over the lab's mapping,
the function `roamnet hook libvirt` calls) or as the command itself (`command`: `roamnet hook libvirt` with
the domain XML on stdin, ROAMNET_NVE and the lab's store, as contrib/libvirt/qemu runs it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from roamnet.lab.errors import LabError
from roamnet.lab.moves import PREPARE_TIMEOUT_S, Moves
from roamnet.lab.qemu import domain_xml
from roamnet.mapping.records import Snapshot
from roamnet.orchestrator.libvirt import HookError, run_hook
from roamnet.orchestrator.moves import Orchestrator

HOOK_TIMEOUT_S = 60.0  # libvirtd waits for its hook; the lab does not wait for ever
WATCH_STEP_S = 0.25  # the activation watcher's longest wait between looks at whether it should stop
DRIVERS = ("lab", "libvirt", "libvirt-command")  # Lab.migrate(driver=...): who drives the mapping's side


@dataclass
class HookCall:
    """One run of the hook: where, which event, how it went."""

    nve: str
    event: str  # "OPERATION SUBOPERATION EXTRA"
    ms: float
    phase: str | None = None  # what the hook did to the move: prepared | completed | rolled-back | None
    activated_by: str | None = None  # a completion's: "announcement" (QEMU's RARP) or "orchestrator" (the hook)
    stdout: str = ""  # libvirt reads `migrate begin`'s stdout as the domain XML: it must stay empty

    def as_dict(self) -> dict:
        return {"nve": self.nve, "event": self.event, "ms": self.ms, "phase": self.phase,
                "activated_by": self.activated_by}


def said(stderr: str) -> tuple[str | None, str | None]:
    """(phase, activated by) from what `roamnet hook libvirt` logged of a phase it carried out (cli/hook.py:
    "EVENT: WHY: VM PHASE FROM -> TO (IFACES)[, activated by WHO][; ...], N ms")."""
    phase = re.search(r" (prepared|completed|rolled-back) \S+ -> \S+ \(", stderr)
    by = re.search(r"\), activated by (\w+)", stderr)
    return (phase.group(1) if phase else None), (by.group(1) if by else None)


Runner = Callable[[str, str, str, str, str, str], HookCall]  # (nve, domain, op, subop, extra, xml) -> the call


def in_process(moves: Moves, wait: float) -> Runner:
    """The hook's own function (`run_hook`) over the lab's mapping, in this process."""

    def run(nve: str, domain: str, op: str, subop: str, extra: str, xml: str) -> HookCall:
        started = time.monotonic()
        try:
            _, rec = run_hook(Orchestrator(moves.lab.mapping), nve, domain, op, subop, extra, xml, PREPARE_TIMEOUT_S,
                              wait)
        except HookError as exc:
            raise LabError(f"libvirt hook {domain} {op} {subop} {extra} on {nve} failed: {exc}") from None
        rec = rec or {}
        return HookCall(nve, f"{op} {subop} {extra}", round((time.monotonic() - started) * 1000, 1), rec.get("phase"),
                        rec.get("activated_by"))

    return run


def command(store_url: str | None, wait: float) -> Runner:
    """`roamnet hook libvirt` as a process, as libvirtd runs contrib/libvirt/qemu: the domain XML on stdin,
    this host's NVE and the store in its environment."""
    if not store_url:
        raise LabError("the libvirt hook command reaches the mapping through a store: a lab over etcd (the default "
                       "lab, or --store) has one; an in-process lab has not")

    def run(nve: str, domain: str, op: str, subop: str, extra: str, xml: str) -> HookCall:
        env = {**os.environ, "ROAMNET_NVE": nve, "ROAMNET_STORE": store_url, "ROAMNET_HOOK_WAIT": str(wait),
               "ROAMNET_PREPARE_TIMEOUT": str(PREPARE_TIMEOUT_S)}
        started = time.monotonic()
        try:
            out = subprocess.run([sys.executable, "-m", "roamnet.cli", "hook", "libvirt", domain, op, subop, extra],
                                 input=xml, capture_output=True, text=True, env=env, timeout=HOOK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LabError(f"libvirt hook {domain} {op} {subop} {extra} on {nve}: no exit within "
                           f"{HOOK_TIMEOUT_S:.0f} s") from None
        if out.returncode != 0:
            raise LabError(f"libvirt hook {domain} {op} {subop} {extra} on {nve} exited {out.returncode}: "
                           f"{out.stderr.strip()[-400:]}")
        return HookCall(nve, f"{op} {subop} {extra}", round((time.monotonic() - started) * 1000, 1), *said(out.stderr),
                        stdout=out.stdout)

    return run


@dataclass
class Activation:
    """When the lab saw every interface of the VM bound at the destination (a thread: libvirt waits for
    no activation, so the move's steps must not either)."""

    at: float | None = None
    snap: Snapshot | None = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)  # the move failed: nothing to see
    done: threading.Event = field(default_factory=threading.Event)


class Libvirt:
    """A lab move as libvirt makes it, roamnet's part done by the qemu hook at libvirt's points (see the
    module's docstring); the record lists the hook's calls (`hook_calls`) and who activated the move."""

    mode = "libvirt"

    def __init__(self, moves: Moves, runner: Runner, driver: str):
        self.moves, self.lab, self.run, self.driver = moves, moves.lab, runner, driver
        self.calls: list[HookCall] = []
        self.seen = Activation()
        self.xml = self.src = ""

    def hook(self, nve: str, vm: str, op: str, subop: str, extra: str = "-") -> HookCall:
        call = self.run(nve, vm, op, subop, extra, self.xml)
        self.calls.append(call)
        if op == "migrate" and call.stdout.strip():
            raise LabError(f"libvirt hook {vm} migrate begin on {nve} printed on stdout (libvirt would take it for "
                           f"the domain's XML): {call.stdout.strip()[:200]!r}")
        return call

    def ready(self, vm: str, src: str, to: str, wait: float) -> dict:
        if self.lab.control_plane is not None:
            raise LabError(f"{self.lab.control_plane.name}: the libvirt hook drives roamnet's mapping only")
        self.xml, self.src = domain_xml(self.lab.topo, vm), src
        started = time.monotonic()
        self.hook(to, vm, "migrate", "begin")  # prepares; a failure refuses the migration (nothing was started)
        prepared = time.monotonic()
        self.hook(to, vm, "prepare", "begin")
        try:
            self.lab.hv.create_port(vm, to)  # the destination's QEMU, waiting for the migration
        except BaseException:
            self._failed(vm, to)
            raise
        self.hook(to, vm, "start", "begin")
        self.seen.thread = threading.Thread(target=self._watch, args=(vm, to, wait), daemon=True,
                                            name=f"activation:{vm}")
        self.seen.thread.start()
        return {"driver": self.driver, "prepared_ms": round((prepared - started) * 1000, 1)}

    def _watch(self, vm: str, to: str, wait: float) -> None:
        deadline = time.monotonic() + PREPARE_TIMEOUT_S + wait
        try:
            while not self.seen.stop.is_set() and time.monotonic() < deadline:
                snap = self.lab.mapping.wait_for(self.moves.bound_at(vm, to), WATCH_STEP_S)
                if snap is not None:
                    self.seen.at, self.seen.snap = time.monotonic(), snap
                    return
        finally:
            self.seen.done.set()

    def _failed(self, vm: str, to: str) -> None:
        """The incoming migration failed: the destination's QEMU ends, then libvirt's hooks there (abort)."""
        self.lab.hv.remove_port(vm, to)
        self.hook(to, vm, "stopped", "end")
        self.hook(to, vm, "release", "end", "failed")

    def rollback(self, vm: str, src: str, to: str) -> None:
        self.seen.stop.set()
        self.seen.done.wait(WATCH_STEP_S * 4)
        self._failed(vm, to)

    def resumed(self, vm: str) -> None:
        self.hook(self.lab.hv.location[vm], vm, "started", "begin")

    def activation(self, vm: str, to: str, wait: float) -> tuple[float | None, Snapshot | None, dict]:
        """The source's QEMU ends and libvirt's release there completes the move (activating it if QEMU's
        RARP has not yet); when the lab saw the bindings move is the activation."""
        self.lab.hv.remove_port(vm, self.src)
        self.hook(self.src, vm, "stopped", "end")
        release = self.hook(self.src, vm, "release", "end", "migrated")
        self.seen.done.wait(wait)
        return self.seen.at, self.seen.snap, {"activated_by": release.activated_by,
                                              "hook_calls": [c.as_dict() for c in self.calls]}

    def programmed(self, vm: str, to: str, snap: Snapshot | None, wait: float) -> bool:
        return self.lab.wait_converged(wait)  # the move is completed: every NVE has its final state

    def finish(self, vm: str, src: str, wait: float) -> None:
        pass  # the source's QEMU is gone and the hook completed the move
