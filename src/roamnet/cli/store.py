"""`roamnet apply`, `roamnet status`, `roamnet get`: the mapping store, directly (no lab daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from roamnet.cli.common import FORMAT, _fail, open_store, out, store_options


@click.command("apply")
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
    from roamnet.intent.model import IntentError, load_topology
    from roamnet.lab.plan import deployed_nves
    from roamnet.mapping.apply import ApplyRefused
    from roamnet.mapping.store.etcd import StoreError
    from roamnet.mapping.system import MappingSystem
    from roamnet.mapview import render_apply

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


def _read_store(store_url: str, cacert: str | None, cert: str | None, key: str | None, sync_s: float = 0.0):
    """(snapshot, statuses) of the store at `store_url`; with `sync_s`, the live NVEs behind the snapshot's
    revision are first asked to publish (an agent publishes a change that concerned nothing of its NVE only
    when asked: mapping/status.py) and waited for, at most `sync_s` s."""
    from roamnet.mapping.store.etcd import StoreError
    from roamnet.mapping.system import MappingSystem

    store = open_store(store_url, cacert, cert, key)
    try:
        m = MappingSystem(store)
        snap = m.snapshot()
        if sync_s > 0:
            m.statuses.wait_converged(sorted(set(snap.nves) & set(m.statuses.all())), sync_s, snap.revision)
        return snap, m.statuses.all()
    except StoreError as exc:
        _fail(exc)
    finally:
        store.close()


@click.command("status")
@store_options
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Ask the live NVEs behind the mapping's revision to publish their status, and wait at most "
                   "this many seconds for them (0: show what is published). An agent publishes a change that "
                   "concerns nothing of its NVE only when asked, at its next pass or at its resync.")
@FORMAT
def status_cmd(store_url: str, cacert: str | None, cert: str | None, key: str | None, wait_s: float,
               fmt: str) -> None:
    """Every NVE: alive (its agent's status key exists), the mapping revision it has programmed and
    whether it lags, its pid, last pass and errors; the bindings' states; the moves in progress."""
    from roamnet.mapview import render_status, status_data

    data = status_data(*_read_store(store_url, cacert, cert, key, wait_s))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        render_status(data, out)


@click.command("get")
@click.argument("kind", metavar="KIND")
@click.argument("name", required=False)
@store_options
@FORMAT
def get_cmd(kind: str, name: str | None, store_url: str, cacert: str | None, cert: str | None, key: str | None,
            fmt: str) -> None:
    """Show the mapping's records of KIND: nves, ports, bindings, migrations, segments (cugs), tenants,
    domains, policy, statuses. NAME keeps those of one NVE, VM (ports, bindings, migrations), CUG,
    tenant, domain or policy rule."""
    from roamnet.mapview import NotFound, get_rows, kind_of, render_get

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

