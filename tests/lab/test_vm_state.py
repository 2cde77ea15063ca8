"""Across a move between data centers the guest keeps its MAC, IP, ARP cache, carrier and sockets."""

from __future__ import annotations

import time
from typing import Any

DURATION = 5.0
MOVE_AT = 2.0


def guest_state(host: Any, ns: str, peer_ip: str) -> dict[str, Any]:
    """What the guest sees, read with `ip` and sysfs (independent of roamnet)."""
    link = host.ip_json(ns, "link", "show", "dev", "eth0")[0]
    addrs = host.ip_json(ns, "addr", "show", "dev", "eth0")[0]
    neigh = [n for n in host.ip_json(ns, "neigh", "show", "dev", "eth0") if n.get("dst") == peer_ip]
    carrier_changes = int(host.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/carrier_changes"])
                          .stdout.strip())
    return {
        "mac": link["address"],
        "ips": sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs.get("addr_info", []) if a["family"] == "inet"),
        "lower_up": "LOWER_UP" in link["flags"],
        "neigh": neigh,
        "carrier_changes": carrier_changes,
    }


def test_vm_state_survives_move(host: Any, lab_name: Any, make_topology: Any, lab_up: Any, traffic: Any,
                                addr: Any) -> None:
    name = lab_name("t-vmstate")
    # vm1 on hv1 (dc1) moves to hv3 (dc2); its peer vm2 stays on hv2 (dc1)
    topo = make_topology(name, vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web")})
    guest = f"rn-{name}-vm1"
    peer_ip, peer_mac = addr.ip(topo, "vm2"), addr.mac(topo, "vm2")
    with lab_up(topo) as lab:
        host.run(["ip", "netns", "exec", guest, "ping", "-c", "1", "-W", "2", peer_ip])  # fills vm1's ARP cache
        start_at = time.monotonic() + 1.5
        tcp = traffic(lab, "tcp", "tcp", "vm2", "vm1", 5201, start_at, DURATION, rate=200)
        udp = traffic(lab, "udp", "udp", "vm2", "vm1", 5202, start_at, DURATION, rate=1000)

        time.sleep(max(0.0, start_at + MOVE_AT - 0.3 - time.monotonic()))
        before = guest_state(host, guest, peer_ip)
        assert before["mac"] == addr.mac(topo, "vm1")
        assert before["ips"] == [f"{addr.ip(topo, 'vm1')}/24"]
        assert before["lower_up"]
        assert [n.get("lladdr") for n in before["neigh"]] == [peer_mac], before["neigh"]

        time.sleep(max(0.0, start_at + MOVE_AT - time.monotonic()))
        rec = lab.migrate("vm1", "hv3")
        assert (rec["from"], rec["to"], rec["dc_from"], rec["dc_to"]) == ("hv1", "hv3", "dc1", "dc2")
        assert rec["converged_ms"] is not None, rec

        after = guest_state(host, guest, peer_ip)
        assert after["mac"] == before["mac"]
        assert after["ips"] == before["ips"]
        assert after["lower_up"], "the guest's link lost carrier"
        assert after["carrier_changes"] == before["carrier_changes"], "the guest's link flapped during the move"
        assert [n.get("lladdr") for n in after["neigh"]] == [peer_mac], f"ARP entry for {peer_ip} lost: {after}"
        assert not {"FAILED", "INCOMPLETE"} & set(after["neigh"][0].get("state", [])), after["neigh"]
        # the hypervisor side really moved: vm1's port is on hv3 now, gone from hv1
        assert any(link["ifname"] == "vm1-e0" for link in host.ip_json(f"rn-{name}-hv3", "link", "show"))
        assert not any(link["ifname"] == "vm1-e0" for link in host.ip_json(f"rn-{name}-hv1", "link", "show"))

        migs = [rec]
        t = tcp.finish(migs)
        u = udp.finish(migs)
        assert t.survived is True, f"TCP connection opened before the move broke: {t.to_json()}"
        assert t.received == t.sent > 0
        assert u.survived is True, u.to_json()
        # still the same guest afterwards
        final = guest_state(host, guest, peer_ip)
        assert (final["mac"], final["ips"]) == (before["mac"], before["ips"])
        assert final["carrier_changes"] == before["carrier_changes"]
