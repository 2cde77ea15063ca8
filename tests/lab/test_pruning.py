"""Dynamic L2 extension: a segment exists on an NVE only while it hosts a VM of that CUG, and the
flood list of a VNI is exactly the other NVEs hosting it. Checked with `ip` and `bridge`, not roamnet."""

from __future__ import annotations

import re
import time
from typing import Any

from roamnet.intent.model import parse_topology
from roamnet.lab.plan import build_plan

WEB, DB = 10100, 10200
ZERO = "00:00:00:00:00:00"


def vxlan_devs(host: Any, ns: str, vni: int) -> list[str]:
    """Names of the vxlan devices of `vni` in `ns` (from `ip -d link`)."""
    return [link["ifname"] for link in host.ip_json(ns, "-d", "link", "show")
            if link.get("linkinfo", {}).get("info_kind") == "vxlan"
            and link["linkinfo"].get("info_data", {}).get("id") == vni]


def segment_bridges(host: Any, ns: str, vni: int) -> list[str]:
    """Bridges that belong to `vni`'s segment: named br<vni> or enslaving a vxlan of that VNI."""
    links = host.ip_json(ns, "-d", "link", "show")
    vx = set(vxlan_devs(host, ns, vni))
    masters = {link.get("master") for link in links if link["ifname"] in vx}
    return [link["ifname"] for link in links if link.get("linkinfo", {}).get("info_kind") == "bridge"
            and (link["ifname"] == f"br{vni}" or link["ifname"] in masters)]


def flood_dsts(host: Any, ns: str, vni: int) -> set[str]:
    """VTEPs in the all-zero (flood) entries of `vni`'s vxlan device(s) in `ns` (`bridge fdb show`)."""
    dsts = set()
    for dev in vxlan_devs(host, ns, vni):
        out = host.run(["bridge", "-n", ns, "fdb", "show", "dev", dev]).stdout
        for line in out.splitlines():
            m = re.match(rf"{ZERO}\s.*\bdst\s+(\S+)", line.strip())
            if m:
                dsts.add(m.group(1))
    return dsts


def remote_mac_dst(host: Any, ns: str, vni: int, mac: str) -> set[str]:
    dsts = set()
    for dev in vxlan_devs(host, ns, vni):
        for line in host.run(["bridge", "-n", ns, "fdb", "show", "dev", dev]).stdout.splitlines():
            m = re.match(rf"{re.escape(mac)}\s.*\bdst\s+(\S+)", line.strip())
            if m:
                dsts.add(m.group(1))
    return dsts


def wait_for(cond, timeout: float = 5.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def test_pruning(host: Any, lab_name: Any, make_topology: Any, lab_up: Any, addr: Any) -> None:
    name = lab_name("t-prune")
    # dc1: hv1 (vm1 web — the only web VM there — and vm4 db), hv2 (vm5 db); dc2: hv3 (vm2 web, vm6 db)
    topo = make_topology(name, datacenters={"dc1": ["hv1", "hv2"], "dc2": ["hv3"]},
                         vms={"vm1": ("hv1", "web"), "vm4": ("hv1", "db"), "vm5": ("hv2", "db"),
                              "vm2": ("hv3", "web"), "vm6": ("hv3", "db")})
    plan = build_plan(parse_topology(topo))
    ns = {s: plan.nodes[s].ns for s in ("hv1", "hv2", "hv3")}
    vtep = {s: plan.nodes[s].vtep for s in ns}
    assert vtep == {"hv1": "198.18.1.1", "hv2": "198.18.1.3", "hv3": "198.18.2.1"}  # labplan's addressing

    with lab_up(topo) as lab:
        # before: web lives on hv1 and hv3, not on hv2
        assert vxlan_devs(host, ns["hv1"], WEB) and segment_bridges(host, ns["hv1"], WEB)
        assert not vxlan_devs(host, ns["hv2"], WEB) and not segment_bridges(host, ns["hv2"], WEB)
        assert flood_dsts(host, ns["hv1"], WEB) == {vtep["hv3"]}
        assert flood_dsts(host, ns["hv3"], WEB) == {vtep["hv1"]}
        assert flood_dsts(host, ns["hv2"], DB) == {vtep["hv1"], vtep["hv3"]}

        rec = lab.migrate("vm1", "hv2")
        assert (rec["from"], rec["to"]) == ("hv1", "hv2")
        assert rec["converged_ms"] is not None, rec

        # hv1 no longer hosts a web VM: its web vxlan and bridge are gone...
        assert wait_for(lambda: not vxlan_devs(host, ns["hv1"], WEB) and not segment_bridges(host, ns["hv1"], WEB)), \
            host.run(["ip", "-n", ns["hv1"], "-d", "link", "show"]).stdout
        # ...(but its db segment, still used by vm4, is untouched)
        assert vxlan_devs(host, ns["hv1"], DB) and flood_dsts(host, ns["hv1"], DB) == {vtep["hv2"], vtep["hv3"]}
        # no NVE floods web traffic to hv1 any more
        for srv in ("hv2", "hv3"):
            assert wait_for(lambda: vtep["hv1"] not in flood_dsts(host, ns[srv], WEB)), \
                f"{srv} still floods VNI {WEB} to hv1 ({vtep['hv1']})"
        # the destination has the segment now, and the remaining NVEs flood to each other only
        assert vxlan_devs(host, ns["hv2"], WEB) and segment_bridges(host, ns["hv2"], WEB)
        assert wait_for(lambda: flood_dsts(host, ns["hv2"], WEB) == {vtep["hv3"]}), flood_dsts(host, ns["hv2"], WEB)
        assert wait_for(lambda: flood_dsts(host, ns["hv3"], WEB) == {vtep["hv2"]}), flood_dsts(host, ns["hv3"], WEB)
        # and hv3 sends vm1's unicast to its new VTEP
        assert remote_mac_dst(host, ns["hv3"], WEB, addr.mac(topo, "vm1")) == {vtep["hv2"]}
        # the data plane agrees: vm2 (hv3, dc2) reaches vm1 (now on hv2, dc1)
        host.run(["ip", "netns", "exec", f"rn-{name}-vm2", "ping", "-c", "2", "-W", "1", addr.ip(topo, "vm1")])
