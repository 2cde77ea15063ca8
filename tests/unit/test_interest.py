"""The incremental path against the reference: a view kept current by watch events equals the mapping
read afresh, and each NVE's projection of it (nve/interest.py) gives exactly the desired state
`compute_desired` (or `compute_switch`) gives on the whole snapshot — over seeded random histories of
moves, prepares, activations, completions, aborts, stops and starts, detaches, policy changes and
intent applies. A batch of changes that does not concern an NVE's interest leaves its desired state
as it was (what lets an agent skip it)."""

from __future__ import annotations

import random
import threading

import pytest

from roamnet.mapping.records import (
    ALLOW,
    AT,
    BORDER,
    DENY,
    ROOT,
    SERVER,
    TOR,
    Binding,
    Domain,
    LogicalPort,
    Nve,
    PolicySet,
    Rule,
    Segment,
    Tenant,
    index_keys,
    vni_prefix,
)
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem, MoveRefused
from roamnet.mapping.view import MappingFeed, MappingView
from roamnet.nve.desired import compute_desired
from roamnet.nve.interest import concerned, project, scope_of, watched
from roamnet.nve.switch import compute_switch

NVES = [Nve("hv1", "198.18.1.1", "dc1"), Nve("hv2", "198.18.1.2", "dc1"), Nve("hv3", "198.18.1.3", "dc1"),
        Nve("hv4", "198.18.2.1", "dc2"), Nve("hv5", "198.18.2.2", "dc2"),
        Nve("br1", "198.18.1.254", "dc1", BORDER), Nve("br2", "198.18.2.254", "dc2", BORDER),
        Nve("tor1", "198.18.1.100", "dc1", TOR, domain="pod1"),
        Nve("hv6", "198.18.1.100", "dc1", SERVER, "tor1", "pod1"),
        Nve("hv7", "198.18.1.100", "dc1", SERVER, "tor1", "pod1")]
SERVERS = [n.name for n in NVES if n.role == SERVER]
SEGMENTS = [Segment(10100, "web", "198.19.1.0/24", "198.19.1.1/24", "t1"),
            Segment(10200, "db", "198.19.2.0/24", "198.19.2.1/24", "t1"),
            Segment(10300, "app", "198.19.3.0/24", "198.19.3.1/24", "t2"),
            Segment(10400, "l2", "198.19.4.0/24", flood_unknown_arp=False)]
POLICIES = [PolicySet(), PolicySet((Rule("web-db", ("t1",), ("198.19.1.0/24",), ("198.19.2.0/24",), "tcp", (5432,),
                                         ALLOW),), {"t1": DENY}),
            PolicySet((Rule("no-ssh", None, None, ("198.19.3.0/24",), "tcp", (22,), DENY),), {})]


def build(store=None) -> tuple[MappingSystem, list[LogicalPort]]:
    m = MappingSystem(store or MemoryStore(), clock=lambda: 1000.0)
    m.register_domain(Domain("pod1", "dc1", "tor1", ("hv6", "hv7"), 100, 110))
    for t in (Tenant("t1", 50001, "02:aa:00:00:00:01"), Tenant("t2", 50002, "02:aa:00:00:00:02")):
        m.register_tenant(t)
    for s in SEGMENTS:
        m.register_segment(s)
    for n in NVES:
        m.register_nve(n)
    ports = []
    for i in range(14):
        seg = SEGMENTS[i % len(SEGMENTS)]
        vm = f"vm{i // 2}"  # two interfaces per VM (in two CUGs): port security binds both addresses
        p = LogicalPort(f"{vm}/{i % 2}", vm, seg.vni, f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
                        (f"{seg.subnet.rsplit('.', 1)[0]}.{10 + i}",), sticky=(i == 13))
        m.register_port(p)
        nve = SERVERS[i % len(SERVERS)]
        m.report_move(p.iface_id, nve)
        ports.append(p)
    return m, ports


def step(m: MappingSystem, ports: list[LogicalPort], rng: random.Random) -> str:
    """One random change of the mapping (refusals are part of the history: they change nothing)."""
    p = rng.choice(ports)
    nve = rng.choice(SERVERS)
    op = rng.choice(["move", "move", "prepare", "activate", "complete", "abort", "stop", "start", "detach",
                     "policy", "advertise", "expire", "port"])
    try:
        if op == "move":
            m.report_move(p.iface_id, nve)
        elif op == "prepare":
            m.prepare(p.iface_id, nve, timeout=rng.choice([-1.0, 30.0]))  # a past deadline: expire drops it
        elif op == "activate":
            m.activate(p.iface_id)
        elif op == "complete":
            m.complete(p.iface_id)
        elif op == "abort":
            m.abort(p.iface_id)
        elif op == "stop":
            m.stop(p.iface_id)
        elif op == "start":
            m.start(p.iface_id, nve)
        elif op == "detach":
            b = m.snapshot().binding_of(p.iface_id)
            if b is not None:
                m.set_detached(p.iface_id, b.nve, not b.detached)
        elif op == "policy":
            m.register_policy(rng.choice(POLICIES))
        elif op == "advertise":  # a stale or winning advertisement from another NVE
            n = next(x for x in NVES if x.name == nve)
            m.advertise(Binding(p.vni, p.mac, n.name, n.vtep, rng.randint(0, 6), p.ips, p.iface_id))
        elif op == "expire":
            m.expire(now=1001.0)
        elif op == "port":  # an intent apply gives the VM interface another address
            ip = f"{p.ips[0].rsplit('.', 1)[0]}.{rng.randint(100, 200)}"
            m.register_port(LogicalPort(p.iface_id, p.vm, p.vni, p.mac, (ip,), p.vlan, p.sticky))
    except MoveRefused:
        pass
    return op


def desired(snap, nve: Nve):
    return compute_switch(snap, nve.name) if nve.tor else compute_desired(snap, nve.name)


def own(snap, nve: str) -> tuple:
    return ({b.key: b for b in snap.bindings.values() if b.nve == nve and b.iface_id in snap.ports},
            {m.iface_id: m for m in snap.prepared() if m.dst == nve})


def kernel_ifaces(rng: random.Random, ports: list[LogicalPort]) -> list[str]:
    """VM ports a kernel may hold whatever the mapping says (claimants, a port that just arrived)."""
    return [p.iface_id for p in rng.sample(ports, 2)]


class History:
    """A seeded random history of `step`s over `build()`'s mapping, with a view that follows its watch."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.m, self.ports = build()
        self.view = MappingView()
        items, rev = self.m.store.range(ROOT)
        self.view.load(items)
        self._next = rev + 1

    def steps(self, n: int):
        """(index, operation, what its events touched) per step, the view caught up with it."""
        for i in range(n):
            op = step(self.m, self.ports, self.rng)
            events, self._next = self.m.store.watch(ROOT, self._next, timeout=0)
            yield i, op, self.view.apply(events)


@pytest.mark.parametrize("seed", range(12))
def test_projection_and_skipping_equal_the_reference_on_random_histories(seed):
    h = History(seed)
    rng, m, ports, view = h.rng, h.m, h.ports, h.view
    kernels = {n.name: kernel_ifaces(rng, ports) for n in NVES}
    before = m.snapshot()
    interests = {n.name: project(view, n.name, kernels[n.name])[1] for n in NVES}
    for i, op, touched in h.steps(60):
        full = m.snapshot()
        assert view.snapshot() == full, f"seed {seed} step {i} ({op}): the view drifted from the store"
        for n in NVES:
            part, interest = project(view, n.name, kernels[n.name])
            want = desired(full, n)
            assert desired(part, n) == want, f"seed {seed} step {i} ({op}): {n.name}'s projection differs"
            # and what the agent claims by: its own bindings, the moves prepared to it, its kernel's ports
            assert own(part, n.name) == own(full, n.name), f"seed {seed} step {i} ({op}): {n.name}'s own records"
            assert ({i: part.binding_of(i) for i in kernels[n.name]}
                    == {i: full.binding_of(i) for i in kernels[n.name]}), f"seed {seed} step {i}: kernel ports"
            if not interests[n.name].concerns(touched):
                assert want == desired(before, n), (f"seed {seed} step {i} ({op}): a change {n.name} skipped "
                                                    f"changed its desired state ({touched})")
            interests[n.name] = interest
        before = full


def test_an_unconcerned_move_leaves_the_interest_of_another_segment_alone():
    m, ports = build()
    m.register_nve(Nve("hv8", "198.18.2.8", "dc2"))  # hosts nothing yet
    view = MappingView()
    items, rev = m.store.range(ROOT)
    view.load(items)
    l2 = [p for p in ports if p.vni == 10400]  # an unrouted CUG: no tenant's host routes
    hosts = {b.nve for b in m.snapshot().bindings.values() if b.vni == 10400}
    outsider = next(n for n in SERVERS if n not in hosts and not n.startswith(("hv6", "hv7")))
    interest = project(view, outsider, [])[1]
    assert 10400 not in interest.vnis
    dst = "hv8"
    m.report_move(l2[0].iface_id, dst)
    touched = view.apply(m.store.watch(ROOT, rev + 1, timeout=0)[0])
    assert touched.vnis == {10400} and not touched.general
    assert not interest.concerns(touched)
    assert project(view, dst, [])[1].concerns(touched)


def test_a_port_change_touches_every_interface_of_its_vm():
    m, ports = build()
    view = MappingView()
    items, rev = m.store.range(ROOT)
    view.load(items)
    p = ports[0]
    m.register_port(LogicalPort(p.iface_id, p.vm, p.vni, p.mac, ("198.19.1.99",)))
    touched = view.apply(m.store.watch(ROOT, rev + 1, timeout=0)[0])
    assert touched.ifaces >= {q.iface_id for q in ports if q.vm == p.vm}


def test_feed_follows_the_store_and_reloads_after_compaction():
    store = MemoryStore(history=1000)
    m, ports = build(store)
    feed = MappingFeed(store)
    seen = []
    got = threading.Event()

    def note(t):
        seen.append(t)
        got.set()

    unsubscribe = feed.subscribe(note)
    try:
        assert got.wait(5) and seen[0].reloaded
        assert feed.read(lambda v: v.snapshot()) == m.snapshot()
        got.clear()
        m.report_move(ports[1].iface_id, "hv5")
        assert got.wait(5)
        assert feed.read(lambda v: v.snapshot()) == m.snapshot()
        assert any("hv5" in t.nves for t in seen)
        # history the feed still needs is compacted while it is behind: it reads everything again
        with feed._lock:
            for p in ports[2:8]:
                m.report_move(p.iface_id, "hv4" if m.snapshot().binding_of(p.iface_id).nve != "hv4" else "hv1")
            store.compact(store.revision)
            feed.catch_up()
        assert feed.reloads == 2 and seen[-1].reloaded
        assert feed.read(lambda v: v.snapshot()) == m.snapshot()
    finally:
        unsubscribe()


def _index_of(m: MappingSystem) -> set[str]:
    """The /at/ index keys the store holds."""
    return {kv.key for kv in m.store.range(AT)[0]}


@pytest.mark.parametrize("seed", range(12))
def test_a_view_holding_only_what_an_nve_watches_projects_as_the_whole_one(seed):
    """Store-side interest: each NVE's own process (an interest feed: only the prefixes `watched` names,
    sent by the store) projects exactly what the whole view projects, at every step of a random history;
    a process receives an event only when its NVE is concerned (or a VM port in its kernel is in the CUG's
    tenant), except a port's change (an intent apply: every agent watches the ports, as the small tables);
    the /at/ index always says where every binding and move is."""
    h = History(seed)
    rng, m, ports = h.rng, h.m, h.ports
    kernels = {n.name: kernel_ifaces(rng, ports) for n in NVES}
    feeds = {n.name: MappingFeed(m.store, interest=True, unwatch_s=0) for n in NVES}  # (what is unwanted goes)

    def part(n: str):
        return feeds[n].read(lambda v: project(v, n, kernels[n])[0], n, lambda v: watched(v, n, kernels[n]))

    for n in NVES:
        part(n.name)
    for i, op, touched in h.steps(60):
        full = m.snapshot()
        want = set().union(*(index_keys(r) for r in (*full.bindings.values(), *full.migrations.values())))
        assert _index_of(m) == want, f"seed {seed} step {i} ({op}): the /at/ index differs from the records"
        concerned_now = concerned(h.view, touched)
        for n in NVES:
            before = feeds[n.name].events
            got = part(n.name)
            assert desired(got, n) == desired(full, n), f"seed {seed} step {i} ({op}): {n.name}'s projection differs"
            assert own(got, n.name) == own(full, n.name), f"seed {seed} step {i} ({op}): {n.name}'s own records"
            assert ({i: got.binding_of(i) for i in kernels[n.name]}
                    == {i: full.binding_of(i) for i in kernels[n.name]}), f"seed {seed} step {i}: kernel ports"
            kernel_vnis = scope_of(h.view, {p.vni for p in ports if p.iface_id in kernels[n.name]}).vnis
            if feeds[n.name].events > before and not touched.general and op != "port":  # (ports: every agent's)
                assert n.name in concerned_now or kernel_vnis & touched.vnis, \
                    f"seed {seed} step {i} ({op}): {n.name}'s process received an event of a change not its own"


def test_an_uninvolved_agent_process_receives_no_event_of_a_move():
    """Two agent processes (two MappingSystems on one store): a move in a CUG the second one's NVE has no
    part in sends its process no event; a sync request for it is the one event it gets."""
    m, ports = build()
    l2 = [p for p in ports if p.vni == 10400]  # an unrouted CUG
    hosts = {b.nve for b in m.snapshot().bindings.values() if b.vni == 10400}
    outsider = next(n for n in SERVERS if n not in hosts and not n.startswith(("hv6", "hv7")))
    other = MappingSystem(m.store, clock=lambda: 1000.0, agent_interest=True)
    feed = other.agent_feed
    assert feed.interest
    feed.read(lambda v: None, outsider, lambda v: watched(v, outsider))
    assert vni_prefix(10400) not in feed._start
    events = feed.events
    dst = next(n for n in SERVERS if n not in hosts | {outsider} and not n.startswith(("hv6", "hv7")))
    m.report_move(l2[0].iface_id, dst)
    feed.read(lambda v: None)
    assert feed.events == events
    m.statuses.request([outsider], m.revision)
    feed.read(lambda v: None)
    assert feed.events == events + 1


def test_a_prefix_nobody_wants_is_watched_a_while_longer_then_dropped():
    """A CUG an NVE's index stops naming stays watched for `unwatch_s` (one transaction's changes come in one
    answer per prefix: the index may say for a moment that a CUG left when it moved between two served
    servers), then leaves the watch and the view."""
    m, ports = build()
    now = [0.0]
    feed = MappingFeed(m.store, interest=True, unwatch_s=30.0, clock=lambda: now[0])
    p = next(p for p in ports if p.vni == 10400)
    home = m.snapshot().binding_of(p.iface_id).nve
    feed.read(lambda v: None, "x", lambda v: [vni_prefix(10400)])
    assert vni_prefix(10400) in feed._start and feed.view.by_vni.get(10400)
    feed.read(lambda v: None, "x", lambda v: [])
    assert vni_prefix(10400) in feed._start and feed.view.by_vni.get(10400)  # within the grace
    m.report_move(p.iface_id, next(n for n in SERVERS if n != home))
    feed.read(lambda v: None)
    assert feed.view.binding_of(p.iface_id).nve != home  # still kept current meanwhile
    now[0] = 31.0
    feed.read(lambda v: None, "y", lambda v: [vni_prefix(10100)])
    assert vni_prefix(10400) not in feed._start and not feed.view.by_vni.get(10400)


def test_a_prefix_the_store_did_not_add_is_asked_for_again_at_the_next_read():
    """The store does not answer the add of a CUG an agent's index names (a loaded etcd at start): that
    read fails, and the next one watches and reads the CUG; the CUGs read before the failure are announced."""
    m, ports = build()
    p = next(p for p in ports if p.vni == 10400)
    home = m.snapshot().binding_of(p.iface_id).nve
    feed = MappingFeed(m.store, interest=True)
    ws = m.store.watch_set()
    add, failing = ws.add, [vni_prefix(10400)]

    def flaky_add(prefix: str):
        if prefix in failing:
            failing.remove(prefix)
            raise OSError(f"etcd: no member answered the watch of {prefix}")
        return add(prefix)

    ws.add = flaky_add
    m.store.watch_set = lambda: ws
    heard: list = []
    feed._subscribers[1] = heard.append  # (a reader of the process, without the feed's thread)
    with pytest.raises(OSError, match="no member answered"):
        feed.read(lambda v: None, home, lambda v: watched(v, home))
    assert vni_prefix(10400) not in feed._start
    assert heard and all(10400 not in t.vnis for t in heard)
    got = feed.read(lambda v: v.binding_of(p.iface_id), home, lambda v: watched(v, home))
    assert vni_prefix(10400) in feed._start and got is not None and got.nve == home
    assert any(10400 in t.vnis for t in heard)
