"""Scenarios: topology by path, inline or packaged name; every bad input refused with its path."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from roamnet.intent.model import IntentError
from roamnet.intent.scenario import Scenario, Stream, load_scenario, packaged_example, parse_scenario

EXAMPLES = Path(str(resources.files("roamnet").joinpath("examples")))


def scenario(**changes: Any) -> dict[str, Any]:
    """A valid scenario on an inline copy of two-dc, with top-level changes."""
    data: dict[str, Any] = {
        "topology": yaml.safe_load((EXAMPLES / "two-dc.yaml").read_text()),
        "duration": 6,
        "streams": [
            {"name": "l2", "from": "vm2", "to": "vm1", "proto": "udp", "rate": 1000},
            {"name": "tcp", "from": "vm3", "to": "vm1", "proto": "tcp"},
        ],
        "steps": [{"at": 2.0, "migrate": "vm1", "to": "hv3", "pause_ms": 0}],
    }
    data.update(changes)
    return data


def refused(edit: Callable[[dict[str, Any]], None]) -> IntentError:
    data = scenario()
    edit(data)
    with pytest.raises(IntentError) as info:
        parse_scenario(data, "s.yaml")
    assert info.value.source == "s.yaml"
    return info.value


def assert_problem(err: IntentError, path: str, fragment: str) -> None:
    reasons = [reason for p, reason in err.problems if p == path]
    assert any(fragment in r for r in reasons), f"{fragment!r} not at {path}; got {err.problems}"
    assert f"{err.source}: {path}: " in str(err)


def stream(i: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["streams"][i].update(changes)


def step(i: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["steps"][i].update(changes)


# ---------------------------------------------------------------- good input


def test_inline_topology() -> None:
    s = parse_scenario(scenario())
    assert isinstance(s, Scenario)
    assert s.topology.name == "two-dc"
    assert s.duration == 6.0
    assert [(st.name, st.from_, st.to, st.proto) for st in s.streams] == [
        ("l2", "vm2", "vm1", "udp"), ("tcp", "vm3", "vm1", "tcp")]
    assert s.steps[0].migrate == "vm1" and s.steps[0].to == "hv3"


def test_default_rates() -> None:
    s = parse_scenario(scenario(streams=[
        {"name": "u", "from": "vm2", "to": "vm1", "proto": "udp"},
        {"name": "t", "from": "vm2", "to": "vm1", "proto": "tcp"},
        {"name": "t2", "from": "vm2", "to": "vm1", "proto": "tcp", "rate": 50, "port": 5001},
    ]))
    assert [(st.rate, st.port) for st in s.streams] == [(1000, None), (200, None), (50, 5001)]


def test_stream_by_field_name_and_alias_dump() -> None:
    st = Stream(name="x", from_="vm2", to="vm1", proto="tcp")
    assert st.rate == 200
    assert st.model_dump(by_alias=True)["from"] == "vm2"


def test_stream_expectation_default_and_denied() -> None:
    s = parse_scenario(scenario(streams=[
        {"name": "ok", "from": "vm2", "to": "vm1", "proto": "udp"},
        {"name": "no", "from": "vm2", "to": "vm1", "proto": "tcp", "expect": "denied"},
        {"name": "yes", "from": "vm2", "to": "vm1", "proto": "udp", "expect": "delivered"},
    ]))
    assert [st.expect for st in s.streams] == ["delivered", "denied", "delivered"]


def test_relative_topology_path(tmp_path: Path) -> None:
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "mine.yaml").write_text((EXAMPLES / "two-dc.yaml").read_text().replace("two-dc", "mine"))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(scenario(topology="labs/mine.yaml")))
    assert load_scenario(path).topology.name == "mine"


def test_file_next_to_scenario_wins_over_packaged_example(tmp_path: Path) -> None:
    (tmp_path / "two-dc.yaml").write_text((EXAMPLES / "two-dc.yaml").read_text().replace("name: two-dc", "name: local"))
    assert parse_scenario(scenario(topology="two-dc.yaml"), base_dir=tmp_path).topology.name == "local"


def test_packaged_example_name(tmp_path: Path) -> None:
    s = parse_scenario(scenario(topology="two-dc.yaml"), "s.yaml", tmp_path)
    assert s.topology.name == "two-dc"
    assert packaged_example("two-dc.yaml") == EXAMPLES / "two-dc.yaml"
    assert packaged_example("../model.py") is None
    assert packaged_example("nope.yaml") is None


def test_packaged_demo_loads() -> None:
    s = load_scenario(EXAMPLES / "demo.yaml")
    assert s.duration == 8
    assert [(st.name, st.from_, st.to, st.proto, st.rate) for st in s.streams] == [
        ("l2", "vm2", "vm1", "udp", 1000), ("remote", "vm3", "vm1", "udp", 1000), ("tcp", "vm3", "vm1", "tcp", 200)]
    dcs = s.topology.server_dc()
    assert [(st.at, st.migrate, st.to, st.pause_ms) for st in s.steps] == [
        (2.0, "vm1", "hv2", 0), (5.0, "vm1", "hv3", 0)]
    assert dcs["hv1"] == dcs["hv2"] != dcs["hv3"]


def test_endpoints_choose_first_shared_cug() -> None:
    topo = scenario()["topology"]
    topo["vms"]["vm4"]["interfaces"].append({"cug": "web", "mac": "02:00:00:01:00:14", "ip": "198.19.1.14"})
    topo["vms"]["vm5"]["interfaces"].insert(0, {"cug": "web", "mac": "02:00:00:01:00:15", "ip": "198.19.1.15"})
    s = parse_scenario(scenario(topology=topo, streams=[{"name": "x", "from": "vm4", "to": "vm5", "proto": "udp"}]))
    assert s.streams[0].endpoints(s.topology) == (IPv4Address("198.19.2.14"), IPv4Address("198.19.2.15"), "db")
    s.streams[0].from_, s.streams[0].to = "vm5", "vm4"
    assert s.streams[0].endpoints(s.topology) == (IPv4Address("198.19.1.15"), IPv4Address("198.19.1.14"), "web")


# ---------------------------------------------------------------- bad input


def test_duplicate_stream_name() -> None:
    assert_problem(refused(stream(1, name="l2")), "streams[1].name", "duplicate stream name 'l2'")


def test_unknown_stream_source() -> None:
    assert_problem(refused(stream(0, **{"from": "vm9"})), "streams[0].from", "unknown VM or WAN client 'vm9'")


def test_unknown_stream_destination() -> None:
    err = refused(stream(1, to="vm9"))
    assert_problem(err, "streams[1].to", "unknown VM or WAN client 'vm9'")


def test_stream_to_itself() -> None:
    assert_problem(refused(stream(1, to="vm3")), "streams[1].to", "a stream needs two different nodes (from and to are both vm3)")


def test_stream_without_shared_cug() -> None:
    assert_problem(refused(stream(1, to="vm4")), "streams[1].to", "vm3 and vm4 share no CUG and no tenant")


def test_bad_proto() -> None:
    assert_problem(refused(stream(0, proto="icmp")), "streams[0].proto", "'udp' or 'tcp'")


@pytest.mark.parametrize("value", ["blocked", "DENIED", True, None])
def test_bad_stream_expectation(value: Any) -> None:
    assert_problem(refused(stream(1, expect=value)), "streams[1].expect", "'delivered' or 'denied'")


@pytest.mark.parametrize("rate", [0, 100001])
def test_rate_out_of_range(rate: int) -> None:
    assert_problem(refused(stream(0, rate=rate)), "streams[0].rate", f"(got {rate})")


def test_unknown_stream_key() -> None:
    assert_problem(refused(stream(0, size=100)), "streams[0].size", "unknown key")


@pytest.mark.parametrize("duration", [0, -1, 601])
def test_duration_out_of_range(duration: float) -> None:
    assert_problem(refused(lambda d: d.update(duration=duration)), "duration", f"(got {duration})")


def test_step_at_or_after_end() -> None:
    assert_problem(refused(step(0, at=6)), "steps[0].at", "6 is not before the end of the scenario (duration 6)")


def test_step_negative_time() -> None:
    assert_problem(refused(step(0, at=-1)), "steps[0].at", "greater than or equal to 0")


def test_step_unknown_vm() -> None:
    assert_problem(refused(step(0, migrate="vm9")), "steps[0].migrate", "unknown VM 'vm9'")


def test_step_unknown_server() -> None:
    assert_problem(refused(step(0, to="hv9")), "steps[0].to", "unknown server 'hv9'")


def test_step_to_current_server() -> None:
    err = refused(lambda d: d["steps"].insert(0, {"at": 4.0, "migrate": "vm1", "to": "hv3"}))
    assert_problem(err, "steps[0].to", "vm1 is already on hv3 at 4s")  # steps[1] (at 2.0) moved it there


@pytest.mark.parametrize("pause", [-1, 60001])
def test_step_pause_out_of_range(pause: int) -> None:
    assert_problem(refused(step(0, pause_ms=pause)), "steps[0].pause_ms", f"(got {pause})")


def test_error_inside_inline_topology() -> None:
    err = refused(lambda d: d["topology"]["vms"]["vm1"]["interfaces"][0].update(ip="198.19.2.5"))
    assert_problem(err, "topology.vms.vm1.interfaces[0].ip", "outside subnet 198.19.1.0/24 of CUG web")


def test_unknown_key_inside_inline_topology() -> None:
    assert_problem(refused(lambda d: d["topology"].update(owner="me")), "topology.owner", "unknown key")


def test_error_inside_referenced_topology_names_that_file(tmp_path: Path) -> None:
    topo = yaml.safe_load((EXAMPLES / "two-dc.yaml").read_text())
    topo["vms"]["vm2"]["server"] = "hv9"
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(topo))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(scenario(topology="lab.yaml")))
    with pytest.raises(IntentError) as info:
        load_scenario(tmp_path / "run.yaml")
    assert info.value.source == str(tmp_path / "lab.yaml")
    assert str(info.value) == f"{tmp_path / 'lab.yaml'}: vms.vm2.server: unknown server 'hv9'"


def test_missing_topology_file(tmp_path: Path) -> None:
    with pytest.raises(IntentError) as info:
        parse_scenario(scenario(topology="nope.yaml"), "s.yaml", tmp_path)
    assert_problem(info.value, "topology", "'nope.yaml' not found")


def test_missing_topology() -> None:
    assert_problem(refused(lambda d: d.pop("topology")), "topology", "required field is missing")


def test_all_scenario_problems_are_reported() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["streams"][0]["to"] = "vm4"
        d["streams"][1]["name"] = "l2"
        d["steps"][0]["to"] = "hv9"
    err = refused(edit)
    assert [p for p, _ in err.problems] == ["streams[0].to", "streams[1].name", "steps[0].to"]


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(IntentError) as info:
        load_scenario(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_scenario_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("topology: two-dc.yaml\nstreams: [\n")
    with pytest.raises(IntentError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: YAML error at line ")


def test_cold_move_steps_stop_then_start() -> None:
    data = scenario()
    data["steps"] += [{"at": 3.0, "stop": "vm1"}, {"at": 4.0, "start": "vm1", "on": "hv1"}]
    ok = parse_scenario(data, "s.yaml")
    assert [s.action for s in ok.steps[-2:]] == ["stop", "start"] and ok.steps[-1].server == "hv1"


@pytest.mark.parametrize(("steps", "path", "fragment"), [
    ([{"at": 3.0, "start": "vm1", "on": "hv1"}], "steps[1].start", "vm1 runs on hv3 at 3s: stop it first"),
    ([{"at": 3.0, "stop": "vm1"}, {"at": 4.0, "stop": "vm1"}], "steps[2].stop", "vm1 is already stopped at 4s"),
    ([{"at": 3.0, "stop": "vm1"}, {"at": 4.0, "migrate": "vm1", "to": "hv1"}], "steps[2].migrate",
     "vm1 is stopped at 4s: start it"),
    ([{"at": 3.0, "stop": "vm1"}, {"at": 4.0, "start": "vm1", "on": "hv9"}], "steps[2].on", "unknown server 'hv9'"),
    ([{"at": 3.0, "stop": "vm1", "on": "hv1"}], "steps[1]", "`on:` goes with `start:`"),
    ([{"at": 3.0, "start": "vm1"}], "steps[1]", "`start:` needs `on:`"),
    ([{"at": 3.0, "stop": "vm1", "migrate": "vm1", "to": "hv1"}], "steps[1]", "exactly one of"),
])
def test_bad_cold_move_steps(steps: list, path: str, fragment: str) -> None:
    assert_problem(refused(lambda d: d["steps"].extend(steps)), path, fragment)


# ---------------------------------------------------------------- streams into QEMU guests


def with_guest(d: dict[str, Any]) -> None:
    d["topology"]["vms"]["vm1"]["guest"] = "qemu"


def test_streams_into_a_qemu_guest_are_its_echos_round_trips() -> None:
    from roamnet.experiments.runner import BASE_PORT, endpoints
    from roamnet.lab.qemu import UDP_ECHO_PORT, UDP_REPLY_PORT

    data = scenario()
    with_guest(data)
    s = parse_scenario(data, "s.yaml")
    udp, tcp = s.streams
    port, ends = endpoints(s.topology, udp, "198.19.1.12", "198.19.1.11", BASE_PORT, 100.0, 6)
    assert port == UDP_ECHO_PORT and [(role, node) for role, node, _ in ends] == [("recv", "vm2"), ("send", "vm2")]
    recv, send = ends[0][2], ends[1][2]
    assert recv[recv.index("--bind") + 1] == "198.19.1.12" and recv[recv.index("--port") + 1] == str(UDP_REPLY_PORT)
    assert send[send.index("--to") + 1] == "198.19.1.11" and send[send.index("--port") + 1] == str(UDP_ECHO_PORT)
    port, ends = endpoints(s.topology, tcp, "198.19.1.13", "198.19.1.11", BASE_PORT + 1, 100.0, 6)
    assert port == UDP_ECHO_PORT and [(role, node) for role, node, _ in ends] == [("echo", "vm3")]
    # into a namespace VM: a receiver there, as ever
    plain = parse_scenario(scenario(), "s.yaml")
    port, ends = endpoints(plain.topology, plain.streams[0], "198.19.1.12", "198.19.1.11", BASE_PORT, 100.0, 6)
    assert port == BASE_PORT and [(role, node) for role, node, _ in ends] == [("recv", "vm1"), ("send", "vm2")]


def test_what_a_qemu_guest_cannot_do_in_a_scenario_is_refused_with_its_path() -> None:
    def out_of_guest(d: dict[str, Any]) -> None:
        with_guest(d)
        d["streams"][1].update({"from": "vm1", "to": "vm3"})

    assert_problem(refused(out_of_guest), "streams[1].from", "vm1 is a QEMU guest: it runs echoes only")

    def with_port(d: dict[str, Any]) -> None:
        with_guest(d)
        d["streams"][0]["port"] = 5555

    assert_problem(refused(with_port), "streams[0].port", "its echo listens on its own port; leave `port:` out")

    def two_udp_from_one_sender(d: dict[str, Any]) -> None:
        with_guest(d)
        d["streams"].append({"name": "again", "from": "vm2", "to": "vm1", "proto": "udp"})

    assert_problem(refused(two_udp_from_one_sender), "streams[2].to",
                   "streams[0] already sends UDP from 198.19.1.12 into a QEMU guest")


def test_packaged_qemu_demo_loads() -> None:
    s = load_scenario(EXAMPLES / "qemu-demo.yaml")
    assert s.topology.vms["vm1"].guest == "qemu" and {st.receiver(s.topology) for st in s.streams} == {"vm1"}
    assert [(st.migrate, st.to) for st in s.steps] == [("vm1", "hv3")]
