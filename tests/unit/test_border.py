"""FRR BGP on the border routers (route health injection to the WAN), the pure parts: which instances a
lab has, their configs; and roamnet.wan.frr's shared machinery as border.py uses it (journal, kill_recorded,
stop by our own pids, the missing-binary error) against stand-in processes this test starts itself."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from roamnet.baselines import evpn
from roamnet.intent.model import parse_topology
from roamnet.lab.plan import build_plan
from roamnet.wan import frr
from roamnet.wan.border import (
    WAN_ASN,
    BorderBgp,
    BorderError,
    BorderInstance,
    Peer,
    best_paths,
    border_config,
    plan_border_instances,
)
from roamnet.wan.frr import DAEMONS, JOURNAL, FrrError, Proc

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")

TOPO_DATA: dict[str, Any] = {
    "name": "bt",
    "tenants": {"t1": {"l3vni": 50001}, "t2": {"l3vni": 50002}},
    "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}, "dc2": {"servers": ["hv3"], "border": "edge2"}},
    "cugs": {
        "web": {"vni": 10100, "subnet": "198.19.1.0/24", "gateway": "198.19.1.1", "tenant": "t1"},
        "db": {"vni": 10200, "subnet": "198.19.2.0/24", "gateway": "198.19.2.1", "tenant": "t1"},
        "ops": {"vni": 10400, "subnet": "198.19.4.0/24", "gateway": "198.19.4.1", "tenant": "t2"},
        "lab": {"vni": 10300, "subnet": "198.19.3.0/24"},  # not routed: no tenant
    },
    "vms": {"vm1": {"server": "hv1", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:11", "ip": "198.19.1.11"}]}},
}
TOPO = parse_topology(TOPO_DATA, "<bt>")
PLAN = build_plan(TOPO)


def _instances() -> dict[str, BorderInstance]:
    return {i.node: i for i in plan_border_instances(PLAN, TOPO)}


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


def _commands(text: str) -> list[str]:
    return [ln for ln in _lines(text) if ln and not ln.startswith("!")]


# ---------------------------------------------------------------- instances


def test_one_instance_per_border_and_tenant_then_the_wan():
    insts = plan_border_instances(PLAN, TOPO)
    assert [i.node for i in insts] == ["dc1br.t-t1", "dc1br.t-t2", "edge2.t-t1", "edge2.t-t2", "wan"]
    assert [i.role for i in insts] == ["border"] * 4 + ["wan"]
    for i in insts[:4]:
        assert i.ns == PLAN.vrf(i.border, i.tenant).ns == f"rn-bt-{i.border}.t-{i.tenant}"
        assert i.label("bgpd") == f"bgpd@{i.ns}"
    assert insts[-1].ns == PLAN.nodes["wan"].ns == "rn-bt-wan"


def test_border_addresses_asns_and_neighbor():
    inst = _instances()
    for node, asn in (("dc1br.t-t1", 65101), ("dc1br.t-t2", 65101), ("edge2.t-t1", 65102), ("edge2.t-t2", 65102)):
        b = inst[node]
        mine, theirs = PLAN.handoff(b.border, b.tenant)
        here, there = mine.address.split("/")[0], theirs.address.split("/")[0]
        assert ipaddress.ip_address(here) in ipaddress.ip_network("198.18.251.0/24")
        assert b.asn == asn
        assert b.router_id == here  # router-id and update-source: the border side of the handoff
        assert b.peers == (Peer(there, WAN_ASN, "wan", here),)
        assert ipaddress.ip_interface(mine.address).network == ipaddress.ip_interface(theirs.address).network
    assert inst["dc1br.t-t1"].announce == ("198.19.1.0/24", "198.19.2.0/24")
    assert inst["edge2.t-t2"].announce == ("198.19.4.0/24",)
    assert inst["dc1br.t-t1"].dc == "dc1" and inst["edge2.t-t1"].dc == "dc2"


def test_wan_instance_peers_with_every_handoff():
    inst = _instances()
    wan = inst["wan"]
    assert wan.asn == 65000 and wan.role == "wan"
    borders = [i for i in inst.values() if i.role == "border"]
    assert {(p.address, p.asn, p.border, p.tenant) for p in wan.peers} == {
        (b.router_id, b.asn, b.border, b.tenant) for b in borders}
    for p in wan.peers:  # update-source: the WAN side of that very handoff
        b = inst[p.name]
        assert p.local == b.peers[0].address
        assert p.local == PLAN.handoff(b.border, b.tenant)[1].address.split("/")[0]
    assert wan.router_id == wan.peers[0].local
    assert len({p.local for p in wan.peers}) == len(wan.peers)


def test_no_tenants_no_instances():
    data = {k: v for k, v in TOPO_DATA.items() if k != "tenants"}
    data["cugs"] = {"lab": {"vni": 10300, "subnet": "198.19.3.0/24"}}
    data["vms"] = {}
    topo = parse_topology(data, "<bt>")
    assert plan_border_instances(build_plan(topo), topo) == []


# ---------------------------------------------------------------- configs


def test_border_bgpd_config():
    b = _instances()["dc1br.t-t1"]
    conf = border_config("bgpd", b, log_file="/run/roamnet/bt/border/dc1br.t-t1/bgpd.log")
    lines = _lines(conf)
    assert _commands(conf)[0] == "frr defaults datacenter"  # must come first
    for must in ("hostname dc1br.t-t1", "router bgp 65101", "bgp router-id 198.18.251.1",
                 "no bgp ebgp-requires-policy", "no bgp default ipv4-unicast",
                 "neighbor 198.18.251.0 remote-as 65000", "neighbor 198.18.251.0 update-source 198.18.251.1",
                 "neighbor 198.18.251.0 timers 1 3", "neighbor 198.18.251.0 timers connect 1",
                 "neighbor 198.18.251.0 advertisement-interval 0",
                 "ip prefix-list RN-TENANT-ROUTES seq 5 permit 198.19.1.0/24 le 32",
                 "ip prefix-list RN-TENANT-ROUTES seq 10 permit 198.19.2.0/24 le 32",
                 "ip prefix-list RN-DEFAULT seq 5 permit 0.0.0.0/0",
                 "route-map RN-ANNOUNCE permit 10", "match ip address prefix-list RN-TENANT-ROUTES",
                 "route-map RN-FROM-WAN permit 10", "match ip address prefix-list RN-DEFAULT"):
        assert must in lines, f"{must!r} missing from:\n{conf}"
    af, end = lines.index("address-family ipv4 unicast"), lines.index("exit-address-family")
    for inside in ("redistribute kernel route-map RN-ANNOUNCE", "neighbor 198.18.251.0 activate",
                   "neighbor 198.18.251.0 route-map RN-FROM-WAN in", "neighbor 198.18.251.0 route-map RN-ANNOUNCE out"):
        assert af < lines.index(inside) < end, inside
    assert not any("import-table" in ln for ln in lines)  # zebra must never take in table 100
    assert not any("default-originate" in ln for ln in lines)
    assert not any(ln.startswith("redistribute") and "kernel" not in ln for ln in lines)


def test_wan_bgpd_config():
    wan = _instances()["wan"]
    conf = border_config("bgpd", wan)
    lines = _lines(conf)
    assert _commands(conf)[0] == "frr defaults datacenter"
    for must in ("router bgp 65000", f"bgp router-id {wan.router_id}", "no bgp ebgp-requires-policy"):
        assert must in lines, must
    af = lines.index("address-family ipv4 unicast")
    for p in wan.peers:
        for must in (f"neighbor {p.address} remote-as {p.asn}", f"neighbor {p.address} update-source {p.local}",
                     f"neighbor {p.address} timers 1 3", f"neighbor {p.address} timers connect 1",
                     f"neighbor {p.address} advertisement-interval 0"):
            assert must in lines, must
        assert lines.index(f"neighbor {p.address} default-originate") > af
        assert lines.index(f"neighbor {p.address} activate") > af
    assert not any(ln.startswith("redistribute") for ln in lines)  # the WAN announces nothing of its own
    assert "ip prefix-list RN-TENANTS seq 5 permit 198.19.0.0/16 le 32" in lines


def test_zebra_config_is_minimal():
    for inst in _instances().values():
        conf = border_config("zebra", inst, log_file=f"/run/roamnet/bt/border/{inst.node}/zebra.log")
        lines = _lines(conf)
        assert f"hostname {inst.node}" in lines
        assert f"log file /run/roamnet/bt/border/{inst.node}/zebra.log informational" in lines
        assert not any(ln.startswith(("router ", "neighbor ", "interface ", "ip route", "ip import-table",
                                      "frr defaults")) for ln in lines)


def test_prefix_lists_edge_cases():
    b = _instances()["dc1br.t-t1"]
    host = BorderInstance(**{**b.__dict__, "announce": ("198.19.1.7/32",)})
    assert "ip prefix-list RN-TENANT-ROUTES seq 5 permit 198.19.1.7/32" in _lines(border_config("bgpd", host))
    empty = BorderInstance(**{**b.__dict__, "announce": ()})
    lines = _lines(border_config("bgpd", empty))  # a tenant without routed CUGs announces nothing
    assert "ip prefix-list RN-TENANT-ROUTES seq 5 deny any" in lines
    assert not any("RN-TENANT-ROUTES" in ln and "permit" in ln for ln in lines)


def test_debug_adds_debug_commands_only():
    for inst in _instances().values():
        for daemon in DAEMONS:
            plain = set(_lines(border_config(daemon, inst)))
            debug = set(_lines(border_config(daemon, inst, debug=True)))
            assert plain <= debug and all(ln.startswith("debug ") for ln in debug - plain)


def test_no_address_outside_the_lab_range():
    for inst in _instances().values():
        for daemon in DAEMONS:
            conf = border_config(daemon, inst, log_file=f"/run/roamnet/bt/border/{inst.node}/{daemon}.log")
            found = [a for a in IPV4.findall(conf) if a != "0.0.0.0"]  # the default route's prefix-list
            if daemon == "bgpd":
                assert found, conf
            assert not [a for a in found if ipaddress.ip_address(a) not in LAB_RANGE], f"{daemon} of {inst.node}"


@pytest.mark.parametrize("change", [
    {"router_id": "198.20.0.1"},
    {"peers": (Peer("203.0.113.1", 65000, "wan", "198.18.251.1"),)},
    {"peers": (Peer("198.18.251.0", 65000, "wan", "203.0.113.1"),)},
    {"announce": ("203.0.113.0/24",)},
])
def test_config_refuses_addresses_outside_the_lab_range(change: dict):
    b = BorderInstance(**{**_instances()["dc1br.t-t1"].__dict__, **change})
    with pytest.raises(ValueError, match="outside the lab range"):
        border_config("bgpd", b)


def test_config_refuses_unknown_daemon_role_and_bad_peers():
    b = _instances()["dc1br.t-t1"]
    with pytest.raises(ValueError):
        border_config("ospfd", b)
    with pytest.raises(ValueError):
        border_config("bgpd", BorderInstance(**{**b.__dict__, "role": "leaf"}))
    with pytest.raises(ValueError, match="no BGP peers"):
        border_config("bgpd", BorderInstance(**{**b.__dict__, "peers": ()}))
    with pytest.raises(ValueError, match="exactly one BGP peer"):
        border_config("bgpd", BorderInstance(**{**b.__dict__, "peers": b.peers * 2}))


def test_config_is_deterministic():
    w = _instances()["wan"]
    assert border_config("bgpd", w) == border_config("bgpd", w)


# ---------------------------------------------------------------- reading the WAN's BGP table


def test_best_paths():
    table = {"routes": {
        "198.19.1.0/24": [
            {"valid": True, "peerId": "198.18.251.3", "nexthops": [{"ip": "198.18.251.3"}]},
            {"valid": True, "bestpath": True, "peerId": "198.18.251.1", "nexthops": [{"ip": "198.18.251.1"}]}],
        "198.19.1.11/32": [{"valid": True, "bestpath": {"overall": True}, "peerId": "198.18.251.3"}],
        "198.19.9.0/24": [{"valid": True, "bestpath": True, "peerId": "198.18.251.99"}],  # not a handoff
        "198.19.4.0/24": [{"valid": True, "peerId": "198.18.251.5"}],  # no best path
    }}
    peers = {"198.18.251.1": "dc1br", "198.18.251.3": "edge2", "198.18.251.5": "dc1br"}
    assert best_paths(table, peers) == {"198.19.1.0/24": "dc1br", "198.19.1.11/32": "edge2"}
    assert best_paths({}, peers) == {}


# ---------------------------------------------------------------- shared machinery (roamnet.wan.frr)


def test_error_classes_share_a_base():
    assert issubclass(BorderError, FrrError) and issubclass(evpn.EvpnError, FrrError)
    assert not issubclass(BorderError, evpn.EvpnError)


def test_evpn_and_border_share_frr_machinery():
    # no re-exports: FRR's process machinery (daemon_argv, is_instance_process, DAEMONS...) is wan.frr's only
    for name in ("FrrEvpn", "FrrInstance", "EvpnError", "kill_recorded", "plan_instances", "frr_config", "read_journal"):
        assert hasattr(evpn, name), name
    assert not hasattr(evpn, "is_instance_process")
    assert issubclass(evpn.FrrEvpn, frr.FrrProcesses) and issubclass(BorderBgp, frr.FrrProcesses)


def test_default_workdir_and_name():
    bb = BorderBgp()
    assert bb.name == "border-bgp"
    assert bb.default_workdir("lab1") == Path("/run/roamnet/lab1/border")
    assert evpn.FrrEvpn().default_workdir("lab1") == Path("/run/roamnet/lab1/frr")
    assert bb.running() == [] and bb.stop() == []


def _stand_in(tmp: Path, daemon: str, instdir: str) -> subprocess.Popen:
    """A process whose argv looks like FRR's `daemon` of the instance in `instdir` (a sleeping python)."""
    return subprocess.Popen([str(tmp / daemon), "-c", "import time; time.sleep(60)", "--vty_socket", instdir],
                            executable=sys.executable, stdin=subprocess.DEVNULL)


def _wait_cmdline(p: subprocess.Popen, needle: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if needle in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.01)


def _lab(name: str = "bt") -> Any:
    messages: list[str] = []
    return SimpleNamespace(name=name, plan=PLAN, topo=TOPO, progress=messages.append, messages=messages)


def test_missing_binary_names_the_instance(tmp_path: Path):
    empty = tmp_path / "bin"
    empty.mkdir()
    workdir = tmp_path / "w" / "border"
    bb = BorderBgp(workdir=workdir, frr_bin_dir=empty)
    with pytest.raises(BorderError, match=re.escape(
            f"zebra in rn-bt-dc1br.t-t1: no executable {empty}/zebra (is FRR installed? "
            "Debian: apt-get install frr)")):
        bb.start(_lab())
    assert bb.running() == [] and bb.processes() == []
    assert not workdir.exists() and not (tmp_path / "w").exists()  # it created both, it removed both


def test_start_refuses_while_earlier_processes_live(tmp_path: Path):
    workdir = tmp_path / "border"
    workdir.mkdir()
    instdir = str(workdir / "dc1br.t-t1")
    p = _stand_in(tmp_path, "bgpd", instdir)
    try:
        _wait_cmdline(p, "--vty_socket")
        (workdir / JOURNAL).write_text(json.dumps({"processes": [
            {"label": "bgpd@rn-bt-dc1br.t-t1", "daemon": "bgpd", "pid": p.pid, "instdir": instdir}]}))
        bb = BorderBgp(workdir=workdir, frr_bin_dir=tmp_path)
        with pytest.raises(BorderError, match=r"still alive \(bgpd@rn-bt-dc1br.t-t1\).*kill_recorded"):
            bb.start(_lab())
        assert p.poll() is None, "start() ended a process it did not start"
        assert workdir.exists()  # it existed before: never removed
        assert frr.kill_recorded(workdir) == [f"bgpd@rn-bt-dc1br.t-t1 (pid {p.pid})"]
        assert p.wait(5) is not None
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def test_stop_ends_exactly_its_own_processes(tmp_path: Path):
    """stop() signals the pids it started (bgpd, then zebra) and updates the journal; others live on."""
    bb = BorderBgp(workdir=tmp_path)
    bb.prepare_workdir("bt")
    bb.instances = plan_border_instances(PLAN, TOPO)[:2]
    mine, others = [], []
    try:
        for inst in bb.instances:
            for daemon in DAEMONS:
                d = bb.instdir(inst)
                p = _stand_in(tmp_path, daemon, str(d))
                mine.append(p)
                bb._procs.append(Proc(inst, daemon, p, d, [daemon], time.time()))
        bb.write_journal()
        others.append(_stand_in(tmp_path, "bgpd", str(tmp_path / "dc1br.t-t1x")))  # looks alike, is not ours
        rows = json.loads((tmp_path / JOURNAL).read_text())["processes"]
        assert sorted(r["pid"] for r in rows) == sorted(p.pid for p in mine) and all(r["running"] for r in rows)
        stopped = bb.stop()
        assert stopped == ["bgpd@rn-bt-dc1br.t-t1", "bgpd@rn-bt-dc1br.t-t2",
                           "zebra@rn-bt-dc1br.t-t1", "zebra@rn-bt-dc1br.t-t2"]
        assert all(p.poll() is not None for p in mine)
        assert others[0].poll() is None
        rows = json.loads((tmp_path / JOURNAL).read_text())["processes"]
        assert not any(r["running"] for r in rows)
        assert tmp_path.exists()  # a workdir it did not create stays
    finally:
        for p in mine + others:
            if p.poll() is None:
                p.kill()
            p.wait(5)


def test_kill_recorded_on_a_border_workdir(tmp_path: Path):
    instdir = str(tmp_path / "edge2.t-t2")
    mine = _stand_in(tmp_path, "zebra", instdir)
    other = _stand_in(tmp_path, "zebra", str(tmp_path / "wan"))
    try:
        for p in (mine, other):
            _wait_cmdline(p, "--vty_socket")
        (tmp_path / JOURNAL).write_text(json.dumps({"processes": [
            {"label": "zebra@rn-bt-edge2.t-t2", "daemon": "zebra", "pid": mine.pid, "instdir": instdir},
            {"label": "bgpd@rn-bt-wan", "daemon": "bgpd", "pid": other.pid, "instdir": str(tmp_path / "wan")}]}))
        assert frr.kill_recorded(tmp_path) == [f"zebra@rn-bt-edge2.t-t2 (pid {mine.pid})"]
        assert mine.wait(5) is not None
        assert other.poll() is None  # its cmdline says zebra, the journal bgpd: spared
        assert frr.kill_recorded(tmp_path) == []
    finally:
        for p in (mine, other):
            if p.poll() is None:
                p.kill()
            p.wait(5)


def test_unreadable_journal_raises_the_users_error(tmp_path: Path):
    (tmp_path / JOURNAL).write_text("{not json")
    with pytest.raises(FrrError, match="unreadable pid journal"):
        frr.kill_recorded(tmp_path)
    with pytest.raises(evpn.EvpnError, match="unreadable pid journal"):
        evpn.kill_recorded(tmp_path)
    with pytest.raises(BorderError, match="unreadable pid journal"):
        BorderBgp(workdir=tmp_path).start(_lab())
