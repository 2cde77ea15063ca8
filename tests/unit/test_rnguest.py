"""The guest's traffic program (guest/rnguest.c), compiled with the host's gcc and run on loopback: its TCP
echo echoes, and says how each connection ended (closed, or broken and why). No root, no QEMU."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from test_traffic import LEAD, finish, free_port, spawn

from roamnet.experiments.traffic import echo_argv

SOURCE = Path(__file__).resolve().parents[2] / "guest" / "rnguest.c"


@pytest.fixture(scope="module")
def rnguest(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (make install installs it to build the guest)")
    exe = tmp_path_factory.mktemp("rnguest") / "rnguest"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE)], check=True, timeout=120)
    return exe


@pytest.fixture
def tcp_echo(rnguest: Path, tmp_path: Path):
    """rnguest tcp-echo on a free port, its log in tmp_path; (port, log path)."""
    port, log = free_port(socket.SOCK_STREAM), tmp_path / "tcp.log"
    proc = subprocess.Popen([str(rnguest), "tcp-echo", str(port), str(log)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:  # listening?
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.02)
        yield port, log
    finally:
        proc.kill()  # its own pid; its per-connection children end with their connections
        proc.wait(timeout=5)


def log_lines(log: Path, n: int) -> list[list[str]]:
    """The log's lines once there are `n` (bounded wait), split into words."""
    deadline = time.monotonic() + 10
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return [ln.split() for ln in lines]
        time.sleep(0.02)


def test_usage_is_refused(rnguest: Path) -> None:
    out = subprocess.run([str(rnguest), "tcp-echo"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "usage: rnguest" in out.stderr


def test_tcp_echo_echoes_a_stream_and_logs_its_clean_close(tcp_echo) -> None:
    port, log = tcp_echo
    log_lines(log, 1)  # the readiness probe's connection (0 bytes)
    t = time.monotonic() + LEAD
    out = finish(spawn(echo_argv("127.0.0.1", port, 200, t, 0.5, linger=0.5)), timeout=15)
    assert out["survived"] is True and out["sent"] > 0 and len(out["records"]) == out["sent"], out
    probe, stream = log_lines(log, 2)
    assert probe[2:] == ["closed", "0"]
    assert stream[0] == "tcp" and stream[1].startswith("127.0.0.1:") and stream[2:] == ["closed", str(16 * out["sent"])]


def test_tcp_echo_detects_a_reset_connection(tcp_echo) -> None:
    port, log = tcp_echo
    log_lines(log, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"x" * 48)
        got = b""
        while len(got) < 48:
            got += s.recv(64)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    broken = log_lines(log, 2)[1]
    assert broken[2:4] == ["broken", "48"] and "reset" in " ".join(broken[4:]).lower(), broken
