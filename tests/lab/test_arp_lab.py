"""ARP suppression from the mapping on the real kernel: with every guest's ARP cache flushed, VMs the
mapping knows resolve each other (across servers and data centers, before and after a move) with not
one ARP frame on any VXLAN device; a request for an IP nobody has still floods (so the captures do
see ARP when there is some)."""

from __future__ import annotations

import time

from conftest import Sniffer

from roamnet.experiments.runner import counter_delta

WEB = 10100


def arp_frames(e, out) -> bool:
    from scapy.layers.l2 import ARP

    return ARP in e


def test_known_ips_never_cross_vxlan(host, lab_name, make_topology, lab_namespaces, lab_up, addr):
    t = make_topology(lab_name("t-arp"), datacenters={"dc1": ["hv1", "hv2"], "dc2": ["hv3"]},
                      vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web"), "vm3": ("hv3", "web")})
    lab_namespaces(t)
    vms = ("vm1", "vm2", "vm3")

    def flush_and_ping_all() -> None:
        for vm in vms:
            host.run(["ip", "netns", "exec", f"rn-{t['name']}-{vm}", "ip", "neigh", "flush", "all"])
        for a in vms:
            for b in vms:
                if a != b:
                    out = host.run(["ip", "netns", "exec", f"rn-{t['name']}-{a}", "ping", "-n", "-q", "-c", "2",
                                    "-i", "0.1", "-W", "1", addr.ip(t, b)], timeout=20, check=False)
                    assert out.returncode == 0, f"{a} -> {b}: {out.stdout}"
                    neigh = host.ip_json(f"rn-{t['name']}-{a}", "neigh", "show", addr.ip(t, b))
                    assert [n.get("lladdr") for n in neigh] == [addr.mac(t, b)], neigh

    with lab_up(t) as lab:
        def capture() -> list[Sniffer]:
            """On the VXLAN device of every NVE that has the segment now (at least two)."""
            have = [s for s in ("hv1", "hv2", "hv3")
                    if any(x["ifname"] == f"vx{WEB}" for x in host.ip_json(lab.plan.nodes[s].ns, "link", "show"))]
            assert len(have) >= 2, have
            return [Sniffer(lab.plan.nodes[s].ns, f"vx{WEB}", arp_frames, seconds=60) for s in have]

        sniffers = capture()
        time.sleep(0.2)
        before = lab.filter_counters()
        flush_and_ping_all()
        lab.migrate("vm1", "hv3")  # to the other data center: the answers follow nothing but the mapping
        flush_and_ping_all()
        seen = [f for s in sniffers for f in s.stop()]
        assert seen == [], [f.summary() for f in seen]
        # the NVEs' counters say the same: requests from VMs, answered locally, none to or from VXLAN
        counted = counter_delta(before, lab.filter_counters())["total"]
        assert counted["arp-request"] >= 6 and counted["arp-to-vxlan"] == 0 and counted["arp-from-vxlan"] == 0, counted

        # control: the mapping knows no 198.19.1.99, so that request floods (and the captures see it)
        sniffers = capture()
        time.sleep(0.2)
        host.run(["ip", "netns", "exec", f"rn-{t['name']}-vm2", "ping", "-c", "1", "-W", "1", "198.19.1.99"],
                 timeout=10, check=False)
        seen = [f for s in sniffers for f in s.stop()]
        assert seen and all(f["ARP"].pdst == "198.19.1.99" for f in seen), [f.summary() for f in seen]
        assert sum(c["arp-to-vxlan"] for c in lab.filter_counters().values()) > 0


def test_unknown_ips_do_not_flood_when_the_cug_says_so(host, lab_name, make_topology, lab_namespaces, lab_up):
    t = make_topology(lab_name("t-arpknob"), datacenters={"dc1": ["hv1", "hv2"]},
                      vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web")})
    t["cugs"]["web"]["flood_unknown_arp"] = False
    lab_namespaces(t)
    with lab_up(t) as lab:
        sniffers = [Sniffer(lab.plan.nodes[s].ns, f"vx{WEB}", arp_frames, seconds=30) for s in ("hv1", "hv2")]
        time.sleep(0.2)
        host.run(["ip", "netns", "exec", f"rn-{t['name']}-vm2", "ping", "-c", "2", "-W", "1", "198.19.1.99"],
                 timeout=10, check=False)
        out = host.run(["ip", "netns", "exec", f"rn-{t['name']}-vm2", "ping", "-n", "-q", "-c", "1", "-W", "1",
                        "198.19.1.11"], timeout=10, check=False)
        assert out.returncode == 0, out.stdout  # known IPs still resolve
        seen = [f for s in sniffers for f in s.stop()]
        assert seen == [], [f.summary() for f in seen]
        assert lab.filter_counters()["hv2"]["arp-unknown-dropped"] >= 1
