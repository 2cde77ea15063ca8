"""Unit tests for roamnet.experiments.plot on synthetic reports: what each panel draws, and where."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from roamnet.experiments import plot as P
from roamnet.experiments.report import Report, StreamResult, summarize

T0 = 1000.0
LAT = 0.0002  # one-way latency of the synthetic streams
RATE = 1000.0


def udp(n: int, drop: set[int] = frozenset(), rate: float = RATE) -> tuple[dict, dict]:
    """(send_out, recv_out) of n datagrams at `rate` from T0, dropping seqs `drop`."""
    recs = [[s, T0 + s / rate + LAT] for s in range(n) if s not in drop]
    send = {"sent": n, "first": T0, "last": T0 + (n - 1) / rate, "survived": None}
    return send, {"records": recs, "survived": None}


def tcp(n: int, rate: float, stall_from: float, stall_s: float) -> tuple[dict, dict]:
    """Every write arrives, but none between stall_from and stall_from + stall_s: they come at its end."""
    recs = []
    for s in range(n):
        t = T0 + s / rate + LAT
        recs.append([s, stall_from + stall_s if stall_from <= t < stall_from + stall_s else t])
    return {"sent": n, "first": T0, "last": T0 + (n - 1) / rate, "survived": True}, \
        {"records": recs, "survived": True}


def move(at_s: float, dark_ms: float = 5.0, frm: str = "hv1", to: str = "hv2", **extra: Any) -> dict:
    """A make-before-break record: stopped at T0 + at_s, dark `dark_ms`, activated 4 ms after resuming,
    every NVE programmed 6 ms after that, preparing took 40 ms; `extra` overrides (None removes)."""
    at = T0 + at_s
    resumed = at + dark_ms / 1000
    rec = {"vm": "vm1", "from": frm, "to": to, "pause_ms": 0, "mode": "prepared", "at": at_s, "at_mono": at,
           "resumed_mono": resumed, "dark_ms": dark_ms, "prepared_ms": 40.0, "activated_mono": resumed + 0.004,
           "mapped_ms": 4.0, "programmed_ms": 6.0, "converged_ms": 10.0}
    rec.update(extra)
    return {k: v for k, v in rec.items() if v is not None}


GAP = range(2001, 2011)  # 10 datagrams = 10 ms at 1 kHz, sent from 1.5 ms after the VM stopped
MOVE = move(1.9995, dark_ms=5.0)


def report(streams: list[StreamResult] | None = None, migrations: list[dict] | None = None) -> Report:
    if streams is None:
        streams = [summarize("l2", "udp", "vm2", "vm1", RATE, *udp(4000, set(GAP)), [MOVE])]
    return Report(streams, [MOVE] if migrations is None else migrations, {"lab": "unit", "duration": 4, "t0": T0})


def panels(fig: Any) -> dict[str, Any]:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label().startswith(("zoom", "overview"))}


def by_gid(ax: Any, gid: str) -> list[Any]:
    return [a for a in ax.get_children() if a.get_gid() == gid]


def where(ax: Any) -> tuple[int, int]:
    spec = ax.get_subplotspec()
    return spec.rowspan.start, spec.colspan.start


# ---------------------------------------------------------------- pure parts


def test_phases_from_a_full_record() -> None:
    at = T0 + 2
    got = dict(P.phases(move(2.0, dark_ms=5.0), at))
    assert list(got) == ["prepare started", "stopped", "resumed", "activated", "programmed"]
    assert got["prepare started"] == pytest.approx(at - 0.040)
    assert got["resumed"] == pytest.approx(at + 0.005)
    assert got["activated"] == pytest.approx(at + 0.009)
    assert got["programmed"] == pytest.approx(at + 0.015)  # activated + programmed_ms


def test_phases_of_another_control_plane_omit_what_it_lacks() -> None:
    evpn = move(2.0, mode="evpn", prepared_ms=None, activated_mono=None, mapped_ms=None, programmed_ms=None,
                converged_ms=120.0)
    got = dict(P.phases(evpn, T0 + 2))
    assert list(got) == ["stopped", "resumed", "programmed"]
    assert got["programmed"] == pytest.approx(T0 + 2 + 0.005 + 0.120)  # resumed + converged_ms
    bare = {"vm": "vm1", "at_mono": T0 + 2}  # e.g. a prepared move rolled back
    assert P.phases(bare, T0 + 2) == [("stopped", T0 + 2)]


def test_moves_of_numbers_moves_and_takes_at_when_there_is_no_at_mono() -> None:
    rep = report(migrations=[move(1.0), {"vm": "vm1", "from": "hv2", "to": "hv3", "at": 2.5},
                             {"vm": "vm1", "rolled_back": True, "at_mono": T0 + 3}, {"vm": "vm9"}])
    mv = P.moves_of(rep, T0)
    assert [(m.number, m.label, m.at) for m in mv] == [
        (1, "vm1 hv1 → hv2", T0 + 1), (2, "vm1 hv2 → hv3", T0 + 2.5),
        (3, "vm1: prepared move rolled back", T0 + 3)]
    assert mv[0].dark_ms == pytest.approx(5.0) and mv[1].dark_ms == 0.0


def test_silences() -> None:
    times = [0.000, 0.001, 0.002, 0.015, 0.016, 0.030, 0.031]
    assert P.silences(times, 0.0, 0.031, 0.005) == [(0.002, 0.015), (0.016, 0.030)]
    assert P.silences(times, 0.017, 0.020, 0.005) == [(0.016, 0.030)]  # overlaps the view from outside
    assert P.silences(times, 0.0, 0.001, 0.005) == []
    assert P.silences([], 0.0, 1.0, 0.005) == []


# ---------------------------------------------------------------- the figure


def test_grid_rows_are_streams_columns_are_moves() -> None:
    moves = [move(1.0), move(2.5, frm="hv2", to="hv3")]
    streams = [summarize(n, "udp", "vm2", "vm1", RATE, *udp(4000), moves) for n in ("a", "b", "c")]
    axes = panels(P.figure(report(streams, moves), T0))
    assert set(axes) == {"overview"} | {f"zoom {s} {m}" for s in "abc" for m in (1, 2)}
    assert where(axes["zoom a 1"]) == (1, 0) and where(axes["zoom c 2"]) == (3, 1)
    assert axes["overview"].get_subplotspec().colspan == range(0, 2)  # the overview spans the columns


def test_many_moves_wrap_into_blocks_of_rows() -> None:
    moves = [move(0.5 * (k + 1), frm=f"hv{k + 1}", to=f"hv{k + 2}") for k in range(5)]
    streams = [summarize(n, "udp", "vm2", "vm1", RATE, *udp(4000), moves) for n in ("a", "b")]
    axes = panels(P.figure(report(streams, moves), T0))
    assert len(axes) == 1 + 2 * 5
    assert {where(axes[f"zoom a {m}"])[1] for m in range(1, 6)} == {0, 1, 2}  # MAX_COLS columns
    assert where(axes["zoom a 4"]) == (3, 0) and where(axes["zoom b 5"]) == (4, 1)  # second block of rows


def test_too_many_panels_are_left_out_and_said_so(monkeypatch) -> None:
    monkeypatch.setattr(P, "MAX_PANELS", 7)
    moves = [move(0.3 * (k + 1), frm=f"hv{k}", to=f"hv{k + 1}") for k in range(5)]
    streams = [summarize(f"s{i}", "udp", "vm2", "vm1", RATE, *udp(2000), moves) for i in range(3)]
    fig = P.figure(report(streams, moves), T0)
    assert sorted(k for k in panels(fig) if k.startswith("zoom")) == [f"zoom s{i} {m}" for i in range(3) for m in (1, 2)]
    assert "not shown, for size: moves 3–5" in fig.legends[0].get_title().get_text()
    many = [summarize(f"s{i}", "udp", "vm2", "vm1", RATE, *udp(2000), moves[:1]) for i in range(9)]
    fig = P.figure(report(many, moves[:1]), T0)
    assert len([k for k in panels(fig) if k.startswith("zoom")]) == 7
    assert "not shown, for size: streams 8–9" in fig.legends[0].get_title().get_text()


def test_zoom_window_is_the_x_limits() -> None:
    ax = panels(P.figure(report(), T0))["zoom l2 1"]
    assert ax.get_xlim() == pytest.approx((-P.WINDOW_MS, 5.0 + P.WINDOW_MS))
    ax = panels(P.figure(report(), T0, window_ms=40))["zoom l2 1"]
    assert ax.get_xlim() == pytest.approx((-40, 45))


def test_lost_packets_are_plotted_at_their_send_time() -> None:
    ax = panels(P.figure(report(), T0))["zoom l2 1"]
    [lost] = by_gid(ax, "lost")
    assert list(lost.get_ydata()) == list(GAP)
    at = MOVE["at_mono"]
    assert list(lost.get_xdata()) == pytest.approx([(T0 + s / RATE - at) * 1000 for s in GAP], abs=0.05)
    [received] = by_gid(ax, "received")
    ys = set(received.get_ydata())
    assert not ys & set(GAP) and {1900, 2000, 2011, 2100} <= ys  # every other seq in view
    assert "lost 10 (5 while dark, 5 beyond)" in ax.get_title()


def test_dark_window_is_shaded() -> None:
    ax = panels(P.figure(report(), T0))["zoom l2 1"]
    [dark] = by_gid(ax, "dark")
    assert (dark.get_x(), dark.get_width()) == pytest.approx((0.0, 5.0))
    assert (dark.get_y(), dark.get_height()) == (0, 1)  # the axes' full height


def test_phases_are_marked_where_the_record_puts_them() -> None:
    ax = panels(P.figure(report(), T0))["zoom l2 1"]
    xs = {a.get_gid().removeprefix("phase:"): a.get_xdata()[0] for a in ax.get_lines()
          if (a.get_gid() or "").startswith("phase:")}
    assert xs == pytest.approx({"prepare started": -40.0, "stopped": 0.0, "resumed": 5.0, "activated": 9.0,
                                "programmed": 15.0})
    labels = {t.get_text() for t in by_gid(ax, "phase-label")}
    assert labels == set(xs)


def test_a_record_without_phases_draws_only_what_it_has() -> None:
    evpn = move(1.9995, mode="evpn", prepared_ms=None, activated_mono=None, programmed_ms=None)
    ax = panels(P.figure(report(migrations=[evpn]), T0))["zoom l2 1"]
    gids = {a.get_gid() for a in ax.get_lines()} - {"received", "lost"}
    assert gids == {"phase:stopped", "phase:resumed", "phase:programmed"}


def test_a_phase_outside_the_window_is_noted_at_its_edge() -> None:
    slow = move(1.9995, prepared_ms=480.0)
    ax = panels(P.figure(report(migrations=[slow]), T0))["zoom l2 1"]
    assert "phase:prepare started" not in {a.get_gid() for a in ax.get_lines()}
    [note] = [t for t in by_gid(ax, "phase-label") if t.get_text().startswith("◂ prepare started")]
    assert note.get_text() == "◂ prepare started -480 ms"
    assert note.get_position()[0] == pytest.approx(-P.WINDOW_MS)


def test_phase_labels_do_not_overlap() -> None:
    crowded = move(1.9995, dark_ms=1.0, prepared_ms=1.0, activated_mono=T0 + 1.9995 + 0.0015, programmed_ms=0.5)
    fig = P.figure(report(migrations=[crowded]), T0)
    ax = panels(fig)["zoom l2 1"]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxes = [t.get_window_extent(renderer) for t in by_gid(ax, "phase-label")]
    assert len(boxes) == 5
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    axbox = ax.get_window_extent(renderer)
    assert all(axbox.x0 <= b.x0 and b.x1 <= axbox.x1 + 1 and b.y0 >= axbox.y0 for b in boxes)


def test_silence_bar_spans_the_gap_and_is_labelled() -> None:
    ax = panels(P.figure(report(), T0))["zoom l2 1"]
    [bar] = by_gid(ax, "silence")
    at = MOVE["at_mono"]
    start, end = T0 + 2000 / RATE + LAT, T0 + 2011 / RATE + LAT  # the arrivals around the gap
    assert bar.get_x() == pytest.approx((start - at) * 1000)
    assert bar.get_width() == pytest.approx((end - start) * 1000) == pytest.approx(11.0)
    [label] = by_gid(ax, "silence-label")
    assert label.get_text() == "silence 11.0 ms"


def test_tcp_shows_the_silence_and_no_lost_writes() -> None:
    at = MOVE["at_mono"]
    t = summarize("tcp", "tcp", "vm3", "vm1", 200.0, *tcp(800, 200.0, at, 0.012), [MOVE])
    ax = panels(P.figure(report([t]), T0))["zoom tcp 1"]
    [lost] = by_gid(ax, "lost")
    assert len(lost.get_xdata()) == 0
    [bar] = by_gid(ax, "silence")
    assert bar.get_x() < 0 < bar.get_x() + bar.get_width()
    assert "every write arrived, silence" in ax.get_title()


def test_a_denied_stream_plots_no_losses() -> None:
    blocked = summarize("blocked", "udp", "vm4", "vm1", RATE, *udp(4000, set(range(4000))), [MOVE], expect="denied")
    ax = panels(P.figure(report([blocked]), T0))["zoom blocked 1"]
    [lost] = by_gid(ax, "lost")
    assert len(lost.get_xdata()) == 0
    assert "expected denied: 0 received here" in ax.get_title()
    assert any("denied, as expected" in t.get_text() for t in ax.texts)


def test_a_stream_without_send_times_still_plots_arrivals() -> None:
    s = summarize("old", "udp", "vm2", "vm1", RATE, *udp(4000, set(GAP)), [MOVE])
    s.first = None
    ax = panels(P.figure(report([s]), T0))["zoom old 1"]
    assert len(by_gid(ax, "lost")[0].get_xdata()) == 0 and len(by_gid(ax, "received")[0].get_xdata()) > 100
    assert "no send times" in ax.get_title()


def test_overview_without_moves() -> None:
    fig = P.figure(report(migrations=[]), T0)
    assert set(panels(fig)) == {"overview"}
    assert any("no migrations" in t.get_text() for t in fig.axes[0].texts)


def test_no_streams() -> None:
    fig = P.figure(report([], [MOVE]), T0)
    assert set(panels(fig)) == {"overview"}
    assert any("no stream received" in t.get_text() for t in fig.axes[0].texts)


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_ms"):
        P.figure(report(), T0, window_ms=0)


def test_plot_writes_png(tmp_path) -> None:
    out = P.plot(report(), tmp_path / "r.png", T0)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_of_a_long_fast_stream_draws_its_lost_packets(tmp_path) -> None:
    # 60 s at 10 kHz: the drawing is decimated, the 150 lost packets of the first move are all drawn
    rate = 10_000.0
    moves = [move(20.0), move(40.0, frm="hv2", to="hv3")]
    big = summarize("big", "udp", "vm2", "vm1", rate, *udp(600_000, set(range(200_000, 200_150)), rate), moves)
    fig = P.figure(report([big], moves), T0)
    [lost] = by_gid(panels(fig)["zoom big 1"], "lost")
    assert sorted(int(y) for y in lost.get_ydata()) == list(range(200_000, 200_150))
    P.plot(report([big], moves), tmp_path / "big.png", T0)
    assert (tmp_path / "big.png").stat().st_size > 1000
