#!/usr/bin/env python3
"""Live-migration benchmark: loss beyond the VM's own pause, roamnet vs FRR BGP-EVPN and OVN, in one run.

    .venv/bin/python benchmarks/migration.py [--moves K] [--quick] [--planes ...] [--sizes [N ...]]
                                             [--guest namespace|qemu] [--streams l2|routed|all]
                                             [--out DIR] [-f table|json]

Runs as root; builds its own namespace labs (one at a time, named bench-<pid>-<i>), never touches
anything else. For each control plane in turn — roamnet with make-before-break ("roamnet"),
roamnet's learn-driven path ("learn") — both as real hosts run it: a private etcd and one `roamnet
agent` process per NVE; "inproc", on request, is the same with the mapping in the lab's memory and
the agents as its threads; "libvirt", on request, is roamnet's prepared move made as libvirt makes it, its
mapping side done by the `roamnet hook libvirt` command at libvirt's points (lab/libvirt.py) — FRR BGP-EVPN ("frr"), and OVN with each of its move strategies
("ovn-classic", "ovn-rarp": multi-chassis with activation-strategy=rarp, "ovn-mc": multi-chassis without
activation; OVN on Open vSwitch's userspace datapath, the others on the kernel's) — it brings
a lab up (dc1: hv1 hv2 hv3, dc2: hv4 hv5, one CUG), starts UDP streams to the mover vm1 (from p1 on
hv3 at 1 kHz, p2 on hv5 at 10 kHz, p3 on hv1 at 1 kHz — p3 sits on the mover's source server on
every outbound move), moves vm1 K times each way inside dc1 (hv1→hv2→hv1) and between the data
centers (hv1→hv4→hv1), each with a pause of 0 and 100 ms, ~1.2 s apart, then tears the lab down.
`roamnet.experiments.loss` says, per move and stream, how many packets were lost beyond the VM's own pause.

`--streams routed` (or `all`, with the L2 streams in the same lab) makes the CUG routed (a tenant, an
anycast gateway, FRR at the borders and a WAN client c1) and measures, beside the L2 1 kHz stream
from p1 as the same lab's reference, routed streams: from q1 and q2 (another CUG, on hv3: 1 and 10
kHz) and q3 (another CUG, in dc2 on hv5), from the WAN client to vm1 and from vm1 to the client
(the loss seen at the client); and, per inter-DC move, the
inbound switch time: resume → the first packet of the WAN stream entering through the new data
center's border (`roamnet.experiments.paths`). Of the baselines, only "frr-irb" (FRR BGP-EVPN with
symmetric IRB, `roamnet.baselines.evpn_irb`: an L3 VNI, type-2 MAC+IP and type-5 routes, an anycast
gateway on every VTEP, the same borders and WAN router) runs routed streams; it runs nothing else
(its lab needs a tenant), and the other baselines run only the L2 streams of a routed run.

`--guest qemu` makes the mover a real QEMU guest (`vms.vm1.guest: qemu`, 128 MiB, built by `make install`),
live-migrated by QEMU over the lab's underlay: its blackout is QEMU's (STOP on the source to RESUME on the
destination, from QMP), its announcements QEMU's own; the streams are 1 kHz only (p1, p3), echoed back by
the guest to the peer's receiver; OVN planes are skipped (they do not run QEMU guests yet).

`--sizes N ...` also builds labs of N servers (one VM each, no traffic) per plane and reports the
latency from "VM resumed" to "every NVE programmed", and each NVE's control-plane processes' CPU
time per move and resident memory (roamnet: its agent; FRR: its zebra and bgpd), with the central
ones apart (etcd; FRR's route reflector), from /proc.

Writes <out>/migration.json (every per-move figure and the machine) and <out>/migration.png; prints
the tables (or, with -f json, the JSON) on stdout and progress on stderr. Results are measured,
never adjusted: what is printed is what the kernel delivered.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from roamnet import names
from roamnet.baselines import ovn
from roamnet.baselines.evpn import FrrEvpn, kill_recorded, read_journal
from roamnet.baselines.evpn_irb import FrrEvpnIrb
from roamnet.dataplane import netns
from roamnet.experiments.loss import MoveWindow, analyze_stream, send_time_estimates
from roamnet.experiments.paths import PathObserver, Watched, summarize_paths
from roamnet.experiments.runner import Proc, final, spawn, wait_ready
from roamnet.experiments.traffic import recv_argv, send_argv
from roamnet.intent.model import parse_topology
from roamnet.lab.engine import Lab
from roamnet.lab.errors import LabError
from roamnet.lab.plan import build_plan
from roamnet.lab.qemu import UDP_ECHO_PORT, UDP_REPLY_PORT
from roamnet.lab.qemu import accel as qemu_accel
from roamnet.lab.state import JOURNAL, cleanup, journal_namespaces, make_state_dir

# ---------------------------------------------------------------- configuration

CUG, VNI, SUBNET = "t1", 10100, "198.19.10.0/24"  # tenant addresses: 198.19.0.0/16 only
MOVER = "vm1"
HOME, INTRA, INTER = "hv1", "hv2", "hv4"
PAUSES_MS = (0, 100)
SPACING_S = 1.2  # between the starts of two moves
MIN_GAP_S = 0.5  # at least this long between one move's return and the next one's start
LEAD_S = 3.0  # streams run this long before the first move (with the tail: the loss away from moves)
TAIL_S = 1.5  # ... and after the last one returned; then the benchmark stops them (SIGTERM)
START_DELAY_S = 1.0  # receivers and senders start this long after the lab is up (+0.2 s per stream)
LINGER_S = 2.0
MIGRATE_WAIT_S = 5.0  # a move not converged by then counts as a timeout
SLACK_MS = 1.0  # see roamnet.experiments.loss
BASE_PORT = 5001
PLOT_WINDOW_MS = (-50.0, 250.0)


@dataclass(frozen=True)
class StreamSpec:
    """One traffic stream to the mover.

    `kind` "l2": the peer is a VM in the mover's CUG on `peer_server`; "l3": a VM in another CUG of
    the tenant (routed); "wan-in": `peer` is a WAN client sending to the mover; "wan-out": the mover
    sends to the WAN client `peer` (the loss is counted at the client).
    """

    key: str
    label: str
    peer: str
    peer_server: str
    rate: int
    kind: str = "l2"
    proto: str = "udp"


STREAMS = (
    StreamSpec("l2-1k-remote", "L2 1 kHz remote", "p1", "hv3", 1000),
    StreamSpec("l2-10k-remote", "L2 10 kHz remote", "p2", "hv5", 10000),
    StreamSpec("l2-1k-coloc", "L2 1 kHz colocated", "p3", "hv1", 1000),
)
# --guest qemu: the mover is a real QEMU guest (lab/qemu.py, 128 MiB) that echoes each stream back to its
# peer (rnguest's UDP echo); the peer's receiver counts the echoes, so a packet lost either way is lost.
# 1 kHz streams only: a TCG guest does not echo 10 kHz.
QEMU_STREAMS = (
    StreamSpec("l2-1k-remote", "L2 1 kHz remote, echoed", "p1", "hv3", 1000),
    StreamSpec("l2-1k-coloc", "L2 1 kHz colocated, echoed", "p3", "hv1", 1000),
)
ROUTED_STREAMS = (  # with L2 1 kHz remote as the same lab's reference
    STREAMS[0],
    StreamSpec("l3-1k-remote", "L3 1 kHz, other CUG, hv3", "q1", "hv3", 1000, "l3"),
    StreamSpec("l3-10k-remote", "L3 10 kHz, other CUG, hv3", "q2", "hv3", 10000, "l3"),
    StreamSpec("l3-1k-otherdc", "L3 1 kHz, other CUG, dc2 (hv5)", "q3", "hv5", 1000, "l3"),
    StreamSpec("wan-in", "WAN client → vm1 1 kHz", "c1", "", 1000, "wan-in"),
    StreamSpec("wan-out", "vm1 → WAN client 1 kHz (at the client)", "c1", "", 1000, "wan-out"),
)
STREAM_SETS = {"l2": STREAMS, "routed": ROUTED_STREAMS, "all": STREAMS + ROUTED_STREAMS[1:]}
TENANT, L3VNI, DB_CUG, DB_VNI, DB_SUBNET = "ten1", 50001, "db", 10200, "198.19.20.0/24"
CLIENT_IP = "198.18.200.10"
BGP_WAIT_S = 30.0  # the WAN router's route to the mover, before the streams start
GUEST = "namespace"  # what runs the mover (main sets it, and STREAMS with it, from --guest)
OVN_RT = False  # --ovn-rt: every ovs-vswitchd's main thread (OVN's datapath here) under SCHED_RR
QEMU_MEMORY_MIB = 128


@dataclass(frozen=True)
class Plane:
    key: str
    label: str
    frr: bool = False
    prepare: bool = True
    ovn: str = ""  # an OVN move strategy (roamnet.baselines.ovn.STRATEGIES): OVN is this plane's control plane
    in_process: bool = False  # roamnet with its mapping in the lab's memory and its agents as threads (no etcd)
    driver: str = "lab"  # who does the mapping's side of a move (Lab.migrate): the lab, or libvirt's hook
    irb: bool = False  # FRR-EVPN with symmetric IRB (routed streams only)

    @property
    def baseline(self) -> bool:
        """Another control plane than roamnet's."""
        return self.frr or bool(self.ovn)

    @property
    def activates(self) -> bool:
        """Has an activation → every node programmed figure: roamnet (the mapping's activation) and OVN
        (the destination delivers → every chassis caught up, hv_cfg); FRR-EVPN has no such moment."""
        return not self.frr

    @property
    def datapath(self) -> str:
        return "Open vSwitch userspace (netdev)" if self.ovn else "Linux kernel (bridge + VXLAN)"


PLANES = (
    Plane("roamnet", "roamnet (prepared)"),
    Plane("learn", "roamnet (learn)", prepare=False),
    Plane("inproc", "roamnet (prepared, in-process)", in_process=True),
    Plane("libvirt", "roamnet (libvirt hook)", driver="libvirt-command"),
    Plane("frr", "FRR BGP-EVPN", frr=True),
    Plane("frr-irb", "FRR BGP-EVPN, symmetric IRB", frr=True, irb=True),
    Plane("ovn-classic", "OVN classic port move*", ovn="classic"),
    Plane("ovn-rarp", "OVN multi-chassis, rarp*", ovn="multichassis-rarp"),
    Plane("ovn-mc", "OVN multi-chassis*", ovn="multichassis"),
)
REF = "roamnet"  # the reference plane of the ratio column
DEFAULT_PLANES = [p.key for p in PLANES if not p.in_process and p.driver == "lab"]
SHORT = {"roamnet": "roamnet", "learn": "learn", "inproc": "in-process", "libvirt": "libvirt hook", "frr": "FRR", "frr-irb": "FRR IRB", "ovn-classic": "OVN classic", "ovn-rarp": "OVN rarp",
         "ovn-mc": "OVN multi-chassis"}


# ---------------------------------------------------------------- small helpers

_T_START = time.monotonic()


def progress(msg: str) -> None:
    print(f"[{time.monotonic() - _T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "kernel": platform.release(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version(), "node": platform.node()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                                     None)
    except OSError:
        pass
    try:
        root = Path(__file__).resolve().parent.parent
        info["roamnet_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], text=True,
                                                capture_output=True, timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               text=True, capture_output=True, timeout=5).stdout.strip()
        info["roamnet_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    for tool in ("ovn-controller", "ovs-vswitchd"):
        try:
            out = subprocess.run([tool, "--version"], text=True, capture_output=True, timeout=5).stdout
            info[tool] = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            info[tool] = None
    return info


# ---------------------------------------------------------------- topology


def vm_addr(i: int) -> tuple[str, str]:
    """(MAC, IP) of the i-th VM (0-based) in the benchmark's CUG."""
    n = 0x11 + i
    return f"02:00:00:0a:{n >> 8:02x}:{n & 0xFF:02x}", f"198.19.10.{11 + i}"


def topology(name: str, dcs: dict[str, list[str]], vms: dict[str, str]) -> dict[str, Any]:
    """A lab with data centers `dcs` (dc -> servers) and `vms` (vm -> server), all in one CUG."""
    out: dict[str, Any] = {"name": name, "datacenters": {dc: {"servers": s} for dc, s in dcs.items()},
                           "cugs": {CUG: {"vni": VNI, "subnet": SUBNET}}, "vms": {},
                           # one VM moves every ~1.2 s on purpose: duplicate detection (5 moves in 180 s
                           # by default) would rightly freeze it, so the benchmark allows what it does
                           "mobility": {"max_moves": 1000, "window_s": 60}}
    for i, (vm, server) in enumerate(vms.items()):
        mac, ip = vm_addr(i)
        out["vms"][vm] = {"server": server, "interfaces": [{"cug": CUG, "mac": mac, "ip": ip}]}
    if GUEST == "qemu" and MOVER in out["vms"]:
        out["vms"][MOVER].update(guest="qemu", memory=QEMU_MEMORY_MIB)
    return out


def routed(streams: tuple[StreamSpec, ...]) -> bool:
    return any(st.kind != "l2" for st in streams)


def traffic_topology(name: str, streams: tuple[StreamSpec, ...]) -> dict[str, Any]:
    vms = {MOVER: HOME}
    vms.update({st.peer: st.peer_server for st in streams if st.kind == "l2"})
    out = topology(name, {"dc1": ["hv1", "hv2", "hv3"], "dc2": ["hv4", "hv5"]}, vms)
    if routed(streams):  # the mover's CUG routed, peers in another CUG of the tenant, a WAN client
        out["tenants"] = {TENANT: {"l3vni": L3VNI}}
        out["cugs"][CUG].update(tenant=TENANT, gateway=SUBNET.replace(".0/24", ".1"))
        out["cugs"][DB_CUG] = {"vni": DB_VNI, "subnet": DB_SUBNET, "gateway": DB_SUBNET.replace(".0/24", ".1"),
                               "tenant": TENANT}
        for i, st in enumerate(s for s in streams if s.kind == "l3"):
            ip = DB_SUBNET.replace(".0/24", f".{11 + i}")
            out["vms"][st.peer] = {"server": st.peer_server,
                                   "interfaces": [{"cug": DB_CUG, "mac": f"02:00:00:14:00:{0x11 + i:02x}", "ip": ip}]}
        out["wan"] = {"clients": {st.peer: {"ip": CLIENT_IP} for st in streams if st.kind.startswith("wan")}}
    return out


def endpoints(st: StreamSpec, topo: dict[str, Any]) -> tuple[str, str, str]:
    """(receiver's node, sender's node, the receiver's address) of a stream."""
    mover_ip = topo["vms"][MOVER]["interfaces"][0]["ip"]
    if st.kind == "wan-out":
        return st.peer, MOVER, topo["wan"]["clients"][st.peer]["ip"]
    return MOVER, st.peer, mover_ip


def schedule(k: int) -> list[tuple[str, int, str]]:
    """The traffic run's moves (to, pause_ms, scope): K round trips per scope and pause, interleaved."""
    out = []
    for _ in range(k):
        for pause in PAUSES_MS:
            for scope, there in (("intra", INTRA), ("inter", INTER)):
                out += [(there, pause, scope), (HOME, pause, scope)]
    return out


# ---------------------------------------------------------------- one lab


class BenchLab:
    """A Lab built for one control plane; always torn down on exit."""

    def __init__(self, topo_dict: dict[str, Any], plane: Plane):
        self.topo = parse_topology(topo_dict, f"<{topo_dict['name']}>")
        self.plane = plane
        name = self.topo.name
        if any(netns.exists(ns) for ns in journal_namespaces(name) + build_plan(self.topo).namespaces()):
            raise LabError(f"lab {name!r} already has namespaces; not touching them")
        kw: dict[str, Any] = {}
        if plane.frr:
            kw["control_plane"] = FrrEvpnIrb() if plane.irb else FrrEvpn()
        elif plane.ovn:
            kw["control_plane"] = ovn.Ovn(plane.ovn, datapath_rt=OVN_RT)
        elif plane.in_process:
            kw["etcd"] = False
        journal = make_state_dir(name) / JOURNAL
        try:
            self.lab = Lab(self.topo, journal=journal, progress=lambda m: progress(f"{plane.key}: {m}"), **kw)
        except BaseException:
            cleanup(name)
            raise
        self.up_s: float | None = None

    def __enter__(self) -> BenchLab:
        t = time.monotonic()
        try:
            self.lab.up()  # tears itself down on failure
        except BaseException:
            self._cleanup()
            raise
        self.up_s = round(time.monotonic() - t, 2)
        return self

    def __exit__(self, *exc: object) -> None:
        progress(f"{self.plane.key}: tearing down lab {self.topo.name}")
        try:
            self.lab.down()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        """After lab.down(): FRR or OVN processes it may have left (by recorded pid), then the lab's state
        dir and whatever namespaces its journal still lists."""
        cp = self.lab.control_plane
        if cp is not None and cp.workdir is not None and Path(cp.workdir).exists():
            try:
                left = (ovn.kill_recorded if self.plane.ovn else kill_recorded)(Path(cp.workdir))
                if left:
                    progress(f"{self.plane.key}: ended leftover {cp.name} processes: {', '.join(left)}")
            except Exception as exc:
                progress(f"{self.plane.key}: {cp.name} clean-up: {type(exc).__name__}: {exc}")
        cleanup(self.topo.name)

    def migrate(self, vm: str, to: str, pause_ms: int) -> dict[str, Any]:
        return dict(self.lab.migrate(vm, to, pause_ms=pause_ms, wait=MIGRATE_WAIT_S,
                                     prepare=self.plane.prepare, driver=self.plane.driver))


# ---------------------------------------------------------------- the traffic run


@dataclass
class PlaneResult:
    plane: Plane
    lab: str = ""
    error: str | None = None
    up_s: float | None = None
    moves: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped_moves: int = 0
    plot: dict[str, Any] | None = None  # records around one inter-DC pause-0 move
    paths: list[dict[str, Any]] = field(default_factory=list)  # per inter-DC move: the WAN stream's switch
    note: str | None = None
    datapath_counters: dict[str, Any] | None = None  # OVN: what its userspace datapath dropped during the streams

    def to_json(self) -> dict[str, Any]:
        return {"key": self.plane.key, "label": self.plane.label, "datapath": self.plane.datapath,
                "ovn_strategy": self.plane.ovn or None, "lab": self.lab, "error": self.error,
                "up_s": self.up_s, "modes": sorted({str(m.get("mode")) for m in self.moves}),
                "skipped_moves": self.skipped_moves, "datapath_counters": self.datapath_counters,
                "streams": self.streams, "moves": self.moves, "wan_paths": self.paths, "note": self.note}


def _jsonable(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if isinstance(v, (str, int, float, bool, type(None)))}


def run_traffic(plane: Plane, k: int, lab_name: str,
                streams: tuple[StreamSpec, ...] = STREAMS) -> PlaneResult:
    res = PlaneResult(plane, lab=lab_name)
    if plane.irb and not routed(streams):
        streams = ()
        res.note = "not run: symmetric IRB needs routed streams (--streams routed|all)"
    elif plane.baseline and not plane.irb and routed(streams):
        streams = tuple(st for st in streams if st.kind == "l2")
        res.note = "routed streams not run: this baseline has no symmetric IRB (the frr-irb plane has)"
    if not streams:
        progress(f"{plane.key}: skipped ({res.note})")
        return res
    moves_plan = schedule(k)
    # an upper bound: moves slower than SPACING_S push the rest back; the streams are stopped early
    duration = LEAD_S + 2 * len(moves_plan) * SPACING_S + TAIL_S + 10
    topo = traffic_topology(lab_name, streams)
    mover_ip = topo["vms"][MOVER]["interfaces"][0]["ip"]
    procs: list[Proc] = []
    observer = None
    try:
        with BenchLab(topo, plane) as bl:
            res.up_s = bl.up_s
            if any(st.kind.startswith("wan") for st in streams):
                wait_wan_route(bl.lab, mover_ip)
            progress(f"{plane.key}: lab {lab_name} up in {bl.up_s:.1f} s; {len(moves_plan)} moves under "
                     f"{len(streams)} streams (at most {duration:.0f} s)")
            t0 = time.monotonic() + START_DELAY_S + 0.2 * len(streams)
            cp = bl.lab.control_plane
            counters = getattr(cp, "datapath_counters", None)  # OVN: what its userspace datapath drops
            dp_before = counters() if counters else None
            for i, st in enumerate(streams):
                if GUEST == "qemu":  # the guest echoes to the peer's receiver
                    peer_ip = topo["vms"][st.peer]["interfaces"][0]["ip"]
                    where, argv = st.peer, recv_argv(st.proto, peer_ip, UDP_REPLY_PORT, t0, duration, LINGER_S)
                else:
                    where, _, dst_ip = endpoints(st, topo)
                    argv = recv_argv(st.proto, dst_ip, BASE_PORT + i, t0, duration, LINGER_S)
                p = Proc(st.key, "recv", spawn(names.netns(lab_name, where), argv))
                procs.append(p)
                wait_ready(p, timeout=10)
            for i, st in enumerate(streams):
                port = UDP_ECHO_PORT if GUEST == "qemu" else BASE_PORT + i
                _, sender, dst_ip = endpoints(st, topo)
                procs.append(Proc(st.key, "send", spawn(names.netns(lab_name, sender),
                                                        send_argv(st.proto, dst_ip, port, st.rate, t0,
                                                                  duration))))
            watched = [Watched(st.key, mover_ip, CLIENT_IP, BASE_PORT + i, st.kind == "wan-out")
                       for i, st in enumerate(streams) if st.kind.startswith("wan")]
            if watched:
                observer = PathObserver(bl.lab.border_namespaces(), watched, max_seconds=duration + 30)
                observer.start()
            last_end, longest = t0 + LEAD_S - MIN_GAP_S, 1.5
            for i, (to, pause, scope) in enumerate(moves_plan):
                due = max(t0 + LEAD_S + i * SPACING_S, last_end + MIN_GAP_S)
                if due + pause / 1000 + longest + TAIL_S > t0 + duration:
                    res.skipped_moves = len(moves_plan) - i
                    progress(f"{plane.key}: out of stream time, skipping the last {res.skipped_moves} moves")
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                late = time.monotonic() - due
                try:
                    rec = bl.migrate(MOVER, to, pause)
                except Exception as exc:  # the moves so far are still analysed
                    res.error = f"move {i + 1} ({MOVER} → {to}): {type(exc).__name__}: {exc}"
                    res.skipped_moves = len(moves_plan) - i
                    kept = keep_agent_logs(bl.lab, lab_name)
                    progress(f"{plane.key}: {res.error}; no more moves"
                             + (f" (agents' logs in {kept})" if kept else ""))
                    break
                last_end = time.monotonic()
                longest = max(longest, last_end - due)
                rec.update(index=i, scope=scope, start_late_s=round(late, 4))
                res.moves.append(rec)
                conv = rec.get("converged_ms")
                progress(f"{plane.key}: move {i + 1}/{len(moves_plan)} {rec['from']}→{to} ({scope}, pause "
                         f"{pause} ms, {rec['mode']}): dark {(rec['resumed_mono'] - rec['at_mono']) * 1000:.1f} ms,"
                         f" converged {'TIMEOUT' if conv is None else f'{conv:.1f} ms'}")
            results = stop_streams(procs, max(t0, last_end) + TAIL_S, t0 + duration)
            if counters:
                res.datapath_counters = ovn.counters_delta(dp_before, counters())
    except Exception as exc:  # LabError, EvpnError, OSError...: this plane failed, the next one runs
        res.error = res.error or f"{type(exc).__name__}: {exc}"
        progress(f"{plane.key}: FAILED: {res.error}")
        return res
    finally:
        for p in procs:  # only an early error leaves one running; each is ended by its own pid
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(timeout=5)
        crossings = observer.stop() if observer is not None else []
    analyze(res, streams, results)
    res.paths = wan_switches(crossings, [st.key for st in streams if st.kind == "wan-in"], res.moves)
    return res


LOGS_DIR: Path | None = None  # main sets it: where a failed move's agent logs are kept


def keep_agent_logs(lab: Lab, lab_name: str) -> Path | None:
    """Copy the agents' logs of a lab whose move failed (its state directory goes with the lab), each with
    its threads' stacks at that moment (what a lagging agent was doing), and write their published
    statuses (statuses.json)."""
    src = getattr(lab, "agent_dir", None)
    if LOGS_DIR is None or src is None or not Path(src).is_dir():
        return None
    pids = [a.pid for a in lab.agents.values() if getattr(a, "pid", None)]
    for pid in pids:  # each agent process writes every thread's stack to its log (agentd: faulthandler)
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            pass
    if pids:
        time.sleep(0.5)
    dst = LOGS_DIR / f"{lab_name}-agents"
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).glob("*.log"):
        (dst / f.name).write_bytes(f.read_bytes())
    try:
        statuses = {n: asdict(s) for n, s in lab.mapping.statuses.all().items()}
        (dst / "statuses.json").write_text(json.dumps(statuses, indent=1, default=str) + "\n")
    except Exception as exc:  # the logs are still worth having
        progress(f"statuses not kept: {type(exc).__name__}: {exc}")
    return dst


def wait_wan_route(lab: Lab, ip: str) -> None:
    """Until the WAN router has a BGP route to the mover (bounded: BGP_WAIT_S)."""
    deadline = time.monotonic() + BGP_WAIT_S
    bgp = lab.border or lab.control_plane  # roamnet's border BGP, or FRR-EVPN IRB's borders
    while bgp.wan_routes().get(f"{ip}/32") is None:
        if time.monotonic() > deadline:
            raise LabError(f"the WAN router has no route to {ip}/32 after {BGP_WAIT_S:.0f} s")
        time.sleep(0.1)


def wan_switches(crossings: list, streams: list[str], moves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per inter-DC move and inbound WAN stream: the border before and after, and the time from the
    VM's stop and from its resume to the first packet entering through the new data center's border."""
    out = []
    borders = {"dc1": "dc1br", "dc2": "dc2br"}
    for p in summarize_paths(crossings, dict.fromkeys(streams, MOVER), moves, borders):
        m = moves[p.move]
        if m.get("scope") != "inter":
            continue
        dark = (m["resumed_mono"] - m["at_mono"]) * 1000
        out.append(dict(p.to_json(), pause_ms=m["pause_ms"], dark_ms=round(dark, 1),
                        from_resume_ms=None if p.inbound_switch_ms is None else round(p.inbound_switch_ms - dark, 1)))
    return out


def stop_streams(procs: list[Proc], at: float, end: float) -> dict[tuple[str, str], dict[str, Any]]:
    """At `at`, end the senders (SIGTERM to their own pids: each prints its final line), then the
    receivers 0.3 s later; collect every final line. Bounded by `end` + linger + 15 s."""
    time.sleep(max(0.0, min(at, end) - time.monotonic()))
    for role in ("send", "recv"):
        for p in procs:
            if p.role == role and p.popen.poll() is None:
                p.popen.terminate()
        time.sleep(0.3)
    results = {}
    for p in procs:
        left = end + LINGER_S + 15 - time.monotonic()
        results[(p.stream, p.role)] = final(p, timeout=max(2.0, min(left, 20.0)))
    return results


def after_resume(lost: list[tuple[int, float, float, float]], move: dict[str, Any], stretch: list) -> list[float]:
    """When the packets lost after the VM resumed were sent, in ms after the resume (at most 50):
    to be read against the move's activation (`mapped_ms`) and convergence (`converged_ms`)."""
    lo, hi = move["resumed_mono"] + SLACK_MS / 1000, stretch[1] if stretch[1] is not None else math.inf
    return [round((t - move["resumed_mono"]) * 1000, 1) for _, t, _, _ in lost if lo < t < hi][:50]


def analyze(res: PlaneResult, streams: tuple[StreamSpec, ...], results: dict[tuple[str, str], dict]) -> None:
    windows = [MoveWindow(m["at_mono"], m["resumed_mono"]) for m in res.moves]
    for m in res.moves:
        m["loss"] = {}
    pick = next((j for j, m in enumerate(res.moves) if m["scope"] == "inter" and m["pause_ms"] == 0
                 and m["from"] == HOME), None)
    if pick is not None:
        pm = res.moves[pick]
        res.plot = {"move": pick, "at": pm["at_mono"], "resumed": pm["resumed_mono"],
                    "converged_ms": pm.get("converged_ms"), "streams": {}}
    for st in streams:
        send, recv = results.get((st.key, "send"), {}), results.get((st.key, "recv"), {})
        errors = [d["error"] for d in (send, recv) if d.get("error") and "role" not in d]
        if errors or not send or not recv:
            res.streams[st.key] = {"error": "; ".join(errors) or "no result"}
            continue
        records, sent_at = recv.get("records") or [], recv.get("sent_at")  # sent_at: the carried send times
        sl = analyze_stream(records, int(send.get("sent") or 0), send.get("first"), st.rate, windows,
                            slack_ms=SLACK_MS, last=send.get("last"), edge_s=SPACING_S / 2, sent_at=sent_at)
        js = sl.to_json()
        per_move = js.pop("moves")
        stopped = {"sender": send.get("error") == "terminated", "receiver": recv.get("error") == "terminated"}
        js.update(label=st.label, peer=st.peer, peer_server=st.peer_server, rate=st.rate, proto=st.proto,
                  send_errors=send.get("send_errors"),
                  sender_error=None if stopped["sender"] else send.get("error"),
                  receiver_error=None if stopped["receiver"] else recv.get("error"),
                  stopped_by_benchmark=stopped["sender"])
        res.streams[st.key] = js
        lost = send_time_estimates(records, int(send.get("sent") or 0), send.get("first"), st.rate, send.get("last"),
                                   sent_at)
        # the same records counted as before the receivers recorded send times (all estimated): the old column
        was = analyze_stream(records, int(send.get("sent") or 0), send.get("first"), st.rate, windows,
                             slack_ms=SLACK_MS, last=send.get("last"), edge_s=SPACING_S / 2).moves
        for m, ml, old in zip(res.moves, per_move, was):
            m["loss"][st.key] = ml
            ml["lost_beyond_pause_estimated"] = old.lost_beyond_pause
            ml["after_resume_ms"] = after_resume(lost, m, ml["stretch"])
        if res.plot is not None:
            lo, hi = res.plot["at"] + PLOT_WINDOW_MS[0] / 1000, res.plot["at"] + PLOT_WINDOW_MS[1] / 1000
            got = [(s, t) for s, t in records if lo <= t <= hi]
            lost = [(s, t) for s, t, _, _ in send_time_estimates(records, int(send.get("sent") or 0),
                                                                 send.get("first"), st.rate, send.get("last"),
                                                                 sent_at)
                    if lo <= t <= hi]
            res.plot["streams"][st.key] = {"received": got, "lost": lost}
    res.moves = [dict(_jsonable(m), loss=m["loss"]) for m in res.moves]


# ---------------------------------------------------------------- control-plane latency at size


CLK_TCK = os.sysconf("SC_CLK_TCK")


def control_processes(bl: BenchLab) -> dict[str, tuple[str, int]]:
    """label -> (the NVE it serves, or "" for a central one; pid) of every control-plane process of the
    lab: roamnet's agent processes and its etcd; FRR's zebra and bgpd per server and its route
    reflector; OVN's daemons per chassis (ovs-vswitchd, its datapath here, included) and central."""
    lab, out = bl.lab, {}
    for nve, agent in lab.agents.items():
        if getattr(agent, "pid", None):
            out[f"agent@{nve}"] = (nve, agent.pid)
    if lab.etcd is not None:
        for i, proc in enumerate(lab.etcd.procs):
            if proc is not None:
                out[f"etcd m{i}"] = ("", proc.pid)
    cp = lab.control_plane
    if cp is not None and getattr(cp, "workdir", None) is not None and bl.plane.frr:
        for e in read_journal(Path(cp.workdir)):
            node = Path(e["instdir"]).name
            out[f"{e['daemon']}@{node}"] = (node if node in lab.plan.nodes and lab.plan.nodes[node].kind == "server"
                                            else "", int(e["pid"]))
    if cp is not None and bl.plane.ovn:  # per chassis ovsdb-server, ovs-vswitchd, ovn-controller; central NB/SB, northd
        for p in cp.processes():
            out[p.label] = (p.node if p.node in cp.chassis else "", p.popen.pid)
    return out


def sample(procs: dict[str, tuple[str, int]]) -> dict[str, tuple[float, int]]:
    """label -> (CPU seconds so far, resident KiB) from /proc; processes gone are left out."""
    out = {}
    for label, (_, pid) in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if ln.startswith("VmRSS:"))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
        out[label] = ((int(stat[11]) + int(stat[12])) / CLK_TCK, rss)
    return out


def process_costs(procs: dict[str, tuple[str, int]], before: dict, after: dict, k: int) -> dict[str, Any]:
    """Per NVE (its processes summed) and central: CPU ms per move (p50, max over NVEs) and RSS MiB."""
    per_nve: dict[str, list[float]] = {}
    rss_nve: dict[str, float] = {}
    central_cpu = central_rss = 0.0
    for label, (nve, _) in procs.items():
        if label not in before or label not in after:
            continue
        cpu_ms = (after[label][0] - before[label][0]) * 1000 / max(1, k)
        rss = after[label][1] / 1024
        if nve:
            per_nve.setdefault(nve, []).append(cpu_ms)
            rss_nve[nve] = rss_nve.get(nve, 0.0) + rss
        else:
            central_cpu, central_rss = central_cpu + cpu_ms, central_rss + rss
    cpu = [sum(v) for v in per_nve.values()]
    rss = list(rss_nve.values())
    return {"nves": len(cpu), "cpu_ms_per_move_p50": pct(cpu, 50), "cpu_ms_per_move_max": max(cpu, default=None),
            "rss_mib_p50": pct(rss, 50), "rss_mib_max": max(rss, default=None),
            "central_cpu_ms_per_move": round(central_cpu, 2), "central_rss_mib": round(central_rss, 1),
            "processes": sorted(procs)}


def run_size(plane: Plane, n_servers: int, k: int, lab_name: str) -> dict:
    """A lab of 2 DCs × n/2 servers, one VM per server, one CUG; the mover moves k times, no traffic."""
    half = (n_servers + 1) // 2
    servers = [f"hv{i + 1}" for i in range(n_servers)]
    dcs = {"dc1": servers[:half], "dc2": servers[half:]}
    vms = {f"vm{i + 1}": s for i, s in enumerate(servers)}
    cycle = [(servers[1], "intra"), (HOME, "intra"), (dcs["dc2"][0], "inter"), (HOME, "inter")]
    out: dict[str, Any] = {"plane": plane.key, "label": plane.label, "servers": n_servers, "vms": len(vms),
                           "lab": lab_name, "error": None, "up_s": None, "moves": []}
    try:
        with BenchLab(topology(lab_name, dcs, vms), plane) as bl:
            out["up_s"] = bl.up_s
            progress(f"size {n_servers} {plane.key}: lab up in {bl.up_s:.1f} s; {k} moves")
            procs = control_processes(bl)
            time.sleep(1.0)  # let the start settle: the moves' cost alone is measured
            before = sample(procs)
            for i in range(k):
                to, scope = cycle[i % len(cycle)]
                time.sleep(0.3)
                rec = bl.migrate(MOVER, to, 0)
                rec.update(index=i, scope=scope)
                out["moves"].append(_jsonable(rec))
                progress(f"size {n_servers} {plane.key}: move {i + 1}/{k} → {to}: converged "
                         f"{rec.get('converged_ms')} ms, programmed {rec.get('programmed_ms')} ms")
            out["costs"] = process_costs(procs, before, sample(procs), k)
    except Exception as exc:  # this size failed; the others run
        out["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"size {n_servers} {plane.key}: FAILED: {out['error']}")
    for key in ("converged_ms", "programmed_ms"):
        if key == "programmed_ms" and not plane.activates:  # activation → last NVE: no counterpart
            out[key] = {"p50": None, "p99": None, "n": 0, "timeouts": None}
            continue
        vals = [m.get(key) for m in out["moves"]]
        ok = [v for v in vals if v is not None]
        out[key] = {"p50": pct(ok, 50), "p99": pct(ok, 99), "n": len(ok), "timeouts": len(vals) - len(ok)}
    return out


# ---------------------------------------------------------------- summary


def stream_views() -> list[tuple[StreamSpec, str, Callable[[dict[str, Any]], bool]]]:
    """Table rows per stream: a peer on the mover's home server is on the source of every outbound
    move and on the destination of every return: those are two different cases."""
    out = []
    for st in STREAMS:
        if st.peer_server == HOME:
            out.append((st, "source", lambda m, s=st.peer_server: m["from"] == s))
            out.append((st, "destination", lambda m, s=st.peer_server: m["to"] == s))
        else:
            out.append((st, "remote", lambda m: True))
    return out


def summarize(planes: list[PlaneResult]) -> dict[str, list[dict[str, Any]]]:
    loss_rows, lat_rows, wan_rows = [], [], []
    for pr in planes:
        for st, where, sel in stream_views():
            for pause, scope in ((p, s) for p in PAUSES_MS for s in ("intra", "inter")):
                mv = [m for m in pr.moves if m["pause_ms"] == pause and m["scope"] == scope and st.key in m["loss"]
                      and sel(m)]
                ms = [m["loss"][st.key] for m in mv]
                if not ms:
                    continue
                beyond = [x["lost_beyond_pause"] for x in ms]
                whole = pr.streams.get(st.key) or {}
                away = (whole["lost_outside"] / whole["outside_s"]) if whole.get("outside_s") else None
                stretch = pct([x["stretch"][1] - x["stretch"][0] for x in ms
                               if None not in (x.get("stretch") or [None])], 50)
                loss_rows.append({
                    "plane": pr.plane.key, "stream": st.key, "peer_on": where, "pause_ms": pause, "scope": scope,
                    "moves": len(ms),
                    "dark_p50_ms": pct([x["dark_ms"] for x in ms], 50),
                    "beyond_p50": pct(beyond, 50), "beyond_p99": pct(beyond, 99), "beyond_max": max(beyond),
                    "zero_beyond_share": sum(1 for b in beyond if b == 0) / len(beyond),
                    "gap_beyond_p50_ms": pct([x["longest_gap_beyond_ms"] for x in ms], 50),
                    "in_pause_p50": pct([x["lost_in_pause"] for x in ms], 50),
                    "after_resume_p50": pct([x["lost_after_resume"] for x in ms], 50),
                    "after_resume_max": max(x["lost_after_resume"] for x in ms),
                    "zero_after_resume_share": sum(1 for x in ms if x["lost_after_resume"] == 0) / len(ms),
                    # with the send times the datagrams carried (loss.py): packets sent inside the pause
                    # that arrived anyway, and the slowest delivery of those sent just before the stop
                    "received_in_pause": sum(x.get("received_in_pause") or 0 for x in ms),
                    "before_stop": sum(x.get("lost_before_stop", 0) for x in ms),
                    "in_flight": sum(x.get("lost_in_flight") or 0 for x in ms),
                    "zero_beyond_share_estimated": sum(1 for x in ms if x.get("lost_beyond_pause_estimated",
                                                                            x["lost_beyond_pause"]) == 0) / len(ms),
                    "latency_before_stop_max_ms": max((x["latency_before_stop_ms"] for x in ms
                                                       if x.get("latency_before_stop_ms") is not None), default=None),
                    "simple_p50": pct([x["simple"] for x in ms], 50),
                    "uncertain": sum(x["uncertain"] for x in ms),
                    # the data plane's loss with nothing moving (lead and tail of the stream), per second and
                    # over a move's median stretch: what a move would have lost anyway, not subtracted
                    "away_lost_per_s": None if away is None else round(away, 2),
                    "away_per_move": None if away is None or stretch is None else round(away * stretch, 1),
                })
        for scope in ("intra", "inter", "all"):
            ms = [m for m in pr.moves if scope == "all" or m["scope"] == scope]
            if not ms:
                continue
            conv = [m.get("converged_ms") for m in ms]
            prog = [m.get("programmed_ms") for m in ms]
            ok_c, ok_p = [v for v in conv if v is not None], [v for v in prog if v is not None]
            lat_rows.append({"plane": pr.plane.key, "scope": scope, "moves": len(ms),
                             "converged_p50_ms": pct(ok_c, 50), "converged_p99_ms": pct(ok_c, 99),
                             "converged_timeouts": len(conv) - len(ok_c),
                             "programmed_timeouts": len(prog) - len(ok_p) if pr.plane.activates else None,
                             "programmed_p50_ms": pct(ok_p, 50), "programmed_p99_ms": pct(ok_p, 99)})
        for pause in PAUSES_MS:
            sw = [p for p in pr.paths if p["pause_ms"] == pause]
            if not sw:
                continue
            stop = [p["inbound_switch_ms"] for p in sw if p["inbound_switch_ms"] is not None]
            res = [p["from_resume_ms"] for p in sw if p["from_resume_ms"] is not None]
            wan_rows.append({"plane": pr.plane.key, "pause_ms": pause, "moves": len(sw),
                             "never": len(sw) - len(stop), "from_resume_p50_ms": pct(res, 50),
                             "from_resume_p99_ms": pct(res, 99), "from_resume_max_ms": max(res, default=None),
                             "from_stop_p50_ms": pct(stop, 50)})
    ref = {(r["stream"], r["peer_on"], r["pause_ms"], r["scope"]): r for r in loss_rows if r["plane"] == REF}
    for r in loss_rows:
        base = ref.get((r["stream"], r["peer_on"], r["pause_ms"], r["scope"]))
        if r["plane"] == REF:
            r["vs_roamnet"] = "ref"
        elif base is None:
            r["vs_roamnet"] = None
        elif base["beyond_p50"] == 0:
            r["vs_roamnet"] = ("both 0" if r["beyond_p50"] == 0 else
                               f"{SHORT[r['plane']]} loses {r['beyond_p50']:g}, roamnet 0")
        else:
            ratio = r["beyond_p50"] / base["beyond_p50"]
            r["vs_roamnet"] = f"×{ratio:.2f}" if ratio < 1 else f"×{ratio:.1f}" if ratio < 10 else f"×{ratio:.0f}"
    return {"loss": loss_rows, "latency": lat_rows, "wan_switch": wan_rows}


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}".rstrip("0").rstrip(".") if nd and not v.is_integer() else f"{v:.0f}"
    return str(v)


def render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(190, Console().width), highlight=False)
    labels = {p.key: p.label for p in PLANES}
    slabels = {s.key: s.label for s in STREAMS}
    t = Table(title="packets lost beyond the VM's own pause, per move: p50 / p99 / max over moves; share of "
                    "moves with none (in brackets: with every send time estimated, as before the receivers "
                    "recorded the ones the datagrams carry); of them after the VM resumed (the rest: before it "
                    "stopped); longest gap beyond "
                    "the pause; lost in the pause; the issue's formula; lost away from every move (per s, and "
                    "over a move's stretch: lost anyway, included in the figures beyond the pause)")
    for col in ("control plane", "stream", "pause ms", "scope", "dark ms p50", "moves", "p50", "p99", "max",
                "=0 (estimated)", "after resume p50/max", "gap ms p50", "in pause p50", "lost−dark×rate p50",
                "away from moves /s (per move)", "vs roamnet p50"):
        t.add_column(col, justify="left" if col in ("control plane", "stream", "vs roamnet p50") else "right",
                     no_wrap=col in ("control plane", "stream", "vs roamnet p50"))
    prev = None
    for r in doc["summary"]["loss"]:
        if prev is not None and r["plane"] != prev:
            t.add_section()
        prev = r["plane"]
        where = {"remote": "", "source": " (peer on src)", "destination": " (peer on dst)"}[r["peer_on"]]
        t.add_row(labels[r["plane"]], slabels[r["stream"]] + where, str(r["pause_ms"]), r["scope"],
                  _f(r["dark_p50_ms"]),
                  str(r["moves"]), _f(r["beyond_p50"]), _f(r["beyond_p99"]), _f(r["beyond_max"]),
                  f"{100 * r['zero_beyond_share']:.0f}% ({100 * r.get('zero_beyond_share_estimated', 0):.0f}%)",
                  f"{_f(r['after_resume_p50'])}/{_f(r['after_resume_max'])}",
                  _f(r["gap_beyond_p50_ms"]), _f(r["in_pause_p50"]),
                  _f(r["simple_p50"]), f"{_f(r.get('away_lost_per_s'))} ({_f(r.get('away_per_move'))})",
                  r["vs_roamnet"] or "—")
    con.print(t)
    t = Table(title="control-plane latency (ms): resume → converged (all), activation → last NVE programmed "
                    "(roamnet; OVN: the destination delivers → every chassis caught up)")
    for col in ("control plane", "moves", "scope", "resume→converged p50", "p99", "timeouts",
                "activation→programmed p50", "p99"):
        t.add_column(col, justify="left" if col in ("control plane", "scope") else "right")
    for r in doc["summary"]["latency"]:
        t.add_row(labels[r["plane"]], str(r["moves"]), r["scope"], _f(r["converged_p50_ms"]),
                  _f(r["converged_p99_ms"]), str(r["converged_timeouts"]), _f(r["programmed_p50_ms"]), _f(r["programmed_p99_ms"]))
    con.print(t)
    if doc["summary"].get("wan_switch"):
        t = Table(title="inbound switch after an inter-DC move (ms): the VM resumed → the WAN stream's first packet "
                        "in through the new data center's border")
        for col in ("control plane", "pause ms", "moves", "never", "p50", "p99", "max", "from the stop p50"):
            t.add_column(col, justify="left" if col == "control plane" else "right")
        for r in doc["summary"]["wan_switch"]:
            t.add_row(labels[r["plane"]], str(r["pause_ms"]), str(r["moves"]), str(r["never"]),
                      _f(r["from_resume_p50_ms"]), _f(r["from_resume_p99_ms"]), _f(r["from_resume_max_ms"]),
                      _f(r["from_stop_p50_ms"]))
        con.print(t)
    if doc.get("sizes"):
        t = Table(title="control-plane latency at size (ms), no traffic")
        for col in ("control plane", "servers", "VMs", "lab up s", "moves", "resume→converged p50", "p99",
                    "activation→programmed p50", "p99", "CPU ms/move per NVE p50", "max", "RSS MiB per NVE",
                    "central CPU ms/move", "central RSS MiB", "note"):
            t.add_column(col, justify="left" if col in ("control plane", "note") else "right")
        for r in doc["sizes"]:
            c, p, k = r["converged_ms"], r["programmed_ms"], r.get("costs") or {}
            note = r["error"] or (f"{c['timeouts']} timeouts" if c["timeouts"] else "")
            t.add_row(labels[r["plane"]], str(r["servers"]), str(r["vms"]), _f(r["up_s"]), str(len(r["moves"])),
                      _f(c["p50"]), _f(c["p99"]), _f(p["p50"]), _f(p["p99"]), _f(k.get("cpu_ms_per_move_p50")),
                      _f(k.get("cpu_ms_per_move_max")), _f(k.get("rss_mib_p50")), _f(k.get("central_cpu_ms_per_move")),
                      _f(k.get("central_rss_mib")), note[:60])
        con.print(t)
    notes = []
    for pl in doc["planes"]:
        if pl["error"]:
            notes.append(f"{pl['label']}: {pl['error']}")
        if pl.get("note"):
            notes.append(f"{pl['label']}: {pl['note']}")
        if pl.get("skipped_moves"):
            notes.append(f"{pl['label']}: {pl['skipped_moves']} moves skipped")
        for key, s in pl["streams"].items():
            if "error" in s and len(s) == 1:
                notes.append(f"{pl['label']} {key}: {s['error']}")
            elif s.get("lost_outside"):
                notes.append(f"{pl['label']} {key}: {s['lost_outside']} lost away from any move "
                             f"(in {s.get('outside_s', 0):.1f} s)")
        dp = pl.get("datapath_counters")
        if dp:
            notes.append(f"{pl['label']}: Open vSwitch's packet sockets dropped {dp['socket_drops']} frames it did not "
                         f"read in time; its main threads (the datapath) used {dp['cpu_ms'] / 1000:.1f} s of CPU and "
                         f"waited {dp['runq_wait_ms'] / 1000:.1f} s for one" + (" (SCHED_RR)" if OVN_RT else ""))
    for pl in doc["planes"]:
        unc = sum(x["uncertain"] for m in pl["moves"] for x in m["loss"].values())
        lost = sum(x["lost"] for m in pl["moves"] for x in m["loss"].values())
        if unc:
            notes.append(f"{pl['label']}: {unc} of {lost} lost packets could fall either side of a pause boundary "
                         "(the sender slipped inside their gap; see roamnet.experiments.loss)")
    if any(pl.get("ovn_strategy") for pl in doc["planes"]):
        notes.append("* OVN runs on Open vSwitch's userspace (netdev) datapath here (this kernel has no openvswitch "
                     "module); roamnet and FRR-EVPN forward in the kernel. OVN's activation is the destination's "
                     "copy of the port passing traffic (bound there, flows installed, activated); 'converged' is "
                     "resume → every chassis caught up after that (hv_cfg)")
    load = doc.get("loadavg") or {}
    if load:
        notes.append(f"load average (1 / 5 / 15 min) {' / '.join(map(str, load['start']))} when the run started, "
                     f"{' / '.join(map(str, load['end']))} at its end ({doc['machine'].get('cpu_count')} CPUs)")
    for n in notes:
        con.print(f"• {n}", highlight=False)


# ---------------------------------------------------------------- plot


def plot(planes: list[PlaneResult], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    rows = [p for p in planes if p.plot is not None and p.plot["streams"]]
    if not rows:
        return None
    fig = Figure(figsize=(5 * len(STREAMS), 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(STREAMS), squeeze=False)
    for r, pr in enumerate(rows):
        pl = pr.plot
        at = pl["at"]
        dark = (pl["resumed"] - at) * 1000
        for c, st in enumerate(STREAMS):
            ax = axes[r][c]
            data = pl["streams"].get(st.key)
            ax.axvspan(0, max(dark, 0.5), color="tab:gray", alpha=0.3, label=f"VM paused ({dark:.1f} ms)")
            if pl.get("converged_ms") is not None:
                ax.axvline(dark + pl["converged_ms"], color="tab:green", linestyle="--", linewidth=1,
                           label="converged")
            if data:
                if data["received"]:
                    ax.plot([(t - at) * 1000 for _, t in data["received"]], [s for s, _ in data["received"]],
                            linestyle="none", marker=".", markersize=1.5, color="tab:blue", rasterized=True,
                            label="received (recv time)")
                if data["lost"]:
                    ax.plot([(t - at) * 1000 for _, t in data["lost"]], [s for s, _ in data["lost"]],
                            linestyle="none", marker="x", markersize=3, color="tab:red", rasterized=True,
                            label=f"lost ({len(data['lost'])}, est. send time)")
            ax.set_xlim(*PLOT_WINDOW_MS)
            where = " (peer on source)" if st.peer_server == HOME else ""
            ax.set_title(f"{pr.plane.label} — {st.label}{where}", fontsize=9)
            ax.set_xlabel("ms from the VM's stop (at_mono)")
            ax.set_ylabel("seq")
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("one inter-DC move (pause 0): hv1 → hv4", fontsize=11)
    fig.savefig(path, format="png", dpi=100)
    return path


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=None, metavar="K",
                    help="round trips per scope (intra/inter-DC) and pause (default 5; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="K=2 (about 3 minutes for the three planes)")
    ap.add_argument("--planes", nargs="+", choices=[p.key for p in PLANES], default=DEFAULT_PLANES,
                    help="control planes to run, in this order (default: all but inproc, roamnet with its mapping "
                         "in the lab's memory and its agents as threads, the arrangement before agent processes, "
                         "and libvirt, roamnet's moves through the `roamnet hook libvirt` command at libvirt's points)")
    ap.add_argument("--sizes", nargs="*", type=int, default=None, metavar="N",
                    help="also measure control-plane latency in labs of N servers (default N=32), no traffic")
    ap.add_argument("--size-moves", type=int, default=None, metavar="K",
                    help="moves per size run (default 4 × --moves)")
    ap.add_argument("--sizes-only", action="store_true", help="only the size runs (no traffic runs)")
    ap.add_argument("--guest", choices=("namespace", "qemu"), default="namespace",
                    help="what the moving VM is: the lab's namespace VM, or a real QEMU guest migrated by QEMU "
                         "(`make install` builds it; 1 kHz streams echoed by the guest; OVN planes are skipped)")
    ap.add_argument("--streams", choices=sorted(STREAM_SETS), default="l2",
                    help="l2: peers in the mover's CUG (default); routed: peers in another CUG and a WAN client "
                         "(roamnet's planes and frr-irb); all: both in one lab")
    ap.add_argument("--ovn-rt", action="store_true",
                    help="run every ovs-vswitchd's main thread (which forwards the lab's packets: OVN's userspace "
                         "datapath) under SCHED_RR, as the kernel's datapath runs ahead of every task: for "
                         "diagnosis, not for comparing (it then takes the CPU the stream senders and the lab's "
                         "link flips need, and the VM's pause grows)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("-f", "--format", choices=("table", "json"), default="table")
    a = ap.parse_args(argv)
    k = a.moves if a.moves is not None else (2 if a.quick else 5)
    if k < 1 or k > 20:
        ap.error("--moves must be in 1..20")
    sizes = None if a.sizes is None else (a.sizes or [32])
    if sizes and any(not 4 <= n <= 64 for n in sizes):
        ap.error("--sizes: 4..64 servers")
    if os.geteuid() != 0:
        print("migration.py: run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)

    global GUEST, STREAMS, LOGS_DIR, OVN_RT  # the run's configuration: topology, streams, tables, plot, logs
    GUEST, LOGS_DIR, OVN_RT = a.guest, a.out, a.ovn_rt
    STREAMS = STREAM_SETS[a.streams]
    if GUEST == "qemu":
        if a.streams != "l2":
            ap.error("--guest qemu: L2 streams only")
        STREAMS = QEMU_STREAMS
    started = time.time()
    load_start = [round(x, 2) for x in os.getloadavg()]  # the machine may be shared: say how busy it was
    chosen = [p for p in PLANES if p.key in a.planes and not (GUEST == "qemu" and p.ovn)]

    results: list[PlaneResult] = []
    pid = os.getpid()
    for i, plane in enumerate([] if a.sizes_only else chosen):
        progress(f"=== {plane.label}")
        results.append(run_traffic(plane, k, f"bench-{pid}-{i}", STREAMS))
    sizes_out = []
    for n in sizes or []:
        for j, plane in enumerate(p for p in chosen if p.key != "learn" and not p.irb):
            progress(f"=== size {n}: {plane.label}")
            sizes_out.append(run_size(plane, n, a.size_moves or 4 * k, f"bsz-{pid}-{n}-{j}"))

    doc: dict[str, Any] = {
        "benchmark": "roamnet live migration: loss beyond the VM's pause", "version": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "runtime_s": round(time.time() - started, 1),
        "loadavg": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},  # 1 / 5 / 15 min
        "machine": machine(),
        "config": {"moves_per_scope_and_pause": k, "pauses_ms": list(PAUSES_MS), "spacing_s": SPACING_S,
                   "slack_ms": SLACK_MS, "migrate_wait_s": MIGRATE_WAIT_S,
                   "streams": [{"key": s.key, "label": s.label, "kind": s.kind, "proto": s.proto,
                                "peer": s.peer, "peer_server": s.peer_server, "rate": s.rate} for s in STREAMS],
                   "mover": MOVER, "home": HOME, "intra": INTRA, "inter": INTER, "guest": GUEST, "ovn_rt": OVN_RT,
                   "qemu": {"accel": qemu_accel(), "memory_mib": QEMU_MEMORY_MIB} if GUEST == "qemu" else None},
        "planes": [r.to_json() for r in results],
        "summary": summarize(results),
        "sizes": sizes_out,
    }
    (a.out / "migration.json").write_text(json.dumps(doc, indent=1) + "\n")
    png = plot(results, a.out / "migration.png")
    progress(f"wrote {a.out / 'migration.json'}" + (f" and {png}" if png else " (no plot: no inter-DC move)"))
    if a.format == "json":
        print(json.dumps(doc, indent=1))
    else:
        render(doc)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
