"""The mapping system (the NVA of NVO3): where every VM interface is, with EVPN mobility rules.

Keys in the store (values are JSON):
  /nves/<name>                 -> Nve: an overlay edge and its VTEP address
  /ports/<iface_id>            -> LogicalPort: a VM interface as the intent defines it (VNI, MAC, IPs)
  /bindings/<vni>/<mac>        -> Binding: which NVE hosts that MAC now, with its sequence number

Mobility (RFC 7432 §15): a move advertises the highest sequence number seen + 1; the higher number
wins; on equal numbers the lower NVE (VTEP) address wins; anything else is stale and ignored.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from .store import CasConflict, Store

log = logging.getLogger(__name__)

NVES, PORTS, BINDINGS = "/nves/", "/ports/", "/bindings/"


@dataclass(frozen=True)
class Nve:
    name: str
    vtep: str
    dc: str = ""


@dataclass(frozen=True)
class LogicalPort:
    iface_id: str  # "<vm>/<index>"
    vm: str
    vni: int
    mac: str
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Binding:
    vni: int
    mac: str
    nve: str
    vtep: str
    seq: int = 0
    ips: tuple[str, ...] = ()
    iface_id: str = ""

    @property
    def key(self) -> tuple[int, str]:
        return (self.vni, self.mac)


def _dump(obj) -> str:
    return json.dumps(asdict(obj), sort_keys=True)


def _load(cls, value: str):
    data = json.loads(value)
    if "ips" in data:
        data["ips"] = tuple(data["ips"])  # JSON has no tuples; the dataclasses are frozen and hashable
    return cls(**data)


def binding_key(vni: int, mac: str) -> str:
    return f"{BINDINGS}{vni}/{mac}"


# ---- pure mobility rules ---------------------------------------------------------------------

def wins(a: Binding, b: Binding) -> bool:
    """True if advertisement `a` beats `b` for the same (VNI, MAC)."""
    if a.seq != b.seq:
        return a.seq > b.seq
    return ipaddress.ip_address(a.vtep) < ipaddress.ip_address(b.vtep)


def resolve(current: Binding | None, proposed: Binding) -> Binding:
    """The binding that holds after `proposed` is heard while `current` holds."""
    if current is None or current == proposed:
        return proposed
    return proposed if wins(proposed, current) else current


def move(current: Binding | None, port: LogicalPort, nve: Nve) -> Binding:
    """The advertisement of `port` now being at `nve`: highest sequence seen + 1."""
    seq = 0 if current is None else current.seq + 1
    return Binding(port.vni, port.mac, nve.name, nve.vtep, seq, port.ips, port.iface_id)


# ---- snapshot ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the mapping at a store revision."""

    revision: int
    nves: dict[str, Nve] = field(default_factory=dict)
    ports: dict[str, LogicalPort] = field(default_factory=dict)
    bindings: dict[tuple[int, str], Binding] = field(default_factory=dict)

    def binding_of(self, iface_id: str) -> Binding | None:
        port = self.ports.get(iface_id)
        return self.bindings.get((port.vni, port.mac)) if port else None

    def to_json(self) -> dict:
        return {
            "revision": self.revision,
            "nves": [asdict(n) for n in self.nves.values()],
            "bindings": [asdict(b) for b in sorted(self.bindings.values(), key=lambda b: b.key)],
        }


# ---- the mapping system over a store ----------------------------------------------------------

class MoveRefused(Exception):
    pass


class MappingSystem:
    def __init__(self, store: Store):
        self.store = store

    # registration (from the intent / the lab)
    def register_nve(self, nve: Nve) -> None:
        self.store.put(NVES + nve.name, _dump(nve))

    def register_port(self, port: LogicalPort) -> None:
        self.store.put(PORTS + port.iface_id, _dump(port))

    def snapshot(self) -> Snapshot:
        items, rev = self.store.range("/")
        nves, ports, bindings = {}, {}, {}
        for kv in items:
            if kv.key.startswith(NVES):
                n = _load(Nve, kv.value)
                nves[n.name] = n
            elif kv.key.startswith(PORTS):
                p = _load(LogicalPort, kv.value)
                ports[p.iface_id] = p
            elif kv.key.startswith(BINDINGS):
                b = _load(Binding, kv.value)
                bindings[b.key] = b
        return Snapshot(rev, nves, ports, bindings)

    def advertise(self, proposed: Binding, retries: int = 20) -> Binding:
        """Apply an advertisement with the mobility rules; returns the binding that holds after it."""
        key = binding_key(proposed.vni, proposed.mac)
        for _ in range(retries):
            kv = self.store.get(key)
            current = _load(Binding, kv.value) if kv else None
            winner = resolve(current, proposed)
            if current is not None and winner == current:
                log.info("stale advertisement ignored: %s (holds: %s)", proposed, current)
                return current
            try:
                self.store.put(key, _dump(winner), expect_revision=kv.mod_revision if kv else 0)
                return winner
            except CasConflict:
                continue
        raise MoveRefused(f"{key}: too many concurrent updates")

    def report_move(self, iface_id: str, nve_name: str) -> tuple[Binding, bool]:
        """An NVE saw `iface_id` arrive (port appeared, RARP/GARP). Returns (binding, changed)."""
        for _ in range(20):
            snap_port = self.store.get(PORTS + iface_id)
            snap_nve = self.store.get(NVES + nve_name)
            if snap_port is None:
                raise MoveRefused(f"unknown VM interface {iface_id!r}")
            if snap_nve is None:
                raise MoveRefused(f"unknown NVE {nve_name!r}")
            port, nve = _load(LogicalPort, snap_port.value), _load(Nve, snap_nve.value)
            key = binding_key(port.vni, port.mac)
            kv = self.store.get(key)
            current = _load(Binding, kv.value) if kv else None
            if current is not None and current.nve == nve.name:
                return current, False
            new = move(current, port, nve)
            try:
                self.store.put(key, _dump(new), expect_revision=kv.mod_revision if kv else 0)
            except CasConflict:
                continue
            log.info("move %s: %s -> %s seq %d", iface_id, current.nve if current else "-", nve.name, new.seq)
            return new, True
        raise MoveRefused(f"{iface_id}: too many concurrent updates")

    def wait_for(self, predicate, timeout: float) -> Snapshot | None:
        """Wait until predicate(snapshot) holds; returns that snapshot or None on timeout."""
        deadline = time.monotonic() + timeout
        rev = 0
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            _, rev = self.store.watch("/", max(rev, snap.revision + 1), timeout=min(left, 0.5))
