"""The lab's libvirt driver (lab/libvirt.py) without a lab up: what it refuses, and why."""

from __future__ import annotations

import pytest
from test_qemu import topo

from roamnet.intent.model import parse_topology
from roamnet.lab.engine import Lab
from roamnet.lab.errors import LabError
from roamnet.lab.libvirt import HookCall, command


def test_an_unknown_driver_is_refused_before_anything_moves():
    lab = Lab(parse_topology(topo(), "t.yaml"), etcd=False)
    with pytest.raises(LabError, match=r"no move driver 'virsh' \(drivers: lab, libvirt, libvirt-command\)"):
        lab.migrate("vm1", "hv2", driver="virsh")
    assert lab.migrations == [] and lab.location["vm1"] == "hv1"


def test_the_hook_command_needs_a_store_it_can_reach():
    with pytest.raises(LabError, match="an in-process lab has not"):
        command(None, 10.0)


def test_a_hook_call_in_the_record():
    call = HookCall("hv1", "release end migrated", 12.5, "completed", "announcement", stdout="")
    assert call.as_dict() == {"nve": "hv1", "event": "release end migrated", "ms": 12.5, "phase": "completed",
                              "activated_by": "announcement"}
