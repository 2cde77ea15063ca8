"""The orchestrator's side of a move through the store (orchestrator/moves.py): a VM's interfaces from
the mapping, the phases over a MappingSystem, and the convergence read from what real agent loops (in
threads, kernels held in memory) publish. Against the MemoryStore and a real etcd member."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_store import etcd_server, store  # noqa: F401 - the memory / etcd store fixture

from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import ACTIVATED, PREPARED, Binding, LogicalPort, Nve, Segment
from roamnet.mapping.system import MappingSystem
from roamnet.orchestrator.moves import MoveError, Orchestrator, vm_ifaces

WEB, DB = 10100, 10200
VM1A, VM1B, VM2 = "02:00:00:01:00:01", "02:00:00:02:00:01", "02:00:00:01:00:02"
NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.3", "dc1"),
        "hv3": Nve("hv3", "198.18.2.1", "dc2")}


class Fabric:
    """A mapping over `store` with vm1 (two interfaces, web and db) on hv1 and vm2 on hv2, and one agent
    loop per NVE running in threads over a model kernel."""

    def __init__(self, store):  # noqa: F811
        self.mapping = m = MappingSystem(store)
        m.register_segment(Segment(WEB, "web", "198.19.1.0/24"))
        m.register_segment(Segment(DB, "db", "198.19.2.0/24"))
        for nve in NVES.values():
            m.register_nve(nve)
        for iface, vni, mac, ip, nve in (("vm1/0", WEB, VM1A, "198.19.1.11", "hv1"),
                                         ("vm1/1", DB, VM1B, "198.19.2.11", "hv1"),
                                         ("vm2/0", WEB, VM2, "198.19.1.12", "hv2")):
            port = LogicalPort(iface, iface.split("/")[0], vni, mac, (ip,))
            m.register_port(port)
            m.advertise(Binding(vni, mac, nve, NVES[nve].vtep, 0, port.ips, iface))
        self.kernels = {n: ModelKernel(n) for n in NVES}
        for iface in ("vm1/0", "vm1/1"):
            self.kernels["hv1"].add_port(iface)
        self.kernels["hv2"].add_port("vm2/0")
        self.agents = {n: Agent(MappingClient(m), NVES[n], k) for n, k in self.kernels.items()}
        for a in self.agents.values():
            a.start()
        assert m.statuses.wait_converged(NVES, 10), "the agents did not converge"
        self.orch = Orchestrator(m)

    def arrive(self, nve: str, vm: str = "vm1", announce: bool = True) -> None:
        """The hypervisor created the VM's ports on `nve` (and the VM announced itself there)."""
        k, a = self.kernels[nve], self.agents[nve]
        ifaces = vm_ifaces(self.mapping.snapshot(), vm)
        for i in ifaces:
            k.add_port(i)
        a._link_event()
        if announce:
            snap = self.mapping.snapshot()
            for i in ifaces:
                a._announcement(ModelKernel.device(i), snap.ports[i].mac)

    def stop(self) -> None:
        for a in self.agents.values():
            if a._threads:
                a.stop()


@pytest.fixture
def fabric(store) -> Iterator[Fabric]:  # noqa: F811
    f = Fabric(store)
    yield f
    f.stop()


def test_a_vm_is_its_logical_ports(fabric):
    snap = fabric.mapping.snapshot()
    assert vm_ifaces(snap, "vm1") == ["vm1/0", "vm1/1"]
    with pytest.raises(MoveError, match=r"no VM 'vm9' in the mapping \(VMs there: vm1, vm2\)"):
        vm_ifaces(snap, "vm9")


def test_prepare_waits_for_every_nve_but_the_destination_then_the_announcement_and_complete(fabric):
    m, orch = fabric.mapping, fabric.orch
    rec = orch.prepare("vm1", "hv3", timeout=30, wait=10)
    assert (rec["phase"], rec["from"], rec["to"], rec["ifaces"]) == ("prepared", "hv1", "hv3", ["vm1/0", "vm1/1"])
    assert rec["waited_for"] == ["hv1", "hv2"]
    snap = m.snapshot()
    assert {i: (mg.state, mg.dst) for i, mg in snap.migrations.items()} == {"vm1/0": (PREPARED, "hv3"),
                                                                         "vm1/1": (PREPARED, "hv3")}
    assert snap.binding_of("vm1/0").nve == "hv1"
    assert m.statuses.lagging(rec["revision"], ["hv1", "hv2"]) == []
    # hv2 delivers vm1's frames to both ends now: no unicast entry, the flood list has hv3
    assert (WEB, VM1A) not in fabric.kernels["hv2"].actual.remote_macs
    assert NVES["hv3"].vtep in fabric.kernels["hv2"].actual.flood[WEB]
    with pytest.raises(MoveError, match="not activated"):
        orch.complete("vm1")
    fabric.arrive("hv3")  # the VM resumed there and sent its RARP: hv3's agent activates
    assert all(mg.state == ACTIVATED for mg in m.snapshot().migrations.values())
    with pytest.raises(MoveError, match="already activated"):
        orch.abort("vm1")
    done = orch.complete("vm1", wait=10)
    assert (done["phase"], done["activated_by"], done["converged"]) == ("completed", "announcement", True)
    snap = m.snapshot()
    assert snap.migrations == {} and {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv3"}
    assert fabric.kernels["hv2"].actual.remote_macs[(WEB, VM1A)] == {NVES["hv3"].vtep}


def test_explicit_activation_then_complete(fabric):
    orch = fabric.orch
    orch.prepare("vm1", "hv3", wait=10)
    fabric.arrive("hv3", announce=False)
    rec = orch.activate("vm1", wait=10)
    assert (rec["phase"], rec["converged"], rec["lagging"]) == ("activated", True, [])
    assert fabric.mapping.snapshot().binding_of("vm1/1").nve == "hv3"
    assert orch.activate("vm1", wait=1)["already_activated"] == ["vm1/0", "vm1/1"]  # idempotent
    assert orch.complete("vm1", wait=10)["activated_by"] == "announcement"  # it was activated before complete


def test_abort_rolls_back_and_nothing_moved(fabric):
    m, orch = fabric.mapping, fabric.orch
    orch.prepare("vm1", "hv3", wait=10)
    assert orch.abort("vm1")["phase"] == "rolled-back"
    snap = m.snapshot()
    assert snap.migrations == {} and snap.binding_of("vm1/0").nve == "hv1" and snap.binding_of("vm1/0").seq == 0
    with pytest.raises(MoveError, match="no move in progress"):
        orch.abort("vm1")


def test_bad_requests_are_refused_and_change_nothing(fabric):
    m, orch = fabric.mapping, fabric.orch
    rev = m.revision
    with pytest.raises(MoveError, match=r"no NVE 'hv9' in the mapping \(NVEs there: hv1, hv2, hv3\)"):
        orch.prepare("vm1", "hv9")
    with pytest.raises(MoveError, match="no VM 'vm9'"):
        orch.prepare("vm9", "hv3")
    with pytest.raises(MoveError, match="already on hv1"):
        orch.prepare("vm1", "hv1")
    for phase in (orch.activate, orch.complete, orch.abort):
        with pytest.raises(MoveError, match="vm1: no move in progress"):
            phase("vm1")
    assert m.revision == rev
    orch.prepare("vm1", "hv3", wait=10)
    rev = m.revision
    with pytest.raises(MoveError, match="already being moved to hv3"):
        orch.prepare("vm1", "hv2")
    assert m.revision == rev
    again = orch.prepare("vm1", "hv3", wait=10)  # a retried prepare keeps the move as it is
    assert again["already_prepared"] == ["vm1/0", "vm1/1"] and m.revision == rev


def test_prepare_needs_the_destinations_agent(fabric):
    m = fabric.mapping
    m.register_nve(Nve("hv4", "198.18.2.3", "dc2"))  # no agent runs there
    with pytest.raises(MoveError, match="no agent has published a status for NVE hv4"):
        fabric.orch.prepare("vm1", "hv4")
    assert m.snapshot().migrations == {}


def test_phases_wait_only_for_the_nves_the_move_concerns(fabric):
    m = fabric.mapping
    m.register_nve(Nve("hv4", "198.18.2.3", "dc2"))  # no agent runs there, and it hosts nothing of vm1's CUGs
    rec = fabric.orch.prepare("vm1", "hv3", wait=5)
    assert rec["waited_for"] == ["hv1", "hv2"]  # not hv4: its desired state does not change
    assert fabric.orch.concerned(["vm2/0"], ["hv2"]) == ["hv1", "hv2", "hv3"]  # web's hosts, and hv3 (prepared)
    fabric.arrive("hv3")
    done = fabric.orch.complete("vm1", wait=5)
    assert done["converged"] and done["lagging"] == []


def test_prepare_rolls_back_when_an_nve_does_not_program_it(fabric):
    m = fabric.mapping
    fabric.agents["hv2"].stop()  # hv2's agent is down: the move would not be delivered to both ends there
    with pytest.raises(MoveError, match=r"vm1: prepare to hv3 failed, rolled back: .*hv2 behind revision"):
        fabric.orch.prepare("vm1", "hv3", wait=0.3)
    snap = m.snapshot()
    assert snap.migrations == {} and snap.binding_of("vm1/0").nve == "hv1"


def test_prepare_is_all_or_nothing(fabric):
    m = fabric.mapping
    m.register_port(LogicalPort("vm1/2", "vm1", DB, "02:00:00:02:00:09", ("198.19.2.19",)))  # bound nowhere
    with pytest.raises(MoveError, match="rolled back: vm1/2 is bound nowhere"):
        fabric.orch.prepare("vm1", "hv3", wait=5)
    assert m.snapshot().migrations == {}
