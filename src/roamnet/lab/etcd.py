"""A private etcd member for a lab (or a test): Debian's `etcd-server`, reachable by root only.

It listens on unix sockets only, in its own 0700 directory: clients on `<dir>/client:1`, peers on
`<dir>/peer:1` (etcd names a unix socket "host:port" and creates it in its working directory). No TCP
port is opened, so no other user of the machine can read or write the mapping. Its data lives in
`<dir>/data`; `stop()` ends it by its own recorded pid and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from roamnet.mapping.store.etcd import EtcdStore, StoreError

ETCD = "etcd"
READY_S = 15.0
MAX_TXN_OPS = 4096  # what a lab's intent is loaded with in one transaction (etcd's default: 128)


class EtcdError(RuntimeError):
    pass


class EtcdServer:
    """One etcd member in `workdir` (created 0700, must not exist or be empty)."""

    def __init__(self, workdir: Path | str, name: str = "roamnet", binary: str = ETCD):
        self.workdir, self.name, self.binary = Path(workdir), name, binary
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "client:1"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> EtcdStore:
        """Start the member and wait (bounded) until it answers; returns a store on it."""
        path = shutil.which(self.binary)
        if path is None:
            raise EtcdError(f"no {self.binary} on PATH (Debian: apt-get install etcd-server; `make install` does)")
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        argv = [path, "--name", self.name, "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", "unix://client:1", "--advertise-client-urls", "unix://client:1",
                "--listen-peer-urls", "unix://peer:1", "--initial-advertise-peer-urls", "unix://peer:1",
                "--initial-cluster", f"{self.name}=unix://peer:1", "--max-txn-ops", str(MAX_TXN_OPS),
                "--log-level", "warn", "--logger", "zap"]
        with open(self.workdir / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        (self.workdir / "etcd.pid").write_text(str(self.proc.pid))
        store = EtcdStore(self.url, max_txn_ops=MAX_TXN_OPS)
        deadline = time.monotonic() + READY_S
        while True:
            if self.proc.poll() is not None:
                tail = (self.workdir / "etcd.log").read_text(errors="replace")[-800:]
                self.stop()
                raise EtcdError(f"etcd exited ({self.proc.returncode}): {tail}")
            try:
                if self.socket.exists():
                    store.revision  # noqa: B018 - answers: ready
                    return store
            except StoreError:
                pass
            if time.monotonic() > deadline:
                store.close()
                self.stop()
                raise EtcdError(f"etcd in {self.workdir} did not answer within {READY_S:.0f} s")
            time.sleep(0.05)

    def stop(self, remove: bool = True) -> None:
        """End the member (its own pid: SIGTERM, then SIGKILL after 5 s); remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)
