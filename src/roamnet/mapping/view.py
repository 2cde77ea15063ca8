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
from dataclasses import dataclass, replace

from roamnet.mapping.records import (
    AT,
    GENERAL,
    PORTS,
    PREPARED,
    REVISION,
    ROOT,
    SYNC,
    VNIS,
    Binding,
    LogicalPort,
    Migration,
    PolicySet,
    Snapshot,
    SyncRequest,
    binding_key,
    decode_record,
    migration_key,
    parse_at,
    record_kind,
)
from roamnet.mapping.store.base import Compacted, Event, KeyValue, Store, WatchSet

log = logging.getLogger(__name__)

WAIT_S = 1.0  # a feed's watch waits this long for events before it looks at its stop flag again
RETRY_S = 0.5  # a watch that failed (the store away) starts again after this
CATCH_UP_S = 5.0  # a view this far behind the store's mapping revision is read afresh instead
UNWATCH_S = 30.0  # (interest) a prefix nobody wants any more is watched this much longer: the changes of one
#   transaction come in one answer per prefix, so an NVE's index may say for a moment that a CUG left it
#   when it only moved between two servers the reader serves; and a VM that comes back needs no new read


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
    if attr == "migrations":
        return rest.partition("/")[2]  # <vni>/<iface_id>
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
        self.hosting: dict[str, dict[str, int]] = {}  # the /at/ index: nve -> "<vni>/<b|m>/<id>" -> vni

    # ---- loading ---------------------------------------------------------------------------------
    def load(self, items: Iterable[KeyValue]) -> Touched:
        """Start again from `items`: every key under ROOT at one store revision."""
        self.__init__()
        for kv in items:
            if kv.key == REVISION:
                self.revision = kv.mod_revision
            elif kv.key.startswith(AT):
                self._index(kv.key, kv.value, None)
            else:
                self._set(kv.key, kv.value, None)
        return Touched(self.revision, reloaded=True)

    def load_prefix(self, prefix: str, items: Iterable[KeyValue]) -> None:
        """Hold `items` as every key under `prefix` (read afresh: what the view held under it goes)."""
        self.drop_prefix(prefix)
        for kv in items:
            if kv.key.startswith(AT):
                self._index(kv.key, kv.value, None)
            elif kv.key.startswith(ROOT) and not kv.key.startswith(SYNC) and kv.key != REVISION:
                self._set(kv.key, kv.value, None)

    def drop_prefix(self, prefix: str) -> None:
        """Forget every record under `prefix` (a part of the mapping no longer watched)."""
        for key in self._keys_under(prefix):
            if key.startswith(AT):
                self._index(key, None, None)
            else:
                self._set(key, None, None)

    def _keys_under(self, prefix: str) -> list[str]:
        if prefix.startswith(VNIS):
            vni = prefix[len(VNIS):].rstrip("/")
            if vni.isdigit():  # one CUG's bindings and moves
                return ([binding_key(b.vni, b.mac) for b in self.by_vni.get(int(vni), {}).values()]
                        + [migration_key(m.vni, i) for i, m in self.migrations_by_vni.get(int(vni), {}).items()])
            return [k for k in [*(binding_key(*b) for b in self.bindings),
                                *(migration_key(m.vni, i) for i, m in self.migrations.items())] if k.startswith(prefix)]
        if prefix.startswith(AT):
            return [f"{AT}{nve}/{rest}" for nve, held in self.hosting.items() for rest in held
                    if f"{AT}{nve}/{rest}".startswith(prefix)]
        if prefix.startswith(PORTS):
            return [PORTS + i for i in self.ports if (PORTS + i).startswith(prefix)]
        return []  # the small tables are replaced by a load, never dropped

    def _index(self, key: str, value: str | None, nves: set | None, vnis: set | None = None) -> None:
        """An /at/ index key came (value "") or went (None)."""
        parsed = parse_at(key)
        if parsed is None:
            return
        nve, vni, rest = parsed
        if nves is not None:  # an NVE's bindings or moves changed in that VNI: a reader that starts watching
            nves.add(nve)     # the VNI for it passes over the VNI (its events came on another prefix)
            if vnis is not None:
                vnis.add(vni)
        if value is None:
            _drop(self.hosting, nve, f"{vni}/{rest}")
        else:
            _add(self.hosting, nve, f"{vni}/{rest}", vni)

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
            elif e.key.startswith(SYNC):
                if e.value is not None:
                    syncs.append(SyncRequest.from_json(e.value))
            elif e.key.startswith(AT):
                self._index(e.key, e.value, nves, vnis)
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
            rest = _ident(attr, rest)
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
    batch touched. `read(fn)` runs `fn(view)` under the view's lock after catching up with the store.

    With `interest`, the view holds only what the process's readers want, and the store sends only
    that (store-side interest, issue 18): the small tables every NVE reads (`GENERAL`), and the prefixes
    each reader names with `read(fn, owner, wants)` (an agent: its /at/ index and sync key, and the
    bindings and moves of its VNIs: nve/interest.py `watched`), all on one `WatchSet` (one stream,
    events in revision order). A prefix a reader starts wanting is watched first and read at the
    watch's start (`WatchSet.add`) before `fn` runs, so no change of it is ever missed; a prefix
    nobody has wanted for `unwatch_s` is no longer watched and leaves the view. The view's revision
    is then the stream's position: every wanted prefix's changes up to it are in the view (a prefix
    just read may be ahead of it), so it is what the process's agents may call converged."""

    def __init__(self, store: Store, interest: bool = False, unwatch_s: float = UNWATCH_S,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.interest = interest
        self.unwatch_s, self._clock = unwatch_s, clock
        self._unwanted: dict[str, float] = {}  # (interest) a watched prefix nobody wants -> since when
        self._ws: WatchSet | None = None  # (interest) the watch set
        self._wants: dict[str, frozenset[str]] = {}  # (interest) reader -> the prefixes it wants
        self._start: dict[str, int] = {}  # (interest) a watched prefix -> the revision it was read at
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
        if self.interest:
            self._load_wanted()
            return
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

    # ---- store-side interest ----------------------------------------------------------------------
    def _wanted(self) -> set[str]:
        return set(GENERAL).union(*self._wants.values())

    def _load_wanted(self) -> None:
        """(interest) Start again: a new watch set holding what every reader wants, read afresh."""
        cpu = time.thread_time()
        if self._ws is not None:
            self._ws.close()
        self._ws, self._start, self._unwanted = self.store.watch_set(), {}, {}
        self.view = MappingView()
        self._watch(self._wanted())
        self.view.revision = min(self._start.values(), default=0)
        self._next = self.view.revision + 1
        self.reloads += 1
        self._dispatch(Touched(self.view.revision, reloaded=True))
        self.cpu_s += time.thread_time() - cpu

    def _watch(self, wanted: set[str]) -> None:
        """(interest, under the lock) Watch and read what is wanted and not watched yet; forget the rest."""
        assert self._ws is not None
        loaded: set[int] = set()
        try:
            for prefix in sorted(wanted - self._start.keys()):
                items, self._start[prefix] = self._ws.add(prefix)
                self.view.load_prefix(prefix, items)
                if prefix.startswith(VNIS):
                    loaded.add(int(prefix[len(VNIS):].rstrip("/")))
        finally:  # an add that failed (the store did not answer) leaves the prefixes read before it announced
            if loaded and self._subscribers:  # records came into the view without events: every reader of
                self._dispatch(Touched(self.view.revision, frozenset(loaded)))  # the process hears of those CUGs
        now = self._clock()
        for prefix in wanted:
            self._unwanted.pop(prefix, None)
        for prefix in sorted(self._start.keys() - wanted):
            if now - self._unwanted.setdefault(prefix, now) < self.unwatch_s:
                continue  # (UNWATCH_S)
            del self._unwanted[prefix]
            self._ws.remove(prefix)
            del self._start[prefix]
            self.view.drop_prefix(prefix)

    def want(self, owner: str, prefixes: Iterable[str]) -> None:
        """(interest) `owner` wants `prefixes` watched (and nothing else it wanted before). When the store
        does not answer an add, `owner` is left wanting what it wanted before (the prefixes added meanwhile
        stay watched), so its next `read` asks again: a prefix it wants is never left unwatched."""
        with self._lock:
            wanted = frozenset(prefixes)
            before = self._wants.get(owner)
            if before == wanted:
                return
            if wanted:
                self._wants[owner] = wanted
            else:
                self._wants.pop(owner, None)
            if self._ws is not None:
                cpu = time.thread_time()
                try:
                    self._watch(self._wanted())
                except BaseException as exc:
                    if before is None:
                        self._wants.pop(owner, None)
                    else:
                        self._wants[owner] = before
                    if isinstance(exc, Compacted):  # the set's stream is lost: the next read starts afresh
                        self._next = 0
                    raise
                finally:
                    self.cpu_s += time.thread_time() - cpu

    def _prefix_of(self, key: str) -> str | None:
        """The watched prefix `key` is under (None: none)."""
        for table in (VNIS, AT, SYNC):
            if key.startswith(table):
                cut = key.find("/", len(table))
                prefix = key[:cut + 1] if cut >= 0 else key
                return prefix if prefix in self._start else None
        return next((p for p in GENERAL if key.startswith(p) and p in self._start), None)

    def _take_interest(self, events: list[Event], position: int) -> None:
        """(interest, under the lock) Apply the events of prefixes still watched, after their read."""
        cpu = time.thread_time()
        fresh = []
        for e in events:
            prefix = self._prefix_of(e.key)
            if prefix is not None and e.revision > self._start[prefix]:
                fresh.append(e)
        if fresh:
            self.batches += 1
            self.events += len(fresh)
            touched = self.view.apply(fresh)
        else:
            touched = None
        self.view.revision = max(self.view.revision, position)  # (the set's position: complete up to it)
        self._next = self.view.revision + 1
        if touched is not None:
            touched = replace(touched, revision=self.view.revision)
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
            if self.interest:  # the stream's position is as far as the wanted prefixes go: with nobody
                if self._thread is None and self._ws is not None:  # following, what it holds now is read here
                    ws = self._ws
                    for _ in range(1000):
                        events, position = ws.next(timeout=0)
                        self._take_interest(events, position)
                        if not events:
                            break
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

    def read(self, fn: Callable[[MappingView], object], owner: str = "",
             wants: Callable[[MappingView], Iterable[str]] | None = None):
        """`fn(view)` on a view caught up with the store, under the view's lock. (interest) `wants(view)`:
        the prefixes `owner` wants (computed from what is watched already), watched and read before `fn`."""
        with self._lock:
            self.catch_up()
            if self.interest and wants is not None:
                for _ in range(3):  # what it wants may name more (a ToR's servers' index): until it names no more
                    wanted = frozenset(wants(self.view))
                    if self._wants.get(owner) == wanted:
                        break
                    self.want(owner, wanted)
            return fn(self.view)

    def _run(self) -> None:
        while True:
            try:
                with self._lock:
                    if not self._subscribers or self._stop.is_set():
                        self._thread = None
                        if self._ws is not None:  # nobody follows: the stream ends (a read starts it again)
                            self._ws.close()
                            self._ws, self._next = None, 0
                        return
                    if not self._next:
                        self._load()
                    start, ws = self._next, self._ws
                if ws is not None:
                    events, position = ws.next(timeout=WAIT_S)
                    with self._lock:
                        if ws is self._ws:
                            self._take_interest(events, position)
                    continue
                events, nxt = self.store.watch(ROOT, start, timeout=WAIT_S)
                with self._lock:
                    self._take(events, nxt)
            except Compacted as exc:
                log.warning("mapping feed: %s; reading the mapping again", exc)
                with self._lock:
                    self._next = 0
            except Exception as exc:  # the store is away: the view stays as it was; watch again
                log.warning("mapping feed: %s; watching again", exc)
                self._stop.wait(RETRY_S)

    def stop(self) -> None:
        self._stop.set()


