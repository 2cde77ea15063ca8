"""ARP suppression from the mapping: every NVE of a segment has a neighbour entry per VM IP of the
segment, follows moves and IP changes, and drops entries of segments and VMs that are gone."""

from __future__ import annotations

from roamnet.mapping.records import Binding, LogicalPort, Nve
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem
from roamnet.nve.desired import compute_desired
from roamnet.nve.plan import Actual, Change, apply_to, plan

WEB, DB = 10100, 10200


def mapping() -> MappingSystem:
    m = MappingSystem(MemoryStore())
    for name, vtep in (("hv1", "198.18.1.1"), ("hv2", "198.18.1.3"), ("hv3", "198.18.2.1")):
        m.register_nve(Nve(name, vtep, "dc1", "server"))
    return m


def bind(m: MappingSystem, iface: str, vni: int, mac: str, ip: str, server: str) -> None:
    m.register_port(LogicalPort(iface, iface.split("/")[0], vni, mac, (ip,)))
    nve = m.snapshot().nves[server]
    m.advertise(Binding(vni, mac, server, nve.vtep, 0, (ip,), iface))


def test_every_vm_ip_of_hosted_segments_local_and_remote():
    m = mapping()
    bind(m, "vm1/0", WEB, "02:00:00:01:00:11", "198.19.1.11", "hv1")
    bind(m, "vm2/0", WEB, "02:00:00:01:00:12", "198.19.1.12", "hv2")
    bind(m, "vm4/0", DB, "02:00:00:02:00:14", "198.19.2.14", "hv2")
    want = compute_desired(m.snapshot(), "hv1")
    assert want.arp == {(WEB, "198.19.1.11"): "02:00:00:01:00:11", (WEB, "198.19.1.12"): "02:00:00:01:00:12"}
    assert compute_desired(m.snapshot(), "hv3").arp == {}  # hosts no segment


def test_plan_sets_missing_and_removes_stale_entries_idempotently():
    m = mapping()
    bind(m, "vm1/0", WEB, "02:00:00:01:00:11", "198.19.1.11", "hv1")
    bind(m, "vm2/0", WEB, "02:00:00:01:00:12", "198.19.1.12", "hv2")
    want = compute_desired(m.snapshot(), "hv1")
    have = Actual(segments={WEB}, ports={"vm1/0": WEB},
                  arp={(WEB, "198.19.1.12"): "02:00:00:01:00:99", (WEB, "198.19.1.77"): "02:00:00:01:00:77"})
    changes = plan(want, have)
    assert Change("set-arp", WEB, "02:00:00:01:00:11", "198.19.1.11") in changes
    assert Change("set-arp", WEB, "02:00:00:01:00:12", "198.19.1.12") in changes  # a wrong MAC is replaced
    assert Change("del-arp", WEB, "02:00:00:01:00:77", "198.19.1.77") in changes
    assert plan(want, apply_to(have, changes)) == []


def test_entries_stay_through_a_move_and_go_with_the_segment():
    m = mapping()
    bind(m, "vm1/0", WEB, "02:00:00:01:00:11", "198.19.1.11", "hv1")
    bind(m, "vm2/0", WEB, "02:00:00:01:00:12", "198.19.1.12", "hv2")
    before = compute_desired(m.snapshot(), "hv2").arp
    m.report_move("vm1/0", "hv3")
    assert compute_desired(m.snapshot(), "hv2").arp == before  # location is not part of an ARP answer
    m.report_move("vm2/0", "hv3")
    have = Actual(segments={WEB}, arp=dict(before))
    changes = plan(compute_desired(m.snapshot(), "hv2"), have)
    assert changes == [Change("del-segment", WEB)]  # the bridge takes its entries with it
