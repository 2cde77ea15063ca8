"""Every CLI command in every output format on every packaged example (issue 13: `lab inspect` in table
form crashed on any lab with a tenant, and no test ran it).

One lab per packaged topology, built once through `roamnet lab up` from a copy of the example whose
top-level `name:` is this test's own lab name, and every command run against it: validate, lab up,
lab list, lab inspect (table and json), lab exec, migrate (whole moves in table and json, a --phase
sequence), lab restart-agent (table and json), lab down. Then `schema`, the two packaged scenarios,
and an unknown lab. Each output must come with exit code 0, no traceback, and say something
meaningful: json parses and has its keys, tables name the lab, its nodes, its VMs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from roamnet.intent.model import Topology, load_topology
from roamnet.intent.scenario import packaged_example
from roamnet.lab.plan import build_plan
from roamnet.lab.state import cleanup, state_dir

EXAMPLES_DIR = packaged_example("two-dc.yaml").parent
# every packaged topology (a scenario names a `topology:` instead of being one)
TOPOLOGIES = sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml") if "topology" not in yaml.safe_load(p.read_text()))
SCENARIOS = sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml") if p.name not in TOPOLOGIES)
WIDE = "200"  # COLUMNS for rich: table assertions need cells that are not wrapped
RUN_OK = (0,)  # run/demo exit 3 only when a stream did not do what the scenario expects of it


def test_examples_are_found() -> None:
    """The parametrization below sees the packaged examples (an empty list would test nothing)."""
    assert {"two-dc.yaml", "pods.yaml", "policy.yaml", "routed.yaml"} <= set(TOPOLOGIES), TOPOLOGIES
    assert {"demo.yaml", "routed-demo.yaml"} <= set(SCENARIOS), SCENARIOS


# ---------------------------------------------------------------- helpers

ROAMNET = str(Path(sys.executable).parent / "roamnet")  # the venv's console script, as conftest's `host.roamnet`


def roamnet(*args: str, timeout: float = 120.0, columns: str = WIDE) -> subprocess.CompletedProcess:
    """The real command line as a user runs it, its output not a terminal: rich lays tables out
    `columns` wide."""
    return subprocess.run([ROAMNET, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": columns})


def ok(p: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    """Exit code 0 and no traceback anywhere."""
    out = f"{what} -> {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}"
    assert "Traceback" not in p.stdout + p.stderr, out
    assert p.returncode == 0, out
    return p


def cli(*args: str, timeout: float = 120.0, columns: str = WIDE) -> subprocess.CompletedProcess:
    return ok(roamnet(*args, timeout=timeout, columns=columns), "roamnet " + " ".join(args))


def parsed(p: subprocess.CompletedProcess) -> Any:
    try:
        return json.loads(p.stdout)
    except ValueError as exc:
        raise AssertionError(f"{p.args[1:]}: not JSON ({exc}): {p.stdout[:2000]}") from None


def cli_json(*args: str, timeout: float = 120.0) -> Any:
    return parsed(cli(*args, timeout=timeout))


def cli_many(*calls: tuple[str, ...], timeout: float = 120.0) -> list[subprocess.CompletedProcess]:
    """Independent commands, all at once (each one spends about a second importing Python modules
    before it does anything); each must succeed. Results in order. A call may start with
    ("COLUMNS=80",) to lay out its tables that wide."""
    def one(call: tuple[str, ...]) -> subprocess.CompletedProcess:
        if call[0].startswith("COLUMNS="):
            return roamnet(*call[1:], timeout=timeout, columns=call[0].split("=", 1)[1])
        return roamnet(*call, timeout=timeout)

    with ThreadPoolExecutor(len(calls)) as pool:
        procs = list(pool.map(one, calls))
    return [ok(p, "roamnet " + " ".join(c)) for p, c in zip(procs, calls)]


def renamed_copy(src: Path, dst: Path, name: str) -> Path:
    """The example's text with its top-level `name:` replaced (comments and all else kept)."""
    text, n = re.subn(r"^name: .*$", f"name: {name}", src.read_text(), count=1, flags=re.M)
    assert n == 1, f"{src}: no top-level `name:` line"
    dst.write_text(text)
    return dst


def present_namespaces(host: Any, name: str) -> list[str]:
    return sorted(ns for ns in host.netns_list() if ns.startswith(f"rn-{name}-"))


@contextlib.contextmanager
def lab_removed_after(host: Any, name: str) -> Iterator[None]:
    """Whatever the test did: afterwards the lab is down (`roamnet lab down`, then the product's own
    clean-up of this lab's journal and daemon) and none of its namespaces is left."""
    try:
        yield
    finally:
        if state_dir(name).exists():
            roamnet("lab", "down", name)
        if state_dir(name).exists():
            cleanup(name)
        left = present_namespaces(host, name)
        assert not left, f"namespaces of {name} left: {left}"


def pick(topo: Topology) -> dict[str, str]:
    """What to do on `topo`: `mover` moves whole (to `dst`, another DC if there is one, and back);
    `phased` moves phase by phase to `phased_dst`; `peer` shares a CUG with `mover` (pinged)."""
    dcs = topo.server_dc()
    vms = list(topo.vms)

    def elsewhere(vm: str) -> str:
        here = topo.vms[vm].server
        others = [s for s in dcs if s != here]
        return next((s for s in others if dcs[s] != dcs[here]), others[0])

    def shares_cug(a: str, b: str) -> str | None:
        return next((i.cug for i in topo.vms[a].interfaces if topo.vms[b].interface_in(i.cug)), None)

    mover = vms[0]
    peers = [v for v in vms[1:] if shares_cug(mover, v)]
    assert peers, f"{topo.name}: no VM shares a CUG with {mover}"
    peer = next((v for v in peers if topo.vms[v].server != topo.vms[mover].server), peers[0])
    cug = shares_cug(mover, peer)
    phased = next(v for v in vms if v != mover)
    return {"mover": mover, "dst": elsewhere(mover), "peer": peer,
            "peer_ip": str(topo.vms[peer].interface_in(cug).ip),
            "phased": phased, "phased_dst": elsewhere(phased)}


def check_inspect_table(text: str, data: dict, topo: Topology) -> None:
    """The table form of inspect shows what the json form says: a row per node (name, kind, data
    center, namespace, details), the VRF lines of tenant labs, the mapping, the WAN routes."""
    assert f"lab {data['lab']}" in text, text[:500]
    for n in data["nodes"]:
        row = re.search(rf"^│ {re.escape(n['name'])}\s+│ {n['kind']}\s+│ {n.get('dc') or ''}\s*│ "
                        rf"{re.escape(n['namespace'])}\s+│(.*)│$", text, re.M)
        assert row, f"no row for node {n['name']} ({n['kind']}) in the table:\n{text}"
        details = row.group(1)
        if n["kind"] == "vm":
            assert details.strip().startswith(f"on {n['server']} "), details
            assert all(i["ip"] in details and i["mac"] in details for i in n["interfaces"]), (n, details)
        elif "switch" in n:
            assert f"behind {n['tor']} ({n['domain']})" in details, details
        elif "vtep" in n and "agent" in n:
            assert f"VTEP {n['vtep']} " in details, details
    for tenant, t in topo.tenants.items():  # the VRF lines of every NVE with that tenant
        vrf_nodes = [n for n in data["nodes"] if tenant in n.get("vrfs", {})]
        assert vrf_nodes, f"no NVE has a VRF of tenant {tenant}: {data['nodes']}"
        lines = [ln for ln in text.splitlines() if f"{tenant}: L3 VNI {t.l3vni}" in ln]
        assert len(lines) == len(vrf_nodes), (tenant, len(vrf_nodes), text)
        assert all("gateways" in ln and "host routes" in ln for ln in lines), lines
    for tor, dom in topo.tors().items():
        for server in dom.servers:
            assert re.search(rf"^│ {server}\s.*behind {tor} \({dom.name}\)", text, re.M), (server, text)
    if topo.tors():
        assert "VLANs per L2 domain" in text
    for b in data["mapping"]["bindings"]:
        assert b["mac"] in text and b["vtep"] in text
    assert re.search(r"mapping \(revision \d+\)", text), text  # the json was read at about the same time
    if data.get("wan_bgp"):
        assert "WAN routes" in text
        for prefix, border in data["wan_bgp"]["wan_routes"].items():
            assert re.search(rf"^│ {re.escape(prefix)}\s+│ {border}\s+│$", text, re.M), (prefix, border, text)


# ---------------------------------------------------------------- every command on every example


@pytest.mark.parametrize("example", TOPOLOGIES)
def test_every_command_on_example(example: str, tmp_path: Path, host: Any, lab_name: Any,
                                  lab_namespaces: Any) -> None:
    name = lab_name(f"t-co-{example.removesuffix('.yaml')}"[:16])
    src = EXAMPLES_DIR / example
    path = renamed_copy(src, tmp_path / example, name)
    topo = load_topology(path)
    planned = lab_namespaces(yaml.safe_load(path.read_text()))  # none of them exists yet
    plan = pick(topo)
    mover, dst, phased = plan["mover"], plan["dst"], plan["phased"]
    home, dcs = topo.vms[mover].server, topo.server_dc()
    # formats and kinds of move alternate between the examples (each lab costs ~10 s to build):
    # even: lab up -f json, lab down (table), a prepared move in table form, then a --phase sequence;
    # odd:  lab up (table), lab down -f json, a learn-driven move (--no-prepare) in table form
    even = TOPOLOGIES.index(example) % 2 == 0

    with lab_removed_after(host, name):
        # lab up, and meanwhile validate (the packaged file, and the copy)
        up, *valid = cli_many(("lab", "up", str(path), *(["-f", "json"] if even else [])),
                              ("validate", str(src)), ("validate", str(path)), timeout=180)
        for f, lab, p in zip((src, path), (load_topology(src).name, name), valid):
            assert f"{f}: ok — lab {lab}: " in p.stdout and f"{len(topo.vms)} VMs" in p.stdout, p.stdout
        if even:
            res = parsed(up)
            assert res["lab"] == name and res["namespaces"] == len(planned) and res["pid"] > 0, res
        else:
            assert f"lab {name} is up: {len(planned)} namespaces" in up.stdout, up.stdout
        assert present_namespaces(host, name) == sorted(planned)

        # lab list, lab inspect (json; the table; the table 80 columns wide, as piped at the default
        # width), lab exec (a ping between two VMs sharing a CUG, and from each WAN client): at once
        ping = ("ping", "-c", "2", "-W", "2")
        clients = [(c, str(topo.routed_interface(mover)[1].ip)) for c in topo.wan_clients()]
        listed, listed_json, data, table, narrow, *pings = cli_many(
            ("lab", "list"), ("lab", "list", "-f", "json"), ("lab", "inspect", name, "-f", "json"),
            ("lab", "inspect", name), ("COLUMNS=80", "lab", "inspect", name, "-f", "table"),
            ("lab", "exec", name, mover, "--", *ping, plan["peer_ip"]),
            *(("lab", "exec", name, client, "--", *ping, ip) for client, ip in clients))
        assert name in listed.stdout.split() and name in parsed(listed_json)
        data = parsed(data)
        assert data["lab"] == name
        assert {"nodes", "namespaces", "mapping", "migrations", "pending", "control_plane", "wan_bgp"} <= set(data)
        nodes = {n["name"]: n for n in data["nodes"]}
        assert topo.node_names() <= set(nodes), (topo.node_names(), set(nodes))
        assert sorted(data["namespaces"]) == sorted(planned)
        assert {n for n, v in nodes.items() if v["kind"] == "vm"} == set(topo.vms)
        assert all(nodes[vm]["server"] == v.server for vm, v in topo.vms.items())
        assert len(data["mapping"]["bindings"]) == sum(len(v.interfaces) for v in topo.vms.values())
        if data["wan_bgp"] is not None:
            assert "error" not in data["wan_bgp"], data["wan_bgp"]
        check_inspect_table(table.stdout, data, topo)
        assert f"lab {name}" in narrow.stdout and all(vm in narrow.stdout for vm in topo.vms), narrow.stdout
        for p, ip in zip(pings, [plan["peer_ip"], *(ip for _, ip in clients)]):
            assert f"bytes from {ip}" in p.stdout, p.stdout

        # lab restart-agent: the mover's NVE (table), a ToR or a border with VRFs or another server (json)
        agents = [n for n, v in nodes.items() if "agent" in v]
        assert home in agents, agents
        p = cli("lab", "restart-agent", name, home)
        assert p.stdout.strip() == f"agent on {home} restarted; changes on restart: none", p.stdout
        other = next((n for n in agents if nodes[n]["kind"] == "tor"), None) or \
            next((n for n in agents if nodes[n]["kind"] == "border" and nodes[n].get("vrfs")), None) or \
            next(n for n in agents if n != home and nodes[n]["kind"] == "server")
        restarted = cli_json("lab", "restart-agent", name, other, "-f", "json")
        assert {k: restarted[k] for k in ("server", "changes_on_restart")} == {"server": other, "changes_on_restart": []}

        # migrate: a whole move in table form, and back in json
        p = cli("migrate", name, mover, "--to", dst, *([] if even else ["--no-prepare"]))
        assert p.stdout.startswith(f"{mover}: {home} ({dcs[home]}) → {dst} ({dcs[dst]}), "
                                   f"{'prepared' if even else 'learn'}"), p.stdout
        assert ", pause 0 ms (dark " in p.stdout and (not even or ", activated by announcement, " in p.stdout), p.stdout
        assert "every NVE programmed" in p.stdout, p.stdout
        rec = cli_json("migrate", name, mover, "--to", home, "--pause-ms", "20", "-f", "json")
        assert (rec["vm"], rec["from"], rec["to"], rec["dc_from"], rec["dc_to"]) == (mover, dst, home, dcs[dst],
                                                                                    dcs[home]), rec
        assert rec["mode"] == "prepared" and rec["pause_ms"] == 20 and rec["converged_ms"] is not None, rec

        if even:  # migrate --phase: prepare, resume, activate, complete, in alternating formats
            start, to = topo.vms[phased].server, plan["phased_dst"]
            p = cli("migrate", name, phased, "--phase", "prepare", "--to", to)
            assert p.stdout.strip() == f"{phased}: prepared ({start} → {to})", p.stdout
            data, table = cli_many(("lab", "inspect", name, "-f", "json"), ("lab", "inspect", name))
            data = parsed(data)  # inspect during a move: both forms
            assert data["pending"] == {phased: {"from": start, "to": to, "resumed": False}}, data["pending"]
            assert [m["dst"] for m in data["mapping"]["migrations"]] == [to] * len(topo.vms[phased].interfaces)
            check_inspect_table(table.stdout, data, topo)
            assert cli_json("migrate", name, phased, "--phase", "resume", "-f", "json")["phase"] == "resumed"
            p = cli("migrate", name, phased, "--phase", "activate")
            assert p.stdout.startswith(f"{phased}: activated"), p.stdout
            assert cli_json("migrate", name, phased, "--phase", "complete", "-f", "json")["phase"] == "completed"

        # after the moves: inspect (both forms) shows where the VMs are; the ping still goes through
        data, table, p = cli_many(("lab", "inspect", name, "-f", "json"), ("lab", "inspect", name),
                                  ("lab", "exec", name, mover, "--", *ping, plan["peer_ip"]))
        assert f"bytes from {plan['peer_ip']}" in p.stdout, p.stdout
        data = parsed(data)
        nodes = {n["name"]: n for n in data["nodes"]}
        assert nodes[mover]["server"] == home, nodes[mover]
        if even:
            assert nodes[phased]["server"] == plan["phased_dst"], nodes[phased]
        assert data["pending"] == {} and data["mapping"]["migrations"] == [], data
        assert [(m["from"], m["to"]) for m in data["migrations"] if m["vm"] == mover] == [(home, dst), (dst, home)]
        check_inspect_table(table.stdout, data, topo)

        # lab down, in the other format than lab up
        if even:
            p = cli("lab", "down", name)
            assert p.stdout.strip() == f"lab {name} is down: removed {len(planned)} namespaces", p.stdout
        else:
            down = cli_json("lab", "down", name, "-f", "json")
            assert down["lab"] == name and sorted(down["removed"]) == sorted(planned), down
        assert not present_namespaces(host, name)
        assert not state_dir(name).exists()


# ---------------------------------------------------------------- schema, scenarios, bad input


def test_schema() -> None:
    schema = cli_json("schema")
    assert schema["type"] == "object" and {"name", "datacenters", "cugs", "vms"} <= set(schema["properties"])
    assert "name" in schema["required"]


@contextlib.contextmanager
def demo_lock(timeout: float = 180.0) -> Iterator[None]:
    """`roamnet demo` always builds lab `two-dc` (the packaged example's name): two runs of this file on
    one host take turns (bounded wait), and a `two-dc` lab of someone else means a skip."""
    with open(Path(tempfile.gettempdir()) / "roamnet-test-demo.lock", "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip("another test run holds the demo lock")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# Both scenarios build a lab and run 8 s of traffic: to keep the suite fast each runs once, `demo` in
# table form (the table renderer `run` shares) and routed-demo with `run -f json`.
def test_demo_table(host: Any) -> None:
    scn = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
    topo = load_topology(EXAMPLES_DIR / scn["topology"])
    name, planned = topo.name, set(build_plan(topo).namespaces())
    with demo_lock():
        if planned & set(host.netns_list()) or state_dir(name).exists():
            pytest.skip(f"a lab {name!r} is up on this host (not ours: `roamnet demo` would refuse)")
        p = roamnet("demo", timeout=240)
        assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        if p.returncode != 0 and "already up" in p.stderr:
            pytest.skip(f"someone else built lab {name!r} meanwhile: {p.stderr.strip()}")
        assert p.returncode in RUN_OK, f"demo -> {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
        lines = p.stdout.splitlines()
        for st in scn["streams"]:
            assert any(re.match(rf"│ {st['name']}\s+│ {st['proto']}\s+│ {st['from']} → {st['to']}", ln)
                       for ln in lines), (st, p.stdout)
        where = {vm: v.server for vm, v in topo.vms.items()}
        for step in scn["steps"]:  # each move's row: vm, from, to
            frm, where[step["migrate"]] = where[step["migrate"]], step["to"]
            row = rf"│ {step['migrate']}\s+│ {frm}\s+│ {step['to']}\s"
            assert any(re.match(row, ln) for ln in lines), (step, p.stdout)
        assert "streams" in p.stdout and "migrations" in p.stdout
        assert not planned & set(host.netns_list()) and not state_dir(name).exists()


@contextlib.contextmanager
def packaged_run(tmp_path: Path, host: Any, name: str, lab_namespaces: Any, scenario: str) -> Iterator[tuple]:
    """`roamnet run SCENARIO -f json` on the packaged scenario unchanged, next to a copy of its topology
    named `name`: yields (the scenario as YAML data, the report), the lab gone afterwards."""
    scn_path = Path(shutil.copy(EXAMPLES_DIR / scenario, tmp_path / scenario))
    scn = yaml.safe_load(scn_path.read_text())
    topo_path = renamed_copy(EXAMPLES_DIR / scn["topology"], tmp_path / scn["topology"], name)
    lab_namespaces(yaml.safe_load(topo_path.read_text()))
    with lab_removed_after(host, name):
        p = roamnet("run", str(scn_path), "-f", "json", timeout=240)
        assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        assert p.returncode in RUN_OK, f"run -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        yield scn, json.loads(p.stdout)


def test_run_routed_demo_json(tmp_path: Path, host: Any, lab_name: Any, lab_namespaces: Any) -> None:
    name = lab_name("t-co-rdemo")
    with packaged_run(tmp_path, host, name, lab_namespaces, "routed-demo.yaml") as (scn, report):
        assert {"streams", "migrations", "paths", "counters", "meta"} <= set(report), list(report)
        assert report["meta"]["lab"] == name
        assert [s["name"] for s in report["streams"]] == [s["name"] for s in scn["streams"]]
        assert all(s["sent"] > 0 and isinstance(s["survived"], bool) for s in report["streams"]), report["streams"]
        assert [(m["vm"], m["to"]) for m in report["migrations"]] == [(s["migrate"], s["to"]) for s in scn["steps"]]
        wan = {s["name"] for s in scn["streams"] if "client1" in (s["from"], s["to"])}
        assert {x["stream"] for x in report["paths"]} == wan, report["paths"]
        assert not state_dir(name).exists(), "run left its state directory"


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_inspect_unknown_lab(fmt: str) -> None:
    p = roamnet("lab", "inspect", "t-co-nolab", "-f", fmt)
    assert p.returncode != 0 and p.stdout == "", p.stdout
    assert "Traceback" not in p.stderr
    assert "lab 't-co-nolab' is not running" in p.stderr, p.stderr


def test_run_policy_demo_expectations(tmp_path: Path, host: Any, lab_name: Any, lab_namespaces: Any) -> None:
    """The packaged policy scenario: the streams t1's policy denies receive nothing across two moves
    (`expect: denied`), the allowed ones survive, and so the run exits 0."""
    with packaged_run(tmp_path, host, lab_name("t-co-pdemo"), lab_namespaces, "policy-demo.yaml") as (scn, report):
        streams = {s["name"]: s for s in report["streams"]}
        denied = {s["name"] for s in scn["streams"] if s.get("expect") == "denied"}
        assert denied == {"web-db-udp", "ssh"}
        for st in streams.values():
            assert st["met"] is True, st
            if st["name"] in denied:
                assert st["expect"] == "denied" and st["received"] == 0, st
                assert st["sent"] > 0 or st["proto"] == "tcp", st  # a denied TCP stream never connects
            else:
                assert st["expect"] == "delivered" and st["survived"] is True and st["received"] > 0, st
