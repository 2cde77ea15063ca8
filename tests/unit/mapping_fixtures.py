"""What several unit tests of the mapping and the agent share: three NVEs in two data centers, a
mapping with one CUG and two VMs on them, and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import Callable

from roamnet.mapping.records import Binding, LogicalPort, Nve, Segment
from roamnet.mapping.store import Store
from roamnet.mapping.system import MappingSystem

NVES = {"hv1": Nve("hv1", "198.18.1.1", "dc1"), "hv2": Nve("hv2", "198.18.1.3", "dc1"),
        "hv3": Nve("hv3", "198.18.2.1", "dc2")}
WEB = 10100
VM1, VM2 = "02:00:00:01:00:01", "02:00:00:01:00:02"


def web_mapping(store: Store, clock: Callable[[], float] | None = None) -> MappingSystem:
    """The three NVEs, CUG web, vm1 on hv1 and vm2 on hv2 (one interface each)."""
    m = MappingSystem(store, clock=clock) if clock is not None else MappingSystem(store)
    m.register_segment(Segment(WEB, "web", "198.19.1.0/24"))
    for nve in NVES.values():
        m.register_nve(nve)
    for iface, mac, ip, nve in (("vm1/0", VM1, "198.19.1.11", "hv1"), ("vm2/0", VM2, "198.19.1.12", "hv2")):
        port = LogicalPort(iface, iface.split("/")[0], WEB, mac, (ip,))
        m.register_port(port)
        m.advertise(Binding(WEB, mac, nve, NVES[nve].vtep, 0, port.ips, iface))
    return m


class Clock:
    """A clock for the mapping or an agent: `now` is what it says until the test sets it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
