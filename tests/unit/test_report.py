"""Unit tests for roamnet.experiments.report on synthetic endpoint output."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from roamnet.experiments.report import Report, StreamResult, render_table, summarize

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


def summ(send, recv, proto="udp", rate=1000.0, migrations=None, expect="delivered") -> StreamResult:
    return summarize("s1", proto, "vm1", "vm2", rate, send, recv, migrations=migrations, expect=expect)


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
    assert set(d) == {"streams", "migrations", "paths", "counters", "resumed", "frozen", "meta"}
    assert set(d["streams"][0]) == {"name", "proto", "from", "to", "rate", "sent", "received",
                                    "lost", "max_gap_ms", "survived", "expect", "met"}  # fmt: skip
    assert (d["streams"][0]["expect"], d["streams"][0]["met"]) == ("delivered", True)
    assert d["streams"][0]["from"] == "vm1" and d["streams"][0]["lost"] == 60
    assert d["migrations"][0]["to"] == "hv3"
    assert d["meta"]["scenario"] == "unit"


def test_render_table() -> None:
    console = Console(record=True, width=200)
    render_table(make_report(), console)
    text = console.export_text()
    assert "s1" in text and "tcp-1" in text
    assert "hv3" in text and "converged_ms" in text
    assert "expect" in text and "met" in text and "delivered" in text


# ---------------------------------------------------------------- expectations


def test_delivered_is_met_when_the_stream_survived() -> None:
    send, recv = stream(1000, drop=set(range(600, 1000)))  # stream dies at 0.6 s
    late = [{"vm": "vm1", "at_mono": T0 + 0.7}]
    assert summ(send, recv).met is True
    broken = summ(send, recv, migrations=late)
    assert (broken.expect, broken.survived, broken.met) == ("delivered", False, False)
    assert summ(*stream(100), proto="tcp").met is False  # the endpoints did not report survival


def test_denied_is_met_only_when_nothing_arrived() -> None:
    nothing = summ(*stream(100, drop=set(range(100))), expect="denied")
    assert (nothing.survived, nothing.met) == (False, True)
    one = summ(*stream(100, drop=set(range(1, 100))), expect="denied")
    assert (one.received, one.met) == (1, False)
    tcp_refused = summ({"sent": 0, "first": None, "survived": False}, {"records": [], "survived": False},
                       proto="tcp", expect="denied")
    assert tcp_refused.met is True
    assert tcp_refused.to_json()["expect"] == "denied" and tcp_refused.to_json()["met"] is True


def test_unknown_expectation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown expectation 'blocked'"):
        summ(*stream(10), expect="blocked")


def test_unmet_lists_only_failed_expectations() -> None:
    delivered = summ(*stream(100))
    denied_ok = summ(*stream(100, drop=set(range(100))), expect="denied")
    denied_leak = summ(*stream(100, drop=set(range(50))), expect="denied")
    broken = summ(*stream(100, drop=set(range(100))))  # expected delivered, nothing arrived
    unknown = StreamResult("u", "tcp", "a", "b", 1.0, 0, 0, 0, None, None)  # survival unknown: not a failure
    assert Report([delivered, denied_ok, unknown]).unmet() == []
    assert Report([delivered, denied_ok, denied_leak, broken, unknown]).unmet() == [denied_leak, broken]


def test_table_says_whether_expectations_held() -> None:
    console = Console(record=True, width=200, file=io.StringIO())
    denied_ok = summarize("blocked", "udp", "vm4", "vm1", 1000.0, *stream(100, drop=set(range(100))), expect="denied")
    render_table(Report([denied_ok]), console)
    row = next(line for line in console.export_text().splitlines() if "blocked" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]][-3:] == ["no", "denied", "yes"]  # survived, expect, met


def test_counter_delta_per_nve_and_total() -> None:
    from roamnet.experiments.runner import counter_delta

    before = {"hv1": {"arp-request": 5, "arp-to-vxlan": 1}, "hv2": {"arp-request": 0, "arp-to-vxlan": 0}}
    after = {"hv1": {"arp-request": 9, "arp-to-vxlan": 1}, "hv2": {"arp-request": 3, "arp-to-vxlan": 0},
             "hv3": {"arp-request": 2, "arp-to-vxlan": 0}}  # hv3 had no table before the run
    d = counter_delta(before, after)
    assert d["by_nve"]["hv1"] == {"arp-request": 4, "arp-to-vxlan": 0}
    assert d["total"] == {"arp-request": 9, "arp-to-vxlan": 0}


def test_a_cold_move_says_when_each_of_its_vms_streams_came_back() -> None:
    from roamnet.experiments.report import resumed_after

    to_vm = summarize("in", "udp", "vm2", "vm1", 1000, {"sent": 6, "first": 10.0, "last": 10.005},
                      {"records": [[0, 10.0], [1, 10.001], [4, 12.25], [5, 12.26]]})
    other = summarize("other", "udp", "vm2", "vm3", 1000, {"sent": 1, "first": 10.0, "last": 10.0},
                      {"records": [[0, 10.0]]})
    silent = summarize("out", "udp", "vm1", "vm2", 1000, {"sent": 2, "first": 10.0, "last": 10.001},
                       {"records": [[0, 10.0]]})
    cold = {"vm": "vm1", "from": "hv1", "to": "hv3", "mode": "cold", "at_mono": 10.002, "resumed_mono": 12.0}
    live = {"vm": "vm1", "from": "hv3", "to": "hv1", "mode": "prepared", "at_mono": 13.0, "resumed_mono": 13.01}
    got = resumed_after([to_vm, other, silent], [cold, live])
    assert got == [{"vm": "vm1", "to": "hv3", "stream": "in", "resumed_ms": 250.0},
                   {"vm": "vm1", "to": "hv3", "stream": "out", "resumed_ms": None}]
    frozen = [{"iface": "vm1/0", "mac": "02:00:00:01:00:11", "vni": 10100, "nve": "hv1", "moves": 5, "until": None}]
    report = Report([to_vm, other, silent], [cold], {"t0": 9.0}, resumed=got, frozen=frozen)
    buf = io.StringIO()
    render_table(report, Console(file=buf, width=200))
    assert "when each stream came back" in buf.getvalue() and "never" in buf.getvalue()
    assert "duplicate MAC 02:00:00:01:00:11 (vm1/0, VNI 10100): frozen on hv1 after 5 moves" in buf.getvalue()
    assert json.loads(json.dumps(report.to_json()))["resumed"] == got
