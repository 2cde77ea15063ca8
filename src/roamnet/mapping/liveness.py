"""An agent's liveness: its /status/<nve> lives on a store lease that the agent keeps alive.

An agent process grants a lease (TTL a few seconds), publishes its status on it, and renews it from a
thread of its own (`StatusLease.start`), never from its reconcile loop, so a long pass cannot let it
lapse. Its status is therefore there exactly while the agent runs and reaches the store:

  * stopped cleanly (SIGTERM), the agent revokes the lease (`close`): its status disappears now;
  * killed (kill -9) or cut off from the store, nobody renews the lease: the store deletes the status
    once the TTL has passed;
  * when the store is back and the lease is gone (expired while away), the next renewal or publish
    grants a new lease and publishes the last status again. A status that could not be written while
    the store was away is written at the first renewal that gets through.

Readers need nothing new: a missing status is an NVE that is not converged (`Statuses.lagging`), and a
status's deletion is an ordinary event of the status keys' watch. The data plane never depends on any
of this: an agent without its lease keeps programming, and a dead agent's kernel keeps forwarding.
"""

from __future__ import annotations

import logging
import threading

from roamnet.mapping.records import NveStatus
from roamnet.mapping.status import Statuses
from roamnet.mapping.store.base import Lease, LeaseNotFound

log = logging.getLogger(__name__)

DEFAULT_TTL = 3  # seconds: how long a dead agent's status outlives it


class StatusLease:
    """Publishes one NVE's statuses on a lease of the store and keeps that lease alive.

    `publish` is what `MappingClient.publish_status` calls; `refresh` is one renewal (what the thread
    does every TTL/3); `close` stops the thread and revokes the lease. Counters for metrics: `grants`
    (more than 1: the lease was lost and granted again), `failures` (renewals or publishes the store
    did not answer), `alive` (the last renewal or publish reached the store with the lease alive)."""

    def __init__(self, statuses: Statuses, ttl: int = DEFAULT_TTL):
        if ttl < 1:
            raise ValueError(f"a status lease's TTL is at least 1 s, not {ttl}")
        self.statuses, self.ttl = statuses, ttl
        self.lease: Lease | None = None
        self.grants = 0
        self.failures = 0
        self.alive = False
        self._last: NveStatus | None = None  # the last status asked for
        self._unwritten = False  # `_last` did not reach the store
        self._closed = False
        self._lock = threading.Lock()  # one writer of the status at a time: the newest always lands last
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        """Seconds between renewals: a third of the TTL granted (as etcd's own clients do)."""
        return (self.lease.ttl if self.lease else self.ttl) / 3

    # ---- writing -------------------------------------------------------------------------------
    def publish(self, status: NveStatus) -> None:
        """Write `status` on the lease (granting one first if there is none, or if it was lost).
        Store errors propagate (the agent retries at its next pass; the thread at its next renewal)."""
        with self._lock:
            if self._closed:
                return
            self._last, self._unwritten = status, True
            self._write()

    def _write(self) -> None:
        """Write the last status on the lease, granting a lease if needed (under the lock)."""
        for attempt in range(2):  # a lease lost since the last write: one new lease, then give up
            if self.lease is None:
                self.lease = self.statuses.store.grant(self.ttl)
                self.grants += 1
                log.info("status of %s on lease %x (TTL %d s)", self._last.nve, self.lease.id, self.lease.ttl)
            try:
                self.statuses.publish(self._last, lease=self.lease.id)
            except LeaseNotFound:
                self.lease, self.alive = None, False
                if attempt:
                    raise
                log.warning("the status lease of %s was lost; granting a new one", self._last.nve)
                continue
            self._unwritten, self.alive = False, True
            return

    def refresh(self) -> None:
        """One renewal: keep the lease alive; if it is gone, a new lease and the last status on it.
        Raises what the store raised (unreachable): the lease may lapse, and the next call mends it."""
        lease = self.lease
        try:
            if lease is not None:
                self.statuses.store.keepalive(lease.id)
                self.alive = True
        except LeaseNotFound:
            with self._lock:
                if self.lease is lease:  # not already replaced by a publish
                    log.warning("status lease %x expired (the store was away for longer than its TTL?)", lease.id)
                    self.lease, self.alive, self._unwritten = None, False, self._last is not None
        with self._lock:
            if self._unwritten and not self._closed:
                self._write()

    # ---- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
                if failing:
                    log.info("the store answers again; status lease %x", self.lease.id if self.lease else 0)
                failing = False
            except Exception as exc:  # the store is away: the kernel keeps forwarding; retry next interval
                self.failures += 1
                self.alive = False
                if not failing:
                    log.warning("cannot renew the status lease: %s", exc)
                failing = True

    def close(self, revoke: bool = True) -> None:
        """Stop renewing; with `revoke`, end the lease now so the status disappears at once (a clean
        stop). Nothing is published after this. Store errors are logged: the lease then runs out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._closed = True
            lease, self.lease, self.alive = self.lease, None, False
        if revoke and lease is not None:
            try:
                self.statuses.store.revoke(lease.id)
            except Exception as exc:
                log.warning("cannot revoke status lease %x (%s); the status goes after its TTL", lease.id, exc)
