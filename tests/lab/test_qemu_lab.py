"""QEMU guests in the lab (issue 15): a real VM (the kernel and initramfs `make install` builds), booted by
QEMU in its server's namespace and live-migrated by QEMU itself over the underlay, its own RARP activating
roamnet's prepared move. Few and short: each boot costs seconds under TCG."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import Endpoint, lab_required, run_scenario_cleaned

from roamnet.lab.errors import LabError
from roamnet.lab.qemu import QEMU, UDP_ECHO_PORT, UDP_REPLY_PORT, guest_image


@pytest.fixture(scope="module", autouse=True)
def qemu_required() -> None:
    """QEMU and the built guest: skipped without them, failed when the lab is required (CI)."""
    problems = [] if shutil.which(QEMU) else [f"{QEMU} is not installed (Debian: qemu-system-x86)"]
    try:
        guest_image()
    except LabError as exc:
        problems.append(str(exc))
    if problems:
        if lab_required():
            pytest.fail("; ".join(problems), pytrace=False)
        pytest.skip("; ".join(problems))


STREAM_S = 8.0  # the streams through a move: a loaded machine's prepare and pre-copy took over 3 s before STOP


def qemu_topology(make_topology, name: str) -> dict:
    """dc1: hv1 (vm1, a QEMU guest, 128 MiB), hv2 (vm2, a namespace VM: the peer); dc2: hv3."""
    t = make_topology(name, vms={"vm1": ("hv1", "web"), "vm2": ("hv2", "web")})
    t["vms"]["vm1"].update(guest="qemu", memory=128)
    return t


def qemu_pids() -> dict[int, str]:
    """Every QEMU process on the machine (pid -> command line), read from /proc: roamnet-independent."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(argv[0].decode(errors="replace")).name == QEMU:
                out[int(entry.name)] = " ".join(a.decode(errors="replace") for a in argv)
    return out


def lab_qemus(lab_name: str) -> list[int]:
    return [pid for pid, cmd in qemu_pids().items() if f"/{lab_name}/qemu/" in cmd]


def echo_stream(lab, src: str, dst_ip: str, src_ip: str, start_at: float, duration: float):
    """A 1 kHz UDP stream from namespace VM `src` to the guest's echo, and back to `src`'s receiver."""
    from roamnet import names
    from roamnet.experiments.traffic import recv_argv, send_argv

    ns = names.netns(lab.name, src)
    recv = Endpoint(ns, recv_argv("udp", src_ip, UDP_REPLY_PORT, start_at, duration, 1.0))
    recv.wait_ready()
    send = Endpoint(ns, send_argv("udp", dst_ip, UDP_ECHO_PORT, 1000, start_at, duration))
    return recv, send


def tcp_echo_stream(lab, src: str, dst_ip: str, start_at: float, duration: float, rate: float = 200):
    """A TCP connection from namespace VM `src` to the guest's TCP echo, paced records out and back."""
    from roamnet import names
    from roamnet.experiments.traffic import echo_argv

    return Endpoint(names.netns(lab.name, src), echo_argv(dst_ip, UDP_ECHO_PORT, rate, start_at, duration, 1.0))


def test_qemu_guest_moves_to_another_dc_under_a_stream(make_topology, lab_name, lab_namespaces, lab_up, addr, host):
    t = qemu_topology(make_topology, lab_name("t-qemu-move"))
    planned = lab_namespaces(t)
    assert not any(ns.endswith("-vm1") or ns.endswith("-vm1.nic") for ns in planned)  # a QEMU guest: no namespace
    name = t["name"]
    vm1_ip, vm2_ip, vm1_mac, vm2_mac = addr.ip(t, "vm1"), addr.ip(t, "vm2"), addr.mac(t, "vm1"), addr.mac(t, "vm2")
    with lab_up(t) as lab:
        qemu = lab.hv.qemu
        src = qemu.instance("vm1", "hv1")
        assert lab_qemus(name) == [src.pid]
        # its port is QEMU's tap in hv1's namespace, with roamnet's alias, up
        port = host.ip_json(lab.plan.nodes["hv1"].ns, "-d", "link", "show", "vm1-e0")[0]
        assert port["linkinfo"]["info_kind"] == "tun" and port["ifalias"].endswith("vm1/0") and "UP" in port["flags"]
        # the guest configured itself from the topology: its MAC (QEMU's), its address
        assert vm1_mac in qemu.console("vm1", "hv1", "cat /sys/class/net/eth0/address")
        assert f"{vm1_ip}/24" in qemu.console("vm1", "hv1", "ip -4 addr show eth0")
        host.run(["ip", "netns", "exec", lab.plan.nodes["vm2"].ns, "ping", "-c", "1", "-W", "2", vm1_ip])
        neigh_before = qemu.console("vm1", "hv1", f"ip neigh show {vm2_ip}")
        assert vm2_mac in neigh_before, neigh_before  # the guest knows its peer

        boot_ms, rss_src = src.boot_ms, rss_mib(src.pid)
        reported_before = lab.mapping.statuses.all()["hv3"].moves_reported
        start_at = time.monotonic() + 1.0
        recv, send = echo_stream(lab, "vm2", vm1_ip, vm2_ip, start_at, STREAM_S)
        tcp = tcp_echo_stream(lab, "vm2", vm1_ip, start_at, STREAM_S)  # and a TCP connection held through the move
        time.sleep(max(0.0, start_at + 1.5 - time.monotonic()))
        rec = lab.migrate("vm1", "hv3")
        from roamnet.experiments.loss import loss_beyond_pause, windows_from_migrations
        from roamnet.experiments.report import summarize

        result = summarize("echo", "udp", "vm2", "vm1", 1000, send.result(20), recv.result(20), [rec])
        tcp_out = tcp.result(30)
        tcp_result = summarize("tcp-echo", "tcp", "vm2", "vm1", 200, tcp_out, tcp_out, [rec])
        beyond = loss_beyond_pause(result.records, result.sent, result.first, result.rate,
                                   windows_from_migrations([rec]), last=result.last,
                                   sent_at=result.sent_at)[0]
        print(f"QEMU guest vm1 hv1 (dc1) -> hv3 (dc2), {rec['accel']}: QEMU total {rec['qemu_total_ms']} ms, "
              f"downtime {rec['qemu_downtime_ms']} ms (limit {rec['downtime_limit_ms']}), STOP->RESUME blackout "
              f"{rec['blackout_ms']} ms, {rec['transferred_bytes']} bytes; activated by {rec['activated_by']} "
              f"{rec['mapped_ms']} ms after RESUME, converged {rec['converged_ms']} ms; echo stream: sent "
              f"{result.sent}, back {result.received}, lost {result.lost} (in the blackout {beyond.lost_in_pause}, "
              f"beyond it {beyond.lost_beyond_pause}, longest gap beyond {beyond.longest_gap_beyond_ms:.1f} ms); "
              f"gaps over 20 ms (ms from STOP, length): {gaps_from(result.records, rec['at_mono'])}; TCP connection: "
              f"{tcp_out['sent']} records, {tcp_result.received} echoed, survived {tcp_result.survived}, longest "
              f"gap {tcp_result.max_gap_ms} ms ({tcp_out['error']}); guest booted in "
              f"{boot_ms} ms; QEMU's resident memory {rss_src} MiB on the source, "
              f"{rss_mib(qemu.instance('vm1', 'hv3').pid)} MiB on the destination")

        # QEMU's own figures are in the record, the blackout from QMP's STOP and RESUME events
        assert rec["mode"] == "prepared" and rec["to"] == "hv3" and rec["dc_to"] == "dc2"
        assert rec["transferred_bytes"] > 0 and rec["qemu_total_ms"] > 0 and rec["blackout_ms"] >= 0
        assert rec["dark_ms"] == rec["blackout_ms"]
        # QEMU's RARP on hv3's tap activated the move: hv3's agent reported it, not the orchestrator
        assert rec["activated_by"] == "announcement"
        assert lab.mapping.statuses.all()["hv3"].moves_reported > reported_before
        assert lab.mapping.snapshot().binding_of("vm1/0").nve == "hv3"
        assert not lab.mapping.snapshot().migrations  # completed
        # the stream survived; the guest kept its MAC, address and its peer's ARP entry; the source QEMU is gone
        # the stream survived: echoes came back from the guest on hv3 (how many: printed; that is machine-bound)
        assert rec["resumed_mono"] < start_at + STREAM_S - 0.5, "the guest resumed after the streams' end"
        assert result.survived and any(t > rec["resumed_mono"] + 0.3 for _, t in result.records)
        assert lab_qemus(name) == [qemu.instance("vm1", "hv3").pid]
        assert vm1_mac in qemu.console("vm1", "hv3", "cat /sys/class/net/eth0/address")
        assert f"{vm1_ip}/24" in qemu.console("vm1", "hv3", "ip -4 addr show eth0")
        assert vm2_mac in qemu.console("vm1", "hv3", f"ip neigh show {vm2_ip}")
        # the TCP connection survived the move: every record came back, in order, and it closed cleanly at both
        # ends (the guest's echo, now on hv3, would have logged a reset or a peer gone silent as broken)
        assert tcp_result.survived and tcp_out["sent"] > 0 and tcp_result.lost == 0, tcp_out["error"]
        sessions = [x for x in qemu.tcp_sessions("vm1", "hv3") if x.peer_ip == vm2_ip]
        assert [(x.outcome, x.echoed) for x in sessions] == [("closed", 16 * tcp_out["sent"])], sessions
        # the command line reaches the guest on its console, wherever it runs
        shown = host.roamnet("lab", "exec", name, "vm1", "--", "ip", "neigh", "show", vm2_ip)
        assert shown.returncode == 0 and vm2_mac in shown.stdout, shown
        assert all(link["ifname"] != "vm1-e0" for link in host.ip_json(lab.plan.nodes["hv1"].ns, "link", "show"))
    assert lab_qemus(name) == [], "lab down left a QEMU process"


def test_failed_qemu_migration_rolls_back(make_topology, lab_name, lab_namespaces, lab_up, addr, host):
    t = qemu_topology(make_topology, lab_name("t-qemu-fail"))
    lab_namespaces(t)
    name = t["name"]
    vm1_ip = addr.ip(t, "vm1")
    with lab_up(t) as lab:
        qemu = lab.hv.qemu
        source_pid = qemu.instance("vm1", "hv1").pid
        failure = cut_mid_way(qemu, lambda: lab.migrate("vm1", "hv3"), "hv3")
        print(f"failed migration: {failure}")
        # rolled back: the guest runs on hv1 (same QEMU), nothing is left on hv3, the mapping has no move
        assert lab.location["vm1"] == "hv1" and qemu.instance("vm1", "hv1").pid == source_pid
        assert lab_qemus(name) == [source_pid]
        assert all(link["ifname"] != "vm1-e0" for link in host.ip_json(lab.plan.nodes["hv3"].ns, "link", "show"))
        snap = lab.mapping.snapshot()
        assert snap.binding_of("vm1/0").nve == "hv1" and not snap.migrations
        assert not lab.pending and lab.migrations[-1]["rolled_back"]
        assert "running" in qmp_status(qemu, "hv1")
        host.run(["ip", "netns", "exec", lab.plan.nodes["vm2"].ns, "ping", "-c", "1", "-W", "3", vm1_ip])
    assert lab_qemus(name) == []


def cut_mid_way(qemu, migrate, dest: str) -> LabError:
    """Run `migrate` (vm1's) slowed to 1 MiB/s in a thread, kill the destination's QEMU (its own pid) once the
    migration transfers, and return the LabError the move failed with."""
    qemu.max_bandwidth = 1 << 20  # the migration lasts long enough to be cut mid-way
    failure: list[BaseException] = []

    def move() -> None:
        try:
            migrate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    mover = threading.Thread(target=move)
    mover.start()
    deadline = time.monotonic() + 60
    while not (qemu.migrating.get("vm1", {}).get("ram", {}).get("transferred", 0) > 0):
        assert time.monotonic() < deadline and mover.is_alive(), f"the migration never got going: {failure}"
        time.sleep(0.01)
    os.kill(qemu.instance("vm1", dest).pid, 9)
    mover.join(timeout=90)
    assert not mover.is_alive() and failure and isinstance(failure[0], LabError), failure
    return failure[0]


def rss_mib(pid: int) -> int:
    kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return kib // 1024


def gaps_from(records, at: float) -> list[tuple[int, int]]:
    """Gaps over 20 ms between echoes received: (ms after `at`, length ms)."""
    seen = sorted(t for _, t in records)
    return [(round((a - at) * 1000), round((b - a) * 1000)) for a, b in zip(seen, seen[1:]) if b - a > 0.02]


def qmp_status(qemu, server: str) -> str:
    from roamnet.lab.qemu import qmp_run

    return str(qmp_run(qemu.instance("vm1", server).paths.qmp, "check", "query-status"))


def test_lab_cleanup_after_a_crash_ends_its_qemu(make_topology, lab_name, lab_namespaces):
    """A lab whose process died (no down): the crash clean-up ends its QEMU by the recorded pid."""
    from roamnet import names
    from roamnet.intent.model import parse_topology
    from roamnet.lab.engine import Lab
    from roamnet.lab.state import cleanup

    t = qemu_topology(make_topology, lab_name("t-qemu-crash"))
    t["vms"].pop("vm2")
    planned = lab_namespaces(t)
    name = t["name"]
    lab = Lab(parse_topology(t, name), etcd=False, journal=names.state_dir(name) / "journal.json")
    try:
        lab.up(converge_timeout=30)
        pid = lab.hv.qemu.instance("vm1", "hv1").pid
        assert lab_qemus(name) == [pid]
        removed = cleanup(name)  # from the state directory alone, as `roamnet lab cleanup` after a crash
        assert lab_qemus(name) == [], "the crash clean-up left the lab's QEMU running"
        assert sorted(removed) == sorted(planned)
    finally:
        lab.journal = None  # the clean-up removed the state directory
        lab.down()  # reaps the ended QEMU; what the clean-up removed is gone already
    assert lab_qemus(name) == []


LIBVIRT_ORDER = [("hv3", "migrate begin -", "prepared"), ("hv3", "prepare begin -", None),
                 ("hv3", "start begin -", None), ("hv3", "started begin -", None),
                 ("hv1", "stopped end -", None), ("hv1", "release end migrated", "completed")]


def test_the_libvirt_hook_command_drives_a_qemu_migration(make_topology, lab_name, lab_namespaces, lab_up, addr,
                                                          host):
    """`roamnet hook libvirt` itself, run at libvirt's points around a real QEMU migration (lab/libvirt.py), prepares
    and completes the move under a stream and a TCP connection; then a failed migration makes the hook's function (in
    this process: the lab's driver "libvirt") abort the move."""
    from roamnet.experiments.report import summarize
    from roamnet.lab.libvirt import Libvirt, in_process

    t = qemu_topology(make_topology, lab_name("t-qemu-hook"))
    lab_namespaces(t)
    name = t["name"]
    vm1_ip, vm2_ip, vm2_mac = addr.ip(t, "vm1"), addr.ip(t, "vm2"), addr.mac(t, "vm2")
    with lab_up(t) as lab:
        qemu = lab.hv.qemu
        host.run(["ip", "netns", "exec", lab.plan.nodes["vm2"].ns, "ping", "-c", "1", "-W", "2", vm1_ip])
        start_at = time.monotonic() + 1.0
        recv, send = echo_stream(lab, "vm2", vm1_ip, vm2_ip, start_at, STREAM_S)
        tcp = tcp_echo_stream(lab, "vm2", vm1_ip, start_at, STREAM_S)
        time.sleep(max(0.0, start_at + 1.0 - time.monotonic()))
        rec = lab.migrate("vm1", "hv3", driver="libvirt-command")
        result = summarize("echo", "udp", "vm2", "vm1", 1000, send.result(30), recv.result(30), [rec])
        tcp_out = tcp.result(30)
        tcp_result = summarize("tcp-echo", "tcp", "vm2", "vm1", 200, tcp_out, tcp_out, [rec])
        print(f"libvirt hook command: QEMU blackout {rec['blackout_ms']} ms, activated by {rec['activated_by']} "
              f"{rec['mapped_ms']} ms after RESUME, converged {rec['converged_ms']} ms; hook calls (ms): "
              f"{[(c['nve'], c['event'], c['ms']) for c in rec['hook_calls']]}; echo stream: sent {result.sent}, "
              f"back {result.received}; TCP: {tcp_out['sent']} records, survived {tcp_result.survived}; STOP at "
              f"{rec['at_mono'] - start_at:.2f} s of the streams, RESUME at {rec['resumed_mono'] - start_at:.2f} s")
        # the hook ran where and when libvirt runs it; it prepared on migrate begin, completed on the source's release
        assert rec["mode"] == "libvirt" and rec["driver"] == "libvirt-command"
        assert [(c["nve"], c["event"], c["phase"]) for c in rec["hook_calls"]] == LIBVIRT_ORDER
        assert rec["activated_by"] in ("announcement", "orchestrator")  # QEMU's RARP, or the release before it
        snap = lab.mapping.snapshot()
        assert snap.binding_of("vm1/0").nve == "hv3" and not snap.migrations
        assert lab.location["vm1"] == "hv3" and lab_qemus(name) == [qemu.instance("vm1", "hv3").pid]
        assert all(link["ifname"] != "vm1-e0" for link in host.ip_json(lab.plan.nodes["hv1"].ns, "link", "show"))
        assert rec["resumed_mono"] < start_at + STREAM_S - 0.5, "the guest resumed after the streams' end"
        # echoes came back from the guest on hv3 (by receive time: a starved sender's schedule says little); the TCP
        # connection held, every record back in order
        assert any(t > rec["resumed_mono"] + 0.3 for _, t in result.records)
        assert tcp_result.survived and tcp_result.lost == 0, tcp_out["error"]
        assert vm2_mac in qemu.console("vm1", "hv3", f"ip neigh show {vm2_ip}")

        # back to hv1, the destination's QEMU killed mid-way: its stopped and release hooks abort the move
        how = Libvirt(lab.moves, in_process(lab.moves, 10.0), "libvirt")
        cut_mid_way(qemu, lambda: lab.moves.migrate("vm1", "hv1", how=how), "hv1")
        assert [(c.nve, c.event, c.phase) for c in how.calls] == [
            ("hv1", "migrate begin -", "prepared"), ("hv1", "prepare begin -", None), ("hv1", "start begin -", None),
            ("hv1", "stopped end -", None), ("hv1", "release end failed", "rolled-back")]
        snap = lab.mapping.snapshot()
        assert snap.binding_of("vm1/0").nve == "hv3" and not snap.migrations
        assert lab.location["vm1"] == "hv3" and lab_qemus(name) == [qemu.instance("vm1", "hv3").pid]
        host.run(["ip", "netns", "exec", lab.plan.nodes["vm2"].ns, "ping", "-c", "1", "-W", "3", vm1_ip])
    assert lab_qemus(name) == []


def test_a_scenario_streams_into_a_qemu_guest_through_its_move(make_topology, lab_name, lab_namespaces, tmp_path):
    """`roamnet run`'s runner with a QEMU guest: its streams are the guest's echoes' round trips (UDP back to a
    receiver beside the sender, TCP one connection to its echo), through a live migration to the other DC."""
    t = qemu_topology(make_topology, lab_name("t-qemu-run"))
    lab_namespaces(t)
    name = t["name"]
    report, _ = run_scenario_cleaned({
        "topology": t, "duration": 6.0,
        "streams": [{"name": "udp-in", "from": "vm2", "to": "vm1", "proto": "udp", "rate": 1000},
                    {"name": "tcp-in", "from": "vm2", "to": "vm1", "proto": "tcp", "rate": 200}],
        "steps": [{"at": 2.0, "migrate": "vm1", "to": "hv3"}],
    }, tmp_path)
    assert lab_qemus(name) == [], "the run left a QEMU process"
    (mig,) = report.migrations
    udp, tcp = report.streams
    print(f"scenario into a QEMU guest: migrated {mig['from']} -> {mig['to']} ({mig['accel']}), blackout "
          f"{mig['blackout_ms']} ms, activated by {mig['activated_by']}; udp-in: sent {udp.sent}, back {udp.received}, "
          f"longest gap {udp.max_gap_ms} ms; tcp-in: {tcp.sent} records, {tcp.received} echoed, survived {tcp.survived}")
    assert (mig["mode"], mig["to"], mig["dc_to"]) == ("prepared", "hv3", "dc2") and mig["blackout_ms"] is not None
    assert (udp.src, udp.dst, tcp.src, tcp.dst) == ("vm2", "vm1", "vm2", "vm1")
    # the guest on hv3 echoed both after its move (UDP judged by receive time: a starved sender's schedule says
    # little); the TCP connection held, every record back in order
    assert any(t > mig["resumed_mono"] + 0.3 for _, t in udp.records)
    assert tcp.survived and tcp.sent > 0 and tcp.lost == 0


def test_a_cold_move_of_a_qemu_guest_boots_it_on_the_other_dc(make_topology, lab_name, lab_namespaces, lab_up, addr,
                                                              host):
    """Stopped: its QEMU ends and the mapping keeps its addresses reserved; started on hv3: a fresh QEMU boots there
    (an empty ARP cache, no connection left), the binding moves with the next sequence number, and it is reached."""
    t = qemu_topology(make_topology, lab_name("t-qemu-cold"))
    lab_namespaces(t)
    name = t["name"]
    vm1_ip, vm2_ip, vm1_mac, vm2_mac = addr.ip(t, "vm1"), addr.ip(t, "vm2"), addr.mac(t, "vm1"), addr.mac(t, "vm2")
    with lab_up(t) as lab:
        qemu = lab.hv.qemu
        host.run(["ip", "netns", "exec", lab.plan.nodes["vm2"].ns, "ping", "-c", "1", "-W", "2", vm1_ip])
        stopped = lab.stop_vm("vm1")
        assert stopped["converged_ms"] is not None, stopped
        b = lab.mapping.snapshot().binding_of("vm1/0")
        assert (b.nve, b.stopped) == ("hv1", True)
        assert lab_qemus(name) == [] and not qemu.instances
        assert all(link["ifname"] != "vm1-e0" for link in host.ip_json(lab.plan.nodes["hv1"].ns, "link", "show"))
        with pytest.raises(LabError, match="is stopped"):
            lab.migrate("vm1", "hv3")
        started = lab.start_vm("vm1", "hv3")
        assert started["mode"] == "cold" and started["converged_ms"] is not None, started
        b = lab.mapping.snapshot().binding_of("vm1/0")
        assert (b.nve, b.seq, b.stopped, b.detached) == ("hv3", 1, False, False)
        assert lab.location["vm1"] == "hv3" and lab_qemus(name) == [qemu.instance("vm1", "hv3").pid]
        assert vm2_mac not in qemu.console("vm1", "hv3", f"ip neigh show {vm2_ip}")  # a cold boot: no ARP entry
        assert qemu.tcp_sessions("vm1", "hv3") == []  # nor the old guest's connections
        assert vm1_mac in qemu.console("vm1", "hv3", "cat /sys/class/net/eth0/address")
        host.run(["ip", "netns", "exec", lab.plan.nodes["vm2"].ns, "ping", "-c", "2", "-W", "3", vm1_ip])
        print(f"cold move of a QEMU guest hv1 (dc1) -> hv3 (dc2): stopped {started['dark_ms']} ms (its boot "
              f"{qemu.instance('vm1', 'hv3').boot_ms} ms of it), every NVE programmed {started['converged_ms']} ms "
              f"after the guest said ready")
    assert lab_qemus(name) == []
