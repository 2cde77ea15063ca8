"""`roamnet agent` (one process per NVE) and `roamnet hook libvirt` (libvirtd runs it on every VM event) start
without what only the other commands need: the intent's pydantic models, the lab, rich's tables and the map
views. Each case runs in a fresh interpreter and looks at sys.modules afterwards (what was imported, not how long
it took)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
# what none of these paths may import (a name, or a package and everything under it)
HEAVY = ("pydantic", "yaml", "rich", "pygments", "roamnet.intent", "roamnet.lab", "roamnet.mapview",
         "roamnet.experiments", "roamnet.baselines")

PROBE = """
import contextlib, io, json, sys
from roamnet.cli import main
argv = json.loads(sys.argv[1])
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(argv, prog_name="roamnet")
    except SystemExit as exc:
        code = exc.code
    else:
        code = None
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported(argv: list[str], env: dict[str, str] | None = None) -> tuple[object, set[str]]:
    """Run `roamnet ARGV` in a fresh interpreter (stdin empty): its exit code and every module it imported."""
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60, env={"PYTHONPATH": str(SRC), **(env or {})})
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    return data["code"], set(data["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_the_heavy_list_is_what_the_other_commands_do_import():
    """The probe sees imports: `roamnet validate` loads the intent models, rich and yaml."""
    from roamnet.intent.scenario import packaged_example

    code, modules = imported(["validate", str(packaged_example("two-dc.yaml"))])
    assert code == 0
    assert {"pydantic", "roamnet.intent.model", "rich.console", "yaml"} <= modules


@pytest.mark.parametrize("argv", [["--help"], ["agent", "--help"], ["hook", "libvirt", "--help"],
                                  ["lab", "--help"], ["apply", "--help"], ["migrate", "--help"]])
def test_the_package_and_help_import_only_click_and_the_command_modules(argv):
    code, modules = imported(argv)
    assert code == 0
    assert heavy(modules) == []
    assert not {"httpx", "pyroute2", "roamnet.agentd", "roamnet.mapping"} & modules


def test_a_starting_agent_imports_its_loop_and_store_but_not_the_intent_lab_or_rich():
    # up to the namespace check: every import the command makes (no namespace of that name exists)
    code, modules = imported(["agent", "--nve", "hv1", "--netns", "rn-no-such-lab-hv1", "--store", "unix:///nowhere",
                              "--metrics-listen", "127.0.0.1:9464"])
    assert code == 1
    assert {"roamnet.agentd", "roamnet.mapping.store.etcd", "roamnet.agent.metrics", "httpx"} <= modules
    assert heavy(modules) == []


def test_the_libvirt_hook_imports_nothing_heavy():
    # an event that touches nothing: not even the store
    code, modules = imported(["hook", "libvirt", "vm1", "started", "begin", "-"])
    assert code == 0
    assert heavy(modules) == [] and "httpx" not in modules
    # an event that moves a VM (refused here: no NVE, no store): the orchestrator and the store client, no more
    code, modules = imported(["hook", "libvirt", "vm1", "migrate", "begin", "-"],
                             env={"ROAMNET_NVE": "", "ROAMNET_STORE": ""})
    assert code == 1
    assert {"roamnet.orchestrator.libvirt", "roamnet.mapping.store.etcd"} <= modules
    assert heavy(modules) == []
