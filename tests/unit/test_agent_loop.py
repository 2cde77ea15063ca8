"""The agent loop without root: a real mapping (MemoryStore) and a kernel held in memory
(dataplane.model.ModelKernel, built on nve.plan.apply_to). The agent reaches the mapping only
through its MappingClient, and convergence is read from the status it publishes."""

from __future__ import annotations

import pytest
from mapping_fixtures import NVES, VM1, VM2, WEB, Clock, web_mapping

from roamnet.agent.loop import PRUNE_HOLD_S, Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import ACTIVATED, Binding, LogicalPort, Nve
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem


@pytest.fixture
def mapping() -> MappingSystem:
    return web_mapping(MemoryStore())


def agent(mapping: MappingSystem, nve: str, kernel: ModelKernel, clock: Clock | None = None) -> Agent:
    return Agent(MappingClient(mapping), NVES[nve], kernel, clock=clock or Clock(1000.0))


def hv1_with_vm1(mapping: MappingSystem, clock: Clock | None = None) -> tuple[ModelKernel, Agent]:
    """hv1's kernel with vm1's port up, and its agent after one pass."""
    k1 = ModelKernel("hv1")
    k1.add_port("vm1/0")
    a1 = agent(mapping, "hv1", k1, clock)
    a1.reconcile()
    return k1, a1


def ops(changes) -> list[str]:
    return [c.op for c in changes]


def test_a_pass_programs_the_kernel_and_publishes_convergence(mapping):
    k1 = ModelKernel("hv1")
    k1.add_port("vm1/0")
    a1 = agent(mapping, "hv1", k1)
    changes = a1.reconcile()
    assert {"set-filters", "add-segment", "attach-port", "set-bridge-entry", "set-remote", "add-flood",
            "set-arp"} <= set(ops(changes))
    assert k1.actual.ports["vm1/0"] == WEB and k1.actual.flood[WEB] == {NVES["hv2"].vtep}
    assert k1.actual.remote_macs[(WEB, VM2)] == {NVES["hv2"].vtep}
    st = mapping.statuses.all()["hv1"]
    assert st.converged_revision >= mapping.revision and st.reconciles == 1 and st.changes_applied == len(changes)
    assert mapping.statuses.wait_converged(["hv1"], timeout=0.1)
    assert not mapping.statuses.wait_converged(["hv1", "hv2"], timeout=0.1), "hv2 has published nothing yet"


def test_an_nve_waiting_for_a_vm_port_is_not_converged(mapping):
    k1 = ModelKernel("hv1")  # the hypervisor has not plugged vm1 yet
    a1 = agent(mapping, "hv1", k1)
    a1.reconcile()
    assert mapping.statuses.all()["hv1"].converged_revision == 0
    assert mapping.statuses.lagging(mapping.revision, ["hv1"]) == ["hv1"]
    k1.add_port("vm1/0")
    a1._link_event()
    a1.reconcile()
    assert mapping.statuses.lagging(mapping.revision, ["hv1"]) == []


def test_status_writes_do_not_move_the_mapping_revision(mapping):
    rev = mapping.revision
    k = ModelKernel("hv3")
    agent(mapping, "hv3", k).reconcile(resync=True)
    assert mapping.store.revision > rev, "the status was written to the store"
    assert mapping.revision == rev, "but the mapping did not change"
    assert mapping.snapshot().revision == rev


def test_mapping_only_wakeups_plan_against_the_cache(mapping):
    k1, a1 = hv1_with_vm1(mapping)  # structural: the next pass reads again
    a1.reconcile()
    reads = k1.reads
    # a VM of the segment arrives on hv3: hv1 needs a unicast entry and a flood entry, no device
    mapping.register_port(LogicalPort("vm3/0", "vm3", WEB, "02:00:00:01:00:03", ("198.19.1.13",)))
    mapping.advertise(Binding(WEB, "02:00:00:01:00:03", "hv3", NVES["hv3"].vtep, 0, ("198.19.1.13",), "vm3/0"))
    changes = a1.reconcile()
    assert "set-remote" in ops(changes) and "add-flood" in ops(changes)
    assert k1.reads == reads, "a wake-up by the mapping alone read the kernel"
    assert a1.reconcile() == []
    a1.reconcile(resync=True)
    assert k1.reads == reads + 1 and mapping.statuses.all()["hv1"].resyncs == 1
    a1._link_event()  # a kernel event: the next pass reads
    a1.reconcile()
    assert k1.reads == reads + 2


def test_a_failed_change_is_reported_and_retried_from_a_fresh_read(mapping):
    k1 = ModelKernel("hv1", fail={"set-remote"})
    k1.add_port("vm1/0")
    a1 = agent(mapping, "hv1", k1)
    a1.reconcile()
    st = mapping.statuses.all()["hv1"]
    assert st.converged_revision == 0 and any("set-remote" in e for e in st.errors)
    reads = k1.reads
    k1.fail.clear()
    assert ops(a1.reconcile()) == ["set-remote"]
    assert k1.reads == reads + 1
    assert mapping.statuses.all()["hv1"].converged_revision >= mapping.revision


def test_a_segment_no_longer_needed_is_held_before_it_goes(mapping):
    clock = Clock(1000.0)
    k1, a1 = hv1_with_vm1(mapping, clock)
    mapping.report_move("vm1/0", "hv2")  # vm1 left: hv1 hosts nothing of the segment any more
    k1.remove_port("vm1/0")
    a1._link_event()
    assert "del-segment" not in ops(a1.reconcile())
    assert WEB in k1.actual.segments and mapping.statuses.all()["hv1"].pending_prunes == (WEB,)
    clock.now += PRUNE_HOLD_S / 2
    assert "del-segment" not in ops(a1.reconcile())
    clock.now += PRUNE_HOLD_S
    assert ops(a1.reconcile()) == ["del-segment"]
    assert WEB not in k1.actual.segments and mapping.statuses.all()["hv1"].pending_prunes == ()


def test_a_segment_needed_again_within_the_hold_is_kept(mapping):
    clock = Clock(1000.0)
    k1, a1 = hv1_with_vm1(mapping, clock)
    mapping.report_move("vm1/0", "hv2")
    a1.reconcile()
    mapping.report_move("vm1/0", "hv1")  # straight back
    clock.now += 2 * PRUNE_HOLD_S
    assert "del-segment" not in ops(a1.reconcile())
    assert WEB in k1.actual.segments and a1.pending_prunes == set()


def test_a_port_up_elsewhere_claims_only_a_detached_binding(mapping):
    k2 = ModelKernel("hv2")
    k2.add_port("vm2/0")
    k2.add_port("vm1/0")  # vm1's port on hv2 too (learn-driven: nothing prepared)
    a2 = agent(mapping, "hv2", k2)
    a2.reconcile()
    assert mapping.snapshot().binding_of("vm1/0").nve == "hv1", "hv1 has not said its port is gone"
    k1 = ModelKernel("hv1")  # hv1: vm1's port is gone (the VM stopped there)
    a1 = agent(mapping, "hv1", k1)
    a1.reconcile()
    assert mapping.snapshot().binding_of("vm1/0").detached
    a2.reconcile()
    b = mapping.snapshot().binding_of("vm1/0")
    assert (b.nve, b.seq, b.detached) == ("hv2", 1, False)
    assert mapping.statuses.all()["hv2"].moves_reported == 1
    assert k2.actual.bridge_fdb[(WEB, VM1)] == "vm1/0", "the claiming pass programs the VM's port"


def test_two_ports_up_never_move_the_binding(mapping):
    """vm1's port up on hv1, where it is bound, and on hv2 (libvirt's pre-copy, or a clone): passes on
    both sides, however many, change nothing; the VM's own announcement on hv2 then moves it once."""
    k1, a1 = hv1_with_vm1(mapping)
    k2 = ModelKernel("hv2")
    k2.add_port("vm2/0")
    k2.add_port("vm1/0")
    a2 = agent(mapping, "hv2", k2)
    rev = mapping.revision
    for _ in range(20):
        a1.reconcile(resync=True)
        a2.reconcile(resync=True)
    b = mapping.snapshot().binding_of("vm1/0")
    assert (b.nve, b.seq) == ("hv1", 0) and mapping.snapshot().revision == rev
    a2._announcement(ModelKernel.device("vm1/0"), VM1)  # it resumed on hv2
    k1.remove_port("vm1/0")
    a1.reconcile()
    a2.reconcile()
    b = mapping.snapshot().binding_of("vm1/0")
    assert (b.nve, b.seq, b.detached) == ("hv2", 1, False)
    for _ in range(5):
        a1.reconcile(resync=True)
    assert mapping.snapshot().binding_of("vm1/0").seq == 1


def test_a_prepared_move_waits_for_the_announcement(mapping):
    mapping.prepare("vm1/0", "hv2", timeout=30)
    k2 = ModelKernel("hv2")
    k2.add_port("vm2/0")
    k2.add_port("vm1/0", up=True)  # QEMU opens the destination tap before the VM runs there
    a2 = agent(mapping, "hv2", k2)
    a2.reconcile()
    assert mapping.snapshot().binding_of("vm1/0").nve == "hv1", "a port up is not a prepared move's activation"
    assert k2.actual.ports["vm1/0"] == WEB, "but the destination hosts the port already"
    a2._announcement(ModelKernel.device("vm1/0"), "02:00:00:99:99:99")  # another MAC: not vm1's
    assert mapping.snapshot().binding_of("vm1/0").nve == "hv1"
    a2._announcement(ModelKernel.device("vm1/0"), VM1)  # the VM's RARP
    snap = mapping.snapshot()
    assert snap.binding_of("vm1/0").nve == "hv2" and snap.migrations["vm1/0"].state == ACTIVATED
    a2.reconcile()
    st = mapping.statuses.all()["hv2"]
    assert st.announcements_seen == 2 and st.moves_reported == 1


def test_a_restarted_agent_changes_nothing(mapping):
    kernels = {n: ModelKernel(n) for n in NVES}
    kernels["hv1"].add_port("vm1/0")
    kernels["hv2"].add_port("vm2/0")
    for n, k in kernels.items():
        agent(mapping, n, k).reconcile()
        agent(mapping, n, k).reconcile()  # the pass after a structural one
    mapping.prepare("vm1/0", "hv3", timeout=30)
    kernels["hv3"].add_port("vm1/0", up=False)
    for n, k in kernels.items():
        agent(mapping, n, k).reconcile()
    assert mapping.statuses.wait_converged(list(NVES), timeout=0.1)
    for n, k in kernels.items():
        applied = len(k.applied)
        again = agent(mapping, n, k)  # a new process on the same kernel state
        assert again.reconcile() == [], n
        assert len(k.applied) == applied
        assert mapping.statuses.all()[n].converged_revision >= mapping.revision


def test_the_agent_holds_only_a_client(mapping):
    a = agent(mapping, "hv1", ModelKernel("hv1"))
    assert not any(isinstance(v, (MappingSystem, MemoryStore)) for v in vars(a).values())
    a.stop()
    assert a.kernel.closed


def test_a_vtep_that_joins_is_accepted_in_the_next_pass(mapping):
    k3 = ModelKernel("hv3")
    a3 = agent(mapping, "hv3", k3)
    a3.reconcile()
    assert k3.actual.underlay.vteps == {n.vtep for n in NVES.values()}
    reads = k3.reads
    mapping.register_nve(Nve("hv4", "198.18.2.3", "dc2"))
    assert [str(c) for c in a3.reconcile()] == ["set-vteps 198.18.1.1,198.18.1.3,198.18.2.1,198.18.2.3"]
    assert k3.reads == reads, "a mapping change alone: planned against the cache"
