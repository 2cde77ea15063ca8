"""Unit tests for roamnet.experiments.report on synthetic endpoint output."""

from __future__ import annotations

import json
import time

import pytest
from rich.console import Console

from roamnet.experiments.report import Report, StreamResult, plot, render_table, summarize

T0 = 1000.0
LAT = 0.0002  # one-way latency of the synthetic stream


def stream(n: int, rate: float = 1000.0, drop: set[int] = frozenset(), dup: set[int] = frozenset()):
    """Synthetic (send_out, recv_out) for n packets at `rate`, dropping/duplicating seqs."""
    recs: list[list[float]] = []
    for s in range(n):
        if s in drop:
            continue
        t = T0 + s / rate + LAT
        recs.append([s, t])
        if s in dup:
            recs.append([s, t + 0.00001])
    send = {"role": "send", "proto": "udp", "sent": n, "send_errors": 0,
            "first": T0, "last": T0 + (n - 1) / rate, "survived": None, "error": None}  # fmt: skip
    recv = {"role": "recv", "proto": "udp", "records": recs, "survived": None, "error": None}
    return send, recv


def summ(send, recv, proto="udp", rate=1000.0, migrations=None) -> StreamResult:
    return summarize("s1", proto, "vm1", "vm2", rate, send, recv, migrations=migrations)


def test_no_loss() -> None:
    r = summ(*stream(1000))
    assert (r.sent, r.received, r.lost) == (1000, 1000, 0)
    assert r.max_gap_ms == pytest.approx(1.0, abs=0.1)
    assert r.survived is True
    assert len(r.records) == 1000


def test_hole_of_50() -> None:
    r = summ(*stream(1000, drop=set(range(100, 150))))
    assert r.lost == 50 and r.received == 950
    assert r.max_gap_ms == pytest.approx(51.0, abs=0.1)


def test_duplicates_counted_once() -> None:
    r = summ(*stream(100, dup={3, 7, 50}))
    assert (r.received, r.lost) == (100, 0)
    assert len(r.records) == 103


def test_missing_tail_and_head() -> None:
    r = summ(*stream(1000, drop=set(range(900, 1000))))
    assert r.lost == 100
    assert r.max_gap_ms == pytest.approx(99.8, abs=0.1)  # last arrival (899) -> sender last (999)
    r = summ(*stream(1000, drop=set(range(0, 200))))
    assert r.max_gap_ms == pytest.approx(200.2, abs=0.1)  # sender first -> first arrival (200)


def test_nothing_received() -> None:
    send, recv = stream(100, drop=set(range(100)))
    r = summ(send, recv)
    assert (r.received, r.lost, r.survived) == (0, 100, False)
    assert r.max_gap_ms == pytest.approx(99.0)


def test_lost_never_negative() -> None:
    send, recv = stream(100)
    send["sent"] = 90
    assert summ(send, recv).lost == 0


def test_tcp_survived() -> None:
    send, recv = stream(100)
    for s_ok, r_ok, want in [(True, True, True), (True, False, False), (False, True, False),
                             (None, True, False)]:  # fmt: skip
        send["survived"], recv["survived"] = s_ok, r_ok
        assert summ(send, recv, proto="tcp").survived is want


def test_udp_survived_with_migrations() -> None:
    send, recv = stream(1000, drop=set(range(600, 1000)))  # stream dies at 0.6 s
    early = [{"vm": "vm1", "at_mono": T0 + 0.3}]
    late = [{"vm": "vm1", "at_mono": T0 + 0.3}, {"vm": "vm1", "at_mono": T0 + 0.7}]
    assert summ(send, recv, migrations=early).survived is True
    assert summ(send, recv, migrations=late).survived is False
    assert summ(*stream(1000), migrations=late).survived is True


def make_report() -> Report:
    a = summ(*stream(2000, drop=set(range(500, 560))))
    b = summarize("tcp-1", "tcp", "vm3", "vm4", 200.0, *stream(200, rate=200.0))
    migs = [{"vm": "vm1", "from": "hv1", "to": "hv3", "pause_ms": 12.5, "at": 0.5,
             "at_mono": T0 + 0.5, "converged_ms": 3.2}]  # fmt: skip
    return Report([a, b], migs, {"scenario": "unit", "t0": T0})


def test_json_shape() -> None:
    d = make_report().to_json()
    json.dumps(d)  # serializable
    assert set(d) == {"streams", "migrations", "paths", "counters", "meta"}
    assert set(d["streams"][0]) == {"name", "proto", "from", "to", "rate", "sent", "received",
                                    "lost", "max_gap_ms", "survived"}  # fmt: skip
    assert d["streams"][0]["from"] == "vm1" and d["streams"][0]["lost"] == 60
    assert d["migrations"][0]["to"] == "hv3"
    assert d["meta"]["scenario"] == "unit"


def test_plot_writes_png(tmp_path) -> None:
    out = plot(make_report(), tmp_path / "r.png", T0)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_large_is_fast(tmp_path) -> None:
    rep = Report([summ(*stream(600_000, rate=10_000.0), rate=10_000.0)], [], {})
    t = time.monotonic()
    plot(rep, tmp_path / "big.png", T0)
    assert time.monotonic() - t < 10
    assert (tmp_path / "big.png").stat().st_size > 1000


def test_render_table() -> None:
    console = Console(record=True, width=160)
    render_table(make_report(), console)
    text = console.export_text()
    assert "s1" in text and "tcp-1" in text
    assert "hv3" in text and "converged_ms" in text


def test_counter_delta_per_nve_and_total() -> None:
    from roamnet.experiments.runner import counter_delta

    before = {"hv1": {"arp-request": 5, "arp-to-vxlan": 1}, "hv2": {"arp-request": 0, "arp-to-vxlan": 0}}
    after = {"hv1": {"arp-request": 9, "arp-to-vxlan": 1}, "hv2": {"arp-request": 3, "arp-to-vxlan": 0},
             "hv3": {"arp-request": 2, "arp-to-vxlan": 0}}  # hv3 had no table before the run
    d = counter_delta(before, after)
    assert d["by_nve"]["hv1"] == {"arp-request": 4, "arp-to-vxlan": 0}
    assert d["total"] == {"arp-request": 9, "arp-to-vxlan": 0}
