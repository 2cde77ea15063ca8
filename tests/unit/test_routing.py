"""Distributed anycast gateway and symmetric IRB: the VRFs an NVE has, computed from the mapping, and
the plan that programs them."""

from roamnet.mapping.records import BORDER, PREPARED, Binding, Migration, Nve, Segment, Snapshot, Tenant
from roamnet.names import router_mac
from roamnet.nve.desired import compute_desired
from roamnet.nve.plan import Actual, VrfActual, apply_to, plan_vrfs
from roamnet.nve.vrf import BLACKHOLE, MAIN, TRANSIT

NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.3", "dc1"),
        "hv3": Nve("hv3", "198.18.2.1", "dc2"),
        "dc1br": Nve("dc1br", "198.18.250.1", "dc1", BORDER), "dc2br": Nve("dc2br", "198.18.250.3", "dc2", BORDER)}
WEB, DB, LAB, L3 = 10100, 10200, 10300, 50001
ANYCAST = "02:52:4e:00:00:01"
TENANTS = {"t1": Tenant("t1", L3, ANYCAST)}
SEGMENTS = {WEB: Segment(WEB, "web", "198.19.1.0/24", "198.19.1.1/24", "t1"),
            DB: Segment(DB, "db", "198.19.2.0/24", "198.19.2.1/24", "t1"),
            LAB: Segment(LAB, "lab", "198.19.3.0/24")}  # L2 only


def b(vni, mac, nve, ip, iface):
    return Binding(vni, mac, nve, NVES[nve].vtep, 0, (ip,), iface)


BINDINGS = [b(WEB, "02:00:00:01:00:11", "hv1", "198.19.1.11", "vm1/0"),
            b(DB, "02:00:00:02:00:12", "hv1", "198.19.2.12", "vm2/0"),
            b(DB, "02:00:00:02:00:13", "hv2", "198.19.2.13", "vm3/0"),
            b(WEB, "02:00:00:01:00:14", "hv3", "198.19.1.14", "vm4/0"),
            b(LAB, "02:00:00:03:00:15", "hv2", "198.19.3.15", "vm5/0")]


def snap(bindings=BINDINGS, migrations=()):
    return Snapshot(1, NVES, {}, {x.key: x for x in bindings}, {m.iface_id: m for m in migrations},
                    TENANTS, SEGMENTS)


def test_router_mac_is_derived_from_the_vtep_and_reserved():
    assert router_mac("198.18.1.3") == "02:52:4e:01:01:03"
    assert router_mac("198.18.250.1") == "02:52:4e:01:fa:01"
    assert len({router_mac(n.vtep) for n in NVES.values()}) == len(NVES)


def test_server_vrf_gateways_host_routes_and_default():
    v = compute_desired(snap(), "hv1").vrfs["t1"]
    assert v.l3vni == L3 and v.rmac == router_mac("198.18.1.1") and v.anycast_mac == ANYCAST and not v.border
    assert v.gateways == {WEB: "198.19.1.1/24", DB: "198.19.2.1/24"}
    # local VMs: neighbour entries from the mapping (connected routes reach them)
    assert v.neighbors == {"198.19.1.11": (WEB, "02:00:00:01:00:11"), "198.19.2.12": (DB, "02:00:00:02:00:12")}
    # every other VM of the tenant: a /32 straight to its NVE (no hair-pin), default to the own border
    assert v.routes == {(MAIN, "198.19.2.13/32"): "198.18.1.3", (MAIN, "198.19.1.14/32"): "198.18.2.1",
                        (MAIN, "0.0.0.0/0"): "198.18.250.1"}
    assert v.rmacs == {t: router_mac(t) for t in ("198.18.1.3", "198.18.2.1", "198.18.250.1")}


def test_only_hosted_cugs_get_gateways_and_l2_only_cugs_no_vrf():
    v = compute_desired(snap(), "hv2").vrfs["t1"]
    assert v.gateways == {DB: "198.19.2.1/24"}  # hv2 hosts db (and the L2-only lab CUG): no web gateway
    assert ("main", "198.19.1.11/32") in v.routes
    assert "198.19.3.15" not in v.neighbors and not any("198.19.3." in p for _, p in v.routes)
    only_l2 = [b(LAB, "02:00:00:03:00:15", "hv2", "198.19.3.15", "vm5/0")]
    assert compute_desired(snap(only_l2), "hv2").vrfs == {}


def test_default_route_follows_the_data_center():
    assert compute_desired(snap(), "hv3").vrfs["t1"].routes[(MAIN, "0.0.0.0/0")] == "198.18.250.3"


def test_border_announces_its_data_center_and_forwards_the_rest():
    v = compute_desired(snap(), "dc1br").vrfs["t1"]
    assert v.border and v.gateways == {} and v.neighbors == {}
    assert v.routes == {(MAIN, "198.19.1.11/32"): "198.18.1.1", (MAIN, "198.19.2.12/32"): "198.18.1.1",
                        (MAIN, "198.19.2.13/32"): "198.18.1.3", (TRANSIT, "198.19.1.14/32"): "198.18.2.1",
                        (MAIN, "198.19.1.0/24"): BLACKHOLE, (MAIN, "198.19.2.0/24"): BLACKHOLE}
    assert BLACKHOLE not in v.rmacs
    d2 = compute_desired(snap(), "dc2br").vrfs["t1"]
    assert d2.routes[(MAIN, "198.19.1.14/32")] == "198.18.2.1"
    assert d2.routes[(TRANSIT, "198.19.1.11/32")] == "198.18.1.1"


def test_a_move_to_another_dc_moves_the_announcement():
    moved = [x if x.iface_id != "vm1/0" else b(WEB, x.mac, "hv3", "198.19.1.11", "vm1/0") for x in BINDINGS]
    d1, d2 = compute_desired(snap(moved), "dc1br").vrfs["t1"], compute_desired(snap(moved), "dc2br").vrfs["t1"]
    assert d1.routes[(TRANSIT, "198.19.1.11/32")] == "198.18.2.1" and (MAIN, "198.19.1.11/32") not in d1.routes
    assert d2.routes[(MAIN, "198.19.1.11/32")] == "198.18.2.1"
    v1 = compute_desired(snap(moved), "hv1").vrfs["t1"]
    assert v1.routes[(MAIN, "198.19.1.11/32")] == "198.18.2.1" and "198.19.1.11" not in v1.neighbors
    assert WEB not in v1.gateways  # hv1 hosts no web VM any more


def test_prepared_move_keeps_routes_on_the_source_until_activation():
    mig = Migration("vm1/0", WEB, "02:00:00:01:00:11", "hv1", "hv3", "198.18.2.1", PREPARED, 0.0)
    v2 = compute_desired(snap(migrations=[mig]), "hv2").vrfs["t1"]
    assert v2.routes[(MAIN, "198.19.1.11/32")] == "198.18.1.1"
    v3 = compute_desired(snap(migrations=[mig]), "hv3").vrfs["t1"]
    assert WEB in v3.gateways  # the destination already has the CUG's gateway for the VM, and delivers
    assert v3.neighbors["198.19.1.11"] == (WEB, "02:00:00:01:00:11")  # to it locally (test_routed_moves.py)


def plan_ops(want, have):
    return [str(c) for c in plan_vrfs(want, have)]


def test_plan_from_nothing_creates_devices_before_entries():
    want = compute_desired(snap(), "hv1").vrfs
    ops = plan_ops(want, {})
    assert ops[0] == "add-l3vni t1 50001"
    assert ops[1:3] == ["add-irb t1 10100 198.19.1.1/24 " + ANYCAST, "add-irb t1 10200 198.19.2.1/24 " + ANYCAST]
    first_route = next(i for i, o in enumerate(ops) if o.startswith("set-route"))
    assert all(o.startswith("set-rmac") for o in ops[3:first_route])
    assert "set-route t1 main 0.0.0.0/0 198.18.250.1" in ops
    assert "set-neighbor t1 198.19.1.11 10100 02:00:00:01:00:11" in ops
    # applied, nothing is left to do
    have = apply_to(Actual(), plan_vrfs(want, {})).vrfs
    assert plan_ops(want, have) == []


def test_plan_moves_a_route_and_drops_what_is_stale():
    before = compute_desired(snap(), "hv2").vrfs
    have = apply_to(Actual(), plan_vrfs(before, {})).vrfs
    moved = [x if x.iface_id != "vm4/0" else b(WEB, x.mac, "hv1", "198.19.1.14", "vm4/0") for x in BINDINGS]
    ops = plan_ops(compute_desired(snap(moved), "hv2").vrfs, have)
    assert ops == ["set-route t1 main 198.19.1.14/32 198.18.1.1", "del-rmac t1 198.18.2.1 02:52:4e:01:02:01"]


def test_plan_removes_a_whole_vrf_and_keeps_others_untouched():
    have = {"t1": VrfActual(l3vni=L3, irbs={DB: "198.19.2.1/24"}, routes={(MAIN, "0.0.0.0/0"): "198.18.250.1"}),
            "t2": VrfActual()}
    assert plan_ops({}, have) == ["del-irb t1 10200", "del-l3vni t1 50001"]


def test_plan_repairs_a_detached_gateway_and_a_border_rule():
    want = compute_desired(snap(), "dc1br").vrfs
    have = apply_to(Actual(), plan_vrfs(want, {})).vrfs
    have["t1"].transit_rule = False
    assert plan_ops(want, have) == ["add-l3vni t1 50001 border"]
    want = compute_desired(snap(), "hv1").vrfs
    have = apply_to(Actual(), plan_vrfs(want, {})).vrfs
    have["t1"].irbs[WEB] = ""  # the kernel read: its bridge port lost its bridge
    assert plan_ops(want, have) == ["add-irb t1 10100 198.19.1.1/24 " + ANYCAST]


def test_border_guards_the_tenant_subnets_against_sources_from_the_wan():
    want = compute_desired(snap(), "dc1br").vrfs
    assert want["t1"].guard == {"198.19.1.0/24", "198.19.2.0/24"}
    assert compute_desired(snap(), "hv1").vrfs["t1"].guard == frozenset()  # servers have no handoff
    have = {"t1": VrfActual(guard={"198.19.9.0/24"})}
    ops = plan_ops(want, have)
    assert "set-guard t1 198.19.1.0/24" in ops and "del-guard t1 198.19.9.0/24" in ops
    after = apply_to(Actual(vrfs=have), plan_vrfs(want, have)).vrfs
    assert plan_vrfs(want, after) == []


def test_a_copy_of_what_the_kernel_holds_changes_apart_from_it():
    import copy

    from roamnet.nve.plan import plan

    def programmed(s: Snapshot) -> Actual:
        want = compute_desired(s, "hv1")
        have = Actual(devices={"vm1/0": "tap1", "vm2/0": "tap2"}, ports={"vm1/0": None, "vm2/0": None})
        return apply_to(have, plan(want, have) + plan_vrfs(want.vrfs, have.vrfs))

    full = programmed(snap())
    assert full.segments and full.remote_macs and full.flood and full.arp and full.vrfs["t1"].routes
    before = copy.deepcopy(full)
    c = full.copy()
    assert c == full
    # vm4 leaves hv3 for hv1; WEB's flood list and host routes change, DB's go: the copy changes, not `full`
    moved = snap([*BINDINGS[:3], b(WEB, "02:00:00:01:00:14", "hv1", "198.19.1.14", "vm4/0")])
    want = compute_desired(moved, "hv1")
    apply_to(c, plan(want, c) + plan_vrfs(want.vrfs, c.vrfs) + plan_vrfs({}, c.vrfs))
    assert c != before and full == before
