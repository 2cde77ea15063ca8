from roamnet.mapping.records import Binding, Nve, Snapshot
from roamnet.nve.desired import compute_desired
from roamnet.nve.plan import Actual, Change, apply_to, plan

apply_in_memory = apply_to

NVES = {"hv1": Nve("hv1", "198.18.1.1"), "hv2": Nve("hv2", "198.18.1.3"), "hv3": Nve("hv3", "198.18.2.1")}
WEB, DB = 10100, 10200


def snap(*placements):
    """placements: (vni, mac, nve, iface)"""
    bindings = {}
    for vni, mac, nve, iface in placements:
        bindings[(vni, mac)] = Binding(vni, mac, nve, NVES[nve].vtep, 0, (), iface)
    return Snapshot(1, NVES, {}, bindings)


BASE = [(WEB, "02:00:00:01:00:01", "hv1", "vm1/0"), (WEB, "02:00:00:01:00:02", "hv2", "vm2/0"),
        (WEB, "02:00:00:01:00:03", "hv3", "vm3/0"), (DB, "02:00:00:02:00:04", "hv2", "vm4/0")]


def test_segments_only_where_hosted():
    s = snap(*BASE)
    assert compute_desired(s, "hv1").segments == {WEB}
    assert compute_desired(s, "hv2").segments == {WEB, DB}
    assert compute_desired(s, "hv3").segments == {WEB}


def test_flood_list_is_exactly_the_other_hosting_nves():
    d = compute_desired(snap(*BASE), "hv1")
    assert d.flood == {WEB: {"198.18.1.3", "198.18.2.1"}}
    assert compute_desired(snap(*BASE), "hv2").flood[DB] == frozenset()


def test_remote_macs_only_for_own_segments():
    d = compute_desired(snap(*BASE), "hv1")
    assert d.remote_macs == {(WEB, "02:00:00:01:00:02"): "198.18.1.3", (WEB, "02:00:00:01:00:03"): "198.18.2.1"}
    assert set(d.local_ports) == {"vm1/0"}


def test_pruning_when_last_vm_leaves():
    moved = [p if p[3] != "vm1/0" else (WEB, p[1], "hv3", p[3]) for p in BASE]
    s = snap(*moved)
    assert compute_desired(s, "hv1").segments == frozenset()
    assert compute_desired(s, "hv1").flood == {}
    for other in ("hv2", "hv3"):
        assert "198.18.1.1" not in compute_desired(s, other).flood.get(WEB, set())
    assert compute_desired(s, "hv2").remote_macs[(WEB, "02:00:00:01:00:01")] == "198.18.2.1"


def test_plan_from_empty_then_idempotent():
    want = compute_desired(snap(*BASE), "hv2")
    have = Actual(ports={"vm2/0": None, "vm4/0": None})
    changes = plan(want, have)
    ops = [c.op for c in changes]
    assert ops[:2] == ["add-segment", "add-segment"]
    assert ops.index("attach-port") < ops.index("set-bridge-entry")
    apply_in_memory(have, changes)
    assert plan(want, have) == []  # a second pass (or a restarted agent) changes nothing


def test_plan_after_move_updates_only_what_changed():
    have = apply_in_memory(Actual(ports={"vm2/0": None, "vm4/0": None}), [])
    before = compute_desired(snap(*BASE), "hv2")
    apply_in_memory(have, plan(before, have))
    moved = [p if p[3] != "vm1/0" else (WEB, p[1], "hv3", p[3]) for p in BASE]
    changes = plan(compute_desired(snap(*moved), "hv2"), have)
    assert Change("set-remote", WEB, "02:00:00:01:00:01", "198.18.2.1") in changes
    assert Change("del-flood", WEB, target="198.18.1.1") in changes
    assert not any(c.op in ("add-segment", "del-segment", "set-bridge-entry") for c in changes)


def test_plan_removes_segment_and_stale_entries():
    have = Actual(segments={WEB, 99}, ports={}, bridge_fdb={(WEB, "02:00:00:00:00:aa"): "vx"},
                  remote_macs={(WEB, "02:00:00:00:00:aa"): {"198.18.9.9"}}, flood={WEB: {"198.18.9.9"}})
    want = compute_desired(snap((WEB, "02:00:00:01:00:01", "hv1", "vm1/0")), "hv1")
    changes = plan(want, have)
    assert Change("del-segment", 99) in changes
    assert Change("del-bridge-entry", WEB, "02:00:00:00:00:aa") in changes
    assert Change("del-remote", WEB, "02:00:00:00:00:aa", "198.18.9.9") in changes
    assert Change("del-flood", WEB, target="198.18.9.9") in changes
    assert changes[-1] == Change("del-segment", 99)  # removals come last


def test_local_mac_replaces_stale_remote_entry_on_arrival():
    # hv3 had vm1 as remote; vm1 arrives on hv3: the bridge entry must point at the local port
    have = Actual(segments={WEB}, ports={"vm1/0": None}, bridge_fdb={(WEB, "02:00:00:01:00:01"): "vx"},
                  remote_macs={(WEB, "02:00:00:01:00:01"): {"198.18.1.1"}}, flood={WEB: {"198.18.1.1"}})
    moved = [(WEB, "02:00:00:01:00:01", "hv3", "vm1/0"), (WEB, "02:00:00:01:00:02", "hv2", "vm2/0")]
    changes = plan(compute_desired(snap(*moved), "hv3"), have)
    assert Change("attach-port", WEB, target="vm1/0") in changes
    assert Change("set-bridge-entry", WEB, "02:00:00:01:00:01", "vm1/0") in changes
    assert Change("del-remote", WEB, "02:00:00:01:00:01", "198.18.1.1") in changes
