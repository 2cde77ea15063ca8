"""The command line on real labs: `lab up/down/inspect/exec`, `migrate`, and its error messages."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from roamnet.lab.state import cleanup, state_dir


@contextlib.contextmanager
def cli_lab(host: Any, path: Path, name: str) -> Iterator[dict]:
    """`roamnet lab up PATH` ... always `roamnet lab down NAME` (and the product's crash clean-up)."""
    try:
        p = host.roamnet("lab", "up", str(path), "-f", "json")
        assert p.returncode == 0, f"lab up {name}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        yield json.loads(p.stdout)
    finally:
        host.roamnet("lab", "down", name)
        if state_dir(name).exists():
            cleanup(name)  # only this lab's journal and its own daemon pid


def write_topology(path: Path, topo: dict) -> Path:
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    return path


def present_namespaces(host: Any, name: str) -> list[str]:
    return sorted(ns for ns in host.netns_list() if ns.startswith(f"rn-{name}-"))


def test_down_leaves_nothing_and_spares_other_lab(tmp_path: Path, host: Any, lab_name: Any, make_topology: Any,
                                                  lab_namespaces: Any, addr: Any) -> None:
    first, second = lab_name("t-down-a"), lab_name("t-down-b")
    topos = {}
    for name in (first, second):
        # dc1: hv1 (vm1), dc2: hv2 (vm2): a ping between them crosses the WAN over VXLAN
        topos[name] = make_topology(name, datacenters={"dc1": ["hv1"], "dc2": ["hv2"]},
                                    vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web")})
        lab_namespaces(topos[name])  # none exists yet
    files = {n: write_topology(tmp_path / f"{n}.yaml", t) for n, t in topos.items()}

    with cli_lab(host, files[second], second) as up_b:
        with cli_lab(host, files[first], first) as up_a:
            assert up_a["lab"] == first and up_b["lab"] == second
            ns_a, ns_b = present_namespaces(host, first), present_namespaces(host, second)
            # wan, dci, 2 borders, 2 servers, 2 VMs (guest + NIC holder each)
            assert len(ns_a) == len(ns_b) == 10, (ns_a, ns_b)
            assert host.daemon_pids(first) and host.daemon_pids(second)

            p = host.roamnet("lab", "down", first)
            assert p.returncode == 0, p.stderr
            assert f"lab {first} is down" in p.stdout

            left = [ns for ns in host.netns_list() if ns.startswith(f"rn-{first}-")]
            assert not left, f"namespaces of {first} left after `lab down`: {left}"
            deadline = time.monotonic() + 5
            while host.daemon_pids(first) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not host.daemon_pids(first), f"daemon of {first} still running"
            assert not state_dir(first).exists(), f"{state_dir(first)} still exists"

            # the other lab is untouched and still works
            assert present_namespaces(host, second) == ns_b
            assert host.daemon_pids(second)
            p = host.roamnet("lab", "inspect", second, "-f", "json")
            assert p.returncode == 0, p.stderr
            data = json.loads(p.stdout)
            assert data["lab"] == second and {n["name"] for n in data["nodes"]} >= {"vm1", "vm2", "hv1", "hv2"}
            p = host.roamnet("lab", "exec", second, "vm1", "--", "ping", "-c", "2", "-W", "1",
                             addr.ip(topos[second], "vm2"), timeout=30)
            assert p.returncode == 0, f"ping in {second} after downing {first}: {p.stdout}\n{p.stderr}"

        p = host.roamnet("lab", "down", second)
        assert p.returncode == 0, p.stderr
        assert not present_namespaces(host, second)
        assert not state_dir(second).exists()
        deadline = time.monotonic() + 5
        while host.daemon_pids(second) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not host.daemon_pids(second)


def test_cli_errors(tmp_path: Path, host: Any, lab_name: Any, make_topology: Any, lab_namespaces: Any,
                    addr: Any) -> None:
    # a topology with an address outside its CUG's subnet: refused before anything exists
    bad_name = lab_name("t-cli-bad")
    bad = make_topology(bad_name, datacenters={"dc1": ["hv1"]}, vms={"vm1": ("hv1", "web")})
    bad["vms"]["vm1"]["interfaces"][0]["ip"] = "198.19.7.11"  # web is 198.19.1.0/24
    bad_file = write_topology(tmp_path / "bad-topology.yaml", bad)
    p = host.roamnet("lab", "up", str(bad_file))
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert str(bad_file) in out, out
    assert "vms.vm1.interfaces[0].ip" in out, out
    assert "Traceback" not in out, out
    assert not present_namespaces(host, bad_name), "a refused topology created namespaces"
    assert not state_dir(bad_name).exists(), "a refused topology created a state directory"

    name = lab_name("t-cli")
    topo = make_topology(name, datacenters={"dc1": ["hv1", "hv2"]},
                         vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web")})
    lab_namespaces(topo)
    with cli_lab(host, write_topology(tmp_path / f"{name}.yaml", topo), name):
        # migrate to a server that does not exist: a clear error, nothing moves
        p = host.roamnet("migrate", name, "vm1", "--to", "hv9")
        assert p.returncode != 0
        assert "hv9" in p.stderr and "server" in p.stderr, p.stderr
        assert "Traceback" not in p.stdout + p.stderr
        # ... an unknown VM and an unknown lab, likewise
        p = host.roamnet("migrate", name, "vm9", "--to", "hv2")
        assert p.returncode != 0 and "vm9" in p.stderr, p.stderr
        p = host.roamnet("migrate", "t-cli-nolab", "vm1", "--to", "hv2")
        assert p.returncode != 0 and "t-cli-nolab" in p.stderr and "Traceback" not in p.stderr, p.stderr

        # inspect -f json parses, with nodes and mapping; vm1 still on hv1
        p = host.roamnet("lab", "inspect", name, "-f", "json")
        assert p.returncode == 0, p.stderr
        data = json.loads(p.stdout)
        nodes = {n["name"]: n for n in data["nodes"]}
        assert {"vm1", "vm2", "hv1", "hv2", "dci", "wan"} <= set(nodes)
        assert nodes["vm1"]["server"] == "hv1"
        assert "mapping" in data and isinstance(data["mapping"]["bindings"], list)
        binding = {b["mac"]: b for b in data["mapping"]["bindings"]}[addr.mac(topo, "vm1")]
        assert binding["nve"] == "hv1" and binding["vtep"] == nodes["hv1"]["vtep"] == "198.18.1.1"
        assert addr.ip(topo, "vm1") in binding["ips"]

        # exec runs inside the VM's namespace: its eth0 carries the VM's IP
        p = host.roamnet("lab", "exec", name, "vm1", "--", "ip", "-j", "addr", "show", "dev", "eth0")
        assert p.returncode == 0, p.stderr
        ips = [a["local"] for link in json.loads(p.stdout) for a in link.get("addr_info", [])]
        assert addr.ip(topo, "vm1") in ips
        p = host.roamnet("lab", "exec", name, "vm9", "--", "true")
        assert p.returncode != 0 and "vm9" in p.stderr, p.stderr

        # a valid migration via the CLI still works after the refused ones
        p = host.roamnet("migrate", name, "vm1", "--to", "hv2", "-f", "json")
        assert p.returncode == 0, p.stderr
        rec = json.loads(p.stdout)
        assert (rec["from"], rec["to"], rec["mode"]) == ("hv1", "hv2", "prepared")

        # the phases one by one, as an orchestrator's hook calls them
        p = host.roamnet("migrate", name, "vm1", "--phase", "complete")
        assert p.returncode != 0 and "no move in progress" in p.stderr, p.stderr
        p = host.roamnet("migrate", name, "vm1", "--phase", "prepare")
        assert p.returncode == 2 and "--to is required" in p.stderr, p.stderr
        p = host.roamnet("migrate", name, "vm1", "--phase", "prepare", "--to", "hv1", "-f", "json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["phase"] == "prepared"
        p = host.roamnet("migrate", name, "vm1", "--phase", "prepare", "--to", "hv1")
        assert p.returncode != 0 and "already in progress" in p.stderr, p.stderr
        data = json.loads(host.roamnet("lab", "inspect", name, "-f", "json").stdout)
        assert data["pending"] == {"vm1": {"from": "hv2", "to": "hv1", "resumed": False}}
        assert [m["dst"] for m in data["mapping"]["migrations"]] == ["hv1"]
        p = host.roamnet("migrate", name, "vm1", "--phase", "complete")
        assert p.returncode != 0 and "not activated" in p.stderr, p.stderr
        for phase in ("resume", "activate", "complete"):
            p = host.roamnet("migrate", name, "vm1", "--phase", phase, "-f", "json")
            assert p.returncode == 0, (phase, p.stderr)
        data = json.loads(host.roamnet("lab", "inspect", name, "-f", "json").stdout)
        assert data["pending"] == {} and data["mapping"]["migrations"] == []
        assert {n["name"]: n for n in data["nodes"]}["vm1"]["server"] == "hv1"
        # and a prepared move that is aborted leaves the VM where it was
        assert host.roamnet("migrate", name, "vm1", "--phase", "prepare", "--to", "hv2").returncode == 0
        assert host.roamnet("migrate", name, "vm1", "--phase", "abort").returncode == 0
        data = json.loads(host.roamnet("lab", "inspect", name, "-f", "json").stdout)
        assert data["pending"] == {} and {n["name"]: n for n in data["nodes"]}["vm1"]["server"] == "hv1"
    assert not present_namespaces(host, name)


@pytest.mark.parametrize("args", [("lab", "inspect", "t-cli-none"), ("lab", "down", "t-cli-none")])
def test_cli_unknown_lab(host: Any, args: tuple[str, ...]) -> None:
    p = host.roamnet(*args)
    assert p.returncode != 0
    assert "t-cli-none" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_down_after_daemon_crash(tmp_path: Path, host: Any, lab_name: Any, make_topology: Any,
                                 lab_namespaces: Any) -> None:
    """A lab whose daemon died is still removed by `lab down`, from its journal, and nothing else."""
    name, other = lab_name("t-crash"), lab_name("t-crash-keep")
    topo = make_topology(name, datacenters={"dc1": ["hv1"]}, vms={"vm1": ("hv1", "web")})
    keep = make_topology(other, datacenters={"dc1": ["hv1"]}, vms={"vm1": ("hv1", "web")})
    lab_namespaces(topo)
    lab_namespaces(keep)
    with cli_lab(host, write_topology(tmp_path / f"{other}.yaml", keep), other):
        with cli_lab(host, write_topology(tmp_path / f"{name}.yaml", topo), name):
            before_other = present_namespaces(host, other)
            pids = host.daemon_pids(name)
            assert len(pids) == 1
            host.run(["kill", "-9", str(pids[0])])  # by its own pid
            deadline = time.monotonic() + 5
            while host.daemon_pids(name) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert present_namespaces(host, name), "the crash itself should leave the namespaces"
            p = host.roamnet("lab", "inspect", name)
            assert p.returncode != 0 and "does not answer" in p.stderr, p.stderr
            p = host.roamnet("lab", "down", name)
            assert p.returncode == 0, p.stderr
            assert not present_namespaces(host, name)
            assert not state_dir(name).exists()
            assert present_namespaces(host, other) == before_other
