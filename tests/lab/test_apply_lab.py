"""`roamnet apply` on a running lab: a policy added through the apply path reaches the agents and the
kernels (a ping is denied), and removed again (the ping passes), with the VMs left where they are."""

from __future__ import annotations

import copy
import subprocess

import pytest

pytestmark = pytest.mark.lab


def ping(lab, src: str, ip: str) -> bool:
    from roamnet import names
    from roamnet.dataplane import netns

    argv = netns.command(names.netns(lab.name, src), ["ping", "-c", "2", "-i", "0.2", "-W", "1", ip])
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode == 0


def test_a_policy_applied_to_a_running_lab(lab_name, lab_namespaces, lab_up):
    from roamnet.intent.compile import compile_topology
    from roamnet.intent.model import parse_topology
    from roamnet.lab.plan import deployed_nves

    topo = {"name": lab_name("t-apply"), "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}},
            "cugs": {"web": {"vni": 10100, "subnet": "198.19.1.0/24"}},
            "vms": {"vm1": {"server": "hv1", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:11",
                                                                "ip": "198.19.1.11"}]},
                    "vm2": {"server": "hv2", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:12",
                                                                "ip": "198.19.1.12"}]}}}
    lab_namespaces(topo)
    deny = copy.deepcopy(topo)
    deny["policies"] = [{"name": "no-ping", "from": {"vm": "vm2"}, "to": {"vm": "vm1"}, "proto": "icmp",
                         "action": "deny"}]

    def apply(data):
        t = parse_topology(data)
        return lab.mapping.apply(compile_topology(t, deployed_nves(t)))

    with lab_up(topo) as lab:
        assert ping(lab, "vm2", "198.19.1.11")
        res = apply(deny)
        assert res.txns == 1 and res.plan.summary() == {"policy": {"added": ["policy"]}}
        assert lab.wait_converged(10.0)
        assert not ping(lab, "vm2", "198.19.1.11")
        assert ping(lab, "vm1", "198.19.1.12")  # one direction only
        res = apply(topo)
        assert res.plan.summary() == {"policy": {"removed": ["policy"]}}
        assert lab.wait_converged(10.0)
        assert ping(lab, "vm2", "198.19.1.11")
        bindings = lab.mapping.snapshot().bindings.values()
        assert {(b.nve, b.seq, b.detached) for b in bindings} == {("hv1", 0, False), ("hv2", 0, False)}
