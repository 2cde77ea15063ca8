"""The mapping's records, their keys in the store and their JSON codec, and the snapshot. Pure.

Keys in the store (values are JSON); the records live under /mapping/ (shown without it):
  /nves/<name>                 -> Nve: an overlay edge and its VTEP address
  /ports/<iface_id>            -> LogicalPort: a VM interface as the intent defines it (VNI, MAC, IPs)
  /vnis/<vni>/b/<mac>          -> Binding: which NVE hosts that MAC now, with its sequence number
  /vnis/<vni>/m/<iface_id>     -> Migration: a make-before-break move in progress (prepared | activated)
                                  (a CUG's bindings and moves under one prefix: an NVE of the CUG watches
                                  it, and etcd sends a move's binding and record, one transaction, in
                                  one answer to that watch)
  /at/<nve>/<vni>/b/<mac>      -> "" : an index, written in the transaction that writes the record: a
  /at/<nve>/<vni>/m/<iface_id> -> "" : binding on that NVE, a move from or to it; what an agent watches
                                  to know which VNIs it must watch (nve/interest.py `watched`)
  /tenants/<name>              -> Tenant: a VRF of CUGs, its L3 VNI and the fabric's anycast gateway MAC
  /cugs/<vni>                  -> Segment: a CUG's subnet, and its gateway and tenant when it is routed
  /policy                      -> PolicySet: the intent's rules resolved to prefixes, and each tenant's
                                  default (policy.py); one key: a policy change is one atomic write
  /domains/<name>              -> Domain: a non-trivial L2 physical domain (servers behind a ToR NVE)
  /vlans/<domain>              -> {vni: VLAN-ID}: the domain's VLAN allocation (one key: allocating
                                  is one compare-and-swap, so two CUGs can never get one VLAN)
  /revision                    -> written in the same transaction as every change of the records
                                  above: its mod_revision is the mapping's revision
  /sync/<nve>/request          -> SyncRequest: a waiter asks that NVE to publish its status once
                                  converged at that revision (status.py); not a record: writing it
                                  leaves the mapping's revision as it is, and wakes that NVE alone
and outside it:
  /status/<nve>                -> NveStatus: what that NVE's agent published (converged revision,
                                  counters, errors), like OVN's Chassis_Private.nb_cfg; not part of
                                  the mapping's revision and not under /mapping/, so publishing wakes
                                  no agent (with 1,000 NVEs, 1,000 status writes per move would
                                  otherwise reach 1,000 watchers each)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace

ROOT = "/mapping/"  # every record; what agents watch and snapshots read
NVES, PORTS, VNIS = ROOT + "nves/", ROOT + "ports/", ROOT + "vnis/"  # VNIS: bindings and moves, per VNI
TENANTS, SEGMENTS, DOMAINS, VLANS = ROOT + "tenants/", ROOT + "cugs/", ROOT + "domains/", ROOT + "vlans/"
POLICY, REVISION, SYNC, AT = ROOT + "policy", ROOT + "revision", ROOT + "sync/", ROOT + "at/"
GENERAL = (NVES, PORTS, TENANTS, SEGMENTS, DOMAINS, VLANS, POLICY)  # what every agent watches whole
STATUS = "/status/"  # the agents' statuses: outside ROOT, so publishing one wakes no agent
SERVER, BORDER, TOR = "server", "border", "tor"
PREPARED, ACTIVATED = "prepared", "activated"
ALLOW, DENY = "allow", "deny"
ANY_PROTO = "any"


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


# Per-port budgets (packets per second, each VM port of the CUG on its own; burst: twice the rate).
# Generous: no legitimate guest comes near them (see the README's robustness section).
ANNOUNCE_PPS = 20  # RARPs and gratuitous ARPs (QEMU sends 5 per migration, a guest a few per link-up)
ARP_PPS = 500  # ARP requests (ARP suppression answers most of them on the NVE itself)
BUM_PPS = 1000  # broadcast and multicast frames heading for VXLAN (head-end replication: one copy per NVE)
MAX_MOVES, WINDOW_S = 5, 180.0  # duplicate detection, as EVPN's default (RFC 7432 §15.1; FRR: 5 in 180 s)


@dataclass(frozen=True)
class Segment:
    """A CUG as the NVEs need it. Routed when it has a gateway ("198.19.1.1/24") and a tenant."""

    vni: int
    name: str
    subnet: str
    gateway: str = ""
    tenant: str = ""
    flood_unknown_arp: bool = True  # ARP requests for IPs the mapping does not know go to other NVEs
    announce_pps: int = ANNOUNCE_PPS  # each VM port's budgets (the CUG's, else the fabric's, else these)
    arp_pps: int = ARP_PPS
    bum_pps: int = BUM_PPS
    max_moves: int = MAX_MOVES  # duplicate detection: this many moves of one MAC within window_s freeze it
    window_s: float = WINDOW_S
    hold_down_s: float = 0.0  # a frozen MAC thaws after this long (0: only by command)


@dataclass(frozen=True)
class LogicalPort:
    iface_id: str  # "<vm>/<index>"
    vm: str
    vni: int
    mac: str
    ips: tuple[str, ...] = ()
    vlan: int = 0  # the guest's own 802.1Q tag on this interface (0: untagged); never changes
    sticky: bool = False  # never moves by a report (gateways, appliances): any claim elsewhere is refused


@dataclass(frozen=True)
class Binding:
    vni: int
    mac: str
    nve: str
    vtep: str
    seq: int = 0
    ips: tuple[str, ...] = ()
    iface_id: str = ""
    detached: bool = False  # its NVE has no port up for it (a port up elsewhere may then claim it)
    moves: tuple[float, ...] = ()  # wall-clock times of its recent moves (duplicate detection's window)
    stable: str = ""  # the NVE it was on before its recent moves began (where duplicate detection freezes it)
    frozen: bool = False  # duplicate detection froze it here: reports of it elsewhere are refused
    frozen_until: float = 0.0  # wall-clock time a frozen binding thaws by itself (0: only by command)
    stopped: bool = False  # a cold move's first half: the VM is stopped, its MAC and addresses reserved;
    #                        nothing forwards to it and only a start moves it (draft §3.2)

    @property
    def key(self) -> tuple[int, str]:
        return (self.vni, self.mac)

    def frozen_at(self, now: float) -> bool:
        return self.frozen and (not self.frozen_until or now < self.frozen_until)


COMPLETE_TIMEOUT_S = 120.0  # an activated move whose completion never came (the source died before libvirt's
#   release) is completed by the mapping's expiry this long after its activation (`Migration.complete_within`)


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
    deadline: float = 0.0  # wall-clock time (time.time()) after which the mapping's expiry ends the move: a
    #   prepared move is rolled back; an activated one (set at its activation) is completed
    complete_within: float = 0.0  # s an activated move waits for its completion (0: COMPLETE_TIMEOUT_S)

    @property
    def key(self) -> tuple[int, str]:
        return (self.vni, self.mac)

    @property
    def completion_s(self) -> float:
        """How long after its activation the mapping completes this move if nobody else has."""
        return self.complete_within or COMPLETE_TIMEOUT_S


@dataclass(frozen=True)
class Rule:
    """One intent rule with its endpoints resolved to prefixes (None: any address)."""

    name: str
    scopes: tuple[str, ...] | None  # tenants / "cug:<name>" it applies in (None: every scope)
    src: tuple[str, ...] | None
    dst: tuple[str, ...] | None
    proto: str = ANY_PROTO  # tcp | udp | icmp | any
    ports: tuple[int, ...] = ()  # destination ports (tcp, udp); () any
    action: str = ALLOW

    def to_json(self) -> dict:
        return {"name": self.name, "scopes": list(self.scopes) if self.scopes is not None else None,
                "src": list(self.src) if self.src is not None else None,
                "dst": list(self.dst) if self.dst is not None else None,
                "proto": self.proto, "ports": list(self.ports), "action": self.action}

    @classmethod
    def from_json(cls, d: dict) -> Rule:
        def tup(v):
            return tuple(v) if v is not None else None
        return cls(d["name"], tup(d["scopes"]), tup(d["src"]), tup(d["dst"]), d["proto"],
                   tuple(d["ports"]), d["action"])


@dataclass(frozen=True)
class PolicySet:
    rules: tuple[Rule, ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)  # tenant -> allow | deny

    def to_json(self) -> dict:
        return {"rules": [r.to_json() for r in self.rules], "defaults": dict(sorted(self.defaults.items()))}

    @classmethod
    def from_json(cls, d: dict) -> PolicySet:
        return cls(tuple(Rule.from_json(r) for r in d.get("rules", [])), dict(d.get("defaults", {})))


@dataclass(frozen=True)
class NveStatus:
    """What one NVE's agent publishes under /status/<nve> after its passes: the mapping revision it
    has fully programmed, and its counters."""

    nve: str
    converged_revision: int = 0  # every mapping change up to this revision is in its kernel
    reconciles: int = 0  # passes
    resyncs: int = 0  # periodic passes that read the kernel again
    kernel_reads: int = 0
    changes_applied: int = 0
    moves_reported: int = 0
    announcements_seen: int = 0  # RARP / gratuitous ARP frames from VM ports
    pending_prunes: tuple[int, ...] = ()  # VNIs whose segment is held before it is removed
    last_pass_ms: float = 0.0  # the last pass that changed something
    last_changes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # the last few
    pid: int = 0  # the process the agent runs in
    claims_refused: int = 0  # its reports the mobility rules refused (a frozen or sticky MAC)
    expired: tuple[str, ...] = ()  # the last few moves to it the mapping's expiry ended, and why


@dataclass(frozen=True)
class SyncRequest:
    """A waiter's request (/mapping/sync/<nve>): NVEs `nves` (None: every NVE) publish their status once they are
    converged at `revision` or later, even if no change since their last status concerned them."""

    revision: int
    nves: frozenset[str] | None = None  # (one key per NVE: the NVE whose key it is)

    def names(self, nve: str) -> bool:
        return self.nves is None or nve in self.nves

    def to_json(self) -> str:
        return json.dumps({"revision": self.revision, "nves": None if self.nves is None else sorted(self.nves)})

    @classmethod
    def from_json(cls, value: str) -> SyncRequest:
        data = json.loads(value)
        nves = data.get("nves")
        return cls(int(data["revision"]), None if nves is None else frozenset(nves))


@dataclass(frozen=True)
class MappingRecords:
    """Everything an intent puts in the mapping (`intent.compile`), written by `MappingSystem.apply`."""

    tenants: tuple[Tenant, ...] = ()
    segments: tuple[Segment, ...] = ()
    policy: PolicySet = field(default_factory=PolicySet)
    domains: tuple[Domain, ...] = ()
    nves: tuple[Nve, ...] = ()
    ports: tuple[LogicalPort, ...] = ()
    bindings: tuple[Binding, ...] = ()  # where each VM interface starts (its server, sequence 0, detached)


# ---- codec ------------------------------------------------------------------------------------

_TUPLES = ("ips", "servers", "pending_prunes", "last_changes", "errors", "moves", "expired")  # JSON has no tuples; the
#                                                   records are frozen and hashable


def dump(obj) -> str:
    return json.dumps(asdict(obj), sort_keys=True)


def load(cls, value: str):
    data = json.loads(value)
    for k in _TUPLES:
        if k in data:
            data[k] = tuple(data[k])
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def load_vlans(value: str) -> dict[int, int]:
    return {int(vni): vlan for vni, vlan in json.loads(value).items()}


def dump_vlans(used: dict[int, int]) -> str:
    return json.dumps({str(vni): vlan for vni, vlan in sorted(used.items())})


def dump_policy(policy: PolicySet) -> str:
    return json.dumps(policy.to_json(), sort_keys=True)


def binding_key(vni: int, mac: str) -> str:
    return f"{VNIS}{vni}/b/{mac}"


def migration_key(vni: int, iface_id: str) -> str:
    return f"{VNIS}{vni}/m/{iface_id}"


def vni_key(key: str) -> tuple[str, int, str] | None:
    """("bindings" | "migrations", VNI, MAC | interface) of a key under VNIS (None: another key)."""
    if not key.startswith(VNIS):
        return None
    vni, _, rest = key[len(VNIS):].partition("/")
    kind, _, ident = rest.partition("/")
    if not vni.isdigit() or kind not in ("b", "m"):
        return None
    return ("bindings" if kind == "b" else "migrations"), int(vni), ident


def sync_prefix(nve: str) -> str:
    return f"{SYNC}{nve}/"


def sync_key(nve: str) -> str:
    return f"{SYNC}{nve}/request"


def vni_prefix(vni: int) -> str:
    """The keys of one CUG's bindings and moves: what an NVE of it watches."""
    return f"{VNIS}{vni}/"


def at_prefix(nve: str) -> str:
    return f"{AT}{nve}/"


def index_keys(rec: object) -> set[str]:
    """The /at/ index keys of a binding or a move (none for other records)."""
    if isinstance(rec, Binding):
        return {f"{AT}{rec.nve}/{rec.vni}/b/{rec.mac}"}
    if isinstance(rec, Migration):
        return {f"{AT}{end}/{rec.vni}/m/{rec.iface_id}" for end in (rec.src, rec.dst)}
    return set()


def index_writes(old: object, new: object) -> dict[str, str | None]:
    """The index writes that go with replacing record `old` by `new` (None: absent) in one transaction."""
    before, after = index_keys(old), index_keys(new)
    return {**{k: None for k in before - after}, **{k: "" for k in after - before}}


def parse_at(key: str) -> tuple[str, int, str] | None:
    """(NVE, VNI, the rest) of an /at/ index key."""
    nve, _, rest = key[len(AT):].partition("/")
    vni, _, rest = rest.partition("/")
    return (nve, int(vni), rest) if vni.isdigit() else None


# ---- snapshot ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the mapping. `revision` is the mapping's own revision: the store
    revision of the last change to the mapping's records (status keys do not count), which is what
    an NVE's converged revision is compared with."""

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

    def running(self) -> Snapshot:
        """This view without the stopped bindings (cold moves): what the NVEs forward to. Itself when
        nothing is stopped."""
        if not any(b.stopped for b in self.bindings.values()):
            return self
        return replace(self, bindings={k: b for k, b in self.bindings.items() if not b.stopped})

    def binding_of(self, iface_id: str) -> Binding | None:
        port = self.ports.get(iface_id)
        return self.bindings.get((port.vni, port.mac)) if port else None

    def to_json(self) -> dict:
        return {
            "revision": self.revision,
            "nves": [asdict(n) for n in self.nves.values()],
            "bindings": [{**asdict(b), "sticky": b.iface_id in self.ports and self.ports[b.iface_id].sticky}
                         for b in sorted(self.bindings.values(), key=lambda b: b.key)],
            "migrations": [asdict(m) for _, m in sorted(self.migrations.items())],
            "tenants": [asdict(t) for _, t in sorted(self.tenants.items())],
            "segments": [asdict(g) for _, g in sorted(self.segments.items())],
            "domains": [asdict(d) for _, d in sorted(self.domains.items())],
            "vlans": {d: {str(v): vl for v, vl in sorted(a.items())} for d, a in sorted(self.vlans.items())},
            "policy": self.policy.to_json(),
        }



_KINDS = ((NVES, Nve, "nves", lambda o: o.name), (PORTS, LogicalPort, "ports", lambda o: o.iface_id),
          (TENANTS, Tenant, "tenants", lambda o: o.name), (SEGMENTS, Segment, "segments", lambda o: o.vni),
          (DOMAINS, Domain, "domains", lambda o: o.name))


def decode_record(key: str, value: str) -> tuple[str, object, object] | None:
    """The record at store key `key` (under ROOT, not /revision): (its Snapshot attribute, its key
    there, the record), or None for a key that holds no record. Table-driven: a prefix per record class."""
    if key == POLICY:
        return "policy", None, PolicySet.from_json(json.loads(value))
    vk = vni_key(key)
    if vk is not None:
        obj = load(Binding if vk[0] == "bindings" else Migration, value)
        return vk[0], (obj.key if vk[0] == "bindings" else obj.iface_id), obj
    if key.startswith(VLANS):
        return "vlans", key[len(VLANS):], load_vlans(value)
    for prefix, cls, attr, ident in _KINDS:
        if key.startswith(prefix):
            obj = load(cls, value)
            return attr, ident(obj), obj
    return None


def record_kind(key: str) -> tuple[str, str] | None:
    """(the Snapshot attribute, the rest of the key) of store key `key` (None: no record's key)."""
    if key == POLICY:
        return "policy", ""
    vk = vni_key(key)
    if vk is not None:
        return vk[0], f"{vk[1]}/{vk[2]}"
    if key.startswith(VLANS):
        return "vlans", key[len(VLANS):]
    for prefix, _, attr, _ in _KINDS:
        if key.startswith(prefix):
            return attr, key[len(prefix):]
    return None


def decode_snapshot(items: Iterable) -> Snapshot:
    """The snapshot of the mapping's keys `items` (KeyValues under ROOT read at one store revision)."""
    tables: dict[str, dict] = {attr: {} for _, _, attr, _ in _KINDS}
    tables["bindings"], tables["migrations"] = {}, {}
    vlans: dict[str, dict[int, int]] = {}
    policy, revision = PolicySet(), 0
    for kv in items:
        if kv.key == REVISION:
            revision = kv.mod_revision
            continue
        rec = decode_record(kv.key, kv.value)
        if rec is None:
            continue
        attr, ident, obj = rec
        if attr == "policy":
            policy = obj
        elif attr == "vlans":
            vlans[ident] = obj
        else:
            tables[attr][ident] = obj
    return Snapshot(revision, vlans=vlans, policy=policy, **tables)
