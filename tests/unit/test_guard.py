"""The WAN edge's guards, pure: BGP's port only for the configured sessions, nothing towards the underlay."""

from roamnet.intent.model import load_topology
from roamnet.intent.scenario import packaged_example
from roamnet.lab.plan import build_plan, underlay_prefixes
from roamnet.wan.border import guard_sessions, plan_border_instances
from roamnet.wan.guard import BGP_FOREIGN, TO_UNDERLAY, Session, bgp_guard, read_counters, underlay_guard

ROUTED = load_topology(packaged_example("routed.yaml"))


def _rules(cmds: list[dict]) -> list[dict]:
    return [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]


def test_sessions_of_every_instance_name_the_interface_it_runs_over():
    plan = build_plan(ROUTED)
    insts = {i.node: i for i in plan_border_instances(plan, ROUTED)}
    border = guard_sessions(plan, insts["dc2br.t-t1"])
    wan_side = plan.handoff("dc2br", "t1")[1]
    assert border == (Session("wan", wan_side.address.split("/")[0], plan.handoff("dc2br", "t1")[0].address.split("/")[0]),)
    wan = guard_sessions(plan, insts["wan"])
    assert [s.ifname for s in wan] == ["dc1br-t1", "dc2br-t1"]
    assert {s.peer for s in wan} == {p.address for p in insts["wan"].peers}


def test_bgp_guard_accepts_each_session_both_ways_then_drops_and_counts_the_rest():
    cmds = bgp_guard([Session("wan", "198.18.251.0", "198.18.251.1")])
    assert cmds[0] == {"add": {"table": {"family": "ip", "name": "roamnet-guard"}}}
    chain = next(c["add"]["chain"] for c in cmds if "chain" in c.get("add", {}))
    assert (chain["hook"], chain["policy"], chain["prio"]) == ("input", "accept", -200)
    assert {"flush": {"chain": {"family": "ip", "table": "roamnet-guard", "name": "input"}}} in cmds
    rules = _rules(cmds)
    accepts, drops = rules[:2], rules[2:]
    for rule, field in zip(accepts, ("dport", "sport")):
        e = rule["expr"]
        assert e[0]["match"]["right"] == "wan" and e[1]["match"]["right"] == "198.18.251.0"
        assert e[2]["match"]["right"] == "198.18.251.1"
        assert e[3]["match"] == {"op": "==", "left": {"payload": {"protocol": "tcp", "field": field}}, "right": 179}
        assert e[-1] == {"accept": None}
    assert len(drops) == 2 and all(r["expr"][-1] == {"drop": None} and {"counter": BGP_FOREIGN} in r["expr"]
                                   for r in drops)
    assert len(_rules(bgp_guard([]))) == 2  # no session: port 179 is closed both ways


def test_underlay_guard_drops_every_underlay_prefix():
    plan = build_plan(ROUTED)
    prefixes = underlay_prefixes(plan)
    assert prefixes == ["198.18.1.0/24", "198.18.2.0/24", "198.18.250.0/24"]
    cmds = underlay_guard(prefixes)
    elems = next(c["add"]["element"]["elem"] for c in cmds if "element" in c.get("add", {}))
    assert [f"{e['prefix']['addr']}/{e['prefix']['len']}" for e in elems] == prefixes
    (rule,) = _rules(cmds)
    assert rule["chain"] == "prerouting" and {"counter": TO_UNDERLAY} in rule["expr"] and rule["expr"][-1] == {"drop": None}


def test_counters_read_back_missing_ones_zero():
    listing = {"nftables": [{"metainfo": {}}, {"counter": {"family": "ip", "table": "roamnet-guard",
                                                           "name": BGP_FOREIGN, "packets": 5, "bytes": 300}}]}
    assert read_counters(listing) == {BGP_FOREIGN: 5, TO_UNDERLAY: 0}
    assert read_counters(None) == {BGP_FOREIGN: 0, TO_UNDERLAY: 0}
