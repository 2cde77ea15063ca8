import pytest

from roamnet.mapping.records import Binding, LogicalPort, Nve
from roamnet.mapping.rules import move, resolve, wins
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem, MoveRefused

MAC = "02:00:00:01:00:01"


def b(nve, vtep, seq):
    return Binding(10100, MAC, nve, vtep, seq, ("198.19.1.11",), "vm1/0")


def test_higher_sequence_wins():
    assert wins(b("hv3", "198.18.2.1", 2), b("hv1", "198.18.1.1", 1))
    assert not wins(b("hv1", "198.18.1.1", 1), b("hv3", "198.18.2.1", 2))


def test_tie_lower_vtep_address_wins():
    low, high = b("hv9", "198.18.1.9", 4), b("hv1", "198.18.2.1", 4)
    assert wins(low, high) and not wins(high, low)
    # numeric, not string, comparison of addresses
    assert wins(b("a", "198.18.1.9", 1), b("b", "198.18.1.10", 1)) is True


def test_resolve_stale_update_keeps_current():
    current = b("hv3", "198.18.2.1", 5)
    assert resolve(current, b("hv1", "198.18.1.1", 4)) is current
    assert resolve(None, current) is current


def test_move_advertises_highest_plus_one():
    port = LogicalPort("vm1/0", "vm1", 10100, MAC, ("198.19.1.11",))
    nve = Nve("hv3", "198.18.2.1")
    assert move(None, port, nve).seq == 0
    assert move(b("hv1", "198.18.1.1", 7), port, nve).seq == 8


@pytest.fixture
def ms():
    m = MappingSystem(MemoryStore())
    for n, v in (("hv1", "198.18.1.1"), ("hv2", "198.18.1.3"), ("hv3", "198.18.2.1")):
        m.register_nve(Nve(n, v))
    m.register_port(LogicalPort("vm1/0", "vm1", 10100, MAC, ("198.19.1.11",)))
    m.advertise(b("hv1", "198.18.1.1", 0))
    return m


def test_report_move_bumps_sequence(ms):
    new, changed = ms.report_move("vm1/0", "hv3")
    assert changed and new.nve == "hv3" and new.seq == 1 and new.vtep == "198.18.2.1"
    again, changed = ms.report_move("vm1/0", "hv3")  # RARP after the port appeared: no-op
    assert not changed and again == new
    back, _ = ms.report_move("vm1/0", "hv1")
    assert back.seq == 2 and ms.snapshot().binding_of("vm1/0").nve == "hv1"


def test_advertise_ignores_stale_and_applies_ties(ms):
    ms.report_move("vm1/0", "hv3")  # seq 1 at hv3 (198.18.2.1)
    held = ms.advertise(b("hv2", "198.18.1.3", 0))  # stale
    assert held.nve == "hv3"
    tie = ms.advertise(b("hv2", "198.18.1.3", 1))  # same seq, lower VTEP address wins
    assert tie.nve == "hv2" and ms.snapshot().binding_of("vm1/0").nve == "hv2"
    lost_tie = ms.advertise(b("hv3", "198.18.2.1", 1))
    assert lost_tie.nve == "hv2"


def test_report_move_unknown_port_or_nve(ms):
    with pytest.raises(MoveRefused):
        ms.report_move("nope/0", "hv1")
    with pytest.raises(MoveRefused):
        ms.report_move("vm1/0", "hv99")
    assert ms.snapshot().binding_of("vm1/0").nve == "hv1"  # nothing changed


def test_wait_for(ms):
    assert ms.wait_for(lambda s: s.binding_of("vm1/0").nve == "hv1", 0.1) is not None
    assert ms.wait_for(lambda s: s.binding_of("vm1/0").nve == "hv3", 0.05) is None
