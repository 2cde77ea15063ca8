"""Make-before-break moves on the real kernel: during a prepared move the VM's frames reach both the
source and the destination server (captured on both); a move never activated rolls back after its
timeout; a move activated by the VM's RARP completes with the old location withdrawn everywhere."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Sniffer
from test_pruning import flood_dsts, remote_mac_dst, vxlan_devs, wait_for

WEB = 10100


def frames_to(mac: str, outgoing: bool):
    """IPv4 frames to `mac`, sent (outgoing=True) or received by the device."""
    return lambda e, out: out == outgoing and e.dst == mac and e.type == 0x0800


def ping(host: Any, lab: Any, src: str, dst_ip: str, count: int, interval: float = 0.02) -> int:
    """Echo replies `src` got from `dst_ip` (iputils ping in the VM's namespace)."""
    ns = f"rn-{lab.name}-{src}"
    out = host.run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                    "-W", "1", dst_ip], timeout=30, check=False).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


@pytest.fixture
def topo(lab_name, make_topology, lab_namespaces):
    def make(base: str) -> dict:
        # vm1 moves hv1 (dc1) -> hv2 (dc2, hosting nothing of the CUG yet); vm3 on hv3 sends to it
        t = make_topology(lab_name(base), datacenters={"dc1": ["hv1"], "dc2": ["hv2", "hv3"]},
                          vms={"vm1": ("hv1", "web"), "vm3": ("hv3", "web")})
        lab_namespaces(t)
        return t
    return make


def test_prepared_move_delivers_to_both_servers(host, lab_up, topo, addr):
    t = topo("t-mbb-dual")
    mac, ip = addr.mac(t, "vm1"), addr.ip(t, "vm1")
    with lab_up(t) as lab:
        vtep = {s: lab.plan.nodes[s].vtep for s in ("hv1", "hv2", "hv3")}
        assert ping(host, lab, "vm3", ip, 3) == 3
        assert remote_mac_dst(host, lab.plan.nodes["hv3"].ns, WEB, mac) == {vtep["hv1"]}

        lab.prepare("vm1", "hv2", timeout=30)
        ns = {s: lab.plan.nodes[s].ns for s in ("hv1", "hv2", "hv3")}
        # the sender's NVE: no unicast entry for the moving MAC, both servers in its flood list
        assert remote_mac_dst(host, ns["hv3"], WEB, mac) == set()
        assert {vtep["hv1"], vtep["hv2"]} <= flood_dsts(host, ns["hv3"], WEB)
        assert vxlan_devs(host, ns["hv2"], WEB)  # the destination has the segment before the VM is there

        at_src = Sniffer(ns["hv1"], "vm1-e0", frames_to(mac, outgoing=True), seconds=5.0)  # to the running VM
        at_dst = Sniffer(ns["hv2"], f"vx{WEB}", frames_to(mac, outgoing=False), seconds=5.0)  # the copy there
        time.sleep(0.2)
        replies = ping(host, lab, "vm3", ip, 30)
        n_src, n_dst = len(at_src.stop()), len(at_dst.stop())
        assert replies == 30, "the VM, still on the source, answers every echo"
        assert n_src >= 30 and n_dst >= 30, f"frames to {mac}: {n_src} at the source's port, {n_dst} at the destination"

        # the VM resumes on hv2; its RARP activates the move; completing withdraws the old location
        lab.resume("vm1", pause_ms=0)
        snap = lab.mapping.wait_for(lambda s: s.binding_of("vm1/0").nve == "hv2", timeout=5)
        assert snap is not None, "the VM's announcement on its new port did not activate the move"
        assert wait_for(lambda: lab.mapping.statuses.all()["hv2"].announcements_seen > 0, timeout=5), \
            "hv2's agent published no announcement seen"
        assert snap.binding_of("vm1/0").seq == 1
        lab.complete("vm1")
        assert lab.mapping.snapshot().migrations == {}
        assert lab.wait_converged(5)
        assert remote_mac_dst(host, ns["hv3"], WEB, mac) == {vtep["hv2"]}
        assert wait_for(lambda: not vxlan_devs(host, ns["hv1"], WEB), timeout=5), "the source kept the segment"
        assert wait_for(lambda: vtep["hv1"] not in flood_dsts(host, ns["hv3"], WEB), timeout=5)
        assert not [l for l in host.ip_json(ns["hv1"], "link", "show") if l["ifname"] == "vm1-e0"]
        assert ping(host, lab, "vm3", ip, 5) == 5


def test_unactivated_move_rolls_back_after_its_timeout(host, lab_up, topo, addr):
    t = topo("t-mbb-abort")
    mac, ip = addr.mac(t, "vm1"), addr.ip(t, "vm1")
    with lab_up(t) as lab:
        ns = {s: lab.plan.nodes[s].ns for s in ("hv1", "hv2", "hv3")}
        vtep = {s: lab.plan.nodes[s].vtep for s in ("hv1", "hv2", "hv3")}
        lab.prepare("vm1", "hv2", timeout=1.0)
        assert vxlan_devs(host, ns["hv2"], WEB)
        assert remote_mac_dst(host, ns["hv3"], WEB, mac) == set()
        # nobody resumes the VM on hv2: after 1 s the move is rolled back by itself
        assert wait_for(lambda: not lab.pending, timeout=5), "the prepared move did not expire"
        snap = lab.mapping.snapshot()
        assert snap.migrations == {}
        assert (snap.binding_of("vm1/0").nve, snap.binding_of("vm1/0").seq) == ("hv1", 0)
        assert lab.wait_converged(5)
        assert remote_mac_dst(host, ns["hv3"], WEB, mac) == {vtep["hv1"]}
        assert wait_for(lambda: vtep["hv2"] not in flood_dsts(host, ns["hv3"], WEB), timeout=5)
        assert wait_for(lambda: not vxlan_devs(host, ns["hv2"], WEB), timeout=5), "the destination kept the segment"
        assert not [l for l in host.ip_json(ns["hv2"], "link", "show") if l["ifname"] == "vm1-e0"]
        assert any(m.get("rolled_back") for m in lab.migrations)
        assert ping(host, lab, "vm3", ip, 5) == 5
        # and the VM can still move afterwards
        rec = lab.migrate("vm1", "hv2")
        assert rec["mode"] == "prepared" and rec["activated_by"] == "announcement"
        assert ping(host, lab, "vm3", ip, 5) == 5
