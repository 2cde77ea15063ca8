"""L2 physical domains: VLAN allocation by the mapping system, the ToR's and the hypervisor switch's
desired state, and what a move inside one ToR changes (nothing anywhere else)."""

from __future__ import annotations

import pytest

from roamnet.mapping.records import Binding, Domain, LogicalPort, Nve
from roamnet.mapping.rules import VlanExhausted, allocate, release
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem, MoveRefused
from roamnet.nve.desired import compute_desired
from roamnet.nve.plan import Actual, Change, plan
from roamnet.nve.switch import SwitchActual, compute_switch, plan_switch

WEB, DB, APP = 10100, 10200, 10300
POD1 = Domain("pod1", "dc1", "tor1", ("hv1", "hv2"), 100, 101)
POD2 = Domain("pod2", "dc1", "tor2", ("hv3",), 200, 299)
TOR1, TOR2, HV5 = "198.18.1.1", "198.18.1.3", "198.18.1.5"


# ---- allocation rules (pure) -------------------------------------------------------------------

def test_allocate_lowest_free_and_stable():
    used = allocate(POD1, {}, WEB)
    assert used == {WEB: 100}
    assert allocate(POD1, used, WEB) is used  # present already: unchanged, same object
    used = allocate(POD1, used, DB)
    assert used == {WEB: 100, DB: 101}
    used = release(used, {DB})  # web left: its VLAN is free again, db keeps 101
    assert used == {DB: 101}
    assert allocate(POD1, used, APP) == {DB: 101, APP: 100}


def test_allocate_exhausted_names_domain_and_range():
    with pytest.raises(VlanExhausted) as exc:
        allocate(POD1, {WEB: 100, DB: 101}, APP)
    msg = str(exc.value)
    assert "pod1" in msg and "100-101" in msg and str(APP) in msg


def test_two_cugs_never_share_and_ranges_are_per_domain():
    a = allocate(POD1, allocate(POD1, {}, WEB), DB)
    b = allocate(POD2, {}, DB)
    assert len(set(a.values())) == 2
    assert b == {DB: 200}  # the same CUG, another VLAN in another domain


# ---- the mapping system ------------------------------------------------------------------------

def mapping(store=None) -> MappingSystem:
    m = MappingSystem(store or MemoryStore())
    if store is None:
        for d in (POD1, POD2):
            m.register_domain(d)
        m.register_nve(Nve("tor1", TOR1, "dc1", "tor", domain="pod1"))
        m.register_nve(Nve("tor2", TOR2, "dc1", "tor", domain="pod2"))
        for hv, tor, vtep, dom in (("hv1", "tor1", TOR1, "pod1"), ("hv2", "tor1", TOR1, "pod1"),
                                   ("hv3", "tor2", TOR2, "pod2")):
            m.register_nve(Nve(hv, vtep, "dc1", "server", tor, dom))
        m.register_nve(Nve("hv5", HV5, "dc1", "server"))
    return m


def add_vm(m: MappingSystem, iface: str, vni: int, mac: str, server: str, guest_vlan: int = 0) -> None:
    port = LogicalPort(iface, iface.split("/")[0], vni, mac, (), guest_vlan)
    m.register_port(port)
    nve = m.snapshot().nves[server]
    m.advertise(Binding(vni, mac, server, nve.vtep, 0, (), iface))


def test_binding_allocates_and_last_member_leaving_releases():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1")
    add_vm(m, "vm2/0", WEB, "02:00:00:00:00:02", "hv2")
    assert m.snapshot().vlans == {"pod1": {WEB: 100}}
    m.report_move("vm1/0", "hv3")
    snap = m.snapshot()
    assert snap.vlans == {"pod1": {WEB: 100}, "pod2": {WEB: 200}}  # vm2 still holds web in pod1
    assert snap.binding_of("vm1/0").vtep == TOR2  # bound to the server, with its ToR's VTEP
    m.report_move("vm2/0", "hv5")  # the last web member leaves pod1: its VLAN is released
    assert m.snapshot().vlans == {"pod2": {WEB: 200}}


def test_allocations_survive_a_restart_of_the_mapping_system():
    store = MemoryStore()
    m = mapping()
    m.store = store  # (build on a store we keep)
    m = MappingSystem(store)
    for d in (POD1, POD2):
        m.register_domain(d)
    m.register_nve(Nve("hv1", TOR1, "dc1", "server", "tor1", "pod1"))
    m.register_nve(Nve("tor1", TOR1, "dc1", "tor", domain="pod1"))
    add_vm(m, "vm1/0", DB, "02:00:00:00:00:01", "hv1")
    add_vm(m, "vm2/0", WEB, "02:00:00:00:00:02", "hv1")
    before = m.snapshot().vlans
    restarted = MappingSystem(store)  # a new mapping system process on the same store
    assert restarted.snapshot().vlans == before == {"pod1": {DB: 100, WEB: 101}}
    add_vm(restarted, "vm3/0", WEB, "02:00:00:00:00:03", "hv1")
    assert restarted.snapshot().vlans == before  # stable: web keeps 101


def test_exhausted_range_refuses_move_and_changes_nothing():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1")
    add_vm(m, "vm2/0", DB, "02:00:00:00:00:02", "hv2")
    add_vm(m, "vm3/0", APP, "02:00:00:00:00:03", "hv5")
    before = m.snapshot()
    with pytest.raises(MoveRefused, match=r"pod1.*100-101"):
        m.report_move("vm3/0", "hv1")
    with pytest.raises(MoveRefused, match=r"pod1.*100-101"):
        m.prepare("vm3/0", "hv2", timeout=5)
    after = m.snapshot()
    assert after.revision == before.revision  # not one write
    assert after.bindings == before.bindings and after.vlans == before.vlans and not after.migrations


def test_prepare_allocates_and_abort_releases():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv5")
    m.prepare("vm1/0", "hv3", timeout=5)
    assert m.snapshot().vlans == {"pod2": {WEB: 200}}  # the destination's ToR needs it before activation
    m.abort("vm1/0")
    assert m.snapshot().vlans == {}


def test_moves_to_a_tor_are_refused():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv5")
    with pytest.raises(MoveRefused, match="ToR switch"):
        m.report_move("vm1/0", "tor1")


# ---- desired state: ToR and hypervisor switch --------------------------------------------------

def test_tor_reaches_its_servers_vms_through_trunk_vlan_ports():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1", guest_vlan=30)
    add_vm(m, "vm2/0", WEB, "02:00:00:00:00:02", "hv2")
    add_vm(m, "vm5/0", WEB, "02:00:00:00:00:05", "hv5")
    tor = compute_desired(m.snapshot(), "tor1")
    assert tor.attachments == {"hv1:100": WEB, "hv2:100": WEB}
    assert tor.local_ports["vm1/0"].attachment == "hv1:100"
    assert tor.remote_macs == {(WEB, "02:00:00:00:00:05"): HV5}
    assert tor.flood == {WEB: frozenset({HV5})}
    hv5 = compute_desired(m.snapshot(), "hv5")
    assert hv5.remote_macs[(WEB, "02:00:00:00:00:01")] == TOR1
    assert hv5.flood == {WEB: frozenset({TOR1})}  # one ToR, however many servers behind it
    sw = compute_switch(m.snapshot(), "hv1")
    assert sw.vlans == {100} and sw.ports == {"vm1/0": (100, 30)}  # guest tag 30 <-> domain VLAN 100
    # a VM behind a ToR is filtered at its own port on its server; the ToR sees only trunks
    assert set(sw.filters) == {"vm1/0"} and sw.filters["vm1/0"].mac == "02:00:00:00:00:01"
    assert tor.filters == {} and set(hv5.filters) == {"vm5/0"}


def test_plan_creates_trunk_ports_and_removes_unneeded_ones():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1")
    want = compute_desired(m.snapshot(), "tor1")
    changes = plan(want, Actual())
    ops = [(c.op, c.target) for c in changes]
    assert ("attach-port", "hv1:100") in ops
    assert Change("set-bridge-entry", WEB, "02:00:00:00:00:01", "hv1:100") in changes
    assert ops.index(("attach-port", "hv1:100")) < ops.index(("set-bridge-entry", "hv1:100"))
    have = Actual(segments={WEB}, ports={"hv1:100": WEB, "hv2:101": WEB},
                  bridge_fdb={(WEB, "02:00:00:00:00:01"): "hv1:100"}, orphans={"vm9-e0/30"})
    changes = plan(want, have)
    assert Change("detach-port", WEB, target="hv2:101") in changes
    assert Change("del-vlan-port", 0, target="vm9-e0/30") in changes
    assert not any(c.op == "attach-port" for c in changes)


def test_move_inside_one_tor_changes_no_other_nve():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1")
    add_vm(m, "vm5/0", WEB, "02:00:00:00:00:05", "hv5")
    remote_before = compute_desired(m.snapshot(), "hv5")
    m.prepare("vm1/0", "hv2", timeout=5)
    prepared = m.snapshot()
    assert compute_desired(prepared, "hv5") == remote_before  # not even during the prepared move
    tor = compute_desired(prepared, "tor1")
    assert tor.attachments == {"hv1:100": WEB, "hv2:100": WEB}
    assert (WEB, "02:00:00:00:00:01") in tor.dual  # both trunks get its frames
    assert (WEB, "02:00:00:00:00:01") not in tor.remote_macs
    assert compute_switch(prepared, "hv2").ports == {"vm1/0": (100, 0)}
    m.report_move("vm1/0", "hv2")
    m.complete("vm1/0")
    after = m.snapshot()
    assert compute_desired(after, "hv5") == remote_before
    assert compute_desired(after, "tor1").local_ports["vm1/0"].attachment == "hv2:100"
    assert compute_switch(after, "hv1").ports == {}


def test_move_between_domains_uses_each_domains_vlan():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1", guest_vlan=30)
    m.report_move("vm1/0", "hv3")
    snap = m.snapshot()
    assert compute_switch(snap, "hv3").ports == {"vm1/0": (200, 30)}  # other VLAN, same guest tag
    assert compute_desired(snap, "tor2").local_ports["vm1/0"].attachment == "hv3:200"
    assert compute_desired(snap, "tor1").segments == frozenset()


def test_switch_plan_order_and_removal():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1", guest_vlan=30)
    want = compute_switch(m.snapshot(), "hv1")
    changes = plan_switch(want, SwitchActual(ports={"vm1/0": None}))
    assert changes == [Change("add-vlan", 100), Change("attach-port", 100, target="vm1/0"),
                       Change("set-bridge-entry", 100, "02:00:00:00:00:01", "vm1/0")]
    stale = SwitchActual(vlans={100, 101}, ports={"vm1/0": 100}, orphans={"vm7-e0/30"},
                         bridge_fdb={(100, "02:00:00:00:00:01"): "vm1/0", (100, "02:00:00:00:00:09"): "trunk"})
    assert plan_switch(want, stale) == [Change("del-bridge-entry", 100, "02:00:00:00:00:09"),
                                        Change("del-vlan-port", 0, target="vm7-e0/30"), Change("del-vlan", 101)]


def test_switch_static_entries_follow_the_mapping():
    m = mapping()
    add_vm(m, "vm1/0", WEB, "02:00:00:00:00:01", "hv1")
    add_vm(m, "vm2/0", WEB, "02:00:00:00:00:02", "hv2")
    add_vm(m, "vm5/0", WEB, "02:00:00:00:00:05", "hv5")
    assert compute_switch(m.snapshot(), "hv1").fdb == {
        (100, "02:00:00:00:00:01"): "vm1/0", (100, "02:00:00:00:00:02"): "trunk", (100, "02:00:00:00:00:05"): "trunk"}
    m.prepare("vm2/0", "hv1", timeout=5)  # on its way here: no entry on either server (both get its frames)
    assert (100, "02:00:00:00:00:02") not in compute_switch(m.snapshot(), "hv1").fdb
    assert (100, "02:00:00:00:00:02") not in compute_switch(m.snapshot(), "hv2").fdb
    m.report_move("vm2/0", "hv1")
    m.complete("vm2/0")
    assert compute_switch(m.snapshot(), "hv1").fdb[(100, "02:00:00:00:00:02")] == "vm2/0"
