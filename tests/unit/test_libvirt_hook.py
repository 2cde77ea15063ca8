"""libvirt's qemu hook, invoked as libvirtd invokes /etc/libvirt/hooks/qemu (DOMAIN OPERATION
SUBOPERATION EXTRA, the domain's XML on stdin), with no libvirtd: the pure parts (the domain's
interfaces, what each event means), `roamnet hook libvirt` through click against the MemoryStore and
a real etcd member with agent loops publishing their statuses, and the shipped contrib/libvirt/qemu
script run as a process against etcd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_orchestrator import DB, NVES, VM1A, VM1B, WEB, Fabric
from test_store import etcd_server  # noqa: F401 - the module's private etcd member

from roamnet import cli
from roamnet.cli import hook as cli_hook
from roamnet.lab.libvirt import said
from roamnet.mapping.records import ACTIVATED, PREPARED, Binding, LogicalPort, Migration, Snapshot
from roamnet.mapping.store import MemoryStore
from roamnet.mapping.system import MappingSystem
from roamnet.orchestrator.libvirt import (
    ABORT,
    ACTIVE_EVENTS,
    COMPLETE,
    NOTHING,
    PREPARE,
    HookError,
    NicXml,
    decide,
    domain_ifaces,
    domain_nics,
)

SRC = Path(__file__).resolve().parents[2] / "src"
SCRIPT = Path(__file__).resolve().parents[2] / "contrib" / "libvirt" / "qemu"


def domain_xml(name: str = "vm1", nics: tuple[tuple[str, str], ...] = ((VM1A.upper(), ""), (VM1B, ""))) -> str:
    """A domain's XML as libvirt gives it (trimmed): one <interface> per (MAC, target dev)."""
    itfs = "".join(f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>"
                   + (f"<target dev='{dev}'/>" if dev else "") + "<model type='virtio'/></interface>"
                   for mac, dev in nics)
    return (f"<domain type='kvm' id='3'><name>{name}</name><uuid>0f3b4c86-3c9a-4d2a-9a7c-0d8d3f0c1a11</uuid>"
            f"<memory unit='KiB'>1048576</memory><devices><disk type='file' device='disk'><target dev='vda'/>"
            f"</disk>{itfs}<console type='pty'/></devices></domain>")


# ---- pure: the domain's interfaces and the events ---------------------------------------------------

@pytest.fixture(scope="module")
def snap() -> Snapshot:
    """The fabric's records (no agents): vm1 (two interfaces) on hv1, vm2 on hv2."""
    m = MappingSystem(MemoryStore())
    for nve in NVES.values():
        m.register_nve(nve)
    for iface, vni, mac, nve in (("vm1/0", WEB, VM1A, "hv1"), ("vm1/1", DB, VM1B, "hv1"),
                                 ("vm2/0", WEB, "02:00:00:01:00:02", "hv2")):
        m.register_port(LogicalPort(iface, iface.split("/")[0], vni, mac))
        m.advertise(Binding(vni, mac, nve, NVES[nve].vtep, 0, (), iface))
    return m.snapshot()


def test_the_domains_interfaces_by_mac_case_insensitive_or_by_port_name(snap):
    nics = domain_nics(domain_xml(nics=((VM1A.upper(), "vnet3"), ("52:54:00:aa:bb:cc", "vm1-e1"),
                                        ("52:54:00:00:00:01", "vnet9"))))
    assert nics[0] == NicXml(VM1A, "vnet3") and nics[1].target == "vm1-e1"
    assert domain_ifaces(nics, snap) == ["vm1/0", "vm1/1"]  # vm1's NIC 1 by its port name; vnet9 is no VM's
    assert domain_ifaces(domain_nics(domain_xml(nics=(("52:54:00:00:00:01", "vnet0"),))), snap) == []
    assert domain_ifaces(domain_nics(domain_xml(nics=())), snap) == []


def test_a_bad_domain_xml_is_a_clear_error():
    with pytest.raises(HookError, match="cannot parse the domain XML on stdin"):
        domain_nics("<domain><devices>")
    with pytest.raises(HookError, match=r"no domain \(its root is <network>\)"):
        domain_nics("<network/>")


def test_what_each_event_means(snap):
    ifaces = ["vm1/0", "vm1/1"]

    def moving(state: str) -> Snapshot:
        return Snapshot(snap.revision, snap.nves, snap.ports, snap.bindings,
                        {i: Migration(i, WEB, VM1A, "hv1", "hv3", "198.18.2.1", state) for i in ifaces})

    prepared, activated = moving(PREPARED), moving(ACTIVATED)
    for op, sub in (("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"),
                    ("reconnect", "begin"), ("restore", "begin"), ("attach", "begin")):
        assert decide("vm1", op, sub, "-", ifaces, prepared, "hv3").action == NOTHING
    assert decide("vm1", "migrate", "begin", "-", ifaces, snap, "hv3").action == PREPARE
    assert decide("vm1", "migrate", "begin", "-", ifaces, snap, "hv1").action == NOTHING  # bound here already
    assert decide("vm1", "migrate", "begin", "-", [], snap, "hv3").action == NOTHING  # no VM of the mapping
    # the source's release
    assert decide("vm1", "release", "end", "migrated", ifaces, prepared, "hv1").action == COMPLETE
    assert decide("vm1", "release", "end", "-", ifaces, prepared, "hv1").action == COMPLETE  # libvirt < 10.5
    assert decide("vm1", "release", "end", "destroyed", ifaces, activated, "hv1").action == COMPLETE
    assert decide("vm1", "release", "end", "destroyed", ifaces, prepared, "hv1").action == ABORT
    # the destination's release
    assert decide("vm1", "release", "end", "failed", ifaces, prepared, "hv3").action == ABORT
    assert decide("vm1", "release", "end", "shutdown", ifaces, activated, "hv3").action == NOTHING
    # neither, or no move
    assert decide("vm1", "release", "end", "migrated", ifaces, prepared, "hv2").action == NOTHING
    assert decide("vm1", "release", "end", "shutdown", ifaces, snap, "hv1").action == NOTHING
    with pytest.raises(HookError, match="several VMs of the mapping: vm1, vm2"):
        decide("vm1", "release", "end", "-", ["vm1/0", "vm2/0"], snap, "hv1")


# ---- roamnet hook libvirt, through click ------------------------------------------------------------

def hook(args: list[str], xml: str, env: dict[str, str]):
    return CliRunner().invoke(cli.main, ["hook", "libvirt", *args], input=xml, env=env)


@pytest.fixture
def memory_fabric(monkeypatch):
    f = Fabric(MemoryStore())
    monkeypatch.setattr(cli_hook, "open_store", lambda *_: f.mapping.store)  # the hook's store: this one
    yield f
    f.stop()


def env_of(nve: str, store: str = "memory://") -> dict[str, str]:
    return {"ROAMNET_NVE": nve, "ROAMNET_STORE": store, "ROAMNET_HOOK_WAIT": "10"}


def test_other_events_do_nothing_and_need_no_store():
    for op, sub, extra in (("prepare", "begin", "-"), ("start", "begin", "-"), ("started", "begin", "-"),
                           ("stopped", "end", "-"), ("reconnect", "begin", "-"), ("restore", "begin", "-")):
        res = CliRunner().invoke(cli.main, ["hook", "libvirt", "vm1", op, sub, extra], input=domain_xml(),
                                 env={"ROAMNET_STORE": "", "ROAMNET_NVE": ""})
        assert res.exit_code == 0 and res.stdout == "" and res.stderr == "", (op, res.output)


def live_migration(f: Fabric, env, announce: bool, store: str = "memory://") -> None:
    """libvirt's calls of a successful live migration of vm1 from hv1 to hv3, checked along the way."""
    m = f.mapping
    res = env(["vm1", "migrate", "begin", "-"], domain_xml(), env_of("hv3", store))
    assert res.exit_code == 0, res.output
    assert res.stdout == "", "migrate begin is a filter: anything on stdout would replace the domain's XML"
    assert "prepared hv1 -> hv3 (vm1/0,vm1/1)" in res.stderr
    assert said(res.stderr) == ("prepared", None)  # what the lab's libvirt driver reads of it
    assert {mg.state for mg in m.snapshot().migrations.values()} == {PREPARED}
    for op in ("prepare", "start", "started"):  # the destination starts its QEMU: nothing to do
        assert env(["vm1", op, "begin", "-"], domain_xml(), env_of("hv3", store)).exit_code == 0
    f.arrive("hv3", announce=announce)  # libvirt's tap appears; the VM resumes (and sends its RARP)
    for op, sub, extra in (("stopped", "end", "-"), ("release", "end", "migrated")):  # on the source
        res = env(["vm1", op, sub, extra], domain_xml(), env_of("hv1", store))
        assert res.exit_code == 0, res.output
    assert "completed hv1 -> hv3" in res.stderr
    assert said(res.stderr) == ("completed", "announcement" if announce else "orchestrator"), res.stderr
    snap = m.snapshot()
    assert snap.migrations == {}
    assert {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv3"}
    assert m.statuses.wait_converged(["hv1", "hv2", "hv3"], 10)
    assert f.kernels["hv2"].actual.remote_macs[(WEB, VM1A)] == {"198.18.2.1"}


def failed_migration(f: Fabric, env, store: str = "memory://") -> None:
    """The incoming migration fails on hv3: its QEMU is stopped there; the VM keeps running on hv1."""
    m = f.mapping
    assert env(["vm1", "migrate", "begin", "-"], domain_xml(), env_of("hv3", store)).exit_code == 0
    assert set(m.snapshot().migrations) == {"vm1/0", "vm1/1"}
    f.arrive("hv3", announce=False)
    for op, sub, extra in (("stopped", "end", "-"), ("release", "end", "failed")):
        res = env(["vm1", op, sub, extra], domain_xml(), env_of("hv3", store))
        assert res.exit_code == 0, res.output
    assert "rolled-back hv1 -> hv3" in res.stderr
    assert said(res.stderr) == ("rolled-back", None)
    snap = m.snapshot()
    assert snap.migrations == {}
    assert {(snap.binding_of(i).nve, snap.binding_of(i).seq) for i in ("vm1/0", "vm1/1")} == {("hv1", 0)}


def test_a_live_migration_prepared_activated_by_rarp_and_completed(memory_fabric):
    live_migration(memory_fabric, hook, announce=True)


def test_the_sources_release_activates_a_move_no_rarp_activated(memory_fabric):
    live_migration(memory_fabric, hook, announce=False)


def test_a_failed_incoming_migration_is_aborted(memory_fabric):
    failed_migration(memory_fabric, hook)


def test_a_prepare_that_fails_refuses_the_migration_with_a_clear_message(memory_fabric):
    f = memory_fabric
    f.agents["hv2"].stop()  # hv2 would not deliver vm1's frames to hv3
    res = hook(["vm1", "migrate", "begin", "-"], domain_xml(), {**env_of("hv3"), "ROAMNET_HOOK_WAIT": "0.3"})
    assert res.exit_code == 1 and res.stdout == ""
    assert "vm1 migrate begin -: failed on hv3: vm1: prepare to hv3 failed, rolled back" in res.stderr
    assert "hv2 behind revision" in res.stderr
    assert f.mapping.snapshot().migrations == {}


def test_bad_setups_refuse_a_migration_and_say_why(memory_fabric):
    res = hook(["vm1", "migrate", "begin", "-"], domain_xml(), {"ROAMNET_NVE": "", "ROAMNET_STORE": ""})
    assert res.exit_code == 1 and "ROAMNET_NVE (--nve) and ROAMNET_STORE (--store) not set" in res.stderr
    res = hook(["vm1", "migrate", "begin", "-"], domain_xml(), env_of("hv9"))
    assert res.exit_code == 1 and "this host's NVE 'hv9' is not in the mapping" in res.stderr
    res = hook(["vm1", "migrate", "begin", "-"], "<domain><devices>", env_of("hv3"))
    assert res.exit_code == 1 and "cannot parse the domain XML on stdin" in res.stderr
    assert memory_fabric.mapping.snapshot().migrations == {}


def test_a_domain_the_mapping_does_not_know_is_left_alone(memory_fabric):
    rev = memory_fabric.mapping.revision
    xml = domain_xml("web7", (("52:54:00:12:34:56", "vnet4"),))
    for args, nve in ((["web7", "migrate", "begin", "-"], "hv3"), (["web7", "release", "end", "migrated"], "hv1")):
        res = hook(args, xml, env_of(nve))
        assert res.exit_code == 0 and "has no interface the mapping knows" in res.stderr
    assert memory_fabric.mapping.revision == rev


def test_a_move_whose_source_never_releases_it_is_completed_after_the_complete_timeout(memory_fabric):
    f = memory_fabric
    res = hook(["vm1", "migrate", "begin", "-"], domain_xml(), {**env_of("hv3"), "ROAMNET_COMPLETE_TIMEOUT": "45"})
    assert res.exit_code == 0, res.output
    assert {mg.complete_within for mg in f.mapping.snapshot().migrations.values()} == {45.0}
    f.arrive("hv3", announce=True)  # the VM resumes on hv3; then hv1 dies: no `release end migrated` comes
    migs = f.mapping.snapshot().migrations
    assert {mg.state for mg in migs.values()} == {ACTIVATED}
    deadline = max(mg.deadline for mg in migs.values())
    assert f.mapping.expire(now=deadline - 1, dst="hv3") == []
    assert sorted(mg.iface_id for mg in f.mapping.expire(now=deadline + 1, dst="hv3")) == ["vm1/0", "vm1/1"]
    snap = f.mapping.snapshot()
    assert snap.migrations == {} and {snap.binding_of(i).nve for i in ("vm1/0", "vm1/1")} == {"hv3"}
    res = hook(["vm1", "release", "end", "migrated"], domain_xml(), env_of("hv1"))  # a late release: nothing left
    assert res.exit_code == 0 and "no move in progress" in res.stderr, res.output


# ---- against a real etcd member ---------------------------------------------------------------------

@pytest.fixture
def etcd_fabric(etcd_server):  # noqa: F811
    from roamnet.mapping.store.etcd import EtcdStore

    store = EtcdStore(etcd_server.url, max_txn_ops=4096)
    for kv in store.range("/")[0]:  # a fresh mapping on the module's member
        store.delete(kv.key)
    f = Fabric(store)
    yield f, etcd_server.url
    f.stop()
    store.close()


def test_over_etcd_a_live_migration_completes(etcd_fabric):
    f, url = etcd_fabric
    live_migration(f, hook, announce=False, store=url)


def test_over_etcd_a_failed_migration_is_aborted(etcd_fabric):
    f, url = etcd_fabric
    failed_migration(f, hook, store=url)


def script_runner(tmp_path: Path):
    """contrib/libvirt/qemu run as libvirtd runs it: a process, its env file, roamnet in its own process."""
    wrapper = tmp_path / "roamnet"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={SRC} exec {sys.executable} -m roamnet.cli \"$@\"\n")
    wrapper.chmod(0o755)

    def run(args: list[str], xml: str, env: dict[str, str]):
        env_file = tmp_path / "roamnet.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()) + f"ROAMNET_BIN={wrapper}\n")
        p = subprocess.run(["sh", str(SCRIPT), *args], input=xml, capture_output=True, text=True, timeout=120,
                           env={"PATH": os.environ["PATH"], "ROAMNET_ENV_FILE": str(env_file)})
        return type("Result", (), {"exit_code": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
                                   "output": p.stdout + p.stderr})()
    return run


def test_the_shipped_script_over_etcd_a_live_migration_completes(etcd_fabric, tmp_path):
    f, url = etcd_fabric
    live_migration(f, script_runner(tmp_path), announce=True, store=url)


def test_the_shipped_script_hands_roamnet_only_its_events(tmp_path):
    log = tmp_path / "calls"
    fake = tmp_path / "fake-roamnet"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\ncat > /dev/null\n")
    fake.chmod(0o755)
    env_file = tmp_path / "roamnet.env"
    env_file.write_text(f"ROAMNET_BIN={fake}\n")
    events = [("migrate", "begin", "-"), ("prepare", "begin", "-"), ("start", "begin", "-"),
              ("started", "begin", "-"), ("stopped", "end", "-"), ("release", "end", "migrated"),
              ("reconnect", "begin", "-"), ("attach", "begin", "-"), ("restore", "begin", "-")]
    for ev in events:
        p = subprocess.run(["sh", str(SCRIPT), "vm1", *ev], input=domain_xml(), capture_output=True, text=True,
                           timeout=30, env={"PATH": os.environ["PATH"], "ROAMNET_ENV_FILE": str(env_file)})
        assert p.returncode == 0 and p.stdout == "", (ev, p.stderr)
    called = {tuple(line.split()[3:5]) for line in log.read_text().splitlines()}
    assert called == ACTIVE_EVENTS
    assert all(line.startswith("hook libvirt vm1 ") for line in log.read_text().splitlines())
