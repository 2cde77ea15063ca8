"""VXLAN source validation, pure: the allowed set follows the mapping's NVEs; the plan is one
transaction; the table read back."""

from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.records import Nve, Snapshot
from roamnet.nve.plan import Actual, apply_to, plan_vteps
from roamnet.nve.underlay import (
    CHAIN,
    MISSING,
    VTEPS,
    VXLAN_FOREIGN,
    Underlay,
    allowed_vteps,
    guard_rule,
    plan_underlay,
    read_underlay,
)

NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.3", "dc1"),
        "dc1br": Nve("dc1br", "198.18.250.1", "dc1", "border"), "tor1": Nve("tor1", "198.18.1.5", "dc1", "tor"),
        "hv9": Nve("hv9", "198.18.1.5", "dc1", "server", tor="tor1", domain="pod1")}


def test_every_vtep_of_the_mapping_and_nothing_else():
    assert allowed_vteps(Snapshot(1, NVES)) == {"198.18.1.1", "198.18.1.3", "198.18.250.1", "198.18.1.5"}
    assert allowed_vteps(Snapshot(1, {})) == frozenset()


def test_a_missing_table_is_made_whole_in_one_transaction():
    cmds = plan_underlay(frozenset({"198.18.1.3", "198.18.1.1"}), MISSING)
    kinds = [(op, next(iter(body))) for c in cmds for op, body in c.items()]
    assert kinds == [("add", "table"), ("add", "counter"), ("add", "set"), ("add", "chain"), ("flush", "chain"),
                     ("add", "rule"), ("flush", "set"), ("add", "element")]
    assert cmds[-1]["add"]["element"]["elem"] == ["198.18.1.1", "198.18.1.3"]
    chain = cmds[3]["add"]["chain"]
    assert (chain["hook"], chain["policy"]) == ("input", "accept")
    rule = guard_rule()["rule"]["expr"]
    assert rule[0]["match"]["right"] == 4789 and rule[1]["match"] == {
        "op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@" + VTEPS}
    assert rule[-1] == {"drop": None} and {"counter": VXLAN_FOREIGN} in rule


def test_a_joining_or_leaving_vtep_refills_the_set_only():
    have = Underlay(frozenset({"198.18.1.1", "198.18.1.3"}))
    assert plan_underlay(have.vteps, have) == []
    cmds = plan_underlay(frozenset({"198.18.1.1", "198.18.2.1"}), have)
    assert [next(iter(c)) for c in cmds] == ["flush", "add"] and cmds[1]["add"]["element"]["elem"] == [
        "198.18.1.1", "198.18.2.1"]
    assert [next(iter(c)) for c in plan_underlay(frozenset(), have)] == ["flush"]


def test_the_table_read_back():
    listing = {"nftables": [
        {"metainfo": {}}, {"table": {"family": "ip", "name": "roamnet"}},
        {"counter": {"family": "ip", "table": "roamnet", "name": VXLAN_FOREIGN, "packets": 7, "bytes": 700}},
        {"set": {"family": "ip", "table": "roamnet", "name": VTEPS, "type": "ipv4_addr",
                 "elem": ["198.18.1.1", "198.18.1.3"]}},
        {"chain": {"family": "ip", "table": "roamnet", "name": CHAIN, "hook": "input"}},
        {"rule": {"family": "ip", "table": "roamnet", "chain": CHAIN, "comment": VXLAN_FOREIGN, "expr": []}}]}
    assert read_underlay(listing) == (Underlay(frozenset({"198.18.1.1", "198.18.1.3"})), 7)
    no_rule = {"nftables": [i for i in listing["nftables"] if "rule" not in i]}
    assert read_underlay(no_rule)[0].base_ok is False
    assert read_underlay(None) == (MISSING, 0)


def test_plan_and_cache_agree():
    have = Actual()
    [ch] = plan_vteps(frozenset({"198.18.1.1"}), have)
    assert str(ch) == "set-vteps 198.18.1.1"
    assert plan_vteps(frozenset({"198.18.1.1"}), apply_to(have, [ch])) == []
    k = ModelKernel()
    assert k.apply([ch]) == [] and k.actual.underlay == Underlay(frozenset({"198.18.1.1"}))
