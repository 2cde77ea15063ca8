"""`roamnet apply`'s core: an intent's records written as a diff against the mapping a store holds.

The plan itself is pure (mapping/apply.py: order of the writes, batches, refusals); MappingSystem.apply
is tested against the MemoryStore and a real etcd member: one transaction compared with /revision,
idempotence, bindings kept as runtime state, changes on a running system (a VM, a CUG, a policy) seen
in an agent's desired state, refusals that write nothing, a concurrent change planned again, long
diffs as ordered sequences whose every step is a consistent mapping, and an interrupted sequence
finished by the next apply."""
# ruff: noqa: F811 - the tests take the fixture `store` imported from test_store

from __future__ import annotations

import copy

import pytest
from test_store import etcd_server, store  # noqa: F401 - the module's private etcd member; MemoryStore and etcd

from roamnet.intent.compile import compile_nves, compile_topology
from roamnet.intent.model import IntentError, parse_topology
from roamnet.lab.plan import deployed_nves
from roamnet.mapping.apply import ApplyPlan, ApplyRefused, Write, plan_apply
from roamnet.mapping.records import (
    AT,
    NVES,
    POLICY,
    PORTS,
    REVISION,
    SEGMENTS,
    TENANTS,
    VLANS,
    VNIS,
    MappingRecords,
    Snapshot,
    binding_key,
    index_keys,
)
from roamnet.mapping.store import MemoryStore, Store
from roamnet.mapping.system import MappingSystem
from roamnet.nve.desired import compute_desired

WEB, DB, APP = 10100, 10200, 10300
MAC1, MAC2, MAC3 = "02:00:00:01:00:11", "02:00:00:01:00:12", "02:00:00:02:00:13"


def vm(server: str, cug: str, mac: str, ip: str) -> dict:
    return {"server": server, "interfaces": [{"cug": cug, "mac": mac, "ip": ip}]}


BASE = {
    "name": "t",
    "tenants": {"t1": {"l3vni": 50001}},
    "datacenters": {
        "dc1": {"servers": ["hv1", "hv2"],
                "domains": {"pod1": {"tor": "tor1", "servers": ["hv5", "hv6"], "vlans": "100-101"}}},
        "dc2": {"servers": ["hv3", "hv4"]},
    },
    "cugs": {"web": {"vni": WEB, "subnet": "198.19.1.0/24", "gateway": "198.19.1.1", "tenant": "t1"},
             "db": {"vni": DB, "subnet": "198.19.2.0/24", "gateway": "198.19.2.1", "tenant": "t1"}},
    "vms": {"vm1": vm("hv1", "web", MAC1, "198.19.1.11"),
            "vm2": vm("hv3", "web", MAC2, "198.19.1.12"),
            "vm3": vm("hv5", "db", MAC3, "198.19.2.13")},
    "policies": [{"name": "web-to-db", "from": {"cug": "web"}, "to": {"cug": "db"}, "proto": "tcp",
                  "ports": [5432], "action": "allow"}],
}


def intent(**changes) -> dict:
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        d[k] = v
    return d


def records(data: dict) -> MappingRecords:
    topo = parse_topology(data)
    return compile_topology(topo, deployed_nves(topo))


def consistency(snap: Snapshot) -> list[str]:
    """What agents could not make sense of: a binding without its port, segment, NVE or VLAN; a port
    without its segment; a segment without its tenant; an NVE without its domain or ToR; a VLAN twice."""
    problems = []
    by_key = {(p.vni, p.mac): p for p in snap.ports.values()}
    for key, b in snap.bindings.items():
        if key not in by_key:
            problems.append(f"binding {key} has no port")
        if b.vni not in snap.segments:
            problems.append(f"binding {key} has no segment")
        if b.nve not in snap.nves:
            problems.append(f"binding {key} is on unknown NVE {b.nve}")
        dom = snap.domain_of(b.nve)
        if dom is not None and b.vni not in snap.vlans.get(dom.name, {}):
            problems.append(f"binding {key} on {b.nve} has no VLAN in {dom.name}")
    for p in snap.ports.values():
        if p.vni not in snap.segments:
            problems.append(f"port {p.iface_id} has no segment")
    for s in snap.segments.values():
        if s.tenant and s.tenant not in snap.tenants:
            problems.append(f"segment {s.name} has no tenant")
    for n in snap.nves.values():
        if (n.domain and n.domain not in snap.domains) or (n.tor and n.tor not in snap.nves):
            problems.append(f"NVE {n.name} lacks its domain or ToR")
    for d, alloc in snap.vlans.items():
        if len(set(alloc.values())) != len(alloc):
            problems.append(f"domain {d}: a VLAN serves two CUGs: {alloc}")
    return problems


def index_problems(m: MappingSystem) -> list[str]:
    """Where the /at/ index (records.py) and the bindings and moves it indexes disagree."""
    snap = m.snapshot()
    want = set().union(*(index_keys(r) for r in (*snap.bindings.values(), *snap.migrations.values())))
    held = {kv.key for kv in m.store.range(AT)[0]}
    return [f"missing {k}" for k in sorted(want - held)] + [f"stale {k}" for k in sorted(held - want)]


def without_revision(snap: Snapshot) -> dict:
    return {k: v for k, v in snap.to_json().items() if k != "revision"} | {"ports": sorted(map(str, snap.ports.values()))}


class Watched(Store):
    """A store that runs `before(txn_number)` before each transaction carrying /revision, and checks the
    mapping after each: what agents reading between the transactions of a sequence would see."""

    def __init__(self, inner: Store, before=None):
        self.inner, self.before, self.txns, self.attempts, self.seen = inner, before, 0, 0, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get(self, key):
        return self.inner.get(key)

    def range(self, prefix):
        return self.inner.range(prefix)

    def watch(self, prefix, from_revision, timeout):
        return self.inner.watch(prefix, from_revision, timeout)

    @property
    def revision(self):
        return self.inner.revision

    def grant(self, ttl):
        return self.inner.grant(ttl)

    def keepalive(self, lease):
        return self.inner.keepalive(lease)

    def revoke(self, lease):
        return self.inner.revoke(lease)

    def txn(self, writes, expect=None, lease=0):
        if REVISION in writes and self.before is not None:
            self.before(self.attempts)
        self.attempts += REVISION in writes
        rev = self.inner.txn(writes, expect, lease)
        if REVISION in writes:
            self.txns += 1
            self.seen.append(consistency(MappingSystem(self.inner).snapshot()))
        return rev


# ---- the pure plan -----------------------------------------------------------------------------

def test_first_plan_creates_in_dependency_order():
    plan = plan_apply(records(BASE), Snapshot(0))
    keys = [w.key for w in plan.writes]
    assert all(w.value is not None for w in plan.writes)

    def last(prefix):
        return max(i for i, k in enumerate(keys) if k.startswith(prefix))

    def first(prefix):
        return min(i for i, k in enumerate(keys) if k.startswith(prefix))

    assert last(TENANTS) < first(SEGMENTS) <= last(SEGMENTS) < keys.index(POLICY) < first(NVES)
    assert last(NVES) < first(VLANS) < first(PORTS) and last(PORTS) < first(VNIS)
    assert keys.index(NVES + "tor1") < keys.index(NVES + "hv5")  # the ToR before the servers behind it
    summary = plan.summary()
    assert summary["ports"] == {"added": ["vm1/0", "vm2/0", "vm3/0"]}
    assert summary["vlans"] == {"added": ["pod1"]}


def test_removals_come_after_creations_in_reverse_order():
    m = MappingSystem(MemoryStore())
    m.apply(records(BASE))
    # db (and vm3 in it) replaced by app, with a VM of its own on hv6; tenant t1 replaced by t2
    data = intent(tenants={"t2": {"l3vni": 50002}},
                  cugs={"web": {**BASE["cugs"]["web"], "tenant": "t2"},
                        "app": {"vni": APP, "subnet": "198.19.3.0/24", "gateway": "198.19.3.1", "tenant": "t2"}},
                  vms={**{k: BASE["vms"][k] for k in ("vm1", "vm2")}, "vm4": vm("hv6", "app", "02:00:00:03:00:14",
                                                                                  "198.19.3.14")},
                  policies=[])
    plan = plan_apply(records(data), m.snapshot())
    assert [(w.key, w.value is None) for w in plan.writes] == [
        (binding_key(DB, MAC3), True), (PORTS + "vm3/0", True),
        (VLANS + "pod1", True),  # db's VLAN released once its binding is gone: app may take it now
        (TENANTS + "t2", False), (f"{SEGMENTS}{WEB}", False), (f"{SEGMENTS}{APP}", False), (POLICY, False),
        (VLANS + "pod1", False), (PORTS + "vm4/0", False), (binding_key(APP, "02:00:00:03:00:14"), False),
        (f"{SEGMENTS}{DB}", True), (TENANTS + "t1", True)]
    assert plan.net()[VLANS + "pod1"] == '{"10300": 100}'
    assert plan.summary() == {
        "tenants": {"added": ["t2"], "removed": ["t1"]},
        "segments": {"added": ["app"], "changed": ["web"], "removed": ["db"]},
        "policy": {"changed": ["policy"]}, "ports": {"added": ["vm4/0"], "removed": ["vm3/0"]},
        "bindings": {"added": ["vm4/0"], "removed": ["vm3/0"]}, "vlans": {"changed": ["pod1"]}}


def test_batches_keep_the_order_and_write_a_key_once_per_transaction():
    plan = ApplyPlan((Write("/a", None), Write("/b", "1"), Write("/a", "2"), Write("/c", "3"), Write("/d", None)))
    assert plan.net() == {"/a": "2", "/b": "1", "/c": "3", "/d": None}
    assert plan.batches(None) == [plan.net()]
    assert plan.batches(2) == [{"/a": "2", "/b": "1"}, {"/c": "3", "/d": None}]
    assert plan.batches(1) == [{"/a": None}, {"/b": "1"}, {"/a": "2"}, {"/c": "3"}, {"/d": None}]
    assert ApplyPlan().batches(5) == []


# ---- MappingSystem.apply on both stores --------------------------------------------------------

def test_first_apply_is_one_transaction_and_a_second_changes_nothing(store):
    m = MappingSystem(store)
    before = store.revision
    res = m.apply(records(BASE))
    assert res.txns == 1 and store.revision == before + 1 == res.revision
    snap = m.snapshot()
    assert consistency(snap) == []
    assert {(b.iface_id, b.nve, b.seq, b.detached) for b in snap.bindings.values()} == {
        ("vm1/0", "hv1", 0, True), ("vm2/0", "hv3", 0, True), ("vm3/0", "hv5", 0, True)}
    assert snap.vlans == {"pod1": {DB: 100}}
    assert [r.name for r in snap.policy.rules] == ["web-to-db"]
    assert set(snap.nves) == {"dc1br", "dc2br", "hv1", "hv2", "hv3", "hv4", "tor1", "hv5", "hv6"}

    again = m.apply(records(BASE))
    assert again.plan.empty and again.txns == 0 and store.revision == before + 1
    assert MappingSystem(store).apply(records(BASE), dry_run=True).plan.empty


def test_bindings_are_runtime_state(store):
    m = MappingSystem(store)
    m.apply(records(BASE))
    m.report_move("vm1/0", "hv2")  # vm1 moved at runtime
    m.set_detached("vm1/0", "hv2", False)
    moved = m.snapshot().binding_of("vm1/0")
    rev = store.revision
    assert m.apply(records(BASE)).plan.empty and store.revision == rev  # apply does not move it back

    data = intent()
    data["vms"]["vm1"]["interfaces"][0]["ip"] = "198.19.1.21"  # its address changes: only that follows
    res = m.apply(records(data))
    assert res.plan.summary() == {"ports": {"changed": ["vm1/0"]}, "bindings": {"changed": ["vm1/0"]}}
    b = m.snapshot().binding_of("vm1/0")
    assert (b.nve, b.seq, b.detached, b.moves, b.ips) == ("hv2", moved.seq, False, moved.moves, ("198.19.1.21",))


def test_a_vm_a_cug_and_a_policy_added_on_a_running_system(store):
    m = MappingSystem(store)
    m.apply(records(BASE))
    m.report_move("vm1/0", "hv1")
    before = {n: compute_desired(m.snapshot(), n) for n in ("hv1", "hv2", "hv4")}
    assert APP not in before["hv4"].segments

    data = intent(cugs={**BASE["cugs"], "app": {"vni": APP, "subnet": "198.19.3.0/24", "gateway": "198.19.3.1",
                                                 "tenant": "t1"}},
                  vms={**BASE["vms"], "vm4": vm("hv4", "app", "02:00:00:03:00:14", "198.19.3.14"),
                       "vm5": vm("hv2", "web", "02:00:00:01:00:15", "198.19.1.15")},
                  policies=[*BASE["policies"], {"name": "no-ssh", "from": {"any": True}, "to": {"vm": "vm1"},
                                                "proto": "tcp", "ports": [22], "action": "deny"}])
    res = m.apply(records(data))
    assert res.txns == 1
    assert res.plan.summary() == {"segments": {"added": ["app"]}, "policy": {"changed": ["policy"]},
                                  "ports": {"added": ["vm4/0", "vm5/0"]}, "bindings": {"added": ["vm4/0", "vm5/0"]}}
    snap = m.snapshot()
    assert consistency(snap) == []
    assert snap.segments[APP].name == "app" and [r.name for r in snap.policy.rules] == ["web-to-db", "no-ssh"]
    assert snap.binding_of("vm4/0").nve == "hv4" and snap.binding_of("vm5/0").nve == "hv2"
    hv4, hv1, hv2 = (compute_desired(snap, n) for n in ("hv4", "hv1", "hv2"))
    assert APP in hv4.segments and "vm4/0" in hv4.local_ports  # the new CUG reaches the server of its VM
    assert hv1.remote_macs[(WEB, "02:00:00:01:00:15")] == snap.nves["hv2"].vtep  # the new VM, seen from hv1
    assert WEB in hv2.segments and "vm5/0" in hv2.local_ports
    assert hv1.filters["vm1/0"] != before["hv1"].filters["vm1/0"]  # the new rule is at vm1's port
    assert "no-ssh" in str(hv1.filters["vm1/0"].inbound)


def test_removing_a_vm_takes_its_port_binding_and_vlan(store):
    m = MappingSystem(store)
    m.apply(records(BASE))
    res = m.apply(records(intent(vms={k: BASE["vms"][k] for k in ("vm1", "vm2")})))
    assert res.plan.summary() == {"ports": {"removed": ["vm3/0"]}, "bindings": {"removed": ["vm3/0"]},
                                  "vlans": {"removed": ["pod1"]}}
    snap = m.snapshot()
    assert "vm3/0" not in snap.ports and (DB, MAC3) not in snap.bindings and snap.vlans == {}
    assert index_problems(m) == []
    assert DB in snap.segments  # the CUG stays: it is still in the intent


def test_a_changed_mac_replaces_the_binding(store):
    m = MappingSystem(store)
    m.apply(records(BASE))
    m.report_move("vm1/0", "hv2")
    data = intent()
    data["vms"]["vm1"]["interfaces"][0]["mac"] = "02:00:00:01:00:21"
    m.apply(records(data))
    snap = m.snapshot()
    assert (WEB, MAC1) not in snap.bindings
    b = snap.binding_of("vm1/0")
    assert (b.mac, b.nve, b.seq, b.detached) == ("02:00:00:01:00:21", "hv1", 0, True)  # as a new VM: its server
    assert consistency(snap) == [] and index_problems(m) == []


def test_what_would_break_the_running_system_is_refused_and_nothing_written(store):
    m = MappingSystem(store)
    m.apply(records(BASE))
    m.report_move("vm1/0", "hv2")
    m.report_move("vm2/0", "hv5")  # web is now in pod1 too: VLANs 100 (db) and 101 (web) are both taken
    m.prepare("vm3/0", "hv6", timeout=60)
    rev = store.revision
    no_hv2 = intent()
    no_hv2["datacenters"]["dc1"]["servers"] = ["hv1"]
    with pytest.raises(ApplyRefused) as err:
        m.apply(records(no_hv2))
    assert "nve hv2: still hosts vm1/0" in str(err.value)

    with pytest.raises(ApplyRefused) as err:  # vm3 is moving
        m.apply(records(intent(vms={k: BASE["vms"][k] for k in ("vm1", "vm2")})))
    assert "vm vm3: a move of vm3/0 from hv5 to hv6 is in progress (prepared): complete or abort it" in str(err.value)

    narrow = intent()
    narrow["datacenters"]["dc1"]["domains"]["pod1"]["vlans"] = "100-100"
    with pytest.raises(ApplyRefused) as err:
        m.apply(records(narrow))
    assert "domain pod1: VLAN range 100-100 leaves out VLAN 101 of VNI 10100, still in use" in str(err.value)

    app = intent(cugs={**BASE["cugs"], "app": {"vni": APP, "subnet": "198.19.3.0/24", "gateway": "198.19.3.1",
                                                "tenant": "t1"}},
                 vms={**BASE["vms"], "vm4": vm("hv6", "app", "02:00:00:03:00:14", "198.19.3.14")})
    with pytest.raises(ApplyRefused) as err:  # valid as an intent (1 VLAN needed at start), not at runtime
        m.apply(records(app))
    assert "domain pod1: VLAN range 100-101 is exhausted: VNIs 10300 get no VLAN there" in str(err.value)

    new_vtep = intent(vteps={n: f"198.18.200.{i}" for i, n in enumerate(
        ["dc1br", "hv1", "hv2", "tor1", "dc2br", "hv3", "hv4"], start=1)})
    with pytest.raises(ApplyRefused) as err:
        m.apply(records(new_vtep))
    assert "nve hv2: hosts vm1/0: it cannot change (vtep 198.18.1.3 -> 198.18.200.3)" in str(err.value)
    assert "nve tor1: hosts vm2/0 on hv5" in str(err.value)
    assert store.revision == rev


def test_a_concurrent_change_makes_apply_plan_again(store):
    m0 = MappingSystem(store)
    m0.apply(records(BASE))
    watched = Watched(store, before=lambda n: n == 0 and MappingSystem(store).report_move("vm1/0", "hv2"))
    data = intent(vms={**BASE["vms"], "vm5": vm("hv2", "web", "02:00:00:01:00:15", "198.19.1.15")})
    res = MappingSystem(watched).apply(records(data))
    assert res.txns == 1 and watched.attempts == 2  # refused (the move came first), then planned again
    snap = m0.snapshot()
    assert snap.binding_of("vm1/0").nve == "hv2" and snap.binding_of("vm5/0").nve == "hv2"


def test_a_long_diff_is_an_ordered_sequence_of_consistent_mappings(store):
    watched = Watched(store)
    m = MappingSystem(watched)
    res = m.apply(records(BASE), max_ops=4)
    assert res.txns > 5 and watched.txns == res.txns
    assert watched.seen == [[]] * res.txns  # every step a mapping the agents can use
    one_shot = MappingSystem(MemoryStore())
    one_shot.apply(records(BASE))
    assert without_revision(m.snapshot()) == without_revision(one_shot.snapshot())

    m.report_move("vm1/0", "hv5")  # web into pod1 (VLAN 101)
    data = intent(tenants={"t2": {"l3vni": 50002}},
                  cugs={"web": {**BASE["cugs"]["web"], "tenant": "t2"},
                        "app": {"vni": APP, "subnet": "198.19.3.0/24", "gateway": "198.19.3.1", "tenant": "t2"}},
                  vms={"vm1": BASE["vms"]["vm1"], "vm2": vm("hv3", "web", "02:00:00:01:00:22", "198.19.1.12"),
                       "vm4": vm("hv6", "app", "02:00:00:03:00:14", "198.19.3.14")},
                  policies=[])
    watched.seen.clear()
    res = m.apply(records(data), max_ops=3)
    assert res.txns > 3 and watched.seen == [[]] * res.txns
    snap = m.snapshot()
    assert snap.vlans == {"pod1": {WEB: 101, APP: 100}}  # app took db's VLAN once db had left
    assert index_problems(m) == []
    assert m.apply(records(data), max_ops=3).plan.empty


def test_an_interrupted_sequence_is_finished_by_the_next_apply(store):
    from roamnet.mapping.store.etcd import StoreError

    def cut(n):
        if n == 3:
            raise StoreError("connection lost")

    watched = Watched(store, before=cut)
    with pytest.raises(StoreError):
        MappingSystem(watched).apply(records(BASE), max_ops=4)
    m = MappingSystem(store)
    half = m.snapshot()
    assert consistency(half) == [] and 0 < len(half.nves) and not half.bindings
    res = m.apply(records(BASE), max_ops=4)
    assert not res.plan.empty and "bindings" in res.plan.summary()
    one_shot = MappingSystem(MemoryStore())
    one_shot.apply(records(BASE))
    assert without_revision(m.snapshot()) == without_revision(one_shot.snapshot())
    assert m.apply(records(BASE)).plan.empty


# ---- VTEPs in the intent -----------------------------------------------------------------------

REAL = {"dc1br": "198.18.201.254", "hv1": "198.18.201.1", "hv2": "198.18.201.2", "tor1": "198.18.201.10", "dc2br": "198.18.202.254",
        "hv3": "198.18.202.1", "hv4": "198.18.202.2"}


def test_vteps_of_the_intent_name_every_nve():
    topo = parse_topology(intent(vteps=REAL))
    nves = {n.name: n for n in compile_nves(topo, {k: str(v) for k, v in topo.vteps.items()})}
    assert nves["hv1"].vtep == "198.18.201.1" and nves["tor1"].role == "tor"
    assert (nves["hv5"].vtep, nves["hv5"].tor, nves["hv5"].domain) == ("198.18.201.10", "tor1", "pod1")


@pytest.mark.parametrize("vteps,path,reason", [
    ({**REAL, "hv5": "198.18.201.5"}, "vteps.hv5", "server hv5 is behind ToR tor1, which is its NVE"),
    ({**REAL, "vm1": "198.18.201.5"}, "vteps.vm1", "'vm1' is no NVE"),
    ({**REAL, "hv2": "198.18.201.1"}, "vteps.hv2", "VTEP 198.18.201.1 is already hv1's"),
    ({**REAL, "hv2": "224.0.0.1"}, "vteps.hv2", "224.0.0.1 is no unicast host address"),
    ({k: v for k, v in REAL.items() if k != "hv4"}, "vteps", "no VTEP for hv4: give every NVE's VTEP, or none"),
])
def test_bad_vteps_are_refused_with_their_path(vteps, path, reason):
    with pytest.raises(IntentError) as err:
        parse_topology(intent(vteps=vteps))
    assert any(p == path and reason in r for p, r in err.value.problems), err.value.problems


def test_a_border_has_a_vtep_only_with_tenants():
    data = intent(vteps=REAL, tenants={}, policies=[])
    data["cugs"] = {k: {"vni": c["vni"], "subnet": c["subnet"]} for k, c in BASE["cugs"].items()}
    with pytest.raises(IntentError) as err:
        parse_topology(data)
    assert ("vteps.dc1br", "border dc1br is an NVE only when there are tenants: remove it") in err.value.problems
