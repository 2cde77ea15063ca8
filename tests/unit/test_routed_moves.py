"""Make-before-break for routed traffic: during a prepared move the destination NVE delivers the VM's
addresses locally, every other NVE keeps its /32 on the source until activation, and a packet for the
VM reaches it wherever it runs, whichever NVEs have applied the activation and whichever have not.

The forwarding walk below follows a packet for the VM through the NVEs' desired states (VRF: neighbour
entry or /32; L2: bridge entry, "dual", unicast VXLAN entry, head-end replication), the way the kernel
forwards it, so that every mix of old and new states during an activation can be checked."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from test_routing import BINDINGS, DB, NVES, WEB, b, snap

from roamnet.mapping.records import ACTIVATED, PREPARED, Migration
from roamnet.nve.desired import NveDesired, compute_desired
from roamnet.nve.vrf import MAIN, TRANSIT

VM1_IP, VM1_MAC = "198.19.1.11", "02:00:00:01:00:11"
KEY = (WEB, VM1_MAC)
SERVERS = ("hv1", "hv2", "hv3")
ALL = SERVERS + ("dc1br", "dc2br")
VTEP_OF = {n.vtep: name for name, n in NVES.items()}
TTL = 8


def prepared_to(dst: str, state: str = PREPARED) -> Migration:
    return Migration("vm1/0", WEB, VM1_MAC, "hv1", dst, NVES[dst].vtep, state, 0.0)


def moved_to(dst: str, bindings: list = BINDINGS) -> list:
    return [x if x.iface_id != "vm1/0" else b(WEB, VM1_MAC, dst, VM1_IP, "vm1/0") for x in bindings]


def states(s) -> dict[str, NveDesired]:
    return {n: compute_desired(s, n) for n in ALL}


def bridge(d: NveDesired, from_vxlan: bool) -> set[str]:
    """Where NVE `d`'s bridge of the VM's CUG sends a frame to the VM: "port" (the VM's port here) and
    the NVEs it sends it to over the CUG's VNI. A frame that came in by VXLAN never goes back out."""
    if WEB not in d.segments:
        return set()
    local = any(p.vni == WEB and p.mac == VM1_MAC for p in d.local_ports.values())
    out: set[str] = set()
    if KEY in d.dual:  # no bridge entry: flooded to the local port and the VXLAN device
        out |= {"port"} if local else set()
        if not from_vxlan and KEY in d.remote_macs:
            out.add(VTEP_OF[d.remote_macs[KEY]])
    elif local:  # a bridge entry on the port
        out.add("port")
    elif not from_vxlan and KEY in d.replicated:
        out |= {VTEP_OF[v] for v in d.flood[WEB]}
    elif not from_vxlan and KEY in d.remote_macs:
        out.add(VTEP_OF[d.remote_macs[KEY]])
    return out


def walk(nves: dict[str, NveDesired], at: str, tenant: str = "t1") -> set[str]:
    """The NVEs whose VM port gets a packet for the VM that NVE `at` routes (its VRF: from a local VM
    in another CUG, from the L3 VNI, from the WAN). Raises on a loop (TTL exceeded) or a drop."""
    got: set[str] = set()
    todo = [(at, TTL)]
    while todo:
        nve, ttl = todo.pop()
        assert ttl > 0, f"routing loop for {VM1_IP} through {nve}"
        assert tenant in nves[nve].vrfs, f"{nve} has no VRF of {tenant} any more: {VM1_IP} dropped there"
        v = nves[nve].vrfs[tenant]
        if VM1_IP in v.neighbors:  # routed into the CUG's bridge here
            for hop in bridge(nves[nve], from_vxlan=False):
                if hop == "port":
                    got.add(nve)
                else:
                    got |= {hop} if "port" in bridge(nves[hop], from_vxlan=True) else set()
            continue
        via = v.routes.get((TRANSIT, VM1_IP + "/32")) or v.routes.get((MAIN, VM1_IP + "/32"))
        assert via, f"{nve} has no route to {VM1_IP}"
        todo.append((VTEP_OF[via], ttl - 1))
    return got


def test_destination_delivers_locally_from_prepare_on_and_the_rest_keep_the_source():
    nves = states(snap(migrations=[prepared_to("hv3")]))
    v3 = nves["hv3"].vrfs["t1"]
    assert v3.neighbors[VM1_IP] == (WEB, VM1_MAC) and (MAIN, VM1_IP + "/32") not in v3.routes
    assert WEB in v3.gateways
    assert nves["hv1"].vrfs["t1"].neighbors[VM1_IP] == (WEB, VM1_MAC)  # the source: still local
    assert nves["hv2"].vrfs["t1"].routes[(MAIN, VM1_IP + "/32")] == NVES["hv1"].vtep
    assert nves["dc1br"].vrfs["t1"].routes[(MAIN, VM1_IP + "/32")] == NVES["hv1"].vtep  # still announced by dc1
    assert nves["dc2br"].vrfs["t1"].routes[(TRANSIT, VM1_IP + "/32")] == NVES["hv1"].vtep
    assert (MAIN, VM1_IP + "/32") not in nves["dc2br"].vrfs["t1"].routes  # dc2 announces it at activation


def test_activation_leaves_the_destination_as_it_was_and_switches_everybody_else():
    before = states(snap(migrations=[prepared_to("hv3")]))
    after = states(snap(moved_to("hv3"), [prepared_to("hv3", ACTIVATED)]))
    assert after["hv3"].vrfs["t1"] == before["hv3"].vrfs["t1"]
    for n in ("hv1", "hv2"):
        assert after[n].vrfs["t1"].routes[(MAIN, VM1_IP + "/32")] == NVES["hv3"].vtep
    assert after["dc2br"].vrfs["t1"].routes[(MAIN, VM1_IP + "/32")] == NVES["hv3"].vtep
    assert after["dc1br"].vrfs["t1"].routes[(TRANSIT, VM1_IP + "/32")] == NVES["hv3"].vtep


def test_an_aborted_move_gives_the_destination_its_route_back():
    v3 = compute_desired(snap(), "hv3").vrfs["t1"]
    assert v3.routes[(MAIN, VM1_IP + "/32")] == NVES["hv1"].vtep and VM1_IP not in v3.neighbors


def test_a_destination_that_hosts_no_routed_cug_yet_gets_the_vrf_with_the_vm_local():
    # hv2 hosts only db; the prepared move of vm1 (web) brings web's segment, gateway and vm1's neighbour
    v2 = compute_desired(snap(migrations=[prepared_to("hv2")]), "hv2").vrfs["t1"]
    assert v2.gateways == {WEB: "198.19.1.1/24", DB: "198.19.2.1/24"}
    assert v2.neighbors[VM1_IP] == (WEB, VM1_MAC)


def test_before_activation_a_routed_packet_reaches_the_vm_on_both_ends_from_every_nve():
    nves = states(snap(migrations=[prepared_to("hv3")]))
    for sender in ALL:
        assert walk(nves, sender) == {"hv1", "hv3"}, sender


@pytest.mark.parametrize("alone", [False, True], ids=["source-keeps-a-routed-vm", "vm-alone-on-the-source"])
def test_an_activation_applied_in_any_order_never_loses_or_loops_a_routed_packet(alone):
    """Each NVE's L2 and VRF state is either the prepared one or the activated one (an agent applies
    a pass's changes one by one), in every combination: the VM, running on the destination by then,
    gets every packet routed from any NVE. (A segment the activation leaves unneeded, the source's,
    keeps its entries in the kernel until it is removed, at least 0.5 s later, after that pass's VRF
    changes: agent/loop.py's prune hold; the state after that is checked last.) `alone`: the moving
    VM is the tenant's only VM on the source, whose VRF must still forward until the move completes."""
    bindings = [x for x in BINDINGS if not (alone and x.iface_id == "vm2/0")]
    old = states(snap(bindings, migrations=[prepared_to("hv3")]))
    new = states(snap(moved_to("hv3", bindings), [prepared_to("hv3", ACTIVATED)]))
    assert WEB not in new["hv1"].segments  # the source's web segment goes once it is pruned
    held = {n: old[n] if WEB in old[n].segments - new[n].segments else new[n] for n in ALL}
    for mix in itertools.product((0, 1, 2, 3), repeat=len(ALL)):
        nves = {}
        for n, m in zip(ALL, mix):
            l2, vrf = (old, held)[m & 1][n], (old, new)[m >> 1][n]
            nves[n] = replace(l2, vrfs=vrf.vrfs)
        for sender in ALL:
            assert "hv3" in walk(nves, sender), (sender, dict(zip(ALL, mix)))
    for sender in ALL:
        assert walk(new, sender) == {"hv3"}, sender


def test_an_inter_dc_move_reaches_the_vm_through_either_border_while_bgp_converges():
    old = states(snap(migrations=[prepared_to("hv3")]))
    new = states(snap(moved_to("hv3"), [prepared_to("hv3", ACTIVATED)]))
    for br in ("dc1br", "dc2br"):  # the WAN router may still send to the old border, or already to the new
        assert "hv3" in walk(new, br) and walk(old, br) == {"hv1", "hv3"}


def test_the_source_keeps_its_vrf_until_the_move_completes():
    """The moving VM was the tenant's only one on hv1: after activation hv1 hosts nothing routed of the
    tenant, yet senders that have not switched still route to it; its VRF stays (no gateway, a /32 to
    the destination) until the move completes."""
    alone = [x for x in BINDINGS if x.iface_id != "vm2/0"]
    v1 = compute_desired(snap(moved_to("hv3", alone), [prepared_to("hv3", ACTIVATED)]), "hv1").vrfs["t1"]
    assert v1.gateways == {} and v1.neighbors == {}
    assert v1.routes[(MAIN, VM1_IP + "/32")] == NVES["hv3"].vtep
    assert compute_desired(snap(moved_to("hv3", alone)), "hv1").vrfs == {}  # completed: the VRF goes
