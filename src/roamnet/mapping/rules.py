"""The mapping's rules, as pure functions: EVPN mobility and VLAN allocation in L2 domains.

Mobility (RFC 7432 §15): a move advertises the highest sequence number seen + 1; the higher number
wins; on equal numbers the lower NVE (VTEP) address wins; anything else is stale and ignored.

L2 physical domains (draft §3.1): a VLAN-ID means something only inside a domain: the mapping
allocates one per CUG present in the domain from the domain's range, keeps it while the CUG stays,
releases it when the last member leaves, and refuses a move that finds the range exhausted.
"""

from __future__ import annotations

import ipaddress

from roamnet.mapping.records import Binding, Domain, LogicalPort, Nve


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


# ---- VLAN allocation ---------------------------------------------------------------------------

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


def settle(domain: Domain, used: dict[int, int], present: set[int],
           order: tuple[int, ...] = ()) -> tuple[dict[int, int], list[int]]:
    """The allocation once exactly the CUGs `present` are in `domain`: the VLANs of CUGs that left
    released, then one for each present CUG without one (those of `order` first, in that order, then
    by VNI). Returns (allocation, the present VNIs the range had no VLAN left for)."""
    new, missing = release(used, present), []
    for vni in dict.fromkeys([*(v for v in order if v in present), *sorted(present)]):
        try:
            new = allocate(domain, new, vni)
        except VlanExhausted:
            missing.append(vni)
    return new, missing


# ---- duplicate detection (RFC 7432 §15.1) -------------------------------------------------------

def recent_moves(moves: tuple[float, ...], now: float, window_s: float) -> tuple[float, ...]:
    """The moves of `moves` (wall-clock times) inside the window that ends now."""
    return tuple(t for t in moves if now - t < window_s)


def detect_duplicate(moves: tuple[float, ...], now: float, max_moves: int, window_s: float) -> tuple[tuple[float, ...], bool]:
    """One more move of a MAC at `now`: (its recent moves including this one, whether that many moves
    inside the window mean a duplicate — two hosts claiming one MAC, or a loop — so the binding must
    freeze where it is instead of moving)."""
    seen = recent_moves(moves, now, window_s) + (now,)
    return seen, len(seen) >= max_moves
