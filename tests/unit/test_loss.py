"""Unit tests for roamnet.experiments.loss on synthetic streams (boundaries chosen half a slot off the packets)."""

from __future__ import annotations

import random

import pytest

from roamnet.experiments.loss import (
    MoveWindow,
    analyze_stream,
    loss_beyond_pause,
    outside_time,
    send_time_estimates,
    windows_from_migrations,
)

T0 = 100.0
LAT = 0.0001  # one-way latency of the synthetic stream


def stream(n: int, rate: float = 1000.0, drop=frozenset(), slip: dict[int, float] | None = None,
           dup=frozenset()):
    """(records, sent, first, last): n packets at `rate`; from seq k on the sender runs slip[k] s late."""
    slip = slip or {}
    recs, late, times = [], 0.0, []
    for s in range(n):
        late += slip.get(s, 0.0)
        t = T0 + s / rate + late
        times.append(t)
        if s in drop:
            continue
        recs.append([s, t + LAT])
        if s in dup:
            recs.append([s, t + LAT + 0.0003])
    return recs, n, T0, times[-1]


def win(at_s: float, resumed_s: float) -> MoveWindow:
    return MoveWindow(T0 + at_s, T0 + resumed_s)


W = win(3.0005, 3.0505)  # pause 50 ms; with 1 ms slack it covers seqs 3000..3051 at 1 kHz


def one(recs, sent, first, last, windows=(W,), rate=1000.0, **kw):
    return loss_beyond_pause(recs, sent, first, rate, list(windows), last=last, **kw)


def test_no_loss() -> None:
    [m] = one(*stream(6000))
    assert (m.lost, m.lost_in_pause, m.lost_beyond_pause, m.longest_gap_beyond_ms) == (0, 0, 0, 0.0)


def test_gap_fully_inside_the_pause_is_not_beyond() -> None:
    [m] = one(*stream(6000, drop=set(range(3000, 3052))))
    assert (m.lost, m.lost_in_pause, m.lost_beyond_pause) == (52, 52, 0)
    assert m.longest_gap_beyond_ms == 0.0
    assert m.uncertain == 0


def test_gap_7_packets_after_resume() -> None:
    [m] = one(*stream(6000, drop=set(range(3000, 3059))))
    assert (m.lost_in_pause, m.lost_beyond_pause, m.lost_after_resume) == (52, 7, 7)
    assert m.longest_gap_beyond_ms == pytest.approx(7.0, abs=1e-6)
    assert m.dark_ms == pytest.approx(50.0)
    assert m.simple == pytest.approx(59 - 50)  # lost - dark × rate


def test_gap_2_packets_before_stop() -> None:
    [m] = one(*stream(6000, drop=set(range(2998, 3052))))
    assert m.lost_after_resume == 0  # both beyond the pause, before the stop
    assert (m.lost_in_pause, m.lost_beyond_pause) == (52, 2)
    assert m.longest_gap_beyond_ms == pytest.approx(2.0, abs=1e-6)


def test_slack_zero_moves_the_boundary() -> None:
    # without slack the window [3.0005, 3.0505] holds seqs 3001..3050
    [m] = one(*stream(6000, drop=set(range(3000, 3059))), slack_ms=0.0)
    assert (m.lost_in_pause, m.lost_beyond_pause) == (50, 9)
    assert m.longest_gap_beyond_ms == pytest.approx(8.0, abs=1e-6)  # 3051..3058 after; 3000 alone before


def test_reordered_and_duplicated_give_the_same_answer() -> None:
    recs, sent, first, last = stream(6000, drop=set(range(3000, 3059)), dup={5, 2999, 3059, 3060})
    rng = random.Random(7)
    shuffled = []
    for i in range(0, len(recs), 5):  # reorder inside blocks of 5 arrivals
        block = recs[i:i + 5]
        rng.shuffle(block)
        shuffled += block
    # a packet after the gap that arrives very late is received, not lost
    late = next(r for r in shuffled if r[0] == 3059)
    shuffled.remove(late)
    shuffled.append([3059, late[1] + 0.5])
    res = analyze_stream(shuffled, sent, first, 1000.0, [W], last=last)
    [m] = res.moves
    assert (m.lost_in_pause, m.lost_beyond_pause) == (52, 7)
    assert res.duplicates == 4 and res.received == 6000 - 59 and res.lost == 59
    assert res.reordered > 0


def test_two_moves_each_get_their_own_losses() -> None:
    w2 = win(6.0005, 6.1005)  # pause 100 ms: seqs 6000..6101 with slack
    drop = set(range(3010, 3058)) | {4200} | set(range(4800, 4803)) | set(range(6000, 6111))
    res = analyze_stream(*stream(9000, drop=drop)[:3], 1000.0, [W, w2], last=stream(9000)[3])
    m1, m2 = res.moves
    assert (m1.lost_in_pause, m1.lost_beyond_pause) == (42, 6 + 1)  # 3052..3057 and 4200
    assert m1.longest_gap_beyond_ms == pytest.approx(6.0, abs=1e-6)
    assert (m2.lost_in_pause, m2.lost_beyond_pause) == (102, 3 + 9)  # 4800..4802 and 6102..6110
    assert m2.longest_gap_beyond_ms == pytest.approx(9.0, abs=1e-6)
    assert m1.stretch[1] == m2.stretch[0] == pytest.approx(T0 + (3.0505 + 6.0005) / 2)
    assert res.lost_outside == 0 and res.lost == m1.lost + m2.lost


def test_sender_slip_before_the_move_does_not_shift_the_pause() -> None:
    # The sender fell 200 ms behind at seq 2000: the naive schedule first + seq/rate would put seqs
    # 3000..3051 (really sent in the pause) 200 ms early, i.e. all "beyond the pause".
    recs, sent, first, last = stream(6000, drop=set(range(3000, 3052)), slip={2000: 0.2})
    res = analyze_stream(recs, sent, first, 1000.0, [win(3.2005, 3.2505)], last=last)
    [m] = res.moves
    assert (m.lost_in_pause, m.lost_beyond_pause, m.uncertain) == (52, 0, 0)
    assert res.slip_ms == pytest.approx(200.0, abs=0.01)
    assert res.latency_ms == pytest.approx(LAT * 1000, abs=1e-6)


def test_sender_slip_inside_the_gap_is_flagged_uncertain() -> None:
    # the sender stalls 30 ms at seq 3030, inside a lost run 3000..3059; the pause ends at 3.0705
    recs, sent, first, last = stream(6000, drop=set(range(3000, 3060)), slip={3030: 0.03})
    [m] = one(recs, sent, first, last, windows=[win(3.0005, 3.0705)])
    truth_beyond = len(range(3042, 3060))  # really sent at 3.072 .. 3.089
    assert m.uncertain == 18
    assert m.lost_beyond_pause - m.uncertain <= truth_beyond <= m.lost_beyond_pause + m.uncertain
    assert m.lost == 60


def test_10khz_resolution() -> None:
    rate = 10_000.0
    w = win(1.00005, 1.00505)  # dark 5 ms; with 1 ms slack: seqs 10000..10060
    [m] = one(*stream(20_000, rate=rate, drop=set(range(10_000, 10_068))), windows=[w], rate=rate)
    assert (m.lost_in_pause, m.lost_beyond_pause) == (61, 7)
    assert m.longest_gap_beyond_ms == pytest.approx(0.7, abs=1e-6)
    assert m.simple == pytest.approx(68 - 50)


def test_head_and_tail_losses_use_the_senders_first_and_last() -> None:
    recs, sent, first, last = stream(6000, drop={0, 1} | set(range(5990, 6000)))
    est = send_time_estimates(recs, sent, first, 1000.0, last=last)
    assert [s for s, *_ in est] == [0, 1, *range(5990, 6000)]
    for s, t, lo, hi in est:
        assert t == pytest.approx(T0 + s / 1000, abs=1e-9) and lo <= t <= hi
    # without `last` the tail is extrapolated at the rate from the last received packet
    est2 = send_time_estimates(recs, sent, first, 1000.0)
    assert [s for s, *_ in est2] == [0, 1, *range(5990, 6000)]
    assert est2[-1][1] == pytest.approx(T0 + 5999 / 1000, abs=1e-9)
    [m] = one(recs, sent, first, last)
    assert m.lost_beyond_pause == 12 and m.longest_gap_beyond_ms == pytest.approx(10.0, abs=1e-6)


def test_edge_leaves_far_losses_outside() -> None:
    res = analyze_stream(*stream(6000, drop={100, 5900})[:3], 1000.0, [W], last=stream(6000)[3],
                         edge_s=1.0)
    assert res.lost_outside == 2 and res.moves[0].lost == 0


def test_time_outside_the_moves_stretches() -> None:
    # 6 s of stream (seq 0 at T0, seq 5999 at T0 + 5.999); one move owns [2.0005, 4.0505] (edge 1 s)
    recs, sent, first, last = stream(6000, drop={100, 5900})
    res = analyze_stream(recs, sent, first, 1000.0, [W], last=last, edge_s=1.0)
    assert res.outside_s == pytest.approx(5.999 - 2.05, abs=1e-9)
    assert res.to_json()["outside_s"] == pytest.approx(3.949, abs=1e-6)
    # with no edge the move owns the whole stream
    assert analyze_stream(recs, sent, first, 1000.0, [W], last=last).outside_s == 0.0
    # no moves at all: the whole stream is outside, every loss too
    quiet = analyze_stream(recs, sent, first, 1000.0, [], last=last)
    assert quiet.outside_s == pytest.approx(5.999) and quiet.lost_outside == 2


def test_outside_time() -> None:
    assert outside_time(0.0, 10.0, []) == 10.0
    assert outside_time(0.0, 10.0, [(2.0, 3.0), (3.0, 5.0)]) == 7.0
    assert outside_time(0.0, 10.0, [(-5.0, 1.0), (9.0, 20.0)]) == 8.0
    assert outside_time(4.0, 4.0, [(0.0, 1.0)]) == 0.0
    assert outside_time(0.0, 10.0, [(-float("inf"), float("inf"))]) == 0.0


def test_nothing_received() -> None:
    recs, sent, first, last = stream(6000, drop=set(range(6000)))
    [m] = one(recs, sent, first, last)
    assert m.lost == 6000 and m.lost_in_pause == 52 and m.lost_beyond_pause == 6000 - 52
    assert m.longest_gap_beyond_ms == pytest.approx(3000.0, abs=1e-6)  # 0..2999 (3052..5999 is 2948)


def test_empty_stream_and_bad_input() -> None:
    assert analyze_stream([], 0, None, 1000.0, [W]).moves[0].lost == 0
    with pytest.raises(ValueError):
        analyze_stream([], 10, None, 1000.0, [W])
    with pytest.raises(ValueError):
        analyze_stream([], 0, None, 1000.0, [win(5, 6), win(1, 2)])
    with pytest.raises(ValueError):
        MoveWindow(2.0, 1.0)


def test_windows_from_migrations() -> None:
    ws = windows_from_migrations([{"at_mono": 10.0, "resumed_mono": 10.01},
                                  {"at_mono": 12.0, "dark_ms": 105.0}])
    assert ws[0] == MoveWindow(10.0, 10.01)
    assert ws[1].resumed == pytest.approx(12.105)


def test_json_is_plain() -> None:
    import json

    res = analyze_stream(*stream(6000, drop=set(range(3000, 3059)))[:3], 1000.0, [W])
    d = json.loads(json.dumps(res.to_json()))
    assert d["moves"][0]["lost_beyond_pause"] == 7
    assert d["moves"][0]["stretch"] == [None, None]


# ---------------------------------------------------------------- send times carried by the datagrams


def carried(n: int, rate: float = 1000.0, drop=frozenset(), delay: dict[int, float] | None = None,
            slip: dict[int, float] | None = None):
    """(records, sent, first, last, sent_at) as the receiver records them now: each record's carried
    send time beside it; packet s takes LAT + delay[s] to arrive."""
    recs, sent, first, last = stream(n, rate, slip=slip)
    sent_at = [t - LAT for _, t in recs]
    delay = delay or {}
    keep = [(s, t + delay.get(s, 0.0), u) for (s, t), u in zip(recs, sent_at) if s not in drop]
    return [[s, t] for s, t, _ in keep], sent, first, last, [u for _, _, u in keep]


def test_carried_send_times_give_the_same_figures_as_the_estimate_when_nothing_is_late() -> None:
    recs, sent, first, last, sent_at = carried(6000, drop=set(range(2998, 3059)) | {4500})
    old = analyze_stream(recs, sent, first, 1000.0, [W], last=last)
    new = analyze_stream(recs, sent, first, 1000.0, [W], last=last, sent_at=sent_at)
    assert (old.send_times, new.send_times) == ("estimated", "carried")
    keys = ("lost", "lost_in_pause", "lost_beyond_pause", "lost_after_resume", "lost_before_stop", "uncertain")
    assert [getattr(old.moves[0], k) for k in keys] == [getattr(new.moves[0], k) for k in keys] == [62, 52, 10, 8, 2, 0]
    assert new.latency_ms == pytest.approx(LAT * 1000, abs=1e-6)


def test_a_late_delivery_after_the_resume_is_not_loss_beyond_the_pause() -> None:
    # 10 kHz; everything sent in the pause is lost, and the first packets after it arrive 3 ms late
    # (a queue at the destination). From receive times, the gap seems to last into those 3 ms.
    rate, w = 10_000.0, win(1.00005, 1.00505)  # with 1 ms slack: seqs 10000..10060
    late = {s: 0.003 for s in range(10_061, 10_090)}
    recs, sent, first, last, sent_at = carried(20_000, rate, drop=set(range(10_000, 10_061)), delay=late)
    [est] = loss_beyond_pause(recs, sent, first, rate, [w], last=last)
    [exact] = loss_beyond_pause(recs, sent, first, rate, [w], last=last, sent_at=sent_at)
    assert est.lost_beyond_pause > 0  # the artefact: estimated send times stretched over the late arrival
    assert (exact.lost_in_pause, exact.lost_beyond_pause, exact.uncertain) == (61, 0, 0)


def test_beyond_ms_says_when_each_packet_lost_beyond_the_pause_was_sent() -> None:
    recs, sent, first, last, sent_at = carried(6000, drop=set(range(2998, 3055)))
    [m] = one(recs, sent, first, last, sent_at=sent_at)
    assert (m.lost_before_stop, m.lost_in_pause, m.lost_after_resume) == (2, 52, 3)
    # seqs 2998, 2999 were sent 2.5 and 1.5 ms before the stop; 3052..3054 1.5 to 3.5 ms after the resume
    assert m.beyond_ms == pytest.approx([-2.5, -1.5, 1.5, 2.5, 3.5], abs=1e-6)
    assert m.to_json()["beyond_ms"] == [-2.5, -1.5, 1.5, 2.5, 3.5]


def test_packets_sent_in_the_pause_that_arrived_and_the_delay_before_the_stop() -> None:
    # the pause recorded is [3.0005, 3.0505] but the VM really stopped receiving only at 3.010: what
    # was sent before that arrived (3001..3009, seq 3000 and 3001 lie within the slack), the rest is lost
    delay = {2990: 0.0015}  # one packet sent 10.5 ms before the stop took 1.6 ms
    recs, sent, first, last, sent_at = carried(6000, drop=set(range(3010, 3052)), delay=delay)
    [m] = one(recs, sent, first, last, sent_at=sent_at)
    assert m.received_in_pause == len(range(3002, 3010)) and m.lost_beyond_pause == 0
    assert m.latency_before_stop_ms == pytest.approx((LAT + 0.0015) * 1000, abs=1e-6)
    assert m.lost_in_flight == 0
    # without recorded send times these figures are unknown, not zero
    [old] = one(recs, sent, first, last)
    assert old.received_in_pause is None and old.latency_before_stop_ms is None and old.lost_in_flight is None


def test_packets_lost_just_before_the_stop_while_deliveries_were_slow_may_have_been_in_flight() -> None:
    # deliveries before the stop take up to 2.6 ms; 2996..2999 (sent 4.5 to 1.5 ms before the stop) are lost:
    # the last two within 2.6 ms of the stop, the first two earlier than any delivery took
    delay = {2990: 0.0025}
    recs, sent, first, last, sent_at = carried(6000, drop=set(range(2996, 3052)), delay=delay)
    [m] = one(recs, sent, first, last, sent_at=sent_at)
    assert m.latency_before_stop_ms == pytest.approx(2.6, abs=1e-6)
    assert (m.lost_before_stop, m.lost_in_flight, m.lost_beyond_pause) == (4, 2, 4)  # reported, not subtracted


def test_two_moves_get_their_own_edge_figures() -> None:
    w2 = win(6.0005, 6.1005)
    recs, sent, first, last, sent_at = carried(9000, drop=set(range(3000, 3052)) | set(range(6000, 6102)),
                                               delay={2999: 0.002, 5990: 0.004})
    m1, m2 = analyze_stream(recs, sent, first, 1000.0, [W, w2], last=last, sent_at=sent_at).moves
    assert m1.latency_before_stop_ms == pytest.approx((LAT + 0.002) * 1000, abs=1e-6)
    assert m2.latency_before_stop_ms == pytest.approx((LAT + 0.004) * 1000, abs=1e-6)
    assert (m1.received_in_pause, m2.received_in_pause) == (0, 0)
    assert (m1.lost_beyond_pause, m2.lost_beyond_pause) == (0, 0)


def test_sent_at_must_be_parallel_to_the_records() -> None:
    recs, sent, first, last, sent_at = carried(100)
    with pytest.raises(ValueError, match="sent_at has 99 send times for 100 records"):
        analyze_stream(recs, sent, first, 1000.0, [], last=last, sent_at=sent_at[:-1])
    with pytest.raises(ValueError, match="parallel"):
        send_time_estimates(recs, sent, first, 1000.0, last, sent_at=sent_at + [1.0])


def test_duplicates_with_carried_send_times() -> None:
    recs, sent, first, last, sent_at = carried(6000, drop=set(range(3000, 3059)))
    recs2, sent_at2 = recs + [recs[10], recs[-1]], sent_at + [sent_at[10], sent_at[-1]]
    res = analyze_stream(recs2, sent, first, 1000.0, [W], last=last, sent_at=sent_at2)
    assert res.duplicates == 2 and (res.moves[0].lost_in_pause, res.moves[0].lost_beyond_pause) == (52, 7)
