"""`WatchSet`'s contract (several prefixes watched as one stream, in revision order; add = watch now,
then read at the watch's start) against the embedded MemoryStore and a real etcd member, where the
prefixes are multiplexed on one gRPC watch stream (`etcd_watch.py`); and `StreamOrder`, the pure part
that keeps that stream's events in order or declares it lost."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from test_store import REQUIRED, etcd_server  # noqa: F401 - the module's private etcd member

from roamnet.mapping.store import Event, MemoryStore
from roamnet.mapping.store.base import WatchLost
from roamnet.mapping.store.etcd import prefix_end
from roamnet.mapping.store.etcd_watch import StreamOrder

ROUNDS = 40  # next() calls a test makes while waiting for events it expects (bounded, no timing asserted)


@pytest.fixture(params=["memory", "etcd"])
def spaced(request):
    """(store, ns): a store and a key namespace of this test's own."""
    if request.param == "memory":
        yield MemoryStore(), ""
        return
    from roamnet.mapping.store.etcd import EtcdStore

    s = EtcdStore(request.getfixturevalue("etcd_server").url)
    yield s, f"/t{time.monotonic_ns()}"
    s.close()


def collect(ws, ns: str, count: int) -> tuple[list[tuple[int, str, str | None]], list[int]]:
    """Events until `count` have come (at most ROUNDS waits), as (revision, key without ns, value), and
    the positions next() returned."""
    got, positions = [], []
    for _ in range(ROUNDS):
        events, pos = ws.next(0.5)
        got += [(e.revision, e.key[len(ns):], e.value) for e in events]
        positions.append(pos)
        if len(got) >= count:
            break
    return got, positions


def test_add_reads_the_prefix_at_the_watch_start_and_delivers_only_what_follows(spaced):
    store, ns = spaced
    before = store.put(f"{ns}/a/1", "old")
    store.put(f"{ns}/b/1", "elsewhere")
    ws = store.watch_set()
    kvs, start = ws.add(f"{ns}/a/")
    assert [(kv.key[len(ns):], kv.value, kv.mod_revision) for kv in kvs] == [("/a/1", "old", before)]
    assert start >= before and ws.prefixes == {f"{ns}/a/"}
    r1 = store.put(f"{ns}/a/2", "new")
    store.put(f"{ns}/b/2", "not watched")
    r3 = store.delete(f"{ns}/a/1")
    got, positions = collect(ws, ns, 2)
    assert got == [(r1, "/a/2", "new"), (r3, "/a/1", None)]  # nothing at or below start, nothing of /b/
    assert positions[-1] >= r3 - 1  # (on etcd an event answer at R proves only what is below R)
    ws.close()


def test_prefixes_come_in_revision_order_and_a_revision_across_two_prefixes_brings_both(spaced):
    store, ns = spaced
    ws = store.watch_set()
    ws.add(f"{ns}/x/")
    ws.add(f"{ns}/y/")
    revs = [store.put(f"{ns}/{p}/k{i}", str(i)) for i, p in enumerate("xyxyyx")]
    both = store.txn({f"{ns}/x/t": "1", f"{ns}/y/t": "2", f"{ns}/z/t": "3"})
    got, positions = collect(ws, ns, 8)
    assert [r for r, _, _ in got] == sorted(r for r, _, _ in got)
    assert [(r, k) for r, k, _ in got[:6]] == [(r, f"/{p}/k{i}") for i, (r, p) in enumerate(zip(revs, "xyxyyx"))]
    assert sorted((r, k) for r, k, _ in got[6:]) == [(both, "/x/t"), (both, "/y/t")]  # one revision: no order
    #                                                     between its prefixes (etcd notifies watchers in map order)
    assert positions == sorted(positions) and positions[-1] >= both - 1
    ws.close()


def test_a_removed_prefix_delivers_nothing_more_and_an_added_one_starts_now(spaced):
    store, ns = spaced
    ws = store.watch_set()
    ws.add(f"{ns}/keep/")
    ws.add(f"{ns}/drop/")
    store.put(f"{ns}/drop/1", "seen?")  # maybe not taken before the remove: then never delivered
    ws.remove(f"{ns}/drop/")
    assert ws.prefixes == {f"{ns}/keep/"}
    store.put(f"{ns}/drop/2", "no")
    kvs, start = ws.add(f"{ns}/late/")
    assert [kv.key[len(ns):] for kv in kvs] == []
    last = store.put(f"{ns}/late/1", "yes")
    store.put(f"{ns}/keep/1", "yes")
    got, _ = collect(ws, ns, 2)
    assert [k for _, k, _ in got] == ["/late/1", "/keep/1"] and got[0][0] == last > start
    ws.close()


def test_many_prefixes_on_one_set_each_delivers_only_its_own_keys(spaced):
    store, ns = spaced
    ws = store.watch_set()
    for vni in range(50):
        ws.add(f"{ns}/bindings/{vni}/")  # /bindings/3/ must not take /bindings/30/'s keys: the slash
    writes = [(store.put(f"{ns}/bindings/{vni}/m", str(vni)), f"/bindings/{vni}/m")
              for vni in (29, 3, 0, 17, 51, 3, *range(49, -1, -7), 50)]
    one = store.txn({f"{ns}/bindings/{vni}/t": str(vni) for vni in range(0, 60, 5)})  # 12 prefixes, 10 watched
    wanted = [w for w in writes if int(w[1].split("/")[2]) < 50] + [(one, f"/bindings/{v}/t") for v in range(0, 50, 5)]
    got, positions = collect(ws, ns, len(wanted))
    assert sorted((r, k) for r, k, _ in got) == sorted(wanted) and len(got) == len(wanted)
    assert all(v == k.split("/")[2] for _, k, v in got)  # each key under its own prefix, with its own value
    assert [r for r, _, _ in got] == sorted(r for r, _, _ in got) and positions[-1] >= one - 1  # (etcd: R - 1)
    ws.close()


def test_after_a_loss_the_set_is_empty_and_takes_its_prefixes_again():
    store = MemoryStore(history=4)
    ws = store.watch_set()
    ws.add("/a/")
    for i in range(10):  # more than the history keeps, none taken
        store.put(f"/a/{i}", str(i))
    with pytest.raises(WatchLost):
        ws.next(0)
    assert ws.prefixes == frozenset()
    kvs, start = ws.add("/a/")
    assert len(kvs) == 10
    r = store.put("/a/x", "after")
    assert ws.next(0)[0] == [Event(r, "/a/x", "after")] and r > start


def test_etcd_member_going_away_is_a_loss_and_a_new_add_opens_a_new_stream():
    """A member of its own (stopped in the test), not the module's."""
    import shutil

    from roamnet.lab.etcd import EtcdServer

    if shutil.which("etcd") is None:
        if REQUIRED:
            pytest.fail("etcd is required here (CI=true or ROAMNET_REQUIRE_LAB=1) but not installed")
        pytest.skip("etcd not installed")
    server = EtcdServer(Path(tempfile.mkdtemp(prefix="rn-ws-")), name="rn-test-wsloss")
    store = server.start()
    try:
        ws = store.watch_set()
        ws.add("/a/")
        r = store.put("/a/1", "before")
        assert collect(ws, "", 1)[0] == [(r, "/a/1", "before")]
        server.stop_member(0)
        with pytest.raises(WatchLost):
            for _ in range(ROUNDS):
                ws.next(0.5)
        assert ws.prefixes == frozenset()
        server.start_member(0)
        kvs, start = ws.add("/a/")
        assert [(kv.key, kv.value) for kv in kvs] == [("/a/1", "before")]
        r = store.put("/a/2", "after")
        assert collect(ws, "", 1)[0] == [(r, "/a/2", "after")] and r > start
        ws.close()
    finally:
        store.close()
        server.stop()


def test_a_set_whose_member_stops_goes_on_at_the_next_member_of_the_cluster():
    """Three members of its own: the set's member stops, the loss is raised, and the prefixes added
    again are served by another member, with what was written through the cluster meanwhile."""
    import shutil

    from roamnet.lab.etcd import EtcdServer

    if shutil.which("etcd") is None:
        if REQUIRED:
            pytest.fail("etcd is required here (CI=true or ROAMNET_REQUIRE_LAB=1) but not installed")
        pytest.skip("etcd not installed")
    server = EtcdServer(Path(tempfile.mkdtemp(prefix="rn-ws3-")), name="rn-test-ws3", members=3)
    store = server.start()
    try:
        ws = store.watch_set()  # on member 0, where the store's requests go first
        ws.add("/a/")
        server.stop_member(0)
        with pytest.raises(WatchLost):
            for _ in range(ROUNDS):
                ws.next(0.5)
        written = store.put("/a/1", "while m0 was away")  # the store fails over to another member too
        kvs, start = ws.add("/a/")
        assert [(kv.key, kv.mod_revision) for kv in kvs] == [("/a/1", written)]
        r = store.put("/a/2", "after")
        assert collect(ws, "", 1)[0] == [(r, "/a/2", "after")] and r > start
        ws.close()
    finally:
        store.close()
        server.stop()


def test_closing_the_etcd_store_closes_its_sets(etcd_server):  # noqa: F811
    from roamnet.mapping.store.etcd import EtcdStore

    store = EtcdStore(etcd_server.url)
    ws = store.watch_set()
    ws.add("/closing/")
    store.close()
    with pytest.raises(WatchLost):
        ws.add("/closing/again/")
    assert ws.next(0) == ([], 0)


def test_a_store_that_cannot_be_reached_is_a_store_error_naming_it(tmp_path):
    from roamnet.mapping.store.etcd import EtcdStore, StoreError

    url = f"unix://{tmp_path}/no-etcd-here"
    store = EtcdStore(url)
    ws = store.watch_set()
    with pytest.raises(StoreError, match=f"etcd at {url}: cannot watch /a/"):
        ws.add("/a/")
    assert ws.prefixes == frozenset()
    store.close()


def test_an_add_skips_a_member_that_cannot_be_reached(etcd_server, tmp_path):  # noqa: F811
    """The first member of the URL list is not there: the same add goes on at the next one."""
    from roamnet.mapping.store.etcd import EtcdStore

    ns = f"/t{time.monotonic_ns()}"
    live = EtcdStore(etcd_server.url)
    before = live.put(f"{ns}/a/1", "x")
    store = EtcdStore(f"unix://{tmp_path}/no-etcd-here,{etcd_server.url}")
    ws = store.watch_set()  # made before any request failed over: it starts at the missing member
    kvs, start = ws.add(f"{ns}/a/")
    assert [(kv.key[len(ns):], kv.mod_revision) for kv in kvs] == [("/a/1", before)] and start >= before
    r = live.put(f"{ns}/a/2", "y")
    assert collect(ws, ns, 1)[0] == [(r, "/a/2", "y")]
    ws.close()
    store.close()
    live.close()


# ---- StreamOrder: the pure part --------------------------------------------------------------------
def ev(rev: int, key: str) -> Event:
    return Event(rev, key, "v")


def test_stream_order_hands_out_in_revision_order_and_keeps_a_key_s_order():
    o = StreamOrder()
    o.started(1, "/a/", 10)
    o.started(2, "/b/", 10)
    o.receive(2, 12, [ev(12, "/b/1")])
    o.receive(1, 11, [ev(11, "/a/1"), ev(9, "/a/old")])  # at or below the watch's start: not delivered
    o.receive(1, 12, [ev(12, "/a/2")])
    events, pos = o.take()
    assert [(e.revision, e.key) for e in events] == [(11, "/a/1"), (12, "/b/1"), (12, "/a/2")]
    assert pos == 11  # another watcher's part of revision 12 may still be on its way
    assert o.take() == ([], 11)


def test_stream_order_a_revision_split_across_takes_is_whole_but_an_older_one_is_a_loss():
    o = StreamOrder()
    o.started(1, "/a/", 0)
    o.started(2, "/b/", 0)
    o.receive(1, 5, [ev(5, "/a/1")])
    assert o.take()[1] == 4  # revision 5 may have more to come
    o.receive(2, 5, [ev(5, "/b/1")])  # the other prefix's part of revision 5: still delivered
    assert o.take() == ([ev(5, "/b/1")], 4)
    with pytest.raises(WatchLost, match="revision 4 after"):
        o.receive(2, 6, [ev(4, "/b/late"), ev(6, "/b/2")])


def test_stream_order_a_progress_answer_moves_the_position_and_a_cancelled_watch_is_ignored():
    o = StreamOrder()
    o.started(1, "/a/", 0)
    o.started(2, "/b/", 0)
    o.receive(1, 7, [])
    assert o.take() == ([], 7)
    o.receive(2, 8, [ev(8, "/b/1")])
    assert o.stopped("/b/") == [2]  # not taken yet: dropped with its prefix
    o.receive(2, 9, [ev(9, "/b/2")])  # leftovers of the cancelled watcher
    o.receive(3, 9, [ev(9, "/c/2")])  # a watcher never started here
    assert o.take() == ([], 7)  # the answer received before the cancel proved only revision 7


def test_stream_order_a_watcher_created_behind_the_stream_starts_at_its_position():
    """A write that raced the creation (etcd's created answer says 10, the stream has shown 12): the new
    prefix is read at the position handed out (11: everything below 12 came), and its catch-up of 11,
    arriving late, is not delivered again; 12, above it, is."""
    o = StreamOrder()
    o.started(1, "/a/", 0)
    o.receive(1, 12, [ev(11, "/a/1"), ev(12, "/a/2")])
    assert o.take()[1] == 11
    assert o.started(2, "/b/", 10) == 11
    o.receive(2, 12, [ev(11, "/b/1"), ev(12, "/b/2")])  # 11: in the read; 12: above the position, delivered
    o.receive(2, 13, [ev(13, "/b/3")])
    assert o.take() == ([ev(12, "/b/2"), ev(13, "/b/3")], 12)
    assert StreamOrder().started(1, "/a/", 10) == 10


def test_prefix_end():
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end("a\u00ff") == b"a\xc3\xc0"  # the UTF-8 bytes' last byte + 1
    assert prefix_end("") == b"\0"


def test_adding_a_watched_prefix_again_reads_it_afresh_and_watches_it_once(spaced):
    store, ns = spaced
    ws = store.watch_set()
    ws.add(f"{ns}/a/")
    store.put(f"{ns}/a/1", "x")
    kvs, start = ws.add(f"{ns}/a/")
    assert [kv.key[len(ns):] for kv in kvs] == ["/a/1"] and ws.prefixes == {f"{ns}/a/"}
    r = store.put(f"{ns}/a/2", "y")
    last = store.put(f"{ns}/b/1", "other")  # not watched: only moves the store on
    got, _ = collect(ws, ns, 1)
    got += collect(ws, ns, 0)[0]  # anything more that came: a second watcher's copy would
    assert [(rev, k) for rev, k, _ in got if rev > start] == [(r, "/a/2")] and last > r
    ws.close()


def test_stream_order_holds_the_newest_revision_back_until_it_settles():
    """A transaction under two prefixes comes as two answers back to back: the first alone is not handed
    out (a reader would act on half of it) until the stream was quiet SETTLE_S or a later revision came."""
    from roamnet.mapping.store.etcd_watch import SETTLE_S

    o = StreamOrder()
    o.started(1, "/a/", 0)
    o.started(2, "/b/", 0)
    o.receive(1, 5, [ev(5, "/a/1")], now=10.0)
    assert not o.ready(10.0) and o.take(10.0) == ([], 4)
    o.receive(2, 5, [ev(5, "/b/1")], now=10.0005)
    assert o.take(10.0005 + SETTLE_S) == ([ev(5, "/a/1"), ev(5, "/b/1")], 4)  # whole; proved: 4
    o.receive(1, 6, [ev(6, "/a/2")], now=11.0)
    o.receive(2, 7, [ev(7, "/b/2")], now=11.0)  # a later revision proves 6 whole at once
    assert o.take(11.0) == ([ev(6, "/a/2")], 6)


def test_a_prefix_read_in_pages_is_one_read_at_the_watch_start(etcd_server):  # noqa: F811
    """A prefix bigger than one page (and than gRPC's default 4 MB message) is read whole, at one revision:
    a write after the watch started is an event, not part of the read."""
    from roamnet.mapping.store.etcd import EtcdStore
    from roamnet.mapping.store.etcd_watch import read_prefix

    store = EtcdStore(etcd_server.url, max_txn_ops=4096)
    try:
        big = "x" * 2000
        for i in range(0, 2500, 500):
            store.txn({f"/paged/k{j:05d}": big for j in range(i, i + 500)})  # 2,500 keys, 5 MB
        ws = store.watch_set()
        kvs, start = ws.add("/paged/")
        store.put("/paged/k99999", "after")
        assert [kv.key for kv in kvs] == [f"/paged/k{j:05d}" for j in range(2500)]
        events, _ = ws.next(timeout=5)
        assert [e.key for e in events] == ["/paged/k99999"]
        import grpc
        from pyetcd import etcdrpc
        with grpc.insecure_channel(etcd_server.url, [("grpc.max_receive_message_length", 64 << 20)]) as ch:
            assert len(read_prefix(etcdrpc.KVStub(ch), "/paged/", start, 10, page=7)) == 2500
        ws.close()
    finally:
        store.close()
