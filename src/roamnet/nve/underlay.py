"""VXLAN source validation (RFC 7348 §7): an NVE accepts VXLAN only from the VTEPs of the mapping's NVEs.

A VXLAN datagram is plain UDP to port 4789: anybody who can route to a VTEP address can put a frame
into any VNI behind it, past every VM port's filter. So each NVE keeps, in its own `ip roamnet`
table, the set of VTEP addresses the mapping knows, and drops (and counts) every datagram to
UDP 4789 from any other source, on the input hook, before the kernel's VXLAN socket sees it. The
L3 VNIs' sockets live in the NVE's namespace too, so routed traffic is covered by the same rule.

The set follows the mapping: a VTEP that joins is allowed in the pass that sees it, one that
leaves is dropped from it. A change is one nftables transaction (the set flushed and refilled), so
there is never a moment without the rule. Pure: no I/O here (dataplane/nft.py runs it).
"""

from __future__ import annotations

from dataclasses import dataclass

from roamnet.mapping.records import Snapshot
from roamnet.names import VXLAN_UDP_PORT

FAMILY, TABLE, VTEPS, CHAIN = "ip", "roamnet", "vteps", "input"
VXLAN_FOREIGN = "vxlan-foreign"  # named counter: VXLAN datagrams from sources that are no VTEP
PRIORITY = -200  # before the input "filter" priority of anybody else's rules


@dataclass(frozen=True)
class Underlay:
    """What the table holds: the allowed VTEPs, and whether the rest of it (chain, rule, counter) is whole."""

    vteps: frozenset[str] = frozenset()
    base_ok: bool = True


MISSING = Underlay(frozenset(), base_ok=False)


def allowed_vteps(snap: Snapshot) -> frozenset[str]:
    """Every VTEP address the mapping knows (servers, ToRs, borders; servers behind a ToR share its)."""
    return frozenset(n.vtep for n in snap.nves.values() if n.vtep)


def _obj(kind: str, **attrs) -> dict:
    return {kind: {"family": FAMILY, "table": TABLE, **attrs}}


def guard_rule() -> dict:
    return _obj("rule", chain=CHAIN, comment=VXLAN_FOREIGN, expr=[
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": VXLAN_UDP_PORT}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@" + VTEPS}},
        {"counter": None}, {"counter": VXLAN_FOREIGN}, {"drop": None}])


def plan_underlay(want: frozenset[str], have: Underlay) -> list[dict]:
    """nftables JSON commands, one transaction, that make the table allow exactly `want` ([]: nothing)."""
    if have.base_ok and have.vteps == want:
        return []
    cmds: list[dict] = []
    if not have.base_ok:
        cmds.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
        cmds.append({"add": _obj("counter", name=VXLAN_FOREIGN)})
        cmds.append({"add": _obj("set", name=VTEPS, type="ipv4_addr")})
        cmds.append({"add": _obj("chain", name=CHAIN, type="filter", hook="input", prio=PRIORITY, policy="accept")})
        cmds.append({"flush": _obj("chain", name=CHAIN)})
        cmds.append({"add": guard_rule()})
    cmds.append({"flush": _obj("set", name=VTEPS)})
    if want:
        cmds.append({"add": _obj("element", name=VTEPS, elem=sorted(want))})
    return cmds


def read_underlay(listing: dict | None) -> tuple[Underlay, int]:
    """The table from `nft -j list table ip roamnet` (None: no table), and its counter's packets."""
    if not listing:
        return MISSING, 0
    vteps: set[str] = set()
    has_set = has_rule = False
    has_counter = False
    packets = 0
    for item in listing.get("nftables", []):
        if "set" in item and item["set"].get("name") == VTEPS:
            has_set = True
            vteps.update(e for e in item["set"].get("elem", []) if isinstance(e, str))
        elif "counter" in item and item["counter"].get("name") == VXLAN_FOREIGN:
            has_counter = True
            packets = item["counter"].get("packets", 0)
        elif "rule" in item and item["rule"].get("chain") == CHAIN and item["rule"].get("comment") == VXLAN_FOREIGN:
            has_rule = True
    return Underlay(frozenset(vteps), has_set and has_rule and has_counter), packets
