"""The mapping as a reader holds it between two changes: loaded once, then kept current by applying the
watch's events, one record at a time, never by reading and decoding the whole mapping again.

`MappingView` holds the records (as a `Snapshot` has them) plus the indexes a per-NVE reader needs to
take only its part (nve/interest.py): bindings by VNI and by the NVE they are on, migrations by VNI
and by destination, ports by VM. `apply(events)` says what a batch changed (`Touched`: the VNIs,
NVEs and VM interfaces of the records it changed, or `general` for the small tables every NVE may
depend on: NVEs, tenants, CUGs, domains, VLANs, policy), so that a reader whose interest the batch
does not concern skips it.

`MappingFeed` is the watch that keeps one view current: one per process (`MappingSystem.feed`), so
agents that share a process share one view and one watch. It loads the view at start and again
after the store compacted history the watch still needed; everything else is events. Subscribers
get each batch's `Touched` under the view's lock, so a reader that takes its part of the view under
that lock and then updates its interest never misses a batch that concerned it (see agent/loop.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from roamnet.mapping.records import (
    PREPARED,
    REVISION,
    ROOT,
    SYNC,
    Binding,
    LogicalPort,
    Migration,
    PolicySet,
    Snapshot,
    SyncRequest,
    decode_record,
    record_kind,
)
from roamnet.mapping.store.base import Compacted, Event, KeyValue, Store

log = logging.getLogger(__name__)

WAIT_S = 1.0  # a feed's watch waits this long for events before it looks at its stop flag again
RETRY_S = 0.5  # a watch that failed (the store away) starts again after this
CATCH_UP_S = 5.0  # a view this far behind the store's mapping revision is read afresh instead


@dataclass(frozen=True)
class Touched:
    """What one batch of events changed."""

    revision: int  # the mapping's revision after the batch
    vnis: frozenset[int] = frozenset()  # VNIs of changed bindings, migrations and ports
    nves: frozenset[str] = frozenset()  # NVEs a changed binding was or is on, a changed migration's ends
    ifaces: frozenset[str] = frozenset()  # VM interfaces of changed bindings, migrations, ports (and
    #                                       every interface of a VM whose port changed: its filter)
    general: bool = False  # NVEs, tenants, CUGs, domains, VLANs or the policy changed: anybody may care
    reloaded: bool = False  # the view was read afresh (start, compaction): anybody may care
    syncs: tuple[SyncRequest, ...] = ()  # waiters' requests that NVEs publish their status (no record changed)

    @property
    def empty(self) -> bool:
        return not (self.vnis or self.nves or self.ifaces or self.general or self.reloaded or self.syncs)


def _ident(attr: str, rest: str):
    """A record's key in its Snapshot table, from the rest of its store key."""
    if attr == "bindings":
        vni, _, mac = rest.partition("/")
        return int(vni), mac
    if attr == "segments":
        return int(rest)
    return rest


def _add(index: dict, outer, inner, value) -> None:
    index.setdefault(outer, {})[inner] = value


def _drop(index: dict, outer, inner) -> None:
    held = index.get(outer)
    if held is not None:
        held.pop(inner, None)
        if not held:
            del index[outer]


class MappingView:
    """The mapping's records and indexes. Not thread-safe by itself: `MappingFeed` serialises access.

    The small tables (nves, tenants, segments, domains, vlans, policy) are replaced, never changed in
    place, so a projection may share them; the big ones (ports, bindings, migrations) are changed in
    place and must be copied by whoever keeps a part of them."""

    def __init__(self) -> None:
        self.revision = 0
        self.nves: dict = {}
        self.tenants: dict = {}
        self.segments: dict = {}
        self.domains: dict = {}
        self.vlans: dict = {}
        self.policy = PolicySet()
        self.ports: dict[str, LogicalPort] = {}
        self.bindings: dict[tuple[int, str], Binding] = {}
        self.migrations: dict[str, Migration] = {}
        self.by_vni: dict[int, dict[str, Binding]] = {}  # vni -> mac -> binding
        self.at_nve: dict[str, dict[tuple[int, str], Binding]] = {}  # binding.nve -> key -> binding
        self.migrations_by_vni: dict[int, dict[str, Migration]] = {}  # vni -> iface -> migration
        self.prepared_to: dict[str, dict[str, Migration]] = {}  # dst -> iface -> prepared migration
        self.moving_from: dict[str, dict[str, Migration]] = {}  # src -> iface -> migration (any state)
        self.ports_by_vm: dict[str, dict[str, LogicalPort]] = {}  # vm -> iface -> port

    # ---- loading ---------------------------------------------------------------------------------
    def load(self, items: Iterable[KeyValue]) -> Touched:
        """Start again from `items`: every key under ROOT at one store revision."""
        self.__init__()
        for kv in items:
            if kv.key == REVISION:
                self.revision = kv.mod_revision
            else:
                self._set(kv.key, kv.value, None)
        return Touched(self.revision, reloaded=True)

    def apply(self, events: Iterable[Event]) -> Touched:
        """Apply a batch of watch events (in revision order) and say what it changed."""
        vnis: set[int] = set()
        nves: set[str] = set()
        ifaces: set[str] = set()
        seen = {"general": False}
        syncs = []
        for e in events:
            if e.key == REVISION:
                self.revision = max(self.revision, e.revision)
            elif e.key == SYNC:
                if e.value is not None:
                    syncs.append(SyncRequest.from_json(e.value))
            elif e.key.startswith(ROOT):
                self._set(e.key, e.value, (vnis, nves, ifaces, seen))
        return Touched(self.revision, frozenset(vnis), frozenset(nves), frozenset(ifaces), seen["general"],
                       syncs=tuple(syncs))

    def _set(self, key: str, value: str | None, touched) -> None:
        kind = record_kind(key)
        if kind is None:
            return
        attr, rest = kind
        new = decode_record(key, value)[2] if value is not None else None
        if attr == "bindings":
            ident = _ident(attr, rest)
            old = self.bindings.get(ident)
            for b in (old, new):
                if b is not None and touched is not None:
                    touched[0].add(b.vni)
                    touched[1].add(b.nve)
                    touched[2].add(b.iface_id)
            if old is not None:
                _drop(self.by_vni, old.vni, old.mac)
                _drop(self.at_nve, old.nve, ident)
                del self.bindings[ident]
            if new is not None:
                self.bindings[ident] = new
                _add(self.by_vni, new.vni, new.mac, new)
                _add(self.at_nve, new.nve, ident, new)
        elif attr == "migrations":
            old = self.migrations.get(rest)
            for m in (old, new):
                if m is not None and touched is not None:
                    touched[0].add(m.vni)
                    touched[1].update((m.src, m.dst))
                    touched[2].add(m.iface_id)
            if old is not None:
                _drop(self.migrations_by_vni, old.vni, rest)
                _drop(self.prepared_to, old.dst, rest)
                _drop(self.moving_from, old.src, rest)
                del self.migrations[rest]
            if new is not None:
                self.migrations[rest] = new
                _add(self.migrations_by_vni, new.vni, rest, new)
                _add(self.moving_from, new.src, rest, new)
                if new.state == PREPARED:
                    _add(self.prepared_to, new.dst, rest, new)
        elif attr == "ports":
            old = self.ports.get(rest)
            for p in (old, new):
                if p is not None and touched is not None:
                    touched[0].add(p.vni)
                    touched[2].update(self.ports_by_vm.get(p.vm, {}))  # its VM's filters bind its addresses
                    touched[2].add(p.iface_id)
            if old is not None:
                _drop(self.ports_by_vm, old.vm, rest)
                del self.ports[rest]
            if new is not None:
                self.ports[rest] = new
                _add(self.ports_by_vm, new.vm, rest, new)
        else:  # a small table: replaced, never changed in place (projections share it)
            if touched is not None:
                touched[3]["general"] = True
            if attr == "policy":
                self.policy = new if new is not None else PolicySet()
                return
            ident = _ident(attr, rest)
            # loading fills fresh tables nobody shares yet; after that, a change makes a new table
            table = getattr(self, attr) if touched is None else dict(getattr(self, attr))
            if new is None:
                table.pop(ident, None)
            else:
                table[ident] = new
            setattr(self, attr, table)

    # ---- reading ---------------------------------------------------------------------------------
    def binding_of(self, iface_id: str) -> Binding | None:
        port = self.ports.get(iface_id)
        return self.bindings.get((port.vni, port.mac)) if port else None

    def snapshot(self) -> Snapshot:
        """Everything, as one Snapshot (copies the big tables: the reference, not the fast path)."""
        return Snapshot(self.revision, self.nves, dict(self.ports), dict(self.bindings), dict(self.migrations),
                        self.tenants, self.segments, self.domains, self.vlans, self.policy)


Subscriber = Callable[[Touched], None]


class MappingFeed:
    """One watch on the mapping that keeps one `MappingView` current and tells subscribers what each
    batch touched. `read(fn)` runs `fn(view)` under the view's lock after catching up with the store."""

    def __init__(self, store: Store):
        self.store = store
        self.view = MappingView()
        self._lock = threading.RLock()
        self._next = 0  # the store revision to watch from (0: not loaded yet)
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.batches = 0  # batches applied
        self.events = 0  # events applied
        self.cpu_s = 0.0  # CPU time spent loading and applying (in whichever thread did it)

    # ---- subscribers ------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(touched)` after every batch (under the view's lock: it must only note and wake);
        starts the feed's watch thread. Returns the function that unsubscribes."""
        with self._lock:
            self._ids += 1
            sid = self._ids
            self._subscribers[sid] = fn
            if self._thread is None:  # (it ends, under this lock, once nobody is subscribed)
                self._thread = threading.Thread(target=self._run, name="mapping-feed", daemon=True)
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(sid, None)
        return unsubscribe

    def _dispatch(self, touched: Touched) -> None:
        for fn in list(self._subscribers.values()):
            try:
                fn(touched)
            except Exception:  # a subscriber's bug must not stop the others' feed
                log.exception("mapping feed subscriber failed")

    # ---- keeping the view current ------------------------------------------------------------------
    def _load(self) -> None:
        cpu = time.thread_time()
        items, rev = self.store.range(ROOT)
        touched = self.view.load(items)
        self._next = rev + 1
        self.reloads += 1
        self._dispatch(touched)
        self.cpu_s += time.thread_time() - cpu

    def _take(self, events: list[Event], nxt: int) -> None:
        """Apply the events not applied yet (under the lock)."""
        cpu = time.thread_time()
        fresh = [e for e in events if e.revision >= self._next]
        self._next = max(self._next, nxt)
        if fresh:
            self.batches += 1
            self.events += len(fresh)
            touched = self.view.apply(fresh)
            if not touched.empty:
                self._dispatch(touched)
        self.cpu_s += time.thread_time() - cpu

    def catch_up(self, timeout: float = CATCH_UP_S) -> None:
        """Make the view hold the mapping's revision as the store has it now (the first call loads it):
        one read of /revision, and when the view is behind it, the watch's events up to it."""
        with self._lock:
            if not self._next:
                self._load()
                return
            kv = self.store.get(REVISION)
            target = kv.mod_revision if kv else 0
            deadline = time.monotonic() + timeout
            while self.view.revision < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("mapping feed: the watch did not reach revision %d in %.1f s; reading everything",
                                target, timeout)
                    self._load()
                    return
                try:
                    events, nxt = self.store.watch(ROOT, self._next, timeout=left)
                except Compacted:
                    self._load()
                    return
                self._take(events, nxt)

    def read(self, fn: Callable[[MappingView], object]):
        """`fn(view)` on a view caught up with the store, under the view's lock."""
        with self._lock:
            self.catch_up()
            return fn(self.view)

    def _run(self) -> None:
        while True:
            try:
                with self._lock:
                    if not self._subscribers or self._stop.is_set():
                        self._thread = None
                        return
                    if not self._next:
                        self._load()
                    start = self._next
                events, nxt = self.store.watch(ROOT, start, timeout=WAIT_S)
                with self._lock:
                    self._take(events, nxt)
            except Compacted:
                log.warning("mapping feed: history compacted; reading the mapping again")
                with self._lock:
                    self._next = 0
            except Exception as exc:  # the store is away: the view stays as it was; watch again
                log.warning("mapping feed: %s; watching again", exc)
                self._stop.wait(RETRY_S)

    def stop(self) -> None:
        self._stop.set()


