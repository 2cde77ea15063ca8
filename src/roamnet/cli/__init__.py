"""roamnet's command line: the `roamnet` group and its commands, a module per verb family.

topology (schema, validate), lab (lab up/list/inspect/exec/down/restart-agent/unfreeze; stop/start of a lab's VM),
migrate, store (apply, status, get), agent, hook (hook libvirt), run (run, demo); common holds what they share.
Importing this package imports click and these modules only: each command imports what it needs when it runs, so
`roamnet agent` (one process per NVE) and `roamnet hook libvirt` (run by libvirtd on every VM event) start without
the intent models, the lab, rich or the map views (tests/unit/test_cli_imports.py holds them to it).
"""

from __future__ import annotations

import click

from roamnet.cli import agent as _agent
from roamnet.cli import hook as _hook
from roamnet.cli import lab as _lab
from roamnet.cli import migrate as _migrate
from roamnet.cli import run as _run
from roamnet.cli import store as _store
from roamnet.cli import topology as _topology


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="roamnet")
def main() -> None:
    """roamnet: VMs move between servers and data centers keeping IP, MAC and connections.

    A mapping system knows where every VM is; NVE agents turn it into kernel VXLAN state;
    a namespace lab emulates data centers and migrates VMs under live traffic.
    """


for _command in (_topology.schema, _topology.validate, _lab.lab, _lab.vm_stop, _lab.vm_start, _migrate.migrate,
                 _agent.agent, _store.apply_cmd, _store.status_cmd, _store.get_cmd, _hook.hook, _run.run, _run.demo):
    main.add_command(_command)

__all__ = ["main"]
