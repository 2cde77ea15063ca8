"""The mapping system's key-value store: revisions, compare-and-swap, watch-from-revision.

The interface follows etcd's data model (a global revision that every write bumps; each key
remembers the revision of its last change) so that an etcd backend can replace the embedded one.
`MemoryStore` is the embedded, in-process default.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int


@dataclass(frozen=True)
class Event:
    """One change: `value` is None for a delete."""

    revision: int
    key: str
    value: str | None


class CasConflict(Exception):
    """A compare-and-swap found the key at another revision than expected."""

    def __init__(self, key: str, expected: int, actual: int):
        super().__init__(f"{key}: expected revision {expected}, found {actual}")
        self.key, self.expected, self.actual = key, expected, actual


class Compacted(Exception):
    """A watch asked for history the store no longer keeps."""


class Store(ABC):
    """What the mapping system needs from a store."""

    @abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` and the store revision they were read at (one consistent view)."""

    @abstractmethod
    def put(self, key: str, value: str, expect_revision: int | None = None) -> int:
        """Write `key`; with `expect_revision` only if the key's mod_revision is that (0 = absent).

        Returns the new store revision; raises CasConflict otherwise."""

    @abstractmethod
    def delete(self, key: str, expect_revision: int | None = None) -> int: ...

    @abstractmethod
    def watch(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        """Events under `prefix` with revision >= from_revision, and the revision to watch from next.

        Waits up to `timeout` s while the store has no revision >= from_revision."""

    @property
    @abstractmethod
    def revision(self) -> int: ...

    def iter_watch(self, prefix: str, from_revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        """Yield non-empty batches of events under `prefix` until `stop` is set."""
        rev = from_revision
        while not stop.is_set():
            batch, rev = self.watch(prefix, rev, timeout=0.2)
            if batch:
                yield batch


class MemoryStore(Store):
    """Thread-safe in-process store keeping a bounded history of events for watchers."""

    def __init__(self, history: int = 100_000):
        self._data: dict[str, KeyValue] = {}
        self._events: list[Event] = []
        self._history = history
        self._rev = 0
        self._cond = threading.Condition()

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

    def _check(self, key: str, expect_revision: int | None) -> None:
        if expect_revision is None:
            return
        current = self._data.get(key)
        actual = current.mod_revision if current else 0
        if actual != expect_revision:
            raise CasConflict(key, expect_revision, actual)

    def _record(self, key: str, value: str | None) -> int:
        self._rev += 1
        self._events.append(Event(self._rev, key, value))
        if len(self._events) > self._history:
            del self._events[: len(self._events) - self._history]
        self._cond.notify_all()
        return self._rev

    def put(self, key: str, value: str, expect_revision: int | None = None) -> int:
        with self._cond:
            self._check(key, expect_revision)
            rev = self._record(key, value)
            self._data[key] = KeyValue(key, value, rev)
            return rev

    def delete(self, key: str, expect_revision: int | None = None) -> int:
        with self._cond:
            self._check(key, expect_revision)
            if key not in self._data:
                return self._rev
            del self._data[key]
            return self._record(key, None)

    def watch(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        with self._cond:
            self._cond.wait_for(lambda: self._rev >= from_revision, timeout=timeout)
            if self._events and from_revision < self._events[0].revision:
                raise Compacted(f"revision {from_revision} is compacted")
            events = [e for e in self._events if e.revision >= from_revision and e.key.startswith(prefix)]
            return events, max(from_revision, self._rev + 1)
