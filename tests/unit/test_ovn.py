"""OVN baseline control plane, the pure parts: which chassis a lab has, the logical network, the port
options of each move strategy, the daemons' argv and environment, and the pid journal's crash clean-up
(against stand-in processes this test starts itself)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roamnet.baselines.ovn import (
    JOURNAL,
    ROLES,
    STRATEGIES,
    Ovn,
    counters_delta,
    daemon_argv,
    daemon_env,
    is_recorded_process,
    kill_recorded,
    logical_ports,
    move_options,
    nb_commands,
    ovsdb_map,
    ovsdb_set,
    packet_socket_drops,
    plan_chassis,
    set_options_args,
    thread_schedstat,
)
from roamnet.intent.model import load_topology, parse_topology
from roamnet.intent.scenario import packaged_example
from roamnet.lab.plan import build_plan

TOPO = load_topology(packaged_example("two-dc.yaml"))
PLAN = build_plan(TOPO)
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")


def test_every_server_is_a_chassis_with_its_underlay_address_and_route():
    chassis = {c.node: c for c in plan_chassis(PLAN)}
    servers = {n.name: n for n in PLAN.nodes.values() if n.kind == "server"}
    assert set(chassis) == set(servers)
    for name, ch in chassis.items():
        assert ch.ns == servers[name].ns and ch.vtep == servers[name].vtep
        assert ipaddress.ip_address(ch.vtep) in LAB_RANGE and ch.prefixlen == 31
        assert ch.routes and all(ipaddress.ip_address(gw) in LAB_RANGE for _, gw in ch.routes)


def test_servers_behind_a_tor_are_refused():
    topo = parse_topology({
        "name": "x", "datacenters": {"dc1": {"domains": {"pod1": {"tor": "tor1", "servers": ["hv1", "hv2"]}}}},
        "cugs": {"web": {"vni": 100, "subnet": "198.19.1.0/24"}}, "vms": {}}, "<x>")
    with pytest.raises(ValueError, match="behind ToR tor1"):
        plan_chassis(build_plan(topo))


def test_logical_network_one_switch_per_cug_one_port_per_interface():
    args = nb_commands(TOPO)
    txns = " ".join(args).split(" -- ")
    assert {t for t in txns if t.startswith("ls-add")} == {f"ls-add ls-{c}" for c in TOPO.cugs}
    ports = logical_ports(TOPO)
    assert len(ports) == sum(len(v.interfaces) for v in TOPO.vms.values())
    for ls, lsp, mac, ip, server in ports:
        assert f"lsp-add {ls} {lsp}" in txns
        assert f"lsp-set-addresses {lsp} {mac} {ip}" in txns
        assert f"set Logical_Switch_Port {lsp} options:requested-chassis={server}" in txns
    assert args[0] != "--"


def test_move_options_per_strategy():
    assert move_options("classic", "ready", "hv1", "hv2") == ({}, [])
    assert move_options("classic", "resumed", "hv1", "hv2") == ({"requested-chassis": "hv2"}, [])
    assert move_options("multichassis", "ready", "hv1", "hv2") == ({"requested-chassis": "hv1,hv2"}, [])
    assert move_options("multichassis", "resumed", "hv1", "hv2") == ({}, [])
    assert move_options("multichassis-rarp", "ready", "hv1", "hv2") == (
        {"requested-chassis": "hv1,hv2", "activation-strategy": "rarp"}, [])
    assert move_options("multichassis-rarp", "finish", "hv1", "hv2") == (
        {"requested-chassis": "hv2"}, ["activation-strategy"])
    for s in STRATEGIES:  # every move ends bound to the destination alone
        assert move_options(s, "finish", "hv1", "hv2")[0] == {"requested-chassis": "hv2"}
    with pytest.raises(ValueError, match="unknown OVN move strategy"):
        move_options("live", "ready", "hv1", "hv2")
    with pytest.raises(ValueError, match="unknown move phase"):
        move_options("classic", "done", "hv1", "hv2")
    with pytest.raises(ValueError, match="unknown OVN move strategy"):
        Ovn("rarp")


def test_set_options_args_is_one_transaction():
    args = set_options_args(["vm1/0", "vm1/1"], {"requested-chassis": "hv2"}, ["activation-strategy"])
    assert args == ["set", "Logical_Switch_Port", "vm1/0", "options:requested-chassis=hv2",
                    "--", "remove", "Logical_Switch_Port", "vm1/0", "options", "activation-strategy",
                    "--", "set", "Logical_Switch_Port", "vm1/1", "options:requested-chassis=hv2",
                    "--", "remove", "Logical_Switch_Port", "vm1/1", "options", "activation-strategy"]


def test_daemon_argv_keeps_every_path_in_its_directory(tmp_path: Path):
    d, central = tmp_path / "hv1", tmp_path / "central"
    for role in ROLES:
        argv = daemon_argv(role, central if role in ("nb", "sb", "northd") else d, central)
        paths = [a.split("=", 1)[1].removeprefix("unix:").removeprefix("punix:") for a in argv if "=" in a
                 and "/" in a] + [a for a in argv[1:] if a.startswith("/")]
        assert paths and all(p.startswith(str(tmp_path)) for p in paths), (role, argv)
        assert any(a.startswith("--pidfile=") for a in argv)
    assert not any(a.startswith("--unixctl") for a in daemon_argv("controller", d))  # 23.03 rejects it
    with pytest.raises(ValueError):
        daemon_argv("bgpd", d)


def test_daemon_env_points_every_default_directory_at_the_instance(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OVS_RUNDIR", "/var/run/openvswitch")
    env = daemon_env(tmp_path)
    assert {k: v for k, v in env.items() if k.startswith(("OVS_", "OVN_"))} == {
        f"{p}_{w}": str(tmp_path) for p in ("OVS", "OVN") for w in ("RUNDIR", "DBDIR", "LOGDIR", "SYSCONFDIR")}


def test_ovsdb_atoms():
    assert ovsdb_set(["set", []]) == [] and ovsdb_set(["uuid", "u1"]) == [["uuid", "u1"]]
    assert ovsdb_set(["set", [["uuid", "a"], ["uuid", "b"]]]) == [["uuid", "a"], ["uuid", "b"]]
    assert ovsdb_map(["map", [["ovn-installed", "true"]]]) == {"ovn-installed": "true"}
    assert ovsdb_map("x") == {}


def _standin(binary: str, pidfile: str) -> subprocess.Popen:
    return subprocess.Popen([binary, "-c", "import time; time.sleep(60)", f"--pidfile={pidfile}"],
                            executable=sys.executable, stdin=subprocess.DEVNULL)


def test_kill_recorded_ends_only_recorded_processes(tmp_path: Path):
    ours = _standin("ovs-vswitchd", f"{tmp_path}/hv1/vswitchd.pid")
    other = _standin("ovs-vswitchd", f"{tmp_path}x/hv1/vswitchd.pid")  # another lab's: same binary
    gone = _standin("ovn-controller", f"{tmp_path}/hv1/controller.pid")
    gone.kill()
    gone.wait(5)
    try:
        rows = [{"label": "ovs-vswitchd@rn-x-hv1", "role": "vswitchd", "binary": "ovs-vswitchd",
                 "pid": ours.pid, "pidfile": f"{tmp_path}/hv1/vswitchd.pid"},
                {"label": "ovn-controller@rn-x-hv1", "role": "controller", "binary": "ovn-controller",
                 "pid": gone.pid, "pidfile": f"{tmp_path}/hv1/controller.pid"},
                {"label": "ovsdb-server(ovsdb)@rn-x-hv1", "role": "ovsdb", "binary": "ovsdb-server",  # recycled pid
                 "pid": other.pid, "pidfile": f"{tmp_path}/hv1/ovsdb.pid"}]
        (tmp_path / JOURNAL).write_text(json.dumps({"processes": rows}))
        assert is_recorded_process(ours.pid, "ovs-vswitchd", f"{tmp_path}/hv1/vswitchd.pid")
        assert not is_recorded_process(other.pid, "ovs-vswitchd", f"{tmp_path}/hv1/vswitchd.pid")
        assert kill_recorded(tmp_path) == [f"ovs-vswitchd@rn-x-hv1 (pid {ours.pid})"]
        assert ours.wait(5) is not None
        time.sleep(0.05)
        assert other.poll() is None, "a process that is not the recorded one was ended"
        assert kill_recorded(tmp_path / "none") == []
    finally:
        for p in (ours, other):
            p.kill()
            p.wait(5)


# ---- what the userspace datapath dropped (ss -0 -m), and its main thread's scheduling

SS = """\
Netid Recv-Q Send-Q Local Address:Port Peer Address:Port Process
p_raw 0      0                  *:uplink             *     users:(("ovs-vswitchd",pid=20628,fd=37)) skmem:(r0,rb212992,t0,tb212992,f0,w0,o176,bl0,d4768)
p_raw 0      0                  *:vm1-e0             *     users:(("ovs-vswitchd",pid=20628,fd=46)) skmem:(r0,rb212992,t0,tb212992,f0,w0,o176,bl0,d0)
p_raw 0      0                [0]:*                  *     users:(("ovs-vswitchd",pid=20628,fd=48)) skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d3)
p_raw 0      0                  *:p3-e0              *     users:(("tcpdump",pid=999,fd=3))
\tskmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d77)
p_raw 0      0                  *:p3-e0              *     users:(("ovs-vswitchd",pid=20628,fd=47))
\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o176,bl0,d12)
"""


def test_packet_socket_drops_per_interface_of_one_process() -> None:
    assert packet_socket_drops(SS, 20628) == {"uplink": 4768, "vm1-e0": 0, "*": 3, "p3-e0": 12}
    assert packet_socket_drops(SS, 999) == {"p3-e0": 77}  # another process's socket, wrapped by ss
    assert packet_socket_drops(SS, 2062) == {}  # pid=2062 is not pid=20628
    assert packet_socket_drops("", 1) == {}


def test_thread_schedstat_of_this_process() -> None:
    import os

    before = thread_schedstat(os.getpid())
    assert before is not None
    x = 0
    for i in range(200_000):  # some CPU of the main thread's own
        x += i
    after = thread_schedstat(os.getpid())
    assert after is not None and after[0] > before[0] and after[1] >= before[1] >= 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert thread_schedstat(gone.pid) is None


def test_counters_delta() -> None:
    before = {"hv1": {"socket_drops": {"uplink": 10, "vm1-e0": 0}, "cpu_ms": 100.0, "runq_wait_ms": 50.0},
              "hv2": {"socket_drops": {"uplink": 0}, "cpu_ms": 10.0, "runq_wait_ms": 1.0},
              "hv3": {"error": "ss in rn-x-hv3: ss exited 1"},
              "hv4": {"socket_drops": {}, "cpu_ms": 1.0, "runq_wait_ms": 1.0}}
    after = {"hv1": {"socket_drops": {"uplink": 4778, "vm1-e0": 0, "p3-e0": 5}, "cpu_ms": 3500.5,
                     "runq_wait_ms": 5590.0},
             "hv2": {"socket_drops": {"uplink": 0}, "cpu_ms": 12.0, "runq_wait_ms": 1.5},
             "hv3": {"socket_drops": {"uplink": 3}, "cpu_ms": 1.0, "runq_wait_ms": 1.0}}
    d = counters_delta(before, after)  # hv4's vswitchd was gone at the second reading: left out
    assert d["chassis"] == {"hv1": {"socket_drops": {"uplink": 4768, "p3-e0": 5}, "cpu_ms": 3400.5,
                                    "runq_wait_ms": 5540.0},
                            "hv2": {"socket_drops": {}, "cpu_ms": 2.0, "runq_wait_ms": 0.5},
                            "hv3": {"error": "ss in rn-x-hv3: ss exited 1"}}
    assert (d["socket_drops"], d["cpu_ms"], d["runq_wait_ms"]) == (4773, 3402.5, 5540.5)
    assert counters_delta({}, after) == {"chassis": {}, "socket_drops": 0, "cpu_ms": 0.0, "runq_wait_ms": 0.0}
