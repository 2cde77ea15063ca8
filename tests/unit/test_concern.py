"""`concerned(view, touched)`: the NVEs a change may alter, against the reference (every NVE's desired
state before and after the change, from whole snapshots), over test_interest's seeded random histories
of moves, prepares, activations, completions, aborts, stops and starts, detaches, advertisements,
expiries, port and policy changes."""

from __future__ import annotations

import pytest
from test_interest import NVES, History, build, desired, own

from roamnet.mapping.records import ROOT
from roamnet.mapping.view import MappingView, Touched
from roamnet.nve.interest import concerned


@pytest.mark.parametrize("seed", range(12))
def test_every_nve_a_change_alters_is_concerned(seed):
    h = History(seed)
    m, view = h.m, h.view
    before = m.snapshot()
    narrowed = 0
    for i, op, touched in h.steps(80):
        after = m.snapshot()
        who = concerned(view, touched)
        for n in NVES:
            if desired(before, n) != desired(after, n) or own(before, n.name) != own(after, n.name):
                assert n.name in who, f"seed {seed} step {i} ({op}): {n.name} changed but is not concerned"
        narrowed += len(who) < len(NVES)
        before = after
    assert narrowed > 30  # most changes concern only some NVEs


def test_a_move_concerns_its_segment_and_tenant_not_the_other_tenant():
    m, ports = build()
    view = MappingView()
    view.load(m.store.range(ROOT)[0])
    p = next(p for p in ports if p.vni == 10300)  # tenant t2's only routed CUG
    b = view.binding_of(p.iface_id)
    who = concerned(view, Touched(0, frozenset({p.vni}), frozenset({b.nve}), frozenset({p.iface_id})))
    hosts = {x.nve for x in view.by_vni[10300].values()}
    assert hosts <= who and {"br1", "br2"} <= who  # the segment's NVEs, and the borders (t2's VRF)
    t1_only = {x.nve for v in (10100, 10200) for x in view.by_vni[v].values()} - hosts - {b.nve}
    assert t1_only and not (t1_only & who)  # servers of tenant t1 only are not waited for
    assert concerned(view, Touched(0, general=True)) == frozenset(view.nves)


def test_a_waiter_asks_only_the_nves_behind_and_asking_changes_no_record():
    from roamnet.mapping.records import NveStatus, SyncRequest, sync_key

    m, _ = build()
    view = MappingView()
    items, rev = m.store.range(ROOT)
    view.load(items)
    m.statuses.publish(NveStatus("hv1", converged_revision=m.revision))
    m.statuses.publish(NveStatus("hv2", converged_revision=1))
    assert not m.statuses.wait_converged(["hv1", "hv2", "hv3"], timeout=0.2)
    asked = tuple(SyncRequest.from_json(m.store.get(sync_key(n)).value) for n in ("hv2", "hv3"))
    assert asked == (SyncRequest(m.revision, frozenset({"hv2"})), SyncRequest(m.revision, frozenset({"hv3"})))
    assert m.store.get(sync_key("hv1")) is None  # hv1 is there already: one key per NVE asked
    assert asked[0].names("hv2") and not asked[0].names("hv1") and SyncRequest(1).names("hv1")
    events, _ = m.store.watch(ROOT, rev + 1, timeout=0)
    touched = view.apply(events)
    assert touched.syncs == asked and not touched.empty
    assert (touched.vnis, touched.nves, touched.general, view.revision) == (frozenset(), frozenset(), False, m.revision)
    assert m.snapshot().revision == m.revision == view.revision  # not a mapping change
