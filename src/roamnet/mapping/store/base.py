"""The mapping system's key-value store: revisions, compare-and-swap, transactions, watch-from-revision,
leases.

The interface follows etcd's data model (a global revision that every write bumps; each key
remembers the revision of its last change; a transaction is one revision) so that an etcd backend
can replace the embedded one (`memory.MemoryStore`).

Leases are etcd's too: `grant(ttl)` gives a lease that lives `ttl` seconds unless `keepalive` renews
it; a key written on a lease (`put(..., lease=id)`) is deleted when the lease expires or is revoked,
all its keys in one revision, and watchers see ordinary delete events. A key belongs to the lease of
its last write (a write without one detaches it). What an agent's liveness is made of (`/status/<nve>`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

CAS_RETRIES = 20  # a compare-and-swap that keeps losing gives up after this many tries


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int = 0  # the lease the key lives on (0: none)


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # seconds, as granted (etcd raises a TTL below its minimum, about 2 s, to that minimum)


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


class Conflicted(Exception):
    """`Store.update` lost its compare-and-swap CAS_RETRIES times in a row."""

    def __init__(self, key: str):
        super().__init__(f"{key}: too many concurrent updates")
        self.key = key


class Compacted(Exception):
    """A watch asked for history the store no longer keeps."""


class WatchLost(Compacted):
    """A watch set's stream broke (the store went away, a member failed over): what it delivered is
    still right, but events may be missing after it; the caller adds its prefixes again (reads them
    afresh), as after a compaction."""


class WatchSet(ABC):
    """Several prefixes watched as one stream, as etcd's clients multiplex watchers on one gRPC watch
    stream: the events of every prefix come in revision order, so the stream has a position (every
    watched prefix's events up to it were delivered). Prefixes come and go while it runs.

    `add(prefix)` starts watching `prefix` *now* and returns its keys read at the revision the watch
    starts after: no event of the prefix at or below that revision is delivered, every one above it
    is. (Watch first, then read at the watch's start: a watcher etcd must create in the past would
    catch up out of order with the others.)"""

    @abstractmethod
    def add(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Watch `prefix` from now on: (its keys at revision H, H); events of it above H follow."""

    @abstractmethod
    def remove(self, prefix: str) -> None:
        """Stop watching `prefix` (no event of it is delivered after this returns)."""

    @abstractmethod
    def next(self, timeout: float) -> tuple[list[Event], int]:
        """The next events of the watched prefixes in revision order (waits up to `timeout` s while
        there is none), and a revision up to which every watched prefix's events have been delivered
        (0 if not known yet; it may be below the last event's: on etcd one revision's events under
        several prefixes may come in two calls). Raises WatchLost when the stream broke."""

    @property
    @abstractmethod
    def prefixes(self) -> frozenset[str]: ...

    @abstractmethod
    def close(self) -> None: ...


class LeaseNotFound(Exception):
    """The lease does not exist (any more): it expired or was revoked, and its keys are gone."""

    def __init__(self, lease: int):
        super().__init__(f"lease {lease:x} not found (expired or revoked)")
        self.lease = lease


KEEP = object()  # what an `update` change function returns to leave the key as it is


class Store(ABC):
    """What the mapping system needs from a store."""

    @abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` and the store revision they were read at (one consistent view)."""

    @abstractmethod
    def txn(self, writes: Mapping[str, str | None], expect: Mapping[str, int] | None = None, lease: int = 0) -> int:
        """Write every key of `writes` (None: delete it) in one revision, only if every key of
        `expect` is at that mod_revision (0 = absent); else nothing is written and CasConflict is
        raised. Keys written get `lease` (0: none; LeaseNotFound, and nothing written, if it is
        gone). Returns the store revision after it (unchanged if nothing changed)."""

    @abstractmethod
    def watch(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        """Events under `prefix` with revision >= from_revision, and the revision to watch from next.

        Waits up to `timeout` s while there is none (writes elsewhere do not end the wait)."""

    WATCH_SETS = False  # whether `watch_set` is implemented (the agents' feeds then watch only their interest)
    REMOTE = False  # whether other processes share the store (their agents' feeds then default to their interest)

    def watch_set(self) -> WatchSet:
        """A new, empty set of prefixes watched as one stream (a process's interest in the mapping)."""
        raise NotImplementedError(f"{type(self).__name__} cannot watch a set of prefixes")

    @property
    @abstractmethod
    def revision(self) -> int: ...

    @abstractmethod
    def grant(self, ttl: int) -> Lease:
        """A new lease that expires `ttl` seconds from now unless kept alive."""

    @abstractmethod
    def keepalive(self, lease: int) -> int:
        """Renew `lease` for its TTL from now; returns the TTL. Raises LeaseNotFound if it is gone."""

    @abstractmethod
    def revoke(self, lease: int) -> bool:
        """End `lease` now, deleting its keys (one revision); False if it was already gone."""

    def put(self, key: str, value: str, expect_revision: int | None = None, lease: int = 0) -> int:
        """Write `key` (on `lease`, if not 0); with `expect_revision` only if the key's mod_revision is
        that (0 = absent)."""
        return self.txn({key: value}, None if expect_revision is None else {key: expect_revision}, lease)

    def delete(self, key: str, expect_revision: int | None = None) -> int:
        return self.txn({key: None}, None if expect_revision is None else {key: expect_revision})

    def update(self, key: str, change: Callable[[KeyValue | None], object],
               also: Callable[[], Mapping[str, str | None]] | None = None,
               guard: Callable[[], Mapping[str, int]] | None = None) -> tuple[KeyValue | None, int | None]:
        """Compare-and-swap with retry, the one loop every read-modify-write of the mapping uses.

        `change(kv)` (kv: the key as read, None if absent) returns the new value, None to delete the
        key, or KEEP to leave it; it may raise to refuse. `also()` gives more keys to write in the
        same transaction, and `guard()` more keys that must still be at the mod_revision `change`
        read them at. Returns (the key as `change` last saw it, the revision written or None when
        nothing was). Raises Conflicted when it loses CAS_RETRIES times."""
        for _ in range(CAS_RETRIES):
            kv = self.get(key)
            new = change(kv)
            if new is KEEP or (new is None and kv is None):
                return kv, None
            writes = {key: new, **(also() if also else {})}
            try:
                return kv, self.txn(writes, {key: kv.mod_revision if kv else 0, **(guard() if guard else {})})
            except CasConflict:
                continue
        raise Conflicted(key)

    def iter_watch(self, prefix: str, from_revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        """Yield non-empty batches of events under `prefix` until `stop` is set."""
        rev = from_revision
        while not stop.is_set():
            batch, rev = self.watch(prefix, rev, timeout=0.2)
            if batch:
                yield batch
