"""`roamnet lab ...`: build, inspect, enter and remove namespace labs; `roamnet stop` / `roamnet start` of a lab's
VM (a cold move). Everything but `lab up` and `lab exec` is a request to the lab's daemon."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from roamnet.cli.common import FORMAT, _ask, _fail, _need_root, err, out


@click.group()
def lab() -> None:
    """Build, inspect, enter and remove namespace labs."""


@lab.command("up")
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--in-process", is_flag=True,
              help="Keep the mapping in the lab daemon's memory and run the NVE agents as its threads "
                   "(default: a private etcd on a root-only unix socket and one `roamnet agent` process per NVE, "
                   "as on real hosts).")
@click.option("--store", "store_url", metavar="URL",
              help="Run the agents over this etcd instead of starting one (unix:///path/to/socket; it must hold no "
                   "mapping yet, and `lab down` removes the mapping the lab wrote there).")
@FORMAT
def lab_up(topology: Path, in_process: bool, store_url: str | None, fmt: str) -> None:
    """Build TOPOLOGY in network namespaces; it keeps running after the command returns.

    The lab runs what real hosts run: its own etcd (only root can reach it), the intent written by
    the code of `roamnet apply`, and one `roamnet agent` process per NVE; the lab daemon keeps the
    hypervisor's role (VM namespaces, link flips, announcements)."""
    from roamnet.intent.model import IntentError, load_topology
    from roamnet.lab.daemon import DaemonError, start

    _need_root()
    if in_process and store_url:
        raise click.UsageError("--in-process and --store exclude each other")
    try:
        topo = load_topology(topology)
        with err.status(f"building lab {topo.name}") as status:
            res = start(topo.model_dump(mode="json", by_alias=True), str(topology),
                        progress=lambda m: status.update(m), in_process=in_process, store_url=store_url)
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
    from rich.markup import escape
    from rich.table import Table

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
            if n.get("qemu"):
                details += f"\nQEMU guest ({n['qemu']['accel']}), pid {n['qemu']['pid']}"
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
    from roamnet.lab.state import labs

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
    """Run COMMAND inside NODE of lab NAME (like `ip netns exec`): roamnet lab exec two-dc vm1 -- ping 198.19.1.12.
    A QEMU guest runs it on its serial console (a shell's command line; its output, no exit status)."""
    import shlex

    from roamnet import names
    from roamnet.dataplane import netns
    from roamnet.lab.daemon import DaemonError
    from roamnet.lab.errors import LabError
    from roamnet.lab.state import labs, state_dir

    _need_root()
    ns = names.netns(name, node)
    if not state_dir(name).exists():
        _fail(DaemonError(f"no lab {name!r} (labs: {', '.join(labs()) or 'none'})"))
    consoles = sorted((state_dir(name) / "qemu").glob(f"{node}@*.console"))
    if not netns.exists(ns) and consoles:
        from roamnet.lab.qemu import console_run

        if len(consoles) > 1:
            _fail(DaemonError(f"{node} is being moved (QEMU on {len(consoles)} servers): try again"))
        try:
            click.echo(console_run(consoles[0], shlex.join(command), timeout=30.0))
        except LabError as exc:
            _fail(exc)
        return
    if not netns.exists(ns):
        _fail(DaemonError(f"lab {name!r} has no node {node!r} (no namespace {ns})"))
    argv = netns.command(ns, list(command))
    os.execvp(argv[0], argv)


@lab.command("down")
@click.argument("name")
@FORMAT
def lab_down(name: str, fmt: str) -> None:
    """Remove lab NAME: its namespaces (and so its links) and its daemon; nothing else."""
    from roamnet.lab.daemon import DaemonError, stop

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



@click.command("stop")
@click.argument("lab_name", metavar="LAB")
@click.argument("vm")
@FORMAT
def vm_stop(lab_name: str, vm: str, fmt: str) -> None:
    """Stop VM (a cold move's first half): its ports go away; its MAC and addresses stay reserved in
    the mapping, and nothing forwards to it until `roamnet start`."""
    rec = _ask(lab_name, "stop", vm=vm)
    click.echo(json.dumps(rec) if fmt == "json" else f"{vm}: stopped on {rec['on']}")


@click.command("start")
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

