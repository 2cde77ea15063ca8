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
