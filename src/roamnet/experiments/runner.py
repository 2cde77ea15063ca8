"""Run a scenario: build its lab, run traffic streams and timed steps, tear down, report.

A stream into a QEMU guest (`vms.<vm>.guest: qemu`) has no receiver in the guest: the guest's rnguest echoes
it (lab/qemu.py), so it is measured on the round trip, from the sender's namespace. UDP datagrams go to the
guest's echo port and come back to a receiver beside the sender (the echo answers at UDP_REPLY_PORT); a TCP
stream is one connection to the guest's TCP echo, whose echo client is both ends of the stream (`endpoints`)."""

from __future__ import annotations

import json
import platform
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from roamnet import names
from roamnet.dataplane import netns
from roamnet.experiments.paths import PathObserver, Watched, summarize_paths
from roamnet.experiments.report import Report, resumed_after, summarize
from roamnet.experiments.traffic import echo_argv, recv_argv, send_argv
from roamnet.intent.model import Topology
from roamnet.intent.scenario import Scenario, Stream
from roamnet.lab.engine import Lab
from roamnet.lab.errors import LabError
from roamnet.lab.qemu import UDP_ECHO_PORT, UDP_REPLY_PORT
from roamnet.lab.state import JOURNAL, cleanup, journal_namespaces, make_state_dir

BASE_PORT = 5001
LINGER_S = 2.0
START_DELAY_S = 1.0


@dataclass
class Proc:
    stream: str
    role: str
    popen: subprocess.Popen


def spawn(ns: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(netns.command(ns, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_ready(p: Proc, timeout: float) -> None:
    line = ""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([p.popen.stdout], [], [], left)[0]:
            break
        line = p.popen.stdout.readline()
        if not line or '"ready"' in line:
            break
    if '"ready"' not in line:
        err = p.popen.stderr.read() if p.popen.poll() is not None else ""
        raise LabError(f"stream {p.stream}: receiver did not start: {(line or err).strip()[:300]}")


def final(p: Proc, timeout: float) -> dict:
    try:
        out, err = p.popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.popen.kill()
        out, err = p.popen.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{") and '"role"' in ln]
    if not lines:
        return {"error": f"{p.role} of {p.stream} printed no result: {err.strip()[-300:]}"}
    return json.loads(lines[-1])


def endpoints(topo: Topology, st: Stream, src: str, dst: str, port: int, t0: float,
              duration: float) -> tuple[int, list[tuple[str, str, list[str]]]]:
    """The port one stream is sent to, and its processes: (role, node whose namespace runs it, argv), a
    receiver ("recv", waited for until ready) first. Into a QEMU guest: the round trip through its echo (see
    the module's docstring), sent to the echo's port."""
    receiver = st.receiver(topo)
    if receiver in topo.vms and topo.vms[receiver].guest == "qemu":
        if st.proto == "tcp":
            return UDP_ECHO_PORT, [("echo", st.from_, echo_argv(dst, UDP_ECHO_PORT, st.rate, t0, duration, LINGER_S))]
        return UDP_ECHO_PORT, [("recv", st.from_, recv_argv("udp", src, UDP_REPLY_PORT, t0, duration, LINGER_S)),
                               ("send", st.from_, send_argv("udp", dst, UDP_ECHO_PORT, st.rate, t0, duration))]
    return port, [("recv", receiver, recv_argv(st.proto, dst, port, t0, duration, LINGER_S)),
                  ("send", st.from_, send_argv(st.proto, dst, port, st.rate, t0, duration))]


def counter_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict:
    """What the NVEs' filters counted during the run: per NVE and in total, by kind."""
    by_nve = {nve: {k: v - before.get(nve, {}).get(k, 0) for k, v in c.items()} for nve, c in sorted(after.items())}
    total: dict[str, int] = {}
    for c in by_nve.values():
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return {"total": total, "by_nve": by_nve}


def run_scenario(scn: Scenario, progress: Callable[[str], None] = lambda m: None) -> tuple[Report, float]:
    """Returns the report and t0 (the monotonic time streams started), for plotting."""
    topo = scn.topology
    if any(netns.exists(ns) for ns in journal_namespaces(topo.name)):
        raise LabError(f"lab {topo.name!r} is already up: `roamnet lab down {topo.name}` first")
    journal = make_state_dir(topo.name) / JOURNAL
    lab = Lab(topo, journal=journal, progress=progress)
    procs: list[Proc] = []
    observer: PathObserver | None = None
    try:
        progress(f"building lab {topo.name}")
        lab.up()
        t0 = time.monotonic() + START_DELAY_S + 0.2 * len(scn.streams)
        plan = []
        watched: list[Watched] = []
        stream_vm: dict[str, str] = {}
        for i, st in enumerate(scn.streams):
            src, dst, via = st.endpoints(topo)
            port, ends = endpoints(topo, st, str(src), str(dst), st.port or BASE_PORT + i, t0, scn.duration)
            plan.append((st, ends))
            if via == "wan":  # a WAN client and a VM: watch which border the packets cross
                vm_is_src = st.from_ in topo.vms
                stream_vm[st.name] = st.from_ if vm_is_src else st.receiver(topo)
                vm_ip, client_ip = (src, dst) if vm_is_src else (dst, src)
                watched.append(Watched(st.name, str(vm_ip), str(client_ip), port, vm_is_src))
            for role, node, argv in ends[:-1]:  # the receiver, ready before anything is sent
                rp = Proc(st.name, role, spawn(names.netns(topo.name, node), argv))
                procs.append(rp)
                wait_ready(rp, timeout=10)
        if watched:
            observer = PathObserver(lab.border_namespaces(), watched, max_seconds=scn.duration + 60)
            observer.start()
        for st, ends in plan:
            role, node, argv = ends[-1]
            procs.append(Proc(st.name, role, spawn(names.netns(topo.name, node), argv)))
        progress(f"running {len(scn.streams)} streams for {scn.duration:g} s")
        counted_before = lab.filter_counters()
        migrations = []
        for step in sorted(scn.steps, key=lambda s: s.at):
            time.sleep(max(0.0, t0 + step.at - time.monotonic()))
            if step.stop is not None:
                progress(f"t={step.at:g}s: stop {step.stop}")
                lab.stop_vm(step.stop)  # its record comes with its start (a cold move's dark time)
                continue
            if step.start is not None:
                progress(f"t={step.at:g}s: start {step.start} on {step.on}")
                rec = lab.start_vm(step.start, step.on)
            else:
                progress(f"t={step.at:g}s: migrate {step.migrate} -> {step.to} (pause {step.pause_ms} ms)")
                rec = lab.migrate(step.migrate, step.to, step.pause_ms)
            rec["at"] = round(rec["at_mono"] - t0, 3)
            migrations.append(rec)
        results: dict[tuple[str, str], dict] = {}
        for p in procs:
            left = t0 + scn.duration + LINGER_S + 15 - time.monotonic()
            results[(p.stream, p.role)] = final(p, timeout=max(1.0, left))
        streams = []
        for st, _ in plan:
            echo = results.get((st.name, "echo"))  # a TCP echo client is both ends
            streams.append(summarize(st.name, st.proto, st.from_, st.to, st.rate, echo or results[(st.name, "send")],
                                     echo or results[(st.name, "recv")], migrations, st.expect))
        paths = []
        if observer is not None:
            borders = {dc: topo.border_of(dc) for dc in topo.datacenters}
            paths = [p.to_json() for p in summarize_paths(observer.stop(), stream_vm, migrations, borders)]
        meta = {"lab": topo.name, "duration": scn.duration, "t0": t0,
                "machine": f"{platform.node()} {platform.machine()} {platform.release()}"}
        counted = counter_delta(counted_before, lab.filter_counters())
        frozen = [{"iface": b.iface_id, "mac": b.mac, "vni": b.vni, "nve": b.nve, "moves": len(b.moves),
                   "until": b.frozen_until or None}
                  for b in lab.mapping.snapshot().bindings.values() if b.frozen]
        return Report(streams, migrations, meta, paths, counted, resumed_after(streams, migrations), frozen), t0
    finally:
        if observer is not None:
            observer.stop()
        for p in procs:  # bounded: every endpoint stops by itself; this only covers an early error
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(timeout=5)
        progress(f"tearing down lab {topo.name}")
        lab.down()
        cleanup(topo.name)
