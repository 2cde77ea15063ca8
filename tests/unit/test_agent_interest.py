"""Agents over the process's view of the mapping (mapping/view.py): a change that concerns none of an
NVE's part (nve/interest.py) runs no pass on it, yet its converged revision follows; the NVEs it
concerns program it. Against the MemoryStore and a real etcd member (the `store` fixture)."""

from __future__ import annotations

import time

import pytest
from test_store import etcd_server, store  # noqa: F401 - the memory / etcd store fixture

from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import Binding, LogicalPort, Nve, Segment
from roamnet.mapping.system import MappingSystem

WEB, DB = 10100, 10200
NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.2", "dc1"),
        "hv3": Nve("hv3", "198.18.2.1", "dc2")}
VMS = {"vm1/0": (WEB, "02:00:00:01:00:01", "198.19.1.11", "hv1"),
       "vm2/0": (WEB, "02:00:00:01:00:02", "198.19.1.12", "hv2"),
       "vm3/0": (DB, "02:00:00:02:00:03", "198.19.2.13", "hv3")}


@pytest.fixture
def agents(store):  # noqa: F811
    m = MappingSystem(store)
    m.register_segment(Segment(WEB, "web", "198.19.1.0/24"))
    m.register_segment(Segment(DB, "db", "198.19.2.0/24"))
    for nve in NVES.values():
        m.register_nve(nve)
    kernels = {n: ModelKernel(n) for n in NVES}
    for iface, (vni, mac, ip, nve) in VMS.items():
        port = LogicalPort(iface, iface.split("/")[0], vni, mac, (ip,))
        m.register_port(port)
        m.advertise(Binding(vni, mac, nve, NVES[nve].vtep, 0, port.ips, iface))
        kernels[nve].add_port(iface)
    running = {n: Agent(MappingClient(m), NVES[n], kernels[n]) for n in NVES}
    for a in running.values():
        a.start()
    assert m.statuses.wait_converged(list(NVES), timeout=20)
    yield m, kernels, running
    for a in running.values():
        a.stop()


def plug(running, kernels, nve: str, iface: str) -> None:
    """The hypervisor moves a VM's port to `nve` (the kernels' link events wake their agents)."""
    for name, k in kernels.items():
        if iface in k.actual.devices and name != nve:
            k.remove_port(iface)
            running[name]._link_event()
    kernels[nve].add_port(iface)
    running[nve]._link_event()


def until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_unconcerned_nve_runs_no_pass_but_converges(agents):
    m, kernels, running = agents
    hv3 = running["hv3"]
    passes, idle = hv3.stats.reconciles, hv3.stats.idle_advances
    plug(running, kernels, "hv2", "vm1/0")
    m.report_move("vm1/0", "hv2")  # inside web: hv3 hosts only db
    assert m.statuses.wait_converged(list(NVES), timeout=20), m.statuses.all()
    assert until(lambda: kernels["hv2"].actual.ports.get("vm1/0") == WEB)
    assert (WEB, VMS["vm1/0"][1]) not in kernels["hv1"].actual.remote_macs or \
        kernels["hv1"].actual.remote_macs[(WEB, VMS["vm1/0"][1])] == {NVES["hv2"].vtep}
    assert hv3.stats.reconciles == passes, "a move in a CUG hv3 does not host ran a pass there"
    assert hv3.stats.idle_advances > idle
    assert hv3.stats.converged_revision >= m.revision  # the stream's position: the sync request is after it


def test_a_move_into_a_new_segment_concerns_the_destination(agents):
    m, kernels, running = agents
    hv3 = running["hv3"]
    passes = hv3.stats.reconciles
    plug(running, kernels, "hv3", "vm1/0")
    m.report_move("vm1/0", "hv3")  # hv3 did not host web: its interest grows with the arrival
    assert m.statuses.wait_converged(list(NVES), timeout=20), m.statuses.all()
    assert until(lambda: kernels["hv3"].actual.ports.get("vm1/0") == WEB)
    assert kernels["hv3"].actual.flood.get(WEB) == {NVES["hv2"].vtep}
    assert hv3.stats.reconciles > passes
    # and now a move inside web concerns it
    passes = hv3.stats.reconciles
    plug(running, kernels, "hv1", "vm2/0")
    m.report_move("vm2/0", "hv1")
    assert m.statuses.wait_converged(list(NVES), timeout=20)
    assert until(lambda: kernels["hv3"].actual.flood.get(WEB) == {NVES["hv1"].vtep})
    assert hv3.stats.reconciles > passes


def test_an_idle_advance_is_published_at_the_next_pass_or_when_a_waiter_asks(agents):
    m, kernels, running = agents
    hv3 = running["hv3"]
    assert not hv3.publish_idle  # the default: no store write for a change hv3 has no part in
    published = m.statuses.all()["hv3"].converged_revision
    plug(running, kernels, "hv2", "vm1/0")
    m.report_move("vm1/0", "hv2")
    assert m.statuses.wait_converged(["hv1", "hv2"], timeout=20)
    assert m.statuses.all()["hv3"].converged_revision == published < m.revision
    hv3.reconcile(resync=True)  # the periodic resync publishes it
    assert m.statuses.all()["hv3"].converged_revision >= m.revision
    # another change hv3 has no part in: its thread is not even woken; a waiter that waits for hv3 asks it
    # (a SyncRequest), which wakes it: it advances its converged revision and answers
    idle = hv3.stats.idle_advances
    plug(running, kernels, "hv1", "vm1/0")
    m.report_move("vm1/0", "hv1")
    assert m.statuses.wait_converged(["hv1", "hv2"], timeout=20)
    assert hv3.stats.idle_advances == idle
    assert m.statuses.all()["hv3"].converged_revision < m.revision
    rev = m.revision
    assert m.statuses.wait_converged(["hv3"], timeout=20)
    assert hv3.stats.idle_advances > idle and hv3.stats.converged_revision >= rev
    assert m.statuses.all()["hv3"].converged_revision >= rev and m.revision == rev  # asking changed no record
