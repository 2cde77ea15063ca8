"""A real `roamnet agent` process over its own etcd member, in a namespace of its own: its status lives on
a lease (SIGTERM revokes it: gone at once; kill -9: gone once the TTL has run out), its metrics file
parses and follows the published status, and its kernel objects stay when it stops (headless)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from roamnet.dataplane import netns
from roamnet.lab.etcd import EtcdServer
from roamnet.mapping.records import STATUS, Nve
from roamnet.mapping.system import MappingSystem

KEY = STATUS + "hv1"


def metric(path, name: str) -> float:
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            if s.name == name and s.labels.get("nve") == "hv1":
                return s.value
    raise KeyError(name)


def until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_agent_process_status_on_a_lease_and_its_metrics_file(lab_name, tmp_path):
    name = lab_name("t-lease")
    ns = f"rn-{name}-hv1"
    server = EtcdServer(tmp_path / "etcd", name=f"rn-{name}")
    store = server.start()
    prom = tmp_path / "roamnet-agent-hv1.prom"
    argv = [sys.executable, "-m", "roamnet.cli", "agent", "--nve", "hv1", "--netns", ns, "--store", server.url,
            "--status-ttl", "2", "--metrics-file", str(prom)]
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        with open(tmp_path / "agent.log", "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        procs.append(p)
        return p

    def published_by(p: subprocess.Popen) -> bool:
        st = m.statuses.all().get("hv1")
        return st is not None and st.pid == p.pid and st.converged_revision >= m.revision

    netns.create(ns)
    try:
        m = MappingSystem(store)
        m.register_nve(Nve("hv1", "198.18.1.1", "dc1"))
        first = start()
        assert until(lambda: published_by(first)), (tmp_path / "agent.log").read_text()
        kv = store.get(KEY)
        assert kv.lease != 0, "the status lives on a lease"
        assert until(lambda: prom.exists() and metric(prom, "roamnet_agent_converged_revision") >= m.revision)
        assert metric(prom, "roamnet_agent_status_lease_alive") == 1
        assert metric(prom, "roamnet_agent_status_lease_ttl_seconds") >= 2
        assert metric(prom, "roamnet_agent_reconciles_total") >= 1
        assert metric(prom, "roamnet_agent_process_resident_memory_bytes") > 0
        tables = json.loads(subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "tables"],
                                           capture_output=True, text=True, check=True, timeout=10).stdout)
        ours = sorted(t["table"]["name"] for t in tables["nftables"] if "table" in t)
        assert ours, "the agent programmed its namespace"

        first.send_signal(signal.SIGTERM)  # a clean stop: the lease is revoked, the status goes now
        assert first.wait(timeout=15) == 0
        assert store.get(KEY) is None, "the status of a stopped agent is gone"
        assert metric(prom, "roamnet_agent_status_lease_alive") == 0, "the last metrics say it has no lease"
        after = json.loads(subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "tables"],
                                          capture_output=True, text=True, check=True, timeout=10).stdout)
        assert sorted(t["table"]["name"] for t in after["nftables"] if "table" in t) == ours, "headless"

        second = start()
        assert until(lambda: published_by(second)), (tmp_path / "agent.log").read_text()
        rev = store.revision
        second.kill()  # kill -9: nobody revokes, nobody renews
        second.wait(timeout=10)
        gone = []
        for _ in range(30):  # bounded: the TTL (2 s) and etcd's expiry check (every 0.5 s)
            events, rev = store.watch(STATUS, rev, timeout=1)
            gone += [e for e in events if e.key == KEY and e.value is None]
            if gone:
                break
        assert gone, "the status of a killed agent outlived its lease"
        assert "hv1" not in m.statuses.all() and m.statuses.lagging(m.revision, ["hv1"]) == ["hv1"]
    finally:
        for p in procs:  # only our own processes, by their pid
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        store.close()
        netns.remove(ns)
        server.stop()
