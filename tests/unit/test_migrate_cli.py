"""`roamnet migrate VM --store URL --phase ...`: a move through the mapping store, no lab daemon (what an
orchestrator calls), against the MemoryStore and a real etcd member with agent loops publishing their
statuses; and the lab form `roamnet migrate LAB VM` still goes to a lab."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_orchestrator import Fabric
from test_store import etcd_server  # noqa: F401 - the module's private etcd member

from roamnet import cli
from roamnet.cli import migrate as cli_migrate
from roamnet.mapping.records import ACTIVATED, PREPARED
from roamnet.mapping.store import MemoryStore


def migrate(*args: str, store: str = "memory://"):
    return CliRunner().invoke(cli.main, ["migrate", *args], env={"ROAMNET_STORE": store, "COLUMNS": "300"})


@pytest.fixture
def fabric(monkeypatch):
    f = Fabric(MemoryStore())
    monkeypatch.setattr(cli_migrate, "open_store", lambda *_: f.mapping.store)
    yield f
    f.stop()


def test_prepare_then_complete_through_the_store(fabric):
    res = migrate("vm1", "--phase", "prepare", "--to", "hv3", "--timeout", "60")
    assert res.exit_code == 0, res.output
    assert "vm1: prepared (hv1 → hv3); every NVE but hv3" in res.stdout
    assert {m.state for m in fabric.mapping.snapshot().migrations.values()} == {PREPARED}
    res = migrate("vm1", "--phase", "complete")
    assert res.exit_code == 1 and "the move to hv3 is not activated" in res.stderr
    fabric.arrive("hv3")
    res = migrate("vm1", "--phase", "complete", "-f", "json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert (rec["phase"], rec["from"], rec["to"], rec["activated_by"], rec["converged"]) == \
        ("completed", "hv1", "hv3", "announcement", True)
    assert fabric.mapping.snapshot().migrations == {}


def test_activate_and_abort_through_the_store(fabric):
    assert migrate("vm1", "--phase", "prepare", "--to", "hv3").exit_code == 0
    res = migrate("vm1", "--phase", "abort", "--to", "hv2")
    assert res.exit_code == 1 and "its move in progress goes to hv3, not hv2" in res.stderr
    res = migrate("vm1", "--phase", "abort", "-f", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["phase"] == "rolled-back"
    assert migrate("vm1", "--phase", "prepare", "--to", "hv3").exit_code == 0
    fabric.arrive("hv3", announce=False)
    res = migrate("vm1", "--phase", "activate", "--to", "hv3")
    assert res.exit_code == 0 and "vm1: activated (hv1 → hv3); every NVE programmed it" in res.stdout
    assert {m.state for m in fabric.mapping.snapshot().migrations.values()} == {ACTIVATED}


def test_errors_are_clear(fabric):
    for args, msg in (
            (("vm9", "--phase", "prepare", "--to", "hv3"), "no VM 'vm9' in the mapping"),
            (("vm1", "--phase", "prepare", "--to", "hv9"), "no NVE 'hv9' in the mapping"),
            (("vm1", "--phase", "complete"), "vm1: no move in progress (nothing prepared)"),
            (("vm1", "--phase", "abort"), "vm1: no move in progress (nothing prepared)")):
        res = migrate(*args)
        assert res.exit_code == 1 and msg in res.stderr, (args, res.output)
    assert migrate("vm1", "--phase", "prepare", "--to", "hv3").exit_code == 0
    res = migrate("vm1", "--phase", "prepare", "--to", "hv2")
    assert res.exit_code == 1 and "already being moved to hv3" in res.stderr


def test_usage_through_the_store(fabric):
    for args, msg in ((("vm1", "--to", "hv3"), "--phase is one of prepare, activate, complete, abort"),
                      (("vm1", "--phase", "resume"), "not resume"),
                      (("vm1", "--phase", "prepare"), "--to NVE is required"),
                      (("vm1", "--phase", "prepare", "--to", "hv3", "--pause-ms", "5"), "for a lab's VM"),
                      (("vm1", "--phase", "abort", "--port-ready"), "--port-ready is for --phase prepare"),
                      (("a", "b", "c"), "give VM (with --store) or LAB VM, not 3 arguments")):
        res = migrate(*args)
        assert res.exit_code == 2 and msg in res.stderr, (args, res.output)
    res = migrate("vm1", "--phase", "prepare", "--to", "hv3", store="")
    assert res.exit_code == 2 and "give --store URL (or set $ROAMNET_STORE)" in res.stderr


def test_two_arguments_are_a_lab_and_its_vm(monkeypatch):
    asked = []
    monkeypatch.setattr(cli_migrate, "_need_root", lambda: None)
    monkeypatch.setattr(cli_migrate, "_ask", lambda lab, op, **args: asked.append((lab, op, args)) or
                        {"vm": args["vm"], "phase": "prepared", "from": "hv1", "to": "hv2"})
    res = migrate("two-dc", "vm1", "--phase", "prepare", "--to", "hv2", store="unix:///nowhere")
    assert res.exit_code == 0, res.output
    assert asked == [("two-dc", "migrate", {"vm": "vm1", "to": "hv2", "pause_ms": 0, "prepare": True,
                                            "phase": "prepare", "timeout": 30.0, "driver": "lab"})]
    assert "vm1: prepared (hv1 → hv2)" in res.stdout


def test_a_lab_move_driven_by_the_libvirt_hook(monkeypatch):
    from roamnet.lab.libvirt import DRIVERS

    assert cli_migrate.DRIVERS == DRIVERS  # the CLI's choices are the lab's drivers (the CLI does not import the lab)
    asked = []
    monkeypatch.setattr(cli_migrate, "_need_root", lambda: None)
    monkeypatch.setattr(cli_migrate, "_ask", lambda lab, op, **args: asked.append(args) or {
        "vm": "vm1", "from": "hv1", "to": "hv3", "dc_from": "dc1", "dc_to": "dc2", "mode": "libvirt",
        "activated_by": "orchestrator", "dark_ms": 40.0, "mapped_ms": 3.0, "converged_ms": 900.0})
    res = migrate("two-dc", "vm1", "--to", "hv3", "--driver", "libvirt-command", store="")
    assert res.exit_code == 0, res.output
    assert asked[0]["driver"] == "libvirt-command" and asked[0]["phase"] == "all"
    assert "vm1: hv1 (dc1) → hv3 (dc2), libvirt, activated by orchestrator" in res.stdout
    for args in (("two-dc", "vm1", "--to", "hv3", "--driver", "libvirt", "--no-prepare"),
                 ("two-dc", "vm1", "--to", "hv3", "--driver", "libvirt", "--phase", "prepare"),
                 ("vm1", "--to", "hv3", "--driver", "libvirt", "--phase", "prepare")):
        res = migrate(*args)
        assert res.exit_code == 2 and "--driver is for a whole, prepared move of a lab's VM" in res.stderr, res.output
    res = migrate("two-dc", "vm1", "--to", "hv3", "--driver", "virsh")
    assert res.exit_code == 2 and "'virsh' is not one of 'lab', 'libvirt', 'libvirt-command'" in res.stderr


def test_over_etcd_prepare_activation_by_rarp_and_complete(etcd_server):  # noqa: F811
    from roamnet.mapping.store.etcd import EtcdStore

    store = EtcdStore(etcd_server.url, max_txn_ops=4096)
    for kv in store.range("/")[0]:
        store.delete(kv.key)
    f = Fabric(store)
    try:
        res = migrate("vm1", "--phase", "prepare", "--to", "hv3", "-f", "json", store=etcd_server.url)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["waited_for"] == ["hv1", "hv2"]
        f.arrive("hv3")
        res = migrate("vm1", "--phase", "complete", "-f", "json", store=etcd_server.url)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["converged"] is True
        snap = f.mapping.snapshot()
        assert snap.migrations == {} and snap.binding_of("vm1/0").nve == "hv3"
        res = migrate("vm1", "--phase", "abort", store=etcd_server.url)
        assert res.exit_code == 1 and "nothing prepared" in res.stderr
    finally:
        f.stop()
        store.close()
