"""The WAN edge's guards (issue 20): BGP only between configured sessions, and nothing from the outside
world towards the underlay. nftables JSON, one table `ip roamnet-guard` per namespace guarded.

  * **BGP** (TCP 179), in every namespace that speaks it to the WAN — each border's tenant namespaces
    and the WAN router: the input chain accepts port 179 only from a configured neighbour, to the
    local address of that session, on the interface the session runs over; any other packet to or
    from port 179 is dropped and counted (`bgp-foreign`). A tenant VM or a WAN client cannot open a
    session, reset one or even see bgpd answer. (FRR's GTSM, `ttl-security hops 1`, would be another
    way; the filter also counts, and needs no change to the daemons' configuration.)
  * **Underlay**, on the WAN router: its prerouting chain drops, and counts (`to-underlay`), every
    packet whose destination lies in the underlay's address space, before any routing decision. The
    WAN router has no route there anyway (the transport is a separate router, `lab.plan`); this makes
    an attempt visible, and keeps the guarantee if a route ever leaked.

Pure planning here; `apply` and `counters` run it in a namespace through `dataplane.nft`.
"""

from __future__ import annotations

from dataclasses import dataclass

from roamnet.dataplane.nft import Nft

FAMILY, TABLE = "ip", "roamnet-guard"
BGP_PORT = 179
BGP_FOREIGN = "bgp-foreign"  # packets to or from TCP 179 that belong to no configured session
TO_UNDERLAY = "to-underlay"  # packets from the outside world towards an underlay address
COUNTERS = (BGP_FOREIGN, TO_UNDERLAY)
UNDERLAY_SET = "underlay"
PRIORITY = -200  # before anybody else's filter-priority rules


@dataclass(frozen=True)
class Session:
    """One configured BGP session as seen from the namespace guarded."""

    ifname: str  # the interface it runs over
    peer: str  # the neighbour's address
    local: str  # our address on it (the update-source)


def _obj(kind: str, **attrs) -> dict:
    return {kind: {"family": FAMILY, "table": TABLE, **attrs}}


def _match(protocol: str, field: str, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": field}}, "right": right}}


def _base(counter: str, chain: str, hook: str) -> list[dict]:
    return [{"add": {"table": {"family": FAMILY, "name": TABLE}}},
            {"add": _obj("counter", name=counter)},
            {"add": _obj("chain", name=chain, type="filter", hook=hook, prio=PRIORITY, policy="accept")},
            {"flush": _obj("chain", name=chain)}]


def bgp_guard(sessions: list[Session] | tuple[Session, ...]) -> list[dict]:
    """One transaction: the input chain that lets TCP 179 through only for `sessions` (both directions
    of each: bgpd connects out and accepts in). Idempotent: the chain is flushed and refilled."""
    cmds = _base(BGP_FOREIGN, "input", "input")
    for s in sessions:
        for port_field in ("dport", "sport"):
            cmds.append({"add": _obj("rule", chain="input", comment=f"bgp {s.peer}", expr=[
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": s.ifname}},
                _match("ip", "saddr", s.peer), _match("ip", "daddr", s.local),
                _match("tcp", port_field, BGP_PORT), {"accept": None}])})
    for port_field in ("dport", "sport"):
        cmds.append({"add": _obj("rule", chain="input", comment=BGP_FOREIGN, expr=[
            _match("tcp", port_field, BGP_PORT), {"counter": None}, {"counter": BGP_FOREIGN}, {"drop": None}])})
    return cmds


def underlay_guard(prefixes: list[str] | tuple[str, ...]) -> list[dict]:
    """One transaction: the prerouting chain that drops and counts packets towards `prefixes` (prerouting,
    not forward: a packet with no route never reaches the forward hook, and must still be counted)."""
    cmds = _base(TO_UNDERLAY, "prerouting", "prerouting")
    cmds.append({"add": _obj("set", name=UNDERLAY_SET, type="ipv4_addr", flags=["interval"])})
    cmds.append({"flush": _obj("set", name=UNDERLAY_SET)})
    if prefixes:
        elems = [{"prefix": {"addr": p.split("/")[0], "len": int(p.split("/")[1])}} for p in prefixes]
        cmds.append({"add": _obj("element", name=UNDERLAY_SET, elem=elems)})
    cmds.append({"add": _obj("rule", chain="prerouting", comment=TO_UNDERLAY, expr=[
        _match("ip", "daddr", "@" + UNDERLAY_SET), {"counter": None}, {"counter": TO_UNDERLAY}, {"drop": None}])})
    return cmds


def read_counters(listing: dict | None) -> dict[str, int]:
    """The guard's named counters from `nft -j list table ip roamnet-guard` (absent ones: 0)."""
    out = dict.fromkeys(COUNTERS, 0)
    for item in (listing or {}).get("nftables", []):
        c = item.get("counter")
        if c and c.get("name") in out:
            out[c["name"]] = c.get("packets", 0)
    return out


# ---- I/O -----------------------------------------------------------------------------------------

def apply(ns: str, commands: list[dict]) -> None:
    """Run `commands` in namespace `ns` as one nftables transaction."""
    nft = Nft(ns)
    try:
        nft.run(commands)
    finally:
        nft.close()


def counters(ns: str) -> dict[str, int]:
    """The guard's counters in namespace `ns` (no table: zeros)."""
    nft = Nft(ns)
    try:
        return read_counters(nft.list_table(FAMILY, TABLE))
    finally:
        nft.close()
