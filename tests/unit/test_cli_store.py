"""`roamnet apply`, `roamnet status` and `roamnet get` through the command line (click's CliRunner)
against a real etcd member (one for the module, on a root-only unix socket; each test starts from an
empty mapping)."""
# ruff: noqa: F811 - the tests take the fixture `etcd_server` imported from test_store

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_apply import BASE, intent, vm
from test_store import etcd_server  # noqa: F401 - the module's private etcd member

from roamnet.cli import main
from roamnet.mapping.records import NveStatus
from roamnet.mapping.system import MappingSystem


@pytest.fixture
def etcd(etcd_server):
    from roamnet.mapping.store.etcd import EtcdStore

    store = EtcdStore(etcd_server.url)
    for kv in store.range("/")[0]:  # a fresh mapping on the module's member
        store.delete(kv.key)
    yield etcd_server.url, store
    store.close()


def write(tmp_path: Path, data: dict, name: str = "topo.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def test_apply_then_again_changes_nothing(etcd, tmp_path):
    url, store = etcd
    path = write(tmp_path, BASE)
    code, text = run("apply", path, "--store", url)
    assert code == 0, text
    assert f"{path}: applied in 1 transaction" in text and "vm1/0, vm2/0, vm3/0" in text
    rev = store.revision
    code, text = run("apply", path, "--store", url, "-f", "json")
    assert code == 0 and json.loads(text) == {"topology": path, "changed": False, "dry_run": False, "txns": 0,
                                              "revision": MappingSystem(store).revision, "changes": {}}
    code, text = run("apply", path, "--store", url)
    assert code == 0 and f"{path}: no changes" in text
    assert store.revision == rev


def test_apply_dry_run_writes_nothing(etcd, tmp_path):
    url, store = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    rev = store.revision
    path = write(tmp_path, intent(vms={**BASE["vms"], "vm5": vm("hv2", "web", "02:00:00:01:00:15", "198.19.1.15")}),
                 "more.yaml")
    code, text = run("apply", path, "--store", url, "--dry-run", "-f", "json")
    assert code == 0 and json.loads(text)["changes"] == {"ports": {"added": ["vm5/0"]},
                                                          "bindings": {"added": ["vm5/0"]}}
    code, text = run("apply", path, "--store", url, "--dry-run")
    assert code == 0 and "dry run, nothing written" in text
    assert store.revision == rev


@pytest.mark.parametrize("text,message", [
    ("name: t\ndatacenters: {dc1: {servers: [hv1]}}\nvms: {vm1: {server: hv9, interfaces: "
     "[{cug: web, mac: '02:00:00:01:00:11', ip: 198.19.1.11}]}}\ncugs: {web: {vni: 10100, subnet: 198.19.1.0/24}}\n",
     "bad.yaml: vms.vm1.server: unknown server 'hv9'"),
    ("name: t\ndatacenters: {dc1: {servers: [hv1]}\n", "bad.yaml: YAML error at line"),
    ("name: t\ndatacenters: {dc1: {servers: [hv1]}}\nvteps: {hv1: 224.0.0.1}\n",
     "bad.yaml: vteps.hv1: 224.0.0.1 is no unicast host address"),
])
def test_bad_input_is_refused_and_changes_nothing(etcd, tmp_path, text, message):
    url, store = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    rev = store.revision
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, out = run("apply", str(bad), "--store", url)
    assert code == 1 and message in out
    assert store.revision == rev


def test_a_refused_apply_names_the_reason(etcd, tmp_path):
    url, store = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    MappingSystem(store).report_move("vm1/0", "hv2")
    rev = store.revision
    data = intent()
    data["datacenters"]["dc1"]["servers"] = ["hv1"]
    path = write(tmp_path, data, "less.yaml")
    code, out = run("apply", path, "--store", url)
    assert code == 1 and f"{path}: refused, nothing written" in out and "nve hv2: still hosts vm1/0" in out
    assert store.revision == rev


def test_status_shows_liveness_and_lag(etcd, tmp_path):
    url, store = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    m = MappingSystem(store)
    m.statuses.publish(NveStatus("hv1", converged_revision=m.revision, pid=4242, last_pass_ms=1.5))
    m.statuses.publish(NveStatus("hv3", converged_revision=m.revision - 1, errors=("netlink: busy",)))
    m.prepare("vm1/0", "hv2", timeout=60)
    m.stop("vm2/0")
    code, text = run("status", "--store", url, "-f", "json")
    assert code == 0
    data = json.loads(text)
    nves = {n["name"]: n for n in data["nves"]}
    assert data["revision"] == m.revision
    assert (nves["hv1"]["alive"], nves["hv1"]["pid"], nves["hv1"]["lagging"]) == (True, 4242, True)  # prepare came after
    assert nves["hv3"]["alive"] and nves["hv3"]["errors"] == ["netlink: busy"]
    assert not nves["hv2"]["alive"] and nves["hv2"]["converged_revision"] is None
    assert data["bindings"] == {"total": 3, "frozen": 0, "stopped": 1, "detached": 2}
    assert [(g["vm"], g["src"], g["dst"], g["state"]) for g in data["migrations"]] == [("vm1", "hv1", "hv2", "prepared")]
    m.statuses.publish(NveStatus("hv1", converged_revision=m.revision, pid=4242))
    data = json.loads(run("status", "--store", url, "-f", "json")[1])
    assert {n["name"]: n["lagging"] for n in data["nves"]}["hv1"] is False
    code, text = run("status", "--store", url)
    assert code == 0 and "4242" in text and "moves in progress: 1" in text and "1 stopped" in text


def test_get_each_kind(etcd, tmp_path):
    url, _ = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    items = {}
    for kind in ("nves", "ports", "bindings", "migrations", "segments", "cugs", "tenants", "domains", "policy",
                 "statuses"):
        code, text = run("get", kind, "--store", url, "-f", "json")
        assert code == 0, text
        items[kind] = json.loads(text)["items"]
        code, text = run("get", kind, "--store", url)  # the table renders too
        assert code == 0, text
    assert len(items["nves"]) == 9 and items["segments"] == items["cugs"]
    assert {b["vm"] for b in items["bindings"]} == {"vm1", "vm2", "vm3"}
    assert items["domains"][0]["vlans"] == {"10200": 100}
    assert items["tenants"][0]["cugs"] == ["db", "web"] and items["policy"][0]["name"] == "web-to-db"
    assert items["migrations"] == [] and items["statuses"] == []


def test_get_filters_by_name_and_says_what_exists(etcd, tmp_path):
    url, _ = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    code, text = run("get", "bindings", "vm2", "--store", url, "-f", "json")
    assert code == 0 and [b["iface_id"] for b in json.loads(text)["items"]] == ["vm2/0"]
    code, text = run("get", "cugs", "10200", "--store", url, "-f", "json")
    assert code == 0 and [s["name"] for s in json.loads(text)["items"]] == ["db"]
    code, text = run("get", "ports", "vm9", "--store", url)
    assert code == 1 and "no VM 'vm9' among the ports (VMs: vm1, vm2, vm3)" in text
    code, text = run("get", "migrations", "vm1", "--store", url)
    assert code == 1 and "no VM 'vm1' among the migrations (there are no migrations)" in text
    code, text = run("get", "routers", "--store", url)
    assert code == 1 and "unknown kind 'routers': one of nves, ports, bindings, migrations, segments" in text


def test_an_unreachable_store_is_a_clear_error(tmp_path):
    code, text = run("status", "--store", f"unix://{tmp_path}/nothing.sock")
    assert code == 1 and "etcd at unix://" in text


def test_status_and_get_say_what_the_expiry_does_at_a_moves_deadline(etcd, tmp_path):
    url, store = etcd
    run("apply", write(tmp_path, BASE), "--store", url)
    m = MappingSystem(store, clock=lambda: 1_800_000_000.0)  # 2027-01-15 08:00:00 UTC
    m.prepare("vm1/0", "hv2", timeout=60, complete_within=300)
    m.prepare("vm3/0", "hv1", timeout=60)
    m.activate("vm1/0")
    m.statuses.publish(NveStatus("hv2", expired=("vm9/0: activated move from hv3 not completed within 120 s: "
                                                 "completed by expiry",)))
    data = json.loads(run("status", "--store", url, "-f", "json")[1])
    rows = {g["vm"]: (g["state"], g["at_deadline"], g["deadline"], g["complete_within"]) for g in data["migrations"]}
    assert rows == {"vm1": ("activated", "completed", 1_800_000_300.0, 300.0),
                    "vm3": ("prepared", "rolled back", 1_800_000_060.0, 0.0)}
    assert {n["name"]: n["expired"] for n in data["nves"]}["hv2"] == [
        "vm9/0: activated move from hv3 not completed within 120 s: completed by expiry"]
    code, text = run("get", "migrations", "--store", url)
    assert code == 0 and "expiry (UTC)" in text, text
    vm1, vm3 = text[text.index("vm1/0"):text.index("vm3/0")], text[text.index("vm3/0"):]  # a cell may wrap
    assert "completes" in vm1 and "08:05:00" in vm1 and "rolls back" in vm3 and "08:01:00" in vm3
