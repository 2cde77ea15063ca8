"""The store's contract (etcd's data model), against the embedded MemoryStore and a real etcd member
(Debian's etcd-server, started privately on a unix socket in a 0700 directory). Revisions are relative:
etcd starts at 1, MemoryStore at 0. Without etcd installed the etcd cases are skipped, unless CI=true
or ROAMNET_REQUIRE_LAB=1, where they must run.

Leases: the MemoryStore runs on a clock the test moves (`store.pass_time`), etcd on real time (its
minimum TTL is about 2 s, so its lease cases take a few seconds)."""

import os
import shutil
import threading
import time

import pytest

from roamnet.mapping.store import CasConflict, Compacted, Event, KeyValue, LeaseNotFound, MemoryStore, Store

REQUIRED = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("CI", "ROAMNET_REQUIRE_LAB"))


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    from roamnet.lab.etcd import EtcdServer

    if shutil.which("etcd") is None:
        if REQUIRED:
            pytest.fail("etcd is required here (CI=true or ROAMNET_REQUIRE_LAB=1) but not installed: make install")
        pytest.skip("etcd not installed (make install)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"), name="rn-test-store")
    server.start().close()
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "etcd"])
def store(request):
    if request.param == "memory":
        clock = Clock()
        s = MemoryStore(clock=clock, reaper=False)  # leases expire when the test moves the clock
        s.pass_time = lambda seconds: setattr(clock, "now", clock.now + seconds)
        yield s
        return
    from roamnet.mapping.store.etcd import EtcdStore

    server = request.getfixturevalue("etcd_server")
    s = EtcdStore(server.url, max_txn_ops=4096)
    ns = f"/t{time.monotonic_ns()}"  # each test its own keys on the shared member
    p = Prefixed(s, ns)
    p.pass_time = time.sleep
    yield p
    s.close()


class Prefixed(Store):
    """A store whose keys live under `ns` (one etcd member serves every test of the module); put,
    delete, update and iter_watch are the Store's own, over these."""

    def __init__(self, inner: Store, ns: str):
        self.inner, self.ns = inner, ns

    def __getattr__(self, name):  # compact, close
        return getattr(self.inner, name)

    def _kv(self, kv: KeyValue | None) -> KeyValue | None:
        return None if kv is None else KeyValue(kv.key[len(self.ns):], kv.value, kv.mod_revision, kv.lease)

    def get(self, key):
        return self._kv(self.inner.get(self.ns + key))

    def range(self, prefix):
        kvs, rev = self.inner.range(self.ns + prefix)
        return [self._kv(kv) for kv in kvs], rev

    def txn(self, writes, expect=None, lease=0):
        return self.inner.txn({self.ns + k: v for k, v in writes.items()},
                              None if expect is None else {self.ns + k: r for k, r in expect.items()}, lease)

    def grant(self, ttl):
        return self.inner.grant(ttl)

    def keepalive(self, lease):
        return self.inner.keepalive(lease)

    def revoke(self, lease):
        return self.inner.revoke(lease)

    def watch(self, prefix, from_revision, timeout):
        events, nxt = self.inner.watch(self.ns + prefix, from_revision, timeout)
        return [Event(e.revision, e.key[len(self.ns):], e.value) for e in events], nxt

    @property
    def revision(self):
        return self.inner.revision


def test_put_get_revisions(store):
    base = store.revision
    r1 = store.put("/a", "1")
    r2 = store.put("/b", "2")
    assert (r1, r2) == (base + 1, base + 2)
    assert store.get("/a").value == "1" and store.get("/a").mod_revision == r1
    items, rev = store.range("/")
    assert [kv.key for kv in items] == ["/a", "/b"] and rev == r2


def test_cas_create_update_conflict(store):
    store.put("/k", "v1", expect_revision=0)  # create only if absent
    with pytest.raises(CasConflict):
        store.put("/k", "again", expect_revision=0)
    rev = store.get("/k").mod_revision
    store.put("/k", "v2", expect_revision=rev)
    with pytest.raises(CasConflict) as e:
        store.put("/k", "v3", expect_revision=rev)  # stale revision
    assert e.value.actual == store.get("/k").mod_revision
    assert store.get("/k").value == "v2"


def test_delete_with_cas_and_event(store):
    r = store.put("/k", "v")
    with pytest.raises(CasConflict):
        store.delete("/k", expect_revision=r + 5)
    store.delete("/k", expect_revision=r)
    assert store.get("/k") is None
    events, nxt = store.watch("/", r, timeout=0)
    assert [(e.key, e.value) for e in events[:1]] == [("/k", "v")]
    if len(events) == 1:  # etcd sends one revision per response: the delete comes next
        more, nxt = store.watch("/", nxt, timeout=0)
        events += more
    assert [(e.key, e.value) for e in events] == [("/k", "v"), ("/k", None)]
    assert nxt == store.revision + 1


def test_watch_from_revision_filters_prefix(store):
    store.put("/x/1", "a")
    r = store.put("/y/1", "b")
    r3 = store.put("/x/2", "c")
    events, nxt = store.watch("/x/", r, timeout=0)
    assert [e.key for e in events] == ["/x/2"]
    assert nxt == r3 + 1


def test_watch_blocks_until_a_write(store):
    start = store.revision + 1
    writer = threading.Timer(0.05, lambda: store.put("/late", "v"))
    writer.start()
    t = time.monotonic()
    events, _ = store.watch("/", start, timeout=2)
    writer.join(timeout=5)  # its request is over before the store closes
    assert events and events[0].key == "/late"
    assert time.monotonic() - t < 1.5


def test_watch_compacted_history(store):
    first = store.put("/k0", "v")
    for i in range(1, 5):
        last = store.put(f"/k{i}", "v")
    store.compact(last)
    with pytest.raises(Compacted):
        store.watch("/", first, timeout=0)


def test_iter_watch_stops(store):
    stop = threading.Event()
    got = []
    start = store.revision + 1

    def consume():
        for batch in store.iter_watch("/", start, stop):
            got.extend(batch)
            if len(got) >= 2:
                stop.set()

    t = threading.Thread(target=consume)
    t.start()
    store.put("/a", "1")
    store.put("/b", "2")
    t.join(timeout=5)
    assert not t.is_alive() and [e.key for e in got][:2] == ["/a", "/b"]


def test_a_transaction_is_one_revision_and_all_or_nothing(store):
    r1 = store.put("/a", "1")
    rev = store.txn({"/a": "2", "/b": "x", "/gone": None}, expect={"/a": r1})
    assert rev == r1 + 1 and store.get("/a").mod_revision == store.get("/b").mod_revision == rev
    events, _ = store.watch("/", rev, timeout=0)
    assert [(e.revision, e.key) for e in events] == [(rev, "/a"), (rev, "/b")]  # deleting nothing is no event
    with pytest.raises(CasConflict):
        store.txn({"/a": "3", "/c": "y"}, expect={"/a": rev, "/b": 0})  # /b exists: nothing is written
    assert store.get("/a").value == "2" and store.get("/c") is None and store.revision == rev
    assert store.txn({"/nothing": None}) == rev, "a transaction that changes nothing keeps the revision"


def test_update_is_compare_and_swap_with_retry(store):
    from roamnet.mapping.store.base import CAS_RETRIES, KEEP, Conflicted

    s = store
    s.put("/n", "0")
    seen = []

    def bump(kv):
        seen.append(kv.value)
        if len(seen) == 1:
            s.put("/n", "5")  # somebody else writes between our read and our write
        return str(int(kv.value) + 1)

    kv, rev = s.update("/n", bump, also=lambda: {"/marker": ""})
    assert seen == ["0", "5"] and s.get("/n").value == "6" and kv.value == "5"
    assert s.get("/marker").mod_revision == rev == s.get("/n").mod_revision
    assert s.update("/n", lambda kv: KEEP) == (s.get("/n"), None)
    assert s.update("/absent", lambda kv: None) == (None, None)
    s.update("/n", lambda kv: None)
    assert s.get("/n") is None
    calls = []

    def always_loses(kv):
        calls.append(1)
        s.put("/x", str(len(calls)))
        return "mine"

    s.put("/x", "0")
    with pytest.raises(Conflicted):
        s.update("/x", always_loses)
    assert len(calls) == CAS_RETRIES and s.get("/x").value == str(CAS_RETRIES)


def test_a_watch_waits_for_its_own_prefix_only(store):
    s = store
    s.put("/status/hv1", "x")
    got = {}

    def watcher():
        got["result"] = s.watch("/mapping/", s.revision + 1, timeout=5)

    t = threading.Thread(target=watcher)
    t.start()
    for i in range(5):  # writes elsewhere (statuses) do not end the wait
        time.sleep(0.02)
        s.put("/status/hv1", str(i))
    assert t.is_alive()
    rev = s.put("/mapping/bindings/x", "1")
    t.join(timeout=5)
    events, nxt = got["result"]
    assert [(e.key, e.revision) for e in events] == [("/mapping/bindings/x", rev)] and nxt == rev + 1
    assert s.watch("/mapping/", nxt, timeout=0.05) == ([], nxt), "a timeout gives no events"


# ---- leases ------------------------------------------------------------------------------------

def deletes(store, prefix: str, from_revision: int, wanted: int = 1) -> list[Event]:
    """The delete events under `prefix` from `from_revision` on, waiting (bounded) until `wanted` came."""
    got, rev = [], from_revision
    for _ in range(20):
        events, rev = store.watch(prefix, rev, timeout=1)
        got += [e for e in events if e.value is None]
        if len(got) >= wanted:
            break
    return got


def test_keys_on_a_lease_vanish_when_it_expires_and_the_watch_sees_it(store):
    lease = store.grant(1)
    assert lease.ttl >= 1  # etcd raises it to its minimum (2 s)
    r = store.put("/live/a", "up", lease=lease.id)
    store.put("/live/b", "up", lease=lease.id)
    store.put("/live/plain", "stays")
    assert store.get("/live/a").lease == lease.id and store.get("/live/plain").lease == 0
    store.pass_time(lease.ttl + 1.5)
    gone = deletes(store, "/live/", r, wanted=2)
    assert sorted(e.key for e in gone) == ["/live/a", "/live/b"]
    assert len({e.revision for e in gone}) == 1, "a lease's keys go in one revision"
    assert store.get("/live/a") is None and store.get("/live/plain").value == "stays"
    with pytest.raises(LeaseNotFound):
        store.keepalive(lease.id)
    before = store.revision
    with pytest.raises(LeaseNotFound):
        store.txn({"/live/a": "again", "/live/c": "x"}, lease=lease.id)  # nothing is written
    assert store.get("/live/a") is None and store.get("/live/c") is None and store.revision == before


def test_keepalive_keeps_a_lease_and_its_keys(store):
    lease = store.grant(2)
    r = store.put("/ka/k", "v", lease=lease.id)
    for _ in range(3):  # 1.5 TTLs in all, renewed every half TTL
        store.pass_time(lease.ttl / 2)
        assert store.keepalive(lease.id) == lease.ttl
    assert store.get("/ka/k").value == "v"
    assert store.watch("/ka/", r + 1, timeout=0.3)[0] == [], "no delete while it is kept alive"
    store.pass_time(lease.ttl + 1.5)  # no more keepalives
    assert [e.key for e in deletes(store, "/ka/", r + 1)] == ["/ka/k"]


def test_revoke_deletes_the_keys_of_the_lease_only(store):
    lease = store.grant(30)
    store.put("/rv/a", "1", lease=lease.id)
    store.put("/rv/b", "2", lease=lease.id)
    store.put("/rv/b", "3")  # rewritten without a lease: no longer the lease's
    other = store.grant(30)
    store.put("/rv/c", "4", lease=other.id)
    r = store.put("/rv/d", "5")
    assert store.revoke(lease.id) is True
    assert store.get("/rv/a") is None and store.get("/rv/b").value == "3" and store.get("/rv/c").value == "4"
    assert [(e.key, e.value) for e in deletes(store, "/rv/", r + 1)] == [("/rv/a", None)]
    assert store.revoke(lease.id) is False, "revoking a lease that is gone is no error"
    with pytest.raises(LeaseNotFound):
        store.keepalive(lease.id)
    assert store.keepalive(other.id) == other.ttl
    store.revoke(other.id)
    assert store.get("/rv/c") is None


def test_the_memory_store_expires_leases_on_time_by_itself():
    """With its reaper thread, a MemoryStore deletes an expired lease's keys while nobody calls it, and
    a blocked watch wakes with the delete (as etcd's)."""
    s = MemoryStore()
    lease = s.grant(1)
    r = s.put("/status/hv1", "up", lease=lease.id)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("w", s.watch("/status/", r + 1, timeout=60)))
    t.start()
    t.join(timeout=15)
    assert not t.is_alive(), "the watch was not woken by the lease's expiry"
    events, _ = got["w"]
    assert [(e.key, e.value) for e in events] == [("/status/hv1", None)]


def test_a_silent_watch_stream_reconnects_and_loses_nothing(etcd_server, monkeypatch):
    from roamnet.mapping.store import etcd

    monkeypatch.setattr(etcd, "WATCH_SILENT_S", 0.3)  # the lab's etcd notifies progress every 5 s: silent
    s = etcd.EtcdStore(etcd_server.url)
    try:
        prefix = f"/silent{time.monotonic_ns()}/"
        start = s.revision + 1
        assert s.watch(prefix, start, timeout=0.1) == ([], start)  # opens the long-lived stream
        watcher = s._watchers[prefix]
        deadline = time.monotonic() + 10
        while watcher.reconnects < 2 and time.monotonic() < deadline:  # bounded
            time.sleep(0.1)
        assert watcher.reconnects >= 2 and not watcher.broken
        rev = s.put(prefix + "k", "v")
        events, nxt = s.watch(prefix, start, timeout=5)
        assert [(e.key, e.value, e.revision) for e in events] == [(prefix + "k", "v", rev)] and nxt == rev + 1
    finally:
        s.close()
