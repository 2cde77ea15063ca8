"""The lab's moves without a lab up: the libvirt driver (lab/libvirt.py), what it refuses, the order in which it
runs the qemu hook and what that does to a real mapping with real agent loops (MemoryStore and a real etcd
member; the hypervisor's side played on the agents' model kernels); and the lab driver's phases, which go through
the orchestrator's as the hook does."""

from __future__ import annotations

import pytest
from test_libvirt_hook import etcd_fabric  # noqa: F401 - a Fabric on the module's etcd member, and its URL
from test_qemu import topo
from test_store import etcd_server, store  # noqa: F401 - the memory / etcd store fixture

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


# ---- the lab's moves over a real mapping and real agent loops (test_orchestrator.Fabric: MemoryStore and etcd);
#      the hypervisor is the Fabric's model kernels -------------------------------------------------------------

def fabric_topology() -> dict:
    """The Fabric's VMs and NVEs as a topology: vm1 (web and db) on hv1, vm2 on hv2; hv3 in dc2."""
    from test_orchestrator import VM1A, VM1B, VM2

    return {"name": "fab", "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}, "dc2": {"servers": ["hv3"]}},
            "cugs": {"web": {"vni": 10100, "subnet": "198.19.1.0/24"}, "db": {"vni": 10200, "subnet": "198.19.2.0/24"}},
            "vms": {"vm1": {"server": "hv1", "interfaces": [{"cug": "web", "mac": VM1A, "ip": "198.19.1.11"},
                                                            {"cug": "db", "mac": VM1B, "ip": "198.19.2.11"}]},
                    "vm2": {"server": "hv2", "interfaces": [{"cug": "web", "mac": VM2, "ip": "198.19.1.12"}]}}}


class FabricHypervisor:
    """The lab hypervisor's actions on the Fabric's model kernels, recorded: ports appear and go, a migration
    is the VM's arrival on the destination (its RARP if `announce`), or fails (`fail`)."""

    def __init__(self, fabric, announce: bool = True, fail: bool = False):
        self.f, self.announce, self.fail = fabric, announce, fail
        self.location = {"vm1": "hv1", "vm2": "hv2"}
        self.did: list[tuple[str, str]] = []

    def is_qemu(self, vm: str) -> bool:
        return True

    def create_port(self, vm: str, server: str) -> None:
        self.did.append(("create", server))
        for i in ("vm1/0", "vm1/1"):
            self.f.kernels[server].add_port(i, up=False)
        self.f.agents[server]._link_event()

    def port_up(self, vm: str, server: str) -> None:
        """Nothing, as `Hypervisor.port_up` for a QEMU guest: its taps are its QEMU's."""

    def remove_port(self, vm: str, server: str) -> None:
        self.did.append(("remove", server))
        for i in ("vm1/0", "vm1/1"):
            self.f.kernels[server].remove_port(i)
        self.f.agents[server]._link_event()

    def stop_and_resume(self, vm: str, src: str, to: str, pause_ms: int, announce: bool = True):
        import time

        from roamnet.lab.hypervisor import Switchover

        self.did.append(("migrate", to))
        if self.fail:
            raise LabError(f"{vm}: QEMU's migration from {src} to {to} failed: the destination died")
        stopped = time.monotonic()
        for i in ("vm1/0", "vm1/1"):
            self.f.kernels[to].set_up(i, True)
        self.location[vm] = to
        self.f.arrive(to, announce=self.announce and announce)
        return Switchover(stopped, time.monotonic(), {"blackout_ms": 1.0})


class FabricLab:
    """What `Moves` and `Libvirt` use of a lab, over a Fabric."""

    def __init__(self, fabric, **hv):
        from roamnet.intent.model import parse_topology
        from roamnet.lab.plan import build_plan

        self.name, self.topo = "fab", parse_topology(fabric_topology(), "fab.yaml")
        self.plan, self.mapping, self.control_plane = build_plan(self.topo), fabric.mapping, None
        self.hv = FabricHypervisor(fabric, **hv)

    def wait_converged(self, timeout: float, revision: int | None = None) -> bool:
        from test_orchestrator import NVES

        return self.mapping.statuses.wait_converged(list(NVES), timeout, revision)


@pytest.fixture
def fabric(store):  # noqa: F811 - the Fabric over the memory / etcd store
    from test_orchestrator import Fabric

    f = Fabric(store)
    yield f
    f.stop()


def libvirt_move(lab):
    from roamnet.lab.libvirt import Libvirt, in_process
    from roamnet.lab.moves import Moves

    moves = Moves(lab)
    how = Libvirt(moves, in_process(moves, 10.0), "libvirt")
    return moves, how


@pytest.mark.parametrize("announce", [True, False], ids=["rarp", "no-rarp"])
def test_the_libvirt_driver_moves_a_vm_at_libvirts_points(fabric, announce):
    lab = FabricLab(fabric, announce=announce)
    moves, how = libvirt_move(lab)
    rec = moves.migrate("vm1", "hv3", how=how)
    assert [(c["nve"], c["event"], c["phase"]) for c in rec["hook_calls"]] == [
        ("hv3", "migrate begin -", "prepared"), ("hv3", "prepare begin -", None), ("hv3", "start begin -", None),
        ("hv3", "started begin -", None), ("hv1", "stopped end -", None), ("hv1", "release end migrated", "completed")]
    # prepared before the destination's port existed, the port made, migrated, the source's port gone after
    assert lab.hv.did == [("create", "hv3"), ("migrate", "hv3"), ("remove", "hv1")]
    assert rec["activated_by"] == ("announcement" if announce else "orchestrator")
    assert rec["mode"] == "libvirt" and rec["converged_ms"] is not None and rec["mapped_ms"] is not None
    snap = fabric.mapping.snapshot()
    assert snap.migrations == {} and {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv3"}


def test_a_failed_migration_through_the_libvirt_driver_is_aborted_by_the_destinations_release(fabric):
    lab = FabricLab(fabric, fail=True)
    moves, how = libvirt_move(lab)
    with pytest.raises(LabError, match="the destination died"):
        moves.migrate("vm1", "hv3", how=how)
    assert [(c.nve, c.event, c.phase) for c in how.calls][-2:] == [("hv3", "stopped end -", None),
                                                                   ("hv3", "release end failed", "rolled-back")]
    assert lab.hv.did == [("create", "hv3"), ("migrate", "hv3"), ("remove", "hv3")]
    snap = fabric.mapping.snapshot()
    assert snap.migrations == {} and {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv1"}
    assert moves.migrations[-1]["rolled_back"] and moves.migrations[-1]["mode"] == "libvirt"


def test_a_refused_prepare_starts_nothing(fabric):
    """migrate begin fails (a move of vm1 elsewhere is in progress): libvirt refuses, no QEMU starts."""
    fabric.orch.prepare("vm1", "hv2", wait=10)
    lab = FabricLab(fabric)
    moves, how = libvirt_move(lab)
    with pytest.raises(LabError, match="libvirt hook vm1 migrate begin - on hv3 failed: .*already being moved to hv2"):
        moves.migrate("vm1", "hv3", how=how)
    assert lab.hv.did == [] and [c.event for c in how.calls] == []


def test_the_labs_own_phases_go_through_the_orchestrator(fabric):
    """The lab driver's prepare / activate / complete and prepare / abort: the orchestrator's phases."""
    from roamnet.lab.moves import Moves

    lab = FabricLab(fabric, announce=False)
    moves = Moves(lab)
    assert moves.prepare("vm1", "hv3", wait=10)["phase"] == "prepared"
    assert {mg.dst for mg in fabric.mapping.snapshot().migrations.values()} == {"hv3"}
    assert moves.abort("vm1")["phase"] == "rolled-back"
    assert fabric.mapping.snapshot().migrations == {} and lab.hv.did == [("create", "hv3"), ("remove", "hv3")]
    moves.prepare("vm1", "hv3", wait=10)
    with pytest.raises(LabError, match="not activated yet"):
        moves.complete("vm1")
    moves.resume("vm1")
    assert moves.activate("vm1")["phase"] == "activated"
    with pytest.raises(LabError, match="already activated .* cannot be rolled back"):
        moves.abort("vm1")
    done = moves.complete("vm1", wait=10)
    assert (done["phase"], done["converged"]) == ("completed", True)
    snap = fabric.mapping.snapshot()
    assert snap.migrations == {} and {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv3"}
    assert lab.hv.did[-1] == ("remove", "hv1") and not moves.pending


def test_the_libvirt_command_driver_runs_roamnet_hook_libvirt_over_etcd(etcd_fabric):  # noqa: F811
    """The same move with the hook as the command itself (a process per event, over the member's unix socket)."""
    from roamnet.lab.libvirt import Libvirt, command
    from roamnet.lab.moves import Moves

    f, url = etcd_fabric
    lab = FabricLab(f, announce=False)
    moves = Moves(lab)
    rec = moves.migrate("vm1", "hv3", how=Libvirt(moves, command(url, 10.0), "libvirt-command"))
    assert [(c["nve"], c["event"], c["phase"], c["activated_by"]) for c in rec["hook_calls"]] == [
        ("hv3", "migrate begin -", "prepared", None), ("hv3", "prepare begin -", None, None),
        ("hv3", "start begin -", None, None), ("hv3", "started begin -", None, None),
        ("hv1", "stopped end -", None, None), ("hv1", "release end migrated", "completed", "orchestrator")]
    assert rec["activated_by"] == "orchestrator" and rec["driver"] == "libvirt-command"
    snap = f.mapping.snapshot()
    assert snap.migrations == {} and {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv3"}
