#!/usr/bin/env python3
"""A flooding VM against the per-port budgets: the same flood with roamnet's default budgets and with
budgets so high that nothing is limited (`limits: {announce: 1000000, arp: 1000000, bum: 1000000}`).

    .venv/bin/python benchmarks/flood.py [--rounds K] [--seconds S] [-f table|json]

Root only. Builds one lab at a time (`rn-fl-<pid>-<config>-*`, addresses from 198.18.0.0/15), always
torn down: dc1 = hv1 hv2, dc2 = hv3, one CUG; vm1 (the flooder) on hv1, vm2 (the mover) on hv2. Per
round: S seconds in which vm2 moves hv2→hv3→hv2 with nobody flooding (quiet), then S seconds in which
it does the same while vm1 floods valid GARPs, RARPs and ARP requests for random IPs from a raw
socket (flood); between phases, hv1's agent drains what the kernel queued for it. Figures per config
and phase: the CPU of this process over the phase (it holds the mapping and every agent, as threads), the
announcements hv1's agent saw per second, and each move's activation (`mapped_ms`: VM resumed →
mapping moved) and convergence (`converged_ms`: VM resumed → every NVE programmed); medians with
the spread (min–max), and each flood median's ratio to the quiet one of the same config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

FLOODER = r"""
import random, socket, struct, sys, time
mac, ip, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
m, me, bc = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip), b"\xff" * 6
net = ip.rsplit(".", 1)[0]
arp = lambda tpa: bc + m + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + me + b"\0" * 6 + tpa
frames = [arp(me), bc + m + b"\x80\x35" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + m + b"\0" * 4 + m + b"\0" * 4]
frames += [arp(socket.inet_aton(f"{net}.{random.randint(150, 250)}")) for _ in range(64)]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end and sent < 100_000_000:
    for f in (frames[0], frames[1], frames[2 + sent % 64]):
        try:
            s.send(f); sent += 1
        except OSError:
            pass
print(sent)
"""
CONFIGS = {"budgets": None, "unlimited": {"announce": 1_000_000, "arp": 1_000_000, "bum": 1_000_000}}


def topology(name: str, limits: dict | None) -> dict:
    t = {"name": name, "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}, "dc2": {"servers": ["hv3"]}},
         "cugs": {"web": {"vni": 10100, "subnet": "198.19.1.0/24"}},
         "vms": {"vm1": {"server": "hv1", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:11", "ip": "198.19.1.11"}]},
                 "vm2": {"server": "hv2", "interfaces": [{"cug": "web", "mac": "02:00:00:01:00:12", "ip": "198.19.1.12"}]}}}
    if limits:
        t["limits"] = limits
    t["mobility"] = {"max_moves": 1000, "window_s": 60}  # vm2 moves 4 times a round, on purpose
    return t


def seen(lab) -> int:
    return lab.mapping.statuses.all()["hv1"].announcements_seen


def drain(lab, limit_s: float = 20.0) -> None:
    """Until hv1's agent has read what the kernel queued for it (its count stops growing), bounded."""
    deadline, last = time.monotonic() + limit_s, -1
    while time.monotonic() < deadline and seen(lab) != last:
        last = seen(lab)
        time.sleep(1.0)


def phase(lab, seconds: float, flood: bool) -> dict:
    """`seconds` of wall time, two moves of vm2 in it, vm1 flooding all along or not."""
    seen0, cpu0, wall0 = seen(lab), time.process_time(), time.monotonic()
    flooder = None
    if flood:
        flooder = subprocess.Popen(["ip", "netns", "exec", f"rn-{lab.name}-vm1", sys.executable, "-c", FLOODER,
                                    "02:00:00:01:00:11", "198.19.1.11", str(seconds)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    recs = [lab.migrate("vm2", to) for to in ("hv3", "hv2")]
    time.sleep(max(0.0, wall0 + seconds - time.monotonic()))
    sent = int(flooder.communicate(timeout=seconds + 30)[0]) if flooder else 0
    wall = time.monotonic() - wall0
    out = {"cpu_pct": 100 * (time.process_time() - cpu0) / wall, "seen_per_s": (seen(lab) - seen0) / wall,
           "sent": sent, "mapped_ms": [r["mapped_ms"] for r in recs], "converged_ms": [r["converged_ms"] for r in recs]}
    lab.wait_converged(10)
    drain(lab)
    return out


def run_config(config: str, rounds: int, seconds: float) -> dict:
    from roamnet.intent.model import parse_topology
    from roamnet.lab.engine import Lab

    name = f"fl{os.getpid() % 100000}-{config[:3]}"
    lab = Lab(parse_topology(topology(name, CONFIGS[config]), f"<{name}>"))
    out: dict = {"quiet": [], "flood": []}
    try:
        lab.up(converge_timeout=30)
        for k in range(rounds):
            print(f"{config}: round {k + 1}/{rounds}", file=sys.stderr)
            out["quiet"].append(phase(lab, seconds, flood=False))
            out["flood"].append(phase(lab, seconds, flood=True))
    finally:
        lab.down()
    return out


def stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def summarize(raw: dict) -> dict:
    out = {}
    for config, phases in raw.items():
        out[config] = {}
        for ph, runs in phases.items():
            out[config][ph] = {k: stats([v for r in runs for v in (r[k] if isinstance(r[k], list) else [r[k]])])
                               for k in ("cpu_pct", "seen_per_s", "mapped_ms", "converged_ms", "sent")}
        for k in ("cpu_pct", "mapped_ms", "converged_ms"):
            q, f = out[config]["quiet"][k]["median"], out[config]["flood"][k]["median"]
            out[config].setdefault("ratio_flood_to_quiet", {})[k] = round(f / q, 2) if q else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="flood length per round (bounded)")
    ap.add_argument("-f", "--format", choices=("table", "json"), default="table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("root only: it builds namespace labs")
    raw = {c: run_config(c, max(1, args.rounds), min(max(1.0, args.seconds), 30.0)) for c in CONFIGS}
    summary = summarize(raw)
    meta = {"machine": f"{platform.node()} {platform.machine()} {platform.release()}", "cpus": os.cpu_count(),
            "rounds": args.rounds, "flood_s": args.seconds}
    if args.format == "json":
        print(json.dumps({"meta": meta, "summary": summary, "raw": raw}, indent=2))
        return
    print(f"flood benchmark on {meta['machine']} ({meta['cpus']} CPUs), {args.rounds} rounds, floods of {args.seconds:g} s")
    for config, phases in summary.items():
        for ph in ("quiet", "flood"):
            s = phases[ph]
            print(f"{config:9} {ph:5}  CPU {s['cpu_pct']['median']}% [{s['cpu_pct']['min']}–{s['cpu_pct']['max']}]  "
                  f"announcements seen/s {s['seen_per_s']['median']}  mapped_ms {s['mapped_ms']['median']} "
                  f"[{s['mapped_ms']['min']}–{s['mapped_ms']['max']}]  converged_ms {s['converged_ms']['median']} "
                  f"[{s['converged_ms']['min']}–{s['converged_ms']['max']}]  frames sent {s['sent']['median']}")
        print(f"{config:9} flood/quiet: {phases['ratio_flood_to_quiet']}")


if __name__ == "__main__":
    main()
