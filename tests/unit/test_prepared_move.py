"""Make-before-break: the mapping's migration phases and what every NVE programs during them."""

import pytest

from roamnet.mapping.records import ACTIVATED, PREPARED, Binding, LogicalPort, Migration, Nve, Snapshot
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem, MoveRefused
from roamnet.nve.desired import compute_desired
from roamnet.nve.plan import VXLAN_PORT, Actual, plan

NVES = {"hv1": Nve("hv1", "198.18.1.1"), "hv2": Nve("hv2", "198.18.1.3"), "hv3": Nve("hv3", "198.18.2.1"),
        "hv4": Nve("hv4", "198.18.2.3")}
WEB = 10100
VM1, VM2, VM3 = "02:00:00:01:00:01", "02:00:00:01:00:02", "02:00:00:01:00:03"


def snap(migrations=(), bindings=None):
    bindings = bindings or [(VM1, "hv1", "vm1/0"), (VM2, "hv2", "vm2/0"), (VM3, "hv3", "vm3/0")]
    bs = {(WEB, mac): Binding(WEB, mac, nve, NVES[nve].vtep, 0, (), iface) for mac, nve, iface in bindings}
    return Snapshot(1, NVES, {}, bs, {m.iface_id: m for m in migrations})


def prepared(dst="hv4", state=PREPARED):
    return Migration("vm1/0", WEB, VM1, "hv1", dst, NVES[dst].vtep, state, 0.0)


def test_destination_hosts_the_port_and_joins_every_flood_list():
    s = snap([prepared()])
    d4 = compute_desired(s, "hv4")
    assert d4.segments == {WEB}
    assert set(d4.local_ports) == {"vm1/0"}
    assert d4.remote_macs[(WEB, VM1)] == "198.18.1.1" and (WEB, VM1) in d4.dual
    assert d4.remote_macs[(WEB, VM2)] == "198.18.1.3"
    assert d4.flood[WEB] == {"198.18.1.1", "198.18.1.3", "198.18.2.1"}
    for other in ("hv1", "hv2", "hv3"):
        assert "198.18.2.3" in compute_desired(s, other).flood[WEB]


def test_senders_replicate_the_moving_mac_to_source_and_destination():
    s = snap([prepared()])
    for other in ("hv2", "hv3"):
        d = compute_desired(s, other)
        assert (WEB, VM1) in d.replicated and (WEB, VM1) not in d.remote_macs
        assert {"198.18.1.1", "198.18.2.3"} <= d.flood[WEB]
    # the plan keeps the bridge entry on the VXLAN device and withdraws only the unicast entry
    have = Actual(segments={WEB}, bridge_fdb={(WEB, VM1): VXLAN_PORT, (WEB, VM3): VXLAN_PORT},
                  remote_macs={(WEB, VM1): {"198.18.1.1"}, (WEB, VM3): {"198.18.2.1"}},
                  flood={WEB: {"198.18.1.1", "198.18.2.1"}}, ports={"vm2/0": WEB},
                  )
    have.bridge_fdb[(WEB, VM2)] = "vm2/0"
    ops = [str(c) for c in plan(compute_desired(s, "hv2"), have)]
    assert ops == [f"add-flood {WEB} 198.18.2.3", f"del-remote {WEB} {VM1} 198.18.1.1"]


def test_source_and_destination_deliver_locally_and_to_the_other_end():
    s = snap([prepared()])
    src, dst = compute_desired(s, "hv1"), compute_desired(s, "hv4")
    assert "vm1/0" in src.local_ports and "vm1/0" in dst.local_ports
    assert src.remote_macs[(WEB, VM1)] == "198.18.2.3" and dst.remote_macs[(WEB, VM1)] == "198.18.1.1"
    assert (WEB, VM1) in src.dual and (WEB, VM1) in dst.dual
    # no bridge entry for the moving MAC on either end (the bridge floods it to port and VXLAN)
    for want, port_vni in ((src, WEB), (dst, WEB)):
        have = Actual(segments={WEB}, ports={"vm1/0": port_vni},
                      bridge_fdb={(WEB, VM1): "vm1/0" if want is src else VXLAN_PORT})
        ops = [str(c) for c in plan(want, have)]
        assert f"del-bridge-entry {WEB} {VM1}" in ops
        assert not [o for o in ops if o.startswith(f"set-bridge-entry {WEB} {VM1}")]


def test_activation_pins_the_mac_again_before_dropping_the_old_vxlan_entry():
    moved = [(VM1, "hv4", "vm1/0"), (VM2, "hv2", "vm2/0"), (VM3, "hv3", "vm3/0")]
    after = compute_desired(snap([prepared(state=ACTIVATED)], bindings=moved), "hv4")
    have = Actual(segments={WEB}, ports={"vm1/0": WEB}, remote_macs={(WEB, VM1): {"198.18.1.1"}})
    ops = [str(c) for c in plan(after, have)]
    assert ops.index(f"set-bridge-entry {WEB} {VM1} vm1/0") < ops.index(f"del-remote {WEB} {VM1} 198.18.1.1")


def test_activated_move_is_an_ordinary_binding_again():
    moved = [(VM1, "hv4", "vm1/0"), (VM2, "hv2", "vm2/0"), (VM3, "hv3", "vm3/0")]
    s = snap([prepared(state=ACTIVATED)], bindings=moved)
    assert compute_desired(s, "hv2").remote_macs[(WEB, VM1)] == "198.18.2.3"
    assert compute_desired(s, "hv2").replicated == frozenset()
    assert compute_desired(s, "hv1").segments == frozenset()


def test_rollback_restores_the_unicast_entry():
    before = compute_desired(snap(), "hv2")
    assert before.remote_macs[(WEB, VM1)] == "198.18.1.1"
    during = compute_desired(snap([prepared()]), "hv2")
    assert during != before
    assert compute_desired(snap([]), "hv2") == before


# ---- the mapping's phases ----------------------------------------------------------------------

@pytest.fixture
def mapping():
    m = MappingSystem(MemoryStore())
    for n in NVES.values():
        m.register_nve(n)
    port = LogicalPort("vm1/0", "vm1", WEB, VM1, ("198.19.1.11",))
    m.register_port(port)
    m.advertise(Binding(WEB, VM1, "hv1", "198.18.1.1", 0, port.ips, "vm1/0"))
    return m


def test_prepare_leaves_the_binding_and_records_the_move(mapping):
    mig = mapping.prepare("vm1/0", "hv4", timeout=5)
    snap_ = mapping.snapshot()
    assert snap_.binding_of("vm1/0").nve == "hv1"
    assert snap_.migrations["vm1/0"] == mig and mig.state == PREPARED and mig.src == "hv1"


def test_prepare_refuses_bad_requests(mapping):
    with pytest.raises(MoveRefused, match="already on hv1"):
        mapping.prepare("vm1/0", "hv1", timeout=5)
    with pytest.raises(MoveRefused, match="unknown NVE"):
        mapping.prepare("vm1/0", "nope", timeout=5)
    with pytest.raises(MoveRefused, match="unknown VM interface"):
        mapping.prepare("vm9/0", "hv2", timeout=5)
    mapping.prepare("vm1/0", "hv4", timeout=5)
    rev = mapping.store.revision
    with pytest.raises(MoveRefused, match="already in progress"):
        mapping.prepare("vm1/0", "hv2", timeout=5)
    assert mapping.store.revision == rev  # nothing changed


def test_announcement_on_the_destination_activates_with_a_sequence_bump(mapping):
    mapping.prepare("vm1/0", "hv4", timeout=5)
    b, changed = mapping.report_move("vm1/0", "hv4")
    assert changed and b.nve == "hv4" and b.seq == 1
    assert mapping.migration("vm1/0").state == ACTIVATED
    assert mapping.complete("vm1/0").dst == "hv4"
    assert mapping.snapshot().migrations == {}


def test_complete_refuses_an_unactivated_move_and_abort_refuses_an_activated_one(mapping):
    mapping.prepare("vm1/0", "hv4", timeout=5)
    with pytest.raises(MoveRefused, match="not activated"):
        mapping.complete("vm1/0")
    mapping.activate("vm1/0")
    with pytest.raises(MoveRefused, match="already activated"):
        mapping.abort("vm1/0")


def test_a_move_never_activated_expires_and_changes_nothing_else(mapping):
    mig = mapping.prepare("vm1/0", "hv4", timeout=5)
    assert mapping.expire(now=mig.deadline - 1) == []
    assert mapping.expire(now=mig.deadline + 1) == [mig]
    s = mapping.snapshot()
    assert s.migrations == {} and s.binding_of("vm1/0").nve == "hv1" and s.binding_of("vm1/0").seq == 0


def test_a_move_elsewhere_does_not_activate_the_prepared_one(mapping):
    mapping.prepare("vm1/0", "hv4", timeout=5)
    mapping.report_move("vm1/0", "hv2")  # the VM showed up somewhere else (learn path)
    assert mapping.migration("vm1/0").state == PREPARED
