"""The mapping store on etcd (v3 API): keys, transactions, leases and single-prefix watches through
etcd's gRPC-JSON gateway over httpx; watch sets (many prefixes on one stream) over gRPC.

Why the gateway for most: on this project's machines (Debian 12, etcd-server 3.4.23) `etcd3` 0.12
does not import with protobuf >= 4 and `aetcd` is asyncio only; the gateway (`/v3/kv/range`,
`/v3/kv/txn`, `/v3/watch`) needs neither gRPC nor protobuf, and measured 1.3 ms per compare-and-swap
and 0.8 ms from a put to its watch event. Why gRPC for watch sets: the gateway serves one watch per
HTTP stream, and a set of N prefixes must be one stream, for etcd's ordering across its watchers and
for one thread instead of N (`etcd_watch.py`, on grpcio with `etcd-sdk-python`'s generated
messages, which need protobuf >= 5.27.2; pinned below 6 in pyproject.toml).

How etcd's model maps onto `base.Store` (which was made after it):
  * a key's `mod_revision` is the store's; a compare-and-swap is a txn comparing `MOD` (0: absent);
  * `txn` is one etcd txn: one revision, all or nothing; etcd refuses more than `--max-txn-ops`
    operations in one (default 128), and so does this class, before sending, with a clear error;
  * `watch(prefix, from_revision, timeout)` opens a watch stream from `from_revision`, returns the
    first batch of events (or none at the timeout) and closes it: a broken stream loses nothing,
    since the next call starts again from the last revision seen + 1; a compacted history raises
    `Compacted` (the caller re-reads everything, as `MappingSystem` does); a long-lived stream silent
    for WATCH_SILENT_S reconnects from the last revision seen (a stalled stream loses nothing either);
  * leases are etcd's (`/v3/lease/grant`, `/v3/lease/revoke`; a put's `lease`); `keepalive` is one
    request on `/v3/lease/keepalive` (the gateway ends the stream once the request body ends, after
    one answer), so the caller's own thread decides when to refresh; an answer without a TTL, or
    etcd's "requested lease not found", is `LeaseNotFound`; etcd raises a TTL below its minimum
    (about 2 s with the default heartbeat) to that minimum, and `grant` returns the TTL granted;
  * keys and values are UTF-8 text, base64 on the wire.
Addresses: `unix:///path/to/socket` (a socket in a 0700 directory: only root reaches it; what the
lab starts), or `https://host:port` with a CA and a client certificate and key; a cluster's members
comma-separated: requests go to one member and fail over to the next when it cannot be reached or
says it has no leader (a watch stream reconnects to the next member from the last revision seen).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import httpx

from roamnet.mapping.store.base import CasConflict, Compacted, Event, KeyValue, Lease, LeaseNotFound, Store, WatchSet

log = logging.getLogger(__name__)

DEFAULT_MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
REQUEST_TIMEOUT_S = 2.0  # a member that cannot commit within this (its leader died) is left for the next one
SINGLE_MEMBER_TIMEOUT_S = 10.0  # one member: nothing to fail over to; a loaded machine may take seconds
WAIT_S = 0.5  # iter_watch's wait on a stream between looks at its stop event (>= MIN_WATCH_S: no polling)
MIN_WATCH_S = 0.3  # a watch that must not wait still reads what the history has (etcd syncs a watcher
#                   that starts in the past every 100 ms)
WATCH_SILENT_S = 30.0  # a long-lived watch stream silent this long reconnects from the last revision seen: a
#   stalled stream would otherwise hold a process's view back unnoticed (the lab's etcd sends progress
#   notifications every 5 s; one with etcd's default, 10 min, costs a reconnect per idle 30 s)


UNAVAILABLE = ("no leader", "leader changed", "timed out", "unavailable", "not capable", "stopped")  # try another member
ELECTION_S = 5.0  # members that answer but have no leader (an election): how long a request keeps trying them
ELECTION_RETRY_S = 0.1  # between two rounds over the members during an election


class StoreError(OSError):
    """The store could not be reached, or refused a request."""


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _text(b: str | None) -> str:
    return base64.b64decode(b).decode() if b else ""


def prefix_end(prefix: str) -> bytes:
    """etcd's range end for every key starting with `prefix`: the prefix with its last byte + 1."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # every key
    raw[-1] += 1
    return bytes(raw)


def range_end(prefix: str) -> str:
    """`prefix_end`, base64 (the gateway's JSON)."""
    return base64.b64encode(prefix_end(prefix)).decode()


class _Watcher:
    """One long-lived watch stream on a prefix, from `start` on, in a thread of its own: it keeps the
    events it saw (bounded) for `since`; a broken stream reconnects from the last revision seen + 1; a
    compacted start is remembered and raised to the next caller (who re-reads everything)."""

    KEEP = 100_000  # events kept for callers that lag

    def __init__(self, store: EtcdStore, prefix: str, start: int):
        self.store, self.prefix, self.start = store, prefix, max(1, start)
        self.events: list[Event] = []
        self.next = self.start  # the revision the stream is at: every event before it is in `events`
        self.broken = False
        self.reconnects = 0  # streams opened again after a silence
        self.error: Exception | None = None
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name=f"etcd-watch:{prefix}", daemon=True).start()

    def _run(self) -> None:
        while not self.store.closed:
            try:
                with self.store._open(self.prefix, self.next, WATCH_SILENT_S) as stream:
                    if stream.status_code != 200:
                        raise StoreError(f"etcd at {self.store.url}: watch refused ({stream.status_code})")
                    for line in stream.iter_lines():
                        res = json.loads(line).get("result") or {}
                        events = EtcdStore._events(res, self.prefix, self.next)
                        with self._cond:
                            if events:
                                self.events.extend(events)
                                del self.events[:-self.KEEP]
                                self.next = events[-1].revision + 1
                            self._cond.notify_all()
                        if self.store.closed:
                            return
            except Compacted as exc:
                with self._cond:
                    self.error, self.broken = exc, True
                    self._cond.notify_all()
                return
            except httpx.ReadTimeout:  # silent for WATCH_SILENT_S: a new stream from where this one was
                self.reconnects += 1
                log.debug("etcd watch on %s silent for %.0f s; reconnecting from revision %d", self.prefix,
                          WATCH_SILENT_S, self.next)
            except Exception as exc:  # a broken stream (or the store closing): reconnect from self.next
                if self.store.closed:
                    return
                log.info("etcd watch on %s broke (%s); reconnecting from revision %d", self.prefix, exc, self.next)
                time.sleep(0.2)

    def since(self, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        """Events with revision >= from_revision, waiting up to `timeout` for one. A short wait still
        lets the stream catch up with what the store already holds (it lags by the stream's latency,
        and a stream that starts in the past by etcd's 100 ms sync)."""
        behind = timeout < MIN_WATCH_S and self.next <= self.store.revision
        deadline = time.monotonic() + (MIN_WATCH_S if behind else timeout)
        with self._cond:
            while True:
                if self.error is not None:
                    raise self.error
                if self.events and from_revision < self.events[0].revision and from_revision < self.start:
                    raise Compacted(f"{self.prefix}: revision {from_revision} is before this watch's history")
                got = self.events[bisect.bisect_left(self.events, from_revision, key=lambda e: e.revision):] \
                    if self.events and self.events[-1].revision >= from_revision else []  # (sorted: no scan
                #                                                       of up to KEEP events at every call)
                if got:
                    return got, got[-1].revision + 1
                if behind and self.next > self.store.revision:  # caught up: nothing more is coming now
                    return [], from_revision
                left = deadline - time.monotonic()
                if left <= 0:
                    return [], from_revision
                self._cond.wait(left)


class EtcdStore(Store):
    """`url`: unix:///socket, http(s)://host:port. `cacert`, `cert`, `key`: TLS (https only)."""

    REMOTE = True  # a store other processes share: its agents' feeds watch only their interest (view.py)
    WATCH_SETS = True

    def __init__(self, url: str, *, cacert: str | None = None, cert: str | None = None, key: str | None = None,
                 max_txn_ops: int = DEFAULT_MAX_TXN_OPS, timeout: float | None = None):
        urls = [u.strip() for u in url.split(",") if u.strip()]
        if timeout is None:  # short only where another member can answer instead
            timeout = REQUEST_TIMEOUT_S if len(urls) > 1 else SINGLE_MEMBER_TIMEOUT_S
        self.url, self.max_txn_ops, self.timeout = url, max_txn_ops, timeout
        self.closed = False
        self._urls, self._tls = urls, (cacert, cert, key)
        self._sets: weakref.WeakSet = weakref.WeakSet()  # watch sets to close with the store
        self._lock = threading.Lock()
        self._watchers: dict[str, _Watcher] = {}  # prefix -> its long-lived stream
        # one client per member (comma-separated URLs); requests go to the current one and fail over
        # to the next when it cannot be reached or has no leader
        self._clients = [self._client(u, cacert, cert, key) for u in urls]
        if not self._clients:
            raise ValueError(f"{url!r}: no store URL")
        self._current = 0

    def _client(self, url: str, cacert: str | None, cert: str | None, key: str | None) -> httpx.Client:
        u = urlparse(url)
        if u.scheme == "unix":
            return httpx.Client(transport=httpx.HTTPTransport(uds=u.path), base_url="http://etcd", timeout=self.timeout)
        if u.scheme in ("http", "https"):
            if u.scheme == "https" and not (cacert and cert and key):
                raise ValueError(f"{url}: https needs --cacert, --cert and --key (a client certificate)")
            tls = {"verify": cacert, "cert": (cert, key)} if u.scheme == "https" else {}
            return httpx.Client(base_url=f"{u.scheme}://{u.netloc}", timeout=self.timeout, **tls)
        raise ValueError(f"{url}: a store URL is unix:///path/to/socket or https://host:port "
                         "(several, comma-separated, for a cluster)")

    @property
    def _http(self) -> httpx.Client:
        return self._clients[self._current]

    def _failover(self, failed: httpx.Client) -> None:
        """The member behind `failed` is away: the next request goes to the next member."""
        with self._lock:
            if len(self._clients) > 1 and self._clients[self._current] is failed:
                self._current = (self._current + 1) % len(self._clients)

    def close(self) -> None:
        self.closed = True
        for ws in list(self._sets):
            ws.close()
        for c in self._clients:
            c.close()

    # ---- requests ------------------------------------------------------------------------------
    def _post(self, path: str, body: dict, lease: int = 0) -> dict:
        """One request, to the current member; a member that cannot be reached, or answers that it has
        no leader, makes it try the next (each member once). `lease`: the request names that lease
        (a lease etcd no longer has raises LeaseNotFound). While a member that answers says it has no
        leader (an election), rounds over the members go on for at most ELECTION_S; members that cannot
        be reached at all fail after one round."""
        deadline = time.monotonic() + ELECTION_S
        while True:
            problem, electing = self._round(path, body, lease)
            if problem is None:
                return electing  # the answer
            if not electing or time.monotonic() + ELECTION_RETRY_S > deadline:
                raise StoreError(f"etcd at {self.url}: {problem}")
            time.sleep(ELECTION_RETRY_S)

    def _round(self, path: str, body: dict, lease: int) -> tuple[str | None, dict | bool]:
        """Each member once, from the current one: (None, answer), or (the last problem, whether a member
        answered that it is unavailable: an election, worth another round)."""
        problem, electing = "", False
        for _ in range(len(self._clients)):
            http = self._http
            try:
                r = http.post(path, json=body)
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
                self._failover(http)
                continue
            try:
                data = r.json() if r.content else {}
            except ValueError:
                data = {}
            if r.status_code == 200:
                return None, data
            problem = data.get("message") or data.get("error") or r.text
            if lease and "lease not found" in problem:
                raise LeaseNotFound(lease)
            if not any(s in problem for s in UNAVAILABLE):
                return problem, False
            electing = True
            self._failover(http)
        return problem, electing

    def status(self) -> dict:
        """The current member's status (etcd's Maintenance.Status: leader, raft term, db size...)."""
        return self._post("/v3/maintenance/status", {})

    @staticmethod
    def _kv(kv: dict) -> KeyValue:
        return KeyValue(_text(kv["key"]), _text(kv.get("value")), int(kv.get("mod_revision", 0)),
                        int(kv.get("lease", 0)))

    # ---- Store ---------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        data = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": range_end(prefix)})
        return [self._kv(kv) for kv in data.get("kvs") or []], int(data["header"]["revision"])

    @property
    def revision(self) -> int:
        return int(self._post("/v3/kv/range", {"key": _b64("\0"), "count_only": True})["header"]["revision"])

    def txn(self, writes: Mapping[str, str | None], expect: Mapping[str, int] | None = None, lease: int = 0) -> int:
        if len(writes) > self.max_txn_ops:
            raise ValueError(f"{len(writes)} writes in one transaction: etcd takes at most {self.max_txn_ops} "
                             "(its --max-txn-ops)")
        compare = [{"key": _b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": str(r)}
                   for k, r in (expect or {}).items()]
        on = {"lease": str(lease)} if lease else {}
        ops = [{"request_put": {"key": _b64(k), "value": _b64(v), **on}} if v is not None
               else {"request_delete_range": {"key": _b64(k)}} for k, v in writes.items()]
        data = self._post("/v3/kv/txn", {"compare": compare, "success": ops}, lease)
        if compare and not data.get("succeeded"):
            for k, r in (expect or {}).items():
                kv = self.get(k)
                actual = kv.mod_revision if kv else 0
                if actual != r:
                    raise CasConflict(k, r, actual)
            raise CasConflict(next(iter(expect or {"?": 0})), 0, -1)  # changed back meanwhile
        return int(data["header"]["revision"])

    def watch(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        """Served by one long-lived stream per prefix (`_Watcher`): a watch that etcd must create in the
        past only catches up at its next 100 ms sync, so re-creating streams per call would add up to
        100 ms to every change. A request from before what the stream has seen opens a one-off stream."""
        with self._lock:
            w = self._watchers.get(prefix)
            if w is None or w.broken:
                w = self._watchers[prefix] = _Watcher(self, prefix, from_revision)
        if from_revision >= w.start:
            return w.since(from_revision, timeout)
        return self._watch_once(prefix, from_revision, timeout)

    def iter_watch(self, prefix: str, from_revision: int, stop: threading.Event):
        """Batches from the prefix's long-lived stream, waiting on it (no request per wait)."""
        rev = from_revision
        while not stop.is_set():
            batch, rev = self.watch(prefix, rev, timeout=WAIT_S)
            if batch:
                yield batch

    @contextlib.contextmanager
    def _open(self, prefix: str, from_revision: int, read_timeout: float | None):
        """A watch stream on the current member; if it cannot be opened, the next request goes to the next member."""
        body = {"create_request": {"key": _b64(prefix), "range_end": range_end(prefix),
                                   "start_revision": str(max(1, from_revision)), "progress_notify": True}}
        http = self._http
        try:
            with http.stream("POST", "/v3/watch", json=body, timeout=httpx.Timeout(self.timeout, read=read_timeout)) as s:
                yield s
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):  # not a timeout: the member is away
            self._failover(http)
            raise

    @staticmethod
    def _events(res: dict, prefix: str, from_revision: int) -> list[Event]:
        if res.get("compact_revision") and int(res["compact_revision"]) > 0:
            raise Compacted(f"{prefix}: history before revision {res['compact_revision']} is compacted "
                            f"(asked from {from_revision})")
        return [Event(int(e["kv"]["mod_revision"]), _text(e["kv"]["key"]),
                      None if e.get("type") == "DELETE" else _text(e["kv"].get("value")))
                for e in res.get("events") or []]

    def _watch_once(self, prefix: str, from_revision: int, timeout: float) -> tuple[list[Event], int]:
        deadline = time.monotonic() + max(timeout, MIN_WATCH_S)
        try:
            with self._open(prefix, from_revision, max(timeout, MIN_WATCH_S)) as stream:
                if stream.status_code != 200:
                    raise StoreError(f"etcd at {self.url}: watch refused ({stream.status_code})")
                for line in stream.iter_lines():
                    events = self._events(json.loads(line).get("result") or {}, prefix, from_revision)
                    if events:
                        return events, events[-1].revision + 1
                    if time.monotonic() >= deadline:
                        break
        except httpx.ReadTimeout:
            pass
        except httpx.HTTPError as exc:
            raise StoreError(f"etcd at {self.url}: {exc}") from None
        return [], from_revision

    def watch_set(self) -> WatchSet:
        """Prefixes multiplexed on one gRPC watch stream (etcd_watch.py), starting at the member requests
        go to now."""
        from roamnet.mapping.store.etcd_watch import EtcdWatchSet, grpc

        targets, credentials = [], None
        for url in self._urls[self._current:] + self._urls[:self._current]:
            u = urlparse(url)
            targets.append(f"unix://{u.path}" if u.scheme == "unix" else u.netloc)
            if u.scheme == "https":
                cacert, cert, key = (Path(f).read_bytes() for f in self._tls)  # all given: checked in _client
                credentials = grpc.ssl_channel_credentials(cacert, key, cert)
        ws = EtcdWatchSet(targets, credentials, self.timeout)
        self._sets.add(ws)
        return ws

    # ---- leases --------------------------------------------------------------------------------
    def grant(self, ttl: int) -> Lease:
        if ttl < 1:
            raise ValueError(f"a lease's TTL is at least 1 s, not {ttl}")
        data = self._post("/v3/lease/grant", {"TTL": str(ttl)})
        if data.get("error"):
            raise StoreError(f"etcd at {self.url}: cannot grant a lease: {data['error']}")
        return Lease(int(data["ID"]), int(data["TTL"]))

    def keepalive(self, lease: int) -> int:
        data = self._post("/v3/lease/keepalive", {"ID": str(lease)}, lease)
        if "error" in data:  # an error inside the stream's one answer
            raise StoreError(f"etcd at {self.url}: keepalive: {data['error'].get('message') or data['error']}")
        ttl = int((data.get("result") or {}).get("TTL", 0))
        if ttl <= 0:  # etcd's answer for a lease it does not have: no TTL
            raise LeaseNotFound(lease)
        return ttl

    def revoke(self, lease: int) -> bool:
        try:
            self._post("/v3/lease/revoke", {"ID": str(lease)}, lease)
        except LeaseNotFound:
            return False
        return True

    # ---- etcd only -----------------------------------------------------------------------------
    def compact(self, revision: int) -> None:
        """Forget the history before `revision` (etcd's compaction)."""
        self._post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
