"""FRR BGP-EVPN with symmetric IRB, the pure parts: which FRR instances a routed lab has, their configs
(also read back by FRR's own parser, `-C`, where FRR is installed), the daemons' private /run/netns,
where the hypervisor puts a VM's port, and the gratuitous ARP a moved guest sends."""

from __future__ import annotations

import os
import shlex
import socket
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from roamnet.baselines.evpn import EvpnError
from roamnet.baselines.evpn_irb import (
    EXIT_LOCAL_PREF,
    IRB_ASN,
    FrrEvpnIrb,
    irb_config,
    plan_irb_instances,
    private_netns_script,
)
from roamnet.dataplane.announce import garp_frame, parse_announcement
from roamnet.intent.model import load_topology, parse_topology
from roamnet.intent.scenario import packaged_example
from roamnet.lab.plan import build_plan
from roamnet.wan import border as wan_border
from roamnet.wan.frr import DAEMONS, drop_log_buffers

TOPO = load_topology(packaged_example("routed.yaml"))  # tenant t1 (L3 VNI 50001), CUGs web and db, 2 DCs
PLAN = build_plan(TOPO)
FRR_BIN = Path("/usr/lib/frr")


def _instances():
    return {i.node: i for i in plan_irb_instances(PLAN, TOPO)}


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


def test_instances_servers_borders_and_a_route_reflector():
    inst = _instances()
    assert set(inst) == {"hv1", "hv2", "hv3", "hv4", "dc1br", "dc2br", "dci"}
    rr = inst["dci"]
    assert rr.role == "rr" and rr.tenants == ()
    assert set(rr.peers) == {PLAN.nodes[n].vtep for n in ("hv1", "hv2", "hv3", "hv4", "dc1br", "dc2br")}
    for name in ("hv1", "hv2", "hv3", "hv4"):
        v = inst[name]
        assert v.role == "vtep" and v.address == PLAN.nodes[name].vtep and v.peers == (rr.address,)
        (t,) = v.tenants
        assert (t.name, t.ns, t.l3vni) == ("t1", f"rn-routed-{name}.t-t1", 50001)
        assert set(t.subnets) == {"198.19.1.0/24", "198.19.2.0/24"}
        assert v.dc_index == (1 if PLAN.nodes[name].dc == "dc1" else 2)
        assert not t.wan_peer
    for d, name in ((1, "dc1br"), (2, "dc2br")):
        b = inst[name]
        (t,) = b.tenants
        mine, theirs = PLAN.handoff(name, "t1")
        assert b.role == "border" and b.address == PLAN.nodes[name].vtep and b.dc_index == d
        assert t.ns == f"rn-routed-{name}.t-t1"
        assert t.wan_local == mine.address.split("/")[0] and t.wan_peer == theirs.address.split("/")[0]
        assert t.wan_asn == wan_border.border_asn(d)  # what the WAN router of wan.border expects
        dc = PLAN.nodes[name].dc
        assert set(b.dc_vteps) == {n.vtep for n in PLAN.nodes.values() if n.kind == "server" and n.dc == dc}


def test_the_wan_router_expects_exactly_the_borders_handoffs():
    wan = next(i for i in wan_border.plan_border_instances(PLAN, TOPO) if i.role == "wan")
    ours = {(t.wan_local, t.wan_asn) for i in _instances().values() for t in i.tenants if t.wan_peer}
    assert {(p.address, p.asn) for p in wan.peers} == ours


def test_no_tenant_no_irb():
    topo = load_topology(packaged_example("two-dc.yaml"))
    with pytest.raises(ValueError, match="needs a tenant"):
        plan_irb_instances(build_plan(topo), topo)


def test_zebra_maps_each_tenant_to_its_l3vni():
    inst = _instances()
    for name in ("hv1", "dc2br"):
        lines = _lines(irb_config("zebra", inst[name]))
        i = lines.index("vrf t1")
        assert lines[i + 1:i + 3] == ["vni 50001", "exit-vrf"]
    assert "vrf t1" not in _lines(irb_config("zebra", inst["dci"]))


def test_vtep_bgpd_config():
    v = _instances()["hv3"]  # dc2
    conf = irb_config("bgpd", v)
    lines = _lines(conf)
    for must in (f"router bgp {IRB_ASN}", "advertise-all-vni", "no dup-addr-detection",
                 "neighbor RR route-map RN-EXIT in", f"router bgp {IRB_ASN} vrf t1",
                 "redistribute connected route-map RN-CONNECTED-t1", "advertise ipv4 unicast",
                 f"bgp community-list standard RN-OWN-BORDER seq 5 permit {IRB_ASN}:2",
                 "match community RN-OWN-BORDER", f"set local-preference {EXIT_LOCAL_PREF}",
                 "ip prefix-list RN-SUBNETS-t1 seq 5 permit 198.19.1.0/24",
                 "ip prefix-list RN-SUBNETS-t1 seq 10 permit 198.19.2.0/24"):
        assert must in lines, f"{must!r} missing from:\n{conf}"
    assert not any("local-as" in ln or "neighbor 198.18.251" in ln for ln in lines)
    # the EVPN instance comes before the VRF's (FRR needs advertise-all-vni's instance first)
    assert lines.index(f"router bgp {IRB_ASN}") < lines.index(f"router bgp {IRB_ASN} vrf t1")


def test_border_bgpd_config():
    b = _instances()["dc1br"]
    (t,) = b.tenants
    conf = irb_config("bgpd", b)
    lines = _lines(conf)
    for must in (f"neighbor {t.wan_peer} remote-as {wan_border.WAN_ASN}",
                 f"neighbor {t.wan_peer} local-as {t.wan_asn} no-prepend replace-as",
                 f"neighbor {t.wan_peer} update-source {t.wan_local}",
                 f"neighbor {t.wan_peer} route-map RN-FROM-WAN in",
                 f"neighbor {t.wan_peer} route-map RN-TO-WAN-t1 out",
                 "advertise ipv4 unicast route-map RN-DC-TAG", f"set community {IRB_ASN}:1 additive",
                 "match ip next-hop prefix-list RN-DC-VTEPS",
                 "ip prefix-list RN-HOSTS-t1 seq 5 permit 198.19.1.0/24 ge 32",
                 "ip prefix-list RN-DEFAULT seq 5 permit 0.0.0.0/0"):
        assert must in lines, f"{must!r} missing from:\n{conf}"
    for vtep in b.dc_vteps:
        assert any(ln.endswith(f"permit {vtep}/32") and "RN-DC-VTEPS" in ln for ln in lines)
    assert not any(ln.startswith("redistribute connected") for ln in lines)
    assert "neighbor RR route-map RN-EXIT in" not in lines


def test_rr_bgpd_config():
    rr = _instances()["dci"]
    lines = _lines(irb_config("bgpd", rr))
    assert "neighbor VTEPS route-reflector-client" in lines
    assert not any(ln.startswith("router bgp") and "vrf" in ln for ln in lines)


def test_config_refuses_bad_input():
    v = _instances()["hv1"]
    with pytest.raises(ValueError, match="outside the lab range"):
        irb_config("bgpd", v.__class__(**{**v.__dict__, "address": "192.0.2.1"}))
    with pytest.raises(ValueError, match="no configuration for daemon"):
        irb_config("ospfd", v)


@pytest.mark.skipif(not (FRR_BIN / "bgpd").exists() or os.geteuid() != 0, reason="FRR (and root) needed")
@pytest.mark.parametrize("node", ["hv1", "dc2br", "dci"])
@pytest.mark.parametrize("daemon", DAEMONS)
def test_frr_reads_every_line(tmp_path: Path, node: str, daemon: str):
    """FRR's own parser (-C: read the configuration and exit) takes every line: a command FRR 8.4 does not
    have, or a value its YANG model rejects (as `match evpn rd` did), is printed and fails this test."""
    conf = tmp_path / f"{daemon}.conf"
    conf.write_text(irb_config(daemon, _instances()[node]))
    argv = [str(FRR_BIN / daemon), "-C", "-u", "root", "-g", "frrvty" if _has_group("frrvty") else "root",
            "-f", str(conf), "-i", str(tmp_path / "pid"), "-z", str(tmp_path / "zserv.api"),
            "--vty_socket", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        drop_log_buffers(daemon, proc.pid)  # FRR leaves /var/tmp/frr/<daemon>.<pid> behind after -C
    text = stdout + stderr
    bad = [ln for ln in text.splitlines() if any(w in ln for w in ("No such command", "YANG", "rror", "nknown"))]
    assert proc.returncode == 0 and not bad, text
    assert not Path(f"/var/tmp/frr/{daemon}.{proc.pid}").exists()


def _has_group(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_private_netns_script_binds_only_this_nodes_tenants(tmp_path: Path):
    v = _instances()["hv2"]
    argv = ["/usr/lib/frr/zebra", "-f", "/x y/zebra.conf", "-n"]
    script = private_netns_script(tmp_path, v.tenants, argv)
    parts = script.split("; ")
    assert parts[0] == "set -e"
    assert parts[1] == f"mount --bind /run/netns/rn-routed-hv2.t-t1 {tmp_path}/netns/t1"
    assert parts[2] == f"mount --rbind {tmp_path}/netns /run/netns"
    assert shlex.split(parts[3]) == ["exec", *argv]


def test_command_wraps_vteps_and_borders_only(tmp_path: Path):
    cp = FrrEvpnIrb(workdir=tmp_path)
    cp.workdir = tmp_path
    inst = _instances()
    zebra = cp.command(inst["hv1"], "zebra", ["/usr/lib/frr/zebra", "-f", "z.conf"])
    assert zebra[-4:-1] == ["--", "/bin/sh", "-c"] and "--mount" in zebra
    assert shlex.split(zebra[-1].split("; ")[-1]) == ["exec", "/usr/lib/frr/zebra", "-f", "z.conf", "-n"]
    bgpd = cp.command(inst["dc1br"], "bgpd", ["/usr/lib/frr/bgpd"])
    assert shlex.split(bgpd[-1].split("; ")[-1]) == ["exec", "/usr/lib/frr/bgpd"]  # -n is zebra's
    rr = cp.command(inst["dci"], "zebra", ["/usr/lib/frr/zebra"])
    assert rr[-1] == "/usr/lib/frr/zebra" and "--mount" not in rr


def _lab(topo_dict: dict) -> SimpleNamespace:
    topo = parse_topology(topo_dict, "<test>")
    return SimpleNamespace(topo=topo, plan=build_plan(topo), name=topo.name)


def test_port_namespace_follows_the_cug():
    lab = SimpleNamespace(topo=TOPO, plan=PLAN, name=TOPO.name)
    cp = FrrEvpnIrb()
    assert cp.port_namespace(lab, "vm1", "hv1", 0) == "rn-routed-hv1.t-t1"  # web is routed
    assert cp.port_namespace(lab, "vm1", "hv3", 0) == "rn-routed-hv3.t-t1"  # wherever it runs
    d = {"name": "mix", "tenants": {"t1": {"l3vni": 50001}},
         "datacenters": {"dc1": {"servers": ["hv1"]}},
         "cugs": {"web": {"vni": 10100, "subnet": "198.19.1.0/24", "gateway": "198.19.1.1", "tenant": "t1"},
                  "l2": {"vni": 10300, "subnet": "198.19.3.0/24"}},
         "vms": {"a": {"server": "hv1", "interfaces": [{"cug": "l2", "mac": "02:00:00:03:00:11", "ip": "198.19.3.11"}]},
                 "b": {"server": "hv1", "interfaces": [
                     {"cug": "web", "mac": "02:00:00:01:00:12", "ip": "198.19.1.12", "vlan": 20},
                     {"cug": "l2", "mac": "02:00:00:01:00:12", "ip": "198.19.3.12", "vlan": 30}]}}}
    mix = _lab(d)
    assert cp.port_namespace(mix, "a", "hv1", 0) == "rn-mix-hv1"  # an L2-only CUG: the server's bridge
    with pytest.raises(EvpnError, match="NIC 0 carries CUGs of different tenants"):
        cp.port_namespace(mix, "b", "hv1", 0)


def test_garp_frame_is_a_gratuitous_arp_request():
    f = garp_frame("02:00:00:01:00:11", "198.19.1.11")
    assert len(f) == 60 and f[:6] == b"\xff" * 6 and f[6:12] == bytes.fromhex("020000010011")
    assert struct.unpack("!H", f[12:14])[0] == 0x0806
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", f[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert f[28:32] == f[38:42] == socket.inet_aton("198.19.1.11")  # spa == tpa
    assert parse_announcement(f) == "02:00:00:01:00:11"  # what roamnet's agents take as an announcement
