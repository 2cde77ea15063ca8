"""The mapping system (the NVA of NVO3): where every VM interface is, with EVPN mobility rules.

Keys in the store (values are JSON):
  /nves/<name>                 -> Nve: an overlay edge and its VTEP address
  /ports/<iface_id>            -> LogicalPort: a VM interface as the intent defines it (VNI, MAC, IPs)
  /bindings/<vni>/<mac>        -> Binding: which NVE hosts that MAC now, with its sequence number
  /migrations/<iface_id>       -> Migration: a make-before-break move in progress (prepared | activated)
  /tenants/<name>              -> Tenant: a VRF of CUGs, its L3 VNI and the fabric's anycast gateway MAC
  /cugs/<vni>                  -> Segment: a CUG's subnet, and its gateway and tenant when it is routed
  /policy                      -> PolicySet: the intent's rules resolved to prefixes, and each tenant's
                                  default (policy.py); one key: a policy change is one atomic write
  /domains/<name>              -> Domain: a non-trivial L2 physical domain (servers behind a ToR NVE)
  /vlans/<domain>              -> {vni: VLAN-ID}: the domain's VLAN allocation (one key: allocating
                                  is one compare-and-swap, so two CUGs can never get one VLAN)

L2 physical domains (draft §3.1): a server in a non-trivial domain is not an NVE; its ToR is. Its
bindings name the server (where the VM's port is) with the ToR's VTEP, so a move between two servers
behind one ToR changes nothing any other NVE holds. A VLAN-ID means something only inside a domain:
the mapping allocates one per CUG present in the domain from the domain's range, keeps it while the
CUG stays, releases it when the last member leaves, and refuses a move that finds the range exhausted.

Mobility (RFC 7432 §15): a move advertises the highest sequence number seen + 1; the higher number
wins; on equal numbers the lower NVE (VTEP) address wins; anything else is stale and ignored.

Make-before-break (a planned move): `prepare` records the destination while the binding stays on
the source, so every NVE can get ready (the destination hosts the port, everybody else delivers the
VM's frames to both places); `activate` (the VM announced itself on its new port, or the orchestrator
says so) moves the binding with the usual sequence bump, which withdraws the old location; `complete`
drops the record once every NVE has programmed the move; `abort` rolls back a move never activated.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, replace

from .policy import PolicySet
from .store import CasConflict, Store

log = logging.getLogger(__name__)

NVES, PORTS, BINDINGS, MIGRATIONS = "/nves/", "/ports/", "/bindings/", "/migrations/"
TENANTS, SEGMENTS, DOMAINS, VLANS = "/tenants/", "/cugs/", "/domains/", "/vlans/"
POLICY = "/policy"
SERVER, BORDER, TOR = "server", "border", "tor"
PREPARED, ACTIVATED = "prepared", "activated"


@dataclass(frozen=True)
class Nve:
    name: str
    vtep: str
    dc: str = ""
    role: str = SERVER  # server (hosts VMs) | border (a DCBR: an NVE of every tenant, no VMs)
    #                     | tor (the NVE of a non-trivial domain: its servers' VMs, over 802.1Q trunks)
    tor: str = ""  # a server behind a ToR: the ToR, the NVE that serves it (its vtep is the ToR's)
    domain: str = ""  # a server behind a ToR, or a ToR: its non-trivial L2 domain


@dataclass(frozen=True)
class Domain:
    """A non-trivial L2 physical domain: servers joined by 802.1Q trunks to a ToR that is their NVE."""

    name: str
    dc: str
    tor: str
    servers: tuple[str, ...]
    vlan_lo: int
    vlan_hi: int

    @property
    def range(self) -> str:
        return f"{self.vlan_lo}-{self.vlan_hi}"


@dataclass(frozen=True)
class Tenant:
    name: str
    l3vni: int
    anycast_mac: str  # the gateway MAC of every routed CUG, on every NVE (fabric-wide)


@dataclass(frozen=True)
class Segment:
    """A CUG as the NVEs need it. Routed when it has a gateway ("198.19.1.1/24") and a tenant."""

    vni: int
    name: str
    subnet: str
    gateway: str = ""
    tenant: str = ""
    flood_unknown_arp: bool = True  # ARP requests for IPs the mapping does not know go to other NVEs


@dataclass(frozen=True)
class LogicalPort:
    iface_id: str  # "<vm>/<index>"
    vm: str
    vni: int
    mac: str
    ips: tuple[str, ...] = ()
    vlan: int = 0  # the guest's own 802.1Q tag on this interface (0: untagged); never changes


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


@dataclass(frozen=True)
class Migration:
    """A planned move of one VM interface from NVE `src` to NVE `dst`."""

    iface_id: str
    vni: int
    mac: str
    src: str
    dst: str
    dst_vtep: str
    state: str = PREPARED  # prepared | activated
    deadline: float = 0.0  # wall-clock time (time.time()) after which a prepared move is rolled back

    @property
    def key(self) -> tuple[int, str]:
        return (self.vni, self.mac)


def _dump(obj) -> str:
    return json.dumps(asdict(obj), sort_keys=True)


def _load(cls, value: str):
    data = json.loads(value)
    for k in ("ips", "servers"):
        if k in data:
            data[k] = tuple(data[k])  # JSON has no tuples; the dataclasses are frozen and hashable
    return cls(**data)


def _load_vlans(value: str) -> dict[int, int]:
    return {int(vni): vlan for vni, vlan in json.loads(value).items()}


def _dump_vlans(used: dict[int, int]) -> str:
    return json.dumps({str(vni): vlan for vni, vlan in sorted(used.items())})


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


# ---- VLAN allocation (pure) -------------------------------------------------------------------

class VlanExhausted(Exception):
    def __init__(self, domain: Domain, used: dict[int, int], vni: int):
        self.domain, self.used, self.vni = domain, used, vni
        super().__init__(f"domain {domain.name} ({domain.dc}): VLAN range {domain.range} is exhausted: "
                         f"{len(used)} CUGs use all of it (VNIs {', '.join(map(str, sorted(used)))}); "
                         f"VNI {vni} gets no VLAN there")


def allocate(domain: Domain, used: dict[int, int], vni: int) -> dict[int, int]:
    """The allocation after CUG `vni` is present in `domain`: unchanged if it has a VLAN already,
    else with the lowest free VLAN of the range. Raises VlanExhausted."""
    if vni in used:
        return used
    taken = set(used.values())
    free = next((v for v in range(domain.vlan_lo, domain.vlan_hi + 1) if v not in taken), None)
    if free is None:
        raise VlanExhausted(domain, used, vni)
    return {**used, vni: free}


def release(used: dict[int, int], present: set[int]) -> dict[int, int]:
    """The allocation once only the CUGs `present` are left in the domain."""
    return {vni: vlan for vni, vlan in used.items() if vni in present}


# ---- snapshot ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the mapping at a store revision."""

    revision: int
    nves: dict[str, Nve] = field(default_factory=dict)
    ports: dict[str, LogicalPort] = field(default_factory=dict)
    bindings: dict[tuple[int, str], Binding] = field(default_factory=dict)
    migrations: dict[str, Migration] = field(default_factory=dict)  # iface_id -> move in progress
    tenants: dict[str, Tenant] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)  # vni -> segment
    domains: dict[str, Domain] = field(default_factory=dict)  # non-trivial L2 domains
    vlans: dict[str, dict[int, int]] = field(default_factory=dict)  # domain -> {vni: VLAN-ID}
    policy: PolicySet = field(default_factory=PolicySet)

    def serving(self, node: str) -> str:
        """The NVE that serves `node`: its ToR for a server behind one, else the node itself."""
        nve = self.nves.get(node)
        return nve.tor if nve is not None and nve.tor else node

    def domain_of(self, node: str) -> Domain | None:
        nve = self.nves.get(node)
        return self.domains.get(nve.domain) if nve is not None and nve.domain else None

    def present(self, domain: Domain) -> set[int]:
        """VNIs of the CUGs present in `domain`: bound to one of its servers or moving to one."""
        servers = set(domain.servers)
        return ({b.vni for b in self.bindings.values() if b.nve in servers}
                | {m.vni for m in self.prepared() if m.dst in servers})

    def prepared(self) -> list[Migration]:
        """Moves prepared and not yet activated: the ones that change what NVEs program."""
        return [m for m in self.migrations.values() if m.state == PREPARED]

    def binding_of(self, iface_id: str) -> Binding | None:
        port = self.ports.get(iface_id)
        return self.bindings.get((port.vni, port.mac)) if port else None

    def to_json(self) -> dict:
        return {
            "revision": self.revision,
            "nves": [asdict(n) for n in self.nves.values()],
            "bindings": [asdict(b) for b in sorted(self.bindings.values(), key=lambda b: b.key)],
            "migrations": [asdict(m) for _, m in sorted(self.migrations.items())],
            "tenants": [asdict(t) for _, t in sorted(self.tenants.items())],
            "segments": [asdict(g) for _, g in sorted(self.segments.items())],
            "domains": [asdict(d) for _, d in sorted(self.domains.items())],
            "vlans": {d: {str(v): vl for v, vl in sorted(a.items())} for d, a in sorted(self.vlans.items())},
            "policy": self.policy.to_json(),
        }


# ---- the mapping system over a store ----------------------------------------------------------

class MoveRefused(Exception):
    pass


class MappingSystem:
    def __init__(self, store: Store):
        self.store = store
        self._snap: Snapshot | None = None  # the last snapshot: shared by every reader at that revision
        self._snap_lock = threading.Lock()

    # registration (from the intent / the lab)
    def register_nve(self, nve: Nve) -> None:
        self.store.put(NVES + nve.name, _dump(nve))

    def register_port(self, port: LogicalPort) -> None:
        self.store.put(PORTS + port.iface_id, _dump(port))

    def register_tenant(self, tenant: Tenant) -> None:
        self.store.put(TENANTS + tenant.name, _dump(tenant))

    def register_segment(self, segment: Segment) -> None:
        self.store.put(f"{SEGMENTS}{segment.vni}", _dump(segment))

    def register_domain(self, domain: Domain) -> None:
        self.store.put(DOMAINS + domain.name, _dump(domain))

    def register_policy(self, policy: PolicySet) -> None:
        self.store.put(POLICY, json.dumps(policy.to_json(), sort_keys=True))

    def snapshot(self) -> Snapshot:
        """The mapping now. Snapshots are immutable by convention: one decoded snapshot per store
        revision is shared by all agents in the process (32 agents decoding the same store after
        every move cost more than programming the move)."""
        cached = self._snap
        if cached is not None and cached.revision == self.store.revision:
            return cached
        snap = self._decode()
        with self._snap_lock:
            if self._snap is None or snap.revision > self._snap.revision:
                self._snap = snap
        return snap

    def _decode(self) -> Snapshot:
        items, rev = self.store.range("/")
        nves, ports, bindings, migrations, tenants, segments, domains, vlans = {}, {}, {}, {}, {}, {}, {}, {}
        kinds = ((NVES, Nve, nves, lambda o: o.name), (PORTS, LogicalPort, ports, lambda o: o.iface_id),
                 (BINDINGS, Binding, bindings, lambda o: o.key),
                 (MIGRATIONS, Migration, migrations, lambda o: o.iface_id),
                 (TENANTS, Tenant, tenants, lambda o: o.name), (SEGMENTS, Segment, segments, lambda o: o.vni),
                 (DOMAINS, Domain, domains, lambda o: o.name))
        policy = PolicySet()
        for kv in items:
            if kv.key == POLICY:
                policy = PolicySet.from_json(json.loads(kv.value))
                continue
            if kv.key.startswith(VLANS):
                vlans[kv.key[len(VLANS):]] = _load_vlans(kv.value)
                continue
            for prefix, cls, into, key in kinds:
                if kv.key.startswith(prefix):
                    obj = _load(cls, kv.value)
                    into[key(obj)] = obj
                    break
        return Snapshot(rev, nves, ports, bindings, migrations, tenants, segments, domains, vlans, policy)

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
            self._claim_vlan(winner.nve, winner.vni)
            try:
                self.store.put(key, _dump(winner), expect_revision=kv.mod_revision if kv else 0)
            except CasConflict:
                continue
            self._sync_vlans(current.nve if current else "", winner.nve)
            return winner
        raise MoveRefused(f"{key}: too many concurrent updates")

    def report_move(self, iface_id: str, nve_name: str) -> tuple[Binding, bool]:
        """An NVE saw `iface_id` arrive (port appeared, RARP/GARP). Returns (binding, changed)."""
        for _ in range(20):
            port, nve = self._port_and_nve(iface_id, nve_name)
            key = binding_key(port.vni, port.mac)
            kv = self.store.get(key)
            current = _load(Binding, kv.value) if kv else None
            if current is not None and current.nve == nve.name:
                self._mark_activated(iface_id, nve.name)
                return current, False
            new = move(current, port, nve)
            self._claim_vlan(nve.name, port.vni)  # refuses the move if the domain has no VLAN left
            try:
                self.store.put(key, _dump(new), expect_revision=kv.mod_revision if kv else 0)
            except CasConflict:
                continue
            self._sync_vlans(current.nve if current else "", nve.name)
            log.info("move %s: %s -> %s seq %d", iface_id, current.nve if current else "-", nve.name, new.seq)
            self._mark_activated(iface_id, nve.name)
            return new, True
        raise MoveRefused(f"{iface_id}: too many concurrent updates")

    # ---- make-before-break ---------------------------------------------------------------------
    def migration(self, iface_id: str) -> Migration | None:
        kv = self.store.get(MIGRATIONS + iface_id)
        return _load(Migration, kv.value) if kv else None

    def _port_and_nve(self, iface_id: str, nve_name: str) -> tuple[LogicalPort, Nve]:
        kv_port, kv_nve = self.store.get(PORTS + iface_id), self.store.get(NVES + nve_name)
        if kv_port is None:
            raise MoveRefused(f"unknown VM interface {iface_id!r}")
        if kv_nve is None:
            raise MoveRefused(f"unknown NVE {nve_name!r}")
        nve = _load(Nve, kv_nve.value)
        if nve.role != SERVER:
            what = {BORDER: "border router", TOR: "ToR switch"}.get(nve.role, nve.role)
            raise MoveRefused(f"{nve_name!r} is a {what}: it hosts no VMs")
        return _load(LogicalPort, kv_port.value), nve

    # ---- VLANs of non-trivial domains ------------------------------------------------------------
    def _domain(self, node: str) -> Domain | None:
        kv = self.store.get(NVES + node) if node else None
        name = _load(Nve, kv.value).domain if kv else ""
        kv = self.store.get(DOMAINS + name) if name else None
        return _load(Domain, kv.value) if kv else None

    def _claim_vlan(self, node: str, vni: int) -> None:
        """Give CUG `vni` a VLAN in `node`'s domain (if non-trivial and it has none yet), or refuse."""
        domain = self._domain(node)
        if domain is None:
            return
        for _ in range(20):
            kv = self.store.get(VLANS + domain.name)
            used = _load_vlans(kv.value) if kv else {}
            try:
                new = allocate(domain, used, vni)
            except VlanExhausted as exc:
                raise MoveRefused(str(exc)) from None
            if new is used:
                return
            try:
                self.store.put(VLANS + domain.name, _dump_vlans(new), expect_revision=kv.mod_revision if kv else 0)
                log.info("domain %s: VNI %d gets VLAN %d", domain.name, vni, new[vni])
                return
            except CasConflict:
                continue
        raise MoveRefused(f"domain {domain.name}: too many concurrent VLAN allocations")

    def _sync_vlans(self, *nodes: str) -> None:
        """Make the allocation of each node's domain match the CUGs present there: release the VLANs
        of CUGs that left, allocate for present ones that have none (a release that raced with an
        allocation). Called after every change of bindings or prepared moves."""
        for domain in {d.name: d for n in nodes if (d := self._domain(n)) is not None}.values():
            for _ in range(20):
                kv = self.store.get(VLANS + domain.name)
                used = _load_vlans(kv.value) if kv else {}
                present = self.snapshot().present(domain)
                new = release(used, present)
                for vni in sorted(present - set(new)):
                    try:
                        new = allocate(domain, new, vni)
                    except VlanExhausted as exc:
                        log.warning("%s", exc)
                if new == used:
                    break
                try:
                    if new:
                        self.store.put(VLANS + domain.name, _dump_vlans(new), expect_revision=kv.mod_revision if kv else 0)
                    elif kv is not None:
                        self.store.delete(VLANS + domain.name, expect_revision=kv.mod_revision)
                    log.info("domain %s: VLANs %s", domain.name, new)
                    break
                except CasConflict:
                    continue

    def _change_migration(self, iface_id: str, change) -> Migration | None:
        """Compare-and-swap on a migration record: `change(mig)` returns the new record, None to
        delete it, `mig` itself to leave it, or raises MoveRefused. Returns the record it saw."""
        for _ in range(20):
            kv = self.store.get(MIGRATIONS + iface_id)
            if kv is None:
                return None
            mig = _load(Migration, kv.value)
            new = change(mig)
            try:
                if new is None:
                    self.store.delete(kv.key, expect_revision=kv.mod_revision)
                elif new != mig:
                    self.store.put(kv.key, _dump(new), expect_revision=kv.mod_revision)
                return mig
            except CasConflict:
                continue
        raise MoveRefused(f"{iface_id}: too many concurrent updates")

    def prepare(self, iface_id: str, dst: str, timeout: float) -> Migration:
        """Record a planned move of `iface_id` to NVE `dst`; the binding stays where it is."""
        port, nve = self._port_and_nve(iface_id, dst)
        kv = self.store.get(binding_key(port.vni, port.mac))
        if kv is None:
            raise MoveRefused(f"{iface_id} is bound nowhere: nothing to move")
        current = _load(Binding, kv.value)
        if current.nve == dst:
            raise MoveRefused(f"{iface_id} is already on {dst}")
        mig = Migration(iface_id, port.vni, port.mac, current.nve, dst, nve.vtep, PREPARED, time.time() + timeout)
        self._claim_vlan(dst, port.vni)  # the destination's ToR and switch need it before activation
        try:
            self.store.put(MIGRATIONS + iface_id, _dump(mig), expect_revision=0)
        except CasConflict:
            self._sync_vlans(dst)
            held = self.migration(iface_id)
            raise MoveRefused(f"{iface_id}: a move to {held.dst if held else '?'} is already in progress") from None
        return mig

    def _mark_activated(self, iface_id: str, nve: str) -> None:
        self._change_migration(iface_id, lambda m: replace(m, state=ACTIVATED)
                               if m.state == PREPARED and m.dst == nve else m)

    def activate(self, iface_id: str) -> tuple[Binding, bool]:
        """Explicit activation (the orchestrator knows the VM runs on the destination)."""
        mig = self.migration(iface_id)
        if mig is None:
            raise MoveRefused(f"{iface_id}: no move in progress")
        return self.report_move(iface_id, mig.dst)

    def complete(self, iface_id: str) -> Migration:
        """Forget an activated move (every NVE has programmed it)."""
        def drop(mig: Migration) -> None:
            if mig.state != ACTIVATED:
                raise MoveRefused(f"{iface_id}: the move to {mig.dst} was not activated (abort it instead)")

        mig = self._change_migration(iface_id, drop)
        if mig is None:
            raise MoveRefused(f"{iface_id}: no move in progress")
        return mig

    def abort(self, iface_id: str) -> Migration | None:
        """Roll back a prepared move that was never activated; the binding never changed."""
        def drop(mig: Migration) -> None:
            if mig.state != PREPARED:
                raise MoveRefused(f"{iface_id}: the move to {mig.dst} is already activated")

        mig = self._change_migration(iface_id, drop)
        if mig is not None:
            self._sync_vlans(mig.dst)  # the destination's VLAN, if this move was its only reason
        return mig

    def expire(self, now: float | None = None) -> list[Migration]:
        """Abort every prepared move past its deadline; returns them."""
        now = time.time() if now is None else now
        out = []
        for mig in self.snapshot().prepared():
            if mig.deadline and mig.deadline < now:
                try:
                    if self.abort(mig.iface_id):
                        out.append(mig)
                except MoveRefused:
                    pass  # activated meanwhile
        return out

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
