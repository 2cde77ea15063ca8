"""Mobility safety in the mapping, pure and in the mapping system: duplicate detection's window,
freezing, thawing, sticky interfaces, and who may claim a binding."""

from __future__ import annotations

import pytest
from mapping_fixtures import NVES, Clock

from roamnet.mapping.records import Binding, LogicalPort, Nve, Segment
from roamnet.mapping.rules import detect_duplicate, recent_moves
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import FROZEN, ORCHESTRATOR, PORT_UP, STICKY, MappingSystem, Refused

WEB, MAC = 10100, "02:00:00:01:00:01"


def test_the_window_counts_only_recent_moves():
    assert recent_moves((10.0, 100.0, 150.0), 200.0, 180.0) == (100.0, 150.0)  # 10 s is 190 s ago
    seen, dup = detect_duplicate((1.0, 2.0, 3.0), 4.0, 5, 180.0)
    assert seen == (1.0, 2.0, 3.0, 4.0) and not dup
    seen, dup = detect_duplicate(seen, 5.0, 5, 180.0)
    assert dup  # the 5th move within 180 s
    assert not detect_duplicate(seen, 500.0, 5, 180.0)[1]  # long after: the old moves do not count


def system(sticky: bool = False, hold: float = 0.0, max_moves: int = 5) -> tuple[MappingSystem, Clock]:
    clock = Clock()
    m = MappingSystem(MemoryStore(), clock=clock)
    m.register_segment(Segment(WEB, "web", "198.19.1.0/24", max_moves=max_moves, window_s=180.0, hold_down_s=hold))
    for nve in NVES.values():
        m.register_nve(nve)
    port = LogicalPort("vm1/0", "vm1", WEB, MAC, ("198.19.1.11",), sticky=sticky)
    m.register_port(port)
    m.advertise(Binding(WEB, MAC, "hv1", NVES["hv1"].vtep, 0, port.ips, "vm1/0"))
    return m, clock


def flap(m: MappingSystem, clock: Clock, times: int) -> list[str]:
    """Alternate claims hv2, hv1, hv2, ... one second apart; the outcome of each."""
    out = []
    for i in range(times):
        clock.now += 1.0
        try:
            out.append("moved" if m.report_move("vm1/0", ("hv2", "hv1")[i % 2])[1] else "kept")
        except Refused as exc:
            out.append(exc.reason)
    return out


def test_the_fifth_move_in_the_window_freezes_the_binding_where_it_is():
    m, clock = system()
    assert flap(m, clock, 7) == ["moved"] * 4 + [FROZEN, "kept", FROZEN]  # hv1 holds it: its report is a no-op
    b = m.snapshot().binding_of("vm1/0")
    assert (b.nve, b.seq, b.frozen, b.frozen_until) == ("hv1", 4, True, 0.0)  # after 4 moves: back on hv1
    clock.now += 10_000  # no hold-down: frozen until a command
    assert flap(m, clock, 1) == [FROZEN]
    thawed = m.unfreeze("vm1/0")
    assert (thawed.nve, thawed.frozen, thawed.moves) == ("hv1", False, ())
    assert flap(m, clock, 1) == ["moved"]


def test_a_hold_down_thaws_by_itself():
    m, clock = system(hold=60.0)
    assert flap(m, clock, 5)[-1] == FROZEN
    clock.now += 30
    assert flap(m, clock, 1) == [FROZEN]
    clock.now += 31
    assert flap(m, clock, 1) == ["moved"]


def test_a_planned_move_counts_as_one_move():
    m, clock = system(max_moves=2)
    m.prepare("vm1/0", "hv2", timeout=30)
    clock.now += 1
    b, changed = m.activate("vm1/0")
    assert changed and b.nve == "hv2" and len(b.moves) == 1
    m.complete("vm1/0")
    clock.now += 1
    with pytest.raises(Refused) as err:
        m.report_move("vm1/0", "hv1")
    assert err.value.reason == FROZEN and "moved 1 times" in str(err.value)


def test_a_sticky_interface_moves_only_by_a_planned_move():
    m, clock = system(sticky=True)
    with pytest.raises(Refused) as err:
        m.report_move("vm1/0", "hv2")
    assert err.value.reason == STICKY and m.snapshot().binding_of("vm1/0").nve == "hv1"
    m.prepare("vm1/0", "hv3", timeout=30)
    assert m.report_move("vm1/0", "hv3", ORCHESTRATOR)[0].nve == "hv3"


def test_a_port_up_claims_only_a_detached_binding():
    m, clock = system()
    assert m.report_move("vm1/0", "hv2", PORT_UP) == (m.snapshot().binding_of("vm1/0"), False)
    assert m.snapshot().binding_of("vm1/0").nve == "hv1"
    assert not m.set_detached("vm1/0", "hv2", True), "only the binding's own NVE says it is detached"
    assert m.set_detached("vm1/0", "hv1", True) and not m.set_detached("vm1/0", "hv1", True)
    b, changed = m.report_move("vm1/0", "hv2", PORT_UP)
    assert changed and (b.nve, b.seq, b.detached) == ("hv2", 1, False)


def test_the_intent_sets_sticky_and_duplicate_detection_per_fabric_and_cug():
    from roamnet.intent.compile import compile_topology
    from roamnet.intent.model import parse_topology

    topo = parse_topology({
        "name": "x", "datacenters": {"dc1": {"servers": ["hv1"]}}, "mobility": {"max_moves": 3},
        "cugs": {"a": {"vni": 10, "subnet": "198.19.1.0/24", "mobility": {"window_s": 60, "hold_down_s": 30}},
                 "b": {"vni": 11, "subnet": "198.19.2.0/24"}},
        "vms": {"gw": {"server": "hv1", "interfaces": [{"cug": "a", "mac": "02:00:00:00:00:01", "ip": "198.19.1.1",
                                                          "sticky": True}]}}})
    rec = compile_topology(topo, [Nve("hv1", "198.18.1.1", "dc1")])
    segs = {s.name: s for s in rec.segments}
    assert (segs["a"].max_moves, segs["a"].window_s, segs["a"].hold_down_s) == (3, 60, 30)
    assert (segs["b"].max_moves, segs["b"].window_s, segs["b"].hold_down_s) == (3, 180.0, 0.0)
    assert rec.ports[0].sticky and rec.bindings[0].detached  # no port exists before the lab plugs the VM
    with pytest.raises(ValueError, match=r"mobility.max_moves: input should be greater than or equal to 2"):
        parse_topology({"name": "x", "datacenters": {"dc1": {"servers": ["hv1"]}}, "mobility": {"max_moves": 1}})


def test_a_freeze_returns_the_binding_where_it_was_before_the_moves_began():
    """A clone on hv2 and a loop to hv3 bounce vm1 (stable on hv1) between them: the duplicate is
    frozen on hv1, the last stable location, with a higher sequence number so every NVE follows."""
    m, clock = system()
    for nve in ("hv2", "hv3", "hv2", "hv3"):
        clock.now += 1
        assert m.report_move("vm1/0", nve)[1]
    assert m.snapshot().binding_of("vm1/0").stable == "hv1"
    clock.now += 1
    with pytest.raises(Refused, match="frozen on hv1, where it was before"):
        m.report_move("vm1/0", "hv2")
    b = m.snapshot().binding_of("vm1/0")
    assert (b.nve, b.vtep, b.seq, b.frozen) == ("hv1", "198.18.1.1", 5, True)
    clock.now += 1000  # long after the window: a move starts a new window from where it is
    m.unfreeze("vm1/0")
    clock.now += 1
    assert m.report_move("vm1/0", "hv3")[0].stable == "hv1"


def test_a_cold_move_keeps_the_vm_reserved_while_stopped_and_starts_it_elsewhere():
    from roamnet.mapping.system import STOPPED, MoveRefused
    from roamnet.nve.desired import compute_desired

    m, clock = system()
    port2 = LogicalPort("vm2/0", "vm2", WEB, "02:00:00:01:00:02", ("198.19.1.12",))
    m.register_port(port2)
    m.advertise(Binding(WEB, port2.mac, "hv3", NVES["hv3"].vtep, 0, port2.ips, "vm2/0"))
    before = compute_desired(m.snapshot(), "hv3")
    assert before.remote_macs[(WEB, MAC)] == "198.18.1.1" and (WEB, "198.19.1.11") in before.arp
    assert "198.18.1.1" in before.flood[WEB]
    stopped = m.stop("vm1/0")
    assert (stopped.nve, stopped.seq, stopped.stopped, stopped.detached) == ("hv1", 0, True, True)
    on3 = compute_desired(m.snapshot(), "hv3")  # nobody forwards to it, answers ARP for it, or floods to hv1
    assert (WEB, MAC) not in on3.remote_macs and (WEB, "198.19.1.11") not in on3.arp
    assert "198.18.1.1" not in on3.flood[WEB] and WEB not in compute_desired(m.snapshot(), "hv1").segments
    for by in ("announcement", PORT_UP):  # reserved: nothing else may claim it
        with pytest.raises(Refused) as err:
            m.report_move("vm1/0", "hv2", by)
        assert err.value.reason == STOPPED
    assert not m.set_detached("vm1/0", "hv1", False)
    started = m.start("vm1/0", "hv3")
    assert (started.nve, started.seq, started.stopped, started.detached) == ("hv3", 1, False, True)
    assert compute_desired(m.snapshot(), "hv3").local_ports["vm1/0"].vni == WEB
    with pytest.raises(MoveRefused, match="not stopped"):
        m.start("vm1/0", "hv2")
