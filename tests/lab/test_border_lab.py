"""FRR BGP from the border routers' tenant namespaces to the WAN router, on real FRR (route health injection).

Each test builds only what border BGP needs, by hand with pyroute2: the WAN router's namespace and the
border tenant namespaces (`rn-<lab>-<border>.t-<tenant>`) joined by the plan's handoff /31s, plus a
VXLAN device standing in for the tenant's L3 VNI device (the next hop device of the agent's /32s).
The routes the NVE agent would install are added by the test with protocol 77. Everything is removed
at the end; FRR runs only inside these namespaces, with its files under its own workdir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyroute2 import IPRoute

from roamnet import names
from roamnet.dataplane import netns
from roamnet.intent.model import parse_topology
from roamnet.lab.plan import build_plan
from roamnet.names import WAN_NODE
from roamnet.wan import frr
from roamnet.wan.border import BorderBgp, BorderError
from roamnet.wan.frr import DAEMONS

FRR_BIN = Path("/usr/lib/frr")  # as conftest.FRR_BIN
PROTO = 77  # the NVE agent's route protocol
TRANSIT_TABLE, TRANSIT_PRIORITY = 100, 100
RTNH_F_ONLINK = 0x4
SUBNET = "198.19.1.0/24"  # tenant t1's CUG `web`
VTEP = {"hv1": "198.18.1.1", "hv2": "198.18.2.1"}  # the servers' VTEPs: the agent's /32 next hops
WITHDRAW_WITHIN_S = 5.0
ANNOUNCE_WITHIN_S = 5.0


from conftest import frr_decoy, frr_still_runs, netns_inode, proc_netns_inode, recorded_frr  # noqa: E402

pytestmark = pytest.mark.usefixtures("frr_required")


# ---------------------------------------------------------------- the namespaces border BGP needs


def _topology(name: str, tenants: tuple[str, ...]) -> dict[str, Any]:
    """Two data centers (one server each), `tenants` with one routed CUG each (t1: 198.19.1.0/24, ...)."""
    return {
        "name": name,
        "tenants": {t: {"l3vni": 50000 + j} for j, t in enumerate(tenants, start=1)},
        "datacenters": {"dc1": {"servers": ["hv1"]}, "dc2": {"servers": ["hv2"]}},
        "cugs": {f"c{j}": {"vni": 10000 + 100 * j, "subnet": f"198.19.{j}.0/24", "gateway": f"198.19.{j}.1",
                           "tenant": t} for j, t in enumerate(tenants, start=1)},
        "vms": {},
    }


def _up(ipr: IPRoute, ifname: str, cidr: str | None = None) -> int:
    idx = ipr.link_lookup(ifname=ifname)[0]
    if cidr:
        addr, plen = cidr.split("/")
        ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
    ipr.link("set", index=idx, state="up")
    return idx


@contextlib.contextmanager
def handoff_lab(name: str, host: Any, tenants: tuple[str, ...] = ("t1",)) -> Iterator[Any]:
    """The WAN router's namespace and every border's tenant namespaces, with the handoff /31s. Yields an
    object with what BorderBgp.start() reads (name, plan, topo, progress). Always removed at the end."""
    topo = parse_topology(_topology(name, tenants), f"<{name}>")
    plan = build_plan(topo)
    wan = plan.nodes[WAN_NODE]
    vrfs = [plan.vrf(b.name, t) for b in plan.nodes.values() if b.kind == "border" for t in topo.tenants]
    wanted = [wan.ns] + [v.ns for v in vrfs]
    clash = sorted(set(wanted) & set(host.netns_list()))
    assert not clash, f"namespaces exist before the test built them (not ours, not touching): {clash}"
    created: list[str] = []
    messages: list[str] = []
    try:
        for ns in wanted:
            netns.create(ns)
            created.append(ns)
            for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
                netns.sysctl(ns, key, 1)
            netns.sysctl(ns, "net.ipv4.ip_forward", 1)
            with IPRoute(netns=ns) as ipr:
                ipr.link("set", index=1, state="up")
        for v in vrfs:
            b_if, w_if = plan.handoff(v.parent, v.tenant)
            with IPRoute(netns=wan.ns) as ipr:
                ipr.link("add", ifname=w_if.name, kind="veth", peer={"ifname": b_if.name, "net_ns_fd": v.ns})
                _up(ipr, w_if.name, w_if.address)
            with IPRoute(netns=v.ns) as ipr:
                _up(ipr, b_if.name, b_if.address)
                l3 = names.vxlan(topo.tenants[v.tenant].l3vni)  # stands in for the agent's L3 VNI device
                ipr.link("add", ifname=l3, kind="vxlan", vxlan_id=topo.tenants[v.tenant].l3vni,
                         vxlan_port=4789, vxlan_learning=0)
                _up(ipr, l3)
        yield SimpleNamespace(name=name, plan=plan, topo=topo, progress=messages.append, messages=messages,
                              namespaces=wanted, wan_ns=wan.ns)
    finally:
        for ns in reversed(created):
            netns.remove(ns)
        left = sorted(set(wanted) & set(host.netns_list()))
        assert not left, f"namespaces left behind: {left}"


@contextlib.contextmanager
def running(lab: Any, bgp: BorderBgp) -> Iterator[BorderBgp]:
    try:
        bgp.start(lab)
        yield bgp
    finally:
        bgp.stop(lab)


# ---------------------------------------------------------------- helpers


def _wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    """Seconds until cond() held, None if it did not within `timeout` (bounded)."""
    t0 = time.monotonic()
    for _ in range(int(timeout / step) + 1):
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            break
        time.sleep(step)
    return time.monotonic() - t0 if cond() else None


def _wan_kernel_routes(host: Any, ns: str) -> dict[str, tuple[str, str]]:
    """{prefix: (gateway, dev)} of the BGP routes in the WAN router's kernel (read with `ip`)."""
    out = {}
    for r in host.ip_json(ns, "route", "show", "proto", "bgp"):
        dst = r["dst"] if "/" in r["dst"] or r["dst"] == "default" else r["dst"] + "/32"
        out[dst] = (r.get("gateway", ""), r.get("dev", ""))
    return out


def _agent_routes(ns: str, l3vni: int, main: list[tuple[str, str]], transit: list[tuple[str, str]],
                  blackholes: list[str]) -> None:
    """What the NVE agent puts into a border's tenant namespace (protocol 77): blackholes and /32s via a
    VTEP on the L3 VNI device in the main table, /32s in table 100 looked up first by a rule."""
    with IPRoute(netns=ns) as ipr:
        l3 = ipr.link_lookup(ifname=names.vxlan(l3vni))[0]
        for prefix in blackholes:
            ipr.route("replace", dst=prefix, type="blackhole", proto=PROTO)
        for table, routes in ((254, main), (TRANSIT_TABLE, transit)):
            for prefix, vtep in routes:
                ipr.route("replace", dst=prefix, gateway=vtep, oif=l3, flags=RTNH_F_ONLINK, proto=PROTO, table=table)
        if transit and not any(r.get("FRA_TABLE") == TRANSIT_TABLE for r in ipr.get_rules(family=socket.AF_INET)):
            ipr.rule("add", table=TRANSIT_TABLE, priority=TRANSIT_PRIORITY, family=socket.AF_INET)


# ---------------------------------------------------------------- tests


def test_border_announces_main_table_routes_not_transit(host: Any, lab_name: Any) -> None:
    name = lab_name("t-border")
    decoys = [frr_decoy("bgpd", f"/run/roamnet/{name}x/border/wan"), frr_decoy("zebra", f"/tmp/not-{name}/wan")]
    try:
        with handoff_lab(name, host) as lab, running(lab, BorderBgp()) as bgp:
            b1, b2 = lab.plan.vrf("dc1br", "t1"), lab.plan.vrf("dc2br", "t1")
            wan_if = {v.parent: lab.plan.handoff(v.parent, "t1")[1].name for v in (b1, b2)}
            via = {v.parent: lab.plan.handoff(v.parent, "t1")[0].address.split("/")[0] for v in (b1, b2)}

            # the processes: 3 instances x (zebra, bgpd), each in its lab namespace, none in the host's
            recorded = recorded_frr(bgp.workdir)
            assert sorted(r["label"] for r in recorded) == sorted(
                f"{d}@{ns}" for ns in (lab.wan_ns, b1.ns, b2.ns) for d in DAEMONS)
            for r in recorded:
                assert frr_still_runs(r), r
                assert proc_netns_inode(r["pid"]) == netns_inode(r["ns"]) != proc_netns_inode(os.getpid())
            assert Path(bgp.workdir) == Path(f"/run/roamnet/{name}/border")
            assert oct(os.stat(bgp.workdir).st_mode & 0o777) == "0o700"
            assert any("2/2 eBGP sessions established" in m for m in lab.messages), lab.messages

            # the sessions, and the WAN's default route at the borders
            assert bgp.sessions() == {f"bgpd@{b1.ns}": "Established", f"bgpd@{b2.ns}": "Established"}
            wan_inst = next(i for i in bgp.instances if i.role == "wan")
            assert "frr defaults datacenter" in bgp.vtysh(wan_inst, "bgpd", "show running-config")
            for v in (b1, b2):
                default = host.ip_json(v.ns, "route", "show", "default")
                assert [(r.get("protocol"), r.get("gateway")) for r in default] == [
                    ("bgp", lab.plan.handoff(v.parent, "t1")[1].address.split("/")[0])], default
            assert bgp.wan_routes() == {}  # nothing announced yet

            # dc1's border: vm1 (198.19.1.11) is in dc1, vm2 (.12) in dc2: transit. Plus a proto-77 route
            # outside the tenant's subnet, which the route-map must keep in.
            _agent_routes(b1.ns, 50001, main=[("198.19.1.11/32", VTEP["hv1"])],
                          transit=[("198.19.1.12/32", VTEP["hv2"])], blackholes=[SUBNET, "198.18.99.0/24"])
            want = {SUBNET: "dc1br", "198.19.1.11/32": "dc1br"}
            took = _wait_for(lambda: bgp.wan_routes() == want, ANNOUNCE_WITHIN_S)
            assert took is not None, f"WAN routes {bgp.wan_routes()} != {want}"
            kernel_want = {p: (via["dc1br"], wan_if["dc1br"]) for p in want}  # zebra installs what bgpd chose
            assert _wait_for(lambda: _wan_kernel_routes(host, lab.wan_ns) == kernel_want, ANNOUNCE_WITHIN_S) \
                is not None, _wan_kernel_routes(host, lab.wan_ns)

            # zebra reads table 100 into a table of its own, not into the RIB that bgpd redistributes
            b1_inst = next(i for i in bgp.instances if i.ns == b1.ns)
            rib = bgp.show(b1_inst, "zebra", "show ip route json")
            assert "198.19.1.11/32" in rib and SUBNET in rib and "198.19.1.12/32" not in rib, sorted(rib)
            assert "198.19.1.12/32" in bgp.show(b1_inst, "zebra", "show ip route table 100 json")
            border_bgp = bgp.show(b1_inst, "bgpd", "show ip bgp json")["routes"]
            assert "198.19.1.12/32" not in border_bgp and "198.18.99.0/24" in rib
            assert "198.18.99.0/24" not in border_bgp  # kept in by RN-ANNOUNCE
            time.sleep(2.0)  # MRAI is 0: had it been exported, it would be there by now
            assert "198.19.1.12/32" not in bgp.wan_routes()
            assert "198.19.1.12/32" not in _wan_kernel_routes(host, lab.wan_ns)
            assert "198.18.99.0/24" not in _wan_kernel_routes(host, lab.wan_ns)

            # dc2's border announces the same subnet and its own VM; the WAN routes vm2 via dc2
            _agent_routes(b2.ns, 50001, main=[("198.19.1.12/32", VTEP["hv2"])],
                          transit=[("198.19.1.11/32", VTEP["hv1"])], blackholes=[SUBNET])
            assert _wait_for(lambda: bgp.wan_routes().get("198.19.1.12/32") == "dc2br", ANNOUNCE_WITHIN_S) is not None
            assert _wait_for(lambda: _wan_kernel_routes(host, lab.wan_ns).get("198.19.1.12/32")
                             == (via["dc2br"], wan_if["dc2br"]), ANNOUNCE_WITHIN_S) is not None
            assert bgp.wan_routes()["198.19.1.11/32"] == "dc1br"
            assert {b for b, _, _ in bgp.wan_paths()[SUBNET]} == {"dc1br", "dc2br"}

            # vm1 leaves dc1 (the agent deletes its /32 there): withdrawn at the WAN, bounded
            with IPRoute(netns=b1.ns) as ipr:
                ipr.route("del", dst="198.19.1.11/32", proto=PROTO, table=254)
            took = _wait_for(lambda: "198.19.1.11/32" not in _wan_kernel_routes(host, lab.wan_ns), WITHDRAW_WITHIN_S)
            assert took is not None, f"198.19.1.11/32 still at the WAN after {WITHDRAW_WITHIN_S} s"
            print(f"withdrawn from the WAN's kernel {took * 1000:.0f} ms after the delete")
            assert "198.19.1.11/32" not in bgp.wan_routes()
            assert bgp.wan_routes()[SUBNET] in ("dc1br", "dc2br")

            started = {r["pid"]: r for r in recorded}
            stopped = bgp.stop(lab)
            assert sorted(stopped) == sorted(r["label"] for r in recorded)
            assert not [r["label"] for r in started.values() if frr_still_runs(r) or Path(f"/proc/{r['pid']}").exists()]
            assert bgp.running() == []
        assert not Path(f"/run/roamnet/{name}").exists(), "the default workdir was not removed"
        for d in decoys:
            assert d.poll() is None, "stop() ended a process that is not its own"
    finally:
        for d in decoys:
            d.kill()
            d.wait(5)


def test_border_two_tenants_stay_apart(host: Any, lab_name: Any) -> None:
    """Two tenants on two borders: 4 sessions; each border tenant namespace takes only the default route."""
    name = lab_name("t-border2")
    with handoff_lab(name, host, tenants=("t1", "t2")) as lab, running(lab, BorderBgp()) as bgp:
        assert len(bgp.sessions()) == 4 and set(bgp.sessions().values()) == {"Established"}
        t1, t2 = lab.plan.vrf("dc1br", "t1"), lab.plan.vrf("dc2br", "t2")
        _agent_routes(t1.ns, 50001, main=[("198.19.1.11/32", VTEP["hv1"])], transit=[], blackholes=["198.19.1.0/24"])
        _agent_routes(t2.ns, 50002, main=[("198.19.2.12/32", VTEP["hv2"])], transit=[], blackholes=["198.19.2.0/24"])
        want = {"198.19.1.0/24": "dc1br", "198.19.1.11/32": "dc1br", "198.19.2.0/24": "dc2br", "198.19.2.12/32": "dc2br"}
        assert _wait_for(lambda: bgp.wan_routes() == want, ANNOUNCE_WITHIN_S) is not None, bgp.wan_routes()
        paths = bgp.wan_paths()
        assert {t for p in ("198.19.1.0/24", "198.19.1.11/32") for _, t, _ in paths[p]} == {"t1"}
        for v in (lab.plan.vrf(b, t) for b in ("dc1br", "dc2br") for t in ("t1", "t2")):
            bgp_routes = host.ip_json(v.ns, "route", "show", "proto", "bgp")
            assert [r["dst"] for r in bgp_routes] == ["default"], (v.ns, bgp_routes)


def test_border_missing_binary(host: Any, lab_name: Any) -> None:
    name = lab_name("t-border-nobin")
    empty = Path(tempfile.mkdtemp(prefix="rn-frrbin-", dir="/tmp"))
    try:
        with handoff_lab(name, host) as lab:
            bgp = BorderBgp(frr_bin_dir=empty)
            with pytest.raises(BorderError, match=rf"^zebra in rn-{name}-dc1br\.t-t1: no executable {empty}/zebra "
                                                  r"\(is FRR installed\? Debian: apt-get install frr\)$"):
                bgp.start(lab)
            assert bgp.running() == [] and bgp.processes() == []
            assert not Path(f"/run/roamnet/{name}").exists()
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def test_border_missing_bgpd_stops_the_zebras(host: Any, lab_name: Any) -> None:
    name = lab_name("t-border-nobgp")
    bindir = Path(tempfile.mkdtemp(prefix="rn-frrbin-", dir="/tmp"))
    workdir = Path(tempfile.mkdtemp(prefix="rn-border-", dir="/tmp"))
    try:
        (bindir / "zebra").symlink_to(FRR_BIN / "zebra")  # zebra only: bgpd is missing
        with handoff_lab(name, host) as lab:
            bgp = BorderBgp(workdir=workdir, frr_bin_dir=bindir)
            with pytest.raises(BorderError, match=rf"bgpd in rn-{name}-dc1br\.t-t1: no executable {bindir}/bgpd"):
                bgp.start(lab)
            recorded = recorded_frr(workdir)
            assert sorted(r["label"] for r in recorded) == sorted(f"zebra@{ns}" for ns in lab.namespaces)
            assert not [r["label"] for r in recorded if frr_still_runs(r) or r["running"]]
            assert bgp.running() == []
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_border_session_that_never_comes_up(host: Any, lab_name: Any) -> None:
    name = lab_name("t-border-down")
    workdir = Path(tempfile.mkdtemp(prefix="rn-border-", dir="/tmp"))
    try:
        with handoff_lab(name, host) as lab:
            b2 = lab.plan.vrf("dc2br", "t1")
            with IPRoute(netns=b2.ns) as ipr:  # dc2's handoff is cut: its session cannot come up
                ipr.link("set", index=ipr.link_lookup(ifname="wan")[0], state="down")
            bgp = BorderBgp(workdir=workdir, ready_timeout=3)
            t0 = time.monotonic()
            with pytest.raises(BorderError, match=rf"^bgpd in {b2.ns}: BGP session 198\.18\.251\.3 \(AS 65102\) <-> "
                                                  r"198\.18\.251\.2 \(AS 65000\) not Established after 3 s "
                                                  r"\(state \w+; 1 of 2 sessions down\); log tail") as err:
                bgp.start(lab)
            assert time.monotonic() - t0 < 30
            assert "log tail" in str(err.value)
            recorded = recorded_frr(workdir)
            assert len(recorded) == 6
            assert not [r["label"] for r in recorded if frr_still_runs(r) or r["running"]]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_border_kill_recorded_after_a_crash(host: Any, lab_name: Any) -> None:
    name = lab_name("t-border-crash")
    with handoff_lab(name, host) as lab, running(lab, BorderBgp()) as bgp:
        recorded = recorded_frr(bgp.workdir)
        assert len(recorded) == 6 and all(frr_still_runs(r) for r in recorded)
        # as if the process that ran the lab had died: only the journal is left to go by (the lab's
        # crash clean-up calls this on /run/roamnet/<lab>/border)
        ended = frr.kill_recorded(Path(f"/run/roamnet/{name}/border"))
        assert sorted(e.split(" ")[0] for e in ended) == sorted(r["label"] for r in recorded)
        assert not [r["label"] for r in recorded if frr_still_runs(r)]
        assert not [r for r in recorded if (Path("/var/tmp/frr") / f"{r['daemon']}.{r['pid']}").exists()]
        assert frr.kill_recorded(bgp.workdir) == []


def test_border_with_the_lab_and_its_agents(host: Any, lab_name: Any, lab_up: Any) -> None:
    """The whole lab (roamnet.lab.Lab holds a BorderBgp as lab.border): the NVE agents' routes reach the
    WAN from the VM's own data center; after a move between data centers the /32 follows the VM."""
    name = lab_name("t-border-lab")
    topo = _topology(name, ("t1",))
    topo["vms"] = {vm: {"server": server, "interfaces": [
        {"cug": "c1", "mac": f"02:00:00:01:00:{ip:02x}", "ip": f"198.19.1.{ip}"}]}
        for vm, server, ip in (("vm1", "hv1", 11), ("vm2", "hv2", 12))}
    with lab_up(topo) as lab:
        bgp = lab.border
        assert isinstance(bgp, BorderBgp)
        recorded = recorded_frr(bgp.workdir)
        assert set(bgp.sessions().values()) == {"Established"}
        want = {SUBNET: None, "198.19.1.11/32": "dc1br", "198.19.1.12/32": "dc2br"}

        def matches() -> bool:
            got = bgp.wan_routes()
            return set(got) == set(want) and all(b is None or got[p] == b for p, b in want.items())

        assert _wait_for(matches, ANNOUNCE_WITHIN_S) is not None, bgp.wan_routes()
        # the agent's transit /32 (vm2 seen from dc1's border) is in table 100 and stays there
        b1 = lab.plan.vrf("dc1br", "t1")
        transit = host.ip_json(b1.ns, "route", "show", "table", str(TRANSIT_TABLE))
        assert any(r["dst"] == "198.19.1.12" and str(r.get("protocol")) == str(PROTO) for r in transit), transit
        assert bgp.wan_routes()["198.19.1.12/32"] == "dc2br"

        rec = lab.migrate("vm1", "hv2", wait=10)
        assert rec["converged_ms"] is not None, rec
        took = _wait_for(lambda: bgp.wan_routes().get("198.19.1.11/32") == "dc2br", WITHDRAW_WITHIN_S)
        assert took is not None, f"the WAN still routes vm1 via {bgp.wan_routes().get('198.19.1.11/32')}"
        wan_ns = lab.plan.nodes[WAN_NODE].ns
        assert _wait_for(lambda: _wan_kernel_routes(host, wan_ns).get("198.19.1.11/32", ("", ""))[1] == "dc2br-t1",
                         WITHDRAW_WITHIN_S) is not None, _wan_kernel_routes(host, wan_ns)
    assert not [r["label"] for r in recorded if frr_still_runs(r)], "FRR still runs after lab.down()"
    assert not Path(f"/run/roamnet/{name}").exists()
