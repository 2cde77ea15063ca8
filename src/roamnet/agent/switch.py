"""The agent of a server behind a ToR: its hypervisor switch follows the mapping (nve/switch.py)."""

from __future__ import annotations

from roamnet.agent.loop import Agent
from roamnet.mapping.records import Snapshot
from roamnet.nve.plan import Actual, Change, plan_claimant_ports, plan_filters
from roamnet.nve.switch import compute_switch, plan_switch


class SwitchAgent(Agent):
    """The agent of a server behind a ToR: drives its hypervisor switch from the mapping, and reports
    the VMs that arrive on it (port up, RARP/GARP) exactly as an NVE's agent does."""

    scoped = False  # its switch state is small: every pass is whole

    def _changes(self, snap: Snapshot, actual: Actual, scope=None) -> tuple[list[Change], bool]:
        want = compute_switch(snap, self.nve.name)
        # filters first: a VM port is attached only in a pass that has given it its filter
        return (plan_claimant_ports(snap, set(want.ports), actual) + plan_filters(want.filters, {}, actual)
                + plan_switch(want, actual)), all(i in actual.ports for i in want.ports)
