"""The systemd template unit shipped in contrib/systemd/: what it runs, how it stops, and that its example
environment files set only variables `roamnet agent` reads (so the unit and the command cannot drift
apart). `systemd-analyze verify` checks the unit itself where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roamnet.cli.agent import agent

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
UNIT = CONTRIB / "roamnet-agent@.service"


def directives(path: Path) -> dict[str, list[str]]:
    """KEY -> its values in order (a unit may repeat a key), comments and sections left out."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_runs_one_agent_per_instance_and_stops_it_with_sigterm():
    d = directives(UNIT)
    assert d["ExecStart"] == ["/usr/local/bin/roamnet agent --nve %i"]
    assert d["EnvironmentFile"] == ["/etc/roamnet/roamnet.env", "/etc/roamnet/agent-%i.env"]
    assert d["Restart"] == ["always"] and d["KillSignal"] == ["SIGTERM"] and d["KillMode"] == ["mixed"]
    assert d["WantedBy"] == ["multi-user.target"]


def test_the_example_environment_files_set_only_what_the_agent_reads():
    reads = {p.envvar for p in agent.params if p.envvar}
    assert {"ROAMNET_STORE", "ROAMNET_NETNS", "ROAMNET_CACERT", "ROAMNET_CERT", "ROAMNET_KEY", "ROAMNET_STATUS_TTL",
            "ROAMNET_METRICS_LISTEN", "ROAMNET_METRICS_FILE"} <= reads
    for env in ("roamnet.env", "agent-hv1.env"):
        names = re.findall(r"^#?([A-Z_]+)=", (CONTRIB / env).read_text(), flags=re.M)
        assert names and set(names) <= reads, (env, set(names) - reads)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    roamnet = Path(sys.executable).parent / "roamnet"  # verify checks that ExecStart's command exists
    if not roamnet.exists():
        pytest.skip(f"no {roamnet} to stand in for /usr/local/bin/roamnet")
    unit = tmp_path / "roamnet-agent@hv1.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/roamnet", str(roamnet)))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
