"""Claimant ports (issue 17): a VM port that exists on this NVE while the mapping binds its interface
elsewhere (and no planned move brings it here). Pure: nftables JSON in, out and read back; no I/O here
(dataplane/kernel.py runs it).

Such a port is never in a bridge. It is a clone of a VM (two hosts with one MAC), a hypervisor's tap
brought up before the VM runs here (libvirt's pre-copy), or the port a VM just left. Whatever it sends
is dropped on the port's own ingress hook and counted (`claim-blocked`): nothing of it reaches the
segment. Within the port's announcement budget, its frames from the VM's MAC are logged to the NVE's
nflog group first: a VM that really runs here claims its binding with them (a tap brought up early
sends nothing), and a clone talking while its original does flaps the binding into duplicate
detection, which freezes it where it was before.

One table, `netdev roamnet`, with one base chain per claimant port (`claim:<device>:<digest>`, hooked on
that device's ingress) and the named counter. A port that stops being a claimant (the claim moved
its binding here) loses its chain in the pass that attaches it to its bridge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from roamnet import names
from roamnet.mapping.records import ANNOUNCE_PPS, Snapshot
from roamnet.nve.filters import _field, _match, _over  # the same nftables JSON building blocks

FAMILY, TABLE = "netdev", "roamnet"
CLAIM_BLOCKED = "claim-blocked"
CLAIM_PREFIX = "claim"  # nflog prefix of a claimant port's frames (an announcement's has none)
PRIORITY = -200


@dataclass(frozen=True)
class Claimant:
    """A claimant port: its device, and the VM interface's MAC and announcement budget."""

    device: str
    mac: str
    announce_pps: int


@dataclass(frozen=True)
class Claimants:
    """What the table holds: chain name -> device, and whether the table and its counter exist."""

    chains: dict[str, str] = field(default_factory=dict)
    base_ok: bool = True


MISSING = Claimants({}, base_ok=False)


def rules(c: Claimant) -> list[dict]:
    """The chain of one claimant port: within its announcement budget, any frame from the VM's MAC is
    logged as evidence that the VM runs here (log prefix CLAIM_PREFIX; as EVPN learns a MAC from any
    frame, so a clone and its original both talking flap the binding into duplicate detection);
    everything is dropped and counted."""
    mine = _match(_field("ether", "saddr"), c.mac)
    over = _over(c.announce_pps)
    count = [{"counter": None}, {"counter": CLAIM_BLOCKED}, {"drop": None}]
    log = {"log": {"prefix": CLAIM_PREFIX, "group": names.ANNOUNCE_LOG_GROUP}}
    return [{"expr": [mine, over] + count, "comment": CLAIM_BLOCKED},
            {"expr": [mine, log] + count, "comment": CLAIM_BLOCKED},
            {"expr": count, "comment": CLAIM_BLOCKED}]


def chain_name(c: Claimant) -> str:
    digest = hashlib.sha256(json.dumps([c.device, rules(c)], sort_keys=True).encode()).hexdigest()[:12]
    return f"claim:{c.device}:{digest}"


def claimant_ports(snap: Snapshot, local: set[str], devices: dict[str, str]) -> list[Claimant]:
    """The claimant ports among the VM ports that exist here (`devices`: interface -> its port's
    device): a device none of whose interfaces is `local` (bound here, or a planned move's destination)."""
    by_device: dict[str, list[str]] = {}
    for iface, dev in devices.items():
        if iface in snap.ports:
            by_device.setdefault(dev, []).append(iface)
    out = []
    for dev, ifaces in sorted(by_device.items()):
        if any(i in local for i in ifaces):
            continue
        ports = [snap.ports[i] for i in sorted(ifaces)]
        seg = snap.segments.get(ports[0].vni)
        out.append(Claimant(dev, ports[0].mac, seg.announce_pps if seg else ANNOUNCE_PPS))
    return out


def _obj(kind: str, **attrs) -> dict:
    return {kind: {"family": FAMILY, "table": TABLE, **attrs}}


def plan_claimants(want: list[Claimant], have: Claimants) -> list[dict]:
    """nftables JSON commands, one transaction, that give exactly the ports of `want` their chain ([]:
    nothing to do). A changed chain is a new name."""
    wanted = {chain_name(c): c for c in want}
    new = [n for n in wanted if n not in have.chains]
    stale = [n for n in have.chains if n not in wanted]
    if have.base_ok and not new and not stale:
        return []
    cmds: list[dict] = []
    if not have.base_ok:
        cmds.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
        cmds.append({"add": _obj("counter", name=CLAIM_BLOCKED)})
    # stale ones first (no gap matters: a claimant port is in no bridge, what it sends goes nowhere)
    cmds.extend({"delete": _obj("chain", name=n)} for n in stale)
    for n in new:
        c = wanted[n]
        cmds.append({"add": _obj("chain", name=n, type="filter", hook="ingress", dev=c.device, prio=PRIORITY,
                                 policy="accept")})
        cmds.extend({"add": _obj("rule", chain=n, **r)} for r in rules(c))
    return cmds


def result(want: list[Claimant]) -> Claimants:
    return Claimants({chain_name(c): c.device for c in want})


def read_claimants(listing: dict | None) -> tuple[Claimants, int]:
    """The table from `nft -j list table netdev roamnet` (None: no table), and its counter's packets."""
    if not listing:
        return MISSING, 0
    chains: dict[str, str] = {}
    packets, has_counter = 0, False
    for item in listing.get("nftables", []):
        if "chain" in item and item["chain"].get("name", "").startswith("claim:"):
            ch = item["chain"]
            dev = ch.get("dev", "")
            chains[ch["name"]] = dev[0] if isinstance(dev, list) and dev else dev or ch["name"].split(":")[1]
        elif "counter" in item and item["counter"].get("name") == CLAIM_BLOCKED:
            has_counter, packets = True, item["counter"].get("packets", 0)
    return Claimants(chains, base_ok=has_counter), packets
