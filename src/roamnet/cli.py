"""roamnet's command line: lab up/inspect/exec/down, migrate, run, demo, schema; agent, apply, status, get."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from roamnet import names
from roamnet.dataplane import netns
from roamnet.intent.model import IntentError, load_topology, topology_json_schema
from roamnet.intent.scenario import load_scenario, packaged_example
from roamnet.lab.daemon import DaemonError, call, start, stop
from roamnet.lab.errors import LabError
from roamnet.lab.state import labs, state_dir
from roamnet.mapview import NotFound, get_rows, kind_of, render_apply, render_get, render_status, status_data

out = Console()
err = Console(stderr=True)
FORMAT = click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="Output format.")


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, netlink)")


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


def _ask(lab_name: str, op: str, **args) -> object:
    """One request to a running lab's daemon (root only); its error becomes the command's."""
    _need_root()
    try:
        return call(lab_name, op, **args)
    except DaemonError as exc:
        _fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="roamnet")
def main() -> None:
    """roamnet: VMs move between servers and data centers keeping IP, MAC and connections.

    A mapping system knows where every VM is; NVE agents turn it into kernel VXLAN state;
    a namespace lab emulates data centers and migrates VMs under live traffic.
    """


@main.command()
def schema() -> None:
    """Print the JSON Schema of the topology format."""
    click.echo(json.dumps(topology_json_schema(), indent=2))


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
def validate(topology: Path) -> None:
    """Check a topology file; exit 1 with every problem (file, YAML path, reason)."""
    try:
        topo = load_topology(topology)
    except IntentError as exc:
        _fail(exc)
    out.print(f"{escape(str(topology))}: ok — lab {topo.name}: {len(topo.datacenters)} data centers, "
              f"{len(topo.server_dc())} servers, {len(topo.cugs)} CUGs, {len(topo.vms)} VMs")


# ---- lab ---------------------------------------------------------------------------------------

@main.group()
def lab() -> None:
    """Build, inspect, enter and remove namespace labs."""


@lab.command("up")
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--in-process", is_flag=True,
              help="Keep the mapping in the lab daemon's memory and run the NVE agents as its threads "
                   "(default: a private etcd on a root-only unix socket and one `roamnet agent` process per NVE, "
                   "as on real hosts).")
@FORMAT
def lab_up(topology: Path, in_process: bool, fmt: str) -> None:
    """Build TOPOLOGY in network namespaces; it keeps running after the command returns.

    The lab runs what real hosts run: its own etcd (only root can reach it), the intent written by
    the code of `roamnet apply`, and one `roamnet agent` process per NVE; the lab daemon keeps the
    hypervisor's role (VM namespaces, link flips, announcements)."""
    _need_root()
    try:
        topo = load_topology(topology)
        with err.status(f"building lab {topo.name}") as status:
            res = start(topo.model_dump(mode="json", by_alias=True), str(topology),
                        progress=lambda m: status.update(m), in_process=in_process)
    except (IntentError, DaemonError) as exc:
        _fail(exc)
    if fmt == "json":
        click.echo(json.dumps(res))
    else:
        out.print(f"lab [bold]{res['lab']}[/] is up: {res['namespaces']} namespaces, daemon pid {res['pid']}. "
                  f"Next: roamnet lab inspect {res['lab']}")


def _agent_text(a: dict) -> str:
    """An NVE agent's published status, in a few words."""
    if not a or not a.get("published", True):
        return "agent: no status published"
    return (f"converged at rev {a.get('converged_revision', 0)}  passes {a.get('reconciles', 0)}  "
            f"resyncs {a.get('resyncs', 0)}")


def _inspect_table(data: dict) -> None:
    t = Table(title=f"lab {data['lab']}")
    for col in ("node", "kind", "dc", "namespace", "details"):
        t.add_column(col)
    for n in data["nodes"]:
        a = n.get("agent", {})
        errors = f"  errors: {escape(a['errors'][-1])}" if a.get("errors") else ""
        if "switch" in n:  # a server behind a ToR: its hypervisor switch
            sw = n["switch"]
            details = f"behind {n['tor']} ({n['domain']})  VLANs {','.join(map(str, sw['vlans'])) or '-'}  " + \
                "  ".join(f"{i}: guest {p['guest_vlan'] or 'untagged'} -> {p['vlan']}" for i, p in sw["ports"].items()) + errors
        elif n["kind"] in ("server", "tor", "border") and "vtep" in n:
            details = f"VTEP {n['vtep']}  VNIs {','.join(map(str, n.get('segments', []))) or '-'}  " \
                      f"{_agent_text(a)}" + errors
            if n.get("trunk_vlans"):
                details += f"\ntrunk VLAN ports {', '.join(n['trunk_vlans'])}"
            for tenant, v in n.get("vrfs", {}).items():
                details += f"\n{tenant}: L3 VNI {v['l3vni']}  gateways {','.join(v['gateways']) or '-'}  " \
                           f"host routes {v['host_routes']}  default via {v['default_via'] or '-'}"
        elif n["kind"] == "vrf":
            details = f"tenant {n['tenant']} on {n['parent']}"
        elif n["kind"] == "client":
            details = f"WAN client {n['ip']}"
        elif n["kind"] == "dci":
            details = "data-center interconnect: the borders' underlay, no tenant or client"
        elif n["kind"] == "wan":
            details = "the outside world: tenant handoffs and clients, no route into the underlay"
        elif n["kind"] == "vm":
            details = f"{'stopped, last ' if n.get('stopped') else ''}on {n['server']}  " + "  ".join(
                f"{i['cug']} {i['ip']} {i['mac']}" + (f" vlan {i['guest_vlan']}" if i.get("guest_vlan") else "")
                for i in n["interfaces"])
        else:
            details = ""
        t.add_row(n["name"], n["kind"], n.get("dc", ""), n["namespace"], details)
    out.print(t)
    vlans = data["mapping"].get("vlans") or {}
    if vlans:
        v = Table(title="VLANs per L2 domain (allocated by the mapping)")
        for col in ("domain", "VNI", "VLAN"):
            v.add_column(col)
        for dom, alloc in vlans.items():
            for vni, vlan in alloc.items():
                v.add_row(dom, vni, str(vlan))
        out.print(v)
    if data.get("pending"):
        p = Table(title="moves in progress (prepared; `roamnet migrate --phase ...` goes on)")
        for col in ("VM", "from", "to", "VM resumed on the destination"):
            p.add_column(col)
        for vm, mv in sorted(data["pending"].items()):
            p.add_row(vm, mv["from"], mv["to"], "yes" if mv.get("resumed") else "no")
        out.print(p)
    m = Table(title=f"mapping (revision {data['mapping']['revision']})")
    for col in ("VNI", "MAC", "IPs", "NVE", "VTEP", "seq", "state"):
        m.add_column(col)
    for b in data["mapping"]["bindings"]:
        state = [w for w, on in (("[red]FROZEN[/] (duplicate)", b.get("frozen")), ("stopped", b.get("stopped")),
                                 ("detached", b.get("detached") and not b.get("stopped")),
                                 ("sticky", b.get("sticky"))) if on]
        m.add_row(str(b["vni"]), b["mac"], ",".join(b["ips"]), b["nve"], b["vtep"], str(b["seq"]), " ".join(state))
    out.print(m)
    bgp = data.get("wan_bgp")
    if bgp:
        w = Table(title="WAN routes (FRR BGP): prefix -> border router")
        for col in ("prefix", "border"):
            w.add_column(col)
        for prefix, border in sorted((bgp.get("wan_routes") or {}).items()):
            w.add_row(prefix, border)
        out.print(w)
        if bgp.get("error"):
            out.print(f"[red]FRR: {escape(bgp['error'])}[/]")
    guards = data.get("guards")
    if guards:
        g = Table(title="WAN edge guards: packets dropped (BGP outside its sessions, towards the underlay)")
        for col in ("namespace", "bgp-foreign", "to-underlay"):
            g.add_column(col)
        for where, c in guards.items():
            g.add_row(where, str(c.get("bgp-foreign", 0)), str(c.get("to-underlay", 0)))
        out.print(g)


@lab.command("inspect")
@click.argument("name")
@FORMAT
def lab_inspect(name: str, fmt: str) -> None:
    """Show a running lab's nodes, NVE agents and mapping."""
    data = _ask(name, "inspect")
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        _inspect_table(data)


@lab.command("list")
@FORMAT
def lab_list(fmt: str) -> None:
    """List the labs that are up on this machine."""
    names_ = labs()
    if fmt == "json":
        click.echo(json.dumps(names_))
    else:
        out.print("\n".join(names_) or "no labs")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(name: str, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE of lab NAME (like `ip netns exec`): roamnet lab exec two-dc vm1 -- ping 198.19.1.12"""
    _need_root()
    ns = names.netns(name, node)
    if not state_dir(name).exists():
        _fail(DaemonError(f"no lab {name!r} (labs: {', '.join(labs()) or 'none'})"))
    if not netns.exists(ns):
        _fail(DaemonError(f"lab {name!r} has no node {node!r} (no namespace {ns})"))
    argv = netns.command(ns, list(command))
    os.execvp(argv[0], argv)


@lab.command("down")
@click.argument("name")
@FORMAT
def lab_down(name: str, fmt: str) -> None:
    """Remove lab NAME: its namespaces (and so its links) and its daemon; nothing else."""
    _need_root()
    try:
        removed = stop(name)
    except DaemonError as exc:
        _fail(exc)
    if fmt == "json":
        click.echo(json.dumps({"lab": name, "removed": removed}))
    else:
        out.print(f"lab {name} is down: removed {len(removed)} namespaces")


@lab.command("restart-agent")
@click.argument("name")
@click.argument("server")
@FORMAT
def lab_restart_agent(name: str, server: str, fmt: str) -> None:
    """Restart the NVE agent of SERVER; prints the changes the new agent had to make (normally none)."""
    res = _ask(name, "restart-agent", server=server)
    click.echo(json.dumps(res) if fmt == "json" else
               f"agent on {server} restarted; changes on restart: {res['changes_on_restart'] or 'none'}")


@lab.command("unfreeze")
@click.argument("name")
@click.argument("vm")
@FORMAT
def lab_unfreeze(name: str, vm: str, fmt: str) -> None:
    """Thaw VM's MACs that duplicate detection froze: they stay where they are, and may move again."""
    res = _ask(name, "unfreeze", vm=vm)
    click.echo(json.dumps(res) if fmt == "json" else
               f"{vm}: unfroze {', '.join(res['unfrozen'])}" if res["unfrozen"] else f"{vm}: nothing was frozen")


# ---- the mapping store ---------------------------------------------------------------------------

def store_options(f=None, *, required: bool = True):
    """--store URL (or $ROAMNET_STORE) and the TLS files of an https store (or $ROAMNET_CACERT,
    $ROAMNET_CERT, $ROAMNET_KEY): what every command that talks to the mapping store directly takes
    (see `open_store`). `@store_options`, or `@store_options(required=False)` for a command that
    needs the store only in some of its forms."""
    if f is None:
        return lambda g: store_options(g, required=required)
    for opt in reversed([
        click.option("--store", "store_url", envvar="ROAMNET_STORE", required=required, show_envvar=True,
                     help="The mapping store (etcd): unix:///path/to/etcd.sock, or https://host:port with "
                          "--cacert/--cert/--key."),
        click.option("--cacert", type=click.Path(exists=True, dir_okay=False), envvar="ROAMNET_CACERT", show_envvar=True,
                     help="CA certificate of an https store."),
        click.option("--cert", type=click.Path(exists=True, dir_okay=False), envvar="ROAMNET_CERT", show_envvar=True,
                     help="Client certificate for an https store."),
        click.option("--key", type=click.Path(exists=True, dir_okay=False), envvar="ROAMNET_KEY", show_envvar=True,
                     help="Client key for an https store."),
    ]):
        f = opt(f)
    return f


def _close(store) -> None:
    """Close a store's connections (an embedded store has none)."""
    close = getattr(store, "close", None)
    if close is not None:
        close()


def open_store(store_url: str, cacert: str | None = None, cert: str | None = None, key: str | None = None):
    """The etcd store at `store_url`, reachable (or a ClickException that says why not)."""
    from roamnet.mapping.store.etcd import EtcdStore, StoreError

    try:
        store = EtcdStore(store_url, cacert=cacert, cert=cert, key=key)
        store.revision  # noqa: B018 - reachable, or a clear error now
    except (ValueError, StoreError) as exc:
        _fail(exc)
    return store


# ---- migrate / run / demo ------------------------------------------------------------------------

PHASES = ("all", "prepare", "resume", "activate", "complete", "abort")
STORE_PHASES = ("prepare", "activate", "complete", "abort")  # through the store: the hypervisor resumes the VM


@main.command(context_settings={"max_content_width": 120})
@click.argument("where", nargs=-1, required=True, metavar="[LAB] VM")
@click.option("--to", "to", help="Destination: a server of the lab, or an NVE of the mapping (whole move, --phase prepare).")
@click.option("--pause-ms", default=0, show_default=True, type=click.IntRange(0, 60000),
              help="Lab only: the stop-and-copy pause, how long the VM is stopped between source and destination.")
@click.option("--no-prepare", is_flag=True,
              help="Lab only: learn-driven move (no make-before-break), for comparison.")
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True,
              help="Run one phase of a make-before-break move, as an orchestrator's hook would: prepare "
                   "(destination ready, senders deliver to both servers), resume (lab only: the lab's hypervisor runs "
                   "the VM on the destination; its announcement activates the move), activate (explicitly), "
                   "complete (forget the move; the lab also removes the source port), abort (roll back a move not "
                   "activated). With --store, one of prepare, activate, complete, abort is required.")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="With --phase prepare: roll the move back if it is not activated within this many seconds.")
@click.option("--wait", "wait_s", default=10.0, show_default=True, type=click.FloatRange(0, 3600),
              help="With --store: how long a phase waits for every NVE to program it (prepare rolls back if they "
                   "do not; activate and complete say which NVEs are behind).")
@click.option("--port-ready", is_flag=True,
              help="With --store --phase prepare: the VM's port already exists on the destination, so its agent "
                   "must program it too before prepare returns (by default the destination is not waited for: "
                   "hypervisors create its port when the migration starts).")
@store_options(required=False)
@FORMAT
def migrate(where: tuple[str, ...], to: str | None, pause_ms: int, no_prepare: bool, phase: str, timeout_s: float,
            wait_s: float, port_ready: bool, store_url: str | None, cacert: str | None, cert: str | None,
            key: str | None, fmt: str) -> None:
    """Move a VM: one phase of a planned move through the mapping store (what an orchestrator calls; no
    lab), or a live migration in a running lab.

    \b
    roamnet migrate VM --phase prepare --to NVE --store URL    through the store (or $ROAMNET_STORE);
    roamnet migrate VM --phase activate|complete|abort --store URL
    roamnet migrate LAB VM [--to SERVER] [--phase ...]         a lab's VM, through the lab's daemon

    One argument is a VM of the mapping (its interfaces are the mapping's ports of that VM); two are a
    lab and its VM. Through the store, prepare waits until every NVE programmed the move (rolled back
    if not within --wait), the destination's agent activates it when the VM's RARP arrives there (or
    rolls it back after --timeout), and complete refuses a move not activated.
    """
    if len(where) == 1:
        _migrate_through_store(where[0], to, phase, timeout_s, wait_s, port_ready, (store_url, cacert, cert, key),
                               fmt, pause_ms=pause_ms, no_prepare=no_prepare)
        return
    if len(where) != 2:
        raise click.UsageError(f"give VM (with --store) or LAB VM, not {len(where)} arguments")
    lab_name, vm = where
    if port_ready:
        raise click.UsageError("--port-ready is for moves through the store (the lab creates the port itself)")
    _need_root()
    if phase in ("all", "prepare") and not to:
        raise click.UsageError(f"--to is required for --phase {phase}")
    if no_prepare and phase != "all":
        raise click.UsageError("--no-prepare has no phases")
    args = {"vm": vm, "to": to, "pause_ms": pause_ms, "prepare": not no_prepare, "phase": phase,
            "timeout": timeout_s}
    rec = _ask(lab_name, "migrate", **args)
    if fmt == "json":
        click.echo(json.dumps(rec))
    elif phase != "all":
        out.print(f"{vm}: {rec['phase']}" + (f" ({rec['from']} → {rec['to']})" if "from" in rec else ""))
    else:
        out.print(f"{vm}: {rec['from']} ({rec['dc_from']}) → {rec['to']} ({rec['dc_to']}), {rec['mode']}, "
                  f"pause {pause_ms} ms (dark {rec['dark_ms']} ms); mapping moved {rec['mapped_ms']} ms and "
                  f"every NVE programmed {rec['converged_ms']} ms after the VM resumed")


def _migrate_through_store(vm: str, to: str | None, phase: str, timeout_s: float, wait_s: float, port_ready: bool,
                           store_args: tuple, fmt: str, pause_ms: int, no_prepare: bool) -> None:
    """`roamnet migrate VM --store URL --phase ...`: orchestrator.moves over the store."""
    from roamnet.mapping.store.etcd import StoreError
    from roamnet.mapping.system import MappingSystem
    from roamnet.orchestrator.moves import MoveError, Orchestrator

    if not store_args[0]:
        raise click.UsageError("one argument is a VM of the mapping: give --store URL (or set $ROAMNET_STORE); "
                               "for a lab's VM give LAB VM")
    if phase not in STORE_PHASES:
        raise click.UsageError(f"through the store, --phase is one of {', '.join(STORE_PHASES)} (the hypervisor "
                               f"moves the VM itself)" + (", not resume" if phase == "resume" else ""))
    if pause_ms or no_prepare:
        raise click.UsageError("--pause-ms and --no-prepare are for a lab's VM (LAB VM)")
    if phase == "prepare" and not to:
        raise click.UsageError("--to NVE is required for --phase prepare")
    if port_ready and phase != "prepare":
        raise click.UsageError("--port-ready is for --phase prepare")
    orch = Orchestrator(MappingSystem(open_store(*store_args)))
    try:
        if phase != "prepare" and to:
            _, migs = orch.moves(vm)
            dsts = {m.dst for m in migs.values()}
            if dsts != {to}:
                raise MoveError(f"{vm}: its move in progress goes to {', '.join(sorted(dsts))}, not {to}")
        if phase == "prepare":
            rec = orch.prepare(vm, to, timeout_s, wait_s, port_ready)
        elif phase == "activate":
            rec = orch.activate(vm, wait_s)
        elif phase == "complete":
            rec = orch.complete(vm, wait_s)
        else:
            rec = orch.abort(vm)
    except (MoveError, StoreError) as exc:
        _fail(exc)
    finally:
        _close(orch.mapping.store)
    if fmt == "json":
        click.echo(json.dumps(rec))
        return
    line = f"{vm}: {rec['phase']} ({rec['from']} → {rec['to']})"
    if phase == "prepare":
        who = "every NVE" + ("" if port_ready else f" but {to} (it programs the VM's port when it appears)")
        line += (f"; {who} programmed it in {rec['prepared_ms']} ms; rolled back by {to}'s agent unless activated "
                 f"within {timeout_s:g} s")
    elif "converged" in rec:
        line += "; every NVE programmed it" if rec["converged"] else \
            f"; not yet programmed by {', '.join(rec['lagging'])} after {wait_s:g} s"
    out.print(escape(line))


@main.command("stop")
@click.argument("lab_name", metavar="LAB")
@click.argument("vm")
@FORMAT
def vm_stop(lab_name: str, vm: str, fmt: str) -> None:
    """Stop VM (a cold move's first half): its ports go away; its MAC and addresses stay reserved in
    the mapping, and nothing forwards to it until `roamnet start`."""
    rec = _ask(lab_name, "stop", vm=vm)
    click.echo(json.dumps(rec) if fmt == "json" else f"{vm}: stopped on {rec['on']}")


@main.command("start")
@click.argument("lab_name", metavar="LAB")
@click.argument("vm")
@click.option("--on", "on", required=True, help="The server the VM starts on.")
@FORMAT
def vm_start(lab_name: str, vm: str, on: str, fmt: str) -> None:
    """Start a stopped VM on a server (a cold move's second half), with its MAC and addresses."""
    rec = _ask(lab_name, "start", vm=vm, to=on)
    if fmt == "json":
        click.echo(json.dumps(rec))
    else:
        out.print(f"{vm}: started on {rec['to']} ({rec['dc_to']}), stopped on {rec['from']} ({rec['dc_from']}) for "
                  f"{rec['dark_ms']} ms; every NVE programmed {rec['converged_ms']} ms after the start")


def _listen(ctx, param, value: str | None) -> tuple[str, int] | None:
    from roamnet.agent.metrics import parse_listen

    try:
        return None if value is None else parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
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


# ---- the mapping store: apply / status / get ---------------------------------------------------

@main.command("apply")
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
@store_options
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@FORMAT
def apply_cmd(topology: Path, store_url: str, cacert: str | None, cert: str | None, key: str | None,
              dry_run: bool, fmt: str) -> None:
    """Make the mapping store hold TOPOLOGY's intent: NVEs, ports, tenants, CUGs, L2 domains, policy.

    A diff against what the store holds, in one transaction when it fits (else an ordered sequence that
    a second apply finishes if interrupted); a second apply of the same file changes nothing. VMs
    already bound stay where they are; new VMs start on their server. What would break the running
    system (an NVE that still hosts VMs, a VM that is moving) is refused and nothing is written.
    VTEPs: the topology's `vteps:`, else the lab plan's addresses."""
    from roamnet.intent.compile import compile_topology
    from roamnet.lab.plan import deployed_nves
    from roamnet.mapping.apply import ApplyRefused
    from roamnet.mapping.store.etcd import StoreError
    from roamnet.mapping.system import MappingSystem

    try:
        topo = load_topology(topology)
        records = compile_topology(topo, deployed_nves(topo))
    except IntentError as exc:
        _fail(exc)
    except ValueError as exc:  # the lab plan's limits
        _fail(ValueError(f"{topology}: {exc}; give every NVE's address in `vteps:`"))
    store = open_store(store_url, cacert, cert, key)
    try:
        res = MappingSystem(store).apply(records, dry_run=dry_run)
    except ApplyRefused as exc:
        _fail(ValueError(f"{topology}: refused, nothing written:\n" + "\n".join(f"  {p}" for p in exc.problems)))
    except StoreError as exc:
        _fail(StoreError(f"{exc}\n{topology}: the apply stopped half way; every step left the mapping consistent, "
                         "and `roamnet apply` again finishes it"))
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps({"topology": str(topology), **res.to_json()}))
    else:
        render_apply(res, str(topology), out)


def _read_store(store_url: str, cacert: str | None, cert: str | None, key: str | None):
    """(snapshot, statuses) of the store at `store_url`."""
    from roamnet.mapping.store.etcd import StoreError
    from roamnet.mapping.system import MappingSystem

    store = open_store(store_url, cacert, cert, key)
    try:
        m = MappingSystem(store)
        return m.snapshot(), m.statuses.all()
    except StoreError as exc:
        _fail(exc)
    finally:
        store.close()


@main.command("status")
@store_options
@FORMAT
def status_cmd(store_url: str, cacert: str | None, cert: str | None, key: str | None, fmt: str) -> None:
    """Every NVE: alive (its agent's status key exists), the mapping revision it has programmed and
    whether it lags, its pid, last pass and errors; the bindings' states; the moves in progress."""
    data = status_data(*_read_store(store_url, cacert, cert, key))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        render_status(data, out)


@main.command("get")
@click.argument("kind", metavar="KIND")
@click.argument("name", required=False)
@store_options
@FORMAT
def get_cmd(kind: str, name: str | None, store_url: str, cacert: str | None, cert: str | None, key: str | None,
            fmt: str) -> None:
    """Show the mapping's records of KIND: nves, ports, bindings, migrations, segments (cugs), tenants,
    domains, policy, statuses. NAME keeps those of one NVE, VM (ports, bindings, migrations), CUG,
    tenant, domain or policy rule."""
    try:
        kind = kind_of(kind)
        snap, statuses = _read_store(store_url, cacert, cert, key)
        rows = get_rows(kind, snap, statuses, name)
    except NotFound as exc:
        _fail(exc)
    if fmt == "json":
        click.echo(json.dumps({"kind": kind, "revision": snap.revision, "items": rows}, indent=2))
    else:
        render_get(kind, rows, snap.revision, out)


@main.group()
def hook() -> None:
    """Hooks that other programs run (libvirt's qemu hook)."""


@hook.command("libvirt")
@click.argument("domain")
@click.argument("operation")
@click.argument("suboperation")
@click.argument("extra", default="-")
@click.option("--nve", envvar="ROAMNET_NVE", show_envvar=True,
              help="This host's NVE: its name in the mapping (/etc/roamnet/roamnet.env sets ROAMNET_NVE).")
@store_options(required=False)
@click.option("--timeout", "timeout_s", envvar="ROAMNET_PREPARE_TIMEOUT", show_envvar=True, default=600.0,
              show_default=True, type=click.FloatRange(1, 86400),
              help="A move prepared at `migrate begin` is rolled back by the destination's agent if the VM has "
                   "not announced itself there within this many seconds (longer than a migration takes).")
@click.option("--wait", "wait_s", envvar="ROAMNET_HOOK_WAIT", show_envvar=True, default=10.0, show_default=True,
              type=click.FloatRange(0, 600),
              help="The longest the hook waits for the NVEs to program a phase (libvirt waits for the hook).")
@click.option("--syslog", is_flag=True, envvar="ROAMNET_HOOK_SYSLOG", show_envvar=True,
              help="Also log to syslog (/dev/log, ident roamnet-hook): libvirt logs a hook's stderr only when it fails.")
def hook_libvirt(domain: str, operation: str, suboperation: str, extra: str, nve: str | None,
                 store_url: str | None, cacert: str | None, cert: str | None, key: str | None, timeout_s: float,
                 wait_s: float, syslog: bool) -> None:
    """libvirt's qemu hook, as libvirtd runs /etc/libvirt/hooks/qemu: DOMAIN OPERATION SUBOPERATION
    EXTRA, the domain's XML on stdin (contrib/libvirt/qemu execs this).

    \b
    migrate begin (destination)   prepare the move of the domain's VM to this host's NVE; a failure
                                  exits 1, and libvirt refuses the migration
    release end (source)          the VM migrated away: activate the move (if its RARP did not) and
                                  complete it
    release end (destination)     a move never activated: the incoming migration failed, abort it
    anything else                 nothing, exit 0 (the store is not even opened)

    The domain's VM is the mapping's VM whose interface MACs (or port names, <vm>-e<k>, as
    <target dev=...>) the domain's interfaces have; a domain with none is left alone. Nothing is
    printed on stdout (for `migrate begin` libvirt reads stdout as the domain's XML: empty keeps it).
    """
    import logging
    import logging.handlers

    from roamnet.orchestrator.libvirt import ACTIVE_EVENTS

    xml = sys.stdin.read()  # always: libvirt writes the domain's XML to every hook call
    logger = logging.getLogger("roamnet.hook")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(logging.Formatter(f"roamnet-hook[{os.getpid()}]: %(levelname)s %(message)s"))
    if syslog and Path("/dev/log").exists():
        handlers.append(logging.handlers.SysLogHandler("/dev/log"))
        handlers[-1].setFormatter(logging.Formatter(f"roamnet-hook[{os.getpid()}]: %(levelname)s %(message)s"))
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    event = f"{domain} {operation} {suboperation} {extra}"
    try:
        if (operation, suboperation) not in ACTIVE_EVENTS:
            return
        code = _hook_event(logger, event, domain, operation, suboperation, extra, xml, nve,
                           (store_url, cacert, cert, key), timeout_s, wait_s)
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
    if code:
        sys.exit(code)


def _hook_event(logger, event: str, domain: str, operation: str, suboperation: str, extra: str, xml: str,
                nve: str | None, store_args: tuple, timeout_s: float, wait_s: float) -> int:
    """One event of libvirt's that may touch the mapping; the exit code (1: failed, said on stderr)."""
    import time

    from roamnet.mapping.store.etcd import StoreError
    from roamnet.mapping.system import MappingSystem
    from roamnet.orchestrator.libvirt import HookError, run_hook
    from roamnet.orchestrator.moves import Orchestrator

    if not nve or not store_args[0]:
        missing = " and ".join(w for w, v in (("ROAMNET_NVE (--nve)", nve), ("ROAMNET_STORE (--store)", store_args[0]))
                               if not v)
        logger.error("%s: refused: %s not set (/etc/roamnet/roamnet.env)", event, missing)
        return 1
    started = time.monotonic()
    store = None
    try:
        store = open_store(*store_args)
        decision, rec = run_hook(Orchestrator(MappingSystem(store)), nve, domain, operation, suboperation, extra, xml,
                                 timeout_s, wait_s)
    except (HookError, StoreError, click.ClickException) as exc:
        logger.error("%s: failed on %s: %s", event, nve, exc.message if isinstance(exc, click.ClickException) else exc)
        return 1
    finally:
        _close(store)
    took = round((time.monotonic() - started) * 1000, 1)
    if rec is None:
        logger.info("%s: %s (%s ms)", event, decision.why, took)
    else:
        lag = f"; not yet programmed by {', '.join(rec['lagging'])}" if rec.get("lagging") else ""
        logger.info("%s: %s: %s %s %s -> %s (%s)%s, %s ms", event, decision.why, rec["vm"], rec["phase"], rec["from"],
                    rec["to"], ",".join(rec["ifaces"]), lag, took)
    return 0


def _run(path: Path, fmt: str, plot_path: Path | None) -> None:
    from roamnet.experiments.plot import plot
    from roamnet.experiments.report import render_table
    from roamnet.experiments.runner import run_scenario

    _need_root()
    try:
        scn = load_scenario(path)
    except IntentError as exc:
        _fail(exc)
    try:
        with err.status("starting") as status:
            report, t0 = run_scenario(scn, progress=lambda m: status.update(m))
    except (LabError, DaemonError) as exc:
        _fail(exc)
    if plot_path:
        plot(report, plot_path, t0)
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        render_table(report, out)
        if plot_path:
            out.print(f"plot: {plot_path}")
    unmet = report.unmet()
    if unmet:
        err.print("expectation not met: " + ", ".join(f"{s.name} (expected {s.expect})" for s in unmet))
        sys.exit(3)


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@FORMAT
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: every migration zoomed in per stream (arrivals, lost packets, the dark "
                   "window, the phases), under an overview of the run.")
def run(scenario: Path, fmt: str, plot_path: Path | None) -> None:
    """Build the scenario's lab, run its streams and steps, tear down, report.

    Exit 3 if a stream did not do what the scenario expects of it (`expect:`): a `delivered` stream
    (the default) that did not survive (TCP: the connection broke; UDP: nothing sent after the last
    migration arrived), or a `denied` stream that received anything. Exit 1 on a bad scenario or a
    lab error.
    """
    _run(scenario, fmt, plot_path)


@main.command()
@FORMAT
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="PNG plot path.")
def demo(fmt: str, plot_path: Path | None) -> None:
    """Two data centers; vm1 moves inside dc1, then to dc2, under UDP and TCP streams.

    Exit 3 if a stream did not survive (as `run`)."""
    _run(packaged_example("demo.yaml"), fmt, plot_path)


if __name__ == "__main__":
    main()
