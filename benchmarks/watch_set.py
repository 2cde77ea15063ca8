#!/usr/bin/env python3
"""Store-side interest on etcd: many prefixes on one gRPC watch stream (`EtcdStore.watch_set`), against
a watch stream per prefix through etcd's JSON gateway (`EtcdStore.watch`, what a process has today).

    .venv/bin/python benchmarks/watch_set.py [--prefixes 1000] [--writes 200] [--gateway 100] [-f table|json]

No root: a private etcd member (`lab.etcd.EtcdServer`: a unix socket in a 0700 directory, stopped by
its pid at the end). --prefixes prefixes `/mapping/vnis/<vni>/` (a process interested in that many
VNIs) are added to one watch set, then --writes writes go one at a time, each to a random watched VNI
followed by one to an unwatched VNI. Reported:
  * adding: the time to add every prefix (watch created, prefix read at the watch's start), per add;
  * threads and RSS the set added to the process;
  * latency from a write's request (a put through the gateway, ~1 ms of it) to `next()` handing out its
    event, p50 / p99 / max;
  * events handed out per write (watched: 1; the unwatched writes must bring none);
and, for --gateway prefixes, the same adds as gateway watch streams (one HTTP stream and one thread
each): the time to have them all open, and the threads they added.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from roamnet.lab.etcd import EtcdServer
from roamnet.mapping.store.etcd import EtcdStore, StoreError


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def watch_set(store: EtcdStore, prefixes: int, writes: int) -> dict:
    threads, rss = threading.active_count(), rss_kib()
    ws = store.watch_set()
    t = time.perf_counter()
    for vni in range(prefixes):
        ws.add(f"/mapping/vnis/{vni}/")
    adding = time.perf_counter() - t
    added = {"threads": threading.active_count() - threads, "rss_kib": rss_kib() - rss}
    latency, put, delivered, stray = [], [], 0, 0
    rnd = random.Random(18)
    for i in range(writes):
        vni = rnd.randrange(prefixes)
        t = time.perf_counter()
        rev = store.put(f"/mapping/vnis/{vni}/b/m{i}", "x")
        put.append(time.perf_counter() - t)
        for _ in range(100):  # bounded: at most 100 waits of 0.5 s for one event
            events, _ = ws.next(0.5)
            delivered += len(events)
            stray += sum(1 for e in events if e.revision != rev)
            if any(e.revision == rev for e in events):
                latency.append(time.perf_counter() - t)
                break
        store.put(f"/mapping/bindings/{prefixes + vni}/m{i}", "not watched")  # its event would come next round
    events, _ = ws.next(0.2)  # what else came (the last unwatched write must bring nothing)
    delivered += len(events)
    stray += len(events)
    ws.close()
    ms, put_ms = [x * 1000 for x in latency], [x * 1000 for x in put]
    return {"prefixes": prefixes, "add_total_s": round(adding, 3), "add_ms": round(adding / prefixes * 1000, 3),
            **added, "writes": writes, "latency_ms": {"p50": round(pct(ms, 0.5), 2), "p99": round(pct(ms, 0.99), 2),
                                                      "max": round(max(ms), 2)},
            "put_ms_p50": round(pct(put_ms, 0.5), 2),
            "events_per_write": round(delivered / writes, 3), "stray_events": stray}


def gateway(store: EtcdStore, prefixes: int) -> dict:
    threads = threading.active_count()
    rev = store.revision + 1
    t, failed = time.perf_counter(), ""
    for vni in range(prefixes):
        try:
            store.watch(f"/mapping/gw/{vni}/", rev, timeout=0)  # opens the prefix's long-lived stream
        except StoreError as exc:  # each stream holds one of the client's pooled connections (httpx: 100)
            failed = f"prefix {vni + 1}: {exc}"
            break
    return {"prefixes": prefixes, "open_total_s": round(time.perf_counter() - t, 3),
            "threads": threading.active_count() - threads, "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefixes", type=int, default=1000)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--gateway", type=int, default=100, help="prefixes watched through the gateway (0: none)")
    ap.add_argument("-f", "--format", choices=["table", "json"], default="table")
    a = ap.parse_args()
    if min(a.prefixes, a.writes) < 1 or a.gateway < 0:
        sys.exit("watch_set.py: --prefixes and --writes are at least 1, --gateway at least 0")
    server = EtcdServer(Path(tempfile.mkdtemp(prefix="rn-bench-ws-")), name=f"rn-bench-ws{os.getpid()}")
    store = server.start()
    try:
        out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "load_before": os.getloadavg()[0]},
               "watch_set": watch_set(store, a.prefixes, a.writes)}
        if a.gateway:
            out["gateway"] = gateway(store, a.gateway)
        out["machine"]["load_after"] = os.getloadavg()[0]
    finally:
        store.close()
        server.stop()
    if a.format == "json":
        print(json.dumps(out, indent=2))
        return
    w, m = out["watch_set"], out["machine"]
    print(f"{m['cpus']} CPUs, Python {m['python']}, load {m['load_before']:.2f} -> {m['load_after']:.2f}")
    print(f"watch set, one gRPC stream: {w['prefixes']} prefixes added in {w['add_total_s']} s ({w['add_ms']} ms each),"
          f" +{w['threads']} threads, +{w['rss_kib']} KiB RSS")
    lat = w["latency_ms"]
    print(f"  {w['writes']} writes: put -> next() p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
          f"(the put alone p50 {w['put_ms_p50']} ms); {w['events_per_write']} events per watched write, {w['stray_events']} from unwatched prefixes")
    if "gateway" in out:
        g = out["gateway"]
        print(f"gateway, a stream per prefix: {g['prefixes']} prefixes asked, +{g['threads']} threads, "
              f"{g['open_total_s']} s" + (f"; failed at {g['failed']}" if g["failed"] else ""))


if __name__ == "__main__":
    main()
