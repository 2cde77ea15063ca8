"""`roamnet agent` processes a lab runs, one per NVE, each ended by its own recorded pid (`terminate`, also for
the lab's QEMU guests)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a child by its own pid: SIGTERM, SIGKILL after `grace` s; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class AgentProcess:
    """One `roamnet agent --nve NAME --store URL --netns NS [--metrics-file PATH]` process; its output goes
    to `log`, its Prometheus metrics to `metrics` (the textfile format)."""

    def __init__(self, nve: str, store_url: str, ns: str, log: Path, metrics: Path | None = None):
        self.nve, self.store_url, self.ns, self.log, self.metrics = nve, store_url, ns, log, metrics
        self.proc: subprocess.Popen | None = None

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "roamnet.cli", "agent", "--nve", self.nve, "--store", self.store_url,
                "--netns", self.ns] + (["--metrics-file", str(self.metrics)] if self.metrics else [])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.log.with_suffix(".pid").write_text(str(self.proc.pid))  # for a crash clean-up (lab/state.py)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (the agent stops its threads and leaves the data plane), SIGKILL after 5 s."""
        if self.running():
            terminate(self.proc)

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=5)
