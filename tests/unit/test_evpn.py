"""FRR BGP-EVPN control plane, the pure parts: which FRR instances a lab has, their configs, their argv,
and the pid journal's crash clean-up (against stand-in processes this test starts itself)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roamnet.baselines.evpn import FrrInstance, frr_config, kill_recorded, plan_instances
from roamnet.intent.model import load_topology
from roamnet.intent.scenario import packaged_example
from roamnet.lab.plan import build_plan
from roamnet.wan.frr import DAEMONS, JOURNAL, daemon_argv, is_instance_process

TOPO = load_topology(packaged_example("two-dc.yaml"))
PLAN = build_plan(TOPO)
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


def _instances() -> dict[str, FrrInstance]:
    return {i.node: i for i in plan_instances(PLAN)}


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


def test_instances_one_vtep_per_server_and_a_route_reflector_on_dci():
    inst = _instances()
    assert set(inst) == {"hv1", "hv2", "hv3", "hv4", "dci"}
    rr = inst["dci"]
    assert rr.role == "rr" and rr.ns == "rn-two-dc-dci"
    assert rr.address == "198.18.250.0"  # the DCI router's end of its link to dc1's border
    assert set(rr.peers) == {"198.18.1.1", "198.18.1.3", "198.18.2.1", "198.18.2.3"}
    for name in ("hv1", "hv2", "hv3", "hv4"):
        v = inst[name]
        assert v.role == "vtep" and v.ns == f"rn-two-dc-{name}"
        assert v.address == PLAN.nodes[name].vtep
        assert v.peers == (rr.address,)


def test_vtep_bgpd_config():
    v = _instances()["hv3"]
    conf = frr_config("bgpd", v)
    lines = _lines(conf)
    for must in ("router bgp 65000", "bgp router-id 198.18.2.1", "no bgp default ipv4-unicast",
                 "neighbor RR remote-as 65000", "neighbor RR update-source 198.18.2.1",
                 "neighbor 198.18.250.0 peer-group RR", "address-family l2vpn evpn", "neighbor RR activate",
                 "advertise-all-vni", "no dup-addr-detection", "exit-address-family"):
        assert must in lines, f"{must!r} missing from:\n{conf}"
    assert "neighbor RR advertisement-interval 0" in lines and "neighbor RR timers connect 1" in lines
    assert any(ln.startswith("timers bgp ") for ln in lines)
    assert not any("route-reflector-client" in ln for ln in lines)
    assert not any("address-family ipv4" in ln for ln in lines)  # the underlay is static: EVPN only
    # advertise-all-vni sits inside the l2vpn evpn family
    af, end = lines.index("address-family l2vpn evpn"), lines.index("exit-address-family")
    assert af < lines.index("advertise-all-vni") < end


def test_rr_bgpd_config():
    rr = _instances()["dci"]
    conf = frr_config("bgpd", rr)
    lines = _lines(conf)
    for must in ("router bgp 65000", "bgp router-id 198.18.250.0", "bgp cluster-id 198.18.250.0",
                 "neighbor VTEPS remote-as 65000", "neighbor VTEPS update-source 198.18.250.0",
                 "address-family l2vpn evpn", "neighbor VTEPS activate", "neighbor VTEPS route-reflector-client"):
        assert must in lines, f"{must!r} missing from:\n{conf}"
    for vtep in rr.peers:
        assert f"neighbor {vtep} peer-group VTEPS" in lines
    assert "advertise-all-vni" not in lines  # the RR has no VNI of its own


def test_zebra_config_is_minimal():
    for inst in _instances().values():
        conf = frr_config("zebra", inst, log_file="/run/roamnet/x/frr/hv1/zebra.log")
        lines = _lines(conf)
        assert f"hostname {inst.node}" in lines
        assert "log file /run/roamnet/x/frr/hv1/zebra.log informational" in lines
        assert not any(ln.startswith(("router ", "neighbor ", "interface ", "ip route")) for ln in lines)


def test_debug_adds_debug_commands_only():
    v = _instances()["hv1"]
    plain, debug = set(_lines(frr_config("bgpd", v))), set(_lines(frr_config("bgpd", v, debug=True)))
    assert plain <= debug and all(ln.startswith("debug ") for ln in debug - plain)


def test_no_address_outside_the_lab_range():
    for inst in _instances().values():
        for daemon in DAEMONS:
            conf = frr_config(daemon, inst, log_file=f"/run/roamnet/two-dc/frr/{inst.node}/{daemon}.log")
            found = IPV4.findall(conf)
            if daemon == "bgpd":
                assert found, conf
            outside = [a for a in found if ipaddress.ip_address(a) not in LAB_RANGE]
            assert not outside, f"{daemon} of {inst.node}: {outside}"


@pytest.mark.parametrize("field,value", [("address", "198.20.0.1"), ("peers", ("203.0.113.1",))])
def test_config_refuses_addresses_outside_the_lab_range(field: str, value):
    v = _instances()["hv1"]
    bad = FrrInstance(**{**v.__dict__, field: value})
    with pytest.raises(ValueError, match="outside the lab range"):
        frr_config("bgpd", bad)


def test_config_refuses_unknown_daemon_and_role():
    v = _instances()["hv1"]
    with pytest.raises(ValueError):
        frr_config("ospfd", v)
    with pytest.raises(ValueError):
        frr_config("bgpd", FrrInstance(**{**v.__dict__, "role": "leaf"}))


def test_config_is_deterministic():
    v = _instances()["hv2"]
    assert frr_config("bgpd", v) == frr_config("bgpd", v)


def test_daemon_argv_keeps_everything_in_the_instance_dir():
    d = Path("/run/roamnet/lab/frr/hv1")
    for daemon in DAEMONS:
        argv = daemon_argv(Path("/usr/lib/frr"), daemon, d)
        assert argv[0] == f"/usr/lib/frr/{daemon}"
        opts = {a: b for a, b in zip(argv[1:], argv[2:]) if a.startswith("-") and not b.startswith("-")}
        assert opts["-f"] == f"{d}/{daemon}.conf"
        assert opts["-i"] == f"{d}/{daemon}.pid"
        assert opts["-z"] == f"{d}/zserv.api"  # bgpd talks to its own zebra only
        assert opts["--vty_socket"] == str(d)
        assert opts["-P"] == "0"  # no TCP vty
        assert opts["-u"] == "root"
        assert "-d" not in argv and "--daemon" not in argv  # foreground: the pid we record is the daemon
        assert "-N" not in argv  # a pathspace would create /var/run/frr/<name>
    assert "-s" in daemon_argv(Path("/usr/lib/frr"), "zebra", d)


# ---------------------------------------------------------------- the pid journal, with stand-ins


def _stand_in(tmp: Path, daemon: str, instdir: str) -> subprocess.Popen:
    """A process whose argv looks like FRR's `daemon` of the instance in `instdir` (a sleeping python)."""
    return subprocess.Popen([str(tmp / daemon), "-c", "import time; time.sleep(60)", "--vty_socket", instdir],
                            executable=sys.executable, stdin=subprocess.DEVNULL)


def _journal(workdir: Path, rows: list[tuple[str, int, str]]) -> None:
    procs = [{"label": f"{d}@rn-t-{Path(i).name}", "daemon": d, "pid": pid, "instdir": i, "running": True}
             for d, pid, i in rows]
    (workdir / JOURNAL).write_text(json.dumps({"processes": procs}))


def _wait_cmdline(p: subprocess.Popen, needle: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if needle in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.01)


def test_is_instance_process(tmp_path: Path):
    p = _stand_in(tmp_path, "bgpd", "/run/roamnet/t/frr/hv1")
    try:
        _wait_cmdline(p, "--vty_socket")
        assert is_instance_process(p.pid, "bgpd", "/run/roamnet/t/frr/hv1")
        assert not is_instance_process(p.pid, "zebra", "/run/roamnet/t/frr/hv1")
        assert not is_instance_process(p.pid, "bgpd", "/run/roamnet/t/frr/hv2")
        assert not is_instance_process(os.getpid(), "bgpd", "/run/roamnet/t/frr/hv1")
    finally:
        p.kill()
        p.wait(5)
    assert not is_instance_process(p.pid, "bgpd", "/run/roamnet/t/frr/hv1")  # gone


def test_kill_recorded_ends_only_verified_processes(tmp_path: Path):
    mine = _stand_in(tmp_path, "bgpd", "/run/roamnet/t/frr/hv1")
    other = _stand_in(tmp_path, "bgpd", "/run/roamnet/t/frr/hv9")  # another instance's (or a reused pid)
    try:
        for p in (mine, other):
            _wait_cmdline(p, "--vty_socket")
        # the journal says `other`'s pid is zebra of hv2: its cmdline says otherwise, so it is spared
        _journal(tmp_path, [("bgpd", mine.pid, "/run/roamnet/t/frr/hv1"),
                            ("zebra", other.pid, "/run/roamnet/t/frr/hv2")])
        ended = kill_recorded(tmp_path)
        assert ended == [f"bgpd@rn-t-hv1 (pid {mine.pid})"]
        assert mine.wait(5) is not None
        assert other.poll() is None, "kill_recorded ended a process its journal did not truly describe"
        rows = json.loads((tmp_path / JOURNAL).read_text())["processes"]
        assert [r["running"] for r in rows] == [False, False]
        assert kill_recorded(tmp_path) == []  # idempotent
    finally:
        for p in (mine, other):
            if p.poll() is None:
                p.kill()
            p.wait(5)


def test_kill_recorded_without_journal(tmp_path: Path):
    assert kill_recorded(tmp_path) == []
