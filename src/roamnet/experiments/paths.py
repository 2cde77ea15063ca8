"""Which border router (DCBR) a stream's packets cross, and when that changes after a move.

Observation (I/O): one packet socket per border tenant namespace, on its handoff interface to the WAN
(`wan`), filtered in the kernel to IPv4 UDP/TCP. A frame the border sends to the WAN left the data
center ("out"); one it receives entered ("in"). Each frame whose addresses belong to a watched
stream is recorded as (monotonic time, border, direction). Bounded: the reader thread stops when
told, or after its time limit.

Analysis (pure, `summarize_paths`): per stream and per move, the border the packets entered and left
through in the window before the move and after it, and the inbound switch time: from the move (the
VM stopped) to the first packet entering through the border of the data center the VM moved to.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from roamnet.dataplane import netns
from roamnet.dataplane.announce import attach_filter

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
IN, OUT = "in", "out"
# classic BPF: accept IPv4 (ethertype 0x0800) frames carrying UDP (17) or TCP (6), first 64 bytes
PATH_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]
    (0x15, 0, 4, ETH_P_IP),  # jeq #IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23] (IP protocol)
    (0x15, 1, 0, 17),  # jeq #UDP -> accept
    (0x15, 0, 1, 6),  # jeq #TCP -> accept, else drop
    (0x06, 0, 0, 64),  # ret #64
    (0x06, 0, 0, 0),  # ret #0
)


@dataclass(frozen=True)
class Watched:
    """A stream whose packets cross the WAN edge: the VM's address, the client's, the receiver's port,
    and which end sends (streams between the same two hosts differ by port)."""

    stream: str
    vm_ip: str
    client_ip: str
    port: int
    vm_sends: bool

    def keys(self) -> dict[tuple[str, str, str, int], tuple[str, str]]:
        src, dst = (self.vm_ip, self.client_ip) if self.vm_sends else (self.client_ip, self.vm_ip)
        forward = (self.stream, OUT if self.vm_sends else IN)  # data, to the receiver's port
        reverse = (self.stream, IN if self.vm_sends else OUT)  # e.g. TCP's acks, from that port
        return {(src, dst, "dport", self.port): forward, (dst, src, "sport", self.port): reverse}


Table = dict[tuple[str, str, str, int], tuple[str, str]]


def classify(frame: bytes, watched: Table) -> tuple[str, str] | None:
    """(stream, direction) of an Ethernet/IPv4 UDP or TCP frame, direction "in" (towards the VM) or
    "out"; None if it belongs to no watched stream."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if len(frame) < 14 + ihl + 4:
        return None
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    sport, dport = struct.unpack("!HH", frame[14 + ihl:18 + ihl])
    return watched.get((src, dst, "dport", dport)) or watched.get((src, dst, "sport", sport))


def watch_table(streams: list[Watched]) -> Table:
    table: Table = {}
    for w in streams:
        table.update(w.keys())
    return table


class PathObserver:
    """Records which border each watched stream's packets cross. `borders`: (border, namespace) of
    every border tenant namespace."""

    def __init__(self, borders: list[tuple[str, str]], streams: list[Watched], ifname: str = "wan",
                 max_seconds: float = 900.0):
        self.borders, self.ifname, self.max_seconds = borders, ifname, max_seconds
        self.table = watch_table(streams)
        self.records: list[tuple[float, str, str, str]] = []  # (t_mono, stream, border, direction)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socks: dict[socket.socket, str] = {}

    def start(self) -> None:

        for border, ns in self.borders:
            # every frame (a socket bound to one ethertype never sees the frames a device sends),
            # filtered to IPv4 UDP/TCP in the kernel
            s = netns.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            attach_filter(s, PATH_FILTER)
            s.bind((self.ifname, ETH_P_ALL))
            s.setblocking(False)
            self._socks[s] = border
        self._thread = threading.Thread(target=self._run, name="paths", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                ready, _, _ = select.select(list(self._socks), [], [], 0.1)
                now = time.monotonic()
                for s in ready:
                    for _ in range(256):  # drain, bounded
                        try:
                            frame, addr = s.recvfrom(64)
                        except BlockingIOError:
                            break
                        hit = classify(frame, self.table)
                        if hit is not None:
                            direction = OUT if addr[2] == socket.PACKET_OUTGOING else IN
                            if direction == hit[1]:  # a frame is seen once, in the direction it goes
                                self.records.append((now, hit[0], self._socks[s], direction))
        finally:
            for s in self._socks:
                s.close()

    def stop(self) -> list[tuple[float, str, str, str]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.records


# ---- pure analysis --------------------------------------------------------------------------------

@dataclass
class PathChange:
    stream: str
    vm: str
    move: int  # index in the migration list
    in_before: str | None
    out_before: str | None
    in_after: str | None
    out_after: str | None
    expected: str | None  # the border of the data center the VM moved to
    inbound_switch_ms: float | None  # move -> first packet in through `expected`
    outbound_switch_ms: float | None  # move -> first packet out through `expected`
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "vm": self.vm, "move": self.move,
                "in_before": self.in_before, "out_before": self.out_before,
                "in_after": self.in_after, "out_after": self.out_after, "expected": self.expected,
                "inbound_switch_ms": self.inbound_switch_ms, "outbound_switch_ms": self.outbound_switch_ms}


def _main_border(records: list[tuple[float, str, str]], direction: str) -> str | None:
    counts = Counter(b for _, b, d in records if d == direction)
    return counts.most_common(1)[0][0] if counts else None


def summarize_paths(records: list[tuple[float, str, str, str]], stream_vm: dict[str, str],
                    migrations: list[dict[str, Any]], border_of_dc: dict[str, str]) -> list[PathChange]:
    """Per watched stream and per move of its VM: the border packets crossed in each direction in the
    window before the move (since the previous move) and after it (until the next move); the time
    from the move to the first packet through the new data center's border. Pure."""
    out: list[PathChange] = []
    moves = [(i, m) for i, m in enumerate(migrations) if m.get("at_mono") is not None and "to" in m]
    for stream, vm in sorted(stream_vm.items()):
        recs = sorted((t, b, d) for t, s, b, d in records if s == stream)
        mine = [(i, m) for i, m in moves if m.get("vm") == vm]
        all_times = [float(m["at_mono"]) for _, m in moves]
        for k, (i, m) in enumerate(mine):
            at = float(m["at_mono"])
            prev = max([t for t in all_times if t < at], default=float("-inf"))
            nxt = min([t for t in all_times if t > at], default=float("inf"))
            before = [r for r in recs if prev <= r[0] < at]
            after = [r for r in recs if at <= r[0] < nxt]
            expected = border_of_dc.get(m.get("dc_to", ""))

            def first_through(direction: str) -> float | None:
                t = next((r[0] for r in after if r[1] == expected and r[2] == direction), None)
                return None if t is None else round((t - at) * 1000, 1)

            settled = after[len(after) // 2:]  # the second half: after the switch
            out.append(PathChange(stream, vm, i, _main_border(before, IN), _main_border(before, OUT),
                                  _main_border(settled, IN), _main_border(settled, OUT), expected,
                                  first_through(IN), first_through(OUT)))
    return out
