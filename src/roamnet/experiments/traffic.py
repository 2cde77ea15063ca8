"""Traffic endpoints run inside VM namespaces: ``python -m roamnet.experiments.traffic recv|send ...``.

Both ends agree on an absolute start time ``T`` (a ``time.monotonic()`` value;
CLOCK_MONOTONIC is the same in every network namespace of a machine) and a duration
``D``.  The sender paces records at a fixed rate from ``T`` to ``T + D``; the receiver
records ``(seq, recv_time)`` for every record it gets, and the send time the record carries (the
sender's ``time.monotonic()`` when it sent it: the same clock).  Protocol with the parent:

* the receiver prints ``{"event": "ready"}`` once its socket is bound / listening;
* both ends print exactly one final JSON line, also on SIGTERM / SIGINT (exit code 0).

Wire format (UDP datagram head and TCP record alike): ``!Qd`` = uint64 seq, double send
time.  UDP datagrams are zero-padded to ``--size``; TCP records are always 16 bytes.  An echo (a
guest's ``rnguest udp-echo``/``tcp-echo``) returns them unchanged, so an echoed record carries its
first send time.

Receiver's final line: ``"records": [[seq, recv_time], ...]`` in arrival order and, beside it,
``"sent_at": [send_time, ...]``, the send time each of those records carried (same order and length;
6 decimals, as the receive times). Readers that know only ``records`` keep working; a line without
``sent_at`` (an older receiver) is still read by ``roamnet.experiments.loss``, which then estimates.

``echo`` is a TCP sender whose peer is an echo (a QEMU guest's ``rnguest tcp-echo``): one connection
carries the paced records out and their echoes back, and its one final line (role ``echo``) has the
sender's fields and the receiver's records, so that it is both lines of a stream's summary.  It holds
the connection to survive if every record came back in order and unchanged and the echo closed cleanly
after the sender's half-close; a reset, an error or records missing at the close break it.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["echo_argv", "recv_argv", "send_argv", "main"]

HDR = struct.Struct("!Qd")  # seq, send time
MAX_BURST = 4  # at most this many late packets are sent back to back before re-basing
CONNECT_RETRY_S = 2.0  # TCP sender: keep retrying a refused connect this long
CLOSE_WAIT_S = 5.0  # TCP sender: wait this long for the receiver to close; send timeout
TCP_GRACE_S = 5.0  # TCP receiver: give up at T + D + linger + this
POLL_S = 0.1  # socket timeout used to re-check deadlines

mono = time.monotonic


# --------------------------------------------------------------------------- argv helpers


def _f(x: float) -> str:
    return repr(float(x))


def recv_argv(
    proto: str, bind: str, port: int, start_at: float, duration: float, linger: float = 2.0
) -> list[str]:
    """Full argv that starts a receiver (``sys.executable -m roamnet.experiments.traffic recv ...``)."""
    return [
        sys.executable, "-m", "roamnet.experiments.traffic", "recv", "--proto", proto, "--bind", bind,
        "--port", str(int(port)), "--start-at", _f(start_at), "--duration", _f(duration),
        "--linger", _f(linger),
    ]  # fmt: skip


def send_argv(
    proto: str, to: str, port: int, rate: float, start_at: float, duration: float, size: int = 64
) -> list[str]:
    """Full argv that starts a sender (``sys.executable -m roamnet.experiments.traffic send ...``)."""
    return [
        sys.executable, "-m", "roamnet.experiments.traffic", "send", "--proto", proto, "--to", to,
        "--port", str(int(port)), "--rate", _f(rate), "--start-at", _f(start_at),
        "--duration", _f(duration), "--size", str(int(size)),
    ]  # fmt: skip


def echo_argv(to: str, port: int, rate: float, start_at: float, duration: float, linger: float = 2.0) -> list[str]:
    """Full argv that starts a TCP echo client (``sys.executable -m roamnet.experiments.traffic echo ...``)."""
    return [
        sys.executable, "-m", "roamnet.experiments.traffic", "echo", "--proto", "tcp", "--to", to,
        "--port", str(int(port)), "--rate", _f(rate), "--start-at", _f(start_at),
        "--duration", _f(duration), "--linger", _f(linger),
    ]  # fmt: skip


# --------------------------------------------------------------------------- state / output


@dataclass
class RecvState:
    """What a receiver has seen so far."""

    proto: str
    seqs: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # the send time each record carried
    survived: bool | None = None
    error: str | None = None

    def final_line(self) -> str:
        return (
            f'{{"role":"recv","proto":{json.dumps(self.proto)},{_records_json(self.seqs, self.times, self.sent_at)},'
            f'"survived":{json.dumps(self.survived)},"error":{json.dumps(self.error)}}}'
        )


def _records_json(seqs: list[int], times: list[float], sent_at: list[float]) -> str:
    """``"records":[[seq,recv],...],"sent_at":[...]`` (the lists are parallel)."""
    recs = ",".join(f"[{s},{t:.6f}]" for s, t in zip(seqs, times))
    return f'"records":[{recs}],"sent_at":[{",".join(f"{t:.6f}" for t in sent_at)}]'


@dataclass
class SendState:
    """What a sender has done so far."""

    proto: str
    sent: int = 0
    send_errors: int = 0
    first: float | None = None
    last: float | None = None
    survived: bool | None = None
    error: str | None = None

    def final_line(self) -> str:
        r = lambda t: None if t is None else round(t, 6)  # noqa: E731
        d: dict[str, Any] = {
            "role": "send", "proto": self.proto, "sent": self.sent,
            "send_errors": self.send_errors, "first": r(self.first), "last": r(self.last),
            "survived": self.survived, "error": self.error,
        }  # fmt: skip
        return json.dumps(d, separators=(",", ":"))


@dataclass
class EchoState(SendState):
    """A TCP echo client: what it sent, and the records that came back (as a receiver's)."""

    seqs: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def final_line(self) -> str:
        recs = _records_json(self.seqs, self.times, self.sent_at)
        return SendState.final_line(self).replace('"role":"send"', '"role":"echo"', 1)[:-1] + f",{recs}}}"


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(e: BaseException) -> str:
    code = getattr(e, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    return f"{type(e).__name__}{'(' + name + ')' if name else ''}: {e}"


# --------------------------------------------------------------------------- helpers


class _Stop(BaseException):
    """Raised from the SIGTERM/SIGINT handler to unwind to the final report."""


_finishing = False


def _on_signal(signum: int, frame: object) -> None:
    if not _finishing:
        raise _Stop()


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _low_timer_slack() -> None:
    """Best effort: 1 µs timer slack so short sleeps overshoot less (Linux prctl)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK
    except Exception:
        pass


def _sleep_until(t: float) -> None:
    """Sleep until monotonic time ``t``; spins only for the last few tens of µs.

    Waits above ~20 µs use ``time.sleep`` (which may overshoot by tens of µs); the
    absolute schedule of the callers absorbs that, so a 10 kHz sender does not spin.
    """
    while True:
        wait = t - mono()
        if wait <= 0:
            return
        if wait > 0.0015:
            time.sleep(wait - 0.001)
        elif wait > 0.00002:
            time.sleep(wait)


def _big_rcvbuf(sock: socket.socket, size: int = 8 << 20) -> None:
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue


def _ready() -> None:
    _emit(json.dumps({"event": "ready"}))


def _paced(start: float, end: float, rate: float, wait: Callable[[float], None] = _sleep_until) -> Iterator[float]:
    """Yield the current time once per packet slot, on an absolute schedule.

    Slot ``i`` is due at ``base + i / rate``; late slots go out at once, but when more
    than ``MAX_BURST`` slots behind, the schedule is re-based so that at most
    ``MAX_BURST`` go out back to back (the rest are skipped, not burst out).  ``wait(t)``
    returns at monotonic time ``t`` (the echo client reads its echoes meanwhile).
    """
    base, i, late = start, 0, MAX_BURST / rate
    while True:
        due = base + i / rate
        if due >= end:
            return
        now = mono()
        if now < due:
            wait(due)
            now = mono()
        elif now - due > late:
            base = now - late - i / rate
        if now >= end:
            return
        yield now
        i += 1


# --------------------------------------------------------------------------- receivers


def run_recv_udp(a: argparse.Namespace, st: RecvState) -> None:
    """Record (seq, recv time, the send time it carries) of every datagram until T + D + linger."""
    deadline = a.start_at + a.duration + a.linger
    with socket.socket(_family(a.bind), socket.SOCK_DGRAM) as sock:
        _big_rcvbuf(sock)
        sock.bind((a.bind, a.port))
        sock.settimeout(POLL_S)
        _ready()
        buf = bytearray(65536)
        unpack, add_s, add_t, add_u = HDR.unpack_from, st.seqs.append, st.times.append, st.sent_at.append
        while mono() < deadline:
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:
                continue  # e.g. a stray ICMP error; keep listening
            t = mono()
            if n >= HDR.size:
                seq, at = unpack(buf)
                add_s(seq)
                add_t(t)
                add_u(at)


def run_recv_tcp(a: argparse.Namespace, st: RecvState) -> None:
    """Accept one connection and record its records until EOF or T + D + linger + 5 s."""
    hard = a.start_at + a.duration + a.linger + TCP_GRACE_S
    st.survived = False
    with socket.socket(_family(a.bind), socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((a.bind, a.port))
        srv.listen(1)
        srv.settimeout(POLL_S)
        _ready()
        conn = None
        while conn is None:
            if mono() >= hard:
                st.error = "timeout: no connection"
                return
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
        with conn:
            conn.settimeout(POLL_S)
            pending = bytearray()
            eof = False
            while True:
                if mono() >= hard:
                    st.error = "timeout: peer did not close"
                    break
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError as e:
                    st.error = _err(e)
                    break
                if not data:
                    eof = True
                    break
                t = mono()
                pending += data
                k = len(pending) // HDR.size
                for off in range(0, k * HDR.size, HDR.size):
                    seq, at = HDR.unpack_from(pending, off)
                    st.seqs.append(seq)
                    st.times.append(t)
                    st.sent_at.append(at)
                del pending[: k * HDR.size]
        if eof and pending:
            st.error = f"truncated record ({len(pending)} trailing bytes)"
        elif eof and st.seqs != list(range(len(st.seqs))):
            st.error = "hole or reordering in sequence numbers"
        st.survived = eof and st.error is None


# --------------------------------------------------------------------------- senders


def run_send_udp(a: argparse.Namespace, st: SendState) -> None:
    """Send paced datagrams from T to T + D; count (and survive) send errors."""
    addr = (a.to, a.port)
    payload = bytearray(max(a.size, HDR.size))
    with socket.socket(_family(a.to), socket.SOCK_DGRAM) as sock:
        _sleep_until(a.start_at)
        pack, sendto = HDR.pack_into, sock.sendto
        for now in _paced(a.start_at, a.start_at + a.duration, a.rate):
            pack(payload, 0, st.sent, now)
            try:
                sendto(payload, addr)
            except OSError:
                st.send_errors += 1
                continue
            if st.first is None:
                st.first = now
            st.last = now
            st.sent += 1


def _connect(a: argparse.Namespace, st: SendState) -> socket.socket | None:
    """Connect, retrying refused/unreachable for up to ``CONNECT_RETRY_S``."""
    deadline = mono() + CONNECT_RETRY_S
    while True:
        s = socket.socket(_family(a.to), socket.SOCK_STREAM)
        s.settimeout(max(0.05, deadline - mono()))
        try:
            s.connect((a.to, a.port))
            return s
        except OSError as e:
            s.close()
            if mono() >= deadline:
                st.error = "connect failed: " + _err(e)
                return None
            time.sleep(0.05)


def run_send_tcp(a: argparse.Namespace, st: SendState) -> None:
    """One connection; paced 16-byte records; then half-close and wait for the peer."""
    st.survived = False
    s = _connect(a, st)
    if s is None:
        return
    with s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(CLOSE_WAIT_S)  # bounds a blocked sendall
        _sleep_until(a.start_at)
        try:
            for now in _paced(a.start_at, a.start_at + a.duration, a.rate):
                s.sendall(HDR.pack(st.sent, now))
                if st.first is None:
                    st.first = now
                st.last = now
                st.sent += 1
            s.shutdown(socket.SHUT_WR)
            until = mono() + CLOSE_WAIT_S
            while True:
                s.settimeout(max(0.01, until - mono()))
                if not s.recv(4096):
                    break  # clean close by the receiver
                if mono() >= until:
                    raise TimeoutError("peer did not close")
        except OSError as e:
            st.send_errors += 1
            st.error = _err(e)
            return
        st.survived = True


class _Echoes:
    """The echoed byte stream of an echo client: whole records, checked against what was sent."""

    def __init__(self, st: EchoState, sent_at: list[float]):
        self.st, self.sent_at, self.pending = st, sent_at, bytearray()

    def take(self, data: bytes, t: float) -> None:
        self.pending += data
        k = len(self.pending) // HDR.size
        for off in range(0, k * HDR.size, HDR.size):
            seq, at = HDR.unpack_from(self.pending, off)
            want = len(self.st.seqs)
            if seq != want or want >= len(self.sent_at) or at != self.sent_at[want]:
                raise OSError(f"the echo returned record {seq} (sent at {at:.6f}) where record {want} was due")
            self.st.seqs.append(seq)
            self.st.times.append(t)
            self.st.sent_at.append(at)
        del self.pending[: k * HDR.size]


def _read_until(s: socket.socket, echoes: _Echoes, t: float) -> bool:
    """Read echoes until monotonic time ``t``; False as soon as the echo closed (EOF)."""
    while True:
        left = t - mono()
        if left <= 0:
            return True
        ready, _, _ = select.select([s], [], [], left)
        if ready:
            data = s.recv(1 << 16)
            if not data:
                return False
            echoes.take(data, mono())


def run_echo_tcp(a: argparse.Namespace, st: EchoState) -> None:
    """One connection to a TCP echo: paced records out, their echoes read in between; then half-close
    and read the rest until the echo closes (bounded by CLOSE_WAIT_S + linger)."""
    st.survived = False
    s = _connect(a, st)
    if s is None:
        return
    sent_at: list[float] = []
    echoes = _Echoes(st, sent_at)
    open_ = True

    def wait(t: float) -> None:
        nonlocal open_
        if open_:
            open_ = _read_until(s, echoes, t)
        if not open_:
            raise OSError("the echo closed the connection before the sender did")

    with s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(CLOSE_WAIT_S)  # bounds a blocked sendall
        try:
            wait(a.start_at)
            for now in _paced(a.start_at, a.start_at + a.duration, a.rate, wait):
                s.sendall(HDR.pack(st.sent, now))
                sent_at.append(now)
                if st.first is None:
                    st.first = now
                st.last = now
                st.sent += 1
            s.shutdown(socket.SHUT_WR)
            if _read_until(s, echoes, mono() + CLOSE_WAIT_S + a.linger):
                raise TimeoutError(f"the echo did not close within {CLOSE_WAIT_S + a.linger:g} s of the half-close")
        except OSError as e:
            st.send_errors += 1
            st.error = _err(e)
            return
        if echoes.pending or len(st.seqs) != st.sent:
            st.error = f"the echo closed after {len(st.seqs)} of {st.sent} records (+{len(echoes.pending)} bytes)"
            return
        st.survived = True


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m roamnet.experiments.traffic", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv", help="receive and record a stream")
    r.add_argument("--bind", required=True)
    r.add_argument("--linger", type=float, default=2.0)
    s = sub.add_parser("send", help="send a paced stream")
    s.add_argument("--to", required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--size", type=int, default=64)
    e = sub.add_parser("echo", help="send a paced TCP stream to an echo and record what comes back")
    e.add_argument("--to", required=True)
    e.add_argument("--rate", type=float, required=True)
    e.add_argument("--linger", type=float, default=2.0)
    for q in (r, s, e):
        q.add_argument("--proto", choices=("tcp",) if q is e else ("udp", "tcp"), required=True)
        q.add_argument("--port", type=int, required=True)
        q.add_argument("--start-at", type=float, required=True)
        q.add_argument("--duration", type=float, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; always prints one final JSON line and returns 0 unless argv is bad."""
    global _finishing
    a = _parser().parse_args(argv)
    if a.cmd in ("send", "echo") and a.rate <= 0:
        raise SystemExit("--rate must be > 0")
    states = {"recv": RecvState, "send": SendState, "echo": EchoState}
    st: RecvState | SendState = states[a.cmd](a.proto)
    run = {
        ("recv", "udp"): run_recv_udp, ("recv", "tcp"): run_recv_tcp,
        ("send", "udp"): run_send_udp, ("send", "tcp"): run_send_tcp, ("echo", "tcp"): run_echo_tcp,
    }[(a.cmd, a.proto)]  # fmt: skip
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _low_timer_slack()
    try:
        run(a, st)  # type: ignore[arg-type]
    except BaseException as e:  # _Stop or a bug: report, never die without the final line
        _finishing = True
        st.error = st.error or ("terminated" if isinstance(e, _Stop) else _err(e))
        if a.proto == "tcp":
            st.survived = False
    finally:
        _finishing = True
        try:
            _emit(st.final_line())
        except BrokenPipeError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
