"""Real traffic endpoint processes over loopback (no root needed)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import time

import pytest

from roamnet.experiments.report import summarize
from roamnet.experiments.traffic import recv_argv, send_argv

LEAD = 0.8  # seconds between spawning and the start time T


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """Read one line from proc.stdout within `timeout` seconds (fails the test otherwise)."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail(f"no line within {timeout}s (got {buf!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                pytest.fail(f"EOF before a full line (got {buf!r})")
            buf += chunk
    return buf


def spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        pytest.fail("endpoint did not exit in time")
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def run_stream(proto: str, rate: float, duration: float) -> tuple[dict, dict, float]:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    port = free_port(kind)
    t = time.monotonic() + LEAD
    recv = spawn(recv_argv(proto, "127.0.0.1", port, t, duration, linger=0.5))
    procs = [recv]
    try:
        ready = read_line(recv, timeout=LEAD)
        assert time.monotonic() < t, "ready came after the start time"
        assert json.loads(ready) == {"event": "ready"}
        send = spawn(send_argv(proto, "127.0.0.1", port, rate, t, duration))
        procs.append(send)
        s_out = finish(send, timeout=duration + 15)
        r_out = finish(recv, timeout=duration + 15)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
    return s_out, r_out, t


def test_argv_helpers() -> None:
    a = recv_argv("udp", "198.19.1.11", 5000, 123.456789012, 2)
    assert a[1:4] == ["-m", "roamnet.experiments.traffic", "recv"]
    assert a[a.index("--start-at") + 1] == "123.456789012"
    b = send_argv("tcp", "198.19.1.12", 5000, 1000, 1.5, 2, size=128)
    assert b[3] == "send" and b[b.index("--size") + 1] == "128"


def test_udp_1khz() -> None:
    s_out, r_out, t = run_stream("udp", 1000, 1.0)
    assert s_out["role"] == "send" and s_out["proto"] == "udp" and s_out["error"] is None
    assert 950 <= s_out["sent"] <= 1000
    assert s_out["first"] >= t and s_out["last"] <= t + 1.0
    assert r_out["role"] == "recv" and r_out["survived"] is None
    r = summarize("u", "udp", "a", "b", 1000, s_out, r_out)
    assert r.received == s_out["sent"] and r.lost == 0 and r.survived is True
    assert all(rt >= t for _, rt in r.records)  # nothing arrives before T: ready preceded sending
    carried_send_times_agree(s_out, r_out)
    assert r.sent_at == r_out["sent_at"]


def carried_send_times_agree(s_out: dict, r_out: dict) -> None:
    """Each record's carried send time: one per record, the sender's own first and last, in seq order,
    never after the record's arrival."""
    sent_at = dict(zip((q for q, _ in r_out["records"]), r_out["sent_at"]))
    assert len(r_out["sent_at"]) == len(r_out["records"])
    assert sent_at[0] == s_out["first"] and sent_at[s_out["sent"] - 1] == s_out["last"]
    times = [sent_at[q] for q in sorted(sent_at)]
    assert times == sorted(times)
    assert all(u <= rt for (_, rt), u in zip(r_out["records"], r_out["sent_at"]))


def test_tcp_200() -> None:
    s_out, r_out, _ = run_stream("tcp", 200, 1.0)
    assert s_out["survived"] is True and s_out["error"] is None, s_out
    assert r_out["survived"] is True and r_out["error"] is None, r_out
    seqs = [s for s, _ in r_out["records"]]
    assert seqs == list(range(s_out["sent"])) and 190 <= s_out["sent"] <= 200
    r = summarize("t", "tcp", "a", "b", 200, s_out, r_out)
    assert r.lost == 0 and r.survived is True
    carried_send_times_agree(s_out, r_out)


def test_udp_sender_without_listener() -> None:
    port = free_port(socket.SOCK_DGRAM)
    t = time.monotonic() + 1.0  # room for the interpreter to start on a loaded machine
    s_out = finish(spawn(send_argv("udp", "127.0.0.1", port, 500, t, 0.5)), timeout=10)
    assert s_out["role"] == "send" and s_out["sent"] + s_out["send_errors"] > 200
    assert s_out["error"] is None


def test_sigterm_reports() -> None:
    port = free_port(socket.SOCK_DGRAM)
    t = time.monotonic() + 0.2
    recv = spawn(recv_argv("udp", "127.0.0.1", port, t, 30))
    read_line(recv, timeout=5)
    recv.terminate()
    r_out = finish(recv, timeout=5)
    assert r_out["records"] == [] and r_out["error"] == "terminated"


class EchoServer:
    """A TCP echo on loopback in a thread; `misbehave(conn, data)` may answer differently (returns False
    to end the connection)."""

    def __init__(self, misbehave=None):
        import threading

        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.misbehave = misbehave
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.srv.settimeout(10)
        conn, _ = self.srv.accept()
        conn.settimeout(10)
        with conn, contextlib.suppress(ConnectionError):  # the client's own reset, after it found the fault
            while data := conn.recv(4096):
                if self.misbehave is None:
                    conn.sendall(data)
                elif not self.misbehave(conn, data):
                    return

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.srv.close()


def run_echo(server: EchoServer, rate: float, duration: float) -> dict:
    from roamnet.experiments.traffic import echo_argv

    t = time.monotonic() + LEAD
    try:
        return finish(spawn(echo_argv("127.0.0.1", server.port, rate, t, duration, linger=0.5)), timeout=duration + 15)
    finally:
        server.close()


def test_tcp_echo_client_survives_an_echo() -> None:
    out = run_echo(EchoServer(), 200, 1.0)
    assert out["role"] == "echo" and out["survived"] is True and out["error"] is None, out
    assert 190 <= out["sent"] <= 200 and [s for s, _ in out["records"]] == list(range(out["sent"]))
    r = summarize("e", "tcp", "a", "b", 200, out, out)  # the one line is both ends of the stream
    assert r.lost == 0 and r.survived is True and r.received == out["sent"]
    carried_send_times_agree(out, out)  # an echoed record carries its first send time


def test_tcp_echo_client_detects_a_reset() -> None:
    import struct

    def reset_after_100(conn: socket.socket, data: bytes) -> bool:
        conn.sendall(data)
        reset_after_100.n = getattr(reset_after_100, "n", 0) + len(data)
        if reset_after_100.n >= 100 * 16:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST
            return False
        return True

    out = run_echo(EchoServer(reset_after_100), 200, 1.0)
    assert out["survived"] is False and "ECONNRESET" in out["error"], out
    assert len(out["records"]) == 100 and out["sent"] < 190  # it stopped at the reset
    assert summarize("e", "tcp", "a", "b", 200, out, out).survived is False


def test_tcp_echo_client_detects_a_lost_record() -> None:
    def skip_record_3(conn: socket.socket, data: bytes) -> bool:
        skip_record_3.buf = getattr(skip_record_3, "buf", b"") + data
        while len(skip_record_3.buf) >= 16:
            rec, skip_record_3.buf = skip_record_3.buf[:16], skip_record_3.buf[16:]
            skip_record_3.k = getattr(skip_record_3, "k", -1) + 1
            if skip_record_3.k != 3:
                conn.sendall(rec)
        return True

    out = run_echo(EchoServer(skip_record_3), 200, 0.5)
    assert out["survived"] is False and "record 4" in out["error"] and "record 3 was due" in out["error"], out
    assert [s for s, _ in out["records"]] == [0, 1, 2]
