#!/usr/bin/env python3
"""What one VM move costs the fabric's agents, as the mapping grows (issue 18).

    .venv/bin/python benchmarks/scale.py                       # 100 NVEs, 10,000 VMs: about 2 minutes
    .venv/bin/python benchmarks/scale.py --sizes 100:10000 1000:100000 --stores etcd --moves 20
    .venv/bin/python benchmarks/scale.py -f json --out out/scale

No root, no namespace: real agent loops (`agent.loop.Agent`) with a kernel held in memory
(`dataplane.model.ModelKernel`), over a MemoryStore (every agent in this process) and over a real etcd
member (`lab.etcd.EtcdServer`: a private member on a unix socket in a 0700 directory, stopped by its
pid at the end; the agents in `--procs` worker processes, each with its own store client, one watch
and one view of the mapping, as one host running several agents would).

The mapping: N NVEs in two data centers (N - 2 servers and a border per DC), V VMs with one interface
each, in V / --vms-per-cug CUGs; each CUG lives on a pod of --pod consecutive servers (pods overlap,
so each server hosts about --pod CUGs; the pods at the middle span both DCs); every --cug-per-tenant
consecutive CUGs are a routed tenant. Written straight into the store in transactions.

A move: the destination's hypervisor plugs the VM's port (its agent sees a link event), the VM is
reported there (`report_move`, what its announcement does), then the source unplugs it. Moves alternate
inside one DC and between the DCs, to random servers. Per move:
  * involved agents: the NVEs the move concerns (`Orchestrator.concerned`, what a move's phases wait
    for: the hosts of the CUGs of the VM's tenant, the source and destination, the borders of a routed
    tenant);
    CPU = their passes' thread CPU (the plug and unplug passes included), per involved agent;
  * uninvolved agents: everybody else; CPU = their passes plus their idle advances (a change that
    concerns them not at all only advances their converged revision), per uninvolved agent;
  * update time: from the report to the last involved agent's pass that applied the move (its kernel
    programmed), p50 / p99;
  * events: watch events the agents' feed received per move (per process: one watch set each, holding
    what its agents watch: nve/interest.watched), agents that ran a pass per move; and the events that
    reached the processes none of whose agents the move concerns (with --procs equal to the NVEs, one
    agent per process, as in production: the uninvolved agents themselves);
  * status writes per move, by every agent (after passes, and the waiter's request: mapping/status.py),
    and in brackets what they would be if every idle advance were published at once (as before);
  * per process: the feed's CPU per move (receiving and applying events; it is shared by the agents
    of a process), RSS (the view, the agents and their model kernels) and RSS per agent;
  * the store: bytes per VM interface (keys + values under /mapping/ / VMs; etcd: also its db size).
The baseline, in the same run: --baseline-sample agents (shadows of sampled NVEs, that publish
nothing) on the path before issue 18: every mapping change runs a pass over the whole mapping,
decoded afresh by each agent (one agent per process shares nothing).

Settings that make the numbers about moves: the agents' periodic resync (2 s: a kernel read and a
pass) is set to an hour; agents publish converged revisions advanced without a pass only with their
next pass or when a waiter asks (the default, as in the lab); once the agents are up, each process
collects and freezes its heap (agent/heap.py, which an agent process does every 10 s), so that a full
garbage collection over the setup's heap (1.3-1.6 s with 100 agents in a process) lands in no move.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from roamnet.agent import heap, loop
from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import (
    BORDER,
    NVES,
    PORTS,
    REVISION,
    ROOT,
    SEGMENTS,
    TENANTS,
    Binding,
    LogicalPort,
    Nve,
    Segment,
    Tenant,
    binding_key,
    dump,
    index_keys,
)
from roamnet.mapping.system import MappingSystem
from roamnet.mapping.view import MappingFeed
from roamnet.orchestrator.moves import Orchestrator

BENCH_VERSION = 1
STORE_TIMEOUT_S = 30.0  # etcd requests on a machine shared with other work (the store's default: 2 s)


# ---- the synthetic mapping -----------------------------------------------------------------------

def layout(n_nves: int, n_vms: int, per_cug: int, pod: int, per_tenant: int) -> dict:
    servers = [f"hv{i}" for i in range(n_nves - 2)]
    half = len(servers) // 2
    nves = [Nve(s, f"198.18.{1 + i // 250}.{1 + i % 250}", "dc1" if i < half else "dc2")
            for i, s in enumerate(servers)]
    nves += [Nve("br1", "198.18.100.1", "dc1", BORDER), Nve("br2", "198.18.100.2", "dc2", BORDER)]
    n_cugs = max(1, n_vms // per_cug)
    segments, tenants, ports, bindings = [], [], [], []
    for c in range(n_cugs):
        vni = 10000 + c
        t = f"t{c // per_tenant}"
        if c % per_tenant == 0:
            tenants.append(Tenant(t, 50000 + c // per_tenant, "02:aa:00:00:00:01"))
        net = f"198.19.{c % per_tenant}"  # tenants are VRFs: their CUGs' subnets may repeat across tenants
        segments.append(Segment(vni, f"cug{c}", f"{net}.0/24", f"{net}.1/24", t))
    vtep = {n.name: n.vtep for n in nves}
    for v in range(n_vms):
        c = v % n_cugs
        vni, start = 10000 + c, c * len(servers) // n_cugs
        server = servers[(start + (v // n_cugs) % pod) % len(servers)]
        mac = f"02:00:{v >> 24 & 255:02x}:{v >> 16 & 255:02x}:{v >> 8 & 255:02x}:{v & 255:02x}"
        ip = f"198.19.{c % per_tenant}.{2 + (v // n_cugs) % 250}"
        port = LogicalPort(f"vm{v}/0", f"vm{v}", vni, mac, (ip,))
        ports.append(port)
        bindings.append(Binding(vni, mac, server, vtep[server], 0, port.ips, port.iface_id))
    return {"nves": nves, "segments": segments, "tenants": tenants, "ports": ports, "bindings": bindings,
            "servers": servers, "half": half}


def load(store, lay: dict, batch: int) -> None:
    writes = [(NVES + n.name, dump(n)) for n in lay["nves"]]
    writes += [(TENANTS + t.name, dump(t)) for t in lay["tenants"]]
    writes += [(f"{SEGMENTS}{s.vni}", dump(s)) for s in lay["segments"]]
    writes += [(PORTS + p.iface_id, dump(p)) for p in lay["ports"]]
    writes += [(binding_key(b.vni, b.mac), dump(b)) for b in lay["bindings"]]
    writes += [(k, "") for b in lay["bindings"] for k in index_keys(b)]  # the /at/ index (records.py)
    for i in range(0, len(writes), batch - 1):
        store.txn({**dict(writes[i:i + batch - 1]), REVISION: ""})


def store_bytes(store) -> int:
    items, _ = store.range(ROOT)
    return sum(len(kv.key) + len(kv.value) for kv in items)


# ---- agents --------------------------------------------------------------------------------------

class QuietClient(MappingClient):
    """A baseline shadow's client: it reads and reports as an agent does, but publishes no status, and
    follows the whole mapping (the process's whole feed, not its agents' interest)."""

    def publish_status(self, status) -> None:
        pass

    def follow(self, fn, owner: str = ""):
        return self._system.feed.subscribe(fn)


class FullDecodeAgent(Agent):
    """The path before issue 18 (the baseline): every mapping change runs a pass, and every pass reads
    and decodes the whole mapping (its own MappingSystem: an agent alone in its process shares nothing)."""

    def __init__(self, client, nve, kernel, decoder: MappingSystem):
        super().__init__(client, nve, kernel)
        self._decoder = decoder

    scoped = False

    def _part(self, actual, ports, whole=True, scope=None, drifted=None):
        return self._decoder.snapshot(), None

    def _mapping_changed(self, touched) -> None:
        self._wake_pass()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class AgentHost:
    """The agents of some NVEs in one process, over one store client and one view of the mapping."""

    def __init__(self, store, names: list[str], shadows: list[str]):
        loop.RESYNC_S = 3600.0  # no periodic pass during the benchmark (see the module's doc)
        self.store = store
        self.mapping = MappingSystem(store, agent_interest=True)  # (the embedded store too: threads drive it here)
        rss0 = rss_mb()
        setup = MappingFeed(store)  # where the VMs are, to plug their ports: read once, then dropped
        nves, placed = setup.read(lambda v: (dict(v.nves), {
            n: [b.iface_id for b in v.at_nve.get(n, {}).values()] for n in set(names) | set(shadows)}))
        del setup
        self.view_mb = rss_mb() - rss0
        self.kernels: dict[str, ModelKernel] = {}
        self.agents: dict[str, Agent] = {}
        for n in names:
            k = self.kernels[n] = ModelKernel(n)
            for iface in placed[n]:
                k.add_port(iface)
            self.agents[n] = Agent(MappingClient(self.mapping), nves[n], k)
        self.shadows: dict[str, Agent] = {}
        self.shadow_kernels: dict[str, ModelKernel] = {}
        for n in shadows:
            k = self.shadow_kernels[n] = ModelKernel(n)
            for iface in placed[n]:
                k.add_port(iface)
            self.shadows[n] = FullDecodeAgent(QuietClient(self.mapping), nves[n], k, MappingSystem(store))

    def start(self) -> float:
        for a in self.agents.values():
            a.start()
        # as an agent process does (agentd.run): full collections walk only what is new (agent/heap.py)
        self._heap = threading.Event()
        threading.Thread(target=heap.settle, args=(self._heap,), name="heap", daemon=True).start()
        return rss_mb()

    @staticmethod
    def settle() -> dict:
        """Collect and freeze now (agent/heap.py): the agents are up, so the setup's garbage and the large
        long-lived heap leave the collector before the moves (else the next full collection, ~1 s with 100
        agents here, lands in one of them)."""
        return heap.settle_once()

    def start_shadows(self) -> None:
        for a in self.shadows.values():
            a.start()

    def port(self, nve: str, iface: str, plug: bool) -> None:
        for kernels, agents in ((self.kernels, self.agents), (self.shadow_kernels, self.shadows)):
            if nve in kernels:
                (kernels[nve].add_port if plug else kernels[nve].remove_port)(iface)
                agents[nve]._link_event()

    def stats(self) -> dict:
        def one(a: Agent) -> dict:
            s = a.stats
            return {"passes": s.reconciles, "idle": s.idle_advances, "cpu": s.pass_cpu_s + s.idle_cpu_s,
                    "published": s.statuses_published,
                    "programmed_at": s.programmed_at, "converged": s.converged_revision}
        feed = self.mapping.agent_feed
        return {"agents": {n: one(a) for n, a in self.agents.items()},
                "shadows": {n: one(a) for n, a in self.shadows.items()},
                "feed": {"events": feed.events, "batches": feed.batches, "cpu": feed.cpu_s, "reloads": feed.reloads},
                "rss_mb": rss_mb(), "pid": os.getpid()}

    def stop(self) -> None:
        if getattr(self, "_heap", None) is not None:
            self._heap.set()
        for a in list(self.agents.values()) + list(self.shadows.values()):
            if a._threads:
                a.stop()


def _serve(conn, url: str, names: list[str], shadows: list[str]) -> None:
    """A worker process: its agents over its own store client; commands from the driver's pipe."""
    from roamnet.mapping.store.etcd import EtcdStore
    store = EtcdStore(url, max_txn_ops=4096, timeout=STORE_TIMEOUT_S)
    host = AgentHost(store, names, shadows)
    conn.send(("ready", host.view_mb))
    while True:
        cmd, args = conn.recv()
        if cmd == "stop":
            host.stop()
            store.close()
            conn.send(("stopped", None))
            return
        conn.send((cmd, getattr(host, cmd)(*args)))


class Remote:
    """The driver's handle on a worker process."""

    def __init__(self, ctx, url: str, names: list[str], shadows: list[str]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, url, names, shadows), daemon=True)
        self.proc.start()
        self.names, self.shadows = set(names), set(shadows)
        _, self.view_mb = self.conn.recv()

    def call(self, cmd: str, *args):
        self.conn.send((cmd, args))
        return self.conn.recv()[1]

    def stop(self) -> None:
        try:
            self.call("stop")
        finally:
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.kill()  # its own pid


class Local:
    def __init__(self, host: AgentHost, names, shadows):
        self.host, self.names, self.shadows, self.view_mb = host, set(names), set(shadows), host.view_mb

    def call(self, cmd: str, *args):
        return getattr(self.host, cmd)(*args)

    def stop(self) -> None:
        self.host.stop()


# ---- one run -------------------------------------------------------------------------------------

def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "p10": round(pct(xs, 10), 3),
            "p90": round(pct(xs, 90), 3), "p99": round(pct(xs, 99), 3)}


def collect(hosts) -> tuple[dict, dict, list[dict]]:
    agents, shadows, procs = {}, {}, []
    for h in hosts:
        st = h.call("stats")
        agents.update(st["agents"])
        shadows.update(st["shadows"])
        procs.append({"feed": st["feed"], "rss_mb": st["rss_mb"], "agents": len(st["agents"]),
                      "names": list(st["agents"]),
                      "shadows": len(st["shadows"])})
    return agents, shadows, procs


def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Moves:
    """The moves of one run, and what each cost (`measure`)."""

    def __init__(self, mapping: MappingSystem, hosts: list, lay: dict, rng: random.Random, args):
        self.mapping, self.hosts, self.lay, self.rng, self.args = mapping, hosts, lay, rng, args
        self.names = [n.name for n in lay["nves"]]
        self.where = {n: h for h in hosts for n in h.names}
        self.shadow_where = {n: h for h in hosts for n in h.shadows}
        self.dc = {s: (0 if i < lay["half"] else 1) for i, s in enumerate(lay["servers"])}
        self.before = collect(hosts)
        self.shadows_on = False

    def _port(self, nve: str, iface: str, plug: bool) -> None:
        for h in {self.where[nve], self.shadow_where.get(nve)} - {None}:
            h.call("port", nve, iface, plug)

    def _passed(self, nve: str, passes: int) -> bool:
        return collect([self.where[nve]])[0][nve]["passes"] > passes

    def move(self, k: int) -> dict:
        """Plug the VM's port on the destination, report the move, wait for the involved NVEs, unplug
        it on the source (each plug and unplug waits for its NVE's pass: a pass that lands in the next
        move's window would count against that move)."""
        m, args = self.mapping, self.args
        scope = "intra" if k % 2 == 0 else "inter"
        port = self.rng.choice(self.lay["ports"])
        src = m.feed.read(lambda v: v.binding_of(port.iface_id).nve)
        dst = self.rng.choice([s for s in self.lay["servers"] if (self.dc[s] == self.dc[src]) == (scope == "intra")
                               and s != src])
        passes = collect([self.where[dst]])[0][dst]["passes"]
        self._port(dst, port.iface_id, True)
        until(lambda: self._passed(dst, passes), args.move_timeout)  # the plug's pass (a claimant port)
        t0 = time.monotonic()
        m.report_move(port.iface_id, dst)
        rev = m.revision
        inv = set(Orchestrator(m).concerned([port.iface_id], [src, dst]))  # what a move's phases wait for
        done = m.statuses.wait_converged(sorted(inv), timeout=args.move_timeout, revision=rev)
        if self.shadows_on:  # the baseline's passes take long: wait for them, or they count in the next move
            until(lambda: all(s["converged"] >= rev for s in collect(self.hosts)[1].values()), args.move_timeout)
        agents = collect(self.hosts)[0]
        updated = [agents[n]["programmed_at"] - t0 for n in inv if agents[n]["programmed_at"] >= t0]
        passes = agents[src]["passes"]
        self._port(src, port.iface_id, False)
        until(lambda: self._passed(src, passes), args.move_timeout)
        time.sleep(args.settle)
        after = collect(self.hosts)
        out = measure(self.before, after, inv, self.names, updated, done, scope, src, dst, port)
        self.before = after
        return out


def run_one(store_kind: str, n_nves: int, n_vms: int, args, workdir: Path) -> dict:
    lay = layout(n_nves, n_vms, args.vms_per_cug, args.pod, args.cugs_per_tenant)
    names = [n.name for n in lay["nves"]]
    rng = random.Random(args.seed)
    shadows = rng.sample(names, min(args.baseline_sample, len(names)))
    server = None
    t_setup = time.monotonic()
    if store_kind == "memory":
        from roamnet.mapping.store import MemoryStore
        store = MemoryStore()
        load(store, lay, 100_000)
    else:
        from roamnet.lab.etcd import EtcdServer
        server = EtcdServer(workdir / f"etcd-{n_nves}-{n_vms}", name=f"rn-scale-{os.getpid()}")
        from roamnet.mapping.store.etcd import EtcdStore
        server.start().close()
        store = EtcdStore(server.url, max_txn_ops=4096, timeout=STORE_TIMEOUT_S)
        load(store, lay, 1000)  # (etcd refuses requests over 1.5 MiB)
    hosts = []
    try:
        logical = store_bytes(store)
        db = store.status() if store_kind == "etcd" else {}
        print(f"  {store_kind} {n_nves} NVEs {n_vms} VMs: loaded in {time.monotonic() - t_setup:.1f} s; "
              "starting agents", file=sys.stderr)
        if store_kind == "memory":
            h = AgentHost(store, names, shadows)
            hosts = [Local(h, names, shadows)]
        else:
            ctx = mp.get_context("fork")
            procs = max(1, min(args.procs, len(names)))
            for i in range(procs):
                part = names[i::procs]
                hosts.append(Remote(ctx, server.url, part, [s for s in shadows if s in part]))
        rss_started = [h.call("start") for h in hosts]
        mapping = MappingSystem(store)
        ok = mapping.statuses.wait_converged(names, timeout=args.setup_timeout)
        settled = [h.call("settle") for h in hosts]
        setup_s = time.monotonic() - t_setup
        print(f"  agents up in {setup_s:.1f} s (all converged: {ok}); heap settled in "
              f"{max(x['ms'] for x in settled):.0f} ms", file=sys.stderr)
        mover = Moves(mapping, hosts, lay, rng, args)
        moves = [mover.move(k) for k in range(args.moves)]
        # phase 2, the baseline: the shadows start (a first pass each) and see moves of their own
        for h in hosts:
            h.call("start_shadows")
        if not until(lambda: all(s["passes"] for s in collect(hosts)[1].values()), args.setup_timeout):
            print("  the baseline shadows did not all make a first pass", file=sys.stderr)
        mover.before, mover.shadows_on = collect(hosts), True
        baseline = [mover.move(k) for k in range(args.baseline_moves)]
        result = {"store": store_kind, "nves": n_nves, "vms": n_vms, "cugs": len(lay["segments"]),
                  "tenants": len(lay["tenants"]), "setup_s": round(setup_s, 1), "moves": moves,
                  "baseline_moves": baseline, "baseline_agents": shadows,
                  "procs": len(hosts), "agents_per_proc": [len(h.names) for h in hosts],
                  "store_bytes_per_vm": round(logical / n_vms, 1),
                  "binding_bytes": round(statistics.mean(len(dump(b)) for b in lay["bindings"][:1000]), 1),
                  "port_bytes": round(statistics.mean(len(dump(p)) for p in lay["ports"][:1000]), 1),
                  "rss_mb": [round(r, 1) for r in rss_started], "view_mb": [round(h.view_mb, 1) for h in hosts]}
        if db:
            after_db = store.status()
            result["etcd_db_bytes_per_vm"] = round(int(db.get("dbSize", 0)) / n_vms, 1)
            result["etcd_db_in_use_bytes_per_vm"] = round(int(db.get("dbSizeInUse", 0) or 0) / n_vms, 1)
            result["etcd_db_after_moves_bytes_per_vm"] = round(int(after_db.get("dbSize", 0)) / n_vms, 1)
        result["summary"] = summarize(result)
        return result
    finally:
        for h in hosts:
            try:
                h.stop()
            except Exception as exc:  # a worker already gone
                print(f"  stopping a worker: {exc}", file=sys.stderr)
        if store_kind == "etcd":
            store.close()
        if server is not None:
            server.stop()


def measure(before, after, inv: set[str], names: list[str], updated: list[float], done: bool, scope: str, src: str,
            dst: str, port) -> dict:
    a0, s0, p0 = before
    a1, s1, p1 = after
    d = {n: {k: a1[n][k] - a0[n][k] for k in ("passes", "idle", "cpu", "published")} for n in names}
    unin = [n for n in names if n not in inv]
    inv_borders = [n for n in inv if n.startswith("br")]
    bystanders = [n for n in inv if n not in (src, dst) and n not in inv_borders]  # involved servers that
    #                                                                   host the tenant, not the VM
    shadow = {n: {"cpu": s1[n]["cpu"] - s0[n]["cpu"], "passes": s1[n]["passes"] - s0[n]["passes"],
                  "involved": n in inv} for n in s1}
    return {"scope": scope, "src": src, "dst": dst, "iface": port.iface_id, "vni": port.vni, "converged": done,
            "involved": len(inv), "update_ms": round(max(updated) * 1000, 2) if updated and done else None,
            "cpu_involved_ms": round(sum(d[n]["cpu"] for n in inv) * 1000 / max(1, len(inv)), 3),
            "cpu_uninvolved_ms": round(sum(d[n]["cpu"] for n in unin) * 1000 / max(1, len(unin)), 4),
            "cpu_src_dst_ms": round((d[src]["cpu"] + d[dst]["cpu"]) * 1000 / 2, 3),
            "cpu_bystander_ms": round(sum(d[n]["cpu"] for n in bystanders) * 1000 / max(1, len(bystanders)), 3),
            "cpu_border_ms": round(sum(d[n]["cpu"] for n in inv_borders) * 1000 / len(inv_borders), 3)
            if inv_borders else None,
            "passes_uninvolved": sum(d[n]["passes"] for n in unin),
            "status_writes": sum(d[n]["published"] for n in names),
            "status_writes_at_once": sum(d[n]["published"] + d[n]["idle"] for n in names),
            "agents_with_pass": sum(1 for n in names if d[n]["passes"]),
            "events_per_proc": [q1["feed"]["events"] - q0["feed"]["events"] for q0, q1 in zip(p0, p1)],
            # processes whose agents the move concerns not at all: store-side interest sends them nothing
            "events_per_uninvolved_proc": [q1["feed"]["events"] - q0["feed"]["events"] for q0, q1 in zip(p0, p1)
                                           if q1["names"] and not set(q1["names"]) & inv],
            "feed_cpu_ms_per_proc": [round((q1["feed"]["cpu"] - q0["feed"]["cpu"]) * 1000, 3)
                                     for q0, q1 in zip(p0, p1)],
            "shadows": shadow}


def summarize(r: dict) -> dict:
    ms = r["moves"]
    # a shadow runs a pass at every change of the mapping: one that ran none during a move did not finish it in
    # the move's window (at 100,000 VMs its read of the whole mapping alone takes seconds), so that move tells
    # nothing of its cost
    shadowed = [s for m in r["baseline_moves"] for s in m["shadows"].values()]
    inv_base = [s["cpu"] * 1000 for s in shadowed if s["involved"] and s["passes"]]
    unin_base = [s["cpu"] * 1000 for s in shadowed if not s["involved"] and s["passes"]]
    inv = [m["cpu_involved_ms"] for m in ms]
    unin = [m["cpu_uninvolved_ms"] for m in ms]
    upd = [m["update_ms"] for m in ms if m["update_ms"] is not None]
    out = {"cpu_involved_ms": summary(inv), "cpu_uninvolved_ms": summary(unin),
           "cpu_bystander_ms": summary([m["cpu_bystander_ms"] for m in ms]),
           "cpu_border_ms": summary([m["cpu_border_ms"] for m in ms if m["cpu_border_ms"] is not None]),
           "cpu_src_dst_ms": summary([m["cpu_src_dst_ms"] for m in ms]),
           "baseline_cpu_involved_ms": summary(inv_base), "baseline_cpu_uninvolved_ms": summary(unin_base),
           "baseline_moves_without_pass": sum(1 for s in shadowed if not s["passes"]),
           "update_ms": {"p50": pct(upd, 50), "p99": pct(upd, 99), "n": len(upd),
                         "timeouts": sum(1 for m in ms if not m["converged"])},
           "involved_agents": summary([m["involved"] for m in ms]),
           "agents_with_pass": summary([m["agents_with_pass"] for m in ms]),
           "passes_uninvolved_total": sum(m["passes_uninvolved"] for m in ms),
           "status_writes_per_move": summary([m["status_writes"] for m in ms]),
           "status_writes_at_once_per_move": summary([m["status_writes_at_once"] for m in ms]),
           "events_per_move_per_proc": summary([e for m in ms for e in m["events_per_proc"]]),
           "events_per_move_per_uninvolved_proc": summary([e for m in ms for e in m["events_per_uninvolved_proc"]]),
           "uninvolved_procs_with_events": sum(1 for m in ms for e in m["events_per_uninvolved_proc"] if e),
           "uninvolved_procs": sum(len(m["events_per_uninvolved_proc"]) for m in ms),
           "feed_cpu_ms_per_move_per_proc": summary([c for m in ms for c in m["feed_cpu_ms_per_proc"]]),
           "rss_mb_per_agent": round(sum(r["rss_mb"]) / r["nves"], 2)}
    if inv_base and inv and statistics.median(inv_base):
        out["involved_vs_baseline"] = round(statistics.median(inv) / statistics.median(inv_base), 4)
    if unin_base and unin:
        base = statistics.median(unin_base)
        out["uninvolved_vs_baseline"] = round(statistics.median(unin) / base, 5) if base else None
    return out


# ---- output --------------------------------------------------------------------------------------

def machine() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent,
                                  timeout=10).stdout.strip()
        except OSError:
            return ""
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": model, "load_before": os.getloadavg(),
            "roamnet_commit": git("rev-parse", "--short", "HEAD"),
            "roamnet_dirty": bool(git("status", "--porcelain"))}


def fmt(x, nd=2) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def table(results: list[dict]) -> str:
    head = ("| store | NVEs | VMs | involved | CPU/involved agent ms (baseline) | of which: src+dst / other servers / "
            "borders | CPU/uninvolved agent ms (baseline) | passes on uninvolved | update p50 / p99 ms (timeouts) "
            "| status writes/move (each idle advance at once) | events/move/proc | uninvolved procs: events/move "
            "(procs that got any / procs) | feed CPU ms/move/proc | bytes/VM | RSS MB/agent |")
    rows = [head, "|" + "---|" * 15]
    for r in results:
        s = r["summary"]
        db = f" (etcd db {r['etcd_db_bytes_per_vm']:,.0f})" if "etcd_db_bytes_per_vm" in r else ""
        rows.append(
            f"| {r['store']} | {r['nves']:,} | {r['vms']:,} | {fmt(s['involved_agents'].get('median'), 0)} "
            f"| {fmt(s['cpu_involved_ms'].get('median'))} ({fmt(s['baseline_cpu_involved_ms'].get('median'))}) "
            f"| {fmt(s['cpu_src_dst_ms'].get('median'))} / {fmt(s['cpu_bystander_ms'].get('median'))} / "
            f"{fmt(s['cpu_border_ms'].get('median'))} "
            f"| {fmt(s['cpu_uninvolved_ms'].get('median'), 4)} ({fmt(s['baseline_cpu_uninvolved_ms'].get('median'))}) "
            f"| {s['passes_uninvolved_total']} | {fmt(s['update_ms']['p50'])} / {fmt(s['update_ms']['p99'])} "
            f"({s['update_ms']['timeouts']}) "
            f"| {fmt(s['status_writes_per_move'].get('median'), 0)} "
            f"({fmt(s['status_writes_at_once_per_move'].get('median'), 0)}) "
            f"| {fmt(s['events_per_move_per_proc'].get('median'), 0)} "
            f"| {fmt(s['events_per_move_per_uninvolved_proc'].get('median'), 0)} "
            f"({s['uninvolved_procs_with_events']} / {s['uninvolved_procs']}) "
            f"| {fmt(s['feed_cpu_ms_per_move_per_proc'].get('median'), 3)} "
            f"| {r['store_bytes_per_vm']:,.0f}{db} "
            f"| {s['rss_mb_per_agent']} |")
    return "\n".join(rows)


FLOOR_MS = 1e-3  # a median of 0 (no pass, no event) is drawn here on the log axis, marked "0"


def series_label(r: dict) -> str:
    per = round(statistics.median(r["agents_per_proc"])) if r.get("agents_per_proc") else r["nves"]
    return f"{r['store']}, {per} agent{'s' if per != 1 else ''} per process"


def plot(results: list[dict], path: Path) -> Path | None:
    """Cost against size, one series per store and agents per process: CPU per move per agent (involved and
    uninvolved; dashed, the full-decode baseline of the same run), and the time from a move to every involved
    agent updated (p50, and p99 as the bar's top) against the 100 ms goal. Medians; bars p10 to p90."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    rows = [r for r in results if r.get("summary")]
    if not rows:
        return None
    fig = Figure(figsize=(12, 7), layout="constrained")
    cpu, upd = fig.subplots(1, 2)
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["vms"]):
        groups.setdefault(series_label(r), []).append(r)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, ((label, rs), colour) in enumerate(zip(sorted(groups.items()), colours * 4)):
        dodge = 1.07 ** (i - (len(groups) - 1) / 2)  # series side by side at one size
        xs = [r["vms"] * dodge for r in rs]
        for key, marker, what, dashed in (("cpu_involved_ms", "o", "involved", False),
                                          ("cpu_uninvolved_ms", "v", "uninvolved", False),
                                          ("baseline_cpu_involved_ms", "o", "involved, full decode", True),
                                          ("baseline_cpu_uninvolved_ms", "v", "uninvolved, full decode", True)):
            pts = [(x, r["summary"][key]) for x, r in zip(xs, rs) if r["summary"].get(key, {}).get("n")]
            if not pts:
                continue
            ys = [max(FLOOR_MS, s["median"]) for _, s in pts]
            err = [[y - max(FLOOR_MS, s["p10"]) for y, (_, s) in zip(ys, pts)],
                   [max(FLOOR_MS, s["p90"]) - y for y, (_, s) in zip(ys, pts)]]
            cpu.errorbar([x for x, _ in pts], ys, yerr=err, marker=marker, color=colour, capsize=3,
                         linestyle="--" if dashed else "-", alpha=0.55 if dashed else 1.0,
                         label=f"{label}: {what}")
            for (x, s), y in zip(pts, ys):
                if s["median"] < FLOOR_MS:
                    cpu.annotate("0", (x, y), textcoords="offset points", xytext=(5, -3), fontsize=7, color=colour)
        ups = [(x, r["summary"]["update_ms"]) for x, r in zip(xs, rs) if r["summary"]["update_ms"].get("p50") is not None]
        if ups:
            upd.errorbar([x for x, _ in ups], [u["p50"] for _, u in ups],
                         yerr=[[0] * len(ups), [u["p99"] - u["p50"] for _, u in ups]], marker="o", color=colour,
                         capsize=3, label=f"{label}: p50 (bar: p99)")
    cpu.axhline(5, color="tab:gray", linestyle=":", linewidth=1, label="goal: involved < 5 ms")
    upd.axhline(100, color="tab:gray", linestyle=":", linewidth=1, label="goal: p99 < 100 ms")
    sizes = sorted({r["vms"] for r in rows})
    for ax in (cpu, upd):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(sizes[0] / 2, sizes[-1] * 2)
        ax.set_xticks(sizes, [f"{v:,}" for v in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("VMs in the mapping")
        ax.grid(True, which="major", alpha=0.3)
    cpu.set_ylabel("CPU per move per agent, ms (median; p10-p90)")
    cpu.set_title("What a move costs an agent", fontsize=10)
    upd.set_ylabel("move -> every involved agent updated, ms")
    upd.set_title("Update time", fontsize=10)
    cpu.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    upd.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    nves = ", ".join(f"{n:,}" for n in sorted({r["nves"] for r in rows}))
    fig.suptitle(f"benchmarks/scale.py: real agent loops, kernels held in memory ({nves} NVEs)", fontsize=11)
    fig.savefig(path, format="png", dpi=110)
    return path


def load_results(paths: list[Path]) -> list[dict]:
    """The runs of earlier scale.json files (each size is a separate run on a small machine), in order."""
    results = []
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{p}: cannot read a scale.json: {exc}") from None
        got = doc.get("results") if isinstance(doc, dict) else doc
        if not isinstance(got, list) or not all(isinstance(r, dict) and "summary" in r for r in got):
            raise SystemExit(f"{p}: not the output of benchmarks/scale.py (no results with a summary)")
        for r in got:
            if "moves" in r and "baseline_moves" in r:  # summarized again: by this version's rules
                r["summary"] = summarize(r)
        results.extend(got)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["100:10000"], help="NVES:VMS pairs (default 100:10000)")
    ap.add_argument("--stores", nargs="+", default=["memory", "etcd"], choices=["memory", "etcd"])
    ap.add_argument("--moves", type=int, default=20, help="moves per size and store (default 20)")
    ap.add_argument("--procs", type=int, default=2, help="worker processes for the agents over etcd (default 2)")
    ap.add_argument("--baseline-sample", type=int, default=4, help="shadow agents on the full-decode path (default 4)")
    ap.add_argument("--baseline-moves", type=int, default=6, help="moves with the shadows running (default 6)")
    ap.add_argument("--vms-per-cug", type=int, default=100)
    ap.add_argument("--pod", type=int, default=8, help="servers a CUG spans (default 8)")
    ap.add_argument("--cugs-per-tenant", type=int, default=4, choices=range(1, 257), metavar="1..256",
                    help="CUGs per tenant (default 4); their subnets are 198.19.<k>.0/24 within each tenant")
    ap.add_argument("--settle", type=float, default=0.05, help="s after a move's last pass (default 0.05)")
    ap.add_argument("--move-timeout", type=float, default=10.0)
    ap.add_argument("--setup-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--out", type=Path, help="write <out>/scale.json and <out>/scale.png (cost against size) there")
    ap.add_argument("--plot-from", type=Path, nargs="+", metavar="SCALE_JSON",
                    help="run nothing: print the table and plot (to --out) the runs these files hold together")
    ap.add_argument("-f", "--format", choices=["table", "json"], default="table")
    args = ap.parse_args()
    if args.plot_from:
        if not args.out:
            ap.error("--plot-from needs --out (where scale.png goes)")
        results = load_results(args.plot_from)
        args.out.mkdir(parents=True, exist_ok=True)
        print(table(results))
        print(f"plot: {plot(results, args.out / 'scale.png')}", file=sys.stderr)
        return 0
    started = time.time()
    host = machine()  # before the runs: the load they started at, the code they ran
    results = []
    with tempfile.TemporaryDirectory(prefix="rn-scale-") as tmp:
        os.chmod(tmp, 0o700)
        for size in args.sizes:
            n, v = (int(x) for x in size.split(":"))
            for kind in args.stores:
                print(f"{kind}: {n} NVEs, {v} VMs, {args.moves} moves", file=sys.stderr)
                results.append(run_one(kind, n, v, args, Path(tmp)))
                if args.out:  # what has run so far, should a later size fail
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "scale.partial.json").write_text(json.dumps(results, indent=1))
    doc = {"benchmark": "scale", "version": BENCH_VERSION, "started": started,
           "runtime_s": round(time.time() - started, 1), "machine": host,
           "config": vars(args) | {"out": str(args.out)},
           "results": results}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.json").write_text(json.dumps(doc, indent=1))
        print(f"plot: {plot(results, args.out / 'scale.png')}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(doc, indent=1))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
