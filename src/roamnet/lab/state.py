"""A lab's state directory (`names.state_dir`: /run/roamnet/<lab>, mode 0700) and its journal, and the
crash clean-up that works from them alone.

`journal.json` lists every namespace the lab created, written before it is created; FRR and OVN workdirs
keep their own pid journals; agent processes, etcd members and QEMU guests their pid files. `cleanup` removes what the journals list, by recorded name and pid only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from roamnet import names
from roamnet.baselines import ovn
from roamnet.baselines.evpn import FrrEvpn
from roamnet.baselines.evpn_irb import FrrEvpnIrb
from roamnet.dataplane import netns
from roamnet.wan.border import BorderBgp
from roamnet.wan.frr import kill_recorded

JOURNAL = "journal.json"


def state_dir(lab: str) -> Path:
    return names.state_dir(lab)


def make_state_dir(lab: str) -> Path:
    run = names.run_dir()
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = state_dir(lab)
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def labs() -> list[str]:
    run = names.run_dir()
    return sorted(p.name for p in run.iterdir() if p.is_dir()) if run.exists() else []


def write_journal(path: Path, lab: str, namespaces: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"lab": lab, "namespaces": namespaces}))
    os.replace(tmp, path)


def journal_namespaces(lab: str) -> list[str]:
    try:
        return json.loads((state_dir(lab) / JOURNAL).read_text())["namespaces"]
    except (OSError, ValueError, KeyError):
        return []


def daemon_pid(lab: str) -> int | None:
    """The pid of lab's daemon, only if that process really is roamnet's daemon for that lab."""
    try:
        pid = int((state_dir(lab) / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"roamnet.lab.daemon" in cmdline and lab.encode() in cmdline else None


def kill_pidfiles(workdir: Path) -> list[int]:
    """SIGKILL each process recorded in a `*.pid` file of `workdir` whose command line names that
    directory (so a recycled pid is never hit). Returns the pids ended."""
    ended = []
    for f in sorted(workdir.glob("*.pid")) if workdir.is_dir() else ():
        try:
            pid = int(f.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(workdir).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
    return ended


def cleanup(lab: str) -> list[str]:
    """Crash clean-up: remove what the journal says lab created, end its daemon, drop its state."""
    pid = daemon_pid(lab)
    if pid:
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
    for workdir in (FrrEvpn.workdir_name, FrrEvpnIrb.workdir_name, BorderBgp.workdir_name):  # FRR daemons the
        kill_recorded(state_dir(lab) / workdir)  # lab started (pids verified, never by name)
    ovn.kill_recorded(state_dir(lab) / ovn.Ovn.workdir_name)  # OVN/OVS daemons (pids verified, never by name)
    kill_pidfiles(state_dir(lab) / "qemu")  # its QEMU guests (lab/qemu.py)
    kill_pidfiles(state_dir(lab) / "agents")  # its agent processes, then its etcd members
    kill_pidfiles(state_dir(lab) / "etcd")
    removed = []
    for ns in reversed(journal_namespaces(lab)):
        if netns.exists(ns):
            netns.remove(ns)
            removed.append(ns)
    shutil.rmtree(state_dir(lab), ignore_errors=True)
    return removed
