"""The mapping system and two agents (kernels held in memory) over a real etcd member: records,
compare-and-swap moves, duplicate detection, statuses and convergence go through etcd's v3 API."""

from __future__ import annotations

import pytest
from test_store import etcd_server  # noqa: F401 - the module's private etcd member

from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import Binding, LogicalPort, Nve, Segment
from roamnet.mapping.system import FROZEN, MappingSystem, Refused

WEB, MAC = 10100, "02:00:00:01:00:01"
NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.3", "dc1")}


def test_moves_statuses_and_a_freeze_through_etcd(etcd_server):  # noqa: F811
    from roamnet.mapping.store.etcd import EtcdStore

    store = EtcdStore(etcd_server.url, max_txn_ops=4096)
    try:
        for kv in store.range("/")[0]:  # a fresh mapping on the shared member
            store.delete(kv.key)
        m = MappingSystem(store)
        m.register_segment(Segment(WEB, "web", "198.19.1.0/24", max_moves=3))
        for nve in NVES.values():
            m.register_nve(nve)
        port = LogicalPort("vm1/0", "vm1", WEB, MAC, ("198.19.1.11",))
        m.register_port(port)
        m.advertise(Binding(WEB, MAC, "hv1", "198.18.1.1", 0, port.ips, "vm1/0"))
        other = LogicalPort("vm2/0", "vm2", WEB, "02:00:00:01:00:02", ("198.19.1.12",))
        m.register_port(other)
        m.advertise(Binding(WEB, other.mac, "hv2", "198.18.1.3", 0, other.ips, "vm2/0"))
        kernels = {n: ModelKernel(n) for n in NVES}
        kernels["hv1"].add_port("vm1/0")
        kernels["hv2"].add_port("vm2/0")
        agents = {n: Agent(MappingClient(m), NVES[n], k) for n, k in kernels.items()}
        for a in agents.values():  # their process's view watches only what they need (one gRPC watch stream)
            a.start()
        assert m.statuses.wait_converged(NVES, 10) is True
        assert m.agent_feed.interest
        assert kernels["hv2"].actual.remote_macs[(WEB, MAC)] == {"198.18.1.1"}

        m.prepare("vm1/0", "hv2", timeout=30)
        kernels["hv2"].add_port("vm1/0")
        agents["hv2"]._link_event()  # the hypervisor's tap appeared (a model kernel has no events of its own)
        agents["hv2"].reconcile()
        agents["hv2"]._announcement(ModelKernel.device("vm1/0"), MAC)  # it resumed on hv2
        b = m.snapshot().binding_of("vm1/0")
        assert (b.nve, b.seq) == ("hv2", 1)
        m.complete("vm1/0")
        assert m.statuses.wait_converged(NVES, 10) is True
        assert kernels["hv2"].actual.bridge_fdb[(WEB, MAC)] == "vm1/0"
        assert list(kernels["hv1"].actual.claimants.chains.values()) == [ModelKernel.device("vm1/0")]  # left behind

        m.report_move("vm1/0", "hv1")  # the 2nd move; the 3rd within the window is a duplicate
        with pytest.raises(Refused) as err:
            m.report_move("vm1/0", "hv2")
        assert err.value.reason == FROZEN and m.snapshot().binding_of("vm1/0").frozen
        assert store.get("/mapping/revision") is not None
    finally:
        for a in locals().get("agents", {}).values():
            a.stop()
        store.close()
