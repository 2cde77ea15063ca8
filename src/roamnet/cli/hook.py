"""`roamnet hook libvirt`: libvirt's qemu hook (libvirtd runs it on every VM event; most events touch nothing
and import nothing beyond click and the event table)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from roamnet.cli.common import _close, open_store, store_options


@click.group()
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
@click.option("--complete-timeout", "complete_s", envvar="ROAMNET_COMPLETE_TIMEOUT", show_envvar=True,
              default=None, type=click.FloatRange(1, 86400),
              help="A move activated on this host is completed by its agent if the source's `release` never "
                   "comes (the source host died) within this many seconds of the activation [default: the "
                   "mapping's, 120].")
@click.option("--wait", "wait_s", envvar="ROAMNET_HOOK_WAIT", show_envvar=True, default=10.0, show_default=True,
              type=click.FloatRange(0, 600),
              help="The longest the hook waits for the NVEs to program a phase (libvirt waits for the hook).")
@click.option("--syslog", is_flag=True, envvar="ROAMNET_HOOK_SYSLOG", show_envvar=True,
              help="Also log to syslog (/dev/log, ident roamnet-hook): libvirt logs a hook's stderr only when it fails.")
def hook_libvirt(domain: str, operation: str, suboperation: str, extra: str, nve: str | None,
                 store_url: str | None, cacert: str | None, cert: str | None, key: str | None, timeout_s: float,
                 complete_s: float | None, wait_s: float, syslog: bool) -> None:
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
                           (store_url, cacert, cert, key), timeout_s, wait_s, complete_s or 0.0)
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
    if code:
        sys.exit(code)


def _hook_event(logger, event: str, domain: str, operation: str, suboperation: str, extra: str, xml: str,
                nve: str | None, store_args: tuple, timeout_s: float, wait_s: float, complete_s: float = 0.0) -> int:
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
                                 timeout_s, wait_s, complete_s)
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
        by = f", activated by {rec['activated_by']}" if rec.get("activated_by") else ""
        logger.info("%s: %s: %s %s %s -> %s (%s)%s%s, %s ms", event, decision.why, rec["vm"], rec["phase"], rec["from"],
                    rec["to"], ",".join(rec["ifaces"]), by, lag, took)
    return 0

