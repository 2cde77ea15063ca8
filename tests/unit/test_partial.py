"""Scoped passes (nve/partial.py) against the reference, over seeded random histories of moves, prepares,
activations, completions, aborts, stops and starts, detaches, advertisements, expiries, port changes and
policy changes (test_interest's):
  * merging the desired state of a batch's scope into the last whole one gives `compute_desired` of the
    whole mapping, and planning the scope against the kernel restricted to it gives exactly the changes
    the whole plan gives;
  * agents that follow the mapping and run scoped passes leave every NVE's kernel exactly as agents
    that run only whole passes do."""

from __future__ import annotations

import random

import pytest
from test_interest import NVES, History, build, kernel_ifaces, step

from roamnet.agent import loop
from roamnet.agent.loop import Agent
from roamnet.dataplane.model import ModelKernel
from roamnet.mapping.client import MappingClient
from roamnet.mapping.records import ROOT
from roamnet.mapping.view import MappingView
from roamnet.nve.desired import NveDesired, compute_desired
from roamnet.nve.interest import Scope, project, scope_of
from roamnet.nve.partial import merge, restrict
from roamnet.nve.plan import Actual, apply_to, plan, plan_vrfs

NVE_NAMES = [n.name for n in NVES if not n.tor]  # a server behind a ToR runs whole passes (agent/switch.py)


def programmed(want: NveDesired, ifaces: list[str]) -> Actual:
    """A kernel that holds exactly `want` (with the VM ports of `ifaces`, in no bridge, to begin with)."""
    have = Actual(ports={i: None for i in ifaces}, devices={i: "tap-" + i for i in ifaces})
    return apply_to(have, plan(want, have) + plan_vrfs(want.vrfs, have.vrfs))


@pytest.mark.parametrize("seed", range(12))
def test_merged_scope_and_its_plan_equal_the_whole_on_random_histories(seed):
    h = History(seed)
    rng, m, ports, view = h.rng, h.m, h.ports, h.view
    every = [p.iface_id for p in ports]
    kernels = {n: kernel_ifaces(rng, ports) for n in NVE_NAMES}
    last = {n: compute_desired(m.snapshot(), n) for n in NVE_NAMES}
    scoped = 0
    for i, op, touched in h.steps(60):
        full = m.snapshot()
        for n in NVE_NAMES:
            want = compute_desired(full, n)
            if not (touched.general or touched.reloaded):
                scope = scope_of(view, touched.vnis, touched.ifaces)
                snap = project(view, n, kernels[n], scope.vnis)[0]
                part = compute_desired(snap, n, scope.tenants, scope.l2)
                assert merge(last[n], part, scope) == want, f"seed {seed} step {i} ({op}): {n}'s merge differs"
                have = programmed(last[n], every)
                narrow = restrict(have, scope, part)
                assert plan(part, narrow) == plan(want, have), f"seed {seed} step {i} ({op}): {n}'s plan"
                assert plan_vrfs(part.vrfs, narrow.vrfs) == plan_vrfs(want.vrfs, have.vrfs), \
                    f"seed {seed} step {i} ({op}): {n}'s VRF plan"
                scoped += 1
            last[n] = want
    assert scoped > 300  # most batches are scoped (policy changes are not)


def test_a_move_scopes_its_cug_and_the_whole_of_its_tenant():
    m, ports = build()
    view = MappingView()
    items, rev = m.store.range(ROOT)
    view.load(items)
    web = next(p for p in ports if p.vni == 10100)
    m.report_move(web.iface_id, "hv5")
    touched = view.apply(m.store.watch(ROOT, rev + 1, timeout=0)[0])
    scope = scope_of(view, touched.vnis, touched.ifaces)
    # web and db are t1's: t1's VRF needs both; the L2 pieces of web alone; app (t2) and l2 stay out
    assert scope == Scope(frozenset({10100, 10200}), frozenset({"t1"}), frozenset({10100}))
    l2 = next(p for p in ports if p.vni == 10400)
    m.report_move(l2.iface_id, "hv5")
    touched = view.apply(m.store.watch(ROOT, touched.revision + 1, timeout=0)[0])
    assert scope_of(view, touched.vnis).tenants == frozenset()


def test_a_scope_leaves_a_border_s_other_tenants_alone():
    m, ports = build()
    view = MappingView()
    items, rev = m.store.range(ROOT)
    view.load(items)
    app = next(p for p in ports if p.vni == 10300 and m.snapshot().binding_of(p.iface_id).nve != "hv4")
    m.report_move(app.iface_id, "hv4")  # to dc2: br1 forwards to it without announcing it
    touched = view.apply(m.store.watch(ROOT, rev + 1, timeout=0)[0])
    scope = scope_of(view, {app.vni})
    snap = project(view, "br1", [], scope.vnis)[0]
    assert {b.vni for b in snap.bindings.values()} <= {10300}
    part = compute_desired(snap, "br1", scope.tenants)
    assert set(part.vrfs) == {"t2"}
    assert part.vrfs["t2"].routes[("transit", app.ips[0] + "/32")] == "198.18.2.1"
    assert touched.vnis >= {10300}


def tamper(rng: random.Random, kernels: list) -> str:
    """The same change to each of `kernels` (`Actual`s holding the same): a remote MAC, a flood list, a
    bridge port or a VRF's host route removed."""
    a = kernels[0]
    choices = [("remote_macs", k) for k in a.remote_macs] + [("flood", v) for v in a.flood]
    choices += [("ports", p) for p, v in a.ports.items() if v is not None]
    choices += [("route", (t, r)) for t, vrf in a.vrfs.items() for r in vrf.routes]
    if not choices:
        return "nothing to change"
    what, key = rng.choice(sorted(choices, key=repr))
    for k in kernels:
        if what == "ports":
            k.ports[key] = None
        elif what == "route":
            del k.vrfs[key[0]].routes[key[1]]
        else:
            del getattr(k, what)[key]
    return f"{what} {key} removed"


def settle(agents: list[Agent], rounds: int = 6) -> None:
    """Passes on every agent until a round changes nothing (claims write the mapping: bounded)."""
    for _ in range(rounds):
        if not any([a.reconcile() for a in agents]):
            return


@pytest.mark.parametrize("seed", range(6))
def test_scoped_agents_program_what_whole_passes_program(seed):
    """Two agents per NVE over one mapping, each with its own model kernel holding the same VM ports: one
    follows the feed and runs scoped passes, the other runs whole passes only. After every change and
    the passes it causes, both kernels hold the same."""
    rng = random.Random(100 + seed)
    m, ports = build()
    t = [0.0]

    def clock() -> float:  # each reading a second later: a segment's prune is never held for long
        t[0] += 1.0
        return t[0]
    ifaces = {n: [p.iface_id for p in rng.sample(ports, 7)] for n in NVE_NAMES}  # half the VM ports each
    pairs = {}
    for n in NVE_NAMES:
        nve = next(x for x in NVES if x.name == n)
        pair = []
        for scoped in (True, False):
            k = ModelKernel(f"{n}-{'scoped' if scoped else 'whole'}")
            for i in ifaces[n]:
                k.add_port(i)
            a = Agent(MappingClient(m), nve, k, clock=clock, publish_idle=False)
            a.scoped = scoped
            pair.append(a)
        pairs[n] = pair
    agents = [a for pair in pairs.values() for a in pair]
    unfollow = [a.client.follow(a._mapping_changed) for a in agents]
    for a, u in zip(agents, unfollow):
        a._unfollow = u
    try:
        settle(agents)
        for i in range(40):
            op = step(m, ports, rng)
            if rng.random() < 0.4:  # the hypervisor plugs or unplugs a VM port on one NVE: a kernel event
                n = rng.choice(NVE_NAMES)
                iface = rng.choice(ports).iface_id
                for a in pairs[n]:
                    (a.kernel.remove_port if iface in a.kernel.actual.devices else a.kernel.add_port)(iface)
                    a._link_event()
                op += f"; {n}'s port {iface} plugged or unplugged"
            elif rng.random() < 0.3:  # somebody else changed an NVE's kernel (then a kernel event): undone
                n = rng.choice(NVE_NAMES)
                op += f"; {n}'s kernel: {tamper(rng, [a.kernel.actual for a in pairs[n]])}"
                for a in pairs[n]:
                    a._link_event()
            settle(agents)
            for n, (inc, ref) in pairs.items():
                assert inc.kernel.actual == ref.kernel.actual, f"seed {seed} step {i} ({op}): {n}'s kernels differ"
        assert sum(pairs[n][0].stats.scoped_passes for n in pairs) > 0
        assert sum(pairs[n][0].stats.drift_scoped_passes for n in pairs) > 0  # kernel events stayed scoped
        assert sum(pairs[n][1].stats.scoped_passes for n in pairs) == 0
    finally:
        for u in unfollow:
            u()


def test_the_resync_period_follows_the_cost_of_a_whole_pass():
    m, ports = build()
    nve = next(x for x in NVES if x.name == "br1")
    a = Agent(MappingClient(m), nve, ModelKernel("br1"))
    a._unfollow = a.client.follow(a._mapping_changed)
    try:
        a.reconcile()  # the first pass is whole (it makes the border's VRFs, and reads the kernel again after)
        whole = a.stats.whole_pass_cpu_s
        assert whole > 0 and a.stats.scoped_passes == 0 and a.stats.kernel_reads == 2
        m.report_move(ports[0].iface_id, "hv5")
        a.reconcile()
        assert a.stats.scoped_passes == 1 and a.stats.whole_pass_cpu_s == whole  # a scoped pass leaves it
        assert a.stats.kernel_reads == 2
        a.stats.whole_pass_cpu_s = 0.001
        assert a.resync_s == loop.RESYNC_S
        a.stats.whole_pass_cpu_s = 1.0  # a border with every tenant's routes: a whole pass a second
        assert a.resync_s == 1.0 / loop.RESYNC_SHARE > loop.RESYNC_S
    finally:
        a._unfollow()
