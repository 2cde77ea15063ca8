"""The migration benchmark's pure parts for routed and WAN streams: the lab it builds (a valid topology,
lab addresses only), who sends and who receives, when the packets lost after a resume were sent, and the
inbound switch per inter-DC move."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import migration as bench  # noqa: E402

from roamnet.intent.model import parse_topology  # noqa: E402

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")


@pytest.mark.parametrize("streams", ["l2", "routed", "all"])
def test_the_benchmark_topologies_are_valid_and_use_lab_addresses_only(streams):
    topo = bench.traffic_topology("bench-t", bench.STREAM_SETS[streams])
    parsed = parse_topology(topo, "<bench>")
    ips = [i["ip"] for vm in topo["vms"].values() for i in vm["interfaces"]]
    ips += [c["ip"] for c in topo.get("wan", {}).get("clients", {}).values()]
    assert ips and all(ipaddress.ip_address(ip) in LAB_RANGE for ip in ips)
    routed = bench.routed(bench.STREAM_SETS[streams])
    assert bool(parsed.tenants) == routed
    if routed:  # the mover's CUG is routed; the L3 peers are in another CUG of the same tenant
        cugs = topo["cugs"]
        assert cugs[bench.CUG]["tenant"] == cugs[bench.DB_CUG]["tenant"] == bench.TENANT
        for st in bench.STREAM_SETS[streams]:
            if st.kind == "l3":
                assert topo["vms"][st.peer]["interfaces"][0]["cug"] == bench.DB_CUG
                assert topo["vms"][st.peer]["server"] == st.peer_server


def test_endpoints_put_the_receiver_where_the_loss_is_counted():
    topo = bench.traffic_topology("bench-t", bench.ROUTED_STREAMS)
    mover_ip = topo["vms"][bench.MOVER]["interfaces"][0]["ip"]
    by_key = {st.key: bench.endpoints(st, topo) for st in bench.ROUTED_STREAMS}
    assert by_key["l3-1k-remote"] == (bench.MOVER, "q1", mover_ip)
    assert by_key["wan-in"] == (bench.MOVER, "c1", mover_ip)
    assert by_key["wan-out"] == ("c1", bench.MOVER, bench.CLIENT_IP)  # counted at the client


def test_after_resume_keeps_only_what_was_lost_after_the_resume_in_the_moves_stretch():
    move = {"resumed_mono": 10.0}
    lost = [(1, 9.9, 9.9, 9.9), (2, 10.0005, 10.0, 10.0), (3, 10.0021, 10.0, 10.0), (4, 10.5, 10.5, 10.5),
            (5, 12.0, 12.0, 12.0)]
    assert bench.after_resume(lost, move, [9.0, 11.0]) == [2.1, 500.0]  # not in the pause's slack, nor past 11 s
    assert bench.after_resume(lost, move, [9.0, None]) == [2.1, 500.0, 2000.0]  # the last move's stretch is open


def test_wan_switches_reports_inter_dc_moves_from_the_stop_and_from_the_resume():
    moves = [
        {"vm": "vm1", "to": "hv2", "dc_to": "dc1", "scope": "intra", "pause_ms": 0, "at_mono": 10.0,
         "resumed_mono": 10.02},
        {"vm": "vm1", "to": "hv4", "dc_to": "dc2", "scope": "inter", "pause_ms": 100, "at_mono": 20.0,
         "resumed_mono": 20.15},
    ]
    crossings = [(9.0, "wan-in", "dc1br", "in"), (19.0, "wan-in", "dc1br", "in"), (20.3, "wan-in", "dc1br", "in"),
                 (20.45, "wan-in", "dc2br", "in"), (21.0, "wan-in", "dc2br", "in")]
    out = bench.wan_switches(crossings, ["wan-in"], moves)
    assert len(out) == 1  # the intra-DC move stays on dc1br: no switch to report
    p = out[0]
    assert (p["in_before"], p["in_after"], p["expected"]) == ("dc1br", "dc2br", "dc2br")
    assert p["inbound_switch_ms"] == 450.0 and p["dark_ms"] == 150.0 and p["from_resume_ms"] == 300.0
    assert bench.wan_switches([], ["wan-in"], moves)[0]["from_resume_ms"] is None  # never came in there
