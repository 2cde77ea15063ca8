"""Policies that follow the VM: the reference semantics (`allowed`), each port's filter, the nftables
table rendered from it and the diff that keeps it (pure parts; the lab runs them on the kernel)."""

from __future__ import annotations

from roamnet.mapping.policy import allowed
from roamnet.mapping.records import ALLOW, DENY, Binding, LogicalPort, Nve, PolicySet, Rule, Segment
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem
from roamnet.nve.desired import compute_desired
from roamnet.nve.filters import (
    ARP_UNKNOWN_DROPPED,
    SPOOF_MAC,
    TOTALS,
    Table,
    counters,
    desired_table,
    plan_table,
    read_table,
)
from roamnet.nve.plan import Actual, FilterChange, apply_to, plan_filters
from roamnet.nve.portfilter import port_filter

WEB, DB, LAB, OTHER = 10100, 10200, 10300, 20100
SEGMENTS = {
    WEB: Segment(WEB, "web", "198.19.1.0/24", "198.19.1.1/24", "t1"),
    DB: Segment(DB, "db", "198.19.2.0/24", "198.19.2.1/24", "t1"),
    LAB: Segment(LAB, "lab", "198.19.3.0/24"),  # L2-only
    OTHER: Segment(OTHER, "web2", "198.19.1.0/24", "198.19.1.1/24", "t2"),  # same subnet, tenant t2
}
POLICY = PolicySet((
    Rule("web-to-db", ("t1",), ("198.19.1.0/24",), ("198.19.2.0/24",), "tcp", (5432,), ALLOW),
    Rule("no-ssh", None, None, ("198.19.1.11/32",), "tcp", (22,), DENY),
    Rule("dns", ("t1",), ("198.19.2.0/24",), ("198.19.1.0/24",), "udp", (53,), ALLOW),
), {"t1": DENY, "t2": ALLOW})


def test_first_match_wins_and_defaults():
    vm1, vm2, db = (WEB, "198.19.1.11"), (WEB, "198.19.1.12"), (DB, "198.19.2.14")
    assert allowed(POLICY, SEGMENTS, vm2, db, "tcp", 5432)
    assert not allowed(POLICY, SEGMENTS, vm2, db, "tcp", 5433)  # tenant default deny across CUGs
    assert not allowed(POLICY, SEGMENTS, db, vm2, "tcp", 5432)  # rules have a direction
    assert allowed(POLICY, SEGMENTS, db, vm2, "udp", 53)
    assert allowed(POLICY, SEGMENTS, vm2, vm1, "tcp", 80)  # inside one CUG: allowed ...
    assert not allowed(POLICY, SEGMENTS, vm2, vm1, "tcp", 22)  # ... unless a rule says otherwise
    assert not allowed(POLICY, SEGMENTS, vm1, (OTHER, "198.19.1.12"), "tcp", 80)  # tenants never meet
    assert not allowed(POLICY, SEGMENTS, (LAB, "198.19.3.5"), vm1, "tcp", 80)  # L2-only is not routed
    assert allowed(POLICY, SEGMENTS, (OTHER, "198.19.1.12"), (OTHER, "198.19.1.13"), "tcp", 22)  # t2: no-ssh
    #   matches addresses of t1's vm1 only inside scope... it is scope-less, so it holds in t2 too
    assert not allowed(POLICY, SEGMENTS, (OTHER, "198.19.1.12"), (OTHER, "198.19.1.11"), "tcp", 22)


def test_port_filter_holds_the_rules_of_its_side_and_replies():
    f = port_filter(POLICY, SEGMENTS, "db/0", DB, "02:00:00:02:00:14", ("198.19.2.14",))
    out = [(c.rule, c.action, c.reply) for c in f.out]
    # replies to web-to-db first (db receives it), then the rules db is a source of (no-ssh: any
    # source), same CUG, the tenant's default
    assert out == [("web-to-db", ALLOW, True), ("no-ssh", DENY, False), ("dns", ALLOW, False),
                   ("same CUG", ALLOW, False), ("default", DENY, False)]
    inbound = [(c.rule, c.reply) for c in f.inbound]
    assert inbound == [("scope", False), ("dns", True), ("web-to-db", False), ("default", False)]
    assert f.inbound[0].peer == ("198.19.1.0/24", "198.19.2.0/24")  # t1's subnets: judged at the sender


def test_udp_rule_without_ports_gives_no_reply_clause():
    p = PolicySet((Rule("any-udp", None, ("198.19.1.0/24",), ("198.19.2.0/24",), "udp", (), ALLOW),), {})
    f = port_filter(p, SEGMENTS, "db/0", DB, "02:00:00:02:00:14", ("198.19.2.14",))
    assert not any(c.reply for c in f.out)  # else any UDP from db to web would pass as a "reply"


def table_for(iface: str = "vm1/0", dev: str = "tap-vm1-0", policy: PolicySet = POLICY,
              segments: dict[int, bool] | None = None) -> Table:
    f = port_filter(policy, SEGMENTS, iface, WEB, "02:00:00:01:00:11", ("198.19.1.11",))
    return desired_table({iface: (dev, f)}, segments if segments is not None else {WEB: True})


def as_listing(t: Table) -> dict:
    """What `nft -j list table` prints for a table made by plan_table (enough for read_table)."""
    items = [{"chain": {"name": n}} for n in ("prerouting", "forward", "output")]
    items += [{"counter": {"name": c, "packets": 7}} for c in TOTALS]
    items += [{"map": {"name": m, "elem": [[d, {"jump": {"target": c}}] for d, c in elems.items()]}}
              for m, elems in (("ingress", t.ingress), ("egress", t.egress))]
    items += [{"rule": {"chain": h, "expr": [{"vmap": {"key": {}, "data": "@" + m}}]}}
              for h, m in (("prerouting", "ingress"), ("forward", "egress"), ("output", "egress"))]
    for name, rules in t.chains.items():
        items.append({"chain": {"name": name}})
        for r in rules:
            counted = [{"counter": {"packets": 3, "bytes": 1}} if e == {"counter": None} else e for e in r["expr"]]
            items.append({"rule": {"chain": name, "expr": counted, **({"comment": r["comment"]} if "comment" in r else {})}})
    return {"nftables": items}


def test_table_from_nothing_then_nothing_to_do():
    want = table_for()
    cmds = plan_table(want, read_table(None))
    assert cmds[0] == {"add": {"table": {"family": "bridge", "name": "roamnet"}}}
    have = read_table(as_listing(want))
    assert have.base_ok and plan_table(want, have) == []
    assert [n.split(":")[0] for n in sorted(want.chains)] == ["in", "out", "vxin", "vxout"]
    assert want.ingress["tap-vm1-0"].startswith("out:vm1/0:") and want.egress["vx10100"].startswith("vxout:")


def test_a_changed_filter_is_a_new_chain_swapped_in_one_transaction():
    old = table_for()
    have = read_table(as_listing(old))
    stricter = PolicySet(POLICY.rules + (Rule("no-web", None, None, ("198.19.1.0/24",), "tcp", (80,), DENY),),
                         POLICY.defaults)
    new = table_for(policy=stricter)
    cmds = plan_table(new, have)
    added = [c["add"]["chain"]["name"] for c in cmds if "chain" in c.get("add", {})]
    deleted = [c["delete"]["chain"]["name"] for c in cmds if "delete" in c]
    assert len(added) == 2 and all(a not in old.chains for a in added)  # out and in both changed
    assert set(deleted) == set(old.chains) - set(new.chains)
    kinds = [next(iter(c)) + ":" + next(iter(next(iter(c.values())))) for c in cmds]
    # new chains and their rules, then the maps refilled, then the old chains deleted: never a
    # moment without a filter on the port
    assert kinds.index("flush:map") > max(i for i, k in enumerate(kinds) if k == "add:rule")
    assert kinds.index("delete:chain") > kinds.index("add:element")
    assert not any("base" in k for k in kinds) and "add:table" not in kinds


def test_counters_and_unknown_arp_guard():
    want = table_for(segments={WEB: False})
    vxout = next(n for n in want.chains if n.startswith("vxout:"))
    assert [r.get("comment") for r in want.chains[vxout]] == ["rarp-local", ARP_UNKNOWN_DROPPED, "arp-to-vxlan"]
    have = read_table(as_listing(want))
    out = next(n for n in have.counters if n.startswith("out:"))
    assert (SPOOF_MAC, 3) in have.counters[out]
    assert counters(have)[SPOOF_MAC] == 7  # the NVE's named total


def mapping() -> MappingSystem:
    m = MappingSystem(MemoryStore())
    for name, vtep in (("hv1", "198.18.1.1"), ("hv2", "198.18.1.3")):
        m.register_nve(Nve(name, vtep, "dc1", "server"))
    for seg in SEGMENTS.values():
        m.register_segment(seg)
    m.register_policy(POLICY)
    m.register_port(LogicalPort("vm1/0", "vm1", WEB, "02:00:00:01:00:11", ("198.19.1.11",)))
    m.advertise(Binding(WEB, "02:00:00:01:00:11", "hv1", "198.18.1.1", 0, ("198.19.1.11",), "vm1/0"))
    return m


def test_policy_round_trips_through_the_mapping():
    assert mapping().snapshot().policy == POLICY


def test_prepared_destination_has_the_filter_before_activation_and_source_drops_it_after():
    m = mapping()
    m.prepare("vm1/0", "hv2", 30.0)
    snap = m.snapshot()
    assert set(compute_desired(snap, "hv2").filters) == {"vm1/0"}  # the VM has not run there yet
    assert set(compute_desired(snap, "hv1").filters) == {"vm1/0"}
    m.activate("vm1/0")
    m.complete("vm1/0")
    assert compute_desired(m.snapshot(), "hv1").filters == {}


def test_filters_only_for_ports_that_exist_and_converge():
    m = mapping()
    want = compute_desired(m.snapshot(), "hv1")
    have = Actual(segments={WEB})
    (ch,) = plan_filters(want.filters, want.arp_flood, have)  # no port yet: only the segment's ARP guard
    assert isinstance(ch, FilterChange) and not any(c.startswith("out:") for c in ch.added)
    have = apply_to(have, [ch])
    assert plan_filters(want.filters, want.arp_flood, have) == []
    have.devices["vm1/0"] = "tap-vm1-0"
    (ch,) = plan_filters(want.filters, want.arp_flood, have)
    assert sorted(c.split(":")[0] for c in ch.added) == ["in", "out"] and not ch.removed
    assert plan_filters(want.filters, want.arp_flood, apply_to(have, [ch])) == []


def test_multi_homed_vm_may_source_any_of_its_addresses_and_rules_keep_to_theirs():
    # vm4 has web 198.19.1.14 and db 198.19.2.14; a reply to a db VM asking for .1.14 leaves by db
    f = port_filter(POLICY, SEGMENTS, "vm4/1", DB, "02:00:00:02:00:14", ("198.19.2.14", "198.19.1.14"))
    t = desired_table({"vm4/1": ("v20i7", f)}, {})
    out = next(rules for name, rules in t.chains.items() if name.startswith("out:"))
    spoof_ip = next(r for r in out if r.get("comment") == "spoof-ip")
    assert spoof_ip["expr"][0]["match"]["right"] == {"set": ["198.19.1.14", "198.19.2.14"]}
    web_to_db = next(c for c in f.out if c.rule == "web-to-db" and not c.reply)
    assert web_to_db.local == ("198.19.1.14/32",)  # only packets from its web address meet that rule
    dns = next(c for c in f.out if c.rule == "dns" and not c.reply)
    reply = next(c for c in f.out if c.rule == "web-to-db" and c.reply)
    assert reply.local == ("198.19.2.14/32",)  # db answers web from its db address
    assert dns.local == ("198.19.2.14/32",)


def test_brief_read_sees_chains_maps_and_base_without_port_rules():
    from roamnet.dataplane.nft import read_table_briefly

    want = table_for()
    full = as_listing(want)

    class FakeNft:  # answers `list` from a full listing, as nft does (rules only for `list chain`)
        def list(self, what, **obj):
            items = full["nftables"]
            if what == "chains":
                return {"nftables": [i for i in items if "chain" in i]}
            if what == "map":
                return {"nftables": [i for i in items if i.get("map", {}).get("name") == obj["name"]]}
            if what == "counters":
                return {"nftables": [i for i in items if "counter" in i]}
            if what == "chain":
                return {"nftables": [i for i in items if i.get("rule", {}).get("chain") == obj["name"]]}
            raise AssertionError(what)

    brief = read_table_briefly(FakeNft())
    assert brief.base_ok and brief.summary() == read_table(full).summary() and brief.counters == {}
    assert plan_table(want, brief) == []


def _rules_with(rules: list[dict], comment: str) -> list[dict]:
    return [r for r in rules if r.get("comment") == comment]


def test_each_port_has_its_budgets_and_logs_only_what_passes():
    """Over-budget announcements, ARP requests and broadcast/multicast are dropped and counted at the
    port, after port security; what passes of the announcements is logged to the NVE's group (all the
    agent reads), and RARPs never go to VXLAN."""
    from roamnet.nve.filters import ANNOUNCE_LIMITED, ARP_LIMITED, BUM_LIMITED, RARP_LOCAL, render_out, render_vxlan
    from roamnet.nve.portfilter import PortFilter

    f = PortFilter("vm1/0", "02:00:00:01:00:11", ("198.19.1.11",), (), (), announce_pps=7, arp_pps=90, bum_pps=300)
    rules = render_out(f)
    comments = [r.get("comment", "") for r in rules]
    # port security first: a forged frame is counted as spoofing, never against the budget
    assert comments.index(ANNOUNCE_LIMITED) > comments.index("spoof-arp") > comments.index("spoof-mac")
    assert comments.index(BUM_LIMITED) > comments.index("spoof-ip")
    limits = {c: [e["limit"] for r in _rules_with(rules, c) for e in r["expr"] if "limit" in e]
              for c in (ANNOUNCE_LIMITED, ARP_LIMITED, BUM_LIMITED)}
    assert limits == {ANNOUNCE_LIMITED: [{"rate": 7, "per": "second", "burst": 14, "inv": True}] * 2,  # GARP, RARP
                      ARP_LIMITED: [{"rate": 90, "per": "second", "burst": 180, "inv": True}],
                      BUM_LIMITED: [{"rate": 300, "per": "second", "burst": 600, "inv": True}]}
    for c in limits:
        assert all(r["expr"][-1] == {"drop": None} and {"counter": c} in r["expr"] for r in _rules_with(rules, c))
    logged = [i for i, r in enumerate(rules) if any("log" in e for e in r["expr"])]
    assert len(logged) == 2 and all(any("limit" in e for e in rules[i - 1]["expr"]) for i in logged)  # each after its limit
    garp = rules[logged[0]]["expr"]
    assert garp[1]["match"] == {"op": "==", "left": {"payload": {"protocol": "arp", "field": "daddr ip"}},
                                "right": "198.19.1.11"}  # ARP for the VM's own address: gratuitous, or a probe
    assert {"log": {"group": 77}} in garp
    _, vx_out = render_vxlan(True)
    assert vx_out[0]["comment"] == RARP_LOCAL and vx_out[0]["expr"][-1] == {"drop": None}
    assert vx_out[0]["expr"][0]["match"]["right"] == 0x8035


def test_budgets_come_from_the_cug_else_the_fabric_else_the_defaults():
    from roamnet.intent.compile import compile_topology
    from roamnet.intent.model import parse_topology
    from roamnet.mapping.records import ANNOUNCE_PPS, BUM_PPS

    topo = parse_topology({"name": "x", "datacenters": {"dc1": {"servers": ["hv1"]}}, "limits": {"arp": 100},
                           "cugs": {"a": {"vni": 10, "subnet": "198.19.1.0/24", "limits": {"bum": 5, "arp": 50}},
                                    "b": {"vni": 11, "subnet": "198.19.2.0/24"}}})
    segs = {s.name: s for s in compile_topology(topo, [Nve("hv1", "198.18.1.1", "dc1", "server")]).segments}
    assert (segs["a"].announce_pps, segs["a"].arp_pps, segs["a"].bum_pps) == (ANNOUNCE_PPS, 50, 5)
    assert (segs["b"].announce_pps, segs["b"].arp_pps, segs["b"].bum_pps) == (ANNOUNCE_PPS, 100, BUM_PPS)
