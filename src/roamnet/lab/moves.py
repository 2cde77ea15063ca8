"""Live migrations in the lab: the orchestrator's side of a move, for every control plane.

A make-before-break move has four phases (`prepare -> resume -> activate -> complete`, or `abort`),
each callable on its own as an orchestrator's hook would (`roamnet migrate --phase`), or all of them
by `migrate`. Every way of moving a VM shares one skeleton (`migrate`):

    ready the destination -> stop, pause, resume (the hypervisor) -> activation -> every NVE
    programmed -> finish (forget the move, remove the source's port) -> the record

and differs only in its strategy: `Prepared` (roamnet, make-before-break), `Learn` (roamnet, the
destination NVE claims the port when it comes up), `Located` (another control plane, e.g. FRR
BGP-EVPN: converged when it locates the VM), `Steered` (another control plane that the orchestrator
drives through a move, e.g. OVN's port options).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from roamnet import names
from roamnet.lab.errors import LabError
from roamnet.lab.hypervisor import Hypervisor
from roamnet.lab.plan import LabPlan
from roamnet.mapping.records import ACTIVATED, Snapshot
from roamnet.mapping.system import MappingSystem, MoveRefused
from roamnet.orchestrator.moves import MoveError, Orchestrator

log = logging.getLogger(__name__)

PREPARE_TIMEOUT_S = 30.0  # a prepared move not activated by then is rolled back
EXPIRE_MARGIN_S = 0.05  # the prepare timer fires this long after the mapping's deadline
ACTIVATE_WAIT_S = 1.0  # after resuming, the orchestrator activates explicitly if no announcement did


class Lab(Protocol):
    """The parts of the lab engine that moves drive (the engine owns a `Moves`)."""

    name: str
    topo: Any  # intent.model.Topology
    plan: LabPlan
    hv: Hypervisor
    mapping: MappingSystem
    control_plane: Any  # engine.ControlPlane | None

    def wait_converged(self, timeout: float, revision: int | None = None) -> bool: ...


def poll(cond: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    """True as soon as cond() holds, False if it still does not after `timeout` s (bounded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


class Strategy(Protocol):
    """What differs between ways of moving a VM (see the module's docstring)."""

    mode: str

    def ready(self, vm: str, src: str, to: str, wait: float) -> dict: ...
    def rollback(self, vm: str, src: str, to: str) -> None: ...  # the hypervisor failed after ready
    def resumed(self, vm: str) -> None: ...
    def activation(self, vm: str, to: str, wait: float) -> tuple[float | None, Snapshot | None, dict]: ...
    def programmed(self, vm: str, to: str, snap: Snapshot | None, wait: float) -> bool: ...
    def finish(self, vm: str, src: str, wait: float) -> None: ...


class Moves:
    """The lab's moves in progress and done."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.pending: dict[str, dict] = {}  # vm -> its prepared move (from, to, timer, resumed)
        self.stopped: dict[str, tuple[str, float]] = {}  # vm -> (server it stopped on, when): cold moves
        self.migrations: list[dict] = []
        self._lock = threading.Lock()

    # ---- helpers --------------------------------------------------------------------------------
    @property
    def orchestrator(self) -> Orchestrator:
        """The orchestrator's phases over the lab's mapping: what `roamnet migrate --store` and the libvirt
        hook run (the lab's mapping is replaced at up, so made when asked for)."""
        return Orchestrator(self.lab.mapping)

    def ifaces(self, vm: str) -> list[str]:
        return [names.iface_id(vm, i) for i in range(len(self.lab.topo.vms[vm].interfaces))]

    def bound_at(self, vm: str, server: str) -> Callable[[Snapshot], bool]:
        """Predicate on a snapshot: every interface of `vm` is bound to `server`."""
        ifaces = self.ifaces(vm)
        return lambda s: all((b := s.binding_of(i)) is not None and b.nve == server for i in ifaces)

    def activated(self, snap: Snapshot, vm: str) -> bool:
        return all((m := snap.migrations.get(i)) is not None and m.state == ACTIVATED for i in self.ifaces(vm))

    def check(self, vm: str, to: str) -> str:
        """The VM's server now, if moving `vm` to `to` makes sense; LabError otherwise."""
        lab = self.lab
        if vm not in lab.topo.vms:
            raise LabError(f"no VM {vm!r} in lab {lab.name}")
        node = lab.plan.nodes.get(to)
        if node is not None and node.kind == "tor":
            raise LabError(f"{to} is the ToR switch of domain {node.domain}: it hosts no VMs")
        if node is None or node.kind != "server":
            raise LabError(f"no server {to!r} in lab {lab.name}")
        if vm in self.pending:
            raise LabError(f"{vm}: a move to {self.pending[vm]['to']} is already in progress")
        if vm in self.stopped:
            raise LabError(f"{vm} is stopped (on {self.stopped[vm][0]}): start it (roamnet start {lab.name} {vm} --on ...)")
        if lab.hv.location[vm] == to:
            raise LabError(f"{vm} is already on {to}")
        return lab.hv.location[vm]

    def _pending(self, vm: str) -> dict:
        if vm not in self.pending:
            raise LabError(f"{vm}: no move in progress (prepare it first)")
        return self.pending[vm]

    def _record(self, rec: dict, at: float, resumed: float) -> dict:
        nodes = self.lab.plan.nodes
        rec.update({"at_mono": at, "resumed_mono": resumed, "dark_ms": round((resumed - at) * 1000, 1),
                    "dc_from": nodes[rec["from"]].dc, "dc_to": nodes[rec["to"]].dc})
        self.migrations.append(rec)
        return rec

    # ---- a whole move: one skeleton -------------------------------------------------------------
    def strategy(self, prepare: bool) -> Strategy:
        cp = self.lab.control_plane
        if cp is not None:  # a control plane that steers moves itself (OVN's port options): Steered
            return Steered(self) if getattr(cp, "steers_moves", False) else Located(self)
        return Prepared(self) if prepare else Learn(self)

    def migrate(self, vm: str, to: str, pause_ms: int = 0, wait: float = 10.0, prepare: bool = True,
                how: Strategy | None = None) -> dict:
        """Live-migrate `vm` to server `to` (by strategy `how`, else the one for the lab's control plane and
        `prepare`); returns the migration record."""
        with self._lock:
            how = how or self.strategy(prepare)
            src = self.check(vm, to)
            rec = {"vm": vm, "from": src, "to": to, "pause_ms": pause_ms, "mode": how.mode}
            rec.update(how.ready(vm, src, to, wait))
            try:
                sw = self.lab.hv.stop_and_resume(vm, src, to, pause_ms)
            except LabError as exc:  # the hypervisor's migration failed (QEMU's): the VM still runs on src
                how.rollback(vm, src, to)
                self.migrations.append({**rec, "failed": str(exc), "rolled_back": True, "at_mono": time.monotonic()})
                raise
            at, resumed = sw.stopped, sw.resumed
            rec.update(sw.figures)
            how.resumed(vm)
            activated, snap, extra = how.activation(vm, to, wait)
            converged = how.programmed(vm, to, snap, wait)
            done = time.monotonic()
            how.finish(vm, src, wait)
            rec.update(extra)
            rec.update({"activated_mono": activated,
                        "mapped_ms": round((activated - resumed) * 1000, 1) if activated else None,
                        "converged_ms": round((done - resumed) * 1000, 1) if converged else None,
                        "programmed_ms": round((done - activated) * 1000, 1) if converged and activated else None})
            return self._record(rec, at, resumed)

    # ---- cold moves (draft §3.2) ------------------------------------------------------------------
    def stop(self, vm: str) -> dict:
        """The VM stops: its ports go away; its bindings stay, stopped (MAC and addresses reserved)."""
        with self._lock:
            lab = self.lab
            if lab.control_plane is not None:
                raise LabError(f"{lab.control_plane.name} has no stopped VMs (cold moves are roamnet's)")
            if vm not in lab.topo.vms:
                raise LabError(f"no VM {vm!r} in lab {lab.name}")
            if vm in self.stopped:
                raise LabError(f"{vm} is already stopped (on {self.stopped[vm][0]})")
            if vm in self.pending:
                raise LabError(f"{vm}: a move to {self.pending[vm]['to']} is in progress")
            server, at = lab.hv.location[vm], time.monotonic()
            if lab.hv.is_qemu(vm):  # the guest powers off: its QEMU ends, its taps with it
                lab.hv.remove_port(vm, server)
                for iface in self.ifaces(vm):  # then the orchestrator tells the mapping (libvirt's release)
                    lab.mapping.stop(iface)
            else:
                lab.hv.switch(vm, server, up=False)  # the VM stops
                for iface in self.ifaces(vm):  # the orchestrator tells the mapping, then the tap goes
                    lab.mapping.stop(iface)
                lab.hv.remove_port(vm, server)
            self.stopped[vm] = (server, at)
            converged = lab.wait_converged(10.0)
            return {"vm": vm, "phase": "stopped", "on": server, "at_mono": at,
                    "converged_ms": round((time.monotonic() - at) * 1000, 1) if converged else None}

    def start(self, vm: str, to: str, wait: float = 10.0) -> dict:
        """The stopped VM starts on server `to`, with an empty ARP cache (a cold boot): its bindings
        move there (next sequence number), then its port comes up. The move record's dark time is the
        whole time it was stopped."""
        with self._lock:
            lab = self.lab
            if vm not in self.stopped:
                raise LabError(f"{vm} is not stopped" if vm in lab.topo.vms else f"no VM {vm!r} in lab {lab.name}")
            node = lab.plan.nodes.get(to)
            if node is None or node.kind != "server":
                raise LabError(f"no server {to!r} in lab {lab.name}" if node is None or node.kind != "tor"
                               else f"{to} is the ToR switch of domain {node.domain}: it hosts no VMs")
            src, at = self.stopped[vm]
            if lab.hv.is_qemu(vm):
                self._boot(vm, to)
            else:
                lab.hv.create_port(vm, to)
                try:
                    for iface in self.ifaces(vm):
                        lab.mapping.start(iface, to)
                except MoveRefused as exc:
                    lab.hv.remove_port(vm, to)
                    raise LabError(f"{vm}: start on {to} refused: {exc}") from None
                lab.hv.cold_boot(vm)
                lab.hv.switch(vm, to, up=True)
            del self.stopped[vm]
            lab.hv.location[vm] = to
            resumed = time.monotonic()
            ifaces = self.ifaces(vm)
            attached = lab.mapping.wait_for(lambda s: all(not s.binding_of(i).detached for i in ifaces), wait)
            converged = attached is not None and lab.wait_converged(max(0.1, wait - (time.monotonic() - resumed)))
            done = time.monotonic()
            rec = {"vm": vm, "from": src, "to": to, "mode": "cold", "pause_ms": round((resumed - at) * 1000),
                   "activated_mono": resumed, "mapped_ms": 0.0,
                   "converged_ms": round((done - resumed) * 1000, 1) if converged else None}
            return self._record(rec, at, resumed)

    def _boot(self, vm: str, to: str) -> None:
        """A stopped QEMU guest starts on `to` as libvirt starts a domain: the mapping first (the orchestrator's
        start), then a fresh QEMU there, its taps up at once, waited for until the guest says ready (a cold
        boot: nothing of its ARP cache or connections is left). A refused start boots nothing; a boot that
        fails leaves the VM stopped, on `to`."""
        try:
            for iface in self.ifaces(vm):
                self.lab.mapping.start(iface, to)
        except MoveRefused as exc:
            raise LabError(f"{vm}: start on {to} refused: {exc}") from None
        try:
            self.lab.hv.plug(vm, to)
        except BaseException:
            for iface in self.ifaces(vm):
                self.lab.mapping.stop(iface)
            self.stopped[vm] = (to, self.stopped[vm][1])
            raise

    # ---- make-before-break phases (roamnet's control plane) -------------------------------------
    def prepare(self, vm: str, to: str, timeout: float = PREPARE_TIMEOUT_S, wait: float = 10.0) -> dict:
        """Phase 1: the destination gets the VM's port (down) and every NVE gets ready; rolled back by
        itself if not activated within `timeout` s."""
        with self._lock:
            src = self.check(vm, to)
            return {"vm": vm, "from": src, "to": to, "phase": "prepared", "timeout_s": timeout,
                    **self._prepare(vm, src, to, timeout, wait)}

    def _prepare(self, vm: str, src: str, to: str, timeout: float, wait: float) -> dict:
        lab = self.lab
        if lab.control_plane is not None:
            raise LabError(f"{lab.control_plane.name} has no prepared moves (use prepare=False)")
        started = time.monotonic()
        lab.hv.create_port(vm, to)
        try:  # the orchestrator's prepare, as through the store; the port exists: the destination must program it too
            self.orchestrator.prepare_ifaces(self.ifaces(vm), to, timeout, wait, port_ready=True)
        except MoveError as exc:
            lab.hv.remove_port(vm, to)
            raise LabError(str(exc)) from None
        lab.hv.port_up(vm, to)  # as libvirt's tap; its VM not there yet (a prepared move's port claims nothing)
        timer = threading.Timer(timeout + EXPIRE_MARGIN_S, self._expire, args=(vm,))
        timer.daemon = True
        self.pending[vm] = {"from": src, "to": to, "timer": timer, "resumed": False}
        timer.start()
        return {"prepared_ms": round((time.monotonic() - started) * 1000, 1)}

    def resume(self, vm: str, pause_ms: int = 0, announce: bool = True) -> dict:
        """Phase 2 (the hypervisor's part): stop on the source, pause, run on the destination, announce
        (announce=False: a VM whose announcements are lost; the move stays prepared until activated)."""
        with self._lock:
            p = self._pending(vm)
            if p["resumed"]:
                raise LabError(f"{vm} already runs on {p['to']}")
            sw = self.lab.hv.stop_and_resume(vm, p["from"], p["to"], pause_ms, announce)
            p["resumed"] = True
            return {"vm": vm, "from": p["from"], "to": p["to"], "phase": "resumed", "pause_ms": pause_ms,
                    "dark_ms": round((sw.resumed - sw.stopped) * 1000, 1), **sw.figures}

    def activate(self, vm: str) -> dict:
        """Phase 3, explicitly (normally the VM's first announcement on its new port activates)."""
        with self._lock:
            p = self._pending(vm)
            self._activate(vm)
            return {"vm": vm, "to": p["to"], "phase": "activated"}

    def _activate(self, vm: str) -> None:
        """The mapping's side of an explicit activation, as the libvirt hook's (orchestrator/moves.py)."""
        try:
            self.orchestrator.activate(vm, wait=0)
        except MoveError as exc:
            raise LabError(str(exc)) from None

    def complete(self, vm: str, wait: float = 10.0) -> dict:
        """Phase 4: once every NVE programmed the activation, forget the move; the source tap goes."""
        with self._lock:
            return self._complete(vm, wait)

    def _complete(self, vm: str, wait: float) -> dict:
        p = self._pending(vm)
        if not self.activated(self.lab.mapping.snapshot(), vm):
            raise LabError(f"{vm}: the move to {p['to']} is not activated yet")
        try:  # what the libvirt hook's release on the source does (orchestrator/moves.py)
            converged = self.orchestrator.complete(vm, wait)["converged"]
        except MoveError as exc:
            raise LabError(str(exc)) from None
        p["timer"].cancel()
        del self.pending[vm]
        self.lab.hv.remove_port(vm, p["from"])
        return {"vm": vm, "from": p["from"], "to": p["to"], "phase": "completed", "converged": converged}

    def abort(self, vm: str) -> dict:
        """Roll back a prepared move that was not activated: the VM stays where it runs."""
        with self._lock:
            self._pending(vm)
            self._abort(vm)
            return self._undo(vm)

    def _abort(self, vm: str) -> None:
        """The mapping's side of a rollback, as the libvirt hook's abort (orchestrator/moves.py)."""
        try:
            self.orchestrator.abort(vm)
        except MoveError as exc:
            raise LabError(str(exc)) from None

    def _undo(self, vm: str) -> dict:
        """The lab's side of a rollback (the mapping's is done): the hypervisor's port goes."""
        p = self.pending.pop(vm)
        p["timer"].cancel()
        if p["resumed"]:  # the hypervisor moves it back (a migration that failed after the switch)
            self.lab.hv.stop_and_resume(vm, p["to"], p["from"], 0)
        self.lab.hv.remove_port(vm, p["to"])
        log.info("%s: move to %s rolled back", vm, p["to"])
        return {"vm": vm, "from": p["from"], "to": p["to"], "phase": "rolled-back"}

    def _expire(self, vm: str) -> None:
        """The prepare timer: the mapping rolls back what is past its deadline (unless the destination's
        agent did already); the lab follows once the move's records are gone."""
        with self._lock:
            self.lab.mapping.expire()
            snap = self.lab.mapping.snapshot()
            if vm in self.pending and not any(i in snap.migrations for i in self.ifaces(vm)):
                self._undo(vm)
                self.migrations.append({"vm": vm, "rolled_back": True, "at_mono": time.monotonic()})

    def cancel_timers(self) -> None:
        for pending in self.pending.values():
            pending["timer"].cancel()
        self.pending.clear()


# ---- strategies ----------------------------------------------------------------------------------

class Prepared:
    """roamnet's make-before-break: prepared before the VM stops, activated by its announcement (or
    explicitly after ACTIVATE_WAIT_S), completed once every NVE programmed the activation."""

    mode = "prepared"

    def __init__(self, moves: Moves):
        self.moves, self.lab = moves, moves.lab

    def ready(self, vm: str, src: str, to: str, wait: float) -> dict:
        return self.moves._prepare(vm, src, to, PREPARE_TIMEOUT_S, wait)

    def rollback(self, vm: str, src: str, to: str) -> None:
        self.moves._abort(vm)  # the mapping's side, then the lab's (the destination's port)
        self.moves._undo(vm)

    def resumed(self, vm: str) -> None:
        self.moves.pending[vm]["resumed"] = True

    def activation(self, vm: str, to: str, wait: float) -> tuple[float | None, Snapshot | None, dict]:
        snap = self.lab.mapping.wait_for(self.moves.bound_at(vm, to), ACTIVATE_WAIT_S)
        activated_by = "announcement"
        if snap is None:  # no announcement heard: the orchestrator knows the VM runs there
            activated_by = "explicit"
            self.moves._activate(vm)
            snap = self.lab.mapping.snapshot()
        return time.monotonic(), snap, {"activated_by": activated_by}

    def programmed(self, vm: str, to: str, snap: Snapshot | None, wait: float) -> bool:
        return self.lab.wait_converged(wait, snap.revision)

    def finish(self, vm: str, src: str, wait: float) -> None:
        self.moves._complete(vm, wait)


class Learn:
    """roamnet's learn-driven path: nothing prepared; the destination NVE claims the port when it comes up."""

    mode = "learn"

    def __init__(self, moves: Moves):
        self.moves, self.lab = moves, moves.lab

    def ready(self, vm: str, src: str, to: str, wait: float) -> dict:
        self.lab.hv.create_port(vm, to)  # pre-copy: the destination tap exists, down
        return {}

    def rollback(self, vm: str, src: str, to: str) -> None:
        self.lab.hv.remove_port(vm, to)

    def resumed(self, vm: str) -> None:
        pass

    def activation(self, vm: str, to: str, wait: float) -> tuple[float | None, Snapshot | None, dict]:
        snap = self.lab.mapping.wait_for(self.moves.bound_at(vm, to), wait)
        return (time.monotonic() if snap is not None else None), snap, {}

    def programmed(self, vm: str, to: str, snap: Snapshot | None, wait: float) -> bool:
        return snap is not None and self.lab.wait_converged(wait, snap.revision)

    def finish(self, vm: str, src: str, wait: float) -> None:
        self.lab.hv.remove_port(vm, src)  # the source's tap goes away once the VM runs elsewhere


class Located(Learn):
    """Another control plane: the same hypervisor actions; converged when it locates the VM."""

    def __init__(self, moves: Moves):
        super().__init__(moves)
        self.mode = moves.lab.control_plane.name

    def activation(self, vm: str, to: str, wait: float) -> tuple[float | None, Snapshot | None, dict]:
        return None, None, {}

    def programmed(self, vm: str, to: str, snap: Snapshot | None, wait: float) -> bool:
        cp = self.lab.control_plane
        return poll(lambda: cp.located(self.lab, vm, to), wait, step=0.001)


class Steered(Located):
    """Another control plane that the orchestrator steers through a move (OVN: the logical port's
    options), with the same hypervisor actions: its hooks `move_ready(lab, vm, src, to, wait)` before the
    VM stops (returns a dict for the record), `move_resumed(lab, vm, src, to)` once it runs on `to`,
    `delivering(lab, vm, to)` (its activation: `to` passes the VM's traffic), `programmed_everywhere(lab,
    wait)` (converged: every node has caught up since) and `move_finish(lab, vm, src, to, wait)` before the
    source's port goes (the control plane's own part of removing it included)."""

    def __init__(self, moves: Moves):
        super().__init__(moves)
        self.cp = moves.lab.control_plane
        self.src = self.to = ""
        self.delivered = False

    def ready(self, vm: str, src: str, to: str, wait: float) -> dict:
        self.src, self.to = src, to
        self.lab.hv.create_port(vm, to)  # the destination's tap, down (the control plane attaches it)
        return self.cp.move_ready(self.lab, vm, src, to, wait) or {}

    def resumed(self, vm: str) -> None:
        self.cp.move_resumed(self.lab, vm, self.src, self.to)

    def activation(self, vm: str, to: str, wait: float) -> tuple[float | None, Snapshot | None, dict]:
        self.delivered = poll(lambda: self.cp.delivering(self.lab, vm, to), wait, step=0.002)
        return (time.monotonic() if self.delivered else None), None, {}

    def programmed(self, vm: str, to: str, snap: Snapshot | None, wait: float) -> bool:
        return self.delivered and self.cp.programmed_everywhere(self.lab, wait)

    def finish(self, vm: str, src: str, wait: float) -> None:
        self.cp.move_finish(self.lab, vm, src, self.to, wait)
        self.lab.hv.remove_port(vm, src)
