"""A VM's planned move through the mapping store: what `roamnet migrate VM --store` and the libvirt
hook do, over a `MappingSystem` and the statuses the NVEs' agents publish.

A VM is the set of its interfaces in the mapping (`LogicalPort.vm`); every phase acts on all of them:

    prepare   record the move of every interface to NVE `to` (all or none), then wait (bounded)
              until every NVE it concerns has programmed it (their published converged revisions:
              `concerned`, the NVEs whose part of the mapping holds the VM's CUGs, its tenant's VRF
              or its ends; the others' desired state does not change); on a refusal
              or a timeout, roll back what this call prepared
    activate  the VM runs on the destination (normally its RARP on its new port activates the move,
              by the destination's agent): move the bindings there explicitly
    complete  the move was activated: wait (bounded) until every NVE concerned programmed the activation, then
              forget the move
    abort     roll back a move never activated (the VM still runs where it was)

A prepared move nobody activates is rolled back after its deadline by the destination's agent
(`agent.loop.Agent._expire_moves`); an activated move nobody completes (the source died before libvirt's
release) is completed by it `complete_within` s after its activation (`COMPLETE_TIMEOUT_S` by default).

The destination's own port: an NVE reports itself converged only once every VM port the mapping puts
on it exists, and a hypervisor creates the destination's port only when the migration starts (libvirt
creates the tap when it spawns the incoming QEMU, after its hook ran). So `prepare` waits for every
NVE concerned but the destination unless `port_ready` (the port exists already, as in the lab), and asks only
that the destination's agent has published a status (something will program the port when it comes).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from roamnet.mapping.records import ACTIVATED, Migration, Snapshot
from roamnet.mapping.system import MappingSystem, MoveRefused
from roamnet.mapping.view import Touched
from roamnet.nve.interest import concerned

log = logging.getLogger(__name__)

PREPARE_TIMEOUT_S = 30.0  # a prepared move not activated by then is rolled back
WAIT_S = 10.0  # how long a phase waits for every NVE to program it


class MoveError(Exception):
    """A phase refused or failed; the message says why (and what was rolled back)."""


def natural_key(iface: str) -> list:
    """Sort key of VM interface ids by their numbers (vm1/2 before vm1/10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", iface)]


def vm_ifaces(snap: Snapshot, vm: str) -> list[str]:
    """The VM interfaces of `vm` in the mapping (its logical ports), in index order."""
    ifaces = sorted((p.iface_id for p in snap.ports.values() if p.vm == vm), key=natural_key)
    if not ifaces:
        vms = sorted({p.vm for p in snap.ports.values()})
        shown = ", ".join(vms[:20]) + (f" and {len(vms) - 20} more" if len(vms) > 20 else "")
        raise MoveError(f"no VM {vm!r} in the mapping (VMs there: {shown or 'none'})")
    return ifaces


def vm_of(ifaces: Iterable[str], snap: Snapshot) -> str:
    vms = sorted({snap.ports[i].vm for i in ifaces if i in snap.ports})
    return vms[0] if len(vms) == 1 else ",".join(vms)


class Orchestrator:
    """The phases of planned moves over one mapping system."""

    def __init__(self, mapping: MappingSystem):
        self.mapping = mapping

    # ---- convergence -------------------------------------------------------------------------------
    def concerned(self, ifaces: Iterable[str], ends: Iterable[str]) -> list[str]:
        """The NVEs a change of `ifaces`' bindings or moves (between NVEs `ends`) concerns, from the mapping now
        (nve/interest.concerned): what a phase waits for. At 1,000 NVEs a move concerns a few dozen."""
        ifaces = list(ifaces)

        def read(view) -> frozenset[str]:
            vnis = frozenset(view.ports[i].vni for i in ifaces if i in view.ports)
            return concerned(view, Touched(view.revision, vnis, frozenset(ends), frozenset(ifaces)))
        return sorted(self.mapping.feed.read(read))

    def _lagging(self, nves: list[str], revision: int, wait: float) -> list[str]:
        """Wait (at most `wait` s) until every NVE of `nves` programmed `revision`; the ones behind."""
        st = self.mapping.statuses
        if st.wait_converged(nves, wait, revision):
            return []
        return st.lagging(revision, nves)

    def _behind(self, lagging: list[str], revision: int) -> str:
        st = self.mapping.statuses.all()
        errors = [f"{n}: {e}" for n in lagging if n in st for e in st[n].errors[-2:]]
        silent = [n for n in lagging if n not in st]
        return (f"{', '.join(lagging)} behind revision {revision}"
                + (f" ({', '.join(silent)}: no agent has published a status)" if silent else "")
                + (f"; their last errors: {'; '.join(errors)}" if errors else ""))

    # ---- prepare -----------------------------------------------------------------------------------
    def prepare(self, vm: str, to: str, timeout: float = PREPARE_TIMEOUT_S, wait: float = WAIT_S,
                port_ready: bool = False, complete_within: float = 0.0) -> dict:
        """Prepare the move of every interface of `vm` to NVE `to` (see the module's docstring)."""
        return {"vm": vm, **self.prepare_ifaces(vm_ifaces(self.mapping.snapshot(), vm), to, timeout, wait,
                                                port_ready, complete_within)}

    def prepare_ifaces(self, ifaces: list[str], to: str, timeout: float, wait: float, port_ready: bool,
                       complete_within: float = 0.0) -> dict:
        """Prepare the move of `ifaces` (one VM's) to `to`, all or none; wait (at most `wait` s) until
        every NVE programmed it (all but `to` unless `port_ready`). MoveError, after rolling back what
        this call prepared, on a refusal or a timeout. Interfaces already prepared to `to` (a retried
        prepare) are kept as they are."""
        m = self.mapping
        try:
            snap = m.snapshot()
        except OSError as exc:  # the store did not answer (etcd's StoreError): nothing prepared yet
            raise MoveError(f"{','.join(ifaces)}: prepare to {to} failed, nothing prepared: the mapping store: "
                            f"{exc}") from None
        label = vm_of(ifaces, snap) or ",".join(ifaces)
        if to not in snap.nves:
            raise MoveError(f"{label}: no NVE {to!r} in the mapping (NVEs there: {', '.join(sorted(snap.nves)) or 'none'})")
        held: dict[str, Migration] = {}
        for i in ifaces:
            mig = snap.migrations.get(i)
            if mig is None:
                continue
            if mig.dst != to:
                raise MoveError(f"{label}: {i} is already being moved to {mig.dst} ({mig.state}); abort or complete "
                                f"that move first")
            if mig.state == ACTIVATED:
                raise MoveError(f"{label}: the move of {i} to {to} is already activated: complete it")
            held[i] = mig
        if not port_ready and to not in m.statuses.of([to]):
            raise MoveError(f"{label}: no agent has published a status for NVE {to}: nothing would program the "
                            f"VM's port there (is `roamnet agent --nve {to}` running?)")
        started = time.monotonic()
        done: list[Migration] = []
        try:
            for i in ifaces:
                if i not in held:
                    done.append(m.prepare(i, to, timeout, complete_within))
            revision = m.revision
            ends = {b.nve for i in ifaces if (b := snap.binding_of(i)) is not None} | {to}
            nves = [n for n in self.concerned(ifaces, ends) if port_ready or n != to]
            lagging = self._lagging(nves, revision, wait)
            if lagging:
                raise MoveError(f"the NVEs did not program it within {wait:g} s: {self._behind(lagging, revision)}")
        except (MoveRefused, MoveError, OSError) as exc:  # OSError: the store did not answer (etcd's StoreError)
            kept = self._roll_back(done)
            raise MoveError(f"{label}: prepare to {to} failed, rolled back: {exc}"
                            + (f" (not rolled back: {', '.join(kept)})" if kept else "")) from None
        migs = [*held.values(), *done]
        src = sorted({mg.src for mg in migs})
        log.info("%s: prepared %s -> %s (%s) at revision %d", label, ",".join(src), to, ",".join(ifaces), revision)
        return {"ifaces": ifaces, "from": ",".join(src), "to": to, "phase": "prepared", "timeout_s": timeout,
                "complete_within_s": min(mg.completion_s for mg in migs),
                "deadline": min(mg.deadline for mg in migs), "revision": revision,
                "already_prepared": sorted(held), "waited_for": nves,
                "prepared_ms": round((time.monotonic() - started) * 1000, 1)}

    def _roll_back(self, done: list[Migration]) -> list[str]:
        """Abort the moves of `done`; the interfaces that could not be, and why (activated meanwhile; or the
        store did not answer: that prepared move expires at its deadline)."""
        kept = []
        for mig in done:
            try:
                self.mapping.abort(mig.iface_id)
            except MoveRefused as exc:
                log.warning("%s", exc)
                kept.append(f"{mig.iface_id} (activated meanwhile)")
            except OSError as exc:
                log.warning("%s: abort failed, the move expires at its deadline: %s", mig.iface_id, exc)
                kept.append(f"{mig.iface_id} (the store did not answer; it expires at its deadline)")
        return kept

    # ---- the other phases ----------------------------------------------------------------------------
    def moves(self, vm: str) -> tuple[list[str], dict[str, Migration]]:
        """`vm`'s interfaces and the moves in progress of those (MoveError if there are none)."""
        snap = self.mapping.snapshot()
        ifaces = vm_ifaces(snap, vm)
        migs = {i: snap.migrations[i] for i in ifaces if i in snap.migrations}
        if not migs:
            raise MoveError(f"{vm}: no move in progress (nothing prepared)")
        if len({mg.dst for mg in migs.values()}) > 1:
            raise MoveError(f"{vm}: its interfaces are being moved to different NVEs: "
                            + ", ".join(f"{i} -> {mg.dst}" for i, mg in sorted(migs.items())))
        return ifaces, migs

    @staticmethod
    def _ends(migs: dict[str, Migration]) -> set[str]:
        return {n for mg in migs.values() for n in (mg.src, mg.dst)}

    @staticmethod
    def _record(vm: str, migs: dict[str, Migration], phase: str, **extra) -> dict:
        first = next(iter(migs.values()))
        return {"vm": vm, "ifaces": sorted(migs, key=natural_key), "from": ",".join(sorted({mg.src for mg in migs.values()})),
                "to": first.dst, "phase": phase, **extra}

    def activate(self, vm: str, wait: float = WAIT_S) -> dict:
        """Move `vm`'s bindings to the destination of its prepared move (the orchestrator knows the VM
        runs there), then wait (at most `wait` s) until every NVE programmed that."""
        _, migs = self.moves(vm)
        return self._activate(vm, migs, wait)

    def _activate(self, vm: str, migs: dict[str, Migration], wait: float) -> dict:
        was = sorted(i for i, mg in migs.items() if mg.state == ACTIVATED)
        for i in sorted(migs):
            try:
                self.mapping.activate(i)
            except MoveRefused as exc:
                raise MoveError(f"{vm}: activation on {migs[i].dst} refused: {exc}") from None
        revision = self.mapping.revision
        lagging = self._lagging(self.concerned(migs, self._ends(migs)), revision, wait)
        log.info("%s: activated on %s at revision %d%s", vm, migs[sorted(migs)[0]].dst, revision,
                 f"; not yet programmed by {', '.join(lagging)}" if lagging else "")
        return self._record(vm, migs, "activated", already_activated=was, revision=revision,
                            converged=not lagging, lagging=lagging)

    def complete(self, vm: str, wait: float = WAIT_S, activate: bool = False) -> dict:
        """Forget `vm`'s activated move once every NVE programmed the activation (waits at most `wait`
        s; completes even if some NVE is behind then, and says which: the bindings have moved either
        way). A move not activated is refused, unless `activate` (the orchestrator knows the VM runs
        on the destination: it is activated first)."""
        _, migs = self.moves(vm)
        pending = sorted(i for i, mg in migs.items() if mg.state != ACTIVATED)
        by = "announcement"
        if pending:
            dst = migs[pending[0]].dst
            if not activate:
                raise MoveError(f"{vm}: the move to {dst} is not activated ({', '.join(pending)} only prepared: the "
                                f"VM has not announced itself there); activate it if it runs there, or abort it")
            self._activate(vm, migs, 0)
            by = "orchestrator"
        revision = self.mapping.revision
        lagging = self._lagging(self.concerned(migs, self._ends(migs)), revision, wait)
        if lagging:
            log.warning("%s: completing although not every NVE programmed the activation within %g s: %s", vm, wait,
                        self._behind(lagging, revision))
        for i in sorted(migs):
            try:
                self.mapping.complete(i)
            except MoveRefused as exc:
                if self.mapping.migration(i) is not None:
                    raise MoveError(f"{vm}: {exc}") from None
                # completed meanwhile by someone else: done
        log.info("%s: move to %s completed (activated by %s)", vm, migs[sorted(migs)[0]].dst, by)
        return self._record(vm, migs, "completed", activated_by=by, revision=revision, converged=not lagging,
                            lagging=lagging)

    def abort(self, vm: str) -> dict:
        """Roll back `vm`'s prepared move (never activated): the VM stays where it runs."""
        _, migs = self.moves(vm)
        activated = sorted(i for i, mg in migs.items() if mg.state == ACTIVATED)
        if activated:
            raise MoveError(f"{vm}: the move to {migs[activated[0]].dst} is already activated (the VM runs there): "
                            f"it cannot be rolled back; complete it")
        for i in sorted(migs):
            try:
                self.mapping.abort(i)
            except MoveRefused as exc:
                raise MoveError(f"{vm}: cannot roll back: {exc}") from None
        log.info("%s: move to %s rolled back", vm, migs[sorted(migs)[0]].dst)
        return self._record(vm, migs, "rolled-back")
