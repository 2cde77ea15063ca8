"""An intent's records against the mapping a store holds: the ordered writes that make it hold them,
or the reasons not to. Pure; `MappingSystem.apply` does the I/O.

What `plan_apply(wanted, held)` decides:
  * tenants, CUGs (segments), the policy, L2 domains, NVEs and logical ports become exactly the
    intent's: added, changed or removed, key by key;
  * bindings are runtime state: an interface already bound keeps its binding (NVE, sequence number,
    move history, frozen/stopped/detached); only its addresses follow the intent. A new interface is
    bound to its server in the intent, detached (sequence 0), as at the first start: the NVE that
    sees its port up claims it. An interface whose VNI or MAC changed loses its old binding and gets
    a new one the same way; a removed interface loses its port and its binding;
  * the VLAN allocations of non-trivial domains follow (`rules.settle`, as after every move);
  * what would break the running system is refused (ApplyRefused, nothing written): removing or
    changing an NVE that still hosts bindings or moves (or the ToR serving such a server), changing
    or removing a VM with a move in progress, shrinking a domain's VLAN range under a VLAN in use,
    a domain with no VLAN left for a CUG that arrives.

The writes are ordered so that the mapping is consistent after each one (agents may read any prefix
when the writes do not fit in one transaction): first the bindings that go (and those whose interface
changes owner), then the ports that go; creations and changes in dependency order (tenants, segments,
the policy, domains, NVEs (ToRs first), VLAN allocations grown, ports, bindings); then the
allocations settled and the removals in reverse order (NVEs, domains, segments, tenants). So there is
never a binding without its port, segment, NVE or VLAN, nor a port without its segment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from roamnet.mapping.records import (
    DOMAINS,
    NVES,
    POLICY,
    PORTS,
    SEGMENTS,
    TENANTS,
    TOR,
    VLANS,
    VNIS,
    Binding,
    Domain,
    MappingRecords,
    Snapshot,
    binding_key,
    dump,
    dump_policy,
    dump_vlans,
)
from roamnet.mapping.rules import release, settle

KINDS = ("tenants", "segments", "policy", "domains", "nves", "ports", "bindings", "vlans")  # as reported
ADDED, CHANGED, REMOVED = "added", "changed", "removed"


class ApplyRefused(Exception):
    """The intent cannot be applied to the running mapping: every reason, nothing written."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Write:
    key: str
    value: str | None  # None: delete the key


@dataclass(frozen=True)
class Change:
    kind: str  # one of KINDS
    name: str
    what: str  # added | changed | removed


@dataclass(frozen=True)
class ApplyPlan:
    """The writes that make the store hold the intent (in an order that keeps the mapping consistent
    after each), and what they change, per key."""

    writes: tuple[Write, ...] = ()
    changes: tuple[Change, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.writes

    def net(self) -> dict[str, str | None]:
        """Every key's last write: what one transaction writes."""
        out: dict[str, str | None] = {}
        for w in self.writes:
            out[w.key] = w.value
        return out

    def batches(self, size: int | None,
                extra: Callable[[Write], dict[str, str | None]] | None = None) -> list[dict[str, str | None]]:
        """The writes as transactions of at most `size` keys each (None: one), in order; a key written
        twice inside one transaction is written once, with its last value. `extra(write)`: keys written
        with that write in its transaction (the /at/ index of a binding), counted in `size`."""
        more = [extra(w) if extra else {} for w in self.writes]
        if size is None or len(self.net()) + sum(map(len, more)) <= size:
            if not self.writes:
                return []
            one: dict[str, str | None] = {}
            for w, m in zip(self.writes, more):
                one[w.key] = w.value
                one.update(m)
            return [one]
        out: list[dict[str, str | None]] = [{}]
        for w, m in zip(self.writes, more):
            if w.key not in out[-1] and len(out[-1]) + 1 + len(m) > size:
                out.append({})
            out[-1][w.key] = w.value
            out[-1].update(m)
        return out

    def summary(self) -> dict[str, dict[str, list[str]]]:
        """kind -> added / changed / removed -> names (only what changes)."""
        out: dict[str, dict[str, list[str]]] = {}
        for c in self.changes:
            out.setdefault(c.kind, {}).setdefault(c.what, []).append(c.name)
        return out


@dataclass(frozen=True)
class ApplyResult:
    """What `MappingSystem.apply` did: the plan it carried out (or would, with dry_run), in how many
    transactions, and the mapping's revision after it."""

    plan: ApplyPlan
    txns: int
    revision: int
    dry_run: bool = False

    def to_json(self) -> dict:
        return {"changed": not self.plan.empty, "dry_run": self.dry_run, "txns": self.txns,
                "revision": self.revision, "changes": self.plan.summary()}


# ---- the plan ----------------------------------------------------------------------------------

def plan_apply(wanted: MappingRecords, held: Snapshot) -> ApplyPlan:
    """The writes that turn the mapping `held` into one that holds the intent's records `wanted`
    (see the module's docstring). Raises ApplyRefused with every reason it cannot."""
    ports = {p.iface_id: p for p in wanted.ports}
    nves = {n.name: n for n in wanted.nves}
    domains = {d.name: d for d in wanted.domains}
    bindings: dict[tuple[int, str], Binding] = {}
    new_owner: set[tuple[int, str]] = set()  # held keys that another VM's interface takes over
    for first in wanted.bindings:
        port = ports[first.iface_id]
        cur = held.bindings.get(first.key)
        if cur is not None and _owner(held, cur) == port.vm:  # runtime state: it stays where it is
            bindings[first.key] = replace(cur, ips=port.ips, iface_id=port.iface_id)
        else:
            bindings[first.key] = first
            if cur is not None:
                new_owner.add(first.key)
    problems = _refusals(wanted, held, nves, domains, bindings, new_owner)
    vlans, early, grown = _vlans(wanted, held, nves, domains, bindings, problems)
    if problems:
        raise ApplyRefused(problems)

    held_by_key = _by_key(held)
    want = _wanted_by_key(wanted, bindings, vlans)
    puts = {k: v for k, v in want.items() if held_by_key.get(k, (None, None))[1] != v[1]}
    gone = [k for k in held_by_key if k not in want]

    def put(prefix: str, order: Callable[[str], object] | None = None) -> list[Write]:
        keys = [k for k in puts if k.startswith(prefix)]
        return [Write(k, puts[k][0]) for k in (sorted(keys, key=order) if order else keys)]

    def delete(prefix: str, order: Callable[[str], object] | None = None) -> list[Write]:
        keys = [k for k in gone if k.startswith(prefix)]
        return [Write(k, None) for k in (sorted(keys, key=order) if order else keys)]

    tors_first = (lambda k: nves[k[len(NVES):]].role != TOR) if nves else None
    tors_last = lambda k: held.nves[k[len(NVES):]].role == TOR  # noqa: E731
    writes = [
        *delete(VNIS), *(Write(binding_key(*k), None) for k in sorted(new_owner)), *delete(PORTS),
        *(Write(VLANS + d, dump_vlans(a) if a else None) for d, a in early.items()),
        *put(TENANTS), *put(SEGMENTS), *put(POLICY), *put(DOMAINS), *put(NVES, tors_first),
        *(Write(VLANS + d, dump_vlans(a)) for d, a in grown.items()),
        *put(PORTS), *put(VNIS),  # (an apply writes bindings only under VNIS)
        *(w for w in put(VLANS) if grown.get(w.key[len(VLANS):]) != vlans.get(w.key[len(VLANS):])),
        *delete(VLANS), *delete(POLICY),
        *delete(NVES, tors_last), *delete(DOMAINS), *delete(SEGMENTS), *delete(TENANTS),
    ]
    changes = [Change(kind, name, ADDED if k not in held_by_key else CHANGED)
               for k, (_, _, kind, name) in ((k, want[k]) for k in puts)]
    changes += [Change(kind, name, REMOVED) for k in gone for _, _, kind, name in [held_by_key[k]]]
    changes.sort(key=lambda c: (KINDS.index(c.kind), (ADDED, CHANGED, REMOVED).index(c.what), c.name))
    return ApplyPlan(tuple(writes), tuple(changes))


def _owner(snap: Snapshot, b: Binding) -> str | None:
    """The VM whose interface binding `b` is (None if its port is not in `snap`)."""
    port = snap.ports.get(b.iface_id)
    return port.vm if port is not None else None


def _refusals(wanted: MappingRecords, held: Snapshot, nves: dict, domains: dict,
              bindings: dict[tuple[int, str], Binding], new_owner: set) -> list[str]:
    problems: list[str] = []
    ports = {p.iface_id: p for p in wanted.ports}
    for iface, mig in sorted(held.migrations.items()):  # a VM that is moving does not change
        before = held.ports.get(iface)
        vm = before.vm if before is not None else iface
        if before is None or ports.get(iface) != before:
            what = "removing" if iface not in ports else "changing"
            problems.append(f"vm {vm}: a move of {iface} from {mig.src} to {mig.dst} is in progress ({mig.state}): "
                            f"complete or abort it before {what} {vm}")
    users: dict[str, list[str]] = {}  # NVE -> what it hosts that stays (kept bindings, moves)
    for key, b in bindings.items():
        if key in held.bindings and key not in new_owner:
            users.setdefault(b.nve, []).append(b.iface_id)
    for mig in held.migrations.values():
        for end in (mig.src, mig.dst):
            users.setdefault(end, []).append(f"{mig.iface_id} (moving {mig.src} -> {mig.dst})")
    for name, what in list(users.items()):
        nve = held.nves.get(name)
        if nve is not None and nve.tor:
            users.setdefault(nve.tor, []).extend(f"{w} on {name}" for w in what)
    for name, what in sorted(users.items()):
        before, after = held.nves.get(name), nves.get(name)
        hosted = ", ".join(sorted(set(what)))
        if before is None or before == after:
            continue
        if after is None:
            problems.append(f"nve {name}: still hosts {hosted}: move it away (or remove it from the "
                            f"topology) before removing {name}")
        else:
            diffs = ", ".join(f"{f} {getattr(before, f) or '-'} -> {getattr(after, f) or '-'}"
                              for f in ("vtep", "dc", "role", "tor", "domain") if getattr(before, f) != getattr(after, f))
            problems.append(f"nve {name}: hosts {hosted}: it cannot change ({diffs}) while it does; move it "
                            "away first (an agent must be restarted for a new VTEP)")
    return problems


def _vlans(wanted: MappingRecords, held: Snapshot, nves: dict, domains: dict[str, Domain],
           bindings: dict, problems: list[str]) -> tuple[dict[str, dict[int, int]], dict, dict]:
    """Each domain's VLAN allocation once the intent holds (settled as `MappingSystem._sync_vlans`
    settles it after every binding change), and the intermediate allocations the ordered writes need
    so that no VLAN serves two CUGs in between: `grown` (what is held plus the arrivals, written before
    their bindings) and, only when an arrival takes a VLAN a departing CUG leaves, `early` (the
    departures released, written once their bindings are gone)."""
    final = Snapshot(0, nves=nves, ports={p.iface_id: p for p in wanted.ports}, bindings=bindings,
                     migrations=held.migrations, domains=domains)
    order = tuple(dict.fromkeys(b.vni for b in wanted.bindings))  # first come, first served, as at start
    out: dict[str, dict[int, int]] = {}
    early: dict[str, dict[int, int]] = {}
    grown: dict[str, dict[int, int]] = {}
    for name, domain in domains.items():
        used = held.vlans.get(name, {})
        present = final.present(domain)
        outside = sorted(v for v, vlan in used.items() if v in present and not domain.vlan_lo <= vlan <= domain.vlan_hi)
        if outside:
            problems.append(f"domain {name}: VLAN range {domain.range} leaves out "
                            + ", ".join(f"VLAN {used[v]} of VNI {v}" for v in outside)
                            + ", still in use: keep them in the range")
            continue
        alloc, missing = settle(domain, used, present, order)
        if missing:
            problems.append(f"domain {name}: VLAN range {domain.range} is exhausted: VNIs "
                            f"{', '.join(map(str, missing))} get no VLAN there ({len(alloc)} CUGs use it)")
            continue
        if alloc:
            out[name] = alloc
        arrivals = {v: vlan for v, vlan in alloc.items() if v not in used}
        if arrivals:
            leaving = {vlan for v, vlan in used.items() if v not in alloc}
            if leaving & set(arrivals.values()):
                early[name] = release(used, present)
            grown[name] = alloc if name in early else {**used, **arrivals}
    return out, early, grown


def _by_key(snap: Snapshot) -> dict[str, tuple[str, object, str, str]]:
    """What `snap` holds of the intent's kinds: key -> (value, record, kind, name)."""
    out: dict[str, tuple[str, object, str, str]] = {}
    for t in snap.tenants.values():
        out[TENANTS + t.name] = ("", t, "tenants", t.name)
    for s in snap.segments.values():
        out[f"{SEGMENTS}{s.vni}"] = ("", s, "segments", s.name)
    if snap.policy.rules or snap.policy.defaults:
        out[POLICY] = ("", snap.policy, "policy", "policy")
    for d in snap.domains.values():
        out[DOMAINS + d.name] = ("", d, "domains", d.name)
    for n in snap.nves.values():
        out[NVES + n.name] = ("", n, "nves", n.name)
    for p in snap.ports.values():
        out[PORTS + p.iface_id] = ("", p, "ports", p.iface_id)
    for b in snap.bindings.values():
        out[binding_key(*b.key)] = ("", b, "bindings", b.iface_id or f"{b.vni}/{b.mac}")
    for d, alloc in snap.vlans.items():
        out[VLANS + d] = ("", alloc, "vlans", d)
    return out


def _wanted_by_key(wanted: MappingRecords, bindings: dict[tuple[int, str], Binding],
                   vlans: dict[str, dict[int, int]]) -> dict[str, tuple[str, object, str, str]]:
    """What the mapping must hold: key -> (value, record, kind, name), in the intent's order."""
    out: dict[str, tuple[str, object, str, str]] = {}
    for t in wanted.tenants:
        out[TENANTS + t.name] = (dump(t), t, "tenants", t.name)
    for s in wanted.segments:
        out[f"{SEGMENTS}{s.vni}"] = (dump(s), s, "segments", s.name)
    if wanted.policy.rules or wanted.policy.defaults:
        out[POLICY] = (dump_policy(wanted.policy), wanted.policy, "policy", "policy")
    for d in wanted.domains:
        out[DOMAINS + d.name] = (dump(d), d, "domains", d.name)
    for n in wanted.nves:
        out[NVES + n.name] = (dump(n), n, "nves", n.name)
    for p in wanted.ports:
        out[PORTS + p.iface_id] = (dump(p), p, "ports", p.iface_id)
    for b in bindings.values():
        out[binding_key(*b.key)] = (dump(b), b, "bindings", b.iface_id)
    for d, alloc in vlans.items():
        out[VLANS + d] = (dump_vlans(alloc), alloc, "vlans", d)
    return out
