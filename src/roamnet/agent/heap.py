"""Keeping Python's full garbage collections short in an agent process.

An agent process holds a large, long-lived heap: its view of the mapping (every VM's port, its CUGs'
bindings) and its agents' desired states and kernel caches. CPython's full (generation 2) collection
walks all of it, and the process stops meanwhile: in benchmarks/scale.py, 100 agents in a process over
10,000 VMs paused 0.3 s, then 1 s as the heap grew, and a move that met such a pause took 1.5-2 s instead
of 0.1 s. `settle` collects once and then freezes what survived (`gc.freeze`: the objects leave the
collector's generations for a permanent one), every `period` s: a later collection walks only what came
since. Frozen objects are still freed by reference counting when dropped; only a reference cycle among
them that becomes garbage stays (the mapping's records are immutable and hold no cycles).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger(__name__)

PERIOD_S = 10.0  # between two settles (the first one after one period: the agents' first passes are done)


def settle_once() -> dict:
    """Collect, then freeze what survived; what it took."""
    started = time.perf_counter()
    collected = gc.collect()
    gc.freeze()
    return {"collected": collected, "frozen": gc.get_freeze_count(),
            "ms": round((time.perf_counter() - started) * 1000, 1)}


def settle(stop: threading.Event, period: float = PERIOD_S) -> None:
    """Until `stop`: every `period` s, collect and freeze (run it where the process would wait anyway)."""
    while not stop.wait(period):
        done = settle_once()
        log.debug("heap settled: %s", done)
