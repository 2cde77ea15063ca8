"""Restarting an NVE agent finds the kernel already right: no changes (its port filters included, so
there is no moment without them), no lost packet."""

from __future__ import annotations

import time
from typing import Any

DURATION = 5.0


def test_agent_restart_no_loss(host: Any, lab_name: Any, make_topology: Any, lab_up: Any, traffic: Any,
                               addr: Any) -> None:
    name = lab_name("t-restart")
    # vm2 on hv3 (dc2) sends to vm1 on hv1 (dc1): the stream crosses both restarted NVEs' VXLAN state
    topo = make_topology(name, vms={"vm1": ("hv1", "web"), "vm2": ("hv3", "web"), "vm3": ("hv2", "db")})
    topo["policies"] = [{"name": "no-ssh", "from": {"any": True}, "to": {"vm": "vm1"}, "proto": "tcp",
                         "ports": [22], "action": "deny"}]
    with lab_up(topo) as lab:
        chains_before = {n: sorted(t.chains) for n, t in lab.filter_tables().items()}
        assert any(c.startswith("out:vm1/0:") for c in chains_before["hv1"]), chains_before
        # warm up ARP both ways, so the measurement is about the agents only
        host.run(["ip", "netns", "exec", f"rn-{name}-vm2", "ping", "-c", "1", "-W", "2", addr.ip(topo, "vm1")])
        start_at = time.monotonic() + 1.5
        flow = traffic(lab, "steady", "udp", "vm2", "vm1", 5101, start_at, DURATION, rate=1000)

        restarts = []
        for server, at in (("hv3", 1.5), ("hv1", 3.0)):  # the sender's, then the receiver's server
            time.sleep(max(0.0, start_at + at - time.monotonic()))
            restarts.append(lab.restart_agent(server))
        for server, res in zip(("hv3", "hv1"), restarts):
            assert res["server"] == server
            assert res["changes_on_restart"] == [], f"agent on {server} changed state on restart: {res}"
        assert lab.wait_converged(5.0)
        assert {n: sorted(t.chains) for n, t in lab.filter_tables().items()} == chains_before

        result = flow.finish()
        assert result.sent > 0.9 * 1000 * DURATION, result.to_json()
        assert result.lost == 0, f"lost {result.lost} packets across agent restarts: {result.to_json()}"
        assert result.received == result.sent
        # the new agents are alive and still do their job: a move is programmed by them
        rec = lab.migrate("vm1", "hv2")
        assert rec["converged_ms"] is not None, rec
        host.run(["ip", "netns", "exec", f"rn-{name}-vm2", "ping", "-c", "2", "-W", "1", addr.ip(topo, "vm1")])
