"""A private etcd cluster for a lab (or a test): Debian's `etcd-server`, reachable by root only.

One member by default, or three (`members=3`) for the high-availability tests. Every member listens
on unix sockets only, all in one 0700 directory (etcd names a unix socket "host:port" and creates it
in its working directory, which is that directory): member i serves clients on `<dir>/m<i>:2379`
and its peers on `<dir>/m<i>:2380`. No TCP port is opened, so no other user of the machine can read
or write the mapping. Member i keeps its data in `<dir>/m<i>.data`. Every member is ended by its own
recorded pid; `stop()` removes the directory. A member can be stopped and started again on its data
(`stop_member`, `start_member`), or killed (`kill_member`), as the reliability tests do.
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
PROGRESS_NOTIFY = "5s"  # etcd's default is 10 min: far above the watch's silence limit (WATCH_SILENT_S)
CLIENT_PORT, PEER_PORT = 2379, 2380  # only names of unix sockets here: no TCP port is opened


class EtcdError(RuntimeError):
    pass


class EtcdServer:
    """An etcd cluster of `members` members in `workdir` (created 0700)."""

    def __init__(self, workdir: Path | str, name: str = "roamnet", binary: str = ETCD, members: int = 1):
        if members < 1:
            raise ValueError("an etcd cluster has at least one member")
        self.workdir, self.name, self.binary, self.members = Path(workdir), name, binary, members
        self.procs: list[subprocess.Popen | None] = [None] * members
        self._started = [False] * members  # started once: a restart joins the existing cluster

    def member_name(self, i: int) -> str:
        return f"m{i}"

    def client_socket(self, i: int) -> Path:
        return self.workdir / f"m{i}:{CLIENT_PORT}"

    @property
    def socket(self) -> Path:
        """The first member's client socket."""
        return self.client_socket(0)

    def member_url(self, i: int) -> str:
        return f"unix://{self.client_socket(i)}"

    @property
    def url(self) -> str:
        """Every member's client URL, comma-separated (what EtcdStore takes: it fails over between them)."""
        return ",".join(self.member_url(i) for i in range(self.members))

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.procs[0]

    def _argv(self, path: str, i: int) -> list[str]:
        m = self.member_name(i)
        cluster = ",".join(f"{self.member_name(j)}=unix://{self.member_name(j)}:{PEER_PORT}"
                           for j in range(self.members))
        return [path, "--name", m, "--data-dir", str(self.workdir / f"{m}.data"),
                "--listen-client-urls", f"unix://{m}:{CLIENT_PORT}", "--advertise-client-urls",
                f"unix://{m}:{CLIENT_PORT}", "--listen-peer-urls", f"unix://{m}:{PEER_PORT}",
                "--initial-advertise-peer-urls", f"unix://{m}:{PEER_PORT}", "--initial-cluster", cluster,
                "--initial-cluster-state", "new", "--initial-cluster-token", self.name,
                "--max-txn-ops", str(MAX_TXN_OPS), "--log-level", "warn", "--logger", "zap",
                # a watch stream hears from etcd at least this often (EtcdStore reconnects a silent one)
                "--experimental-watch-progress-notify-interval", PROGRESS_NOTIFY]

    def start(self) -> EtcdStore:
        """Start every member and wait (bounded) until the cluster answers; returns a store on it."""
        path = shutil.which(self.binary)
        if path is None:
            raise EtcdError(f"no {self.binary} on PATH (Debian: apt-get install etcd-server; `make install` does)")
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        for i in range(self.members):
            self._spawn(path, i)
        store = EtcdStore(self.url, max_txn_ops=MAX_TXN_OPS)
        try:
            self._wait_ready(store, range(self.members))
        except EtcdError:
            store.close()
            self.stop()
            raise
        return store

    def _spawn(self, path: str, i: int) -> None:
        for port in (CLIENT_PORT, PEER_PORT):  # a killed member leaves its sockets behind
            (self.workdir / f"{self.member_name(i)}:{port}").unlink(missing_ok=True)
        with open(self.workdir / f"{self.member_name(i)}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(self._argv(path, i), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.workdir / f"{self.member_name(i)}.pid").write_text(str(self.procs[i].pid))
        self._started[i] = True

    def _wait_ready(self, store: EtcdStore, members) -> None:
        deadline = time.monotonic() + READY_S
        waiting = list(members)
        while waiting:
            for i in list(waiting):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    tail = self.log_tail(i)
                    raise EtcdError(f"etcd member {self.member_name(i)} exited ({proc.returncode}): {tail}")
                try:
                    if self.client_socket(i).exists():
                        one = EtcdStore(self.member_url(i))
                        try:
                            one.revision  # noqa: B018 - answers (with a leader): ready
                        finally:
                            one.close()
                        waiting.remove(i)
                except StoreError:
                    pass
            if waiting and time.monotonic() > deadline:
                raise EtcdError(f"etcd in {self.workdir} did not answer within {READY_S:.0f} s "
                                f"(members {', '.join(self.member_name(i) for i in waiting)})")
            if waiting:
                time.sleep(0.05)

    def log_tail(self, i: int = 0, chars: int = 800) -> str:
        try:
            return (self.workdir / f"{self.member_name(i)}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ---- one member: the reliability tests' handles ------------------------------------------------
    def stop_member(self, i: int) -> None:
        """End member i (SIGTERM, then SIGKILL after 5 s); its data stays for `start_member`."""
        self._end(i, signal.SIGTERM)

    def kill_member(self, i: int) -> None:
        """kill -9 member i: a crash."""
        self._end(i, signal.SIGKILL)

    def start_member(self, i: int) -> None:
        """Start member i again on its data; wait (bounded) until it answers."""
        path = shutil.which(self.binary)
        if path is None:
            raise EtcdError(f"no {self.binary} on PATH")
        if self.running(i):
            raise EtcdError(f"etcd member {self.member_name(i)} is running")
        self._spawn(path, i)
        store = EtcdStore(self.member_url(i))
        try:
            self._wait_ready(store, [i])
        finally:
            store.close()

    def running(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def leader(self) -> int | None:
        """The index of the member that leads now (asked of the running members), or None."""
        for i in range(self.members):
            if not self.running(i):
                continue
            one = EtcdStore(self.member_url(i), timeout=2.0)
            try:
                st = one.status()
            except StoreError:
                continue
            finally:
                one.close()
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return i
        return None

    def _end(self, i: int, sig: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self, remove: bool = True) -> None:
        """End every member (its own pid: SIGTERM, then SIGKILL after 5 s); remove the directory."""
        for i in range(self.members):
            self._end(i, signal.SIGTERM)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)
