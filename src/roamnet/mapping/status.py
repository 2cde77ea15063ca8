"""The NVEs' statuses (/status/<nve>, published by their agents) and convergence read from them.

Like OVN's Chassis_Private.nb_cfg -> hv_cfg: an agent publishes the mapping revision it has fully
programmed; a change is everywhere once every NVE's converged revision is at least the change's.
Waits are woken by the status keys' watch (statuses live outside /mapping/: they wake no agent).
An agent process keeps its status on a lease (liveness.py): a missing status is an NVE whose agent
is not running (or cannot reach the store), and counts as not converged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from roamnet.mapping.records import STATUS, NveStatus, dump, load
from roamnet.mapping.store.base import Store


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
        out = {}
        for kv in items:
            hit = self._decoded.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                hit = self._decoded[kv.key] = (kv.mod_revision, load(NveStatus, kv.value))
            out[kv.key[len(STATUS):]] = hit[1]
        return out

    def lagging(self, revision: int, nves: Iterable[str]) -> list[str]:
        """The NVEs of `nves` whose published converged revision is below `revision`."""
        st = self.all()
        return sorted(n for n in nves if n not in st or st[n].converged_revision < revision)

    def wait_converged(self, nves: Iterable[str], timeout: float, revision: int | None = None) -> bool:
        """Wait until every NVE of `nves` has published a converged revision >= `revision` (default:
        the mapping's revision now)."""
        target = self._mapping_revision() if revision is None else revision
        nves = list(nves)
        deadline = time.monotonic() + timeout
        rev = self.store.revision + 1
        while self.lagging(target, nves):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _, rev = self.store.watch(STATUS, rev, timeout=min(left, 0.5))
        return True
