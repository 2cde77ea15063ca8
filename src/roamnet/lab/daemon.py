"""The lab daemon: holds one lab (mapping system + NVE agents) after `roamnet lab up` returns.

State of lab NAME lives in its state directory (lab/state.py: /run/roamnet/NAME/, mode 0700): `sock` (unix socket, 0600: root only),
`pid`, `journal.json` (every namespace the lab created, written before it is created), `log`.
Protocol: one JSON request per connection, `{"op": ..., "args": {...}}`, one JSON reply
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from roamnet.dataplane import netns
from roamnet.intent.model import parse_topology
from roamnet.lab.engine import Lab
from roamnet.lab.errors import LabError
from roamnet.lab.state import JOURNAL, cleanup, daemon_pid, journal_namespaces, labs, make_state_dir, state_dir
from roamnet.nve.desired import compute_desired

log = logging.getLogger(__name__)


class DaemonError(Exception):
    pass


# ---- client ------------------------------------------------------------------------------------

def call(lab: str, op: str, timeout: float = 60.0, **args) -> object:
    path = state_dir(lab) / "sock"
    if not path.exists():
        raise DaemonError(f"lab {lab!r} is not running (no {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as exc:
            raise DaemonError(f"lab {lab!r}: daemon does not answer on {path}: {exc.strerror}") from exc
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise DaemonError(f"lab {lab!r}: daemon closed the connection")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise DaemonError(reply.get("error", "unknown error"))
    return reply.get("result")


def start(topology: dict, source: str, timeout: float = 120.0, progress=None, in_process: bool = False,
          store_url: str | None = None) -> dict:
    """Spawn the daemon for `topology` and wait until its lab is up. Raises DaemonError. Default: a
    private etcd and one agent process per NVE; `store_url`: the agents over that etcd instead (it
    must hold no mapping); `in_process`: the mapping in the daemon's memory, the agents its threads."""
    if in_process and store_url:
        raise DaemonError("a lab is either in-process or over a store, not both")
    topo = parse_topology(topology, source)  # refuse bad input before anything exists
    lab = topo.name
    if daemon_pid(lab):
        raise DaemonError(f"lab {lab!r} is already up (see `roamnet lab inspect {lab}`)")
    leftovers = [ns for ns in journal_namespaces(lab) if netns.exists(ns)]
    if leftovers:
        raise DaemonError(f"lab {lab!r} left namespaces behind ({', '.join(leftovers[:3])}…): "
                          f"run `roamnet lab down {lab}` first")
    d = make_state_dir(lab)
    (d / "topology.json").write_text(json.dumps(topo.model_dump(mode="json", by_alias=True)))
    logf = open(d / "log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "roamnet.lab.daemon", lab] + (["--in-process"] if in_process else [])
        + (["--store", store_url] if store_url else []), stdin=subprocess.DEVNULL,
        stdout=logf, stderr=logf, start_new_session=True, close_fds=True)
    logf.close()
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if progress:
            lines = (d / "log").read_text().splitlines()
            for line in lines[seen:]:
                if " progress: " in line:
                    progress(line.split(" progress: ", 1)[1])
            seen = len(lines)
        if proc.poll() is not None:
            tail = (d / "log").read_text().strip().splitlines()[-15:]
            errors = [ln.split(" error: ", 1)[1] for ln in tail if " error: " in ln]
            cleanup(lab)
            raise DaemonError(f"lab {lab!r} failed to start: " + ("; ".join(errors) or "\n".join(tail)))
        if (d / "sock").exists():
            try:
                return call(lab, "status", timeout=5)
            except DaemonError:
                pass
        time.sleep(0.1)
    raise DaemonError(f"lab {lab!r} did not come up within {timeout:.0f} s (log: {d / 'log'})")


def stop(lab: str) -> list[str]:
    """Bring lab down through its daemon, or clean up after a dead one."""
    if not state_dir(lab).exists():
        raise DaemonError(f"no lab {lab!r} (labs: {', '.join(labs()) or 'none'})")
    try:
        removed = call(lab, "down", timeout=60)
    except DaemonError:
        removed = []
    pid = daemon_pid(lab)
    for _ in range(100):  # the daemon exits right after answering
        if not pid or not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    return list(removed) + cleanup(lab)


# ---- server ------------------------------------------------------------------------------------

class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(lab_name: str, in_process: bool = False, store_url: str | None = None) -> int:
    d = state_dir(lab_name)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    topo = parse_topology(json.loads((d / "topology.json").read_text()), str(d / "topology.json"))
    (d / "pid").write_text(str(os.getpid()))
    lab = Lab(topo, journal=d / JOURNAL, progress=lambda m: log.info("progress: %s", m),
              etcd=False if in_process or store_url else None, store_url=store_url)
    done = threading.Event()
    try:
        lab.up()
    except Exception as exc:
        log.error("error: %s", exc)
        return 1
    log.info("progress: lab %s is up", lab.name)

    def handle(op: str, args: dict):
        if op == "status":
            return {"lab": lab.name, "pid": os.getpid(), "namespaces": len(lab.created)}
        if op == "inspect":
            return lab.inspect()
        if op == "migrate":
            phase, vm = args.get("phase", "all"), args["vm"]
            if phase == "all":
                return lab.migrate(vm, args["to"], int(args.get("pause_ms", 0)), prepare=bool(args.get("prepare", True)),
                                   driver=str(args.get("driver", "lab")))
            if phase == "prepare":
                return lab.prepare(vm, args["to"], timeout=float(args.get("timeout", 30.0)))
            if phase == "resume":
                return lab.resume(vm, int(args.get("pause_ms", 0)))
            if phase in ("activate", "complete", "abort"):
                return getattr(lab, phase)(vm)
            raise LabError(f"unknown migration phase {phase!r}")
        if op == "stop":
            return lab.stop_vm(args["vm"])
        if op == "start":
            return lab.start_vm(args["vm"], args["to"])
        if op == "unfreeze":
            return lab.unfreeze(args["vm"])
        if op == "restart-agent":
            return lab.restart_agent(args["server"])
        if op == "desired":
            return compute_desired(lab.mapping.snapshot(), args["server"]).to_json()
        if op == "down":
            removed = lab.down()
            done.set()
            return removed
        raise LabError(f"unknown request {op!r}")

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                req = json.loads(self.rfile.readline())
                reply = {"ok": True, "result": handle(req.get("op"), req.get("args") or {})}
            except (LabError, KeyError, ValueError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:  # report, keep serving
                log.exception("request failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    sock_path = d / "sock"
    old_umask = os.umask(0o177)
    server = _Server(str(sock_path), Handler)
    os.umask(old_umask)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done.wait()
    server.shutdown()
    if lab.created:
        lab.down()
    sock_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[2:]
    sys.exit(serve(sys.argv[1], "--in-process" in args, args[args.index("--store") + 1] if "--store" in args else None))
