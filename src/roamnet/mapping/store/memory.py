"""The embedded store: thread-safe, in one process, with a bounded history of events for watchers.

It serves unit tests and the lab daemon today; the etcd backend (same `Store` interface) replaces it
when agents run as processes of their own.

Leases expire on the store's clock (`clock`, monotonic seconds). Every call first expires the leases
whose deadline has passed, so with an injected clock and `reaper=False` expiry is deterministic (move
the clock, call anything). With `reaper=True` (the default) a thread also expires them on time while
nobody calls, so that watchers see the deletes as etcd's would; it runs only while leases exist.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from roamnet.mapping.store.base import (
    CasConflict,
    Compacted,
    Event,
    KeyValue,
    Lease,
    LeaseNotFound,
    Store,
    WatchLost,
    WatchSet,
)


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryStore(Store):
    """Thread-safe in-process store keeping a bounded history of events for watchers."""

    def __init__(self, history: int = 100_000, clock: Callable[[], float] = time.monotonic, reaper: bool = True):
        self._data: dict[str, KeyValue] = {}
        self._events: list[Event] = []
        self._history = history
        self._rev = 0
        self._cond = threading.Condition()  # guards everything (a Condition: a lock that other methods name)
        self._watchers: dict[threading.Event, tuple[str, ...]] = {}  # a waiting watch -> its prefixes
        self._clock, self._reaper = clock, reaper
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x7E57_0000
        self._reaping = False  # the reaper thread runs

    @property
    def revision(self) -> int:
        with self._cond:
            self._expire()
            return self._rev

    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            self._expire()
            return self._data.get(key)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._cond:
            self._expire()
            items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
            return items, self._rev

    def _check(self, expect: Mapping[str, int] | None) -> None:
        for key, expected in (expect or {}).items():
            current = self._data.get(key)
            actual = current.mod_revision if current else 0
            if actual != expected:
                raise CasConflict(key, expected, actual)

    def txn(self, writes: Mapping[str, str | None], expect: Mapping[str, int] | None = None, lease: int = 0) -> int:
        with self._cond:
            self._expire()
            if lease and lease not in self._leases:
                raise LeaseNotFound(lease)
            self._check(expect)
            return self._write([(k, v) for k, v in writes.items() if v is not None or k in self._data], lease)

    def _write(self, changes: list[tuple[str, str | None]], lease: int = 0) -> int:
        """Apply `changes` (value None: delete) in one revision (none if empty), under the lock."""
        if not changes:
            return self._rev
        self._rev += 1
        for key, value in changes:
            self._events.append(Event(self._rev, key, value))
            old = self._data.get(key)
            if old is not None and old.lease in self._leases:  # a key belongs to the lease of its last write
                self._leases[old.lease].keys.discard(key)
            if value is None:
                del self._data[key]
            else:
                self._data[key] = KeyValue(key, value, self._rev, lease)
                if lease:
                    self._leases[lease].keys.add(key)
        if len(self._events) > self._history:
            del self._events[: len(self._events) - self._history]
        for woken, prefixes in self._watchers.items():  # only the watches these keys concern: status
            if any(key.startswith(prefixes) for key, _ in changes):  # writes must not wake every agent
                woken.set()
        return self._rev

    # ---- leases --------------------------------------------------------------------------------
    def grant(self, ttl: int) -> Lease:
        if ttl < 1:
            raise ValueError(f"a lease's TTL is at least 1 s, not {ttl}")
        with self._cond:
            self._expire()
            self._next_lease += 1
            self._leases[self._next_lease] = _Lease(ttl, self._clock() + ttl)
            if self._reaper and not self._reaping:
                self._reaping = True
                threading.Thread(target=self._reap, name="memorystore-leases", daemon=True).start()
            self._cond.notify_all()
            return Lease(self._next_lease, ttl)

    def keepalive(self, lease: int) -> int:
        with self._cond:
            self._expire()
            held = self._leases.get(lease)
            if held is None:
                raise LeaseNotFound(lease)
            held.deadline = self._clock() + held.ttl
            return held.ttl

    def revoke(self, lease: int) -> bool:
        with self._cond:
            self._expire()
            return self._revoke(lease)

    def _revoke(self, lease: int) -> bool:
        held = self._leases.pop(lease, None)
        if held is None:
            return False
        self._write([(k, None) for k in sorted(held.keys)])
        return True

    def _expire(self) -> None:
        """Revoke every lease past its deadline (under the lock)."""
        if self._leases:
            now = self._clock()
            for lease in [i for i, held in self._leases.items() if held.deadline <= now]:
                self._revoke(lease)

    def _reap(self) -> None:
        """Expire leases on time while any exist (a thread; ends when none is left)."""
        with self._cond:
            while self._leases:
                self._expire()
                if self._leases:
                    next_deadline = min(held.deadline for held in self._leases.values())
                    self._cond.wait(max(0.0, next_deadline - self._clock()) + 0.001)
            self._reaping = False

    def compact(self, revision: int) -> None:
        """Forget the history before `revision` (as etcd's compaction): a watch from before it raises
        Compacted."""
        with self._cond:
            self._events = [e for e in self._events if e.revision >= revision]

    def watch(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        with self._cond:
            self._expire()
            events, nxt = self._since(prefix, from_revision)
            if events or timeout <= 0:
                return events, nxt
            woken = self._waker((prefix,))
        self._await(woken, timeout)
        with self._cond:
            self._expire()
            return self._since(prefix, from_revision)

    def _waker(self, prefixes: tuple[str, ...]) -> threading.Event:
        """(under the lock, in the section that found nothing to return: no write can slip between)
        An event the next write under one of `prefixes` sets."""
        woken = threading.Event()
        self._watchers[woken] = prefixes
        return woken

    def _await(self, woken: threading.Event, timeout: float) -> None:
        """Wait for `woken` (or `timeout` s), then forget it."""
        try:
            woken.wait(timeout)
        finally:
            with self._cond:
                del self._watchers[woken]

    def _since(self, prefix: str, from_revision: int) -> tuple[list[Event], int]:
        if self._events and from_revision < self._events[0].revision:
            raise Compacted(f"revision {from_revision} is compacted")
        start = bisect.bisect_left(self._events, from_revision, key=lambda e: e.revision)
        return [e for e in self._events[start:] if e.key.startswith(prefix)], max(from_revision, self._rev + 1)

    WATCH_SETS = True

    def watch_set(self) -> WatchSet:
        return _MemoryWatchSet(self)


class _MemoryWatchSet(WatchSet):
    """`WatchSet` on the embedded store: a read position in its history, and the prefixes with the
    revision each was added at (the store's lock makes add's read and the watch's start one instant)."""

    def __init__(self, store: MemoryStore):
        self._store = store
        self._start: dict[str, int] = {}  # prefix -> the revision it was read at (its events follow)
        self._next = 0  # the history read from next (0: at the store's revision on the first add)
        self._closed = False

    @property
    def prefixes(self) -> frozenset[str]:
        return frozenset(self._start)

    def add(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._store._cond:
            self._store._expire()
            items = sorted((kv for k, kv in self._store._data.items() if k.startswith(prefix)), key=lambda kv: kv.key)
            rev = self._store._rev
            self._start[prefix] = rev
            if not self._next:
                self._next = rev + 1
        return items, rev

    def remove(self, prefix: str) -> None:
        with self._store._cond:
            self._start.pop(prefix, None)

    def _take(self) -> tuple[list[Event], int]:
        """Under the store's lock: the events from the read position on, and the new position."""
        st = self._store
        if not self._start:
            return [], st._rev
        if st._events and self._next < st._events[0].revision:
            lost, self._start, self._next = self._next, {}, 0  # empty: the caller adds its prefixes again
            raise WatchLost(f"revision {lost} is compacted")
        first = bisect.bisect_left(st._events, self._next, key=lambda e: e.revision)
        prefixes = tuple(self._start)
        out = [e for e in st._events[first:] if e.key.startswith(prefixes)
               and e.revision > max(s for p, s in self._start.items() if e.key.startswith(p))]
        self._next = st._rev + 1
        return out, st._rev

    def next(self, timeout: float) -> tuple[list[Event], int]:
        st = self._store
        with st._cond:
            st._expire()
            events, pos = self._take()
            if events or timeout <= 0 or self._closed:
                return events, pos
            woken = st._waker(tuple(self._start))
        st._await(woken, timeout)
        with st._cond:
            st._expire()
            return self._take()

    def close(self) -> None:
        self._closed = True
