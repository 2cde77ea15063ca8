"""802.1Q tags on a kernel without the 8021q module and without VLAN-filtering bridges.

This kernel (see docs/architecture.md) has neither VLAN devices nor bridge VLAN filtering, but it has
tc's clsact hook, cls_bpf in direct-action mode, and the BPF helpers that pop, push and redirect. A
*VLAN port* is what a VLAN sub-interface would be: for VLAN `vid` of a tagged device T (a trunk, or a
VM's tap that carries the guest's own tags), a veth pair P <-> H where

  * P is the untagged side: a bridge port (or, in a guest, the interface with the IP address);
  * a filter on T's ingress takes frames tagged `vid`, pops the tag and redirects them into P's
    ingress (as if they had arrived on P);
  * a filter on H's ingress (what P sends arrives there) pushes tag `vid` and redirects the frame out
    of T.

The BPF programs are seven to fourteen instructions, assembled here and loaded with bpf(2); pyroute2
attaches them (it does not load programs itself). Everything is found again from the kernel: P
carries the alias `roamnet:vlan=<T>/<vid>`, and each filter's name says what it does and where it
sends frames, so a reader can tell a complete VLAN port from a stale one (T recreated, P replaced).
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.protocols import ETH_P_ALL

from roamnet import names

ALIAS = names.OWNER + ":vlan="
INGRESS = 0xFFFFFFF2  # clsact's ingress hook (parent ffff:fff2)
ETH_P_8021Q = 0x8100
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_F_INGRESS = 1
SYS_BPF = {"x86_64": 321, "aarch64": 280}
# helpers (include/uapi/linux/bpf.h)
SKB_VLAN_PUSH, SKB_VLAN_POP, REDIRECT = 18, 19, 23
# offsets in struct __sk_buff
SKB_VLAN_PRESENT, SKB_VLAN_TCI = 20, 24
TC_ACT_UNSPEC = -1  # not ours: the next filter (or the normal path) decides
PUSH_PRIO = 1  # the one filter on a hold device


class VlanError(OSError):
    pass


# ---- the programs (pure) -------------------------------------------------------------------------

def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


MOV_REG, MOV_IMM, LDX_W, JEQ_IMM, JNE_IMM, AND_IMM, CALL, EXIT = 0xBF, 0xB7, 0x61, 0x15, 0x55, 0x57, 0x85, 0x95


def _check_vid(vid: int) -> int:
    if not 1 <= vid <= 4094:
        raise ValueError(f"VLAN-ID {vid} outside 1..4094")
    return vid


def pop_program(vid: int, ifindex: int) -> list[bytes]:
    """Frames tagged `vid`: untag and hand to device `ifindex`'s ingress; others: not ours."""
    _check_vid(vid)
    return [
        _insn(MOV_REG, 6, 1),                      # r6 = skb
        _insn(LDX_W, 2, 1, SKB_VLAN_PRESENT),      # r2 = skb->vlan_present
        _insn(JEQ_IMM, 2, 0, 9, 0),                # untagged -> not ours
        _insn(LDX_W, 2, 1, SKB_VLAN_TCI),          # r2 = skb->vlan_tci
        _insn(AND_IMM, 2, 0, 0, 0x0FFF),           # the VLAN-ID
        _insn(JNE_IMM, 2, 0, 6, vid),              # another VLAN -> not ours
        _insn(MOV_REG, 1, 6),
        _insn(CALL, imm=SKB_VLAN_POP),
        _insn(MOV_IMM, 1, imm=ifindex),
        _insn(MOV_IMM, 2, imm=BPF_F_INGRESS),
        _insn(CALL, imm=REDIRECT),                 # r0 = TC_ACT_REDIRECT
        _insn(EXIT),
        _insn(MOV_IMM, 0, imm=TC_ACT_UNSPEC),
        _insn(EXIT),
    ]


def push_program(vid: int, ifindex: int) -> list[bytes]:
    """Every frame: tag it `vid` and send it out of device `ifindex`."""
    _check_vid(vid)
    return [
        _insn(MOV_REG, 6, 1),
        _insn(MOV_IMM, 2, imm=socket.htons(ETH_P_8021Q)),
        _insn(MOV_IMM, 3, imm=vid),
        _insn(CALL, imm=SKB_VLAN_PUSH),
        _insn(MOV_IMM, 1, imm=ifindex),
        _insn(MOV_IMM, 2, imm=0),
        _insn(CALL, imm=REDIRECT),
        _insn(EXIT),
    ]


def filter_name(action: str, vid: int, target: int) -> str:
    """A filter's name: what it does to which VLAN, and the device it sends frames to."""
    return f"{names.OWNER}:{action}:{vid}:{target}"


def parse_filter_name(name: str) -> tuple[str, int, int] | None:
    parts = name.split(":")
    if len(parts) != 4 or parts[0] != names.OWNER:
        return None
    try:
        return parts[1], int(parts[2]), int(parts[3])
    except ValueError:
        return None


# ---- loading -------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def load(program: list[bytes], name: str) -> int:
    """Load a SCHED_CLS program with bpf(2); returns its fd (the caller closes it once attached)."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise VlanError(0, f"bpf(2) syscall number unknown on {platform.machine()}")
    code = ctypes.create_string_buffer(b"".join(program))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_SCHED_CLS, len(program), ctypes.addressof(code),
                       ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0, 0, name.encode()[:15])
    buf = ctypes.create_string_buffer(attr + b"\0" * (128 - len(attr)), 128)
    fd = _libc.syscall(nr, BPF_PROG_LOAD, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise VlanError(err, f"loading BPF program {name}: {os.strerror(err)}: {log.value.decode(errors='replace')}")
    return fd


# ---- kernel state --------------------------------------------------------------------------------

def _clsact(ipr: IPRoute, idx: int) -> None:
    try:
        ipr.tc("add", "clsact", idx)
    except NetlinkError as exc:
        if exc.code != 17:  # EEXIST: already there
            raise


def ingress_filters(ipr: IPRoute, idx: int) -> dict[int, tuple[str, int, int]]:
    """prio -> (action, vid, target ifindex) of roamnet's filters on device `idx`'s ingress."""
    out = {}
    try:
        msgs = ipr.get_filters(index=idx, parent=INGRESS)
    except NetlinkError:
        return out
    for msg in msgs:
        name = msg.get(("TCA_OPTIONS", "TCA_BPF_NAME"))
        parsed = parse_filter_name(name) if name else None
        if parsed is not None:
            out[(msg["info"] >> 16) & 0xFFFF] = parsed
    return out


def _attach(ipr: IPRoute, idx: int, prio: int, program: list[bytes], name: str) -> None:
    fd = load(program, name.split(":")[1] + name.split(":")[2])
    try:
        _clsact(ipr, idx)
        ipr.tc("replace-filter", "bpf", idx, ":1", fd=fd, name=name, parent=INGRESS, prio=prio,
               protocol=ETH_P_ALL, classid=1, direct_action=True)
    finally:
        os.close(fd)


def _detach(ipr: IPRoute, idx: int, prio: int) -> None:
    try:
        ipr.tc("del-filter", "bpf", idx, ":1", parent=INGRESS, prio=prio, protocol=ETH_P_ALL)
    except NetlinkError as exc:
        if exc.code not in (2, 19, 22):  # gone already (with its device)
            raise


def port_name(tagged_idx: int, vid: int) -> str:
    """P's name: the tagged device's ifindex and the VLAN (a recreated device gets other names)."""
    return f"v{vid}i{tagged_idx}"


@dataclass(frozen=True)
class VlanPort:
    tagged: str  # T's name
    vid: int
    index: int  # P's ifindex
    master: int  # P's bridge (0: none)
    complete: bool  # both filters in place and pointing at the right devices


def read_ports(ipr: IPRoute, links: list | None = None) -> dict[tuple[str, int], VlanPort]:
    """(T name, vid) -> VLAN port, for every P of ours in this namespace."""
    links = links if links is not None else ipr.get_links()
    by_name = {link.get("ifname"): link for link in links}
    out = {}
    filters: dict[int, dict] = {}
    for link in links:
        alias = link.get("IFLA_IFALIAS") or ""
        if not alias.startswith(ALIAS):
            continue
        tagged, _, vid_s = alias[len(ALIAS):].rpartition("/")
        vid, p_idx = int(vid_s), link["index"]
        t, h = by_name.get(tagged), by_name.get(hold_name_of(link.get("ifname")))
        complete = False
        if t is not None and h is not None and link.get("ifname") == port_name(t["index"], vid):
            t_f = filters.setdefault(t["index"], ingress_filters(ipr, t["index"]))
            h_f = ingress_filters(ipr, h["index"])
            complete = (t_f.get(vid) == ("pop", vid, p_idx)
                        and h_f.get(PUSH_PRIO) == ("push", vid, t["index"]))
        out[(tagged, vid)] = VlanPort(tagged, vid, p_idx, link.get("IFLA_MASTER") or 0, complete)
    return out


def hold_name_of(pname: str | None) -> str:
    """H's name, from P's."""
    return "h" + pname[1:] if pname else ""


def ensure_port(ipr: IPRoute, tagged: str, vid: int, mtu: int = 1500) -> int:
    """Make VLAN port (tagged, vid) whole (idempotent); returns P's ifindex. P is left detached (the
    caller enslaves it or gives it an address)."""
    t_idx = ipr.link_lookup(ifname=tagged)
    if not t_idx:
        raise VlanError(19, f"no device {tagged}")
    t_idx = t_idx[0]
    pname = port_name(t_idx, vid)
    hname = hold_name_of(pname)
    if not ipr.link_lookup(ifname=pname):
        ipr.link("add", ifname=pname, kind="veth", mtu=mtu, peer={"ifname": hname, "mtu": mtu})
    p_idx, h_idx = ipr.link_lookup(ifname=pname)[0], ipr.link_lookup(ifname=hname)[0]
    ipr.link("set", index=p_idx, ifalias=f"{ALIAS}{tagged}/{vid}", state="up")
    ipr.link("set", index=h_idx, state="up")
    if ingress_filters(ipr, h_idx).get(PUSH_PRIO) != ("push", vid, t_idx):
        _attach(ipr, h_idx, PUSH_PRIO, push_program(vid, t_idx), filter_name("push", vid, t_idx))
    if ingress_filters(ipr, t_idx).get(vid) != ("pop", vid, p_idx):
        _attach(ipr, t_idx, vid, pop_program(vid, p_idx), filter_name("pop", vid, p_idx))
    return p_idx


def remove_port(ipr: IPRoute, tagged: str, vid: int) -> None:
    """Remove VLAN port (tagged, vid): T's filter for the VLAN (if T still exists) and the veth pair."""
    for t_idx in ipr.link_lookup(ifname=tagged):
        if ingress_filters(ipr, t_idx).get(vid, ("",))[0] == "pop":
            _detach(ipr, t_idx, vid)
    for link in ipr.get_links():
        if (link.get("IFLA_IFALIAS") or "") == f"{ALIAS}{tagged}/{vid}":
            ipr.link("del", index=link["index"])
