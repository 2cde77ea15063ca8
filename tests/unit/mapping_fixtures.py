"""What several unit tests of the mapping and the agent share: three NVEs in two data centers and a
clock the test moves by hand."""

from __future__ import annotations

from roamnet.mapping.records import Nve

NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.3", "dc1"),
        "hv3": Nve("hv3", "198.18.2.1", "dc2")}


class Clock:
    """A clock for the mapping or an agent: `now` is what it says until the test sets it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
