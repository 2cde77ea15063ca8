"""The mapping system (the NVA of NVO3): where every VM interface is, over a store, with EVPN's rules.

Records and keys are `records`'s; the rules (mobility, VLAN allocation) are `rules`'s pure functions.
This module only reads and writes them: every read-modify-write is one compare-and-swap with retry
(`Store.update`), and every change of the records also writes /revision in the same transaction, so
the mapping's revision moves with the mapping and not with the agents' status keys.

L2 physical domains (draft §3.1): a server in a non-trivial domain is not an NVE; its ToR is. Its
bindings name the server (where the VM's port is) with the ToR's VTEP, so a move between two servers
behind one ToR changes nothing any other NVE holds. A binding or a prepared move into a domain claims
the CUG's VLAN there first; after every change of bindings or migrations the domain's allocation is
made to match the CUGs present.

Make-before-break (a planned move): `prepare` records the destination while the binding stays on
the source, so every NVE can get ready (the destination hosts the port, everybody else delivers the
VM's frames to both places); `activate` (the VM announced itself on its new port, or the orchestrator
says so) moves the binding with the usual sequence bump, which withdraws the old location; `complete`
drops the record once every NVE has programmed the move; `abort` rolls back a move never activated.

Convergence (like OVN's nb_cfg / hv_cfg): each NVE's agent publishes /status/<nve> with the mapping
revision it has fully programmed; `statuses` (status.py) reads those, never an agent's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from roamnet.mapping.apply import ApplyPlan, ApplyRefused, ApplyResult, plan_apply
from roamnet.mapping.records import (
    ACTIVATED,
    BORDER,
    DOMAINS,
    NVES,
    POLICY,
    PORTS,
    PREPARED,
    REVISION,
    ROOT,
    SEGMENTS,
    SERVER,
    TENANTS,
    TOR,
    VLANS,
    Binding,
    Domain,
    LogicalPort,
    MappingRecords,
    Migration,
    Nve,
    PolicySet,
    Segment,
    Snapshot,
    Tenant,
    binding_key,
    decode_record,
    decode_snapshot,
    dump,
    dump_policy,
    dump_vlans,
    index_keys,
    index_writes,
    load,
    load_vlans,
    migration_key,
    vni_key,
)
from roamnet.mapping.rules import VlanExhausted, allocate, detect_duplicate, move, recent_moves, resolve, settle
from roamnet.mapping.status import Statuses
from roamnet.mapping.store.base import CAS_RETRIES, KEEP, CasConflict, Conflicted, KeyValue, Store
from roamnet.mapping.view import MappingFeed

log = logging.getLogger(__name__)


class MoveRefused(Exception):
    pass


class Refused(MoveRefused):
    """A report the mobility rules refuse (`reason`: frozen | sticky); the agent counts these."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# who says a VM interface arrived on an NVE
PORT_UP = "port"  # its port is up there: a claim only while the binding's own NVE has no port up for it
ANNOUNCED = "announcement"  # the VM's own RARP / gratuitous ARP on that port
ORCHESTRATOR = "orchestrator"  # an explicit activation
FROZEN, STICKY, STOPPED = "frozen", "sticky", "stopped"


def _record(key: str, value: object) -> object:
    """The binding or move stored at `key` with `value` (None for other keys, a delete or KEEP)."""
    if not isinstance(value, str) or vni_key(key) is None:
        return None
    rec = decode_record(key, value)
    return rec[2] if rec else None


def _apply_index(held: Snapshot, w) -> dict[str, str | None]:
    """The /at/ index writes of one of apply's writes (a binding put or deleted; `held` has the old one)."""
    vk = vni_key(w.key)
    if vk is None or vk[0] != "bindings":
        return {}
    _, vni, mac = vk
    new = _record(w.key, w.value)
    # a put writes its own index keys whatever came before it (the same key may be deleted earlier in the plan)
    return {**index_writes(held.bindings.get((int(vni), mac)), new), **{k: "" for k in index_keys(new)}}


class MappingSystem:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time, agent_interest: bool | None = None):
        self.store = store
        self.agent_interest = agent_interest  # the agents' feed watches only their interest (None: if REMOTE)
        self.clock = clock  # wall clock: move times (duplicate detection) and deadlines are shared records
        self._snap: Snapshot | None = None  # the last snapshot: shared by every reader at that revision
        self._snap_lock = threading.Lock()
        self.statuses = Statuses(store, lambda: self.revision)  # what the agents published
        self._feed: MappingFeed | None = None
        self._agent_feed: MappingFeed | None = None

    @property
    def feed(self) -> MappingFeed:
        """The process's view of the mapping, kept current by one watch (view.py); made at first use."""
        with self._snap_lock:
            if self._feed is None:
                self._feed = MappingFeed(self.store)
            return self._feed

    @property
    def agent_feed(self) -> MappingFeed:
        """The process's agents' view: only what they want, sent by the store (store-side interest,
        view.py), where the store serves it as a stream (`agent_interest`: by default a store that says
        `REMOTE`, etcd); else the whole `feed`. Not by default on the embedded store: its agents (unit
        tests, the in-process lab) run passes synchronously and rely on `catch_up` bringing the view to
        the store's revision, which a feed whose thread takes the stream's events does not promise (a
        property test comparing scoped and whole passes failed once under load that way)."""
        with self._snap_lock:
            if self._agent_feed is None:
                interest = self.agent_interest
                if interest is None:
                    interest = self.store.REMOTE
                self._agent_feed = MappingFeed(self.store, interest=interest and self.store.WATCH_SETS)
            return self._agent_feed

    # ---- writing -------------------------------------------------------------------------------
    def _write(self, writes: Mapping[str, str | None], expect: Mapping[str, int] | None = None) -> int:
        """One transaction of record changes, with the mapping's revision and the /at/ index of the
        bindings and moves it creates (a key it replaces goes through `_update`, which knows the old one)."""
        index: dict[str, str | None] = {}
        for key, value in writes.items():
            rec = _record(key, value)
            if rec is not None:
                if (expect or {}).get(key) != 0:
                    raise ValueError(f"{key}: a binding or move is replaced through _update "
                                     "(its index needs the old one)")
                index.update(index_writes(None, rec))
        return self.store.txn({**writes, **index, REVISION: ""}, expect)

    def _update(self, key: str, change: Callable[[KeyValue | None], object],
                also: Callable[[], Mapping[str, str | None]] | None = None,
                guard: Callable[[], Mapping[str, int]] | None = None) -> tuple[KeyValue | None, int | None]:
        """`Store.update` with the mapping's revision and the /at/ index of the key's record (as `change`
        read and wrote it). `also` writes records whose NVEs it leaves as they are (a move's activation:
        `guard` holds it as read), so their index keys stay as they are, and are not written again (a
        put of an unchanged key is still an event to every process that watches it)."""
        seen: dict[str, object] = {}

        def step(kv: KeyValue | None):
            new = change(kv)
            seen["kv"], seen["new"] = kv, new
            return new

        def more() -> dict[str, str | None]:
            extra = dict(also()) if also else {}
            kv, new = seen["kv"], seen["new"]
            index = index_writes(_record(key, kv.value) if kv else None, _record(key, new))  # type: ignore[union-attr]
            return {**extra, **index, REVISION: ""}

        try:
            return self.store.update(key, step, also=more, guard=guard)
        except Conflicted as exc:
            raise MoveRefused(str(exc)) from None

    def apply(self, records: MappingRecords, dry_run: bool = False, max_ops: int | None = None) -> ApplyResult:
        """Make the mapping hold an intent's records (`apply.plan_apply`: a diff against what the store
        holds; bindings are runtime state and stay; ApplyRefused, with nothing written, for what would
        break the running system). The writes go in one transaction when they fit (the store's
        `max_txn_ops` and `max_ops`, each counting /revision), else in an ordered sequence of them
        that leaves the mapping consistent after each. Every transaction compares /revision with the
        revision it was planned from (or the previous one wrote): a concurrent change, or an earlier
        apply left half done, is read afresh and planned again, so a second apply finishes an
        interrupted one and an apply with nothing to change writes nothing."""
        limits = [n for n in (getattr(self.store, "max_txn_ops", None), max_ops) if n]
        size = min(limits) - 1 if limits else None  # one operation is /revision
        if size is not None and size < 1:
            raise ValueError(f"a transaction of {size + 1} operations has no room for a write")
        first: ApplyPlan | None = None
        txns = 0
        for _ in range(CAS_RETRIES):
            held = self.snapshot()
            plan = plan_apply(records, held)
            first = first if txns else plan  # what this apply changes: from the read before its first write
            if dry_run or plan.empty:
                return ApplyResult(first, txns, held.revision, dry_run)
            rev = held.revision
            try:
                for batch in plan.batches(size, lambda w: _apply_index(held, w)):
                    rev = self.store.txn({**batch, REVISION: ""}, {REVISION: rev})
                    txns += 1
            except CasConflict:
                continue  # the mapping changed under this apply: plan again from a fresh read
            return ApplyResult(first, txns, rev)
        raise ApplyRefused([f"the mapping changed {CAS_RETRIES} times while this apply was planning; "
                            "nothing more was written: try again"])

    def register_nve(self, nve: Nve) -> None:
        self._write({NVES + nve.name: dump(nve)})

    def register_port(self, port: LogicalPort) -> None:
        self._write({PORTS + port.iface_id: dump(port)})

    def register_tenant(self, tenant: Tenant) -> None:
        self._write({TENANTS + tenant.name: dump(tenant)})

    def register_segment(self, segment: Segment) -> None:
        self._write({f"{SEGMENTS}{segment.vni}": dump(segment)})

    def register_domain(self, domain: Domain) -> None:
        self._write({DOMAINS + domain.name: dump(domain)})

    def register_policy(self, policy: PolicySet) -> None:
        self._write({POLICY: dump_policy(policy)})

    # ---- reading -------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The mapping's revision: the store revision of its last change (0: empty)."""
        kv = self.store.get(REVISION)
        return kv.mod_revision if kv else 0

    def snapshot(self) -> Snapshot:
        """The mapping now. Snapshots are immutable by convention: one decoded snapshot per mapping
        revision is shared by all readers in the process (32 agents decoding the same store after
        every move cost more than programming the move)."""
        cached = self._snap
        if cached is not None and cached.revision == self.revision:
            return cached
        items, _ = self.store.range(ROOT)
        snap = decode_snapshot(items)
        with self._snap_lock:
            if self._snap is None or snap.revision > self._snap.revision:
                self._snap = snap
        return snap

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float) -> Snapshot | None:
        """Wait until predicate(snapshot) holds; returns that snapshot or None on timeout."""
        deadline = time.monotonic() + timeout
        rev = 0
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            _, rev = self.store.watch(ROOT, max(rev, snap.revision + 1), timeout=min(left, 0.5))

    # ---- moves ---------------------------------------------------------------------------------
    def advertise(self, proposed: Binding) -> Binding:
        """Apply an advertisement with the mobility rules; returns the binding that holds after it."""
        seen: dict[str, Binding | None] = {}

        def change(kv: KeyValue | None):
            current = load(Binding, kv.value) if kv else None
            winner = resolve(current, proposed)
            seen["current"], seen["winner"] = current, winner
            if current is not None and winner == current:
                return KEEP
            self._claim_vlan(winner.nve, winner.vni)
            return dump(winner)

        _, rev = self._update(binding_key(proposed.vni, proposed.mac), change)
        current, winner = seen["current"], seen["winner"]
        if rev is None:
            log.info("stale advertisement ignored: %s (holds: %s)", proposed, current)
            return current
        self._sync_vlans(current.nve if current else "", winner.nve)
        return winner

    def report_move(self, iface_id: str, nve_name: str, by: str = ANNOUNCED) -> tuple[Binding, bool]:
        """An NVE saw `iface_id` arrive (`by`: PORT_UP, ANNOUNCED, ORCHESTRATOR). Returns (binding,
        changed). The mobility rules (docs/architecture.md, "Mobility safety"):
          * a port being up claims the interface only while its binding is detached (its own NVE has no
            port up for it): two ports up at once never move it;
          * a stopped binding (a cold move) is reserved: only `start` moves it (Refused, reason stopped);
          * a sticky interface never moves by a report (Refused, reason sticky), only by a planned move;
          * a frozen binding does not move (Refused, reason frozen) until it thaws or is unfrozen;
          * the `max_moves`-th move within `window_s` (the CUG's) is a duplicate: the binding freezes
            where it is instead of moving (Refused, reason frozen)."""
        port, nve = self._port_and_nve(iface_id, nve_name)
        seg = self._segment(port.vni)
        now = self.clock()
        seen: dict[str, object] = {}
        mig_key = migration_key(port.vni, iface_id)

        def change(kv: KeyValue | None):
            current = load(Binding, kv.value) if kv else None
            seen["current"], seen["refused"], seen["activated"] = current, None, None
            kv_mig = self.store.get(mig_key)
            mig = load(Migration, kv_mig.value) if kv_mig else None
            seen["mig_rev"] = kv_mig.mod_revision if kv_mig else 0
            planned = mig is not None and mig.dst == nve.name  # the orchestrator moves it: sticky or not
            if current is not None and current.nve == nve.name:
                return KEEP
            if current is not None and current.stopped:
                seen["refused"] = Refused(f"{iface_id} is stopped (last on {current.nve}): only a start moves it; "
                                          f"{nve.name}'s claim refused", STOPPED)
                return KEEP
            if current is not None and port.sticky and not planned:
                seen["refused"] = Refused(f"{iface_id} is sticky on {current.nve}: {nve.name} may not claim it", STICKY)
                return KEEP
            if current is not None and current.frozen_at(now):
                seen["refused"] = Refused(f"{iface_id} is frozen on {current.nve} (duplicate MAC {port.mac}): "
                                          f"{nve.name}'s claim ignored", FROZEN)
                return KEEP
            if by == PORT_UP and current is not None and not current.detached:
                return KEEP  # the VM's port is up where it is bound: another port up proves nothing
            history = current.moves if current is not None and not current.frozen else ()  # a thawed one starts afresh
            recent = recent_moves(history, now, seg.window_s)
            stable = current.stable if current is not None and recent and current.stable else (
                current.nve if current is not None else nve.name)
            moves, duplicate = detect_duplicate(history, now, seg.max_moves, seg.window_s)
            if current is not None and duplicate:  # freeze where it was before the moves began
                until = now + seg.hold_down_s if seg.hold_down_s else 0.0
                home = self._nve(stable) or self._nve(current.nve)
                frozen = replace(current, frozen=True, frozen_until=until, moves=moves, stable=stable)
                if home is not None and home.name != current.nve:
                    frozen = replace(move(current, port, home), frozen=True, frozen_until=until, moves=moves,
                                     stable=stable)
                    self._claim_vlan(home.name, port.vni)
                seen["frozen"] = frozen
                seen["refused"] = Refused(f"{iface_id}: MAC {port.mac} moved {len(moves) - 1} times in "
                                          f"{seg.window_s:g} s and now to {nve.name}: a duplicate; frozen on "
                                          f"{frozen.nve}, where it was before", FROZEN)
                return dump(frozen)
            seen["new"] = new = replace(move(current, port, nve), moves=moves, stable=stable)  # not frozen, attached
            self._claim_vlan(nve.name, port.vni)  # refuses the move if the domain has no VLAN left
            if planned and mig.state == PREPARED:  # the move's activation, in the same transaction
                seen["activated"] = replace(mig, state=ACTIVATED, deadline=now + mig.completion_s)
            return dump(new)

        def also() -> dict[str, str]:
            act = seen.get("activated")
            return {mig_key: dump(act)} if act is not None else {}

        def guard() -> dict[str, int]:  # the migration as `change` read it
            return {mig_key: seen["mig_rev"]} if seen.get("activated") is not None else {}

        _, rev = self._update(binding_key(port.vni, port.mac), change, also, guard)
        current = seen["current"]
        if seen["refused"] is not None:
            if rev is not None:
                log.warning("%s", seen["refused"])
                if current is not None and seen.get("frozen") is not None:
                    self._sync_vlans(current.nve, seen["frozen"].nve)  # type: ignore[union-attr]
            raise seen["refused"]  # type: ignore[misc]
        if rev is None or "new" not in seen:
            if current is not None and current.nve == nve.name:
                self._mark_activated(iface_id, nve.name)
            return current, False  # type: ignore[return-value]
        new = seen["new"]
        self._sync_vlans(current.nve if current else "", nve.name)
        log.info("move %s: %s -> %s seq %d (%s)", iface_id, current.nve if current else "-", nve.name, new.seq, by)
        return new, True  # type: ignore[return-value]

    def stop(self, iface_id: str) -> Binding:
        """A cold move's first half: the VM is stopped and its port gone. The binding stays, stopped:
        its MAC and addresses are reserved, no NVE forwards to it or answers ARP for it, flood lists
        no longer count its NVE. Only `start` moves it on."""
        return self._change_binding(iface_id, lambda b: replace(b, stopped=True, detached=True))[1]

    def start(self, iface_id: str, nve_name: str) -> Binding:
        """A cold move's second half: the stopped VM starts on `nve_name` (the binding moves there with
        the next sequence number, detached until that NVE sees its port up). Counts as a move."""
        port, nve = self._port_and_nve(iface_id, nve_name)
        seg = self._segment(port.vni)
        now = self.clock()

        def change(b: Binding) -> Binding:
            if not b.stopped:
                raise MoveRefused(f"{iface_id} is not stopped (it runs on {b.nve}): migrate it, or stop it first")
            moves, _ = detect_duplicate(b.moves if not b.frozen else (), now, seg.max_moves, seg.window_s)
            started = replace(move(b, port, nve), moves=moves, stable=nve.name, detached=True)
            self._claim_vlan(nve.name, port.vni)
            return started

        before, started = self._change_binding(iface_id, change)
        self._sync_vlans(before.nve, nve.name)
        log.info("start %s on %s seq %d (cold move from %s)", iface_id, nve.name, started.seq, before.nve)
        return started

    def _change_binding(self, iface_id: str, change: Callable[[Binding], Binding]) -> tuple[Binding, Binding]:
        """Read-modify-write of `iface_id`'s binding (`change` may raise MoveRefused): (as read, as left)."""
        kv_port = self.store.get(PORTS + iface_id)
        if kv_port is None:
            raise MoveRefused(f"unknown VM interface {iface_id!r}")
        port = load(LogicalPort, kv_port.value)
        seen: dict[str, Binding] = {}

        def step(kv: KeyValue | None):
            if kv is None:
                raise MoveRefused(f"{iface_id} is bound nowhere")
            seen["old"] = b = load(Binding, kv.value)
            seen["new"] = new = change(b)
            return KEEP if new == b else dump(new)

        self._update(binding_key(port.vni, port.mac), step)
        return seen["old"], seen["new"]

    def set_detached(self, iface_id: str, nve_name: str, detached: bool) -> bool:
        """The binding's own NVE says whether it has a port up for `iface_id` (anyone else: no-op).
        Returns whether the record changed."""
        old, new = self._change_binding(iface_id, lambda b: b if b.nve != nve_name or b.stopped
                                        else replace(b, detached=detached))
        return old != new

    def unfreeze(self, iface_id: str) -> Binding:
        """Thaw a frozen binding (it stays where it is; its move history starts afresh)."""
        return self._change_binding(iface_id, lambda b: replace(b, frozen=False, frozen_until=0.0, moves=()))[1]

    def _nve(self, name: str) -> Nve | None:
        kv = self.store.get(NVES + name) if name else None
        return load(Nve, kv.value) if kv else None

    def _segment(self, vni: int) -> Segment:
        kv = self.store.get(f"{SEGMENTS}{vni}")
        return load(Segment, kv.value) if kv else Segment(vni, str(vni), "")

    def _port_and_nve(self, iface_id: str, nve_name: str) -> tuple[LogicalPort, Nve]:
        kv_port, kv_nve = self.store.get(PORTS + iface_id), self.store.get(NVES + nve_name)
        if kv_port is None:
            raise MoveRefused(f"unknown VM interface {iface_id!r}")
        if kv_nve is None:
            raise MoveRefused(f"unknown NVE {nve_name!r}")
        nve = load(Nve, kv_nve.value)
        if nve.role != SERVER:
            what = {BORDER: "border router", TOR: "ToR switch"}.get(nve.role, nve.role)
            raise MoveRefused(f"{nve_name!r} is a {what}: it hosts no VMs")
        return load(LogicalPort, kv_port.value), nve

    # ---- VLANs of non-trivial domains ------------------------------------------------------------
    def _domain(self, node: str) -> Domain | None:
        nve = self._nve(node)
        name = nve.domain if nve is not None else ""
        kv = self.store.get(DOMAINS + name) if name else None
        return load(Domain, kv.value) if kv else None

    def _claim_vlan(self, node: str, vni: int) -> None:
        """Give CUG `vni` a VLAN in `node`'s domain (if non-trivial and it has none yet), or refuse."""
        domain = self._domain(node)
        if domain is None:
            return

        def change(kv: KeyValue | None):
            used = load_vlans(kv.value) if kv else {}
            try:
                new = allocate(domain, used, vni)
            except VlanExhausted as exc:
                raise MoveRefused(str(exc)) from None
            return KEEP if new is used else dump_vlans(new)

        if self._update(VLANS + domain.name, change)[1] is not None:
            log.info("domain %s: VNI %d gets a VLAN", domain.name, vni)

    def _sync_vlans(self, *nodes: str) -> None:
        """Make the allocation of each node's domain match the CUGs present there: release the VLANs
        of CUGs that left, allocate for present ones that have none (a release that raced with an
        allocation). Called after every change of bindings or prepared moves."""
        for domain in {d.name: d for n in nodes if (d := self._domain(n)) is not None}.values():
            def change(kv: KeyValue | None, domain: Domain = domain):
                used = load_vlans(kv.value) if kv else {}
                new, missing = settle(domain, used, self.snapshot().present(domain))
                if missing:
                    log.warning("domain %s: VLAN range %s exhausted: VNIs %s get no VLAN", domain.name,
                                domain.range, ", ".join(map(str, missing)))
                if new == used:
                    return KEEP
                return dump_vlans(new) if new else None

            try:
                if self._update(VLANS + domain.name, change)[1] is not None:
                    log.info("domain %s: VLANs %s", domain.name, self.snapshot().vlans.get(domain.name, {}))
            except MoveRefused as exc:  # the next change of the domain's members syncs again
                log.warning("domain %s: %s", domain.name, exc)

    # ---- make-before-break ---------------------------------------------------------------------
    def _migration_key(self, iface_id: str) -> str | None:
        """Where a move of `iface_id` would be (under its port's VNI); None: no such port."""
        kv = self.store.get(PORTS + iface_id)
        return migration_key(load(LogicalPort, kv.value).vni, iface_id) if kv else None

    def migration(self, iface_id: str) -> Migration | None:
        key = self._migration_key(iface_id)
        kv = self.store.get(key) if key else None
        return load(Migration, kv.value) if kv else None

    def _change_migration(self, iface_id: str, change: Callable[[Migration], Migration | None]) -> Migration | None:
        """Compare-and-swap on a migration record: `change(mig)` returns the new record, None to
        delete it, `mig` itself to leave it, or raises MoveRefused. Returns the record it saw."""
        seen: dict[str, Migration] = {}

        def step(kv: KeyValue | None):
            seen.clear()
            if kv is None:
                return KEEP
            seen["mig"] = mig = load(Migration, kv.value)
            new = change(mig)
            return None if new is None else KEEP if new == mig else dump(new)

        key = self._migration_key(iface_id)
        if key is not None:
            self._update(key, step)
        return seen.get("mig")

    def prepare(self, iface_id: str, dst: str, timeout: float, complete_within: float = 0.0) -> Migration:
        """Record a planned move of `iface_id` to NVE `dst`; the binding stays where it is. Unless
        activated within `timeout` s it is rolled back (`expire`); once activated, unless completed
        within `complete_within` s (0: COMPLETE_TIMEOUT_S) it is completed (`expire`)."""
        if not complete_within >= 0:
            raise ValueError(f"a move's complete_within is >= 0 (0: the default), not {complete_within}")
        port, nve = self._port_and_nve(iface_id, dst)
        kv = self.store.get(binding_key(port.vni, port.mac))
        if kv is None:
            raise MoveRefused(f"{iface_id} is bound nowhere: nothing to move")
        current = load(Binding, kv.value)
        if current.nve == dst:
            raise MoveRefused(f"{iface_id} is already on {dst}")
        mig = Migration(iface_id, port.vni, port.mac, current.nve, dst, nve.vtep, PREPARED, self.clock() + timeout,
                        complete_within)
        self._claim_vlan(dst, port.vni)  # the destination's ToR and switch need it before activation
        try:
            key = migration_key(port.vni, iface_id)
            self._write({key: dump(mig)}, expect={key: 0})
        except CasConflict:
            self._sync_vlans(dst)
            held = self.migration(iface_id)
            raise MoveRefused(f"{iface_id}: a move to {held.dst if held else '?'} is already in progress") from None
        return mig

    def _mark_activated(self, iface_id: str, nve: str) -> None:
        now = self.clock()
        self._change_migration(iface_id, lambda m: replace(m, state=ACTIVATED, deadline=now + m.completion_s)
                               if m.state == PREPARED and m.dst == nve else m)

    def activate(self, iface_id: str) -> tuple[Binding, bool]:
        """Explicit activation (the orchestrator knows the VM runs on the destination)."""
        mig = self.migration(iface_id)
        if mig is None:
            raise MoveRefused(f"{iface_id}: no move in progress")
        return self.report_move(iface_id, mig.dst, ORCHESTRATOR)

    def complete(self, iface_id: str) -> Migration:
        """Forget an activated move (every NVE has programmed it)."""
        def drop(mig: Migration) -> None:
            if mig.state != ACTIVATED:
                raise MoveRefused(f"{iface_id}: the move to {mig.dst} was not activated (abort it instead)")

        mig = self._change_migration(iface_id, drop)
        if mig is None:
            raise MoveRefused(f"{iface_id}: no move in progress")
        return mig

    def abort(self, iface_id: str) -> Migration | None:
        """Roll back a prepared move that was never activated; the binding never changed."""
        return self._abort(iface_id)

    def _abort(self, iface_id: str, past: float | None = None) -> Migration | None:
        """`abort`; with `past`, only a record whose deadline is before `past` (not one prepared again
        meanwhile). Returns the record it deleted, if any."""
        dropped: list[Migration] = []

        def drop(mig: Migration) -> Migration | None:
            dropped.clear()  # a retry decides again
            if mig.state != PREPARED:
                raise MoveRefused(f"{iface_id}: the move to {mig.dst} is already activated")
            if past is not None and not (mig.deadline and mig.deadline < past):
                return mig
            dropped[:] = [mig]
            return None

        if self._change_migration(iface_id, drop) is None:  # no record at the last try: someone else's
            return None
        if dropped:
            self._sync_vlans(dropped[0].dst)  # the destination's VLAN, if this move was its only reason
        return dropped[0] if dropped else None

    def _complete_expired(self, iface_id: str, past: float) -> Migration | None:
        """Complete an activated move whose deadline is before `past` (compare-and-swap: not one completed
        and prepared again meanwhile). Returns the record it deleted, if any."""
        dropped: list[Migration] = []

        def drop(mig: Migration) -> Migration | None:
            dropped.clear()
            if mig.state != ACTIVATED or not (mig.deadline and mig.deadline < past):
                return mig
            dropped[:] = [mig]
            return None

        self._change_migration(iface_id, drop)
        return dropped[0] if dropped else None

    def expire(self, now: float | None = None, dst: str | None = None) -> list[Migration]:
        """End every move past its deadline (the mapping's clock; only the moves to NVE `dst` if given: the
        destination's agent expires its own) and return them as they were:
          * a prepared move never activated is rolled back (the VM never came);
          * an activated move whose completion never came within its `completion_s` (the source died before
            libvirt's release, say) is completed: the VM runs at the destination, and the source stops
            holding state for it (a routed CUG's VRF, a /32 towards the destination).
        Safe with several callers: each is a compare-and-swap that leaves a move activated, completed or
        prepared again meanwhile, and a move two callers expire is returned by one of them only."""
        now = self.clock() if now is None else now
        out = []
        for mig in list(self.snapshot().migrations.values()):
            if not (mig.deadline and mig.deadline < now and (dst is None or mig.dst == dst)):
                continue
            if mig.state == ACTIVATED:
                if self._complete_expired(mig.iface_id, past=now):
                    log.warning("%s: the move %s -> %s was activated but not completed within %g s: completed by "
                                "the mapping's expiry", mig.iface_id, mig.src, mig.dst, mig.completion_s)
                    out.append(mig)
                continue
            try:
                if self._abort(mig.iface_id, past=now):
                    log.info("%s: the move %s -> %s was prepared but not activated by its deadline: rolled back "
                             "by the mapping's expiry", mig.iface_id, mig.src, mig.dst)
                    out.append(mig)
            except MoveRefused:
                pass  # activated meanwhile
        return out
