"""`roamnet migrate`: one phase of a move through the mapping store (what an orchestrator calls), or a live
migration of a lab's VM through the lab's daemon."""

from __future__ import annotations

import json

import click

from roamnet.cli.common import FORMAT, _ask, _close, _fail, _need_root, open_store, out, store_options

PHASES = ("all", "prepare", "resume", "activate", "complete", "abort")
DRIVERS = ("lab", "libvirt", "libvirt-command")  # lab/libvirt.DRIVERS (not imported: the CLI starts light)
STORE_PHASES = ("prepare", "activate", "complete", "abort")  # through the store: the hypervisor resumes the VM


@click.command(context_settings={"max_content_width": 120})
@click.argument("where", nargs=-1, required=True, metavar="[LAB] VM")
@click.option("--to", "to", help="Destination: a server of the lab, or an NVE of the mapping (whole move, --phase prepare).")
@click.option("--pause-ms", default=0, show_default=True, type=click.IntRange(0, 60000),
              help="Lab only: the stop-and-copy pause, how long the VM is stopped between source and destination.")
@click.option("--no-prepare", is_flag=True,
              help="Lab only: learn-driven move (no make-before-break), for comparison.")
@click.option("--driver", type=click.Choice(DRIVERS), default="lab", show_default=True,
              help="Lab only, a whole move: who does the mapping's side of it: the lab's orchestrator (lab), or "
                   "libvirt's qemu hook run where and when libvirtd runs it during a migration (migrate begin on "
                   "the destination prepares, release on the source completes), in the lab's process (libvirt) or "
                   "as the `roamnet hook libvirt` command (libvirt-command).")
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True,
              help="Run one phase of a make-before-break move, as an orchestrator's hook would: prepare "
                   "(destination ready, senders deliver to both servers), resume (lab only: the lab's hypervisor runs "
                   "the VM on the destination; its announcement activates the move), activate (explicitly), "
                   "complete (forget the move; the lab also removes the source port), abort (roll back a move not "
                   "activated). With --store, one of prepare, activate, complete, abort is required.")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="With --phase prepare: roll the move back if it is not activated within this many seconds.")
@click.option("--complete-timeout", "complete_s", default=None, type=click.FloatRange(1, 86400),
              help="With --store --phase prepare: once activated, the move is completed by the destination's agent "
                   "if nobody completes it within this many seconds (the source died before its release) "
                   "[default: the mapping's, 120].")
@click.option("--wait", "wait_s", default=10.0, show_default=True, type=click.FloatRange(0, 3600),
              help="With --store: how long a phase waits for every NVE to program it (prepare rolls back if they "
                   "do not; activate and complete say which NVEs are behind).")
@click.option("--port-ready", is_flag=True,
              help="With --store --phase prepare: the VM's port already exists on the destination, so its agent "
                   "must program it too before prepare returns (by default the destination is not waited for: "
                   "hypervisors create its port when the migration starts).")
@store_options(required=False)
@FORMAT
def migrate(where: tuple[str, ...], to: str | None, pause_ms: int, no_prepare: bool, driver: str, phase: str,
            timeout_s: float, complete_s: float | None, wait_s: float, port_ready: bool, store_url: str | None,
            cacert: str | None, cert: str | None, key: str | None, fmt: str) -> None:
    """Move a VM: one phase of a planned move through the mapping store (what an orchestrator calls; no
    lab), or a live migration in a running lab.

    \b
    roamnet migrate VM --phase prepare --to NVE --store URL    through the store (or $ROAMNET_STORE);
    roamnet migrate VM --phase activate|complete|abort --store URL
    roamnet migrate LAB VM [--to SERVER] [--phase ...]         a lab's VM, through the lab's daemon

    One argument is a VM of the mapping (its interfaces are the mapping's ports of that VM); two are a
    lab and its VM. Through the store, prepare waits until every NVE programmed the move (rolled back
    if not within --wait), the destination's agent activates it when the VM's RARP arrives there (or
    rolls it back after --timeout), and complete refuses a move not activated. An activated move
    nobody completes is completed by the destination's agent after --complete-timeout.
    """
    if driver != "lab" and (len(where) == 1 or phase != "all" or no_prepare):
        raise click.UsageError("--driver is for a whole, prepared move of a lab's VM (LAB VM, no --phase or "
                               "--no-prepare)")
    if len(where) == 1:
        _migrate_through_store(where[0], to, phase, timeout_s, wait_s, port_ready, (store_url, cacert, cert, key),
                               fmt, pause_ms=pause_ms, no_prepare=no_prepare, complete_s=complete_s)
        return
    if complete_s is not None:
        raise click.UsageError("--complete-timeout is for --store --phase prepare (a lab completes its moves itself)")
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
            "timeout": timeout_s, "driver": driver}
    rec = _ask(lab_name, "migrate", **args)
    if fmt == "json":
        click.echo(json.dumps(rec))
    elif phase != "all":
        out.print(f"{vm}: {rec['phase']}" + (f" ({rec['from']} → {rec['to']})" if "from" in rec else ""))
    else:
        by = f", activated by {rec['activated_by']}" if rec.get("activated_by") else ""
        out.print(f"{vm}: {rec['from']} ({rec['dc_from']}) → {rec['to']} ({rec['dc_to']}), {rec['mode']}{by}, "
                  f"pause {pause_ms} ms (dark {rec['dark_ms']} ms); mapping moved {rec['mapped_ms']} ms and "
                  f"every NVE programmed {rec['converged_ms']} ms after the VM resumed")


def _migrate_through_store(vm: str, to: str | None, phase: str, timeout_s: float, wait_s: float, port_ready: bool,
                           store_args: tuple, fmt: str, pause_ms: int, no_prepare: bool,
                           complete_s: float | None = None) -> None:
    """`roamnet migrate VM --store URL --phase ...`: orchestrator.moves over the store."""
    from rich.markup import escape

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
    if complete_s is not None and phase != "prepare":
        raise click.UsageError("--complete-timeout is for --phase prepare (it is recorded with the move)")
    orch = Orchestrator(MappingSystem(open_store(*store_args)))
    try:
        if phase != "prepare" and to:
            _, migs = orch.moves(vm)
            dsts = {m.dst for m in migs.values()}
            if dsts != {to}:
                raise MoveError(f"{vm}: its move in progress goes to {', '.join(sorted(dsts))}, not {to}")
        if phase == "prepare":
            rec = orch.prepare(vm, to, timeout_s, wait_s, port_ready, complete_within=complete_s or 0.0)
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
                 f"within {timeout_s:g} s, completed by it unless completed within {rec['complete_within_s']:g} s of "
                 f"the activation")
    elif "converged" in rec:
        line += "; every NVE programmed it" if rec["converged"] else \
            f"; not yet programmed by {', '.join(rec['lagging'])} after {wait_s:g} s"
    out.print(escape(line))

