"""The `roamnet agent` process: one NVE's agent, on its own, over a network mapping store.

It reads its NVE's record from the store, builds the kernel side for that NVE (an NVE's namespace
with its tenants' VRF namespaces `<netns>.t-<tenant>`, or a hypervisor switch for a server behind a
ToR), runs `agent.loop.Agent` until SIGTERM or SIGINT, then stops its threads and leaves every kernel
object in place: the agent is headless, the data plane keeps forwarding without it, and a restarted
agent finds its state by name and changes nothing. SIGUSR1 writes every thread's stack to stderr and
changes nothing (what a stuck agent is doing: `kill -USR1 <pid>`).

Its status (/status/<nve>) lives on a lease of the store that a thread of its own renews
(`mapping.liveness.StatusLease`): the status is the agent's liveness. A clean stop revokes the lease
(the status goes at once); after kill -9 the status goes when the TTL runs out; a lease lost while the
store was away is granted again, with the status, when the store is back. Its counters are exposed in
the Prometheus text format (`agent.metrics`) over HTTP and/or in a file, as asked.

`build_agent` is also what the lab uses for its agents in threads, so both run the same wiring.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from roamnet.agent import heap, metrics
from roamnet.agent.loop import Agent
from roamnet.agent.switch import SwitchAgent
from roamnet.dataplane.kernel import Kernel
from roamnet.dataplane.switch import SwitchKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.liveness import DEFAULT_TTL, StatusLease
from roamnet.mapping.records import Nve
from roamnet.mapping.system import MappingSystem

log = logging.getLogger(__name__)


def build_agent(client: MappingClient, nve: Nve, ns: str, tenants: Iterable[str],
                vrf_ns: Callable[[str], str] | None = None) -> Agent:
    """The agent of `nve`, whose kernel objects live in namespace `ns` (and its tenants' VRFs in
    `vrf_ns(tenant)`, by default `<ns>.t-<tenant>`)."""
    if nve.tor:  # a server behind a ToR: its hypervisor switch
        return SwitchAgent(client, nve, SwitchKernel(ns))
    vrf_ns = vrf_ns or (lambda t: f"{ns}.t-{t}")
    return Agent(client, nve, Kernel(ns, nve.vtep, {t: vrf_ns(t) for t in tenants}))


class AgentError(RuntimeError):
    pass


def run(nve_name: str, store, ns: str, stop: threading.Event | None = None, *, status_ttl: int = DEFAULT_TTL,
        metrics_listen: tuple[str, int] | None = None, metrics_file: Path | None = None) -> int:
    """Run the agent of `nve_name` over `store` until `stop` (or SIGTERM / SIGINT); returns 0.

    Its status lives on a lease of `status_ttl` seconds; its metrics are served at `metrics_listen`
    (host, port) and/or written to `metrics_file`, if given."""
    mapping = MappingSystem(store)
    snap = mapping.snapshot()
    nve = snap.nves.get(nve_name)
    if nve is None:
        known = ", ".join(sorted(snap.nves)) or "none"
        raise AgentError(f"no NVE {nve_name!r} in the mapping at {getattr(store, 'url', 'the store')} "
                         f"(NVEs there: {known}); `roamnet apply` a topology with it first")
    lease = StatusLease(mapping.statuses, status_ttl)
    agent = build_agent(MappingClient(mapping, status_lease=lease), nve, ns, snap.tenants)
    reg = metrics.registry(agent, lease)
    out = metrics.MetricsFile(metrics_file, reg) if metrics_file else None
    if out is not None:
        try:
            out.start()  # written once now: a path that cannot be written is an error before anything runs
        except OSError as exc:
            raise AgentError(f"cannot write --metrics-file {metrics_file}: {exc.strerror or exc}") from None
    server = None
    if metrics_listen is not None:
        try:
            server = metrics.serve(reg, *metrics_listen)
        except OSError as exc:
            if out is not None:
                out.stop()
            raise AgentError(f"cannot serve --metrics-listen {metrics_listen[0]}:{metrics_listen[1]}: "
                             f"{exc.strerror or exc}") from None
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # SIGUSR1: every thread's stack to stderr
    log.info("agent of %s (%s, VTEP %s) in %s starting; status on a %d s lease", nve.name, nve.role, nve.vtep, ns,
             status_ttl)
    lease.start()
    agent.start()
    try:
        if threading.current_thread() is threading.main_thread():  # the agent's own process
            heap.settle(stop)  # until stopped: full collections walk only what is new (agent/heap.py)
        else:
            stop.wait()
    finally:
        agent.stop()  # threads and sockets only: every kernel object stays (headless)
        lease.close(revoke=True)  # the status goes now: this agent is gone
        if server is not None:
            server.shutdown()
        if out is not None:
            out.stop()
        log.info("agent of %s stopped; the data plane keeps forwarding", nve.name)
    return 0
