"""VM announcements: QEMU's RARP self-announce after a migration, and gratuitous ARP.

An agent sees only those that a VM port's filter passed and logged to the NVE's nflog group
(`nflog.py`, rules in `nve/filters.py`): frames that came in on a VM port, passed its port security and
fit its budget. `parse_announcement` reads one (link-layer header + body); `rarp_frame` is what QEMU
sends (the lab's hypervisor sends it too). `attach_filter` puts a classic BPF program on a packet
socket (the experiments' path watcher uses it).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from pyroute2.protocols import ETH_P_ARP, ETH_P_RARP

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; not in Python's socket module


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


def source_mac(frame: bytes) -> str | None:
    """The Ethernet source of a frame (None: too short to have a header)."""
    return ":".join(f"{b:02x}" for b in frame[6:12]) if len(frame) >= 14 else None


def rarp_frame(mac: str) -> bytes:
    """A RARP request as QEMU sends it after a migration (sha = tha = the NIC's MAC, IPs zero)."""
    m = bytes.fromhex(mac.replace(":", ""))
    return (b"\xff" * 6 + m + struct.pack("!H", ETH_P_RARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + m + b"\0" * 4 + m + b"\0" * 4 + b"\0" * 18)


def garp_frame(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request (spa = tpa = `ip`, sha = `mac`, broadcast): what a guest with virtio's
    guest-announce feature sends for each of its addresses after a migration."""
    m, a = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip)
    return (b"\xff" * 6 + m + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + a + b"\0" * 6 + a + b"\0" * 18)
