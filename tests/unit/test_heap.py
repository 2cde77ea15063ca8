"""agent/heap.py: collect, then freeze what survived, so later full collections walk only what is new."""

import gc
import threading

from roamnet.agent import heap


def test_settling_freezes_what_survived_and_frees_cyclic_garbage_first():
    class Node:
        pass

    gc.unfreeze()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle: only the collector frees it
        del a, b
        kept = [Node() for _ in range(1000)]
        done = heap.settle_once()
        assert done["collected"] >= 2  # the cycle, collected before the freeze
        assert done["frozen"] == gc.get_freeze_count() >= len(kept)
        # a later collection walks only what came since: the frozen objects are in no generation
        assert all(not any(o is k for o in gc.get_objects(generation=2)) for k in kept[:5])
    finally:
        gc.unfreeze()


def test_settle_runs_every_period_until_stopped():
    gc.unfreeze()
    stop = threading.Event()
    t = threading.Thread(target=heap.settle, args=(stop, 0.05))
    try:
        t.start()
        assert not stop.wait(0.3)
        assert gc.get_freeze_count() > 0
    finally:
        stop.set()
        t.join(5)
        gc.unfreeze()
    assert not t.is_alive()
