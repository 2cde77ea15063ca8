"""OVN as the lab's control plane (the second baseline): a VM moved between data centers under a 1 kHz
UDP stream with each of the three move strategies, reachable before and after; nothing of OVN or Open
vSwitch left behind (checked by pid in /proc, and by namespace); crash clean-up by recorded pid only.

Needs Debian's openvswitch-switch, ovn-central and ovn-host (skipped without them unless the lab is
required). Every daemon runs inside a lab namespace; the host's OVS/OVN directories must stay as they were.
No timing assertions: the loss of each move is printed, not judged.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import netns_inode, proc_netns_inode  # noqa: E402

from roamnet.baselines.ovn import JOURNAL, STRATEGIES, Ovn, OvnError, kill_recorded

pytestmark = pytest.mark.usefixtures("ovn_required")

DCS = {"dc1": ["hv1", "hv2"], "dc2": ["hv3"]}
VMS = {"vm1": ("hv1", "web"), "vm2": ("hv2", "web")}
CUGS = {"web": (10100, 1)}
ROLES_PER_CHASSIS = ("ovsdb", "vswitchd", "controller")


def recorded(workdir: Path) -> list[dict]:
    """The pid journal the OVN control plane keeps, read as a file."""
    return json.loads((Path(workdir) / JOURNAL).read_text())["processes"]


def still_runs(row: dict) -> bool:
    """Independent of roamnet: does pid still run that binary with that pid file (per /proc)?"""
    try:
        argv = [a.decode() for a in Path(f"/proc/{row['pid']}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return False
    return bool(argv) and Path(argv[0]).name == row["binary"] and f"--pidfile={row['pidfile']}" in argv


def ping(host: Any, name: str, src: str, dst_ip: str, count: int = 3) -> None:
    host.run(["ip", "netns", "exec", f"rn-{name}-{src}", "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst_ip])


def br_int_ports(host: Any, cp: Ovn, server: str) -> list[str]:
    d = cp.dir(server)
    out = host.run(["ovs-vsctl", f"--db=unix:{d / 'ovsdb.sock'}", "list-ports", "br-int"]).stdout
    return [p for p in out.split() if not p.startswith("ovn-")]  # minus the Geneve tunnels


@contextlib.contextmanager
def ovn_lab(topo: dict[str, Any], lab_namespaces: Any, host: Any, cp: Ovn) -> Iterator[Any]:
    """A lab whose control plane is OVN; always brought down; then none of its namespaces remains (the
    central one included)."""
    from roamnet.intent.model import parse_topology
    from roamnet.lab.engine import Lab

    planned = lab_namespaces(topo)
    lab = Lab(parse_topology(topo, f"<{topo['name']}>"), control_plane=cp)
    try:
        lab.up(converge_timeout=30)
        yield lab
    finally:
        lab.down()
        left = sorted(ns for ns in host.netns_list() if ns in planned or ns.startswith(f"rn-{topo['name']}-"))
        assert not left, f"namespaces left after lab.down(): {left}"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ovn_move_under_stream(strategy: str, host: Any, lab_name: Any, make_topology: Any, lab_namespaces: Any,
                               traffic: Any, addr: Any) -> None:
    name = lab_name({"classic": "t-ovn-cl", "multichassis-rarp": "t-ovn-rarp", "multichassis": "t-ovn-mc"}[strategy])
    topo = make_topology(name, DCS, VMS, CUGS)
    ip1 = addr.ip(topo, "vm1")
    cp = Ovn(strategy)
    with ovn_lab(topo, lab_namespaces, host, cp) as lab:
        rows = recorded(cp.workdir)
        central = f"rn-{name}-ovn.central"
        assert sorted((r["role"], r["ns"]) for r in rows) == sorted(
            [(role, central) for role in ("nb", "sb", "northd")]
            + [(role, f"rn-{name}-{s}") for s in ("hv1", "hv2", "hv3") for role in ROLES_PER_CHASSIS])
        for r in rows:  # each daemon runs in its lab namespace, none in the host's
            assert still_runs(r), r
            assert proc_netns_inode(r["pid"]) == netns_inode(r["ns"]) != proc_netns_inode(os.getpid())
        assert Path(cp.workdir) == Path(f"/run/roamnet/{name}/ovn")
        assert oct(os.stat(cp.workdir).st_mode & 0o777) == "0o700"
        # the underlay address moved to br-phy (OVS's userspace tunnels use it), nothing else has it
        addrs = {a["ifname"]: [i["local"] for i in a["addr_info"]] for a in host.ip_json(f"rn-{name}-hv1", "addr")}
        assert addrs["br-phy"] == ["198.18.1.1"] and addrs["uplink"] == []

        assert cp.located(lab, "vm1", "hv1") and not cp.located(lab, "vm1", "hv3")
        assert br_int_ports(host, cp, "hv1") == ["vm1-e0"]
        ping(host, name, "vm2", ip1)  # reachable before the move (and ARP both ways)

        start_at = time.monotonic() + 1.0
        flow = traffic(lab, "in", "udp", "vm2", "vm1", 5501, start_at, 4.0, rate=1000)
        time.sleep(max(0.0, start_at + 1.0 - time.monotonic()))
        there = lab.migrate("vm1", "hv3", pause_ms=0, wait=10)
        assert there["mode"] == f"ovn-{strategy}"
        assert there["converged_ms"] is not None, f"OVN never delivered vm1's traffic on hv3: {there}"
        # activation (hv3 delivers) came first, then every chassis caught up: read back with OVN's own tools
        assert there["mapped_ms"] is not None and there["programmed_ms"] is not None, there
        assert there["mapped_ms"] <= there["converged_ms"], there
        nb_cfg = int(host.run(["ovn-nbctl", f"--db=unix:{cp.central / 'nb.sock'}", "get", "NB_Global", ".",
                               "nb_cfg"]).stdout)
        hv_cfg = json.loads(host.run(["ovn-sbctl", f"--db=unix:{cp.central / 'sb.sock'}", "-f", "json",
                                      "--columns=name,nb_cfg", "list", "Chassis_Private"]).stdout)["data"]
        assert sorted(n for n, _ in hv_cfg) == ["hv1", "hv2", "hv3"] and all(c >= nb_cfg > 0 for _, c in hv_cfg), \
            (nb_cfg, hv_cfg)
        assert cp.located(lab, "vm1", "hv3") and not cp.located(lab, "vm1", "hv1")
        assert br_int_ports(host, cp, "hv1") == [] and br_int_ports(host, cp, "hv3") == ["vm1-e0"]
        time.sleep(max(0.0, start_at + 2.5 - time.monotonic()))
        back = lab.migrate("vm1", "hv1", pause_ms=0, wait=10)
        assert back["converged_ms"] is not None, f"OVN never delivered vm1's traffic back on hv1: {back}"
        result = flow.finish([there, back])
        print(f"\nOVN {strategy}: stream vm2 → vm1 at 1 kHz: sent {result.sent}, lost {result.lost} over two "
              f"moves (hv1 → hv3 converged {there['converged_ms']} ms, back {back['converged_ms']} ms; "
              f"prepared {there.get('prepared_ms')} / {back.get('prepared_ms')} ms)", file=sys.stderr)
        assert result.survived, f"the stream did not survive the moves: {result.to_json()}"
        assert result.received > 0.5 * result.sent, result.to_json()
        # what the userspace datapath dropped, per chassis and port: every port it reads has a counter
        dp = cp.datapath_counters()
        assert sorted(dp) == ["hv1", "hv2", "hv3"], dp
        assert {"uplink", "vm1-e0"} <= set(dp["hv1"]["socket_drops"]) and "vm2-e0" in dp["hv2"]["socket_drops"], dp
        assert all(v >= 0 for row in dp.values() for v in row["socket_drops"].values()), dp
        assert dp["hv2"]["cpu_ms"] > 0 and dp["hv2"]["runq_wait_ms"] >= 0, dp  # vm2's sender is on hv2
        print(f"OVN {strategy}: datapath drops {dict((n, r['socket_drops']) for n, r in dp.items())}",
              file=sys.stderr)
        ping(host, name, "vm2", ip1)  # reachable after the moves
        assert cp.located(lab, "vm1", "hv1")
    left = [r["label"] for r in rows if still_runs(r)]
    assert not left, f"OVN/OVS processes of lab {name} still run after lab.down(): {left}"
    assert not Path(f"/run/roamnet/{name}").exists(), "the default workdir was not removed"


def test_ovn_crash_cleanup_by_recorded_pid(host: Any, lab_name: Any, make_topology: Any, lab_namespaces: Any
                                           ) -> None:
    """kill_recorded (what `lab/state.cleanup` runs after a crash) ends exactly the recorded processes,
    checked in /proc: a process that looks like another lab's ovsdb-server survives."""
    name = lab_name("t-ovn-crash")
    topo = make_topology(name, {"dc1": ["hv1"], "dc2": ["hv2"]}, {"vm1": ("hv1", "web")}, CUGS)
    decoy = subprocess.Popen(["ovsdb-server", "-c", "import time; time.sleep(120)",
                              f"--pidfile=/run/roamnet/{name}x/ovn/hv1/ovsdb.pid"],
                             executable=sys.executable, stdin=subprocess.DEVNULL)
    try:
        cp = Ovn("classic")
        with ovn_lab(topo, lab_namespaces, host, cp):
            rows = recorded(cp.workdir)
            assert len(rows) == 3 + 2 * len(ROLES_PER_CHASSIS) and all(still_runs(r) for r in rows)
            ended = kill_recorded(cp.workdir)
            assert len(ended) == len(rows)
            assert not [r["label"] for r in rows if still_runs(r)]
            with pytest.raises(OvnError, match="exited"):
                cp.check_alive()  # the control plane notices, naming the daemon
        assert decoy.poll() is None, "kill_recorded ended a process that is not its own"
        assert not Path(f"/run/roamnet/{name}").exists()
    finally:
        decoy.kill()
        decoy.wait(5)
