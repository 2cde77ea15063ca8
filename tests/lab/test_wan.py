"""In and out through the data center the VM is in now: FRR BGP on the borders' tenant namespaces and the
WAN router (route health injection: a border announces the /32s of its data center's VMs). Measured
with the borders' handoff interface counters before and after a move to the other data center and
back; the inbound switch time is reported; FRR processes end with the lab; FRR failures name the
instance."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from test_irb import routed_topology

from roamnet.experiments.paths import PathObserver, Watched, summarize_paths

pytestmark = pytest.mark.usefixtures("frr_required")
VM1, CLIENT = "198.19.1.11", "198.18.200.10"
BORDERS = {"dc1": "dc1br", "dc2": "dc2br"}


def poll(cond, timeout: float, step: float = 0.01) -> float | None:
    """Seconds until cond() held, or None after `timeout` (bounded)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - t0


def deltas(lab, seconds: float = 1.0) -> dict[str, dict[str, int]]:
    a = lab.handoff_counters()
    time.sleep(seconds)
    b = lab.handoff_counters()
    return {br: {d: b[br][d] - a[br][d] for d in ("in", "out")} for br in b}


def through(d: dict[str, dict[str, int]], border: str, other: str) -> bool:
    """About a second of two 1 kHz streams crossed `border` both ways, (almost) nothing `other`."""
    return min(d[border].values()) >= 800 and max(d[other].values()) <= 20


def pids_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def test_wan_traffic_enters_and_leaves_through_the_vms_data_center(lab_name, lab_up, traffic):
    from roamnet.baselines.evpn import read_journal

    with lab_up(routed_topology(lab_name("t-wan"), clients=True)) as lab:
        assert poll(lambda: lab.border.wan_routes().get(f"{VM1}/32") == "dc1br", 20) is not None
        pids = [int(e["pid"]) for e in read_journal(lab.border.workdir)]
        assert len(pids) == 2 * 3 and pids_alive(pids) == pids  # zebra + bgpd: dc1br.t1, dc2br.t1, wan

        start, duration = time.monotonic() + 1.0, 9.0
        f_in = traffic(lab, "in", "udp", "client1", "vm1", 5001, start, duration)
        f_out = traffic(lab, "out", "udp", "vm1", "client1", 5002, start, duration)
        observer = PathObserver(lab.border_namespaces(), [Watched("in", VM1, CLIENT, 5001, False), Watched("out", VM1, CLIENT, 5002, True)],
                                max_seconds=60)
        observer.start()
        time.sleep(max(0.0, start + 0.5 - time.monotonic()))
        before = deltas(lab)
        assert through(before, "dc1br", "dc2br"), before

        away = lab.migrate("vm1", "hv3")  # dc1 -> dc2
        switched = poll(lambda: lab.border.wan_routes().get(f"{VM1}/32") == "dc2br", 10)
        assert switched is not None
        time.sleep(0.5)
        after = deltas(lab)
        assert through(after, "dc2br", "dc1br"), after

        back = lab.migrate("vm1", "hv1")  # and back: the old path again
        assert poll(lambda: lab.border.wan_routes().get(f"{VM1}/32") == "dc1br", 10) is not None
        time.sleep(0.5)
        again = deltas(lab)
        assert through(again, "dc1br", "dc2br"), again

        moves = [away, back]
        r_in, r_out = f_in.finish(moves), f_out.finish(moves)
        assert r_in.received > 0.9 * r_in.sent and r_out.received > 0.9 * r_out.sent
        paths = summarize_paths(observer.stop(), {"in": "vm1", "out": "vm1"}, moves, BORDERS)
        assert [(p.stream, p.in_before or p.out_before, p.in_after or p.out_after) for p in paths] == [
            ("in", "dc1br", "dc2br"), ("in", "dc2br", "dc1br"), ("out", "dc1br", "dc2br"), ("out", "dc2br", "dc1br")]
        for p in paths:
            switch = p.inbound_switch_ms if p.stream == "in" else p.outbound_switch_ms
            assert switch is not None and 0 <= switch < 10_000, p
        print("inbound switch ms:", [p.inbound_switch_ms for p in paths if p.stream == "in"],
              "outbound:", [p.outbound_switch_ms for p in paths if p.stream == "out"],
              "BGP route at the WAN after", round(switched * 1000), "ms")
    assert pids_alive(pids) == []  # lab down ended every FRR process it started


def test_a_missing_frr_names_the_instance_and_leaves_nothing(lab_name, lab_namespaces, tmp_path, host):
    from roamnet.intent.model import parse_topology
    from roamnet.lab.engine import Lab
    from roamnet.wan.border import BorderBgp

    topo = routed_topology(lab_name("t-wan-nofrr"), clients=True)
    planned = lab_namespaces(topo)
    lab = Lab(parse_topology(topo), border=BorderBgp(workdir=tmp_path / "frr", frr_bin_dir=tmp_path / "nothing"))
    with pytest.raises(Exception) as err:
        lab.up()
    msg = str(err.value)
    assert "zebra in rn-" in msg and "no executable" in msg, msg
    assert not set(planned) & set(host.netns_list())


def test_run_reports_the_border_paths_of_a_wan_stream(lab_name, lab_namespaces, host, tmp_path):
    topo = routed_topology(lab_name("t-wan-run"), clients=True)
    lab_namespaces(topo)
    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo))
    (tmp_path / "scn.yaml").write_text(yaml.safe_dump({
        "topology": "topo.yaml", "duration": 6,
        "streams": [{"name": "web-in", "from": "client1", "to": "vm1", "proto": "udp", "rate": 500},
                    {"name": "web-out", "from": "vm1", "to": "client1", "proto": "tcp"}],
        "steps": [{"at": 2, "migrate": "vm1", "to": "hv3"}]}))
    p = host.roamnet("run", str(tmp_path / "scn.yaml"), "-f", "json", timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    by = {x["stream"]: x for x in report["paths"]}
    assert by["web-in"]["in_before"] == "dc1br" and by["web-in"]["in_after"] == "dc2br"
    assert by["web-in"]["inbound_switch_ms"] is not None
    assert by["web-out"]["out_before"] == "dc1br" and by["web-out"]["out_after"] == "dc2br"
    tcp = next(s for s in report["streams"] if s["name"] == "web-out")
    assert tcp["survived"], tcp
