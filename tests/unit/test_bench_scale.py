"""benchmarks/scale.py's pure parts: the plot of cost against size, and reading earlier runs back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale as bench  # noqa: E402


def result(store: str, nves: int, vms: int, per_proc: int, involved: float, uninvolved: float) -> dict:
    s = bench.summary
    return {"store": store, "nves": nves, "vms": vms, "agents_per_proc": [per_proc] * (nves // per_proc),
            "summary": {"cpu_involved_ms": s([involved, involved * 1.2]), "cpu_uninvolved_ms": s([uninvolved] * 3),
                        "baseline_cpu_involved_ms": s([involved * 100]), "baseline_cpu_uninvolved_ms": s([900.0]),
                        "update_ms": {"p50": 90.0, "p99": 210.0, "n": 2, "timeouts": 0}}}


def test_the_plot_draws_cost_against_size_for_every_store_and_process_layout(tmp_path):
    rows = [result("memory", 100, 10_000, 100, 7.0, 0.004), result("memory", 1000, 100_000, 100, 9.0, 0.005),
            result("etcd", 100, 10_000, 1, 15.0, 0.0),  # an uninvolved agent that did nothing: drawn at the floor
            {"store": "etcd", "nves": 1000, "vms": 100_000, "summary": {}}]  # a run that failed: left out
    path = bench.plot(rows, tmp_path / "scale.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert bench.series_label(rows[2]) == "etcd, 1 agent per process"
    assert bench.series_label(rows[0]) == "memory, 100 agents per process"
    assert bench.plot([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_earlier_runs_are_read_back_and_anything_else_is_named(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"benchmark": "scale", "results": [result("etcd", 100, 10_000, 50, 6.5, 0.005)]}))
    assert [r["store"] for r in bench.load_results([good, good])] == ["etcd", "etcd"]
    other = tmp_path / "b.json"
    other.write_text(json.dumps({"benchmark": "migration", "planes": []}))
    with pytest.raises(SystemExit, match=f"{other}: not the output of benchmarks/scale.py"):
        bench.load_results([good, other])
    with pytest.raises(SystemExit, match="cannot read a scale.json"):
        bench.load_results([tmp_path / "missing.json"])


def test_a_baseline_shadow_that_ran_no_pass_during_a_move_is_not_counted_as_free():
    """The full-decode path runs a pass at every change: a shadow with none during a move did not finish it in
    the move's window, so the move tells nothing of that path's cost rather than a cost of 0."""
    def shadow(involved: bool, cpu: float, passes: int) -> dict:
        return {"involved": involved, "cpu": cpu, "passes": passes}

    r = {"nves": 4, "rss_mb": [40.0], "moves": [],
         "baseline_moves": [{"shadows": {"hv1": shadow(True, 0.6, 2), "hv2": shadow(False, 0.0, 0)}},
                            {"shadows": {"hv1": shadow(True, 0.0, 0), "hv2": shadow(False, 0.5, 1)}}]}
    s = bench.summarize(r)
    assert s["baseline_cpu_involved_ms"] == bench.summary([600.0])
    assert s["baseline_cpu_uninvolved_ms"] == bench.summary([500.0])
    assert s["baseline_moves_without_pass"] == 2
    r["baseline_moves"] = [{"shadows": {"hv2": shadow(False, 0.0, 0)}}]
    assert bench.summarize(r)["baseline_cpu_uninvolved_ms"] == {"n": 0}  # shown as "-", not 0
