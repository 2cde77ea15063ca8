"""VXLAN source validation on the real kernel (issue 20, part 2): a tenant VM and a WAN client send
forged VXLAN datagrams — plain UDP to port 4789 of every VTEP, for every VNI of the lab, carrying a
frame from a MAC and IP bound nowhere to a VM — and no VM receives one: every NVE drops VXLAN from
sources that are not VTEPs of the mapping, and counts it. The underlay is still reachable from
tenants through the WAN router in this lab (the isolation itself is the rest of issue 20), which is
exactly what makes this sweep reach the NVEs."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from conftest import Sniffer
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from test_irb import routed_topology

pytestmark = pytest.mark.usefixtures("frr_required")
FORGED_MAC, FORGED_IP = "02:66:66:66:66:66", "198.19.9.9"  # bound nowhere, in no subnet of the lab
ROUNDS = 3


def vxlan(vni: int, inner: bytes) -> bytes:
    """RFC 7348: flags (I bit), 24 reserved bits, the VNI, 8 reserved bits; then the frame."""
    return struct.pack("!II", 0x08000000, vni << 8) + inner


def send_udp(ns: str, datagrams: list[tuple[str, bytes]]) -> int:
    """Plain UDP from a socket in namespace `ns`, as any process of a guest or a WAN host can send."""
    from roamnet.dataplane import netns

    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        for dst, payload in datagrams:
            try:
                s.sendto(payload, (dst, 4789))
                sent += 1
            except OSError:  # no route: it reaches nobody, which is fine
                pass
    finally:
        s.close()
    return sent


def test_forged_vxlan_from_a_vm_or_a_wan_client_reaches_no_vm(lab_name, lab_up, traffic):
    topo = routed_topology(lab_name("t-vxg"), clients=True)
    name = topo["name"]
    with lab_up(topo) as lab:
        snap = lab.mapping.snapshot()
        vteps = sorted({n.vtep for n in snap.nves.values()})
        vnis = sorted(set(snap.segments) | {t.l3vni for t in snap.tenants.values()})
        vms = {vm: spec["interfaces"][0] for vm, spec in topo["vms"].items()}
        # every VM's guest interface: a frame from the forged MAC, or to or from the forged IP, is an arrival
        sniffers = {vm: Sniffer(f"rn-{name}-{vm}", "eth0",
                                lambda e, out: not out and (e.src == FORGED_MAC or (IP in e and FORGED_IP in
                                                                                     (e[IP].src, e[IP].dst))),
                                seconds=60) for vm in vms}
        start_at = time.monotonic() + 1.0
        flow = traffic(lab, "web", "udp", "vm4", "vm1", 5401, start_at, 4.0, rate=1000)  # across the overlay
        before = lab.filter_counters()
        datagrams = [(vtep, vxlan(vni, bytes(Ether(src=FORGED_MAC, dst=itf["mac"]) / IP(src=FORGED_IP, dst=itf["ip"])
                                             / UDP(sport=4242, dport=9))))
                     for vtep in vteps for vni in vnis for itf in vms.values()]
        attempts = 0
        for _ in range(ROUNDS):
            for attacker in ("vm1", "client1"):
                attempts += send_udp(f"rn-{name}-{attacker}", datagrams)
            time.sleep(0.2)
        time.sleep(0.5)
        after = lab.filter_counters()
        dropped = {nve: after[nve]["vxlan-foreign"] - before.get(nve, {}).get("vxlan-foreign", 0) for nve in after}
        arrived = {vm: [f.summary() for f in s.stop()] for vm, s in sniffers.items()}
        result = flow.finish([])
        print(f"forged VXLAN: {attempts} datagrams to {len(vteps)} VTEPs x {len(vnis)} VNIs x {len(vms)} VMs "
              f"from a VM and a WAN client; dropped per NVE {dropped}; arrived at VMs "
              f"{sum(map(len, arrived.values()))}; legitimate stream lost {result.lost} of {result.sent}")
        assert attempts == ROUNDS * 2 * len(datagrams)
        assert arrived == {vm: [] for vm in vms}, arrived
        per_vtep = {n.vtep: 0 for n in snap.nves.values()}
        for nve, n in dropped.items():
            if nve in snap.nves:
                per_vtep[snap.nves[nve].vtep] += n
        assert all(n > 0 for n in per_vtep.values()), f"the forgeries reached every VTEP: {per_vtep}"
        assert sum(dropped.values()) <= attempts
        assert result.lost == 0 and result.survived, result.to_json()
