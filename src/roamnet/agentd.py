"""The `roamnet agent` process: one NVE's agent, on its own, over a network mapping store.

It reads its NVE's record from the store, builds the kernel side for that NVE (an NVE's namespace
with its tenants' VRF namespaces `<netns>.t-<tenant>`, or a hypervisor switch for a server behind a
ToR), runs `agent.loop.Agent` until SIGTERM or SIGINT, then stops its threads and leaves every kernel
object in place: the agent is headless, the data plane keeps forwarding without it, and a restarted
agent finds its state by name and changes nothing.

`build_agent` is also what the lab uses for its agents in threads, so both run the same wiring.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable

from roamnet.agent.loop import Agent
from roamnet.agent.switch import SwitchAgent
from roamnet.dataplane.kernel import Kernel
from roamnet.dataplane.switch import SwitchKernel
from roamnet.mapping.client import MappingClient
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


def run(nve_name: str, store, ns: str, stop: threading.Event | None = None) -> int:
    """Run the agent of `nve_name` over `store` until `stop` (or SIGTERM / SIGINT); returns 0."""
    mapping = MappingSystem(store)
    snap = mapping.snapshot()
    nve = snap.nves.get(nve_name)
    if nve is None:
        known = ", ".join(sorted(snap.nves)) or "none"
        raise AgentError(f"no NVE {nve_name!r} in the mapping at {getattr(store, 'url', 'the store')} "
                         f"(NVEs there: {known}); `roamnet apply` a topology with it first")
    agent = build_agent(MappingClient(mapping), nve, ns, snap.tenants)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("agent of %s (%s, VTEP %s) in %s starting", nve.name, nve.role, nve.vtep, ns)
    agent.start()
    try:
        stop.wait()
    finally:
        agent.stop()  # threads and sockets only: every kernel object stays (headless)
        log.info("agent of %s stopped; the data plane keeps forwarding", nve.name)
    return 0
