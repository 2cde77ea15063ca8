"""Port security on the real kernel: a VM (vm2) that forges another VM's (vm1's) addresses — a spoofed
source IP, a spoofed source MAC, a gratuitous ARP and an ARP reply claiming vm1's IP, a RARP with
vm1's MAC — gets every frame dropped at its own port and counted there; the victim's peers see none
of it and keep the right ARP entry, the mapping keeps vm1 where it is, and vm1's own move (its RARP
on its new port) is still followed. And the other way round: a clean run (lab up, traffic, a move)
counts no spoofing at all, from the moment the VMs are plugged in (issue 13: the lab's NIC bridges
sent IGMP reports of their own into the VMs' ports)."""

from __future__ import annotations

import socket
import time
from typing import Any

from conftest import Sniffer

COUNT = 5


def send_frames(ns: str, frames: list[bytes], dev: str = "eth0") -> None:
    """Raw frames out of a guest's interface, as a misbehaving guest would send them."""
    from roamnet.dataplane import netns

    s = netns.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((dev, 0))
        for _ in range(COUNT):
            for f in frames:
                s.send(f)
            time.sleep(0.02)
    finally:
        s.close()


def test_spoofing_and_arp_poisoning_dropped_counted_and_real_move_followed(host, lab_name, make_topology,
                                                                          lab_namespaces, lab_up, addr):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    t = make_topology(lab_name("t-spoof"), datacenters={"dc1": ["hv1", "hv2"], "dc2": ["hv3"]},
                      vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web"), "vm3": ("hv3", "web")})
    lab_namespaces(t)
    ns = {vm: f"rn-{t['name']}-{vm}" for vm in ("vm1", "vm2", "vm3")}
    ip1, ip2, ip3 = (addr.ip(t, v) for v in ("vm1", "vm2", "vm3"))
    mac1, mac2, mac3 = (addr.mac(t, v) for v in ("vm1", "vm2", "vm3"))
    bcast = "ff:ff:ff:ff:ff:ff"

    def neigh(vm: str, ip: str) -> list:
        return [n.get("lladdr") for n in host.ip_json(ns[vm], "neigh", "show", ip)]

    with lab_up(t) as lab:
        for a, b in (("vm3", ip1), ("vm3", ip2), ("vm1", ip3)):
            out = host.run(["ip", "netns", "exec", ns[a], "ping", "-n", "-q", "-c", "1", "-W", "1", b],
                           timeout=10, check=False)
            assert out.returncode == 0, out.stdout
        assert neigh("vm3", ip1) == [mac1]
        before = lab.filter_counters()["hv2"]

        def forged(e: Any, outgoing: bool) -> bool:
            """Anything claiming vm1's IP or MAC that vm1 did not send (vm1 is idle meanwhile)."""
            if ARP in e:
                return e[ARP].psrc == ip1 and e[ARP].hwsrc != mac1 or e[ARP].hwsrc == mac1 and e.src != mac1
            return (IP in e and e[IP].src == ip1) or (e.src == mac1 and e.type == 0x8035)

        sniffers = [Sniffer(ns[v], "eth0", lambda e, o: not o and forged(e, o), seconds=60) for v in ("vm1", "vm3")]
        time.sleep(0.2)
        send_frames(ns["vm2"], [
            bytes(Ether(src=mac2, dst=mac3) / IP(src=ip1, dst=ip3) / UDP(sport=4000, dport=4000) / b"spoofed ip"),
            bytes(Ether(src=mac1, dst=mac3) / IP(src=ip1, dst=ip3) / UDP(sport=4000, dport=4000) / b"spoofed mac"),
            bytes(Ether(src=mac2, dst=bcast) / ARP(op=2, hwsrc=mac2, psrc=ip1, hwdst=bcast, pdst=ip1)),  # GARP
            bytes(Ether(src=mac2, dst=mac3) / ARP(op=2, hwsrc=mac2, psrc=ip1, hwdst=mac3, pdst=ip3)),  # poison
            bytes(Ether(src=mac1, dst=bcast, type=0x8035) / ARP(op=3, hwsrc=mac1, psrc="0.0.0.0", hwdst=mac1,
                                                                 pdst="0.0.0.0")),  # "vm1 moved here"
        ])
        # control: the same ARP reply with vm2's own address passes, and the same captures do see it
        # (a gratuitous one would not: the bridges keep gratuitous ARPs off the overlay)
        control = Sniffer(ns["vm3"], "eth0", lambda e, o: not o and ARP in e and e[ARP].psrc == ip2, seconds=30)
        time.sleep(0.2)
        send_frames(ns["vm2"], [bytes(Ether(src=mac2, dst=mac3) / ARP(op=2, hwsrc=mac2, psrc=ip2, hwdst=mac3,
                                                                         pdst=ip3))])
        time.sleep(0.5)
        seen = [f for s in sniffers for f in s.stop()]
        assert seen == [], [f.summary() for f in seen]
        assert control.stop(), "vm2's own gratuitous ARP did not reach vm3"

        after = lab.filter_counters()["hv2"]
        counted = {k: after[k] - before[k] for k in ("spoof-ip", "spoof-mac", "spoof-arp")}
        assert counted["spoof-ip"] >= COUNT, counted
        assert counted["spoof-mac"] >= 2 * COUNT, counted  # the spoofed-MAC packet and the RARP
        assert counted["spoof-arp"] >= 2 * COUNT, counted  # the GARP and the poisoning reply
        assert neigh("vm3", ip1) == [mac1] and neigh("vm1", ip3) == [mac3]  # caches unchanged
        snap = lab.mapping.snapshot()
        assert snap.binding_of("vm1/0").nve == "hv1"  # the forged RARP moved nothing

        # vm1's real move: its RARP on its new port (which has vm1's filter) activates it
        rec = lab.migrate("vm1", "hv3")
        assert rec["activated_by"] == "announcement", rec
        assert lab.mapping.snapshot().binding_of("vm1/0").nve == "hv3"
        out = host.run(["ip", "netns", "exec", ns["vm2"], "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", ip1],
                       timeout=10, check=False)
        assert out.returncode == 0, out.stdout


GUARDS = ("spoof-mac", "spoof-ip", "spoof-arp", "not-ipv4")  # what a well-behaved guest never trips


def test_clean_run_counts_no_spoofing(host, lab_name, make_topology, lab_namespaces, lab_up, traffic, addr):
    """Nothing but the guests (and QEMU's announcements for them) sends into a VM port: over a lab's
    whole life — VMs plugged, ARP, a stream, a move to another data center — every NVE's spoofing and
    non-IPv4 totals stay at zero. The totals are the table's named counters, which exist before the
    first VM is plugged in, so frames sent right after lab up (issue 13) count too. Then one real
    forgery is counted exactly, at the forger's NVE only."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    t = make_topology(lab_name("t-clean"), datacenters={"dc1": ["hv1", "hv2"], "dc2": ["hv3"]},
                      vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web"), "vm3": ("hv3", "web")})
    lab_namespaces(t)
    name = t["name"]
    mac = {vm: addr.mac(t, vm) for vm in ("vm1", "vm2", "vm3")}

    with lab_up(t) as lab:
        # independent of nftables: what enters the ports of the VMs that stay put, on their servers
        sniffers = {vm: Sniffer(f"rn-{name}-{hv}", f"{vm}-e0", lambda e, o, m=mac[vm]: not o and e.src != m,
                                seconds=60) for vm, hv in (("vm2", "hv2"), ("vm3", "hv3"))}
        for a, b in (("vm2", "vm1"), ("vm3", "vm1"), ("vm2", "vm3")):
            out = host.run(["ip", "netns", "exec", f"rn-{name}-{a}", "ping", "-n", "-q", "-c", "1", "-W", "1",
                            addr.ip(t, b)], timeout=10, check=False)
            assert out.returncode == 0, out.stdout
        start_at = time.monotonic() + 1.0
        flow = traffic(lab, "udp", "udp", "vm2", "vm1", 5301, start_at, 3.0, rate=200)
        time.sleep(max(0.0, start_at + 1.0 - time.monotonic()))
        rec = lab.migrate("vm1", "hv3")
        assert rec["converged_ms"] is not None, rec
        result = flow.finish([rec])
        assert result.survived is True, result.to_json()
        time.sleep(1.0)  # past QEMU's last announcement (800 ms)

        # the bridges roamnet and the lab make send nothing of their own into a segment: no multicast
        # snooping (a snooping bridge joins 224.0.0.106 and sends IGMP reports from its own MAC)
        bridges = {ns: {b["ifname"]: b["linkinfo"]["info_data"]["mcast_snooping"]
                        for b in host.ip_json(ns, "-d", "link", "show", "type", "bridge")}
                   for ns in [f"rn-{name}-{hv}" for hv in ("hv1", "hv2", "hv3")] + [f"rn-{name}-{vm}.nic" for vm in mac]}
        assert all(b for ns, b in bridges.items() if not ns.endswith("-hv1")), bridges  # hv1: vm1 left, pruned
        assert bridges == {ns: dict.fromkeys(b, 0) for ns, b in bridges.items()}, bridges

        totals = lab.filter_counters()
        assert set(totals) == {"hv1", "hv2", "hv3"}
        assert {nve: {k: c[k] for k in GUARDS if c[k]} for nve, c in totals.items()} == \
            {nve: {} for nve in totals}, totals
        strangers = {vm: [f.summary() for f in s.stop()] for vm, s in sniffers.items()}
        assert strangers == {"vm2": [], "vm3": []}, strangers

        # control: the counters do count real spoofing — exactly the forged frames, where they entered
        send_frames(f"rn-{name}-vm2", [bytes(Ether(src=mac["vm1"], dst=mac["vm3"]) / IP(src=addr.ip(t, "vm2"),
                                                                                     dst=addr.ip(t, "vm3")))])
        after = lab.filter_counters()
        counted = {nve: {k: after[nve][k] - totals[nve][k] for k in GUARDS if after[nve][k] != totals[nve][k]}
                   for nve in after}
        assert counted == {"hv1": {}, "hv2": {"spoof-mac": COUNT}, "hv3": {}}, counted
