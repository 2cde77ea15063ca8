"""The NVEs' statuses (/status/<nve>, published by their agents) and convergence read from them.

Like OVN's Chassis_Private.nb_cfg -> hv_cfg: an agent publishes the mapping revision it has fully
programmed; a change is everywhere once every NVE's converged revision is at least the change's.
Waits are woken by the status keys' watch (statuses live outside /mapping/: they wake no agent).
An agent publishes after its passes; a change that concerns nothing of its NVE advances its converged
revision without a pass and without a store write (at 1,000 NVEs, 1,000 writes per change), so a
waiter first writes a `SyncRequest` (/mapping/sync/<nve>/request) for each NVE it waits for that is behind:
they publish once converged there, like OVN's nb_cfg bump of `ovn-nbctl --wait=hv sync`.
An agent process keeps its status on a lease (liveness.py): a missing status is an NVE whose agent
is not running (or cannot reach the store), and counts as not converged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from roamnet.mapping.records import STATUS, NveStatus, SyncRequest, dump, load, sync_key
from roamnet.mapping.store.base import KeyValue, Store

FEW = 32  # statuses read one by one up to this many; more: one range read
REQUESTS_PER_TXN = 100  # sync requests written in one transaction (etcd takes 128 operations by default)


class Statuses:
    def __init__(self, store: Store, mapping_revision: Callable[[], int]):
        self.store, self._mapping_revision = store, mapping_revision
        self._decoded: dict[str, tuple[int, NveStatus]] = {}  # key -> (mod_revision, status)

    def publish(self, status: NveStatus, lease: int = 0) -> None:
        """Write `status` (on `lease`, if not 0: see liveness.py)."""
        self.store.put(STATUS + status.nve, dump(status), lease=lease)

    def all(self) -> dict[str, NveStatus]:
        """Every NVE's published status (decoded once per change: waits read them after each write)."""
        items, _ = self.store.range(STATUS)
        return {kv.key[len(STATUS):]: self._decode(kv) for kv in items}

    def _decode(self, kv: KeyValue) -> NveStatus:
        hit = self._decoded.get(kv.key)
        if hit is None or hit[0] != kv.mod_revision:
            hit = self._decoded[kv.key] = (kv.mod_revision, load(NveStatus, kv.value))
        return hit[1]

    def of(self, nves: Iterable[str]) -> dict[str, NveStatus]:
        """The published statuses of `nves` (a few: one read each; many: one read of them all)."""
        nves = list(nves)
        if len(nves) > FEW:
            every = self.all()
            return {n: every[n] for n in nves if n in every}
        found = {n: self.store.get(STATUS + n) for n in nves}
        return {n: self._decode(kv) for n, kv in found.items() if kv is not None}

    def lagging(self, revision: int, nves: Iterable[str]) -> list[str]:
        """The NVEs of `nves` whose published converged revision is below `revision`."""
        nves = list(nves)
        st = self.of(nves)
        return sorted(n for n in nves if n not in st or st[n].converged_revision < revision)

    def request(self, nves: Iterable[str], revision: int) -> None:
        """Ask `nves` to publish their status once converged at `revision`: one key per NVE (each wakes
        that NVE alone), REQUESTS_PER_TXN per transaction; not a mapping change."""
        names = sorted(set(nves))
        for i in range(0, len(names), REQUESTS_PER_TXN):
            chunk = names[i:i + REQUESTS_PER_TXN]
            self.store.txn({sync_key(n): SyncRequest(revision, frozenset([n])).to_json() for n in chunk})

    def wait_converged(self, nves: Iterable[str], timeout: float, revision: int | None = None) -> bool:
        """Wait until every NVE of `nves` has published a converged revision >= `revision` (default:
        the mapping's revision now); the ones behind are asked to publish (`request`)."""
        target = self._mapping_revision() if revision is None else revision
        deadline = time.monotonic() + timeout
        rev = self.store.revision + 1
        pending = self.lagging(target, nves)
        if pending:
            self.request(pending, target)
        while pending := self.lagging(target, pending):  # an NVE once there stays there
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _, rev = self.store.watch(STATUS, rev, timeout=min(left, 0.5))
        return True
