"""Frames handed up by nftables' `log group N` rules, through nfnetlink_log (NFLOG), in one namespace.

The agent learns of VM announcements this way (issue 21): each VM port's chain, after port security
and the port's own rate limit, logs its RARPs and gratuitous ARPs to the NVE's group, so the agent
sees only frames that entered on a VM port, passed its filter and fit its budget, whatever a VM
sends. (A packet socket sees every frame of every device before any filter runs: one VM's flood of
valid announcements pinned the agent's CPU.)

The messages are netlink attributes, decoded by pyroute2's netlink machinery (`nfgen_msg`; pyroute2
has no NFLOG classes of its own, so the two message layouts of <linux/netfilter/nfnetlink_log.h> are
declared here). The bridge family reports the bridge as the in-device and the port the frame came
in on as the physical in-device.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, nla
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_ULOG, nfgen_msg

from roamnet.dataplane import netns

NETLINK_NETFILTER = 12
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
CFG_CMD_BIND = 1
COPY_PACKET = 2
COPY_RANGE = 128  # bytes of each frame handed up: an ARP/RARP body is 28
BIND_WAIT_S = 3.0  # a group still held by an agent that is just closing its socket: retry this long


class nflog_config(nfgen_msg):
    nla_map = (("NFULA_CFG_UNSPEC", "none"), ("NFULA_CFG_CMD", "cfg_cmd"), ("NFULA_CFG_MODE", "cfg_mode"),
               ("NFULA_CFG_NLBUFSIZ", "be32"), ("NFULA_CFG_TIMEOUT", "be32"), ("NFULA_CFG_QTHRESH", "be32"),
               ("NFULA_CFG_FLAGS", "be16"))

    class cfg_cmd(nla):
        fields = (("command", "B"),)

    class cfg_mode(nla):
        fields = (("copy_range", "!I"), ("copy_mode", "B"), ("_pad", "B"))


class nflog_packet(nfgen_msg):
    nla_map = (("NFULA_UNSPEC", "none"), ("NFULA_PACKET_HDR", "packet_hdr"), ("NFULA_MARK", "be32"),
               ("NFULA_TIMESTAMP", "hex"), ("NFULA_IFINDEX_INDEV", "be32"), ("NFULA_IFINDEX_OUTDEV", "be32"),
               ("NFULA_IFINDEX_PHYSINDEV", "be32"), ("NFULA_IFINDEX_PHYSOUTDEV", "be32"), ("NFULA_HWADDR", "hex"),
               ("NFULA_PAYLOAD", "cdata"), ("NFULA_PREFIX", "asciiz"), ("NFULA_UID", "be32"), ("NFULA_SEQ", "be32"),
               ("NFULA_SEQ_GLOBAL", "be32"), ("NFULA_GID", "be32"), ("NFULA_HWTYPE", "be16"),
               ("NFULA_HWHEADER", "cdata"), ("NFULA_HWLEN", "be16"))

    class packet_hdr(nla):
        fields = (("hw_protocol", "!H"), ("hook", "B"), ("_pad", "B"))


@dataclass(frozen=True)
class Logged:
    """One frame a log rule handed up."""

    ifindex: int  # the device it came in on (a bridge port, not the bridge)
    ethertype: int
    frame: bytes  # link-layer header (when the kernel gave one) + the network-layer bytes
    prefix: str = ""  # the log rule's prefix


def decode(data: bytes) -> list[Logged]:
    """Every logged frame in one netlink datagram. Pure."""
    out: list[Logged] = []
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            msg = nflog_packet(data[off:off + length])
            msg.decode()
            payload = msg.get_attr("NFULA_PAYLOAD")
            hdr = msg.get_attr("NFULA_PACKET_HDR")
            if payload is not None and hdr is not None:
                ifindex = msg.get_attr("NFULA_IFINDEX_PHYSINDEV") or msg.get_attr("NFULA_IFINDEX_INDEV") or 0
                frame = (msg.get_attr("NFULA_HWHEADER") or b"") + payload
                out.append(Logged(ifindex, hdr["hw_protocol"], frame, msg.get_attr("NFULA_PREFIX") or ""))
        off += (length + 3) & ~3
    return out


class NflogSocket:
    """Subscribed to log group `group` of namespace `ns`; `recv()` gives what the rules logged."""

    def __init__(self, ns: str, group: int):
        self.group = group
        self.sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            deadline = time.monotonic() + BIND_WAIT_S
            while True:
                try:
                    self._config([("NFULA_CFG_CMD", {"command": CFG_CMD_BIND})])
                    break
                except OSError as exc:  # EBUSY: the group's last holder has not closed yet
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._config([("NFULA_CFG_MODE", {"copy_range": COPY_RANGE, "copy_mode": COPY_PACKET})])
            self._config([("NFULA_CFG_QTHRESH", 1)])  # every frame at once: an announcement is urgent
            self._config([("NFULA_CFG_TIMEOUT", 0)])
        except BaseException:
            self.sock.close()
            raise

    def _config(self, attrs: list) -> None:
        m = nflog_config()
        m["nfgen_family"] = socket.AF_UNSPEC
        m["res_id"] = self.group
        m["attrs"] = attrs
        m["header"]["type"] = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        m["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        m.encode()
        self.sock.send(m.data)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # the ack (packets of the group may come first)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            length, mtype = struct.unpack_from("=IH", data, 0)
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, 16)[0]
                self.sock.settimeout(None)
                if code:
                    raise OSError(code, f"nflog group {self.group}: {errno.errorcode.get(code, code)}")
                return
        raise OSError(errno.ETIMEDOUT, f"nflog group {self.group}: no answer to a config request")

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> list[Logged]:
        try:
            return decode(self.sock.recv(262144))
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped some: the next ones still come
                return []
            raise

    def close(self) -> None:
        self.sock.close()
