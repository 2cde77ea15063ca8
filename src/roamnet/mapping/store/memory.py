"""The embedded store: thread-safe, in one process, with a bounded history of events for watchers.

It serves unit tests and the lab daemon today; the etcd backend (same `Store` interface) replaces it
when agents run as processes of their own.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping

from roamnet.mapping.store.base import CasConflict, Compacted, Event, KeyValue, Store


class MemoryStore(Store):
    """Thread-safe in-process store keeping a bounded history of events for watchers."""

    def __init__(self, history: int = 100_000):
        self._data: dict[str, KeyValue] = {}
        self._events: list[Event] = []
        self._history = history
        self._rev = 0
        self._cond = threading.Condition()  # guards everything (a Condition: a lock that other methods name)
        self._watchers: dict[threading.Event, str] = {}  # a waiting watch -> its prefix

    @property
    def revision(self) -> int:
        with self._cond:
            return self._rev

    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            return self._data.get(key)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._cond:
            items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
            return items, self._rev

    def _check(self, expect: Mapping[str, int] | None) -> None:
        for key, expected in (expect or {}).items():
            current = self._data.get(key)
            actual = current.mod_revision if current else 0
            if actual != expected:
                raise CasConflict(key, expected, actual)

    def txn(self, writes: Mapping[str, str | None], expect: Mapping[str, int] | None = None) -> int:
        with self._cond:
            self._check(expect)
            changes = [(k, v) for k, v in writes.items() if v is not None or k in self._data]
            if not changes:
                return self._rev
            self._rev += 1
            for key, value in changes:
                self._events.append(Event(self._rev, key, value))
                if value is None:
                    del self._data[key]
                else:
                    self._data[key] = KeyValue(key, value, self._rev)
            if len(self._events) > self._history:
                del self._events[: len(self._events) - self._history]
            for woken, prefix in self._watchers.items():  # only the watches these keys concern: status
                if any(key.startswith(prefix) for key, _ in changes):  # writes must not wake every agent
                    woken.set()
            return self._rev

    def compact(self, revision: int) -> None:
        """Forget the history before `revision` (as etcd's compaction): a watch from before it raises
        Compacted."""
        with self._cond:
            self._events = [e for e in self._events if e.revision >= revision]

    def watch(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        with self._cond:
            events, nxt = self._since(prefix, from_revision)
            if events or timeout <= 0:
                return events, nxt
            woken = threading.Event()
            self._watchers[woken] = prefix
        try:
            woken.wait(timeout)
        finally:
            with self._cond:
                del self._watchers[woken]
        with self._cond:
            return self._since(prefix, from_revision)

    def _since(self, prefix: str, from_revision: int) -> tuple[list[Event], int]:
        if self._events and from_revision < self._events[0].revision:
            raise Compacted(f"revision {from_revision} is compacted")
        start = bisect.bisect_left(self._events, from_revision, key=lambda e: e.revision)
        return [e for e in self._events[start:] if e.key.startswith(prefix)], max(from_revision, self._rev + 1)
