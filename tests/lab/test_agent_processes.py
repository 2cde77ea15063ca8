"""A lab that runs the real thing's first parts (issue 14): its own etcd member on a root-only unix
socket, the mapping there, and one `roamnet agent` process per NVE. A VM moves under a 1 kHz stream,
an agent is killed with SIGKILL and restarted: the data plane forwards all along, and the new agent
changes nothing."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import lost_between


def test_agent_processes_over_etcd_move_crash_and_restart(make_topology, lab_name, lab_namespaces, lab_up, traffic,
                                                           host):
    t = make_topology(lab_name("t-etcd"))  # dc1: hv1 (vm1), hv2 (vm2); dc2: hv3 (vm3); one CUG
    lab_namespaces(t)
    with lab_up(t, etcd=True) as lab:
        pids = {n: a.pid for n, a in lab.agents.items()}
        assert len(set(pids.values())) == len(pids) and os.getpid() not in pids.values()
        for nve, pid in pids.items():  # one process per NVE, each what a user would run
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"agent" in argv and argv[argv.index(b"--nve") + 1] == nve.encode(), argv
        published = {n: s.pid for n, s in lab.mapping.statuses.all().items()}
        assert published == pids, (published, pids)
        # the store: unix sockets in a 0700 directory, no TCP port, out of reach of anyone but root
        assert "etcd" not in host.run(["ss", "-Hltnp"]).stdout
        sock = str(lab.etcd.socket)
        probe = subprocess.run(["/usr/bin/python3", "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({sock!r})"],
                               capture_output=True, text=True, timeout=10,
                               preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe

        start_at = time.monotonic() + 0.5
        flow = traffic(lab, "to-vm1", "udp", "vm2", "vm1", 5701, start_at, 6.0, rate=1000)
        time.sleep(1.0)
        there = lab.migrate("vm1", "hv3")
        killed_at = time.monotonic()
        lab.agents["hv2"].kill()  # the sender's NVE loses its agent: the data plane goes on forwarding
        time.sleep(1.0)
        restarted = lab.restart_agent("hv2")
        restarted_at = time.monotonic()
        back = lab.migrate("vm1", "hv1")
        result = flow.finish([there, back])
        from roamnet.experiments.loss import loss_beyond_pause, windows_from_migrations
        beyond = loss_beyond_pause(result.records, result.sent, result.first, result.rate,
                                   windows_from_migrations([there, back]), last=result.last,
                                   sent_at=result.sent_at)
        headless = lost_between(result, killed_at, restarted_at)
        print(f"agents as processes over etcd: pids {pids}; move hv1->hv3 converged {there['converged_ms']} ms, "
              f"back {back['converged_ms']} ms; hv2's agent killed -9 and restarted (pid {restarted['pid']}) with "
              f"changes {restarted['changes_on_restart']}; stream lost {result.lost} of {result.sent}, "
              f"{len(headless)} while hv2's agent was dead; pauses {there['dark_ms']} and {back['dark_ms']} ms; lost (in the pause, beyond): "
              f"{[(m.lost_in_pause, m.lost_beyond_pause) for m in beyond]}")
        assert there["converged_ms"] is not None and back["converged_ms"] is not None
        assert restarted["changes_on_restart"] == []
        assert headless == [], "the data plane lost packets while hv2's agent was dead"
        assert result.survived, result.to_json()
    assert not lab.etcd.workdir.exists()


def test_a_lab_over_the_users_etcd_leaves_it_as_it_found_it(make_topology, lab_name, lab_namespaces, lab_up, host,
                                                           tmp_path):
    """`lab up --store URL`: the agents run over an etcd the lab did not start; it must hold no mapping,
    and `down` takes away what the lab wrote (the user's own keys stay)."""
    import pytest

    from roamnet.intent.model import parse_topology
    from roamnet.lab.engine import Lab
    from roamnet.lab.errors import LabError
    from roamnet.lab.etcd import EtcdServer
    from roamnet.mapping.records import ROOT, STATUS

    t = make_topology(lab_name("t-etcd-ext"))
    lab_namespaces(t)
    server = EtcdServer(tmp_path / "etcd", name="rn-t-etcd-ext")
    store = server.start()
    try:
        store.put("/users/own-key", "stays")
        with lab_up(t, store_url=server.url) as lab:
            assert lab.etcd is None and all(a.store_url == server.url for a in lab.agents.values())
            assert len(store.range(ROOT)[0]) > 0 and set(lab.mapping.statuses.all()) == set(lab.agents)
            ping = host.run(["ip", "netns", "exec", f"rn-{t['name']}-vm2", "ping", "-c", "2", "-W", "1",
                             "198.19.1.11"], check=False)
            assert ping.returncode == 0, ping.stdout
        assert store.range(ROOT)[0] == [] and store.range(STATUS)[0] == []
        assert store.get("/users/own-key").value == "stays"
        store.put(ROOT + "nves/other", "{}")  # someone's mapping: a lab refuses to share it
        lab = Lab(parse_topology(t, "<ext>"), store_url=server.url)
        with pytest.raises(LabError, match="already holds a mapping"):
            lab.up()
    finally:
        store.close()
        server.stop()
