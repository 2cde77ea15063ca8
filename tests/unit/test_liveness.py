"""An agent's status on a lease (mapping/liveness.py), over the MemoryStore (a clock the test moves) and a
real etcd member (real time: its minimum TTL is 2 s): the status is there while the lease is renewed,
goes at once on a clean stop (revoke), goes after the TTL when nobody renews it (kill -9), and comes
back on a new lease, with the last status, when the lease was lost. Convergence waits read a missing
status as not converged."""

from __future__ import annotations

import shutil

import pytest
from test_store import REQUIRED, Clock, deletes, etcd_server, store  # noqa: F401 - the contract's store fixtures

from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.liveness import StatusLease
from roamnet.mapping.records import STATUS, Nve, NveStatus, Segment
from roamnet.mapping.status import Statuses
from roamnet.mapping.store import MemoryStore


def statuses(s) -> Statuses:
    return Statuses(s, lambda: 7)  # the mapping's revision: 7


def test_a_status_lives_on_a_lease_that_renewals_keep(store):  # noqa: F811
    st = statuses(store)
    lease = StatusLease(st, ttl=2)
    lease.publish(NveStatus("hv1", converged_revision=7))
    kv = store.get(STATUS + "hv1")
    assert kv.lease == lease.lease.id and lease.grants == 1 and lease.alive
    assert st.lagging(7, ["hv1"]) == []
    for _ in range(3):  # 1.5 TTLs, a renewal every half TTL
        store.pass_time(lease.lease.ttl / 2)
        lease.refresh()
    assert st.all()["hv1"].converged_revision == 7 and lease.grants == 1
    lease.publish(NveStatus("hv1", converged_revision=9))  # the same lease, a new value
    assert store.get(STATUS + "hv1").lease == lease.lease.id and st.all()["hv1"].converged_revision == 9


def test_a_clean_stop_revokes_the_lease_and_the_status_goes_at_once(store):  # noqa: F811
    st = statuses(store)
    lease = StatusLease(st, ttl=30)
    lease.publish(NveStatus("hv1", converged_revision=7))
    rev = store.revision
    lease.close()
    assert store.get(STATUS + "hv1") is None
    assert [e.key for e in deletes(store, STATUS, rev + 1)] == [STATUS + "hv1"], "the watch sees it go"
    assert st.lagging(7, ["hv1"]) == ["hv1"], "a missing status is not converged"
    assert not st.wait_converged(["hv1"], timeout=0.1)
    lease.publish(NveStatus("hv1", converged_revision=8))  # a straggling pass after the stop writes nothing
    assert store.get(STATUS + "hv1") is None


def test_without_renewals_the_status_goes_after_the_ttl(store):  # noqa: F811
    """What kill -9 leaves: nobody renews, nobody revokes."""
    st = statuses(store)
    lease = StatusLease(st, ttl=2)
    lease.publish(NveStatus("hv1", converged_revision=7))
    rev = store.revision
    store.pass_time(lease.lease.ttl + 1.5)
    assert [e.key for e in deletes(store, STATUS, rev + 1)] == [STATUS + "hv1"]
    assert st.lagging(7, ["hv1"]) == ["hv1"]


def test_a_lost_lease_is_granted_again_with_the_last_status(store):  # noqa: F811
    st = statuses(store)
    lease = StatusLease(st, ttl=30)
    lease.publish(NveStatus("hv1", converged_revision=7))
    first = lease.lease
    store.revoke(first.id)  # gone behind the agent's back (expired while the store was away)
    assert store.get(STATUS + "hv1") is None
    lease.refresh()  # the renewal finds it gone: a new lease, the last status on it
    kv = store.get(STATUS + "hv1")
    assert kv is not None and kv.lease == lease.lease.id != first.id and lease.grants == 2
    assert st.all()["hv1"].converged_revision == 7
    store.revoke(lease.lease.id)
    lease.publish(NveStatus("hv1", converged_revision=8))  # a publish finds it gone: the same mend
    assert store.get(STATUS + "hv1").lease == lease.lease.id and lease.grants == 3
    assert st.all()["hv1"].converged_revision == 8
    lease.close()


def test_an_agent_publishes_through_its_lease_and_is_gone_when_it_stops():
    """The agent itself knows nothing of leases: its MappingClient carries one."""
    from roamnet.mapping.system import MappingSystem

    clock = Clock()
    mem = MemoryStore(clock=clock, reaper=False)
    m = MappingSystem(mem)
    m.register_segment(Segment(10100, "web", "198.19.1.0/24"))
    nve = Nve("hv1", "198.18.1.1", "dc1")
    m.register_nve(nve)
    lease = StatusLease(m.statuses, ttl=3)
    a = Agent(MappingClient(m, status_lease=lease), nve, ModelKernel("hv1"))
    a.reconcile()
    assert mem.get(STATUS + "hv1").lease == lease.lease.id
    assert m.statuses.wait_converged(["hv1"], timeout=0.1)
    clock.now += 10  # the agent hangs (or was killed): nobody renews
    assert not m.statuses.wait_converged(["hv1"], timeout=0.1) and "hv1" not in m.statuses.all()
    a.reconcile(resync=True)  # it comes back: a new lease, its status again
    assert lease.grants == 2 and m.statuses.wait_converged(["hv1"], timeout=0.1)


def test_the_status_comes_back_after_the_store_was_away(tmp_path):
    """A real etcd member stopped and started again: publishes and renewals fail meanwhile (the agent
    keeps going), and the first renewal that gets through writes the newest status."""
    from roamnet.lab.etcd import EtcdServer
    from roamnet.mapping.store.etcd import EtcdStore, StoreError

    if shutil.which("etcd") is None:
        if REQUIRED:
            pytest.fail("etcd is required here (CI=true or ROAMNET_REQUIRE_LAB=1) but not installed")
        pytest.skip("etcd not installed (make install)")
    server = EtcdServer(tmp_path / "etcd", name="rn-test-away")
    server.start().close()
    etcd = EtcdStore(server.url)
    try:
        st = statuses(etcd)
        lease = StatusLease(st, ttl=2)
        lease.publish(NveStatus("hv1", converged_revision=7))
        server.stop(remove=False)
        with pytest.raises(StoreError):
            lease.publish(NveStatus("hv1", converged_revision=8))
        with pytest.raises(StoreError):
            lease.refresh()
        server.start().close()
        lease.refresh()
        assert st.all()["hv1"].converged_revision == 8
        assert etcd.get(STATUS + "hv1").lease == lease.lease.id
        lease.close()
        assert etcd.get(STATUS + "hv1") is None
    finally:
        etcd.close()
        server.stop()
