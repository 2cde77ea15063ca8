"""A VM moves under live UDP (1000 pps) and TCP traffic, inside a data center and between two."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roamnet.experiments.runner import run_scenario
from roamnet.intent.scenario import parse_scenario
from roamnet.lab.state import cleanup, state_dir

DURATION = 5.0
STEP_AT = 2.0


def _scenario(topo: dict[str, Any], to: str) -> dict[str, Any]:
    return {
        "topology": topo,
        "duration": DURATION,
        "streams": [
            {"name": "udp", "from": "vm2", "to": "vm1", "proto": "udp", "rate": 1000},
            {"name": "tcp", "from": "vm3", "to": "vm1", "proto": "tcp"},
        ],
        "steps": [{"at": STEP_AT, "migrate": "vm1", "to": to, "pause_ms": 0}],
    }


def _run_move(base: str, to: str, tmp_path: Path, host: Any, lab_name: Any, make_topology: Any,
              lab_namespaces: Any):
    # dc1: hv1 (vm1, the mover), hv2 (vm2, UDP sender); dc2: hv3 (vm3, TCP sender)
    name = lab_name(base)
    topo = make_topology(name)
    lab_namespaces(topo)  # none exists yet
    scn = parse_scenario(_scenario(topo, to), f"<{name}>", tmp_path)
    try:
        report, t0 = run_scenario(scn)
    finally:
        if state_dir(name).exists():  # run_scenario cleans up itself; this is only a safety net
            cleanup(name)
    assert not [ns for ns in host.netns_list() if ns.startswith(f"rn-{name}-")], "run_scenario left namespaces"
    assert not state_dir(name).exists(), "run_scenario left its state directory"
    return report, t0


def _check_report(report: Any, t0: float, frm: str, to: str, dc_from: str, dc_to: str) -> None:
    assert len(report.migrations) == 1
    mig = report.migrations[0]
    assert (mig["vm"], mig["from"], mig["to"]) == ("vm1", frm, to)
    assert (mig["dc_from"], mig["dc_to"]) == (dc_from, dc_to)
    assert mig["mapped_ms"] is not None, f"the mapping never showed vm1 on {to}: {mig}"
    assert mig["converged_ms"] is not None, f"the NVEs never converged after the move: {mig}"
    assert mig["at"] == pytest.approx(STEP_AT, abs=0.5)

    streams = {s.name: s for s in report.streams}
    tcp, udp = streams["tcp"], streams["udp"]

    assert tcp.survived is True, f"TCP connection broke: {tcp.to_json()}"
    assert tcp.sent > 0 and tcp.received == tcp.sent, tcp.to_json()

    assert udp.sent > 0.8 * 1000 * DURATION, udp.to_json()
    assert udp.survived is True, f"UDP stopped arriving after the move: {udp.to_json()}"
    after = [seq for seq, t in udp.records if t > mig["at_mono"]]
    assert len(after) > 0, "no UDP datagram received after the migration"
    # the stream still flows at the end, not just a straggler after the step
    assert max(seq for seq, _ in udp.records) >= udp.sent - 100, udp.to_json()
    assert isinstance(udp.lost, int) and 0 <= udp.lost < 1000, f"lost {udp.lost}: {udp.to_json()}"
    assert udp.lost == udp.sent - udp.received
    for s in (udp, tcp):
        assert s.max_gap_ms is not None and s.max_gap_ms >= 0, s.to_json()
    js = report.to_json()
    assert {"lost", "max_gap_ms", "survived"} <= set(js["streams"][0])


def test_move_intra_dc(tmp_path: Path, host: Any, lab_name: Any, make_topology: Any, lab_namespaces: Any) -> None:
    report, t0 = _run_move("t-move-intra", "hv2", tmp_path, host, lab_name, make_topology, lab_namespaces)
    _check_report(report, t0, "hv1", "hv2", "dc1", "dc1")


def test_move_inter_dc(tmp_path: Path, host: Any, lab_name: Any, make_topology: Any, lab_namespaces: Any) -> None:
    report, t0 = _run_move("t-move-inter", "hv3", tmp_path, host, lab_name, make_topology, lab_namespaces)
    _check_report(report, t0, "hv1", "hv3", "dc1", "dc2")
