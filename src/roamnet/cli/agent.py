"""`roamnet agent`: one NVE's agent, one process per NVE. It imports roamnet.agentd (the agent loop, the kernel
through pyroute2) when it runs, and never the intent models, the lab or rich."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from roamnet.cli.common import _fail, open_store, store_options


def _listen(ctx, param, value: str | None) -> tuple[str, int] | None:
    from roamnet.agent.metrics import parse_listen

    try:
        return None if value is None else parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--nve", "nve", required=True, help="The NVE this agent drives (its name in the mapping).")
@click.option("--netns", "ns", required=True, envvar="ROAMNET_NETNS", show_envvar=True,
              help="The network namespace the NVE's kernel objects live in (named, as `ip netns` has it; the "
                   "host's own: `ip netns attach NAME 1`).")
@store_options
@click.option("--status-ttl", type=click.IntRange(1, 3600), default=3, show_default=True, metavar="SECONDS",
              envvar="ROAMNET_STATUS_TTL", show_envvar=True,
              help="TTL of the lease /status/<nve> lives on: how long the status of an agent that died "
                   "(kill -9) or lost the store outlives it. A thread renews it every TTL/3. etcd raises a TTL "
                   "below its minimum (about 2 s) to that minimum.")
@click.option("--metrics-listen", callback=_listen, metavar="HOST:PORT", envvar="ROAMNET_METRICS_LISTEN",
              show_envvar=True,
              help="Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464, "
                   "[::1]:9464). Default: off.")
@click.option("--metrics-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              envvar="ROAMNET_METRICS_FILE", show_envvar=True,
              help="Write Prometheus metrics to PATH every 5 s, atomically (node_exporter's textfile collector: "
                   "name it *.prom in its --collector.textfile.directory). Default: off.")
@click.option("-v", "--verbose", is_flag=True, help="Log each pass's changes.")
def agent(nve: str, ns: str, store_url: str, cacert: str | None, cert: str | None, key: str | None,
          status_ttl: int, metrics_listen: tuple[str, int] | None, metrics_file: Path | None, verbose: bool) -> None:
    """Run one NVE's agent (one process per NVE; as root).

    \b
    It watches the mapping from the store, programs the NVE's kernel (in --netns), reports the moves it
    sees and publishes /status/<nve>: the mapping revision it has programmed and its counters.
    \b
    Liveness: the status lives on a lease of the store (--status-ttl) that the agent renews from a
    thread of its own. SIGTERM (or SIGINT) revokes it: the status disappears at once. After kill -9, or
    while the agent cannot reach the store, the status disappears when the TTL runs out; an agent that
    lost its lease takes a new one and publishes again when the store is back. A missing status means
    "not converged" to everything that waits on the NVEs.
    \b
    Headless: stopping (or killing) the agent leaves every kernel object in place, so the data plane
    keeps forwarding; a restarted agent finds its state and changes nothing.
    \b
    Metrics (Prometheus text format, every sample labelled nve=NAME): roamnet_agent_*_total counters
    (reconciles, resyncs, kernel_reads, changes_applied, moves_reported, announcements_seen,
    claims_refused, errors, idle_advances, pass_cpu_seconds, status_lease_grants, status_lease_failures),
    gauges (converged_revision, last_pass_seconds, pending_prunes, status_lease_alive,
    status_lease_ttl_seconds), roamnet_agent_info and roamnet_agent_process_* (CPU seconds, resident
    memory, open files, start time).
    \b
    Deployed by systemd: contrib/systemd/roamnet-agent@.service, one instance per NVE.
    """
    import logging

    from roamnet import agentd
    from roamnet.dataplane import netns
    from roamnet.mapping.store.etcd import StoreError

    if os.geteuid() != 0:
        raise click.ClickException("the agent needs root (netlink, nftables in the NVE's namespace)")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s agent[{nve}] %(levelname)s %(message)s")
    if not verbose:  # httpx logs every request to the store at INFO: several a second, forever (journald)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not netns.exists(ns):
        raise click.ClickException(f"no network namespace {ns!r} (--netns)")
    store = open_store(store_url, cacert, cert, key)
    try:
        sys.exit(agentd.run(nve, store, ns, status_ttl=status_ttl, metrics_listen=metrics_listen,
                            metrics_file=metrics_file))
    except (StoreError, agentd.AgentError) as exc:
        _fail(exc)

