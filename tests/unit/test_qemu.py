"""QEMU guests: the model's `guest`/`memory`, the lab plan without their namespaces, and the pure parts of
lab/qemu.py (the guest's kernel command line, QEMU's argv, QMP timestamps, the guest's TCP log, the domain XML
the libvirt hook reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roamnet.intent.model import IntentError, parse_topology
from roamnet.lab.plan import build_plan
from roamnet.lab.qemu import (
    Paths,
    TcpSession,
    domain_xml,
    event_time,
    guest_cmdline,
    guest_image,
    parse_tcp_log,
    qemu_argv,
)


def topo(**vm1: Any) -> dict:
    return {"name": "q", "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}},
            "tenants": {"t1": {"l3vni": 50001}},
            "cugs": {"web": {"vni": 10100, "subnet": "198.19.1.0/24", "tenant": "t1", "gateway": "198.19.1.1"},
                     "db": {"vni": 10200, "subnet": "198.19.2.0/24"}},
            "vms": {"vm1": {"server": "hv1", "interfaces": [
                        {"cug": "web", "mac": "02:00:00:01:00:0b", "ip": "198.19.1.11"},
                        {"cug": "db", "mac": "02:00:00:02:00:0b", "ip": "198.19.2.11", "vlan": 20}], **vm1},
                    "vm2": {"server": "hv2", "interfaces": [
                        {"cug": "web", "mac": "02:00:00:01:00:0c", "ip": "198.19.1.12"}]}}}


def problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(IntentError) as info:
        parse_topology(data, "t.yaml")
    return info.value.problems


def test_guest_defaults_to_the_namespace_vm():
    t = parse_topology(topo())
    assert t.vms["vm1"].guest == "namespace" and t.vms["vm1"].memory is None
    t = parse_topology(topo(guest="qemu", memory=256))
    assert t.vms["vm1"].guest == "qemu" and t.vms["vm1"].memory == 256


@pytest.mark.parametrize("vm1, path, fragment", [
    ({"guest": "xen"}, "vms.vm1.guest", "namespace"),
    ({"memory": 128}, "vms.vm1.memory", "only a QEMU guest has memory"),
    ({"guest": "qemu", "memory": 16}, "vms.vm1.memory", "64..4096"),
    ({"guest": "qemu", "memory": "128"}, "vms.vm1.memory", "integer"),
])
def test_bad_guests_are_refused_with_their_path(vm1, path, fragment):
    found = problems(topo(**vm1))
    assert any(p == path and fragment in r for p, r in found), found


def test_a_qemu_guest_has_no_namespaces_in_the_plan():
    names = build_plan(parse_topology(topo(guest="qemu"))).namespaces()
    assert "rn-q-vm2" in names and "rn-q-vm2.nic" in names
    assert "rn-q-vm1" not in names and "rn-q-vm1.nic" not in names
    assert "rn-q-hv1" in names


def test_guest_cmdline_carries_interfaces_gateway_and_endpoints():
    t = parse_topology(topo(guest="qemu"))
    line = guest_cmdline(t, "vm1", mtu=1450).split()
    assert "console=ttyS0" in line and "rn.mtu=1450" in line
    # one NIC per MAC; the db interface is a guest VLAN on its own NIC
    assert "rn.if=02:00:00:01:00:0b,0,02:00:00:01:00:0b,198.19.1.11/24" in line
    assert "rn.if=02:00:00:02:00:0b,20,02:00:00:02:00:0b,198.19.2.11/24" in line
    assert "rn.gw=198.19.1.1" in line  # the anycast gateway of its routed CUG
    assert any(p.startswith("rn.udp=") for p in line)
    assert guest_cmdline(t, "vm1", probe=True).split()[-1] == "rn.probe"


def test_qemu_argv_boot_and_incoming():
    t = parse_topology(topo(guest="qemu", memory=192))
    paths = Paths(Path("/run/roamnet/q/qemu"), "vm1@hv1")
    argv = qemu_argv(t, "vm1", paths, "tcg", Path("/k"), Path("/i"))
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-m") + 1] == "192"
    assert "-incoming" not in argv and "-cpu" not in argv
    nets = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert nets == ["tap,id=n0,ifname=vm1-e0,script=no,downscript=no", "tap,id=n1,ifname=vm1-e1,script=no,downscript=no"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[0].startswith("virtio-net-pci,netdev=n0,mac=02:00:00:01:00:0b")
    assert f"unix:{paths.qmp},server=on,wait=off" in argv
    inc = qemu_argv(t, "vm1", Paths(paths.workdir, "vm1@hv2"), "kvm", Path("/k"), Path("/i"),
                    incoming="tcp:198.18.1.3:4401")
    assert inc[inc.index("-incoming") + 1] == "tcp:198.18.1.3:4401" and inc[inc.index("-cpu") + 1] == "host"
    # the destination's devices are the source's
    assert [a for a in inc if a.startswith("virtio-net")] == devices
    assert len(str(paths.qmp)) < 108


def test_event_time_and_missing_guest(monkeypatch, tmp_path):
    assert event_time({"timestamp": {"seconds": 10, "microseconds": 250000}}) == 10.25
    monkeypatch.setenv("ROAMNET_GUEST_DIR", str(tmp_path))
    with pytest.raises(Exception, match="make install"):
        guest_image()


def test_the_guests_tcp_log_is_parsed_and_noise_skipped():
    text = ("tcp 198.19.1.12:40312 closed 4800\r\n"
            "cat: can't open '/run/x': No such file\n"
            "tcp 198.19.1.12:40314 broken 32 Connection reset by peer\n"
            "tcp 198.19.1.13:1 gone 3\ntcp 198.19.1.13:2 closed many\n")
    assert parse_tcp_log(text) == [TcpSession("198.19.1.12:40312", "closed", 4800),
                                   TcpSession("198.19.1.12:40314", "broken", 32, "Connection reset by peer")]
    assert parse_tcp_log(text)[1].peer_ip == "198.19.1.12"
    assert parse_tcp_log("") == []


def test_the_domain_xml_leads_the_libvirt_hook_to_the_vms_interfaces():
    """What the lab hands the hook on stdin names the VM's interfaces to the hook's own reading of it."""
    from roamnet.intent.compile import compile_nves, compile_topology
    from roamnet.mapping.records import Snapshot
    from roamnet.orchestrator.libvirt import domain_ifaces, domain_nics

    t = parse_topology(topo(guest="qemu", memory=192))
    vteps = {n: node.vtep for n, node in build_plan(t).nodes.items() if node.vtep}
    records = compile_topology(t, compile_nves(t, vteps))
    snap = Snapshot(0, ports={p.iface_id: p for p in records.ports})
    xml = domain_xml(t, "vm1")
    nics = domain_nics(xml)
    assert [(n.mac, n.target) for n in nics] == [("02:00:00:01:00:0b", "vm1-e0"), ("02:00:00:02:00:0b", "vm1-e1")]
    assert domain_ifaces(nics, snap) == ["vm1/0", "vm1/1"]
    assert "<name>vm1</name>" in xml and "<memory unit='MiB'>192</memory>" in xml
    assert domain_ifaces(domain_nics(domain_xml(t, "vm2")), snap) == ["vm2/0"]
