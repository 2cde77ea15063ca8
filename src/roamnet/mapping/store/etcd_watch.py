"""`WatchSet` on etcd: many prefixes watched on ONE gRPC watch stream (etcd's own multiplexing), so a
process's interest in the mapping can be a watch per prefix (`/mapping/vnis/<vni>/`...) without a
stream and a thread per prefix.

Why gRPC here when `EtcdStore` speaks the JSON gateway: the gateway serves one watch per HTTP stream
(a second `create_request` in a chunked body gets no answer), so N prefixes would be N streams and N
threads; over gRPC, N watchers share one stream and one reader thread. The messages are etcd's own
(`pyetcd.etcdrpc`, the generated code `etcd-sdk-python` ships) on `grpcio`; the rest of `EtcdStore`
stays on the gateway.

How the contract of `WatchSet` is kept:
  * `add(prefix)` creates the watcher *now* (no start revision: etcd starts it after its current
    revision H and says H in the `created` answer), then reads the prefix at revision H with a Range
    on the same channel: no event at or below H is delivered, every one above it is. Watch first,
    read second: a watcher created with a past start revision is *unsynced* and catches up in etcd's
    100 ms sync loop, out of order with the stream's other watchers; one created now is synced;
  * order: etcd puts the events of every synced watcher of a stream into one channel, revision by
    revision, so they arrive in revision order and the last one's revision is a position valid for
    every prefix of the stream (so are per-watcher progress notifications, `progress_notify`: sent on
    that channel after the events they vouch for); `StreamOrder` (pure, below) keeps the position and
    turns the cases where etcd does not keep that order (a watcher created while a write raced it, a
    watcher that fell behind a slow reader and is caught up later) into `WatchLost`, the caller's
    signal to add its prefixes again, rather than deliver an event below a position already handed
    out. A revision under several prefixes comes as one answer per watcher: the newest revision
    waits SETTLE_S before it is handed out, so a position seldom claims a part still on the way;
  * not used: the stream-wide progress request (`WatchProgressRequest`): etcd 3.4.23's answer goes
    out on another channel than the events and can overtake them (etcd-io/etcd#15220, fixed by
    #15237 in later 3.4 and 3.5 releases);
  * a broken stream (the member went away, a cancel by the server, a compaction) is `WatchLost`;
    after it the set is empty, and the next `add` opens a new stream (on the store's next member if
    the current one could not be reached); an `add` that reaches no member (each tried once) is a
    `StoreError` naming the store, as every other request of `EtcdStore`.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field

# gRPC's fork handlers off (before gRPC is loaded): an agent forks children that never use gRPC (pyroute2
# 0.9 makes each netlink socket in another namespace in a forked child: `IPRoute(netns=...)`), and gRPC's
# handlers deadlocked such a child in the lab (grpc/grpc#22624): the agent then hung for good, its VM
# ports never reported up. With them off, a child leaves gRPC's inherited state alone, as it should.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from pyetcd import etcdrpc  # noqa: E402

from roamnet.mapping.store.base import Event, KeyValue, WatchLost, WatchSet
from roamnet.mapping.store.etcd import StoreError, prefix_end

log = logging.getLogger(__name__)

DELETE = 1  # mvccpb.Event.EventType
PAGE = 2000  # keys per Range answer when a prefix is read (a port or binding is 150-400 bytes)
MAX_MESSAGE = 64 * 1024 * 1024  # the largest answer taken: a watch answer carries a whole transaction
SETTLE_S = 0.002  # the newest revision's events are handed out once no answer came for this long (or a later
#   revision or a progress answer proved it whole): etcd sends a revision that touches several prefixes as one
#   answer per watcher, back to back; handing out the first alone would let a reader act on half a
#   transaction (a move's activated record without its binding's move)


@dataclass
class StreamOrder:
    """What the watchers of one stream delivered, in revision order (pure: fed the stream's answers).

    `position`: a revision up to which all of the set's events were received: one below the highest
    event an answer carried (etcd sends a stream's synced watchers' events revision by revision, but a
    revision's answers to several watchers in no fixed order), or a progress answer's revision; `handed`: the
    position the caller was last given. An event at or below `handed` is one etcd sent out of order: the
    caller has already been told it had everything up to `handed`, so it is `WatchLost`. An event just
    above it may be the rest of a revision whose keys lie under several prefixes (one answer per watcher)."""

    watches: dict[int, tuple[str, int]] = field(default_factory=dict)  # watch id -> (prefix, its start H)
    pending: list[Event] = field(default_factory=list)
    position: int = 0
    handed: int = 0
    newest: int = 0  # the highest revision an event answer carried
    arrived: float = 0.0  # when the last answer came (monotonic)

    def started(self, watch_id: int, prefix: str, created: int) -> int:
        """A watcher etcd created after revision `created`: the revision its prefix is to be read at
        (its start; its events at or below it are not delivered). That is the position when the stream
        has shown more than `created` already: a write that raced the creation then reaches this watcher
        only at etcd's next catch-up (up to 100 ms), after events of the other watchers above it; read
        at the position, those are in the read instead of late on the stream."""
        start = max(created, self.position)
        self.watches[watch_id] = (prefix, start)
        return start

    def stopped(self, prefix: str) -> list[int]:
        """Forget `prefix`: its watch ids (to cancel), and none of its events is handed out any more."""
        ids = [w for w, (p, _) in self.watches.items() if p == prefix]
        for w in ids:
            del self.watches[w]
        others = tuple(p for p, _ in self.watches.values())
        self.pending = [e for e in self.pending if others and e.key.startswith(others)]
        return ids

    def receive(self, watch_id: int, revision: int, events: list[Event], now: float = 0.0) -> None:
        """An event or progress answer of `watch_id` (header revision `revision`), come at `now`
        (monotonic). Raises WatchLost when it holds an event below what was handed out already."""
        self.arrived = now
        if watch_id not in self.watches:
            return  # a watcher cancelled meanwhile: its leftovers
        _, start = self.watches[watch_id]
        events = [e for e in events if e.revision > start]
        late = [e.revision for e in events if e.revision <= self.handed]
        if late:
            raise WatchLost(f"etcd delivered revision {min(late)} after everything up to revision {self.handed} "
                            "was handed out: the stream's watchers fell out of order")
        self.pending.extend(events)
        # an event answer at R proves only that everything below R came (the other watchers' answers
        # at R may still be on their way); a progress answer (no events) is complete at its revision
        self.newest = max(self.newest, *(e.revision for e in events)) if events else self.newest
        self.position = max(self.position, self.newest - 1) if events else max(self.position, revision)

    def _upto(self, now: float) -> int:
        """The revision up to which events are handed out at `now`: the newest once the stream was quiet
        for SETTLE_S (its other answers, if any, came back to back), else what is proved whole."""
        return max(self.position, self.newest) if now - self.arrived >= SETTLE_S else self.position

    def ready(self, now: float) -> bool:
        upto = self._upto(now)
        return any(e.revision <= upto for e in self.pending)

    def take(self, now: float = math.inf) -> tuple[list[Event], int]:
        """The events received up to `_upto(now)`, in revision order, and the position (proved whole: an
        answer of a revision handed out after SETTLE_S may still follow, and is delivered then)."""
        upto = self._upto(now)
        out = sorted((e for e in self.pending if e.revision <= upto), key=lambda e: e.revision)  # stable: a
        self.pending = [e for e in self.pending if e.revision > upto]  # key's events keep their order
        self.handed = max(self.handed, self.position)
        return out, self.position


def read_prefix(kv, prefix: str, revision: int, timeout: float, page: int = PAGE) -> list:
    """Every key under `prefix` at `revision`, `page` keys per Range (one read of 100,000 VMs' ports is
    17 MB: more than a gRPC message takes by default, and a page keeps each answer small); every page at
    the same revision, so together they are one consistent read."""
    out: list = []
    key, end = prefix.encode(), prefix_end(prefix)
    while True:
        got = kv.Range(etcdrpc.RangeRequest(key=key, range_end=end, revision=revision, limit=page),
                       timeout=timeout)
        out.extend(got.kvs)
        if not got.more or not got.kvs:
            return out
        key = got.kvs[-1].key + b"\0"


class EtcdWatchSet(WatchSet):
    """One gRPC channel to one member, one bidirectional Watch stream on it (opened at the first add),
    a reader thread; `add` waits for its watcher's `created` answer (one create at a time, as etcd
    answers creates in order without naming the request)."""

    def __init__(self, targets: list[str], credentials: grpc.ChannelCredentials | None, timeout: float):
        """`targets`: the members' gRPC targets (`unix:///path`, `host:port`); the set uses one and moves
        on to the next when that one cannot be reached. `credentials`: TLS (None: plain)."""
        if not targets:
            raise ValueError("a watch set needs at least one etcd member")
        self._targets, self._member, self._credentials, self._timeout = targets, 0, credentials, timeout
        self._channel: grpc.Channel | None = None
        self._cond = threading.Condition()
        self._adding = threading.Lock()  # one create request in flight
        self._order = StreamOrder()
        self._requests: queue.Queue | None = None
        self._call = None
        self._creating = ""  # the prefix of the create in flight
        self._created: tuple[int, str] | None = None  # its answer: (start, why etcd refused it)
        self._lost: Exception | None = None
        self._closed = False

    @property
    def _target(self) -> str:
        return self._targets[self._member]

    # ---- the stream ----------------------------------------------------------------------------
    def _open(self) -> None:
        """Under _cond: a channel and a Watch stream with its reader."""
        if self._channel is None:
            options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
            self._channel = (grpc.secure_channel(self._target, self._credentials, options) if self._credentials
                             else grpc.insecure_channel(self._target, options))
        requests: queue.Queue = queue.Queue()

        def feed():
            while (rq := requests.get()) is not None:
                yield rq

        self._requests = requests
        # hasleader: a member that loses its leader ends the stream (its events would stop unnoticed)
        self._call = etcdrpc.WatchStub(self._channel).Watch(feed(), metadata=(("hasleader", "true"),))
        threading.Thread(target=self._read, args=(self._call,), name="etcd-watch-set", daemon=True).start()

    def _read(self, call) -> None:
        try:
            for rs in call:
                with self._cond:
                    if call is not self._call:
                        return
                    self._answer(rs)
                    self._cond.notify_all()
            problem: Exception = WatchLost("etcd ended the watch stream")
            unreachable = False
        except grpc.RpcError as exc:
            problem = WatchLost(f"etcd watch stream at {self._target} broke: {exc.code().name} {exc.details()}")
            unreachable = exc.code() == grpc.StatusCode.UNAVAILABLE
        except WatchLost as exc:
            problem, unreachable = exc, False
        with self._cond:
            if call is self._call and not self._closed:
                self._fail(problem)
                self._channel.close()  # the next add dials afresh (a channel that failed backs off for seconds)
                self._channel = None
                if unreachable:  # ... and at the next member
                    self._next_member()

    def _next_member(self) -> None:
        """Under _cond: the next stream goes to the next member, on a new channel."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._member = (self._member + 1) % len(self._targets)

    def _answer(self, rs) -> None:
        """Under _cond: one WatchResponse."""
        if rs.created:
            if rs.canceled:
                self._created = (0, rs.cancel_reason or "etcd refused the watch")
            else:  # known before its first events are handled (etcd sends them right after this answer)
                self._created = (self._order.started(rs.watch_id, self._creating, rs.header.revision), "")
            return
        if rs.watch_id < 0:
            return  # a progress answer to no watcher (this set sends no progress request)
        if rs.canceled or rs.compact_revision:
            if rs.watch_id in self._order.watches:  # not one this set cancelled
                raise WatchLost(f"etcd cancelled the watch on {self._order.watches[rs.watch_id][0]}: "
                                f"{rs.cancel_reason or f'compacted at {rs.compact_revision}'}")
            return
        events = [Event(e.kv.mod_revision, e.kv.key.decode(), None if e.type == DELETE else e.kv.value.decode())
                  for e in rs.events]
        self._order.receive(rs.watch_id, rs.header.revision, events, time.monotonic())

    def _fail(self, problem: Exception) -> None:
        """Under _cond: the stream is lost; the set is empty; the next add opens another."""
        log.info("%s", problem)
        self._lost = problem
        self._stop_stream()
        self._order = StreamOrder()
        self._cond.notify_all()

    def _stop_stream(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
        if self._call is not None:
            self._call.cancel()
        self._call, self._requests = None, None

    # ---- WatchSet --------------------------------------------------------------------------------
    @property
    def prefixes(self) -> frozenset[str]:
        with self._cond:
            return frozenset(p for p, _ in self._order.watches.values())

    def add(self, prefix: str) -> tuple[list[KeyValue], int]:
        create = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=prefix.encode(), range_end=prefix_end(prefix), progress_notify=True))
        with self._adding:
            self.remove(prefix)  # added again: read afresh, one watcher
            with self._cond:
                if self._closed:
                    raise WatchLost("the watch set is closed")
                self._raise_lost()  # a loss the caller has not been told of: its other prefixes are gone
                for _ in self._targets:  # each member once
                    if self._call is None:
                        self._open()
                    watched = bool(self._order.watches)
                    self._creating, self._created = prefix, None
                    self._requests.put(create)
                    if not self._cond.wait_for(lambda: self._created is not None or self._lost is not None,
                                               self._timeout):
                        self._fail(WatchLost(f"etcd at {self._target} did not answer a watch on {prefix} "
                                             f"within {self._timeout:.0f} s"))
                        self._next_member()
                    if self._created is not None:
                        break
                    if watched:
                        self._raise_lost()  # the stream that held the other prefixes broke
                    why, self._lost = self._lost, None  # nothing was lost with it: try the next member
                else:
                    raise StoreError(f"etcd at {','.join(self._targets)}: cannot watch {prefix}: {why}")
                start, refused = self._created
                if refused:
                    raise WatchLost(f"etcd refused a watch on {prefix}: {refused}")
                channel = self._channel
            try:
                kvs = read_prefix(etcdrpc.KVStub(channel), prefix, start, self._timeout)
            except (grpc.RpcError, ValueError) as exc:  # compacted already, the member went away, the set closed
                self.remove(prefix)
                why = f"{exc.code().name} {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
                raise WatchLost(f"cannot read {prefix} at revision {start}: {why}") from None
        return [KeyValue(kv.key.decode(), kv.value.decode(), kv.mod_revision, kv.lease) for kv in kvs], start

    def remove(self, prefix: str) -> None:
        with self._cond:
            for watch_id in self._order.stopped(prefix):
                if self._requests is not None:
                    self._requests.put(etcdrpc.WatchRequest(
                        cancel_request=etcdrpc.WatchCancelRequest(watch_id=watch_id)))

    def next(self, timeout: float) -> tuple[list[Event], int]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._raise_lost()
                now = time.monotonic()
                if self._closed or self._order.ready(now) or (now >= deadline and not self._order.pending):
                    return self._order.take(now)
                # events held back wait until they settle (at most SETTLE_S), even past the timeout
                self._cond.wait(self._order.arrived + SETTLE_S - now if self._order.pending else deadline - now)

    def _raise_lost(self) -> None:
        """Under _cond: tell the caller of a loss (once)."""
        if self._lost is not None:
            lost, self._lost = self._lost, None
            raise lost

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._stop_stream()
            self._cond.notify_all()
        if self._channel is not None:
            self._channel.close()
