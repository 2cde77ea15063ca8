"""libvirt's qemu hook (`/etc/libvirt/hooks/qemu DOMAIN OPERATION SUBOPERATION EXTRA`, the domain's
XML on stdin): a live migration's events become the phases of a planned move in the mapping.

What libvirt calls during a live migration (libvirt's hooks documentation, "QEMU guest migration"):

    destination  DOMAIN migrate begin -      the incoming migration starts; a non-zero exit refuses it
                                             (this call is a filter too: what it prints on stdout
                                             replaces the domain XML, so it prints nothing)
    destination  DOMAIN prepare begin -, start begin -, started begin -
                                             as for any start (a non-zero exit of the first two
                                             refuses the migration; they cannot tell a migration
                                             from a start, so they do nothing here)
    source       DOMAIN stopped end -, release end migrated
                                             after a successful migration (EXTRA is '-' before
                                             libvirt 10.5); failures are only logged
    destination  DOMAIN stopped end -, release end failed|...
                                             a failed incoming migration stops the destination's
                                             QEMU; the source keeps running

and roamnet's answer (`decide`, pure):

    migrate begin on the destination   prepare the move of the domain's VM to this host's NVE and
                                       wait (bounded) until every NVE programmed it: make before
                                       break. A failure exits 1 and libvirt refuses the migration.
    (the VM resumes on the destination: its RARP on its new port activates the move, by the
     destination's agent; nothing for the hook)
    release on the move's source       the VM left this host. Reason `migrated` (or '-': libvirt
                                       before 10.5 gives none) or a move already activated: the
                                       guest runs on the destination, so the move is activated if no
                                       RARP did it, and completed. Any other reason (shutdown,
                                       destroyed, crashed...) of a move never activated: abort it.
    release on the move's destination  a move never activated: the incoming migration failed,
                                       abort it. An activated one: the guest ran here; the source's
                                       release completes it.
    anything else                      nothing (exit 0 without touching the store)

A domain's interfaces are the mapping's VM interfaces whose MAC is one of the domain's `<interface>`
MACs (case-insensitive), else whose NVE-side port name (`names.port(vm, k)`: `<vm>-e<k>`, the k-th NIC
of that VM, its interfaces grouped by MAC in index order) is the interface's `<target dev=...>`. Only
those count; a domain with none is no VM of the mapping and the hook does nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from roamnet import names
from roamnet.mapping.records import ACTIVATED, Snapshot
from roamnet.orchestrator.moves import MoveError, Orchestrator, natural_key

MIGRATED = "migrated"  # release's shutoff reason after a successful migration (libvirt >= 10.5)
NO_REASON = "-"  # what libvirt before 10.5 passes instead

PREPARE, COMPLETE, ABORT, NOTHING = "prepare", "complete", "abort", "nothing"
ACTIVE_EVENTS = {("migrate", "begin"), ("release", "end")}  # the only ones that may touch the store


class HookError(Exception):
    """The hook cannot do what the event asks; for migrate begin, libvirt then refuses the migration."""


@dataclass(frozen=True)
class NicXml:
    mac: str  # lower case, "" if the interface has none
    target: str  # <target dev=...>, "" if none


@dataclass(frozen=True)
class Decision:
    action: str  # prepare | complete | abort | nothing
    vm: str = ""
    why: str = ""


def domain_nics(xml: str) -> list[NicXml]:
    """The `<devices><interface>` elements of a domain's XML (HookError if it is no domain XML)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HookError(f"cannot parse the domain XML on stdin: {exc}") from None
    if root.tag != "domain":
        raise HookError(f"the XML on stdin is no domain (its root is <{root.tag}>)")
    out = []
    for itf in root.findall("./devices/interface"):
        mac, target = itf.find("mac"), itf.find("target")
        out.append(NicXml((mac.get("address") or "").lower() if mac is not None else "",
                          (target.get("dev") or "") if target is not None else ""))
    return out


def _by_port_name(snap: Snapshot) -> dict[str, list[str]]:
    """NVE-side port name (`<vm>-e<k>`) -> the VM interfaces of that NIC, for every VM of the mapping."""
    by_vm: dict[str, dict[str, list[str]]] = {}  # vm -> mac -> ifaces, in index order
    for p in sorted(snap.ports.values(), key=lambda p: natural_key(p.iface_id)):
        by_vm.setdefault(p.vm, {}).setdefault(p.mac.lower(), []).append(p.iface_id)
    return {names.port(vm, k): ifaces for vm, nics in by_vm.items() for k, ifaces in enumerate(nics.values())}


def domain_ifaces(nics: list[NicXml], snap: Snapshot) -> list[str]:
    """The mapping's VM interfaces behind a domain's NICs (by MAC, else by target device name)."""
    by_mac: dict[str, list[str]] = {}
    for p in snap.ports.values():
        by_mac.setdefault(p.mac.lower(), []).append(p.iface_id)
    by_name = _by_port_name(snap) if any(n.target for n in nics) else {}
    found: list[str] = []
    for n in nics:
        for i in by_mac.get(n.mac) or by_name.get(n.target) or ():
            if i not in found:
                found.append(i)
    return found


def decide(domain: str, op: str, subop: str, extra: str, ifaces: list[str], snap: Snapshot, nve: str) -> Decision:
    """What the hook does for one event on host NVE `nve`, given the domain's VM interfaces. Pure."""
    if (op, subop) not in ACTIVE_EVENTS:
        return Decision(NOTHING, why=f"nothing to do on {op} {subop}")
    if not ifaces:
        return Decision(NOTHING, why=f"domain {domain} has no interface the mapping knows")
    vms = sorted({snap.ports[i].vm for i in ifaces})
    if len(vms) > 1:
        raise HookError(f"domain {domain}'s interfaces are interfaces of several VMs of the mapping: {', '.join(vms)}")
    vm = vms[0]
    migs = [snap.migrations[i] for i in ifaces if i in snap.migrations]
    if op == "migrate":
        bound = {b.nve for i in ifaces if (b := snap.binding_of(i)) is not None}
        if bound == {nve} and not migs:
            return Decision(NOTHING, vm, f"{vm} is bound to {nve} already: nothing to prepare")
        return Decision(PREPARE, vm, f"incoming migration of {vm} to {nve}")
    # release end EXTRA
    if not migs:
        return Decision(NOTHING, vm, f"{vm} stopped on {nve} ({extra}); no move in progress")
    activated = any(mg.state == ACTIVATED for mg in migs)
    dst = migs[0].dst
    if dst == nve:
        if activated:
            return Decision(NOTHING, vm, f"{vm} stopped on {nve}, the destination of its activated move: "
                                         f"the source's release completes it")
        return Decision(ABORT, vm, f"{vm}'s incoming migration to {nve} failed ({extra}): its move was never "
                                   f"activated")
    if any(mg.src == nve for mg in migs):
        if activated or extra in (MIGRATED, NO_REASON):
            return Decision(COMPLETE, vm, f"{vm} left {nve} ({extra}) for {dst}")
        return Decision(ABORT, vm, f"{vm} stopped on {nve} ({extra}) without migrating: its move to {dst} "
                                   f"was never activated")
    return Decision(NOTHING, vm, f"{vm} stopped on {nve}, neither source nor destination of its move "
                                 f"({migs[0].src} -> {dst})")


def run_hook(orch: Orchestrator, nve: str, domain: str, op: str, subop: str, extra: str, xml: str,
             timeout: float, wait: float, complete_within: float = 0.0) -> tuple[Decision, dict | None]:
    """Carry out one event (`decide`, then the phase over the mapping); HookError if it fails."""
    snap = orch.mapping.snapshot()
    if nve not in snap.nves:
        raise HookError(f"this host's NVE {nve!r} is not in the mapping (NVEs there: "
                        f"{', '.join(sorted(snap.nves)) or 'none'}): set ROAMNET_NVE in /etc/roamnet/roamnet.env")
    d = decide(domain, op, subop, extra, domain_ifaces(domain_nics(xml), snap), snap, nve)
    try:
        if d.action == PREPARE:
            return d, orch.prepare(d.vm, nve, timeout, wait, complete_within=complete_within)
        if d.action == COMPLETE:
            return d, orch.complete(d.vm, wait, activate=True)
        if d.action == ABORT:
            return d, orch.abort(d.vm)
    except MoveError as exc:
        raise HookError(str(exc)) from None
    return d, None
