import threading
import time

import pytest

from roamnet.mapping.store import CasConflict, Compacted, MemoryStore


def test_put_get_revisions():
    s = MemoryStore()
    r1 = s.put("/a", "1")
    r2 = s.put("/b", "2")
    assert (r1, r2) == (1, 2)
    assert s.get("/a").value == "1" and s.get("/a").mod_revision == 1
    items, rev = s.range("/")
    assert [kv.key for kv in items] == ["/a", "/b"] and rev == 2


def test_cas_create_update_conflict():
    s = MemoryStore()
    s.put("/k", "v1", expect_revision=0)  # create only if absent
    with pytest.raises(CasConflict):
        s.put("/k", "again", expect_revision=0)
    rev = s.get("/k").mod_revision
    s.put("/k", "v2", expect_revision=rev)
    with pytest.raises(CasConflict) as e:
        s.put("/k", "v3", expect_revision=rev)  # stale revision
    assert e.value.actual == s.get("/k").mod_revision
    assert s.get("/k").value == "v2"


def test_delete_with_cas_and_event():
    s = MemoryStore()
    r = s.put("/k", "v")
    with pytest.raises(CasConflict):
        s.delete("/k", expect_revision=r + 5)
    s.delete("/k", expect_revision=r)
    assert s.get("/k") is None
    events, nxt = s.watch("/", 1, timeout=0)
    assert [(e.key, e.value) for e in events] == [("/k", "v"), ("/k", None)]
    assert nxt == s.revision + 1


def test_watch_from_revision_filters_prefix():
    s = MemoryStore()
    s.put("/x/1", "a")
    s.put("/y/1", "b")
    s.put("/x/2", "c")
    events, nxt = s.watch("/x/", 2, timeout=0)
    assert [e.key for e in events] == ["/x/2"]
    assert nxt == 4


def test_watch_blocks_until_a_write():
    s = MemoryStore()
    threading.Timer(0.05, lambda: s.put("/late", "v")).start()
    t = time.monotonic()
    events, _ = s.watch("/", 1, timeout=2)
    assert events and events[0].key == "/late"
    assert time.monotonic() - t < 1.5


def test_watch_compacted_history():
    s = MemoryStore(history=2)
    for i in range(5):
        s.put(f"/k{i}", "v")
    with pytest.raises(Compacted):
        s.watch("/", 1, timeout=0)


def test_iter_watch_stops():
    s = MemoryStore()
    stop = threading.Event()
    got = []

    def consume():
        for batch in s.iter_watch("/", 1, stop):
            got.extend(batch)
            if len(got) >= 2:
                stop.set()

    t = threading.Thread(target=consume)
    t.start()
    s.put("/a", "1")
    s.put("/b", "2")
    t.join(timeout=3)
    assert not t.is_alive() and [e.key for e in got][:2] == ["/a", "/b"]


def test_a_transaction_is_one_revision_and_all_or_nothing():
    s = MemoryStore()
    s.put("/a", "1")
    rev = s.txn({"/a": "2", "/b": "x", "/gone": None}, expect={"/a": 1})
    assert rev == 2 and s.get("/a").mod_revision == s.get("/b").mod_revision == 2
    events, _ = s.watch("/", 2, timeout=0)
    assert [(e.revision, e.key) for e in events] == [(2, "/a"), (2, "/b")]  # deleting nothing is no event
    with pytest.raises(CasConflict):
        s.txn({"/a": "3", "/c": "y"}, expect={"/a": 2, "/b": 0})  # /b exists: nothing is written
    assert s.get("/a").value == "2" and s.get("/c") is None and s.revision == 2
    assert s.txn({"/nothing": None}) == 2, "a transaction that changes nothing keeps the revision"


def test_update_is_compare_and_swap_with_retry():
    from roamnet.mapping.store.base import CAS_RETRIES, KEEP, Conflicted

    s = MemoryStore()
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


def test_a_watch_waits_for_its_own_prefix_only():
    s = MemoryStore()
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
