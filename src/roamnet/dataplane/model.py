"""A kernel held in memory: what an NVE's kernel would hold after the changes it was given, with the
hypervisor's side (VM ports appearing, going up or down) driven by the caller.

It is built on `nve.plan.apply_to` (the same model the agent caches between kernel reads), plus what
the real kernel does on its own: removing a segment's bridge detaches its ports. It lets the agent
loop run without root (unit tests), and is where a simulated fabric starts. It is not a data plane:
no frame is ever forwarded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from roamnet.nve.plan import Actual, apply_to


class ModelKernel:
    def __init__(self, ns: str = "model", fail: set[str] | None = None):
        self.ns = ns
        self.actual = Actual()
        self.up: set[str] = set()  # VM interfaces whose port is up
        self.fail = set(fail or ())  # change ops that fail (as a NetlinkError would)
        self.reads = 0
        self.applied: list = []  # every change that went through, in order
        self.closed = False

    # ---- the hypervisor's side ------------------------------------------------------------------
    def add_port(self, iface: str, up: bool = True) -> None:
        """The hypervisor created the VM interface's port (a tap named after it), in no bridge."""
        self.actual.ports[iface] = None
        self.actual.devices[iface] = self.device(iface)
        self.set_up(iface, up)

    def set_up(self, iface: str, up: bool) -> None:
        (self.up.add if up else self.up.discard)(iface)

    def remove_port(self, iface: str) -> None:
        self.actual.ports.pop(iface, None)
        self.actual.devices.pop(iface, None)
        self.up.discard(iface)

    @staticmethod
    def device(iface: str) -> str:
        return "tap-" + iface.replace("/", "-")

    # ---- what an agent calls --------------------------------------------------------------------
    def read(self) -> tuple[Actual, list[str]]:
        self.reads += 1
        return self.actual.copy(), sorted(self.up)

    def apply(self, changes: list) -> list[str]:
        errors = []
        for ch in changes:
            if ch.op in self.fail:
                errors.append(f"{self.ns}: {ch}: injected failure")
                continue
            if ch.op == "del-segment":  # the bridge goes, and its ports leave it
                for iface, vni in self.actual.ports.items():
                    if vni == ch.vni:
                        self.actual.ports[iface] = None
            apply_to(self.actual, [ch])
            self.applied.append(ch)
        return errors

    def port_named(self, ifname: str) -> list[str]:
        return [i for i, dev in self.actual.devices.items() if dev == ifname]

    def forget_filters(self) -> None:
        pass

    def watch(self, stop: threading.Event, on_link: Callable[[], None],
              on_announcement: Callable[[str, str], None]) -> None:
        """No kernel events of its own: the caller drives `Agent._link_event` / `_announcement`."""
        stop.wait()

    def close(self) -> None:
        self.closed = True
