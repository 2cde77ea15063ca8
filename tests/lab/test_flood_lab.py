"""A noisy or hostile VM on the real kernel (issue 21): its floods of valid announcements and ARP are
held to its port's budget in the kernel, so the agents never see more than that; its RARPs stay on its
NVE; its broadcast over budget is dropped and counted; another VM's moves and a third pair's stream do
not suffer."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import Sniffer

FLOODER = r"""
import os, random, socket, struct, sys, time
dev, mac, ip, seconds, kinds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5].split(",")
m = bytes.fromhex(mac.replace(":", "")); me = socket.inet_aton(ip); bc = b"\xff" * 6
net = ip.rsplit(".", 1)[0]
frames = []
if "garp" in kinds:  # a valid gratuitous ARP: the VM's own MAC and IP, as port security allows
    frames.append(bc + m + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + me + b"\0" * 6 + me)
if "rarp" in kinds:  # QEMU's announce, with the VM's own MAC
    frames.append(bc + m + b"\x80\x35" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + m + b"\0" * 4 + m + b"\0" * 4)
asks = [bc + m + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + me + b"\0" * 6
        + socket.inet_aton(f"{net}.{random.randint(150, 250)}") for _ in range(64)] if "arp" in kinds else []
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((dev, 0))
sent, end, i = 0, time.monotonic() + seconds, 0
while time.monotonic() < end and sent < 50_000_000:  # bounded in time and count
    for f in frames:
        try:
            s.send(f); sent += 1
        except OSError:
            pass
    if asks:
        try:
            s.send(asks[i % 64]); sent += 1; i += 1
        except OSError:
            pass
print(sent)
"""


def flood(ns: str, mac: str, ip: str, seconds: float, kinds: str) -> subprocess.Popen:
    """A flood of raw frames out of a guest's eth0, as fast as one raw socket goes, for `seconds`."""
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", FLOODER, "eth0", mac, ip, str(seconds),
                             kinds], stdout=subprocess.PIPE, text=True)


def moves(lab, vm: str, there: str, back: str) -> list[dict]:
    out = []
    for to in (there, back):
        rec = lab.migrate(vm, to)
        assert rec["converged_ms"] is not None, rec
        out.append(rec)
        time.sleep(0.3)
    return out


@pytest.fixture
def flood_topology(request, make_topology, lab_name, lab_namespaces):
    t = make_topology(lab_name(request.param), datacenters={"dc1": ["hv1", "hv2"], "dc2": ["hv3"]},
                      vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web"), "vm3": ("hv1", "web"), "vm4": ("hv3", "web")})
    lab_namespaces(t)
    return t


@pytest.mark.parametrize("flood_topology", ["t-flood"], indirect=True)
def test_a_flooding_vm_is_held_to_its_budget_and_hurts_nobody(flood_topology, lab_up, traffic, addr):
    t = flood_topology
    name = t["name"]
    ns1, mac1, ip1 = f"rn-{name}-vm1", addr.mac(t, "vm1"), addr.ip(t, "vm1")
    with lab_up(t) as lab:
        def phase(flooding: bool) -> dict:
            start_at = time.monotonic() + 0.5
            flow = traffic(lab, f"s{int(flooding)}", "udp", "vm3", "vm4", 5500 + flooding, start_at, 6.0, rate=1000)
            before = lab.filter_counters()["hv1"]
            seen0 = lab.mapping.statuses.all()["hv1"].announcements_seen
            cpu0, wall0 = time.process_time(), time.monotonic()
            flooder = flood(ns1, mac1, ip1, 5.0, "garp,rarp,arp") if flooding else None
            time.sleep(max(0.0, start_at + 0.5 - time.monotonic()))
            recs = moves(lab, "vm2", "hv3", "hv2")
            sent = int(flooder.communicate(timeout=30)[0]) if flooder else 0
            cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            result = flow.finish(recs)
            after = lab.filter_counters()["hv1"]
            seen = lab.mapping.statuses.all()["hv1"].announcements_seen - seen0
            return {"recs": recs, "sent": sent, "cpu": cpu, "result": result, "seen": seen,
                    "counted": {k: after[k] - before[k] for k in ("announce-limited", "arp-limited", "arp-request")}}

        quiet = phase(False)
        noisy = phase(True)
        for label, p in (("no flood", quiet), ("flood", noisy)):
            print(f"{label}: flood frames sent {p['sent']}; this process (agents + mapping) CPU {100 * p['cpu']:.0f}%; "
                  f"hv1's agent saw {p['seen']} announcements; mapped_ms {[r['mapped_ms'] for r in p['recs']]}; "
                  f"converged_ms {[r['converged_ms'] for r in p['recs']]}; stream lost {p['result'].lost} of "
                  f"{p['result'].sent}, longest gap {p['result'].max_gap_ms} ms; hv1 counted {p['counted']}")
        assert noisy["sent"] > 10_000, "the flood did not flood"
        # the flood is counted at the flooder's port...
        assert noisy["counted"]["announce-limited"] > noisy["sent"] / 3 * 0.5
        assert noisy["counted"]["arp-limited"] > 0
        # ...and the agent saw at most the port's budget of it: 2 rules (GARP, RARP) x (burst 40 + 20/s x ~7 s)
        assert noisy["seen"] <= 2 * (40 + 20 * 8) + quiet["seen"], noisy["seen"]
        # the other VM's moves complete and the third pair's stream loses nothing. How much slower the
        # moves are is measured by benchmarks/flood.py (medians over rounds, against the same flood
        # with no budgets), not asserted here: on 2 cores the flooder itself takes one, and a timing
        # bound on two moves failed one CI run in six (74 ms against 16 ms for one median)
        assert noisy["result"].lost == 0 and quiet["result"].lost == 0
        assert all(r["mapped_ms"] is not None and r["converged_ms"] is not None for r in noisy["recs"])


@pytest.mark.parametrize("flood_topology", ["t-rarp"], indirect=True)
def test_rarps_stay_on_their_nve_and_broadcast_over_budget_is_dropped(flood_topology, lab_up, addr):
    from scapy.layers.l2 import Ether

    t = flood_topology
    name = t["name"]
    ns1, mac1, ip1 = f"rn-{name}-vm1", addr.mac(t, "vm1"), addr.ip(t, "vm1")
    with lab_up(t) as lab:
        on_vxlan = [Sniffer(f"rn-{name}-{hv}", "vx10100", lambda e, o: Ether in e and e.type == 0x8035, seconds=30)
                    for hv in ("hv1", "hv2", "hv3")]
        before = lab.filter_counters()["hv1"]
        rarps = flood(ns1, mac1, ip1, 1.0, "rarp")
        sent = int(rarps.communicate(timeout=20)[0])
        # broadcast: UDP to the subnet's broadcast address, as fast as a socket goes, for 1 s
        bcast = ip1.rsplit(".", 1)[0] + ".255"
        sniff4 = Sniffer(f"rn-{name}-vm4", "eth0", lambda e, o: not o and e.dst == "ff:ff:ff:ff:ff:ff"
                         and e.type == 0x0800, seconds=30)
        code = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\nn, end = 0, time.monotonic() + 1.0\n"
                f"while time.monotonic() < end and n < 5_000_000:\n    s.sendto(b'x', ('{bcast}', 9)); n += 1\n"
                "print(n)")
        bsent = int(subprocess.run(["ip", "netns", "exec", ns1, sys.executable, "-c", code], capture_output=True,
                                   text=True, timeout=20, check=True).stdout)
        time.sleep(0.5)
        seen = [f for s in on_vxlan for f in s.stop()]
        reached = len(sniff4.stop())
        after = lab.filter_counters()["hv1"]
        counted = {k: after[k] - before[k] for k in ("rarp-local", "announce-limited", "bum-limited")}
        print(f"RARPs sent {sent}, seen on VXLAN devices {len(seen)}, counted {counted}; broadcasts sent {bsent}, "
              f"reached vm4 on hv3 {reached}")
        assert sent > 1000 and seen == []
        assert counted["rarp-local"] > 0 and counted["rarp-local"] + counted["announce-limited"] <= sent
        assert counted["bum-limited"] > 0 and counted["bum-limited"] + reached <= bsent
        assert reached <= 2 * 1000 + 1000 * 2  # burst + rate x (1 s + slack): the port's budget
