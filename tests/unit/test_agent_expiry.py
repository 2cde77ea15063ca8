"""A prepared move nobody activates is rolled back by the destination's agent after its deadline (the
mapping's clock), with no lab and no orchestrator: agent loops over a model kernel, against the
MemoryStore and a real etcd member. Each rollback is a compare-and-swap that leaves a move activated
or prepared again meanwhile."""

from __future__ import annotations

import pytest
from mapping_fixtures import NVES, VM1, WEB, Clock, web_mapping
from test_store import etcd_server, store  # noqa: F401 - the memory / etcd store fixture

from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import ACTIVATED
from roamnet.mapping.system import MappingSystem


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mapping(store, clock) -> MappingSystem:  # noqa: F811
    return web_mapping(store, clock)


def agent(mapping: MappingSystem, nve: str) -> tuple[ModelKernel, Agent]:
    k = ModelKernel(nve)
    if nve in ("hv1", "hv2"):
        k.add_port(f"vm{nve[-1]}/0")
    return k, Agent(MappingClient(mapping), NVES[nve], k)


def test_the_destination_rolls_back_its_prepared_move_after_the_deadline(mapping, clock):
    (_, a1), (_, a2), (k3, a3) = agent(mapping, "hv1"), agent(mapping, "hv2"), agent(mapping, "hv3")
    mig = mapping.prepare("vm1/0", "hv3", timeout=30)
    assert mig.deadline == clock.now + 30  # the mapping's clock
    a2.reconcile()
    a3.reconcile()
    assert WEB in k3.actual.segments, "the destination got ready"
    assert (WEB, VM1) not in a2.kernel.actual.remote_macs, "hv2 delivers vm1's frames to both ends"
    clock.now = mig.deadline - 1
    for a in (a1, a2, a3):
        a.reconcile()
    assert "vm1/0" in mapping.snapshot().migrations, "not before its deadline"
    clock.now = mig.deadline + 1
    a1.reconcile()
    a2.reconcile()
    assert "vm1/0" in mapping.snapshot().migrations, "only the destination's agent expires its moves"
    a3.reconcile()
    snap = mapping.snapshot()
    assert snap.migrations == {}
    b = snap.binding_of("vm1/0")
    assert (b.nve, b.seq) == ("hv1", 0), "the binding never changed"
    assert a3.pending_prunes == {WEB}, "the destination lets the segment go (after the prune hold)"
    a2.reconcile()
    assert NVES["hv3"].vtep not in a2.kernel.actual.flood[WEB]
    assert a2.kernel.actual.remote_macs[(WEB, VM1)] == {NVES["hv1"].vtep}, "hv2 sends to hv1 alone again"


def test_an_activated_move_is_never_rolled_back(mapping, clock):
    (k3, a3) = agent(mapping, "hv3")
    mig = mapping.prepare("vm1/0", "hv3", timeout=30)
    k3.add_port("vm1/0")
    a3._link_event()
    a3.reconcile()
    a3._announcement(ModelKernel.device("vm1/0"), VM1)  # the VM resumed on hv3 and sent its RARP
    clock.now = mig.deadline + 60
    a3.reconcile()
    snap = mapping.snapshot()
    assert snap.migrations["vm1/0"].state == ACTIVATED and snap.binding_of("vm1/0").nve == "hv3"


def test_several_callers_expire_a_move_once_and_spare_one_prepared_again(mapping, clock):
    other = MappingSystem(mapping.store, clock=clock)  # e.g. a restarted agent's while the old one still runs
    mig = mapping.prepare("vm1/0", "hv3", timeout=30)
    clock.now = mig.deadline + 1
    first, second = mapping.expire(dst="hv3"), other.expire(dst="hv3")
    assert [first, second] == [[mig], []]
    # a move prepared again between a caller's read and its rollback is not the one it read
    old = mapping.prepare("vm1/0", "hv3", timeout=30)
    clock.now = old.deadline + 1
    mapping.abort("vm1/0")
    again = mapping.prepare("vm1/0", "hv3", timeout=30)
    assert mapping._abort("vm1/0", past=old.deadline + 1) is None
    assert mapping.snapshot().migrations["vm1/0"] == again


def activate_on_hv3(mapping: MappingSystem, clock, complete_within: float = 0.0):
    """vm1 prepared to hv3 and activated there by its announcement (hv3's agent) at clock.now."""
    k3, a3 = agent(mapping, "hv3")
    mapping.prepare("vm1/0", "hv3", timeout=30, complete_within=complete_within)
    k3.add_port("vm1/0")
    a3._link_event()
    a3.reconcile()
    a3._announcement(ModelKernel.device("vm1/0"), VM1)
    return k3, a3


def test_an_activated_move_nobody_completes_is_completed_by_the_destination_after_its_completion_time(
        mapping, clock):
    (_, a1), (_, a2) = agent(mapping, "hv1"), agent(mapping, "hv2")
    activated_at = clock.now = clock.now + 5
    _, a3 = activate_on_hv3(mapping, clock, complete_within=60)
    mig = mapping.snapshot().migrations["vm1/0"]
    assert mig.state == ACTIVATED and mig.deadline == activated_at + 60, "the deadline starts at the activation"
    clock.now = activated_at + 59
    for a in (a1, a2, a3):
        a.reconcile()
    assert mapping.snapshot().migrations["vm1/0"].state == ACTIVATED, "not before its deadline"
    clock.now = activated_at + 61
    a1.reconcile()  # the source (whose release never came) and the others do not end it
    a2.reconcile()
    assert "vm1/0" in mapping.snapshot().migrations
    a3.reconcile()
    snap = mapping.snapshot()
    assert snap.migrations == {}
    assert (snap.binding_of("vm1/0").nve, snap.binding_of("vm1/0").seq) == ("hv3", 1), "the VM stays where it runs"
    [why] = a3.status().expired
    assert "vm1/0" in why and "hv1" in why and "not completed within 60 s" in why and "completed by expiry" in why
    a2.reconcile()
    assert a2.kernel.actual.remote_macs[(WEB, VM1)] == {NVES["hv3"].vtep}, "hv2 sends to the destination alone"


def test_an_activated_move_without_its_own_completion_time_gets_the_mappings(mapping, clock):
    from roamnet.mapping.records import COMPLETE_TIMEOUT_S

    activate_on_hv3(mapping, clock)
    mig = mapping.snapshot().migrations["vm1/0"]
    assert mig.complete_within == 0.0 and mig.deadline == clock.now + COMPLETE_TIMEOUT_S
    assert mapping.expire(now=clock.now + COMPLETE_TIMEOUT_S - 1) == []
    assert mapping.expire(now=clock.now + COMPLETE_TIMEOUT_S + 1) == [mig]
    assert mapping.snapshot().migrations == {}


def test_an_explicit_activation_starts_the_completion_time_too(mapping, clock):
    mapping.prepare("vm1/0", "hv3", timeout=30, complete_within=10)
    clock.now += 20
    mapping.activate("vm1/0")  # the orchestrator's, at +20 s: the prepare deadline (+30 s) no longer counts
    mig = mapping.snapshot().migrations["vm1/0"]
    assert mig.state == ACTIVATED and mig.deadline == clock.now + 10


def test_expiry_of_an_activated_move_spares_one_completed_and_prepared_again(mapping, clock):
    other = MappingSystem(mapping.store, clock=clock)
    activate_on_hv3(mapping, clock, complete_within=10)
    old = mapping.snapshot().migrations["vm1/0"]
    clock.now = old.deadline + 1
    assert [mapping.expire(dst="hv3"), other.expire(dst="hv3")] == [[old], []], "once, by one caller"
    # completed by its orchestrator and prepared back to hv1 between a caller's read and its completion
    mapping.prepare("vm1/0", "hv1", timeout=30)
    assert mapping._complete_expired("vm1/0", past=old.deadline + 1) is None
    assert mapping.snapshot().migrations["vm1/0"].state == "prepared"


def test_a_bad_completion_time_is_refused_and_changes_nothing(mapping):
    with pytest.raises(ValueError, match="complete_within is >= 0"):
        mapping.prepare("vm1/0", "hv3", timeout=30, complete_within=-1)
    assert mapping.snapshot().migrations == {}


def test_a_move_recorded_before_completion_times_existed_loads_with_the_default():
    import json

    from roamnet.mapping.records import COMPLETE_TIMEOUT_S, Migration, load
    old = {"iface_id": "vm1/0", "vni": WEB, "mac": VM1, "src": "hv1", "dst": "hv3", "dst_vtep": "198.18.2.1",
           "state": "activated", "deadline": 5.0}
    mig = load(Migration, json.dumps(old))
    assert mig.complete_within == 0.0 and mig.completion_s == COMPLETE_TIMEOUT_S
