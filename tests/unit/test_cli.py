"""The command line's text output prints what it is given: paths and error messages that look like rich
markup ("[/x]", "[web]") are shown as they are, never interpreted (a closing tag crashed with a
traceback, an opening one vanished)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from roamnet import cli
from roamnet.cli import lab as cli_lab
from roamnet.intent.scenario import packaged_example


def test_validate_prints_a_path_with_brackets_as_it_is(tmp_path: Path) -> None:
    d = tmp_path / "[web]" / "[" / "draft]"  # ".../[web]/[/draft]/two-dc.yaml"
    d.mkdir(parents=True)
    path = d / "two-dc.yaml"
    path.write_text(packaged_example("two-dc.yaml").read_text())
    res = CliRunner().invoke(cli.main, ["validate", str(path)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert res.exception is None
    assert f"{path}: ok — lab two-dc: " in res.output, res.output


def test_inspect_table_prints_errors_with_brackets_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(cli_lab, "out", Console(file=buf, width=300))
    data = {
        "lab": "x",
        "nodes": [{"name": "hv1", "kind": "server", "dc": "dc1", "namespace": "rn-x-hv1", "vtep": "198.18.1.1",
                   "segments": [10100], "agent": {"reconciles": 1, "errors": ["write [/dev/x] failed [web]"]}}],
        "mapping": {"revision": 3, "bindings": [], "vlans": {}},
        "wan_bgp": {"wan_routes": {"198.19.1.0/24": "dc1br"}, "error": "vtysh: [/run/frr] [bold]gone"},
    }
    cli_lab._inspect_table(data)
    text = buf.getvalue()
    assert "errors: write [/dev/x] failed [web]" in text, text
    assert "FRR: vtysh: [/run/frr] [bold]gone" in text, text


def test_inspect_table_shows_agents_status_clients_vrfs_and_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(cli_lab, "out", Console(file=buf, width=300))
    vrf = {"l3vni": 50001, "router_mac": "02:52:4e:01:01:01", "gateways": ["198.19.1.1/24"], "host_routes": 2,
           "default_via": "198.18.250.1"}
    data = {
        "lab": "x",
        "nodes": [{"name": "hv1", "kind": "server", "dc": "dc1", "namespace": "rn-x-hv1", "vtep": "198.18.1.1",
                   "segments": [10100], "vrfs": {"t1": vrf},
                   "agent": {"converged_revision": 42, "reconciles": 7, "resyncs": 3, "errors": []}},
                  {"name": "hv2", "kind": "server", "dc": "dc1", "namespace": "rn-x-hv2", "vtep": "198.18.1.3",
                   "agent": {"published": False}},
                  {"name": "client1", "kind": "client", "dc": "", "namespace": "rn-x-client1", "ip": "198.18.192.10"}],
        "pending": {"vm1": {"from": "hv1", "to": "hv2", "resumed": False}},
        "mapping": {"revision": 42, "bindings": [], "vlans": {}},
    }
    cli_lab._inspect_table(data)
    text = buf.getvalue()
    assert "converged at rev 42  passes 7  resyncs 3" in text, text
    assert "agent: no status published" in text, text
    assert "t1: L3 VNI 50001  gateways 198.19.1.1/24  host routes 2  default via 198.18.250.1" in text, text
    assert "WAN client 198.18.192.10" in text, text
    assert "moves in progress" in text and "│ vm1 │ hv1  │ hv2 │ no" in text, text
