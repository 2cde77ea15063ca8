"""Which border router WAN streams cross: frame classification and the per-move path summary."""

import io

from rich.console import Console
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from roamnet.experiments.paths import IN, OUT, Watched, classify, summarize_paths, watch_table
from roamnet.experiments.report import render_paths

VM, CLIENT = "198.19.1.11", "198.18.200.10"
TABLE = watch_table([Watched("s1", VM, CLIENT, 5001, False), Watched("s2", VM, CLIENT, 5002, True)])


def test_classify_by_addresses_and_port_in_both_directions():
    inbound = bytes(Ether() / IP(src=CLIENT, dst=VM) / UDP(sport=40000, dport=5001))
    acks = bytes(Ether() / IP(src=VM, dst=CLIENT) / TCP(sport=5001, dport=40000))
    s2 = bytes(Ether() / IP(src=VM, dst=CLIENT) / UDP(sport=40001, dport=5002))
    s2_back = bytes(Ether() / IP(src=CLIENT, dst=VM) / TCP(sport=5002, dport=40001))
    other = bytes(Ether() / IP(src=CLIENT, dst="198.19.1.12") / UDP(dport=5001))
    other_port = bytes(Ether() / IP(src=CLIENT, dst=VM) / UDP(sport=40000, dport=5003))
    assert classify(inbound, TABLE) == ("s1", IN)
    assert classify(acks[:64], TABLE) == ("s1", OUT)  # the kernel filter hands over 64 bytes
    assert classify(s2, TABLE) == ("s2", OUT) and classify(s2_back, TABLE) == ("s2", IN)
    assert classify(other, TABLE) is None and classify(other_port, TABLE) is None
    assert classify(b"\x00" * 10, TABLE) is None
    arp = bytes(Ether(type=0x0806)) + b"\x00" * 28
    assert classify(arp, TABLE) is None


def recs(t0, t1, border, direction, step=0.01):
    out, t = [], t0
    while t < t1:
        out.append((t, "s1", border, direction))
        t += step
    return out


MOVE = {"vm": "vm1", "from": "hv1", "to": "hv3", "at_mono": 10.0, "dc_from": "dc1", "dc_to": "dc2"}
BACK = {"vm": "vm1", "from": "hv3", "to": "hv1", "at_mono": 20.0, "dc_from": "dc2", "dc_to": "dc1"}
BORDERS = {"dc1": "dc1br", "dc2": "dc2br"}


def test_switch_times_and_borders_before_and_after_each_move():
    records = (recs(5, 10.05, "dc1br", IN) + recs(10.08, 20, "dc2br", IN)  # inbound switched after 80 ms
               + recs(5, 10, "dc1br", OUT) + recs(10.02, 20, "dc2br", OUT)
               + recs(20, 20.1, "dc2br", IN) + recs(20.1, 25, "dc1br", IN) + recs(20.01, 25, "dc1br", OUT))
    out = summarize_paths(records, {"s1": "vm1"}, [MOVE, BACK], BORDERS)
    assert [(p.in_before, p.out_before, p.in_after, p.out_after, p.expected) for p in out] == [
        ("dc1br", "dc1br", "dc2br", "dc2br", "dc2br"), ("dc2br", "dc2br", "dc1br", "dc1br", "dc1br")]
    assert out[0].inbound_switch_ms == 80.0 and out[0].outbound_switch_ms == 20.0
    assert out[1].inbound_switch_ms == 100.0 and out[1].outbound_switch_ms == 10.0
    text = io.StringIO()
    render_paths([p.to_json() for p in out], Console(file=text, width=200))
    assert "dc2br" in text.getvalue() and "80.0" in text.getvalue()


def test_no_packets_through_the_new_border_is_no_switch():
    records = recs(5, 15, "dc1br", IN)
    [p] = summarize_paths(records, {"s1": "vm1"}, [MOVE], BORDERS)
    assert p.in_after == "dc1br" and p.expected == "dc2br" and p.inbound_switch_ms is None
    assert p.out_before is None


def test_moves_of_other_vms_bound_the_windows_and_are_not_reported():
    other = {"vm": "vm9", "from": "hv2", "to": "hv4", "at_mono": 15.0, "dc_to": "dc2"}
    records = recs(5, 10, "dc1br", IN) + recs(10.05, 15, "dc2br", IN) + recs(15, 20, "dc1br", IN)
    [p] = summarize_paths(records, {"s1": "vm1"}, [MOVE, other], BORDERS)
    assert p.in_after == "dc2br"  # the window ends at the next move
    assert summarize_paths(records, {}, [MOVE], BORDERS) == []
