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
