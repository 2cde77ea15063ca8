"""Scenario report: per-stream loss / gap / survival / expectation from traffic endpoint output.

``summarize`` turns the final JSON lines of a sender and a receiver
(see ``roamnet.experiments.traffic``) into a ``StreamResult``; ``Report`` bundles streams,
migrations and metadata, says which streams did not do what they were expected to
(``Report.unmet``), and can be dumped as JSON or rendered as rich tables
(``roamnet.experiments.plot`` draws it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

from roamnet.intent.scenario import Expectation

__all__ = ["StreamResult", "Report", "summarize", "render_table"]

EXPECTATIONS: tuple[str, ...] = get_args(Expectation)

# migration keys with a dedicated column (or not shown)
_MIG_KNOWN = ("vm", "from", "to", "pause_ms", "at", "at_mono")
_MIG_COLUMNS = ("dark_ms", "mapped_ms", "converged_ms", "programmed_ms")  # shown in this order when present


@dataclass
class StreamResult:
    """Outcome of one traffic stream."""

    name: str
    proto: str
    src: str
    dst: str
    rate: float
    sent: int
    received: int
    lost: int
    max_gap_ms: float | None
    survived: bool | None
    records: list[tuple[int, float]] = field(default_factory=list, repr=False)
    expect: Expectation = "delivered"  # the scenario's `expect:`
    first: float | None = field(default=None, repr=False)  # the sender's first and last send times
    last: float | None = field(default=None, repr=False)  # (monotonic s), for send-time estimates
    sent_at: list[float] | None = field(default=None, repr=False)  # the send time each record carried
    #   (parallel to `records`; None from a receiver that did not record them)

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"stream {self.name}: unknown expectation {self.expect!r} "
                             f"(one of {', '.join(EXPECTATIONS)})")

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    @property
    def met(self) -> bool | None:
        """Whether the stream did what it was expected to: ``delivered`` — it survived (see
        ``summarize``); ``denied`` — nothing arrived. None when survival is unknown."""
        if self.expect == "denied":
            return self.received == 0
        return self.survived

    def to_json(self) -> dict[str, Any]:
        """JSON view (without ``records``)."""
        return {
            "name": self.name, "proto": self.proto, "from": self.src, "to": self.dst,
            "rate": self.rate, "sent": self.sent, "received": self.received,
            "lost": self.lost, "max_gap_ms": self.max_gap_ms, "survived": self.survived,
            "expect": self.expect, "met": self.met,
        }  # fmt: skip


def _max_gap_ms(
    arrivals: list[float], first: float | None, last: float | None, tail_missing: bool
) -> float | None:
    """Longest silence (ms) in the sending window ``[first, last]``; see ``summarize``."""
    if first is None:
        return None
    if not arrivals:
        return round(((last if last is not None else first) - first) * 1e3, 1)
    gap = max(arrivals[0] - first, 0.0)
    for a, b in zip(arrivals, arrivals[1:]):
        if b - a > gap:
            gap = b - a
    if tail_missing and last is not None:
        gap = max(gap, last - arrivals[-1])
    return round(gap * 1e3, 1)


def summarize(
    name: str,
    proto: str,
    src: str,
    dst: str,
    rate: float,
    send_out: dict[str, Any],
    recv_out: dict[str, Any],
    migrations: list[dict[str, Any]] | None = None,
    expect: Expectation = "delivered",
) -> StreamResult:
    """Summarize one stream from the sender's and receiver's final JSON lines.

    * ``received``: distinct sequence numbers received (duplicates count once);
      ``lost`` = ``sent - received``, never negative.
    * ``max_gap_ms``: longest interval between consecutive arrivals (first arrival of
      each seq, by receive time), also counting sender ``first`` → first arrival and,
      when the highest seqs are missing, last arrival → sender ``last``; 0.1 ms.
    * ``survived``: tcp — sender and receiver both report ``survived``; udp — at least
      one datagram sent after every migration step (``at_mono``) was received, judged
      by the schedule lower bound ``first + seq / rate`` of its send time (the sender
      never runs ahead of its schedule); with no migrations, ``received > 0``.
    * ``expect``: what the scenario expects of the stream (``StreamResult.met``).
    * ``sent_at``: the send times the records carried, when the receiver recorded them (parallel to
      ``records``; a line whose ``sent_at`` does not match its records is read as one without).
    """
    raw = recv_out.get("records") or []
    first_seen: dict[int, float] = {}
    for seq, t in raw:
        s = int(seq)
        if s not in first_seen or t < first_seen[s]:
            first_seen[s] = float(t)
    sent = int(send_out.get("sent") or 0)
    received = len(first_seen)
    first, last = send_out.get("first"), send_out.get("last")
    tail_missing = sent > 0 and (max(first_seen, default=-1) < sent - 1)
    gap = _max_gap_ms(sorted(first_seen.values()), first, last, tail_missing)

    survived: bool | None
    if proto == "tcp":
        survived = bool(send_out.get("survived")) and bool(recv_out.get("survived"))
    else:
        steps = [float(m["at_mono"]) for m in (migrations or []) if m.get("at_mono") is not None]
        if not first_seen:
            survived = False
        elif not steps:
            survived = True
        elif first is not None and rate > 0:
            survived = first + max(first_seen) / rate >= max(steps)
        else:  # no schedule info: fall back to receive time
            survived = max(first_seen.values()) > max(steps)
    records = [(int(a), float(b)) for a, b in raw]
    carried = recv_out.get("sent_at")
    sent_at = [float(u) for u in carried] if carried is not None and len(carried) == len(records) else None
    return StreamResult(
        name, proto, src, dst, rate, sent, received, max(0, sent - received), gap, survived,
        records, expect, first, last, sent_at,
    )  # fmt: skip


@dataclass
class Report:
    """A scenario's streams, migration steps and metadata."""

    streams: list[StreamResult]
    migrations: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    paths: list[dict[str, Any]] = field(default_factory=list)  # paths.PathChange.to_json() per stream and move
    counters: dict[str, Any] = field(default_factory=dict)  # what the NVEs' filters counted during the
    #   run: {"total": {kind: packets}, "by_nve": {nve: {kind: packets}}} (filters.TOTALS)
    resumed: list[dict[str, Any]] = field(default_factory=list)  # per cold start and stream of its VM:
    #   how long after the start the stream's first packet arrived (`resumed_after`)
    frozen: list[dict[str, Any]] = field(default_factory=list)  # bindings duplicate detection froze (at the end)

    def unmet(self) -> list[StreamResult]:
        """The streams that did not do what they were expected to (``met`` is False): a
        ``delivered`` stream that did not survive, a ``denied`` stream that received something.
        ``roamnet run`` exits 3 when there is one."""
        return [s for s in self.streams if s.met is False]

    def to_json(self) -> dict[str, Any]:
        return {
            "streams": [s.to_json() for s in self.streams],
            "migrations": [dict(m) for m in self.migrations],
            "paths": [dict(p) for p in self.paths],
            "counters": dict(self.counters),
            "resumed": [dict(r) for r in self.resumed],
            "frozen": [dict(f) for f in self.frozen],
            "meta": dict(self.meta),
        }


def resumed_after(streams: list[StreamResult], migrations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every cold move (a VM stopped, then started elsewhere) and every stream to or from its VM:
    when the stream's first packet after the start arrived, in ms after the start (None: none did).
    Pure: receive times and the start are the same monotonic clock."""
    out = []
    for m in migrations:
        if m.get("mode") != "cold" or m.get("resumed_mono") is None:
            continue
        start = float(m["resumed_mono"])
        for s in streams:
            if m["vm"] not in (s.src, s.dst):
                continue
            after = [t for _, t in s.records if t >= start]
            out.append({"vm": m["vm"], "to": m["to"], "stream": s.name,
                        "resumed_ms": round((min(after) - start) * 1000, 1) if after else None})
    return out


def _mig_at(m: dict[str, Any], t0: float | None) -> float | None:
    """Seconds since ``t0`` of a migration step: ``at`` if given, else ``at_mono - t0``."""
    if m.get("at") is not None:
        return float(m["at"])
    if m.get("at_mono") is not None and t0 is not None:
        return float(m["at_mono"]) - t0
    return None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


def render_table(report: Report, console: Any) -> None:
    """Print a streams table and a migrations table on a ``rich.console.Console``."""
    from rich.table import Table

    st = Table(title="streams")
    for col in ("name", "proto", "from → to", "rate", "sent", "received", "lost", "loss %",
                "max gap ms", "survived", "expect", "met"):  # fmt: skip
        st.add_column(col, justify="left" if col in ("name", "proto", "from → to", "expect") else "right")
    colour = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}
    for s in report.streams:
        surv = colour[s.survived] if s.expect == "delivered" else _fmt(s.survived)  # not the point then
        st.add_row(
            s.name, s.proto, f"{s.src} → {s.dst}", f"{s.rate:g}", str(s.sent), str(s.received),
            str(s.lost), f"{s.loss_pct:.2f}", _fmt(s.max_gap_ms), surv, s.expect, colour[s.met],
        )  # fmt: skip
    console.print(st)
    if report.counters.get("total"):
        render_counters(report.counters, console)
    for f in report.frozen:
        console.print(f"[red]duplicate MAC[/] {f['mac']} ({f['iface']}, VNI {f['vni']}): frozen on {f['nve']} "
                      f"after {f['moves']} moves; `roamnet lab unfreeze` thaws it")

    if not report.migrations:
        return
    extra: list[str] = []
    for m in report.migrations:
        for k, v in m.items():
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            if k not in _MIG_KNOWN and numeric and k not in extra and not k.endswith("_mono"):
                extra.append(k)
    extra = [k for k in _MIG_COLUMNS if k in extra] + [k for k in extra if k not in _MIG_COLUMNS]
    mt = Table(title="migrations")
    for col in ("vm", "from", "to", "pause ms", "at s", *extra):
        mt.add_column(col, justify="left" if col in ("vm", "from", "to") else "right")
    t0 = report.meta.get("t0")
    for m in report.migrations:
        at = _mig_at(m, t0)
        mt.add_row(
            str(m.get("vm", "")), str(m.get("from", "")), str(m.get("to", "")),
            _fmt(m.get("pause_ms")), "-" if at is None else f"{at:.3f}",
            *(_fmt(m.get(k)) for k in extra),
        )  # fmt: skip
    console.print(mt)
    if report.resumed:
        rt = Table(title="cold moves: when each stream came back (ms after the VM started)")
        for col in ("vm", "started on", "stream", "first packet ms"):
            rt.add_column(col, justify="left" if col != "first packet ms" else "right")
        for r in report.resumed:
            rt.add_row(r["vm"], r["to"], r["stream"], _fmt(r["resumed_ms"]) if r["resumed_ms"] is not None
                       else "[red]never[/]")
        console.print(rt)
    if report.paths:
        render_paths(report.paths, console)


COUNTER_LABELS = {
    "arp-request": "ARP requests from VMs", "arp-to-vxlan": "ARP frames to VXLAN",
    "arp-from-vxlan": "ARP frames from VXLAN", "arp-unknown-dropped": "ARP requests for unknown IPs dropped",
    "spoof-mac": "spoofed source MAC dropped", "spoof-ip": "spoofed source IP dropped",
    "spoof-arp": "forged ARP dropped", "not-ipv4": "non-IPv4 dropped", "policy-deny": "denied by policy",
    "vxlan-foreign": "VXLAN from non-VTEPs dropped",
    "announce-limited": "announcements over a port's budget dropped",
    "arp-limited": "ARP requests over a port's budget dropped",
    "bum-limited": "broadcast/multicast over a port's budget dropped",
    "rarp-local": "RARPs kept off VXLAN",
}


def render_counters(counted: dict[str, Any], console: Any) -> None:
    """ARP and filter counters of the run, in total and per NVE."""
    from rich.table import Table

    nves = sorted(counted.get("by_nve", {}))
    ct = Table(title="filters and ARP (packets during the run)")
    for col in ("counter", "total", *nves):
        ct.add_column(col, justify="left" if col == "counter" else "right")
    for kind, total in counted["total"].items():
        ct.add_row(COUNTER_LABELS.get(kind, kind), str(total), *(str(counted["by_nve"][n].get(kind, 0)) for n in nves))
    console.print(ct)


def render_paths(paths: list[dict[str, Any]], console: Any) -> None:
    """Which border router each WAN stream entered and left through, before and after each move."""
    from rich.table import Table

    pt = Table(title="paths through the border routers (WAN streams)")
    for col in ("stream", "vm", "move", "in before", "out before", "in after", "out after",
                "inbound switch ms", "outbound switch ms"):  # fmt: skip
        pt.add_column(col, justify="right" if col.endswith("ms") or col == "move" else "left")
    for p in paths:
        def mark(border: Any) -> str:
            if border is None:
                return "-"
            return f"[green]{border}[/]" if border == p.get("expected") else f"[yellow]{border}[/]"

        pt.add_row(str(p["stream"]), str(p["vm"]), str(p["move"]), mark(p["in_before"]), mark(p["out_before"]),
                   mark(p["in_after"]), mark(p["out_after"]), _fmt(p["inbound_switch_ms"]),
                   _fmt(p["outbound_switch_ms"]))
    console.print(pt)
