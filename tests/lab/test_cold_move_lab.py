"""Cold moves on the real kernel (draft §3.2, issue 17): a VM stopped in one data center keeps its MAC
and addresses reserved (nobody forwards to it, answers ARP for it or floods to its server for it), and
started in another it is reached at the same addresses; as scenario steps, the report says when each
stream came back."""

from __future__ import annotations

from pathlib import Path

from conftest import run_scenario_cleaned


def test_a_cold_move_between_data_centers_keeps_ip_and_mac(lab_name, make_topology, lab_namespaces, lab_up, host,
                                                           addr):
    from test_irb import ping

    t = make_topology(lab_name("t-cold"))  # dc1: hv1 (vm1), hv2 (vm2); dc2: hv3 (vm3); all in web
    lab_namespaces(t)
    name = t["name"]
    ip1, mac1 = addr.ip(t, "vm1"), addr.mac(t, "vm1")
    with lab_up(t) as lab:
        assert ping(host, f"rn-{name}-vm2", ip1, count=3)[0] == 3
        rec = lab.stop_vm("vm1")
        assert rec["converged_ms"] is not None, rec
        b = lab.mapping.snapshot().binding_of("vm1/0")
        assert (b.nve, b.stopped) == ("hv1", True)
        # reserved, and nothing forwards to it: hv2 answers no ARP for it, has no entry and no flood to hv1
        assert not [n for n in host.ip_json(f"rn-{name}-hv2", "neigh", "show", ip1)], "ARP still answered for it"
        fdb = host.run(["bridge", "-n", f"rn-{name}-hv2", "fdb", "show", "dev", "vx10100"]).stdout
        assert mac1 not in fdb and "198.18.1.1" not in fdb, fdb
        assert ping(host, f"rn-{name}-vm2", ip1, count=3, interval=0.1)[0] == 0
        started = lab.start_vm("vm1", "hv3")
        assert started["converged_ms"] is not None and started["mode"] == "cold", started
        b = lab.mapping.snapshot().binding_of("vm1/0")
        assert (b.nve, b.seq, b.stopped) == ("hv3", 1, False)
        guest = host.ip_json(f"rn-{name}-vm1", "addr", "show", "eth0")[0]
        assert guest["address"] == mac1 and any(a["local"] == ip1 for a in guest["addr_info"])
        got2, out2 = ping(host, f"rn-{name}-vm2", ip1, count=5, interval=0.05)
        got1, out1 = ping(host, f"rn-{name}-vm1", addr.ip(t, "vm2"), count=5, interval=0.05)  # empty ARP cache
        print(f"cold move vm1 hv1 (dc1) -> hv3 (dc2): stopped {started['dark_ms']} ms, every NVE programmed "
              f"{started['converged_ms']} ms after the start; pings after: vm2->vm1 {got2}/5, vm1->vm2 {got1}/5")
        assert got2 == 5 and got1 == 5, out2 + out1


def test_cold_move_steps_in_a_scenario_report_when_streams_came_back(lab_name, make_topology, lab_namespaces,
                                                                     host, tmp_path: Path):
    name = lab_name("t-coldrun")
    topo = make_topology(name)
    lab_namespaces(topo)
    report, _ = run_scenario_cleaned({
        "topology": topo, "duration": 5.0,
        "streams": [{"name": "to-vm1", "from": "vm2", "to": "vm1", "proto": "udp", "rate": 1000}],
        "steps": [{"at": 1.5, "stop": "vm1"}, {"at": 2.5, "start": "vm1", "on": "hv3"}],
    }, tmp_path)
    (mig,) = report.migrations
    (back,) = report.resumed
    stream = report.streams[0]
    print(f"scenario: vm1 stopped on {mig['from']} for {mig['dark_ms']} ms, started on {mig['to']}; stream "
          f"to-vm1 came back {back['resumed_ms']} ms after the start; lost {stream.lost} of {stream.sent}")
    assert (mig["mode"], mig["from"], mig["to"]) == ("cold", "hv1", "hv3")
    assert back["stream"] == "to-vm1" and back["resumed_ms"] is not None and back["resumed_ms"] < 1000
    assert stream.survived
    assert 800 <= mig["dark_ms"] <= 1500  # the steps' second apart: the VM ran nowhere meanwhile
