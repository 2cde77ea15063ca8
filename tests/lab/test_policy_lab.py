"""Policies that follow the VM, on the real kernel (nftables bridge filters in every NVE namespace).

One lab holds two tenants with the same subnet and the same IPs: t1 (web, db; default deny, a few
rules) and t2 (web2; default allow). The reachability matrix of every VM pair, four ports and both
protocols is computed from the policy (roamnet.policy.allowed) and probed in the lab: a probe
counts only when the intended VM's listener got its token (so with shared IPs, reaching the other
tenant's twin does not count). It is probed before and after moving each VM of t1, and streams that
the policy denies run through every move and must receive nothing.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PORTS = (22, 53, 5432, 5001)  # probed (listeners on them in every VM)
STREAM_PORT, STREAM_ALLOWED_PORT = 6001, 5353  # streams through the moves (not probed)
PROTOS = ("tcp", "udp")
PROBE_TIMEOUT_S = 1.5


def topology(name: str) -> dict[str, Any]:
    def vm(server: str, cug: str, octet: int, host: int, tag: int) -> dict:
        return {"server": server, "interfaces": [
            {"cug": cug, "mac": f"02:00:00:{tag:02x}:00:{host:02x}", "ip": f"198.19.{octet}.{host}"}]}

    return {
        "name": name,
        "datacenters": {"dc1": {"servers": ["hv1", "hv2"]}, "dc2": {"servers": ["hv3"]}},
        "tenants": {"t1": {"l3vni": 50001, "default_policy": "deny"}, "t2": {"l3vni": 50002}},
        "cugs": {
            "web": {"vni": 10100, "subnet": "198.19.1.0/24", "gateway": "198.19.1.1", "tenant": "t1"},
            "db": {"vni": 10200, "subnet": "198.19.2.0/24", "gateway": "198.19.2.1", "tenant": "t1"},
            "web2": {"vni": 20100, "subnet": "198.19.1.0/24", "gateway": "198.19.1.1", "tenant": "t2"},
        },
        "vms": {
            "vm1": vm("hv1", "web", 1, 11, 1), "vm2": vm("hv2", "web", 1, 12, 1), "vm3": vm("hv3", "db", 2, 13, 2),
            # t2: the same addresses as vm1 and vm2
            "vm7": vm("hv1", "web2", 1, 11, 0x21), "vm8": vm("hv2", "web2", 1, 12, 0x21),
        },
        "policies": [
            {"name": "web-to-db", "from": {"cug": "web"}, "to": {"cug": "db"}, "proto": "tcp", "ports": [5432],
             "action": "allow"},
            {"name": "no-ssh", "from": {"any": True}, "to": {"vm": "vm1"}, "proto": "tcp", "ports": [22],
             "action": "deny"},
            {"name": "dns", "from": {"cug": "db"}, "to": {"cug": "web"}, "proto": "udp", "ports": [53, 5353],
             "action": "allow"},
            {"name": "no-5001", "from": {"vm": "vm2"}, "to": {"vm": "vm1"}, "proto": "udp", "ports": [5001],
             "action": "deny"},
        ],
    }


class Listeners:
    """In every VM: a TCP listener and a UDP socket on each port, recording the tokens that arrive.
    Bounded: stops at stop() or after `seconds`."""

    def __init__(self, lab: Any, vms: list[str], seconds: float = 240.0):
        from roamnet import names
        from roamnet.dataplane import netns

        self.got: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: dict[socket.socket, str] = {}
        for vm in vms:
            ns = names.netns(lab.name, vm)
            ip = str(lab.topo.vms[vm].interfaces[0].ip)
            for port in PORTS:
                t = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((ip, port))
                t.listen(64)
                u = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((ip, port))
                self._socks[t], self._socks[u] = vm, vm
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, vm: str, data: bytes) -> None:
        with self._lock:
            for token in data.decode(errors="replace").split():
                if token.endswith(f">{vm}"):  # only tokens meant for this VM count
                    self.got.add(token)

    def _run(self) -> None:
        conns: dict[socket.socket, str] = {}
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            ready, _, _ = select.select(list(self._socks) + list(conns), [], [], 0.1)
            for s in ready:
                if s in conns:
                    data = s.recv(256)
                    vm = conns.pop(s)
                    if data:
                        self._record(vm, data)
                    s.close()
                elif s.type == socket.SOCK_STREAM:
                    c, _ = s.accept()
                    conns[c] = self._socks[s]
                else:
                    self._record(self._socks[s], s.recv(256))
        for s in list(conns) + list(self._socks):
            s.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def probe(lab: Any, listeners: Listeners, vms: list[str], rnd: int) -> dict[tuple[str, str, str, int], bool]:
    """Every ordered pair, port and protocol, in parallel; True when the intended VM got the token."""
    from roamnet import names
    from roamnet.dataplane import netns

    def one(src: str, dst: str, proto: str, port: int) -> str:
        token = f"r{rnd}:{src}:{proto}:{port}>{dst}"
        ip = str(lab.topo.vms[dst].interfaces[0].ip)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = netns.socket_in(names.netns(lab.name, src), socket.AF_INET, kind)
        try:
            s.settimeout(PROBE_TIMEOUT_S)
            if proto == "tcp":
                with contextlib.suppress(OSError):
                    s.connect((ip, port))
                    s.sendall(token.encode())
            else:
                for _ in range(3):
                    s.sendto(token.encode(), (ip, port))
                    time.sleep(0.05)
        finally:
            s.close()
        return token

    cases = [(a, b, p, port) for a in vms for b in vms if a != b for p in PROTOS for port in PORTS]
    with ThreadPoolExecutor(max_workers=64) as pool:
        tokens = list(pool.map(lambda c: one(*c), cases))
    time.sleep(0.5)  # the last datagrams and TCP payloads
    with listeners._lock:
        got = set(listeners.got)
    return {c: t in got for c, t in zip(cases, tokens)}


def verdict(lab: Any, a: str, b: str, proto: str, port: int) -> bool:
    """What the policy in the mapping says about a new flow from VM a to VM b."""
    from roamnet.mapping.policy import allowed

    snap = lab.mapping.snapshot()

    def end(vm: str) -> tuple[int, str]:
        itf = lab.topo.vms[vm].interfaces[0]
        return lab.topo.cugs[itf.cug].vni, str(itf.ip)

    return allowed(snap.policy, snap.segments, end(a), end(b), proto, port)


def expected(lab: Any, vms: list[str]) -> dict[tuple[str, str, str, int], bool]:
    return {(a, b, p, port): verdict(lab, a, b, p, port)
            for a in vms for b in vms if a != b for p in PROTOS for port in PORTS}


def diff(want: dict, got: dict) -> list[str]:
    return [f"{a}->{b} {p}/{port}: policy says {'allow' if w else 'deny'}, lab {'reached' if got[(a, b, p, port)] else 'blocked'}"
            for (a, b, p, port), w in sorted(want.items()) if got[(a, b, p, port)] != w]


def test_reachability_matrix_follows_the_vms_and_denies_hold_during_moves(lab_name, lab_namespaces, lab_up, traffic):
    t = topology(lab_name("t-policy"))
    lab_namespaces(t)
    vms = ["vm1", "vm2", "vm3", "vm7", "vm8"]
    with lab_up(t) as lab:
        listeners = Listeners(lab, vms)
        try:
            want = expected(lab, vms)
            # the matrix is not trivial: both verdicts inside t1, across CUGs and inside one CUG
            assert want[("vm1", "vm3", "tcp", 5432)] and not want[("vm1", "vm3", "tcp", 22)]
            assert want[("vm3", "vm1", "udp", 53)] and not want[("vm1", "vm3", "udp", 53)]
            assert not want[("vm2", "vm1", "tcp", 22)] and want[("vm1", "vm2", "tcp", 22)]
            assert not want[("vm2", "vm1", "udp", 5001)] and want[("vm2", "vm1", "tcp", 5001)]
            assert want[("vm8", "vm7", "tcp", 22)]  # no-ssh is t1's (its endpoint vm1 is in t1)
            assert not any(want[(a, b, p, port)] for a in ("vm1", "vm2", "vm3") for b in ("vm7", "vm8")
                           for p in PROTOS for port in PORTS)  # tenants never meet
            got = probe(lab, listeners, vms, 0)
            assert diff(want, got) == []

            moves = [("vm1", "hv2"), ("vm2", "hv3"), ("vm3", "hv1")]
            for rnd, (vm, to) in enumerate(moves, start=1):
                # streams through the move: two the policy denies (to and from the moving VM), one it
                # allows (the control: the lab does carry traffic meanwhile)
                pairs = [(p, vm) for p in ("vm1", "vm2", "vm3") if p != vm] + [(vm, p) for p in ("vm1", "vm2", "vm3") if p != vm]
                denied_in = next((a, b) for a, b in pairs if b == vm and not verdict(lab, a, b, "udp", STREAM_PORT))
                denied_out = next((a, b) for a, b in pairs if a == vm and not verdict(lab, a, b, "udp", STREAM_PORT))
                control = next((a, b) for a, b in pairs if verdict(lab, a, b, "udp", STREAM_ALLOWED_PORT))
                start = time.monotonic() + 1.0
                flows = [traffic(lab, f"deny-{a}-{b}", "udp", a, b, STREAM_PORT, start, 2.5) for a, b in (denied_in, denied_out)]
                flows.append(traffic(lab, f"allow-{control[0]}-{control[1]}", "udp", *control, STREAM_ALLOWED_PORT, start, 2.5))
                time.sleep(max(0.0, start + 0.8 - time.monotonic()))
                rec = lab.migrate(vm, to)
                results = [f.finish([rec]) for f in flows]
                for r in results[:2]:
                    assert r.sent > 1000 and r.received == 0, (vm, r.to_json())  # denied at every moment
                assert results[2].received > 0.9 * results[2].sent, results[2].to_json()
                assert lab.wait_converged(10)
                got = probe(lab, listeners, vms, rnd)
                assert diff(want, got) == [], f"after moving {vm} to {to}"
            totals = lab.filter_counters()
            assert sum(c["policy-deny"] for c in totals.values()) > 0
        finally:
            listeners.stop()
