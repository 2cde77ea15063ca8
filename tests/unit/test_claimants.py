"""Claimant ports, pure: a VM port here for an interface bound elsewhere is blocked on its own ingress,
its announcements logged within budget; it stops being blocked once its binding comes here."""

from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import Binding, LogicalPort, Nve, Segment, Snapshot
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem
from roamnet.nve.claimants import (
    CLAIM_BLOCKED,
    MISSING,
    Claimant,
    chain_name,
    claimant_ports,
    plan_claimants,
    read_claimants,
    result,
    rules,
)

WEB, MAC = 10100, "02:00:00:01:00:01"


def snap() -> Snapshot:
    ports = {"vm1/0": LogicalPort("vm1/0", "vm1", WEB, MAC, ("198.19.1.11",)),
             "vm1/1": LogicalPort("vm1/1", "vm1", 10200, MAC, ("198.19.2.11",), vlan=7)}
    return Snapshot(1, ports=ports, segments={WEB: Segment(WEB, "web", "198.19.1.0/24", announce_pps=9)})


def test_a_device_is_a_claimant_unless_one_of_its_interfaces_belongs_here():
    devices = {"vm1/0": "vm1-e0", "vm1/1": "vm1-e0", "vmx/0": "vmx-e0"}  # one NIC, two VLANs; vmx is unknown
    (c,) = claimant_ports(snap(), set(), devices)
    assert c == Claimant("vm1-e0", MAC, 9)
    assert claimant_ports(snap(), {"vm1/1"}, devices) == []


def test_its_chain_logs_announcements_within_budget_and_drops_everything_counted():
    c = Claimant("vm1-e0", MAC, 9)
    r = rules(c)
    assert all(x["expr"][-1] == {"drop": None} and {"counter": CLAIM_BLOCKED} in x["expr"] for x in r)
    logged = [e["log"] for x in r for e in x["expr"] if "log" in e]
    assert logged == [{"prefix": "claim", "group": 77}]  # any frame from the VM's MAC, within budget
    assert r[-1]["expr"] == [{"counter": None}, {"counter": CLAIM_BLOCKED}, {"drop": None}]
    cmds = plan_claimants([c], MISSING)
    chain = next(x["add"]["chain"] for x in cmds if "chain" in x.get("add", {}))
    assert (chain["hook"], chain["dev"], chain["name"]) == ("ingress", "vm1-e0", chain_name(c))
    have = result([c])
    assert plan_claimants([c], have) == []
    gone = plan_claimants([], have)
    assert gone == [{"delete": {"chain": {"family": "netdev", "table": "roamnet", "name": chain_name(c)}}}]
    listing = {"nftables": [{"counter": {"family": "netdev", "table": "roamnet", "name": CLAIM_BLOCKED, "packets": 4}},
                            {"chain": {"family": "netdev", "table": "roamnet", "name": chain_name(c),
                                       "dev": "vm1-e0", "hook": "ingress"}}]}
    assert read_claimants(listing) == (have, 4)


def test_the_agent_blocks_a_clone_and_unblocks_the_port_its_vm_moves_to():
    m = MappingSystem(MemoryStore())
    m.register_segment(Segment(WEB, "web", "198.19.1.0/24"))
    for name, vtep in (("hv1", "198.18.1.1"), ("hv2", "198.18.1.3")):
        m.register_nve(Nve(name, vtep, "dc1"))
    port = LogicalPort("vm1/0", "vm1", WEB, MAC, ("198.19.1.11",))
    m.register_port(port)
    m.advertise(Binding(WEB, MAC, "hv1", "198.18.1.1", 0, port.ips, "vm1/0"))
    k2 = ModelKernel("hv2")
    k2.add_port("vm1/0")
    a2 = Agent(MappingClient(m), Nve("hv2", "198.18.1.3", "dc1"), k2)
    a2.reconcile()
    assert list(k2.actual.claimants.chains.values()) == ["tap-vm1-0"] and k2.actual.ports["vm1/0"] is None
    a2._announcement("tap-vm1-0", MAC)  # the VM resumed here: its announcement claims it
    a2.reconcile()
    assert m.snapshot().binding_of("vm1/0").nve == "hv2"
    assert k2.actual.claimants.chains == {} and k2.actual.ports["vm1/0"] == WEB
