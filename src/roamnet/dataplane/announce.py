"""VM announcements: QEMU's RARP self-announce after a migration, and gratuitous ARP.

An agent sees them with one `ETH_P_ALL` packet socket per namespace and a classic BPF filter that
passes only ARP and RARP: a socket bound to the RARP ethertype alone never sees frames that arrive
on a bridge port (the bridge takes them first). `rarp_frame` is what QEMU sends (the lab's
hypervisor sends it too).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from pyroute2.protocols import ETH_P_ARP, ETH_P_RARP

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; not in Python's socket module

# classic BPF: accept a frame (up to 256 KiB) iff its ethertype is RARP or ARP
ANNOUNCEMENT_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]
    (0x15, 2, 0, ETH_P_RARP),  # jeq #RARP -> accept
    (0x15, 1, 0, ETH_P_ARP),  # jeq #ARP -> accept
    (0x06, 0, 0, 0),  # ret #0
    (0x06, 0, 0, 0x40000),  # ret #262144
)


def attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """SO_ATTACH_FILTER: run a classic BPF program on the socket's frames in the kernel."""
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def parse_announcement(frame: bytes) -> str | None:
    """Sender MAC of a RARP request (QEMU's self-announce) or a gratuitous ARP; None otherwise."""
    if len(frame) < 42:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    op = struct.unpack("!H", frame[20:22])[0]
    sha = frame[22:28]
    if ethertype == ETH_P_RARP and op == 3:
        pass
    elif ethertype == ETH_P_ARP and op in (1, 2) and frame[28:32] == frame[38:42]:
        pass
    else:
        return None
    return ":".join(f"{b:02x}" for b in sha)


def rarp_frame(mac: str) -> bytes:
    """A RARP request as QEMU sends it after a migration (sha = tha = the NIC's MAC, IPs zero)."""
    m = bytes.fromhex(mac.replace(":", ""))
    return (b"\xff" * 6 + m + struct.pack("!H", ETH_P_RARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + m + b"\0" * 4 + m + b"\0" * 4 + b"\0" * 18)
