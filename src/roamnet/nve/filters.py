"""An NVE's nftables table, as pure data: port filters (portfilter.py) and segment ARP guards rendered to
nftables' JSON, the table read back, and the diff between them. No I/O here (dataplane/nft.py runs it).

One table, `bridge roamnet`, per NVE namespace; nothing else in the namespace is touched:
  * base chains on the bridge hooks: prerouting dispatches by input device through map `ingress`,
    forward and output by output device through map `egress`;
  * per VM port two chains: `out:<iface>:<digest>` (frames from the VM: port security, then policy)
    and `in:<iface>:<digest>` (frames to the VM);
  * per segment two chains on its VXLAN device: `vxin:<vni>:<digest>` counts ARP coming in from the
    overlay, `vxout:<vni>:<digest>` counts ARP going out to it and, when the CUG says unknown IPs do
    not flood, drops ARP requests (with ARP suppression every request for a known IP is answered
    by the bridge, so a request still heading for VXLAN is one for an unknown IP).
The digest (of the chain's rules) is part of the name, so a changed chain is a new chain: one
transaction adds it, points the map at it and deletes the old one. Nothing is ever flushed in place,
a restarted agent finds the chains it wants by name, and there is never a moment without rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from roamnet import names
from roamnet.mapping.records import ALLOW, ANY_PROTO
from roamnet.nve.portfilter import Clause, PortFilter

FAMILY, TABLE = "bridge", "roamnet"
INGRESS, EGRESS = "ingress", "egress"
BASE = {"prerouting": INGRESS, "forward": EGRESS, "output": EGRESS}  # hook -> map it dispatches by
PRIORITY = -200  # the bridge family's "filter" priority
ETH_P_RARP = 0x8035
ICMP_ALWAYS = ("echo-reply", "destination-unreachable", "time-exceeded")
PROBE_SENDER = "0.0.0.0"  # an ARP probe's sender IP (RFC 5227)

# rule comments that name counters (summed by `counters`)
SPOOF_MAC, SPOOF_IP, SPOOF_ARP, NOT_IPV4 = "spoof-mac", "spoof-ip", "spoof-arp", "not-ipv4"
ARP_REQUEST, ARP_TO_VXLAN, ARP_FROM_VXLAN, ARP_UNKNOWN_DROPPED = (
    "arp-request", "arp-to-vxlan", "arp-from-vxlan", "arp-unknown-dropped")
POLICY_DENY = "policy-deny"
# over a port's budget (issue 21), and RARPs kept off the overlay
ANNOUNCE_LIMITED, ARP_LIMITED, BUM_LIMITED, RARP_LOCAL = "announce-limited", "arp-limited", "bum-limited", "rarp-local"
TOTALS = (SPOOF_MAC, SPOOF_IP, SPOOF_ARP, NOT_IPV4, ARP_REQUEST, ARP_TO_VXLAN, ARP_FROM_VXLAN,
          ARP_UNKNOWN_DROPPED, POLICY_DENY, ANNOUNCE_LIMITED, ARP_LIMITED, BUM_LIMITED,
          RARP_LOCAL)  # the table's named counters: per NVE, they outlive chains
DENY_PREFIX = "deny:"


# ---- rendering ----------------------------------------------------------------------------------

def _match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _field(proto: str, name: str) -> dict:
    return {"payload": {"protocol": proto, "field": name}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _one_or_set(values: list):
    return values[0] if len(values) == 1 else {"set": values}


def _prefixes(prefixes: tuple[str, ...]):
    out = []
    for p in prefixes:
        addr, _, plen = p.partition("/")
        out.append(addr if plen in ("", "32") else {"prefix": {"addr": addr, "len": int(plen)}})
    return _one_or_set(out)


def _rule(expr: list, comment: str = "") -> dict:
    return {"expr": expr, **({"comment": comment} if comment else {})}


def _count(total: str) -> list[dict]:
    """This rule's own counter (per port, gone with its chain) and the NVE's named total."""
    return [{"counter": None}, {"counter": total}]


def _clause(c: Clause, outbound: bool) -> dict:
    expr: list = []
    if c.local is not None:
        expr.append(_match(_field("ip", "saddr" if outbound else "daddr"), _prefixes(c.local)))
    if c.peer is not None:
        expr.append(_match(_field("ip", "daddr" if outbound else "saddr"), _prefixes(c.peer)))
    if c.proto != ANY_PROTO:
        expr.append(_match(_meta("l4proto"), c.proto))
    if c.ports:
        expr.append(_match(_field("th", "sport" if c.reply else "dport"), _one_or_set(sorted(c.ports))))
    if c.reply and c.proto == "tcp":  # not a bare SYN: the replying side opens nothing
        expr.append(_match({"&": [_field("tcp", "flags"), {"|": ["syn", "ack"]}]}, "syn", "!="))
    if c.action == ALLOW:
        return _rule(expr + [{"accept": None}])
    return _rule(expr + _count(POLICY_DENY) + [{"drop": None}], DENY_PREFIX + (c.rule or "default"))


def _over(pps: int) -> dict:
    """`limit rate over <pps>/second burst <2 pps> packets`: true for what exceeds the budget (the
    rule's own token bucket: in a port's chain, a per-port budget)."""
    return {"limit": {"rate": pps, "per": "second", "burst": 2 * pps, "inv": True}}


def render_out(f: PortFilter) -> list[dict]:
    """Frames from the VM: port security (MAC, ARP sender, IPv4 source bound in the mapping), the
    port's budgets, then policy. Announcements (RARP, and ARP whose target is the VM's own address:
    gratuitous ARP and probes) that pass are logged to the NVE's group, which is all the agent reads."""
    arp = _match(_field("ether", "type"), "arp")
    rarp = _match(_field("ether", "type"), ETH_P_RARP)
    own = _match(_field("arp", "daddr ip"), _one_or_set(sorted(f.ips)))
    ips = sorted(f.ips)
    drop = [{"drop": None}]
    log = {"log": {"group": names.ANNOUNCE_LOG_GROUP}}
    rules = [
        _rule([_match(_field("ether", "saddr"), f.mac, "!=")] + _count(SPOOF_MAC) + drop, SPOOF_MAC),
        _rule([arp, _match(_field("arp", "saddr ether"), f.mac, "!=")] + _count(SPOOF_ARP) + drop, SPOOF_ARP),
        _rule([arp, _match(_field("arp", "saddr ip"), _one_or_set(ips + [PROBE_SENDER]), "!=")]
              + _count(SPOOF_ARP) + drop, SPOOF_ARP),
        _rule([arp, own, _over(f.announce_pps)] + _count(ANNOUNCE_LIMITED) + drop, ANNOUNCE_LIMITED),
        _rule([arp, own, log]),
        _rule([arp, _match(_field("arp", "operation"), "request"), _over(f.arp_pps)] + _count(ARP_LIMITED) + drop,
              ARP_LIMITED),
        _rule([arp, _match(_field("arp", "operation"), "request")] + _count(ARP_REQUEST) + [{"accept": None}],
              ARP_REQUEST),
        _rule([arp, {"accept": None}]),
        _rule([rarp, _over(f.announce_pps)] + _count(ANNOUNCE_LIMITED) + drop, ANNOUNCE_LIMITED),
        _rule([rarp, log, {"accept": None}]),  # QEMU's announce
        _rule([_match(_field("ether", "type"), "ip", "!=")] + _count(NOT_IPV4) + drop, NOT_IPV4),
        _rule([_match(_field("ip", "saddr"), _one_or_set(ips), "!=")] + _count(SPOOF_IP) + drop, SPOOF_IP),
        _rule([_match(_meta("pkttype"), {"set": ["broadcast", "multicast"]}), _over(f.bum_pps)]
              + _count(BUM_LIMITED) + drop, BUM_LIMITED),
        _rule([_match(_meta("l4proto"), "icmp"), _match(_field("icmp", "type"), {"set": list(ICMP_ALWAYS)}),
               {"accept": None}]),
    ]
    return rules + [_clause(c, True) for c in f.out]


def render_in(f: PortFilter) -> list[dict]:
    """Frames to the VM: ARP and the like pass (they were checked at the sender's port), IPv4 meets
    the policy."""
    rules = [
        _rule([_match(_field("ether", "type"), "ip", "!="), {"accept": None}]),
        _rule([_match(_meta("l4proto"), "icmp"), _match(_field("icmp", "type"), {"set": list(ICMP_ALWAYS)}),
               {"accept": None}]),
    ]
    return rules + [_clause(c, False) for c in f.inbound]


def render_vxlan(flood_unknown: bool) -> tuple[list[dict], list[dict]]:
    """(from VXLAN, to VXLAN) rules of a segment's VXLAN device. RARPs never go to VXLAN: a move is
    activated by the announcement on the VM's new port, on its own NVE; remote copies serve nobody."""
    arp = _match(_field("ether", "type"), "arp")
    vx_in = [_rule([arp] + _count(ARP_FROM_VXLAN), ARP_FROM_VXLAN)]
    vx_out = [_rule([_match(_field("ether", "type"), ETH_P_RARP)] + _count(RARP_LOCAL) + [{"drop": None}], RARP_LOCAL)]
    vx_out += [] if flood_unknown else [
        _rule([arp, _match(_field("arp", "operation"), "request")] + _count(ARP_UNKNOWN_DROPPED)
              + [{"drop": None}], ARP_UNKNOWN_DROPPED)]
    vx_out.append(_rule([arp] + _count(ARP_TO_VXLAN), ARP_TO_VXLAN))
    return vx_in, vx_out


def _named(kind: str, key: str, rules: list[dict]) -> str:
    digest = hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}:{key}:{digest}"


# ---- desired and actual tables ------------------------------------------------------------------

@dataclass
class Table:
    """The table's contents that matter: chains (rules only in a desired table), and the maps."""

    chains: dict[str, list[dict]] = field(default_factory=dict)  # name -> rules (actual: [])
    ingress: dict[str, str] = field(default_factory=dict)  # device -> chain
    egress: dict[str, str] = field(default_factory=dict)
    base_ok: bool = True  # (actual) the base chains and maps exist, each base chain dispatching
    counters: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # (actual) chain ->
    #   [(comment, packets)] of its counting rules
    totals: dict[str, int] = field(default_factory=dict)  # (actual) named counter -> packets

    def summary(self) -> dict:
        return {"chains": sorted(self.chains), "ingress": dict(sorted(self.ingress.items())),
                "egress": dict(sorted(self.egress.items()))}


_RENDERED: dict[tuple[str, PortFilter], tuple[tuple[str, list[dict]], tuple[str, list[dict]]]] = {}
RENDERED_MAX = 50_000  # port filters whose chains are remembered (an agent renders its ports at every pass)


def port_chains(iface: str, f: PortFilter) -> tuple[tuple[str, list[dict]], tuple[str, list[dict]]]:
    """((out chain's name, rules), (in chain's name, rules)) of VM port `iface`'s filter `f`: rendered
    once per filter (the rules are shared: never change them)."""
    key = (iface, f)
    hit = _RENDERED.get(key)
    if hit is None:
        out, inbound = render_out(f), render_in(f)
        hit = ((_named("out", iface, out), out), (_named("in", iface, inbound), inbound))
        if len(_RENDERED) >= RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[key] = hit
    return hit


def desired_table(ports: dict[str, tuple[str, PortFilter]], segments: dict[int, bool]) -> Table:
    """The table for VM ports {iface_id: (bridge-port device, filter)} and hosted segments
    {vni: flood_unknown_arp}. Pure."""
    t = Table()
    for iface, (dev, f) in sorted(ports.items()):
        (out_name, out), (in_name, inbound) = port_chains(iface, f)
        t.chains[out_name], t.ingress[dev] = out, out_name
        t.chains[in_name], t.egress[dev] = inbound, in_name
    for vni, flood in sorted(segments.items()):
        vx_in, vx_out = render_vxlan(flood)
        for kind, rules, dispatch in (("vxin", vx_in, t.ingress), ("vxout", vx_out, t.egress)):
            name = _named(kind, str(vni), rules)
            t.chains[name], dispatch[names.vxlan(vni)] = rules, name
    return t


def read_table(listing: dict | None) -> Table:
    """The table from `nft -j list table bridge roamnet` output (None: no table)."""
    t = Table(base_ok=False)
    if not listing:
        return t
    hooked: set[str] = set()
    maps: set[str] = set()
    for item in listing.get("nftables", []):
        if next(iter(item.values()), {}).get("table", TABLE) != TABLE:
            continue  # another table of the family: not ours
        if "chain" in item:
            c = item["chain"]
            if c["name"] in BASE:
                continue
            t.chains[c["name"]] = []
        elif "counter" in item:
            t.totals[item["counter"]["name"]] = item["counter"].get("packets", 0)
        elif "map" in item:
            m = item["map"]
            maps.add(m["name"])
            into = t.ingress if m["name"] == INGRESS else t.egress if m["name"] == EGRESS else None
            for dev, verdict in m.get("elem", []) if into is not None else ():
                target = (verdict.get("jump") or verdict.get("goto") or {}).get("target")
                if isinstance(dev, str) and target:
                    into[dev] = target
        elif "rule" in item:
            r = item["rule"]
            if r["chain"] in BASE and any("vmap" in e and e["vmap"].get("data") == "@" + BASE[r["chain"]]
                                          for e in r.get("expr", [])):
                hooked.add(r["chain"])
            packets = next((e["counter"].get("packets", 0) for e in r.get("expr", [])
                            if isinstance(e.get("counter"), dict)), None)
            if packets is not None and r.get("comment"):
                t.counters.setdefault(r["chain"], []).append((r["comment"], packets))
    t.base_ok = hooked == set(BASE) and {INGRESS, EGRESS} <= maps and set(TOTALS) <= set(t.totals)
    return t


def _obj(kind: str, **attrs) -> dict:
    return {kind: {"family": FAMILY, "table": TABLE, **attrs}}


def plan_table(want: Table, have: Table) -> list[dict]:
    """nftables JSON commands that make the table `want`, for one transaction ([]: nothing to do).
    Order inside it: base, new chains with their rules, maps refilled, stale chains deleted."""
    new = [n for n in want.chains if n not in have.chains]
    stale = [n for n in have.chains if n not in want.chains]
    if have.base_ok and not new and not stale and want.ingress == have.ingress and want.egress == have.egress:
        return []
    cmds: list[dict] = []
    if not have.base_ok:
        cmds.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
        for m in (INGRESS, EGRESS):
            cmds.append({"add": _obj("map", name=m, type="ifname", map="verdict")})
        cmds.extend({"add": _obj("counter", name=c)} for c in TOTALS)
        for hook, m in BASE.items():
            cmds.append({"add": _obj("chain", name=hook, type="filter", hook=hook, prio=PRIORITY, policy="accept")})
            cmds.append({"flush": _obj("chain", name=hook)})
            key = "iifname" if m == INGRESS else "oifname"
            cmds.append({"add": _obj("rule", chain=hook, expr=[{"vmap": {"key": _meta(key), "data": "@" + m}}])})
    for name in new:
        cmds.append({"add": _obj("chain", name=name)})
        cmds.extend({"add": _obj("rule", chain=name, **r)} for r in want.chains[name])
    for m, elems in ((INGRESS, want.ingress), (EGRESS, want.egress)):
        cmds.append({"flush": _obj("map", name=m)})
        if elems:
            cmds.append({"add": _obj("element", name=m, elem=[[dev, {"jump": {"target": chain}}]
                                                           for dev, chain in sorted(elems.items())])})
    cmds.extend({"delete": _obj("chain", name=name)} for name in stale)
    return cmds


def counters(t: Table) -> dict[str, int]:
    """The NVE's totals per counter kind (named counters: a port's chain being replaced or moving
    away does not take its counts with it)."""
    return {k: t.totals.get(k, 0) for k in TOTALS}

