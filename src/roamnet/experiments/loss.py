"""Loss beyond a VM's own pause: which packets of a stream were lost *because of the network*.

Pure analysis of one UDP stream of ``roamnet.experiments.traffic`` (the receiver's ``records`` and the
sender's ``sent``/``first``/``last``) against the moves of the receiving VM. While a VM is
paused (between the moment it stops on the source, ``at_mono``, and the moment it runs on the
destination, ``resumed_mono``) it cannot receive anywhere: packets sent to it then are lost by
any network. Everything else a move loses is the network's (late or wrong forwarding state):
that is the figure make-before-break must bring to zero.

When was a packet sent?
    Every datagram carries its send time (the sender's ``time.monotonic()``; every namespace of the
    lab shares the clock) and the receiver records it beside the receive time (``sent_at``, parallel
    to ``records``). So a *received* packet's send time is exact. A lost packet's send time lies
    between its received neighbours' exact send times and is estimated by interpolating between them
    (below). With an older receiver's line (no ``sent_at``) the received packets' send times are
    estimated too, from their receive times, as follows; ``StreamLoss.send_times`` says which.

    A lost packet carried its send time but nobody saw it, so it must be estimated. The sender
    (``traffic._paced``) sends slot ``i`` at ``base + i / rate`` and never earlier; a slot may go
    out up to ``MAX_BURST / rate`` late (4 ms at 1 kHz, 0.4 ms at 10 kHz); when it falls further
    behind (the process was not scheduled), it *re-bases*: time slips, sequence numbers do not.
    The naive schedule ``first + seq / rate`` is therefore only a lower bound of the send time,
    and the error only grows (it is the sum of every slip so far: measured in the lab at tens of
    ms to seconds over a minute at 10 kHz on a busy 2-core machine; see ``StreamLoss.slip_ms``).
    Instead, a lost packet's send time is interpolated between the nearest packets around it whose
    send time is known: received packets (their carried send time; without one: receive time minus
    the stream's one-way latency, taken
    from the packets whose send time the sender reported — seq 0 at ``first``, seq ``sent - 1`` at
    ``last`` —, else the smallest ``recv - (first + seq / rate)``; tens of µs in a namespace lab)
    and the sender's exact ``first`` and ``last`` themselves. Between two such anchors
    ``a < s < b`` the estimate is linear; it is exact to within the sender's lateness
    (≤ ``MAX_BURST / rate``) plus latency jitter when the sender did not slip inside the gap.
    If it did slip there, the send time lies somewhere in ``[t_a + (s-a)/rate, t_b - (b-s)/rate]``;
    a packet whose classification differs between those two ends is counted as ``uncertain``.

Attribution:
    Move ``i`` owns the stretch of time from halfway between the previous move's resume and its
    own stop to halfway between its resume and the next move's stop (so no loss is counted twice;
    the first and last moves reach ``edge_s`` before/after, or to the stream's ends when
    ``edge_s`` is None). A lost packet whose estimated send time lies within
    ``[at - slack, resumed + slack]`` is lost *in the pause*; elsewhere in the move's stretch it is
    lost *beyond the pause*. The slack (default 1 ms) absorbs a packet in flight when the link
    flips and the estimate's error. Packets sent while the VM was paused are the pause's, whatever
    their sequence numbers say; what was lost beyond the pause is split by send time into
    ``lost_before_stop`` and ``lost_after_resume``, and ``beyond_ms`` lists each one's send time
    relative to the pause (negative: ms before the stop; positive: ms after the resume).
    With carried send times two more figures say what happened at the edges: ``received_in_pause``
    (packets sent inside the pause, slack excluded, that arrived all the same: the recorded pause is
    longer than the VM's real one, or a queue held them) and ``latency_before_stop_ms`` (the slowest
    one-way delay of the packets sent in the ``IN_FLIGHT_S`` before the stop that arrived: a packet lost
    that close before the stop may have been in flight when the VM stopped; ``lost_in_flight`` counts
    those). Both are reported beside the figures beyond the pause, never subtracted from them. What falls in no move's stretch is ``lost_outside``, over
    ``outside_s`` seconds of the stream: the data plane's own loss with nothing moving, which a
    reader needs beside the per-move figures to tell a move's loss from the background.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MoveWindow", "MoveLoss", "StreamLoss", "analyze_stream", "loss_beyond_pause",
           "send_time_estimates", "windows_from_migrations"]

IN_FLIGHT_S = 0.05  # `latency_before_stop_ms` looks at the packets sent this long before the stop
BEYOND_LISTED = 50  # `beyond_ms` lists at most this many packets per move


@dataclass(frozen=True)
class MoveWindow:
    """The receiving VM's pause in one move: it stopped at ``at`` and runs again at ``resumed``
    (monotonic seconds)."""

    at: float
    resumed: float

    def __post_init__(self) -> None:
        if not self.resumed >= self.at:
            raise ValueError(f"resumed ({self.resumed}) before at ({self.at})")


@dataclass
class MoveLoss:
    """One stream's loss around one move."""

    lost: int = 0  # lost packets in this move's stretch, pause included
    lost_in_pause: int = 0  # estimated send time within [at - slack, resumed + slack]
    lost_beyond_pause: int = 0  # the rest of `lost`
    lost_after_resume: int = 0  # of `lost_beyond_pause`, sent after `resumed + slack`
    lost_before_stop: int = 0  # of `lost_beyond_pause`, sent before `at - slack`
    lost_in_flight: int | None = None  # of `lost_before_stop`, sent at most `latency_before_stop_ms` before the
    #   stop: it may have been on its way when the VM stopped (None: no recorded send times)
    longest_gap_beyond_ms: float = 0.0  # longest run of consecutive lost seqs beyond the pause
    uncertain: int = 0  # lost packets the sender's slip could move across a boundary
    dark_ms: float = 0.0  # resumed - at
    simple: float = 0.0  # the reference formula: lost - dark × rate
    stretch: tuple[float, float] = (-math.inf, math.inf)  # the time this move owns
    beyond_ms: list[float] = field(default_factory=list)  # send time of each packet lost beyond the pause,
    #   ms from the stop (< 0, before it) or from the resume (> 0, after it); the first BEYOND_LISTED
    received_in_pause: int | None = None  # received, yet sent inside [at + slack, resumed - slack]
    #   (None: the receiver did not record send times)
    latency_before_stop_ms: float | None = None  # slowest one-way delay of the packets sent in the
    #   IN_FLIGHT_S before the stop that arrived (None: none, or no recorded send times)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stretch"] = [None if math.isinf(x) else round(x, 6) for x in self.stretch]
        d["beyond_ms"] = [round(x, 3) for x in self.beyond_ms]
        if self.latency_before_stop_ms is not None:
            d["latency_before_stop_ms"] = round(self.latency_before_stop_ms, 3)
        d["longest_gap_beyond_ms"] = round(self.longest_gap_beyond_ms, 3)
        d["dark_ms"] = round(self.dark_ms, 3)
        d["simple"] = round(self.simple, 1)
        return d


@dataclass
class StreamLoss:
    """A stream's loss: per move, plus what fell in no move's stretch."""

    sent: int
    received: int  # distinct seqs
    duplicates: int  # extra copies received
    reordered: int  # arrivals with a lower seq than an earlier arrival
    lost: int
    lost_outside: int  # lost packets in no move's stretch (stream start/end, with edge_s)
    latency_ms: float  # the base one-way latency subtracted from receive times
    slip_ms: float  # how far behind `first + seq / rate` the sender got (max over the stream)
    moves: list[MoveLoss] = field(default_factory=list)
    outside_s: float = 0.0  # how long the stream ran in no move's stretch (`lost_outside` happened there)
    send_times: str = "estimated"  # "carried": received packets' send times are the ones they carried

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "moves"}
        d["latency_ms"] = round(self.latency_ms, 3)
        d["slip_ms"] = round(self.slip_ms, 3)
        d["outside_s"] = round(self.outside_s, 6)
        d["moves"] = [m.to_json() for m in self.moves]
        return d


def windows_from_migrations(migrations: Iterable[dict[str, Any]]) -> list[MoveWindow]:
    """MoveWindows from lab migration records (``resumed_mono``, else ``at_mono + dark_ms``)."""
    out = []
    for m in migrations:
        at = float(m["at_mono"])
        resumed = m.get("resumed_mono")
        if resumed is None:
            resumed = at + float(m.get("dark_ms") or 0.0) / 1000
        out.append(MoveWindow(at, float(resumed)))
    return out


# ---------------------------------------------------------------- send-time estimates


def _first_arrivals(records: Iterable[Sequence[float]], sent: int, sent_at: Sequence[float] | None = None
                    ) -> tuple[dict[int, float], dict[int, float] | None, int, int]:
    """seq -> earliest receive time (seqs outside [0, sent) ignored); seq -> the send time it carried
    (None without `sent_at`); duplicates; reordered."""
    recs = list(records)
    if sent_at is not None and len(sent_at) != len(recs):
        raise ValueError(f"sent_at has {len(sent_at)} send times for {len(recs)} records: they must be parallel")
    seen: dict[int, float] = {}
    carried: dict[int, float] | None = None if sent_at is None else {}
    dups = reordered = 0
    high = -1
    for k, rec in enumerate(recs):
        s, t = int(rec[0]), float(rec[1])
        if not 0 <= s < sent:
            continue
        if carried is not None:
            carried.setdefault(s, float(sent_at[k]))  # every copy of a datagram carries the same time
        if s in seen:
            dups += 1
            if t < seen[s]:
                seen[s] = t
            continue
        seen[s] = t
        if s < high:
            reordered += 1
        high = max(high, s)
    return seen, carried, dups, reordered


def _anchors(seen: dict[int, float], sent: int, first: float, last: float | None, rate: float,
             carried: dict[int, float] | None = None) -> tuple[list[int], list[float], float, float]:
    """Sorted anchor seqs and their send times (exact where carried, else estimated); base latency;
    max slip (both in s)."""
    if carried is not None:  # exact send times: the latency and the slip are measured, not inferred
        delays = [seen[s] - carried[s] for s in seen]
        latency = max(0.0, min(delays, default=0.0))
        slip = max([0.0] + [u - (first + s / rate) for s, u in carried.items()])
        times = dict(carried)
    else:
        offsets = [t - (first + s / rate) for s, t in seen.items()]
        exact = [seen[0] - first] if 0 in seen else []  # packets whose send time the sender reported
        if sent > 1 and last is not None and sent - 1 in seen:
            exact.append(seen[sent - 1] - last)
        latency = max(0.0, min(exact or offsets or [0.0]))
        slip = max(0.0, max(offsets) - latency) if offsets else 0.0
        times = {s: t - latency for s, t in seen.items()}
    times[0] = first  # exact: the sender's own clock
    if sent > 1 and last is not None:
        times[sent - 1] = last
        slip = max(slip, last - (first + (sent - 1) / rate))
    elif sent > 1 and sent - 1 not in times:  # no `last`: extrapolate from the highest anchor
        top = max(times)
        times[sent - 1] = times[top] + (sent - 1 - top) / rate
    seqs = sorted(times)
    return seqs, [times[s] for s in seqs], latency, slip


def send_time_estimates(records: Iterable[Sequence[float]], sent: int, first: float | None,
                        rate: float, last: float | None = None, sent_at: Sequence[float] | None = None
                        ) -> list[tuple[int, float, float, float]]:
    """``(seq, estimate, earliest, latest)`` send times of every lost seq, in seq order.

    See the module docstring; ``earliest``/``latest`` bound the estimate when the sender may have
    slipped inside the gap (equal to it for seqs whose send time the sender reported). ``sent_at``:
    the send times the records carried (parallel to ``records``), when the receiver recorded them.
    """
    if sent <= 0:
        return []
    if first is None:
        raise ValueError("a stream with sent > 0 needs the sender's `first`")
    if rate <= 0:
        raise ValueError("rate must be > 0")
    seen, carried, _, _ = _first_arrivals(records, sent, sent_at)
    return _estimates(seen, sent, first, last, rate, carried)[0]


def _estimates(seen: dict[int, float], sent: int, first: float, last: float | None, rate: float,
               carried: dict[int, float] | None = None):
    seqs, times, latency, slip = _anchors(seen, sent, first, last, rate, carried)
    out: list[tuple[int, float, float, float]] = []
    if 0 not in seen:
        out.append((0, first, first, first))
    step = 1.0 / rate
    for (a, ta), (b, tb) in zip(zip(seqs, times), zip(seqs[1:], times[1:])):
        if b - a > 1:
            span = tb - ta
            per = span / (b - a) if span > 0 else step
            for s in range(a + 1, b):
                est = ta + (s - a) * per
                lo, hi = ta + (s - a) * step, tb - (b - s) * step
                lo, hi = min(lo, hi, est), max(lo, hi, est)
                out.append((s, est, lo, hi))
    if sent > 1 and sent - 1 not in seen:
        out.append((sent - 1, times[-1], times[-1], times[-1]))
    return out, latency, slip


# ---------------------------------------------------------------- per-move attribution


def outside_time(start: float, end: float, stretches: Sequence[tuple[float, float]]) -> float:
    """How much of [start, end] lies in none of `stretches` (disjoint, in time order). Pure."""
    covered = sum(max(0.0, min(hi, end) - max(lo, start)) for lo, hi in stretches)
    return max(0.0, end - start - covered)


def _stretches(windows: Sequence[MoveWindow], edge_s: float | None) -> list[tuple[float, float]]:
    out = []
    for i, w in enumerate(windows):
        lo = -math.inf if i == 0 else (windows[i - 1].resumed + w.at) / 2
        hi = math.inf if i == len(windows) - 1 else (w.resumed + windows[i + 1].at) / 2
        if edge_s is not None:
            if i == 0:
                lo = w.at - edge_s
            if i == len(windows) - 1:
                hi = w.resumed + edge_s
        out.append((lo, hi))
    return out


def analyze_stream(records: Iterable[Sequence[float]], sent: int, first: float | None, rate: float,
                   windows: Sequence[MoveWindow], slack_ms: float = 1.0, last: float | None = None,
                   edge_s: float | None = None, sent_at: Sequence[float] | None = None) -> StreamLoss:
    """Loss of one stream, attributed to the receiving VM's moves (``windows``, in time order).

    ``records``: the receiver's ``[[seq, recv_time], ...]`` in arrival order (duplicates and
    reordering allowed); ``sent_at``: the send time each record carried (parallel to ``records``;
    None for an older receiver's line: then estimated); ``sent``/``first``/``last``: the sender's
    final figures; ``rate``: its packets per second. See the module docstring for how send times and
    moves are matched.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if slack_ms < 0:
        raise ValueError("slack_ms must be >= 0")
    ws = list(windows)
    if any(b.at < a.resumed for a, b in zip(ws, ws[1:])):
        raise ValueError("move windows must be in time order and must not overlap")
    seen, carried, dups, reordered = _first_arrivals(records, sent, sent_at)
    if sent > 0 and first is None:
        raise ValueError("a stream with sent > 0 needs the sender's `first`")
    est, latency, slip = _estimates(seen, sent, first, last, rate, carried) if sent > 0 else ([], 0.0, 0.0)

    slack = slack_ms / 1000
    stretches = _stretches(ws, edge_s)
    bounds = [lo for lo, _ in stretches]
    moves = [MoveLoss(dark_ms=(w.resumed - w.at) * 1000, stretch=st) for w, st in zip(ws, stretches)]

    def classify(t: float) -> tuple[int, bool] | None:
        """(move index, in the pause?) or None when in no move's stretch."""
        i = bisect.bisect_right(bounds, t) - 1
        if i < 0 or t >= stretches[i][1]:
            return None
        w = ws[i]
        return i, w.at - slack <= t <= w.resumed + slack

    outside = 0
    run: tuple[int, int, float, int] | None = None  # (move, first seq, first time, last seq)
    run_last_t = 0.0

    def close_run() -> None:
        if run is not None:
            i, _, t0, _ = run
            ms = (run_last_t - t0 + 1 / rate) * 1000
            moves[i].longest_gap_beyond_ms = max(moves[i].longest_gap_beyond_ms, ms)

    if carried is not None:
        _edges(moves, ws, seen, carried, slack)
    for s, t, lo, hi in est:
        c = classify(t)
        if c is None:
            outside += 1
            close_run()
            run = None
            continue
        i, in_pause = c
        m = moves[i]
        m.lost += 1
        if classify(lo) != classify(hi):
            m.uncertain += 1
        if in_pause:
            m.lost_in_pause += 1
            close_run()
            run = None
            continue
        m.lost_beyond_pause += 1
        if t > ws[i].resumed + slack:
            m.lost_after_resume += 1
        else:
            m.lost_before_stop += 1
            if m.lost_in_flight is not None and (ws[i].at - t) * 1000 <= (m.latency_before_stop_ms or 0.0):
                m.lost_in_flight += 1
        if len(m.beyond_ms) < BEYOND_LISTED:
            m.beyond_ms.append((t - ws[i].resumed if t > ws[i].resumed else t - ws[i].at) * 1000)
        if run is not None and run[0] == i and run[3] == s - 1:
            run = (i, run[1], run[2], s)
        else:
            close_run()
            run = (i, s, t, s)
        run_last_t = t
    close_run()
    for m in moves:
        m.simple = m.lost - m.dark_ms / 1000 * rate
    span = 0.0
    if sent > 0 and first is not None:
        end = last if last is not None else first + (sent - 1) / rate
        span = outside_time(first, max(first, end), stretches)
    return StreamLoss(sent=sent, received=len(seen), duplicates=dups, reordered=reordered,
                      lost=len(est), lost_outside=outside, latency_ms=latency * 1000,
                      slip_ms=slip * 1000, moves=moves, outside_s=span,
                      send_times="carried" if carried is not None else "estimated")


def _edges(moves: list[MoveLoss], ws: Sequence[MoveWindow], seen: dict[int, float], carried: dict[int, float],
           slack: float) -> None:
    """With exact send times: per move, the packets sent inside the pause that arrived anyway, and the
    slowest delivery of those sent in the IN_FLIGHT_S before the stop (see the module docstring)."""
    ats = [w.at for w in ws]
    for m in moves:
        m.received_in_pause = m.lost_in_flight = 0
    for s, u in carried.items():
        k = bisect.bisect_right(ats, u)  # the first move that stops after u
        if k > 0 and ws[k - 1].at + slack < u < ws[k - 1].resumed - slack:
            moves[k - 1].received_in_pause += 1  # type: ignore[operator]
        if k < len(ws) and ws[k].at - IN_FLIGHT_S <= u:
            m, delay = moves[k], (seen[s] - u) * 1000
            if m.latency_before_stop_ms is None or delay > m.latency_before_stop_ms:
                m.latency_before_stop_ms = delay


def loss_beyond_pause(records: Iterable[Sequence[float]], sent: int, first: float | None, rate: float,
                      windows: Sequence[MoveWindow], slack_ms: float = 1.0, last: float | None = None,
                      edge_s: float | None = None, sent_at: Sequence[float] | None = None) -> list[MoveLoss]:
    """Per move: lost beyond / in the pause, longest gap beyond it, ``lost - dark × rate``.

    A shortcut for ``analyze_stream(...).moves``.
    """
    return analyze_stream(records, sent, first, rate, windows, slack_ms, last, edge_s, sent_at).moves
