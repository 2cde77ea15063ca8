"""An agent's counters in the Prometheus text format, read live from its `AgentStats` at each scrape (no
second set of counters to keep in step), with its status lease's and its process's metrics.

Every sample carries the label `nve`, so the files of several agents on one host (one per NVE) can sit
side by side in node_exporter's textfile directory, and the process metrics are named
`roamnet_agent_process_*` so that they never clash with node_exporter's own `process_*`.

Two ways out, both options of `roamnet agent`: an HTTP endpoint (`serve`, for a Prometheus server
that scrapes hosts) and a file rewritten atomically every few seconds (`MetricsFile`, node_exporter's
textfile-collector format; what the lab uses, since lab processes open no TCP port on the host).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from roamnet.agent.loop import Agent
from roamnet.mapping.liveness import StatusLease

log = logging.getLogger(__name__)

PREFIX = "roamnet_agent"
FILE_INTERVAL_S = 5.0  # how often --metrics-file is rewritten

COUNTERS = (  # roamnet_agent_<name>_total, AgentStats field, what it counts
    ("reconciles", "reconciles", "Reconcile passes."),
    ("resyncs", "resyncs", "Periodic passes that read the kernel again."),
    ("kernel_reads", "kernel_reads", "Reads of the NVE's kernel state (netlink dumps)."),
    ("changes_applied", "changes_applied", "Kernel changes applied."),
    ("moves_reported", "moves_reported", "Moves this agent reported to the mapping (port up, RARP/GARP seen)."),
    ("announcements_seen", "announcements_seen", "RARP / gratuitous ARP frames received from VM ports."),
    ("claims_refused", "claims_refused", "Move reports the mobility rules refused (a frozen, sticky or stopped MAC)."),
    ("errors", "error_count", "Errors (failed kernel changes, failed passes, refused mapping writes)."),
    ("idle_advances", "idle_advances", "Mapping changes that concerned none of this NVE's part: no pass, the "
     "converged revision advanced."),
    ("pass_cpu_seconds", "pass_cpu_s", "CPU time spent in passes."),
    ("scoped_passes", "scoped_passes", "Passes that recomputed only the VNIs and tenants their mapping changes "
     "touched."),
    ("drift_scoped_passes", "drift_scoped_passes", "Scoped passes after a kernel event: scoped by where the "
     "kernel's fresh read differed from what the agent held."),
    ("statuses_published", "statuses_published", "Status writes (after passes, at resyncs, when a waiter asked)."),
)


class AgentCollector(Collector):
    """The metrics of `agent` (and of its status lease, if it has one), read when collected."""

    def __init__(self, agent: Agent, lease: StatusLease | None = None):
        self.agent, self.lease = agent, lease

    def collect(self) -> Iterator[Metric]:
        s, nve = self.agent.stats, self.agent.nve
        labels, values = ["nve"], [nve.name]
        info = InfoMetricFamily(PREFIX, "The NVE this agent drives.", labels=labels)
        info.add_metric(values, {"vtep": nve.vtep, "role": nve.role, "dc": nve.dc, "netns": self.agent.ns})
        yield info
        for name, attr, doc in COUNTERS:
            c = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            c.add_metric(values, getattr(s, attr))
            yield c
        gauges = (
            ("converged_revision", "The mapping revision whose every change is programmed in this NVE's kernel.",
             s.converged_revision),
            ("last_pass_seconds", "How long the last pass that changed something took.", s.last_pass_ms / 1000),
            ("pending_prunes", "Segments no longer needed, held before they are removed.",
             len(self.agent.pending_prunes)),
            ("resync_period_seconds", "The period of the resync (a kernel read and a whole pass): longer where a "
             "whole pass costs more than its share of a core.", self.agent.resync_s),
        )
        for name, doc, value in gauges:
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            g.add_metric(values, value)
            yield g
        if self.lease is not None:
            yield from self._lease(labels, values)

    def _lease(self, labels: list[str], values: list[str]) -> Iterator[Metric]:
        lease = self.lease
        current = lease.lease
        for name, doc, value in (
                ("status_lease_alive", "1 while the status lease is renewed (the store answers), else 0.",
                 1 if lease.alive else 0),
                ("status_lease_ttl_seconds", "The TTL of the status lease, as the store granted it.",
                 current.ttl if current else lease.ttl)):
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            g.add_metric(values, value)
            yield g
        for name, doc, value in (
                ("status_lease_grants", "Status leases granted (more than one: a lease was lost, "
                                        "e.g. the store was away for longer than the TTL).", lease.grants),
                ("status_lease_failures", "Renewals or status writes the store did not answer.", lease.failures)):
            c = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            c.add_metric(values, value)
            yield c


class Labelled(Collector):
    """Another collector's metrics with `labels` added to every sample."""

    def __init__(self, inner: Collector, labels: dict[str, str]):
        self.inner, self.labels = inner, labels

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**s.labels, **self.labels}) for s in family.samples]
            yield out


def registry(agent: Agent, lease: StatusLease | None = None) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) with the agent's and its process's
    metrics (CPU seconds, resident memory, open files, start time)."""
    reg = CollectorRegistry()
    reg.register(AgentCollector(agent, lease))
    reg.register(Labelled(ProcessCollector(namespace=PREFIX, registry=None), {"nve": agent.nve.name}))
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::1]:9464) -> (host, port); ValueError saying why not."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464)")
    return host, int(port)


def serve(reg: CollectorRegistry, host: str, port: int):
    """Serve `reg` over HTTP at host:port (/metrics, in a thread); returns the server (`.shutdown()`)."""
    server, _ = start_http_server(port, addr=host, registry=reg)
    return server


class MetricsFile:
    """`reg` written to `path` every `interval` s (and once more at `stop`), atomically: a temporary
    file in the same directory renamed over it, so a reader never sees half a file."""

    def __init__(self, path: Path, reg: CollectorRegistry, interval: float = FILE_INTERVAL_S):
        self.path, self.reg, self.interval = Path(path), reg, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        write_to_textfile(str(self.path), self.reg)

    def start(self) -> None:
        self.write()  # a path that cannot be written fails here, before the agent starts
        self._thread = threading.Thread(target=self._run, name="metrics-file", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except OSError as exc:  # a full disk must not stop the agent
                log.warning("cannot write %s: %s", self.path, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.write()  # the final counters stay for whoever reads them after the agent
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
