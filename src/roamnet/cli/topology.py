"""`roamnet schema` and `roamnet validate`: the topology format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from roamnet.cli.common import _fail, out


@click.command()
def schema() -> None:
    """Print the JSON Schema of the topology format."""
    from roamnet.intent.model import topology_json_schema

    click.echo(json.dumps(topology_json_schema(), indent=2))


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
def validate(topology: Path) -> None:
    """Check a topology file; exit 1 with every problem (file, YAML path, reason)."""
    from rich.markup import escape

    from roamnet.intent.model import IntentError, load_topology

    try:
        topo = load_topology(topology)
    except IntentError as exc:
        _fail(exc)
    out.print(f"{escape(str(topology))}: ok — lab {topo.name}: {len(topo.datacenters)} data centers, "
              f"{len(topo.server_dc())} servers, {len(topo.cugs)} CUGs, {len(topo.vms)} VMs")

