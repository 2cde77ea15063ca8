"""Plot a scenario report: every migration zoomed in, per stream, under an overview of the run.

The figure (``figure``; ``plot`` saves it as a PNG) has

* an overview of the whole run: per stream, the longest silence (time between two arrivals) in
  each ``OVERVIEW_BIN_S`` bin, on a log scale, with the moves numbered;
* a grid of zoomed panels, rows = streams, columns = moves (at most ``MAX_COLS`` columns; more
  moves wrap into further blocks of rows), each ``window_ms`` before the VM stopped to
  ``window_ms`` after it resumed, x in ms since it stopped. A panel shows the received packets
  (sequence number at arrival time), the lost ones (never received; red crosses at their
  estimated send time, ``loss.send_time_estimates``), the dark window (stopped → resumed, grey),
  the move's phases as labelled vertical lines (those its record has: prepare started, stopped,
  resumed, activated, every NVE programmed; one outside the window is named at its edge), and
  the silences (no arrival for at least ``max(2.5 slots, 5 ms)``, and the longest one in view,
  labelled with its length) as red bars along the bottom. For TCP nothing is lost, only late: the
  silences are the point.

Only drawing is decimated (``MAX_PANEL_POINTS``); counts and silences use every record. A bare
``matplotlib.figure.Figure`` on an Agg canvas: no pyplot, no display.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roamnet.experiments.loss import MoveWindow, analyze_stream, send_time_estimates
from roamnet.experiments.report import Report, StreamResult

__all__ = ["Move", "figure", "moves_of", "phases", "plot", "silences"]

WINDOW_MS = 100.0  # a panel shows this long before the VM stops and after it resumes
MAX_COLS = 3  # moves side by side; more wrap into further blocks of rows
MAX_PANELS = 48  # later moves (then streams) beyond this are left out, and the figure says so
MAX_PANEL_POINTS = 3000  # per panel and kind of marker: drawing only
OVERVIEW_BIN_S = 0.02
DPI = 100  # the labels are placed for it: drawing and saving use the same
SILENCE_SLOTS, SILENCE_MIN_S = 2.5, 0.005  # a silence worth a bar: this many send slots, and this long
#   (a busy 2-core machine makes 2-5 ms silences at 1 kHz all the time: those would be noise)

RECEIVED, LOST, DENIED, DARK, SILENCE = "#1f5fa8", "#d62728", "#8c8c8c", "#b0b0b0", "#d62728"
PHASE_STYLE = {  # phase -> (colour, line style)
    "prepare started": ("#9467bd", ":"),
    "stopped": ("#303030", "-"),
    "resumed": ("#303030", "--"),
    "activated": ("#2ca02c", "-."),
    "programmed": ("#e67e00", "-"),
}
PHASE_HELP = {
    "prepare started": "prepare started (make-before-break)",
    "stopped": "VM stopped on the source",
    "resumed": "VM resumed on the destination",
    "activated": "move activated in the mapping",
    "programmed": "every NVE programmed",
}


# ---------------------------------------------------------------- what to draw (pure)


@dataclass(frozen=True)
class Move:
    """One migration record, as the panels need it (monotonic seconds)."""

    number: int  # 1-based, in record order: "move 1" in the overview and the panels
    vm: str
    label: str  # "vm1 hv1 → hv2"
    at: float  # the VM stopped
    resumed: float  # ... and ran again (== at when the record has no dark window)
    marks: tuple[tuple[str, float], ...] = field(default=())  # (phase, time), see `phases`

    @property
    def dark_ms(self) -> float:
        return (self.resumed - self.at) * 1000


def phases(m: dict[str, Any], at: float) -> list[tuple[str, float]]:
    """The phases a migration record has, as (name, monotonic s), in time order; ``at`` is when the
    VM stopped. Keys a record lacks (other control planes, failed moves) give no mark:

    * prepare started — ``at - prepared_ms`` (preparing ran until the VM stopped);
    * stopped — ``at``; resumed — ``resumed_mono`` (else ``at + dark_ms``);
    * activated — ``activated_mono``;
    * programmed — ``activated_mono + programmed_ms``, else ``resumed + converged_ms``.
    """
    out = [("stopped", at)]
    if m.get("prepared_ms") is not None:
        out.append(("prepare started", at - float(m["prepared_ms"]) / 1000))
    resumed = _resumed(m, at)
    if resumed is not None:
        out.append(("resumed", resumed))
    activated = m.get("activated_mono")
    if activated is not None:
        out.append(("activated", float(activated)))
    if activated is not None and m.get("programmed_ms") is not None:
        out.append(("programmed", float(activated) + float(m["programmed_ms"]) / 1000))
    elif resumed is not None and m.get("converged_ms") is not None:
        out.append(("programmed", resumed + float(m["converged_ms"]) / 1000))
    return sorted(out, key=lambda p: p[1])


def _resumed(m: dict[str, Any], at: float) -> float | None:
    if m.get("resumed_mono") is not None:
        return float(m["resumed_mono"])
    if m.get("dark_ms") is not None:
        return at + float(m["dark_ms"]) / 1000
    return None


def moves_of(report: Report, t0: float | None) -> list[Move]:
    """The report's migrations that have a time (``at_mono``, else ``t0 + at``), numbered in order."""
    out: list[Move] = []
    for m in report.migrations:
        if m.get("at_mono") is not None:
            at = float(m["at_mono"])
        elif m.get("at") is not None and t0 is not None:
            at = t0 + float(m["at"])
        else:
            continue
        vm = str(m.get("vm", "?"))
        if m.get("rolled_back"):
            label = f"{vm}: prepared move rolled back"
        else:
            label = f"{vm} {m.get('from', '?')} → {m.get('to', '?')}"
        resumed = _resumed(m, at)
        out.append(Move(len(out) + 1, vm, label, at, resumed if resumed is not None else at,
                        tuple(phases(m, at))))
    return out


def silences(times: list[float], lo: float, hi: float, min_s: float) -> list[tuple[float, float]]:
    """(start, end) of every interval of at least ``min_s`` between consecutive arrivals (``times``
    sorted) that overlaps ``[lo, hi]``."""
    i = max(0, bisect.bisect_left(times, lo) - 1)
    j = min(len(times), bisect.bisect_right(times, hi) + 1)
    return [(a, b) for a, b in zip(times[i:j], times[i + 1:j]) if b - a >= min_s and b >= lo and a <= hi]


@dataclass
class _StreamData:
    """One stream's records arranged for drawing: arrivals and lost packets by time."""

    result: StreamResult
    arrivals: list[tuple[float, int]]  # (receive time, seq), sorted
    times: list[float]  # the receive times alone
    lost: list[tuple[float, int]]  # (estimated send time, seq), sorted
    placed: bool  # were lost packets placed (needs the sender's `first`)

    @classmethod
    def of(cls, s: StreamResult) -> _StreamData:
        arrivals = sorted((t, q) for q, t in s.records)
        placed = s.first is not None and s.rate > 0
        lost = sorted((est, q) for q, est, _, _ in send_time_estimates(s.records, s.sent, s.first, s.rate, s.last,
                                                                               s.sent_at)) \
            if placed else []
        return cls(s, arrivals, [t for t, _ in arrivals], lost, placed)

    @staticmethod
    def between(which: list[tuple[float, int]], lo: float, hi: float) -> list[tuple[float, int]]:
        return which[bisect.bisect_left(which, (lo, -1)):bisect.bisect_right(which, (hi, math.inf))]


def _layout(n_streams: int, n_moves: int) -> tuple[int, int, int, str]:
    """(streams shown, moves shown, columns, what was left out)."""
    streams = min(n_streams, MAX_PANELS)
    moves = min(n_moves, max(1, MAX_PANELS // max(1, streams)))
    left = []
    if moves < n_moves:
        left.append(f"moves {moves + 1}–{n_moves}")
    if streams < n_streams:
        left.append(f"streams {streams + 1}–{n_streams}")
    return streams, moves, min(moves, MAX_COLS), " and ".join(left)


# ---------------------------------------------------------------- drawing


def plot(report: Report, path: str | Path, t0: float, window_ms: float = WINDOW_MS) -> Path:
    """Draw ``report`` (``figure``) and save it as a PNG at ``path``."""
    out = Path(path)
    figure(report, t0, window_ms).savefig(out, format="png", dpi=DPI)
    return out


def figure(report: Report, t0: float, window_ms: float = WINDOW_MS) -> Any:
    """The report's figure (a ``matplotlib.figure.Figure`` with an Agg canvas); see the module doc.

    Axes are labelled for lookup: ``overview``, and ``zoom <stream> <move number>``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if window_ms <= 0:
        raise ValueError("window_ms must be > 0")
    moves = moves_of(report, t0)
    n_streams, n_moves, cols, left_out = _layout(len(report.streams), len(moves))
    data = [_StreamData.of(s) for s in report.streams[:n_streams]]
    moves = moves[:n_moves]
    blocks = math.ceil(n_moves / cols) if n_moves else 0
    rows = blocks * n_streams
    overview_h, panel_h = 2.1, 2.75
    fig = Figure(figsize=(max(8.5, 5.6 * max(cols, 1)), 1.1 + overview_h + panel_h * rows), layout="constrained",
                 dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + rows, max(cols, 1), height_ratios=[overview_h] + [panel_h] * rows)
    _overview(fig.add_subplot(grid[0, :]), data, moves, t0, report)

    panels = []
    for k, mv in enumerate(moves):
        block, col = divmod(k, cols)
        for i, d in enumerate(data):
            ax = fig.add_subplot(grid[1 + block * n_streams + i, col])
            panels.append(ax)
            _zoom(ax, d, mv, window_ms / 1000, last_row=i == n_streams - 1, first_col=col == 0)

    title = f"lab {report.meta.get('lab', '?')}: {len(report.streams)} streams, {len(moves)} moves"
    if moves:
        title += f" — each move zoomed in, {window_ms:g} ms before the VM stopped to {window_ms:g} ms after it resumed"
    if left_out:
        title += f"\n(not shown, for size: {left_out}; see `-f json`)"
    _legend(fig, moves, title)
    _place_labels(fig, panels)
    return fig


def _overview(ax: Any, data: list[_StreamData], moves: list[Move], t0: float, report: Report) -> None:
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    ax.set_label("overview")
    ax.set_title("whole run: longest silence between two arrivals, per stream and "
                 f"{OVERVIEW_BIN_S * 1000:g} ms", fontsize=9)
    drawn = False
    for d in data:
        if len(d.times) < 2:
            continue
        times = np.asarray(d.times)
        bins = np.floor((times[1:] - t0) / OVERVIEW_BIN_S).astype(np.int64)  # a silence counts where it ends
        first = int(bins.min())
        worst = np.full(int(bins.max()) - first + 1, np.nan)
        np.fmax.at(worst, bins - first, np.diff(times) * 1000)
        xs = (np.arange(len(worst)) + first + 0.5) * OVERVIEW_BIN_S
        ax.plot(xs, np.maximum(worst, 0.01), linewidth=0.9, label=d.result.name)  # a gap in the line: no arrival
        drawn = True
    for mv in moves:
        x = mv.at - t0
        ax.axvline(x, color=PHASE_STYLE["stopped"][0], linewidth=0.8, linestyle=":")
        ax.annotate(str(mv.number), (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", va="top", fontsize=8, fontweight="bold")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("s since the streams started", fontsize=8)
    ax.set_ylabel("silence ms", fontsize=8)
    ax.tick_params(labelsize=7)
    end = max([float(report.meta.get("duration") or 0.0)] + [mv.resumed - t0 for mv in moves]
              + [d.times[-1] - t0 for d in data if d.times])
    ax.set_xlim(0, end * 1.02 + 0.1)  # every move inside: its number must not stretch the layout
    if drawn:
        ax.legend(fontsize=7, loc="upper right", ncols=min(6, len(data)), framealpha=0.8)
    else:
        ax.text(0.5, 0.5, "no stream received two packets", ha="center", va="center", transform=ax.transAxes)
    if not moves:
        ax.text(0.01, 0.9, "no migrations: nothing to zoom in on", transform=ax.transAxes, fontsize=8, va="top")


def _decimate(pts: list[tuple[float, int]]) -> list[tuple[float, int]]:
    return pts[:: max(1, math.ceil(len(pts) / MAX_PANEL_POINTS))]


def _zoom(ax: Any, d: _StreamData, mv: Move, window_s: float, last_row: bool, first_col: bool) -> None:
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import ScalarFormatter

    s = d.result
    ax.set_label(f"zoom {s.name} {mv.number}")
    lo, hi = mv.at - window_s, mv.resumed + window_s

    def ms(t: float) -> float:
        return (t - mv.at) * 1000

    denied = s.expect == "denied"
    got = d.between(d.arrivals, lo, hi)
    lost = [] if denied else d.between(d.lost, lo, hi)  # denied: not receiving is the point
    dg, dl = _decimate(got), _decimate(lost)
    ax.plot([ms(t) for t, _ in dg], [q for _, q in dg], linestyle="none", marker="o", markersize=1.8,
            color=LOST if denied else RECEIVED, gid="received", rasterized=len(dg) > 500)
    ax.plot([ms(t) for t, _ in dl], [q for _, q in dl], linestyle="none", marker="x", markersize=6,
            markeredgewidth=1.5, color=LOST, gid="lost", zorder=3, rasterized=len(dl) > 500)
    if mv.resumed > mv.at:
        ax.add_patch(Rectangle((0, 0), mv.dark_ms, 1, transform=ax.get_xaxis_transform(), color=DARK,
                               alpha=0.45, linewidth=0, gid="dark", zorder=0))

    seqs = [q for _, q in got] + [q for _, q in lost]
    if seqs:
        y0, y1 = min(seqs), max(seqs)
        span = max(y1 - y0, 10)
        ax.set_ylim(y0 - 0.22 * span, y1 + 0.5 * span)  # room below for silences, above for phase labels
    ax.set_xlim(ms(lo), ms(hi))

    longest = _silences(ax, d, lo, hi, ms)
    for name, t in mv.marks:
        colour, style = PHASE_STYLE[name]
        if lo <= t <= hi:
            ax.axvline(ms(t), color=colour, linestyle=style, linewidth=1.3, gid=f"phase:{name}")
            ax.text(ms(t), 0.97, name, color=colour, fontsize=7, va="top", ha="left", gid="phase-label",
                    transform=ax.get_xaxis_transform(), bbox=_LABEL_BOX)
        else:  # off the zoom: say where, at the edge
            before = t < lo
            ax.text(ms(lo) if before else ms(hi), 0.97,
                    f"{'◂ ' if before else ''}{name} {ms(t):+.0f} ms{'' if before else ' ▸'}",
                    color=colour, fontsize=7, va="top", ha="left" if before else "right", gid="phase-label",
                    transform=ax.get_xaxis_transform(), bbox=_LABEL_BOX)

    if denied:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "denied, as expected: nothing received" if not got else
                f"expected denied, but {len(got)} received here", ha="center", va="center",
                transform=ax.transAxes, fontsize=8.5, color=DENIED if not got else LOST, bbox=_LABEL_BOX)
    elif not got and not lost:
        ax.text(0.5, 0.5, "nothing sent" if s.sent == 0 else "no packet sent or received in this window",
                ha="center", va="center", transform=ax.transAxes, fontsize=8.5, color=DENIED)

    dark = f", dark {mv.dark_ms:.1f} ms" if mv.resumed > mv.at else ""
    ax.set_title(f"{s.name} ({s.proto} {s.src} → {s.dst}) · move {mv.number}: {mv.label}\n"
                 f"{_what_was_lost(d, mv, window_s, len(got), len(lost), longest)}{dark}", fontsize=8.5)
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.tick_params(labelsize=7)
    ax.grid(True, axis="x", linewidth=0.4, alpha=0.5)
    if first_col:
        ax.set_ylabel("seq", fontsize=8)
    if last_row:
        ax.set_xlabel(f"ms since {mv.vm} stopped", fontsize=8)


_LABEL_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.75, "linewidth": 0}


def _silences(ax: Any, d: _StreamData, lo: float, hi: float, ms: Callable[[float], float]) -> float | None:
    """Red bars along the bottom for the silences in view: those of at least ``max(SILENCE_SLOTS
    slots, SILENCE_MIN_S)``, and the longest one if it is longer than 1.5 slots (labelled); its ms."""
    from matplotlib.patches import Rectangle

    rate = d.result.rate
    if rate <= 0:
        return None
    found = silences(d.times, lo, hi, 1.5 / rate)
    if not found:
        return None
    longest = max(found, key=lambda g: g[1] - g[0])
    worth = max(SILENCE_SLOTS / rate, SILENCE_MIN_S)
    for a, b in found:
        if b - a >= worth or (a, b) == longest:
            ax.add_patch(Rectangle((ms(a), 0.02), ms(b) - ms(a), 0.06, transform=ax.get_xaxis_transform(),
                                   color=SILENCE, alpha=0.8, linewidth=0, gid="silence"))
    a, b = longest  # labelled on top of its bar, from where it starts in view
    ax.text(ms(max(a, lo)), 0.09, f"silence {(b - a) * 1000:.1f} ms", transform=ax.get_xaxis_transform(),
            fontsize=7, color=SILENCE, va="bottom", ha="left", gid="silence-label", bbox=_LABEL_BOX)
    return (b - a) * 1000


def _what_was_lost(d: _StreamData, mv: Move, window_s: float, got: int, lost: int, longest: float | None) -> str:
    """The panel's summary: what was lost in view (UDP), what never arrived (TCP), the longest silence."""
    s = d.result
    quiet = "" if longest is None else f", silence {longest:.1f} ms"
    if s.expect == "denied":
        return f"expected denied: {got} received here"
    if not d.placed:
        return f"{s.lost} lost in the whole run (no send times to place them){quiet}"
    if s.proto == "tcp":  # a write is late, not lost, unless the connection broke
        return (f"{lost} writes never arrived" if lost else "every write arrived") + quiet
    if not lost or mv.vm not in (s.src, s.dst):
        return f"lost {lost}{quiet}"
    # the moving VM is an end of the stream: its own pause explains part of the loss
    [m] = analyze_stream(s.records, s.sent, s.first, s.rate, [MoveWindow(mv.at, mv.resumed)], last=s.last,
                         edge_s=window_s, sent_at=s.sent_at).moves
    return f"lost {m.lost} ({m.lost_in_pause} while dark, {m.lost_beyond_pause} beyond){quiet}"


def _legend(fig: Any, moves: list[Move], title: str) -> None:
    """The figure's title, and (with moves) the key to the panels under it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not moves:
        fig.suptitle(title, fontsize=11)
        return
    handles = [
        Line2D([], [], linestyle="none", marker="o", markersize=4, color=RECEIVED, label="received (at arrival)"),
        Line2D([], [], linestyle="none", marker="x", markersize=6, markeredgewidth=1.3, color=LOST,
               label="lost (at its estimated send time)"),
        Patch(color=DARK, alpha=0.45, label="VM dark (stopped → resumed)"),
        Patch(color=SILENCE, alpha=0.8, label="silence: no arrival"),
    ]
    seen = {name for mv in moves for name, _ in mv.marks}
    for name, (colour, style) in PHASE_STYLE.items():
        if name in seen:
            handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=1.3, label=PHASE_HELP[name]))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5), fontsize=8,
               frameon=False, title=title, title_fontproperties={"size": 11})


def _place_labels(fig: Any, panels: list[Any]) -> None:
    """Stack each panel's phase labels so that none overlaps another: a label goes down one line
    from the top while it would overlap one already placed; one that would leave the panel on the
    right is drawn left of its line."""
    if not panels:
        return
    fig.draw_without_rendering()  # the constrained layout fixes where every axes is
    renderer = fig.canvas.get_renderer()
    for ax in panels:
        box = ax.get_window_extent(renderer)
        for t in ax.texts:  # a label that would leave the panel on the right goes left of its line
            if t.get_gid() in ("phase-label", "silence-label") and t.get_ha() == "left" \
                    and t.get_window_extent(renderer).x1 > box.x1:
                t.set_ha("right")
        labels = sorted((t for t in ax.texts if t.get_gid() == "phase-label"),
                        key=lambda t: t.get_window_extent(renderer).x0)
        ends: list[float] = []  # per line: right end (px) of the last label on it
        for t in labels:
            ext = t.get_window_extent(renderer)
            line = next((i for i, end in enumerate(ends) if ext.x0 > end + 3), len(ends))
            if line == len(ends):
                ends.append(ext.x1)
            ends[line] = ext.x1
            x, _ = t.get_position()
            t.set_position((x, 0.97 - line * (ext.height + 2) / box.height))
