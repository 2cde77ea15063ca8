"""The NVE agent: turns the mapping into kernel state in one NVE's namespace, reports moves, and
publishes its status.

The loop is: something changed (mapping watch, a netlink link event, a RARP/GARP on a VM port, or the
periodic resync) -> read actual (or the cache) -> this NVE's part of the mapping -> claim arrivals ->
desired -> plan -> apply -> publish status.

The mapping is never read whole per change: the process keeps one view of it current from the
watch's events (mapping/view.py), and a pass takes only its NVE's part of it (nve/interest.py
`project`: the segments it hosts, the moves to it, its tenants' host routes, its ports' VMs). A batch
of changes that touches none of that part (`Interest.concerns`) runs no pass: the agent only
advances its converged revision, since its desired state cannot have changed.

A VM port that appears here (its alias carries the VM interface id, as OVN's iface-id does) while
the mapping has it elsewhere is reported as a move, and so is a RARP/GARP received from a VM port.

The agent reaches the mapping only through a `MappingClient` and the kernel only through the kernel
object it is given (`dataplane.kernel.Kernel`, or a model of one in unit tests): it holds no lab,
store or other agent. Convergence is read from the status it publishes (/status/<nve>).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from roamnet.mapping.client import ANNOUNCED, PORT_UP, MappingClient, MoveRefused, Refused
from roamnet.mapping.records import ACTIVATED, PREPARED, Nve, NveStatus, Snapshot
from roamnet.mapping.view import Touched
from roamnet.nve.desired import NveDesired, compute_desired, is_trunk
from roamnet.nve.interest import Interest, Scope, project, scope_of, watched
from roamnet.nve.partial import Drift, drift, merge, restrict
from roamnet.nve.plan import (
    STRUCTURAL,
    Actual,
    Change,
    VrfChange,
    apply_to,
    plan,
    plan_claimant_ports,
    plan_filters,
    plan_vrfs,
    plan_vteps,
)

log = logging.getLogger(__name__)

RESYNC_S = 2.0  # the periodic resync (a kernel read and a whole pass), at least this often apart...
RESYNC_SHARE = 0.05  # ...and far enough apart that whole passes take at most this share of a core: a border
#                      holding every tenant's host routes (100,000 VMs: ~1 s a whole pass) resyncs every ~20 s
PRUNE_HOLD_S = 0.5  # a segment no longer needed is removed after this long: deleting devices holds
#                     the kernel's RTNL lock for tens of ms, which must not delay other NVEs' updates
#                     right after a move (and a VM moving straight back keeps its segment)
KEEP_ERRORS = 20
KEEP_CHANGES = 64  # the last pass's changes a status shows (a border's first pass at 100,000 VMs has ~100,000:
#   5 MB, more than etcd takes in one request)


class KernelLike(Protocol):
    """What the agent needs of a kernel (dataplane.kernel.Kernel, dataplane.switch.SwitchKernel)."""

    ns: str

    def read(self) -> tuple[Actual, list[str]]: ...
    def apply(self, changes: list) -> list[str]: ...
    def port_named(self, ifname: str) -> list[str]: ...
    def forget_filters(self) -> None: ...
    def watch(self, stop: threading.Event, on_link: Callable[[], None],
              on_announcement: Callable[[str, str], None]) -> None: ...
    def close(self) -> None: ...


@dataclass
class AgentStats:
    """The agent's counters; published as `NveStatus` (`Agent.status()`) and read live by the
    Prometheus collector (agent/metrics.py)."""

    reconciles: int = 0
    resyncs: int = 0
    kernel_reads: int = 0
    changes_applied: int = 0
    moves_reported: int = 0
    announcements_seen: int = 0
    claims_refused: int = 0  # reports the mobility rules refused (frozen or sticky MACs)
    converged_revision: int = 0
    idle_advances: int = 0  # mapping changes that concerned none of this NVE's part: no pass, only the revision
    scoped_passes: int = 0  # passes that recomputed only the VNIs and tenants their changes touched
    drift_scoped_passes: int = 0  # of them, passes after a kernel event (scoped by where the kernel differed)
    statuses_published: int = 0  # status writes
    pass_cpu_s: float = 0.0  # CPU time (of the pass's thread) spent in passes
    whole_pass_cpu_s: float = 0.0  # CPU time of the last whole pass (it sets the resync period)
    idle_cpu_s: float = 0.0  # CPU time spent advancing the converged revision without a pass
    programmed_at: float = 0.0  # monotonic time the last pass with changes finished
    last_pass_ms: float = 0.0
    last_changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the last KEEP_ERRORS
    error_count: int = 0  # every error so far (a counter for the metrics: agent/metrics.py)
    expired: list[str] = field(default_factory=list)  # the last KEEP_ERRORS moves to here the expiry ended, and why

    def error(self, *msgs: str) -> None:
        self.errors = (self.errors + list(msgs))[-KEEP_ERRORS:]
        self.error_count += len(msgs)


class Agent:
    """One NVE's agent. `start()` runs it in threads; `reconcile()` is one synchronous pass."""

    def __init__(self, client: MappingClient, nve: Nve, kernel: KernelLike,
                 clock: Callable[[], float] = time.monotonic, publish_idle: bool = False):
        """`publish_idle`: publish a converged revision advanced without a pass at once; False (the
        default) publishes it when a waiter asks (a SyncRequest naming this NVE: mapping/status.py), at
        the next pass or at the resync, so a change that concerns an NVE not at all costs it no store write."""
        self.client, self.nve, self.kernel = client, nve, kernel
        self.publish_idle = publish_idle
        self.ns = kernel.ns
        self.stats = AgentStats()
        self._clock = clock
        self._unneeded_since: dict[int, float] = {}  # VNI -> when its segment stopped being desired
        self._prune_timer: threading.Timer | None = None
        # the kernel as last read plus what this agent applied since: a pass woken by the mapping
        # alone plans against it; a kernel event, an error or the resync makes the next pass read the
        # kernel again, and a pass that changed devices (STRUCTURAL) reads it again at its end
        self._cache: tuple[Actual, list[str]] | None = None
        self._kernel_dirty = True
        self._published: NveStatus | None = None
        # what the last pass's part of the mapping depended on; mapping changes that concern none of it
        # only advance the converged revision (`_idle_revision`) without a pass
        self._interest: Interest | None = None
        self._need_pass = True
        self._idle_revision = 0
        self._sync_to = 0  # the highest revision a waiter asked this NVE to publish its status at
        self._whole = False  # the last pass made this NVE whole (converged at its revision)
        # what the batches since the last pass touched (the next pass's scope), or a whole pass needed
        # (start, a change of NVEs, tenants, CUGs or policy, a reload, a kernel read)
        self._full = True
        self._touched_vnis: set[int] = set()
        self._touched_ifaces: set[str] = set()
        self._note = threading.Lock()  # guards the six above between the feed's callback and the loop
        self._unfollow: Callable[[], None] | None = None
        self._want: NveDesired | None = None  # the last pass's desired state, whole (a scoped pass merges into it)
        self._planned_in: tuple | None = None  # the inputs the claimant chains and filters were last planned from
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _changes(self, snap: Snapshot, actual: Actual,
                 scope: Scope | None = None) -> tuple[list[Change | VrfChange], bool]:
        """The changes to apply, and whether they make this NVE whole: not while a VM port the
        mapping binds here is still to be created by the hypervisor (lab up plugs VMs after
        registering them; converged must mean forwarding). With a `scope` (`snap` then holds only its
        VNIs: nve/partial.py), only the scope's part is recomputed and diffed."""
        if scope is None or self._want is None:
            want = part = compute_desired(snap, self.nve.name)
            have, scope = actual, None
        else:
            part = compute_desired(snap, self.nve.name, scope.tenants, scope.l2)
            want = merge(self._want, part, scope)
            have = restrict(actual, scope, part)
        self._want = want
        waiting = any(not is_trunk(a) and a not in actual.ports for a in want.attachments)
        # the VXLAN guard and port filters first: a VM port is attached to its bridge only in a pass that
        # has given it its filter
        local = frozenset(i for i, p in want.local_ports.items() if p.attachment == i)  # VM ports of a bridge here
        # the claimant chains and the filters are planned over everything here; a scoped pass (the kernel's
        # ports as the last pass left them) skips them when their inputs are the very ones it planned last
        claim_in = (local, {i: snap.ports.get(i) for i in actual.devices})
        filter_in = (want.filters, want.arp_flood)
        same = scope is not None and self._planned_in == (claim_in, filter_in)
        self._planned_in = (claim_in, filter_in)
        return ((plan_claimant_ports(snap, local, actual) if not same else [])
                + plan_vteps(want.vteps, actual)
                + (plan_filters(want.filters, want.arp_flood, actual) if not same else [])
                + self._hold_prunes(plan(part, have), scope) + plan_vrfs(part.vrfs, have.vrfs)), not waiting

    # ---- one pass ------------------------------------------------------------------------------
    def _claim_arrivals(self, snap: Snapshot, ports: list[str]) -> bool:
        """Tell the mapping which of the interfaces bound here have no port up here (detached), and
        claim the ones whose port is up here while their binding is detached elsewhere: a port being
        up is no proof the VM runs here while its port is also up where it is bound (libvirt brings
        the destination's tap up for the whole pre-copy; a clone does the same), so only a detached
        binding moves this way; otherwise the VM's own announcement (or the orchestrator) moves it.
        Not for a prepared move to here: that move is activated by the announcement (or explicitly)."""
        changed = False
        up = set(ports)
        for b in snap.bindings.values():
            if b.nve == self.nve.name and b.iface_id in snap.ports and b.detached == (b.iface_id in up):
                changed |= self._set_detached(b.iface_id, b.iface_id not in up)
        now = time.time()
        for iface in ports:
            b = snap.binding_of(iface)
            mig = snap.migrations.get(iface)
            if mig is not None and mig.state == PREPARED and mig.dst == self.nve.name:
                continue
            if b is not None and b.nve != self.nve.name and b.detached and not b.stopped and not b.frozen_at(now):
                changed |= self._report(iface, PORT_UP)
        return changed

    def _expire_moves(self, snap: Snapshot) -> bool:
        """End the moves to this NVE past their deadline (the mapping's clock): a prepared move is rolled
        back (the VM never came); an activated one is completed (its completion never came: the source
        died before libvirt's release, say). The destination's agent owns this (no lab, no orchestrator
        needed); each is a compare-and-swap that leaves a move activated, completed or prepared again
        meanwhile. Checked every pass, so within one resync period (`resync_s`) of the deadline; each
        expiry is logged and kept in the status (`NveStatus.expired`)."""
        now = self.client.now()
        if not any(m.dst == self.nve.name and m.deadline and m.deadline < now for m in snap.migrations.values()):
            return False
        try:
            expired = self.client.expire(self.nve.name)
        except MoveRefused as exc:
            self.stats.error(str(exc))
            return False
        for m in expired:
            if m.state == ACTIVATED:
                why = (f"{m.iface_id}: activated move from {m.src} not completed within {m.completion_s:g} s: "
                       f"completed by expiry")
                log.warning("%s: %s", self.nve.name, why)
            else:
                why = f"{m.iface_id}: prepared move from {m.src} not activated by its deadline: rolled back"
                log.info("%s: %s", self.nve.name, why)
            self.stats.expired = (self.stats.expired + [why])[-KEEP_ERRORS:]
        return bool(expired)

    def _set_detached(self, iface: str, detached: bool) -> bool:
        try:
            return self.client.set_detached(iface, self.nve.name, detached)
        except MoveRefused as exc:
            self.stats.error(str(exc))
            return False

    def _report(self, iface: str, by: str = ANNOUNCED) -> bool:
        try:
            _, changed = self.client.report_move(iface, self.nve.name, by)
        except Refused:
            self.stats.claims_refused += 1
            return False
        except MoveRefused as exc:
            self.stats.error(str(exc))
            return False
        if changed:
            self.stats.moves_reported += 1
        return changed

    scoped = True  # passes woken by the mapping alone may recompute only what it touched

    def _part(self, actual: Actual, ports: list[str], whole: bool, scope: Scope | None = None,
              drifted: Drift | None = None) -> tuple[Snapshot, Scope | None]:
        """This NVE's part of the mapping now (its VM ports in the kernel included), and its interest;
        unless `whole`, only the part the batches since the last pass touched (with `scope`: and that; with
        `drifted`: and where a fresh kernel read differs from what the agent held)."""
        ifaces = set(actual.devices) | set(actual.ports) | set(ports)

        def take(view):
            with self._note:  # under the view's lock: the batches this read includes, and no more
                full = whole or self._full or not self.scoped or self._unfollow is None or self._want is None
                vnis, touched_ifaces = self._touched_vnis, self._touched_ifaces
                self._full, self._touched_vnis, self._touched_ifaces = False, set(), set()
            extra = drifted or Drift(frozenset(), frozenset(), frozenset())
            now = None if full else scope_of(view, vnis | self.pending_prunes | extra.vnis,
                                             touched_ifaces | extra.ifaces, extra.tenants)
            if now is not None and scope is not None:
                now = now | scope
            snap, interest = project(view, self.nve.name, ifaces, None if now is None else now.vnis)
            with self._note:  # no batch is judged against the interest it changed
                self._interest = interest
            return snap, now
        return self.client.read(take, self.nve.name, lambda view: watched(view, self.nve.name, ifaces))

    def reconcile(self, resync: bool = False) -> list[Change]:
        """One pass; `resync` reads the kernel (filters included) whatever the cache holds."""
        with self._lock:
            cpu = time.thread_time()
            started = self._clock()
            if resync:
                self.stats.resyncs += 1
                self._kernel_dirty = True
                self.kernel.forget_filters()
            refresh = False
            drifted = None
            read = self._kernel_dirty or self._cache is None
            if read:
                self._kernel_dirty = False  # before reading: an event during the read dirties it again
                held = self._cache
                actual, ports = self.kernel.read()
                self.stats.kernel_reads += 1
                # a kernel event (a VM port came or went): scoped to where the kernel differs from what was held
                drifted = None if resync or held is None else drift(held, (actual, ports))
                if drifted is not None:
                    self._planned_in = None  # the claimant chains and filters: planned over the fresh read
            else:
                actual, ports = self._cache
            whole_pass = read and drifted is None
            snap, scope = self._part(actual, ports, whole_pass, drifted=drifted)
            if self._claim_arrivals(snap, ports) | self._expire_moves(snap):
                snap, scope = self._part(actual, ports, scope is None, scope)
            changes, whole = self._changes(snap, actual, scope)
            scoped = scope is not None
            if scoped:
                self.stats.scoped_passes += 1
                self.stats.drift_scoped_passes += drifted is not None
            errors = self.kernel.apply(changes) if changes else []
            if errors:
                self._cache, self._kernel_dirty = None, True
            elif any(c.op in STRUCTURAL for c in changes):  # devices changed: read them once the pass is
                self._cache, refresh = None, True            # published, so the next change's pass need not
            else:
                self._cache = (apply_to(actual, changes), ports)
            self.stats.reconciles += 1
            self.stats.changes_applied += len(changes) - len(errors)
            if changes:
                self.stats.programmed_at = self._clock()
                self.stats.last_pass_ms = round((self.stats.programmed_at - started) * 1000, 2)
                self.stats.last_changes = [str(c) for c in changes[:KEEP_CHANGES]] + (
                    [f"... and {len(changes) - KEEP_CHANGES} more"] if len(changes) > KEEP_CHANGES else [])
                log.debug("%s rev %d: %s", self.nve.name, snap.revision, ", ".join(map(str, changes)))
            if errors:
                self.stats.error(*errors)
                log.warning("%s", "; ".join(errors))
            elif whole:
                self.stats.converged_revision = snap.revision
            with self._note:
                self._whole = whole and not errors
            self._publish(force=resync)
            if refresh:
                self._kernel_dirty = False  # before reading: an event during the read dirties it again
                self._cache = self.kernel.read()
                self.stats.kernel_reads += 1
            spent = time.thread_time() - cpu
            self.stats.pass_cpu_s += spent
            if not scoped:
                self.stats.whole_pass_cpu_s = spent
            return changes

    @property
    def resync_s(self) -> float:
        """The period of the resync: RESYNC_S, or longer where a whole pass costs more than RESYNC_SHARE of it."""
        return max(RESYNC_S, self.stats.whole_pass_cpu_s / RESYNC_SHARE)

    def _mapping_changed(self, touched: Touched) -> None:
        """The feed applied a batch (called under the view's lock: note and wake only). A batch that concerns
        none of this NVE's part wakes nothing unless a waiter asks for this NVE's status (or `publish_idle`):
        the converged revision it advances is taken at the next wake (a pass, the periodic resync, a waiter's
        request). Where many agents share a process, every batch otherwise woke every agent's thread, and
        they all contended with the involved agents' passes (benchmarks/scale.py, 100 agents in a process)."""
        with self._note:
            asked = False
            for req in touched.syncs:
                if req.names(self.nve.name):
                    self._sync_to = max(self._sync_to, req.revision)
                    asked = True
            if self._interest is None or self._interest.concerns(touched):
                self._need_pass = True
                if touched.general or touched.reloaded:
                    self._full = True
                self._touched_vnis |= touched.vnis
                self._touched_ifaces |= touched.ifaces
            else:
                self._idle_revision = max(self._idle_revision, touched.revision)
                if not (asked or self.publish_idle):
                    return
        self._wake.set()

    def _wake_pass(self, whole: bool = True) -> None:
        """Run a pass soon (`whole`: over the NVE's whole part; else over what the mapping touched
        meanwhile, and the segments waiting to be pruned)."""
        with self._note:
            self._need_pass = True
            self._full |= whole
        self._wake.set()

    def _wake_prunes(self) -> None:
        self._wake_pass(whole=False)

    def advance_idle(self) -> bool:
        """Mapping changes that concerned none of this NVE's part arrived since its last pass, which made
        it whole: it is converged at their revision without a pass (published as a pass would)."""
        with self._lock:
            cpu = time.thread_time()
            with self._note:
                if self._need_pass or not self._whole or self._idle_revision <= self.stats.converged_revision:
                    return False
                self.stats.converged_revision = self._idle_revision
            self.stats.idle_advances += 1
            if self.publish_idle:
                self._publish()
            self.stats.idle_cpu_s += time.thread_time() - cpu
            return True

    @property
    def _published_revision(self) -> int:
        return self._published.converged_revision if self._published is not None else -1

    def answer_sync(self) -> bool:
        """A waiter asked for a status this NVE has not published yet (its converged revision advanced
        without a pass since, as `advance_idle` leaves it): publish it."""
        with self._lock:
            with self._note:
                wanted = self._sync_to
            if wanted <= self._published_revision or self.stats.converged_revision <= self._published_revision:
                return False
            self._publish()
            return True

    def _hold_prunes(self, changes: list[Change], scope: Scope | None = None) -> list[Change]:
        """Hold back the removal of segments unneeded for less than PRUNE_HOLD_S (`scope`: the pass saw only
        its VNIs; the others stay pending as they were)."""
        now = self._clock()
        prunes = {c.vni for c in changes if c.op == "del-segment"}
        kept = {} if scope is None else {v: t for v, t in self._unneeded_since.items() if v not in scope.l2}
        self._unneeded_since = kept | {v: self._unneeded_since.get(v, now) for v in prunes}
        held = {v for v, since in self._unneeded_since.items() if now - since < PRUNE_HOLD_S}
        if held and self._threads and not (self._prune_timer and self._prune_timer.is_alive()):
            self._prune_timer = threading.Timer(PRUNE_HOLD_S, self._wake_prunes)
            self._prune_timer.daemon = True
            self._prune_timer.start()
        for vni in prunes - held:  # released now: no longer pending
            del self._unneeded_since[vni]
        return [c for c in changes if not (c.op == "del-segment" and c.vni in held)]

    @property
    def pending_prunes(self) -> set[int]:
        return set(self._unneeded_since)

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> NveStatus:
        s = self.stats
        return NveStatus(self.nve.name, s.converged_revision, s.reconciles, s.resyncs, s.kernel_reads,
                         s.changes_applied, s.moves_reported, s.announcements_seen,
                         tuple(sorted(self._unneeded_since)), s.last_pass_ms, tuple(s.last_changes),
                         tuple(s.errors[-5:]), os.getpid(), s.claims_refused, tuple(s.expired[-5:]))

    def _publish(self, force: bool = False) -> None:
        """Publish the status when what a reader waits on changed (converged revision, errors, moves,
        prunes, changes applied), and at every resync (the counters)."""
        st = self.status()
        last = self._published
        if not force and last is not None and (
                (st.converged_revision, st.errors, st.moves_reported, st.announcements_seen, st.pending_prunes,
                 st.changes_applied, st.claims_refused, st.expired)
                == (last.converged_revision, last.errors, last.moves_reported, last.announcements_seen,
                    last.pending_prunes, last.changes_applied, last.claims_refused, last.expired)):
            return
        try:
            self.client.publish_status(st)
            self._published = st
            self.stats.statuses_published += 1
        except Exception as exc:  # the store is away: the kernel keeps forwarding, retry next pass
            log.warning("%s: cannot publish status: %s", self.nve.name, exc)

    # ---- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        self._unfollow = self.client.follow(self._mapping_changed, self.nve.name)
        for target in (self._loop, self._watch_kernel):
            t = threading.Thread(target=target, name=f"agent:{self.nve.name}:{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        self._wake_pass()

    def stop(self) -> None:
        self._stop.set()
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if self._prune_timer:
            self._prune_timer.cancel()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.kernel.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            resync = not self._wake.wait(timeout=self.resync_s)  # the periodic resync reads the kernel
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._note:
                needed, self._need_pass = self._need_pass, False
            try:
                if needed or resync:
                    self.reconcile(resync=resync)
                else:
                    self.advance_idle()
                    self.answer_sync()
            except Exception as exc:  # keep the agent alive; the next pass retries
                log.exception("%s: reconcile failed", self.nve.name)
                self.stats.error(repr(exc))
                with self._note:
                    self._need_pass = True
                time.sleep(0.1)

    def _watch_kernel(self) -> None:
        self.kernel.watch(self._stop, self._link_event, self._announcement)

    def _link_event(self) -> None:
        self._kernel_dirty = True
        self._wake_pass(whole=False)  # the pass reads the kernel; where it differs from what was held is its scope

    def _announcement(self, ifname: str, mac: str) -> None:
        # any VM port of the last read: the frame proves it is up even if no pass has seen it up yet
        ifaces = self.kernel.port_named(ifname)
        if not ifaces:
            return
        self.stats.announcements_seen += 1
        # QEMU announces a NIC (untagged, with its MAC): every VM interface on that NIC arrived
        found = self.client.read(lambda view: [(i, view.binding_of(i)) for i in ifaces])
        bound = [(i, b) for i, b in found if b is not None and b.mac == mac]
        if any(b.nve != self.nve.name for _, b in bound):
            reported = [self._report(i) for i, b in bound if b.nve != self.nve.name]
            if any(reported):
                self._wake_pass(whole=False)  # the reports' own changes are its scope
