#!/usr/bin/env python3
"""Port-filter cost on an NVE: what the agent pays for nftables, next to netlink work it already does.

    .venv/bin/python benchmarks/filters.py [--ports N ...] [--runs K] [-f table|json]

Runs as root in one namespace of its own (rn-bench-filters-<pid>), removed at the end; touches
nothing else. For each table size N (VM ports already filtered), it times, K times each:
  * read:  what the agent reads of its table at each resync (filters.read_table_briefly:
           chain names, maps, base chains, counters; the whole `list table` for comparison), against
           the baseline of the agent's link dump (pyroute2 get_links) in the same
           namespace with N + 8 links;
  * apply: one more port's filter (plan_table -> one transaction: two chains, maps refilled), the
           change a prepared move's destination makes, against the baseline of one static bridge
           FDB entry (pyroute2 fdb replace), the smallest change a move makes;
  * swap:  one port's filter replaced (a policy change: new chains in, old ones out, one transaction).
Prints medians with the spread (p10-p90) and each ratio to its baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from pyroute2 import IPRoute

from roamnet.dataplane import netns
from roamnet.dataplane.nft import Nft, read_table_briefly
from roamnet.mapping.records import ALLOW, DENY, PolicySet, Rule, Segment
from roamnet.nve.filters import FAMILY, TABLE, desired_table, plan_table, read_table
from roamnet.nve.portfilter import port_filter

POLICY = PolicySet((
    Rule("web-to-db", ("t1",), ("198.19.1.0/24",), ("198.19.2.0/24",), "tcp", (5432,), ALLOW),
    Rule("no-ssh", None, None, ("198.19.1.11/32",), "tcp", (22,), DENY),
    Rule("dns", ("t1",), ("198.19.2.0/24",), ("198.19.1.0/24",), "udp", (53,), ALLOW),
), {"t1": DENY})
SEGMENTS = {10100: Segment(10100, "web", "198.19.1.0/24", "198.19.1.1/24", "t1"),
            10200: Segment(10200, "db", "198.19.2.0/24", "198.19.2.1/24", "t1")}


def ports(n: int, policy: PolicySet = POLICY) -> dict:
    out = {}
    for i in range(n):
        ip = f"198.19.1.{10 + i % 240}"
        f = port_filter(policy, SEGMENTS, f"vm{i}/0", 10100, f"02:00:00:01:{i >> 8:02x}:{i & 255:02x}", (ip,))
        out[f"vm{i}/0"] = (f"t{i}", f)
    return out


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def stats(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10)
    return {"median_ms": round(statistics.median(ms), 3), "p10_ms": round(q[0], 3), "p90_ms": round(q[-1], 3)}


def run(sizes: list[int], runs: int) -> dict:
    ns = f"rn-bench-filters-{os.getpid()}"
    netns.create(ns)
    nft, ipr = Nft(ns), IPRoute(netns=ns)
    rows = []
    try:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="p0", kind="veth", peer="p0b")  # (no dummy driver on every kernel)
        br, p0 = ipr.link_lookup(ifname="br0")[0], ipr.link_lookup(ifname="p0")[0]
        ipr.link("set", index=p0, master=br)
        for n in sizes:
            print(f"table with {n} filtered ports ...", file=sys.stderr)
            nft.run([{"flush": {"ruleset": None}}])
            for i in range((n + 8 - len(ipr.get_links()) + 1) // 2):  # links for the baseline read
                ipr.link("add", ifname=f"d{n}x{i}", kind="veth", peer=f"d{n}y{i}")
            base = desired_table(ports(n), {10100: True})
            nft.run(plan_table(base, read_table(None)))
            have = read_table(nft.list_table(FAMILY, TABLE))
            read_all = timed(lambda: read_table(nft.list_table(FAMILY, TABLE)), runs)
            assert read_table_briefly(nft).summary() == have.summary() and read_table_briefly(nft).base_ok
            read = timed(lambda: read_table_briefly(nft), runs)  # what the agent does
            links = timed(ipr.get_links, runs)
            grown = desired_table(ports(n + 1), {10100: True})

            def add_then_remove() -> float:
                t = time.perf_counter()
                nft.run(plan_table(grown, have))
                ms = (time.perf_counter() - t) * 1000
                nft.run(plan_table(base, read_table(nft.list_table(FAMILY, TABLE))))
                return ms

            apply = [add_then_remove() for _ in range(runs)]
            fdb = timed(lambda: ipr.fdb("replace", ifindex=p0, lladdr="02:00:00:aa:00:01", master=br,
                                        state=0x40, flags=0x04), runs)
            stricter = PolicySet(POLICY.rules + (Rule("no-web", None, None, ("198.19.1.0/24",), "tcp", (80,), DENY),),
                                 POLICY.defaults)
            swapped = dict(ports(n))
            swapped["vm0/0"] = ports(1, stricter)["vm0/0"]
            other = desired_table(swapped, {10100: True})
            tables = [base, other]

            def swap() -> float:
                cur = read_table(nft.list_table(FAMILY, TABLE))
                want = tables[1] if set(tables[0].chains) == set(cur.chains) else tables[0]
                cmds = plan_table(want, cur)
                t = time.perf_counter()
                nft.run(cmds)
                return (time.perf_counter() - t) * 1000

            swaps = [swap() for _ in range(runs)]
            row = {"ports": n, "read": stats(read), "read_whole_table": stats(read_all),
                   "read_baseline_links": stats(links),
                   "apply_one_port": stats(apply), "apply_baseline_fdb": stats(fdb), "swap_one_port": stats(swaps)}
            row["read_ratio"] = round(row["read"]["median_ms"] / row["read_baseline_links"]["median_ms"], 2)
            row["apply_ratio"] = round(row["apply_one_port"]["median_ms"] / row["apply_baseline_fdb"]["median_ms"], 2)
            rows.append(row)
    finally:
        nft.close()
        ipr.close()
        netns.remove(ns)
    return {"machine": f"{platform.node()} {platform.machine()} {platform.release()}, {os.cpu_count()} CPUs",
            "runs": runs, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("-f", "--format", choices=["table", "json"], default="table")
    args = ap.parse_args()
    res = run(args.ports, max(10, args.runs))
    if args.format == "json":
        print(json.dumps(res, indent=2))
        return
    print(f"# {res['machine']}; {res['runs']} runs each; median (p10-p90) ms")
    print("| ports | agent's read | whole table | baseline: link dump | ratio | add one port | baseline: one FDB entry | ratio | swap one port |")
    print("|---|---|---|---|---|---|---|---|---|")

    def f(s: dict) -> str:
        return f"{s['median_ms']:.2f} ({s['p10_ms']:.2f}-{s['p90_ms']:.2f})"

    for r in res["rows"]:
        print(f"| {r['ports']} | {f(r['read'])} | {f(r['read_whole_table'])} | {f(r['read_baseline_links'])} | {r['read_ratio']} | "
              f"{f(r['apply_one_port'])} | {f(r['apply_baseline_fdb'])} | {r['apply_ratio']} | {f(r['swap_one_port'])} |")


if __name__ == "__main__":
    main()
