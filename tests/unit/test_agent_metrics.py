"""An agent's Prometheus metrics (agent/metrics.py): the collector reads the live AgentStats and the status
lease (parsed back with prometheus_client's own parser), the textfile is replaced atomically, the HTTP
endpoint serves the same, and `roamnet agent` refuses bad metrics options with a clear error."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_store import Clock

from roamnet import cli
from roamnet.agent import metrics
from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.liveness import StatusLease
from roamnet.mapping.records import Binding, LogicalPort, Nve, Segment
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem

WEB, MAC = 10100, "02:00:00:01:00:01"
HV1 = Nve("hv1", "198.18.1.1", "dc1")


@pytest.fixture
def running():
    """hv1's agent after one pass, its status on a lease, over a MemoryStore on a test clock."""
    m = MappingSystem(MemoryStore(clock=Clock(), reaper=False))
    m.register_segment(Segment(WEB, "web", "198.19.1.0/24"))
    m.register_nve(HV1)
    port = LogicalPort("vm1/0", "vm1", WEB, MAC, ("198.19.1.11",))
    m.register_port(port)
    m.advertise(Binding(WEB, MAC, "hv1", HV1.vtep, 0, port.ips, "vm1/0"))
    kernel = ModelKernel("rn-x-hv1")
    kernel.add_port("vm1/0")
    lease = StatusLease(m.statuses, ttl=3)
    agent = Agent(MappingClient(m, status_lease=lease), HV1, kernel)
    agent.reconcile()
    return m, agent, lease


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from Prometheus text."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict, name: str, **labels) -> float:
    return parsed[(name, tuple(sorted({"nve": "hv1", **labels}.items())))]


def test_the_collector_reads_the_live_counters(running):
    m, agent, lease = running
    reg = metrics.registry(agent, lease)
    got = samples(generate_latest(reg).decode())
    s = agent.stats
    assert s.reconciles == 1 and s.changes_applied > 0
    assert value(got, "roamnet_agent_reconciles_total") == 1
    assert value(got, "roamnet_agent_kernel_reads_total") == s.kernel_reads == 2  # before, and after its devices
    assert value(got, "roamnet_agent_changes_applied_total") == s.changes_applied
    assert value(got, "roamnet_agent_converged_revision") == m.revision
    assert value(got, "roamnet_agent_errors_total") == 0
    assert value(got, "roamnet_agent_status_lease_grants_total") == 1
    assert value(got, "roamnet_agent_status_lease_alive") == 1
    assert value(got, "roamnet_agent_status_lease_ttl_seconds") == 3
    assert value(got, "roamnet_agent_info", vtep="198.18.1.1", role="server", dc="dc1", netns="rn-x-hv1") == 1
    assert value(got, "roamnet_agent_process_resident_memory_bytes") > 0
    assert value(got, "roamnet_agent_process_cpu_seconds_total") >= 0
    assert all(dict(labels).get("nve") == "hv1" for _, labels in got), "every sample names its NVE"
    assert not any(name.startswith("process_") for name, _ in got), "never node_exporter's own names"

    agent.reconcile(resync=True)  # no second bookkeeping: the next scrape sees the agent's counters as they are
    agent.stats.error("vx10100: add failed", "br10100: gone")
    lease.close()
    got = samples(generate_latest(reg).decode())
    assert value(got, "roamnet_agent_reconciles_total") == 2
    assert value(got, "roamnet_agent_resyncs_total") == 1
    assert value(got, "roamnet_agent_kernel_reads_total") == 3
    assert value(got, "roamnet_agent_errors_total") == 2
    assert value(got, "roamnet_agent_status_lease_alive") == 0


def test_an_agent_without_a_lease_has_no_lease_metrics(running):
    _, agent, _ = running
    got = samples(generate_latest(metrics.registry(agent)).decode())
    assert value(got, "roamnet_agent_reconciles_total") == 1
    assert not any(name.startswith("roamnet_agent_status_lease") for name, _ in got)


def test_the_metrics_file_is_replaced_atomically(running, tmp_path: Path):
    _, agent, lease = running
    path = tmp_path / "roamnet-agent-hv1.prom"
    out = metrics.MetricsFile(path, metrics.registry(agent, lease), interval=0.05)
    out.start()  # written once at start
    assert value(samples(path.read_text()), "roamnet_agent_reconciles_total") == 1
    first = path.stat().st_ino
    agent.reconcile()
    for _ in range(100):  # the thread rewrites it (bounded wait)
        if value(samples(path.read_text()), "roamnet_agent_reconciles_total") == 2:
            break
        out._stop.wait(0.05)
    assert value(samples(path.read_text()), "roamnet_agent_reconciles_total") == 2
    assert path.stat().st_ino != first, "a new file renamed over the old one, never rewritten in place"
    agent.reconcile()
    out.stop()  # a last write at stop
    assert value(samples(path.read_text()), "roamnet_agent_reconciles_total") == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file left behind"


def test_a_metrics_file_that_cannot_be_written_fails_at_start(running, tmp_path: Path):
    _, agent, _ = running
    out = metrics.MetricsFile(tmp_path / "missing" / "hv1.prom", metrics.registry(agent))
    with pytest.raises(OSError):
        out.start()


def test_the_http_endpoint_serves_the_same_metrics(running):
    _, agent, lease = running
    server = metrics.serve(metrics.registry(agent, lease), "127.0.0.1", 0)  # a free port, loopback only
    try:
        r = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
        assert r.status_code == 200
        assert value(samples(r.text), "roamnet_agent_reconciles_total") == 1
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text, parsed", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)),
                                          ("metrics.example:80", ("metrics.example", 80))])
def test_parse_listen(text, parsed):
    assert metrics.parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:port", "host:70000", "[::1]"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        metrics.parse_listen(text)


@pytest.mark.parametrize("args, message", [
    (["--metrics-listen", "9464"], "'ROAMNET_METRICS_LISTEN'): '9464' is not HOST:PORT"),
    (["--status-ttl", "0"], "Invalid value for '--status-ttl'"),
    (["--metrics-file", "/"], "Invalid value for '--metrics-file'"),
])
def test_agent_refuses_bad_options(args, message):
    res = CliRunner().invoke(cli.main, ["agent", "--nve", "hv1", "--netns", "rn-x-hv1", "--store", "unix:///nowhere",
                                        *args], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and message in res.output, res.output
