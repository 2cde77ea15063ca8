"""Route health injection: the data-center border routers (DCBRs) announce their tenants' routes to the WAN.

Every tenant has a namespace on every border (`rn-<lab>-<border>.t-<tenant>`), handed off to the WAN
router by a /31 from 198.18.251.0/24 (labplan). Over each handoff FRR speaks eBGP: zebra + bgpd in
the border's tenant namespace (AS 65100 + d for data center d, 1-based in the topology's order;
router-id and update-source: its handoff address) and one zebra + bgpd in the WAN router's namespace
(AS 65000) with every handoff as a neighbor, to which it sends a default route (`default-originate`).

What a border announces is what the NVE agent put into its tenant namespace's MAIN table with route
protocol 77: a blackhole route per tenant subnet and a /32 per VM in that border's data center now.
FRR's zebra reads the main table's routes of foreign protocols as "kernel" routes and bgpd exports
them (`redistribute kernel`, through a route-map that lets only the tenant's subnets and their more
specific routes out). The agent's /32s for the tenant's VMs in other data centers live in table 100
(looked up first by an ip rule): zebra does not import other tables (no `ip import-table`), so those
are never announced (checked by tests/lab/test_border_lab.py). A border accepts only the default
route from the WAN.

The processes are `roamnet.wan.frr`'s: per-instance directories under the workdir (default
/run/roamnet/<lab>/border), a pid journal (`roamnet.wan.frr.kill_recorded(workdir)` after a crash),
daemons only inside lab namespaces, stopped by their own pids.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roamnet.dataplane import netns
from roamnet.intent.model import TENANT_RANGE
from roamnet.names import WAN_NODE
from roamnet.wan import frr, guard
from roamnet.wan.frr import FRR_BIN_DIR, FrrError, FrrProcesses, check_lab_address

log = logging.getLogger(__name__)

WAN_ASN = 65000
BORDER_ASN_BASE = 65100  # data center d (1-based): AS 65100 + d
READY_TIMEOUT_S = 30.0
KEEPALIVE_S, HOLDTIME_S, CONNECT_RETRY_S = 1, 3, 1
ANNOUNCE_MAP = "RN-ANNOUNCE"  # border: what may go to the WAN (the tenant's subnets, and longer prefixes)
ANNOUNCE_LIST = "RN-TENANT-ROUTES"
FROM_WAN_MAP = "RN-FROM-WAN"  # border: what it takes from the WAN (the default route only)
DEFAULT_LIST = "RN-DEFAULT"
FROM_BORDERS_MAP = "RN-FROM-BORDERS"  # WAN: what it takes from the borders (tenant address space only)
TENANTS_LIST = "RN-TENANTS"
TENANT_SPACE = str(TENANT_RANGE)  # every tenant subnet lies in it


class BorderError(FrrError):
    pass


# ---------------------------------------------------------------- pure: who runs, with which config


@dataclass(frozen=True)
class Peer:
    """A BGP neighbor of an instance, on a directly connected handoff /31."""

    address: str  # the neighbor's address
    asn: int
    name: str  # the neighbor instance's node ("wan", or "<border>.t-<tenant>")
    local: str  # our address on that link (update-source)
    border: str = ""  # for the WAN: the border router behind this neighbor
    tenant: str = ""


@dataclass(frozen=True)
class BorderInstance:
    """One FRR instance (zebra + bgpd): a border's tenant namespace, or the WAN router."""

    node: str  # instance directory and hostname: "<border>.t-<tenant>" (the plan's key) or "wan"
    ns: str
    role: str  # "border" | "wan"
    asn: int
    router_id: str  # a border: its handoff address (also its update-source)
    peers: tuple[Peer, ...]
    border: str = ""  # role border: the border router node, its data center and tenant
    dc: str = ""
    tenant: str = ""
    announce: tuple[str, ...] = ()  # role border: the tenant's subnets (routes in them may be announced)

    def label(self, daemon: str) -> str:
        return f"{daemon}@{self.ns}"


def border_asn(d: int) -> int:
    """The AS of data center d (1-based)."""
    return BORDER_ASN_BASE + d


def _ip(iface_address: str) -> str:
    return str(ipaddress.ip_interface(iface_address).ip)


def plan_border_instances(plan: Any, topo: Any) -> list[BorderInstance]:
    """One instance per (border, tenant) in data-center then tenant order, then the WAN router's. Pure.
    No tenants: no instances."""
    if not topo.tenants:
        return []
    dc_index = {dc: d for d, dc in enumerate(topo.datacenters, start=1)}
    borders = sorted((n for n in plan.nodes.values() if n.kind == "border"), key=lambda n: dc_index[n.dc])
    out: list[BorderInstance] = []
    wan_peers: list[Peer] = []
    for b in borders:
        asn = border_asn(dc_index[b.dc])
        for tenant in topo.tenants:
            try:
                mine, theirs = plan.handoff(b.name, tenant)
            except (StopIteration, KeyError):
                raise ValueError(f"the plan has no handoff link for tenant {tenant} on {b.name}") from None
            vrf = plan.vrf(b.name, tenant)
            here, there = _ip(mine.address), _ip(theirs.address)
            subnets = tuple(str(c.subnet) for c in topo.cugs.values() if getattr(c, "tenant", None) == tenant)
            out.append(BorderInstance(vrf.name, vrf.ns, "border", asn, here,
                                      (Peer(there, WAN_ASN, WAN_NODE, here),),
                                      border=b.name, dc=b.dc, tenant=tenant, announce=subnets))
            wan_peers.append(Peer(here, asn, vrf.name, there, border=b.name, tenant=tenant))
    if not wan_peers:
        raise ValueError("the plan has no border router to hand tenants off from")
    out.append(BorderInstance(WAN_NODE, plan.nodes[WAN_NODE].ns, "wan", WAN_ASN, wan_peers[0].local,
                              tuple(wan_peers)))
    return out


def guard_sessions(plan: Any, inst: BorderInstance) -> tuple[guard.Session, ...]:
    """The BGP sessions of `inst` as its namespace's guard sees them: interface, neighbour, local address."""
    ifaces = {_ip(iface.address): iface.name for link in plan.links
              for node, iface in ((link.a, link.a_if), (link.b, link.b_if)) if node == inst.node and iface.address}
    missing = [p.local for p in inst.peers if p.local not in ifaces]
    if missing:
        raise ValueError(f"{inst.node}: no interface has the session address {', '.join(missing)}")
    return tuple(guard.Session(ifaces[p.local], p.address, p.local) for p in inst.peers)


def _prefix_list(name: str, prefixes: tuple[str, ...] | list[str], longer: bool) -> list[str]:
    if not prefixes:
        return [f"ip prefix-list {name} seq 5 deny any"]
    return [f"ip prefix-list {name} seq {5 * i} permit {p}"
            f"{' le 32' if longer and ipaddress.ip_network(p).prefixlen < 32 else ''}"
            for i, p in enumerate(prefixes, start=1)]


def _route_map(name: str, prefix_list: str) -> list[str]:
    return [f"route-map {name} permit 10", f" match ip address prefix-list {prefix_list}", "exit", "!"]


def border_config(daemon: str, inst: BorderInstance, *, log_file: str | None = None, debug: bool = False,
                  keepalive: int = KEEPALIVE_S, holdtime: int = HOLDTIME_S, connect_retry: int = CONNECT_RETRY_S) -> str:
    """The configuration file of `daemon` ("zebra" | "bgpd") of one instance. Pure.

    Both roles: `frr defaults datacenter`, `no bgp ebgp-requires-policy`, only ipv4 unicast activated
    per neighbor, fast timers (keepalive 1 s / hold 3 s, connect retry 1 s, advertisement interval 0).
    A border: `redistribute kernel` through RN-ANNOUNCE (the tenant's subnets, `le 32`), the same
    route-map outbound, and only the default route accepted from the WAN. The WAN router: every
    handoff a neighbor with `default-originate`, accepting only tenant address space (198.19/16).
    zebra: no routing configuration (it reads the main table only; no `ip import-table`)."""
    frr.check_instance(daemon, inst, ("border", "wan"))
    if inst.role == "border" and len(inst.peers) != 1:
        raise ValueError(f"{inst.node}: a border's tenant namespace has exactly one BGP peer, the WAN router")
    check_lab_address(inst.router_id, f"{inst.node}: router-id")
    for p in inst.peers:
        check_lab_address(p.address, f"{inst.node}: peer")
        check_lab_address(p.local, f"{inst.node}: update-source")
    for prefix in inst.announce:
        net = ipaddress.ip_network(prefix)
        if not net.subnet_of(frr.LAB_RANGE):  # type: ignore[arg-type]
            raise ValueError(f"{inst.node}: announced prefix {prefix} is outside the lab range {frr.LAB_RANGE}")
    first = ("frr defaults datacenter",) if daemon == "bgpd" else ()
    lines = frr.config_header(daemon, inst.node, inst.ns, inst.role, "roamnet.wan.border", log_file=log_file,
                              debug=debug, first=first)
    if daemon == "zebra":
        if debug:
            lines += ["debug zebra kernel", "debug zebra rib", "!"]
        return "\n".join(lines + ["end", ""])
    if debug:
        lines += ["debug bgp zebra", "debug bgp updates", "debug bgp neighbor-events", "!"]
    if inst.role == "border":
        lines += _prefix_list(ANNOUNCE_LIST, inst.announce, longer=True)
        lines += [f"ip prefix-list {DEFAULT_LIST} seq 5 permit 0.0.0.0/0", "!"]
        lines += _route_map(ANNOUNCE_MAP, ANNOUNCE_LIST) + _route_map(FROM_WAN_MAP, DEFAULT_LIST)
    else:
        lines += [f"ip prefix-list {TENANTS_LIST} seq 5 permit {TENANT_SPACE} le 32", "!"]
        lines += _route_map(FROM_BORDERS_MAP, TENANTS_LIST)
    lines += [f"router bgp {inst.asn}",
              f" bgp router-id {inst.router_id}",
              " bgp log-neighbor-changes",
              " no bgp ebgp-requires-policy",
              " no bgp default ipv4-unicast"]
    for p in inst.peers:
        lines += [f" neighbor {p.address} remote-as {p.asn}",
                  f" neighbor {p.address} description {p.name}",
                  *session_lines(p.address, p.local, keepalive, holdtime, connect_retry)]
    lines += [" !", " address-family ipv4 unicast"]
    if inst.role == "border":
        lines.append(f"  redistribute kernel route-map {ANNOUNCE_MAP}")
    for p in inst.peers:
        lines.append(f"  neighbor {p.address} activate")
        if inst.role == "border":
            lines += [f"  neighbor {p.address} route-map {FROM_WAN_MAP} in",
                      f"  neighbor {p.address} route-map {ANNOUNCE_MAP} out"]
        else:
            lines += [f"  neighbor {p.address} default-originate",
                      f"  neighbor {p.address} route-map {FROM_BORDERS_MAP} in"]
    lines += [" exit-address-family", "exit", "!", "end", ""]
    return "\n".join(lines)


def session_lines(address: str, local: str, keepalive: int = KEEPALIVE_S, holdtime: int = HOLDTIME_S,
                  connect_retry: int = CONNECT_RETRY_S) -> list[str]:
    """A WAN eBGP session's neighbor settings: update-source, fast timers, advertisement interval 0. Pure."""
    return [f" neighbor {address} update-source {local}",
            f" neighbor {address} timers {keepalive} {holdtime}",
            f" neighbor {address} timers connect {connect_retry}",
            f" neighbor {address} advertisement-interval 0"]


def _peers(summary: Any) -> dict[str, dict]:
    """Neighbor address -> its entry (state, pfxRcd, ...) in `show bgp ipv4 unicast summary json`
    (either shape: the address family's object, or {"ipv4Unicast": ...})."""
    return dict(summary.get("peers") or summary.get("ipv4Unicast", {}).get("peers") or {})


def best_paths(bgp_table: Any, peers: dict[str, str]) -> dict[str, str]:
    """{prefix: peers[neighbor]} for each prefix's best path in `show ip bgp json` output. Pure.
    `peers`: neighbor address -> name. Paths from neighbors not in `peers` are left out."""
    out = {}
    for prefix, paths in (bgp_table.get("routes") or {}).items():
        for path in paths if isinstance(paths, list) else [paths]:
            best = path.get("bestpath")
            if not (best is True or (isinstance(best, dict) and best.get("overall"))):
                continue
            via = path.get("peerId")
            if via not in peers:
                via = next((h.get("ip") for h in path.get("nexthops", []) if h.get("ip") in peers), via)
            if via in peers:
                out[prefix] = peers[via]
            break
    return out


# ---------------------------------------------------------------- the processes


class BorderBgp(FrrProcesses):
    """eBGP from every border's tenant namespaces to the WAN router (see the module's docstring).

    workdir: default /run/roamnet/<lab>/border (0700, removed by stop() when start() created it,
    unless keep_workdir). frr_bin_dir: where zebra and bgpd are. ready_timeout: how long start()
    waits for every session to be Established. debug: zebra/BGP debugging into the daemons' logs."""

    name = "border-bgp"
    workdir_name = "border"
    error = BorderError

    def __init__(self, workdir: Path | str | None = None, frr_bin_dir: Path | str = FRR_BIN_DIR,
                 ready_timeout: float = READY_TIMEOUT_S, vtysh: str | None = None, debug: bool = False,
                 keep_workdir: bool = False):
        super().__init__(workdir, frr_bin_dir, vtysh, keep_workdir)
        self.ready_timeout = ready_timeout
        self.debug = debug
        self.instances: list[BorderInstance] = []
        self._guards: dict[str, list[dict]] = {}  # instance node -> its namespace's BGP guard (nftables JSON)

    # ---- start ----------------------------------------------------------------------------------
    def start(self, lab: Any) -> None:
        """After the lab's handoff links exist: zebra + bgpd in every border's tenant namespaces and on
        the WAN router, then wait (bounded by `ready_timeout`) until every eBGP session is Established
        at both ends and every border took the WAN's default route. On any failure: stops what it started and raises BorderError naming the instance
        ("bgpd in rn-<lab>-dc1br.t-t1: ...") with the tail of its log. A lab without tenants: nothing."""
        if self.running():
            raise BorderError(f"{self.name} is already running ({', '.join(self.running())})")
        progress: Callable[[str], None] = getattr(lab, "progress", None) or (lambda msg: None)
        try:
            instances = plan_border_instances(lab.plan, lab.topo)
        except ValueError as exc:
            raise BorderError(f"{self.name}: {exc}") from None
        if not instances:
            progress(f"{self.name}: no tenants, no border BGP")
            return
        try:
            self.prepare_workdir(lab.name)
            self.instances = instances
            self.check_paths()
            self.write_configs(lambda daemon, inst, log_file:
                               border_config(daemon, inst, log_file=log_file, debug=self.debug))
            self._guards = {inst.node: guard.bgp_guard(guard_sessions(lab.plan, inst)) for inst in instances}
            self.launch(progress)
            self._wait_established(progress)
        except BaseException:
            self.stop(lab)
            raise

    def spawn(self, inst: Any, daemon: str, group: str | None = None) -> frr.Proc:
        """As FrrProcesses.spawn; before a bgpd starts listening, its namespace's guard lets port 179
        through only for that instance's configured sessions (wan.guard)."""
        if daemon == "bgpd" and inst.node in self._guards and netns.exists(inst.ns):
            try:
                guard.apply(inst.ns, self._guards[inst.node])
            except OSError as exc:
                raise BorderError(f"bgpd in {inst.ns}: guarding BGP's port failed: {exc}") from None
        return super().spawn(inst, daemon, group)

    def _wan(self) -> BorderInstance:
        wan = next((i for i in self.instances if i.role == "wan"), None)
        if wan is None:
            raise BorderError(f"{self.name} is not started")
        return wan

    def _borders(self) -> list[BorderInstance]:
        return [i for i in self.instances if i.role == "border"]

    def _summaries(self) -> tuple[dict[str, dict], list[tuple[BorderInstance, dict[str, dict]]]]:
        """`show bgp ipv4 unicast summary json` peers of the WAN router and of every border instance
        (in parallel); {} for an instance whose bgpd did not answer."""
        wan, borders = self._wan(), self._borders()

        def peers(inst: BorderInstance) -> dict[str, dict]:
            try:
                return _peers(self.show(inst, "bgpd", "show bgp ipv4 unicast summary json"))
            except BorderError as exc:
                log.debug("%s: %s", inst.label("bgpd"), exc)
                return {}

        with ThreadPoolExecutor(max_workers=min(16, len(borders) + 1)) as pool:
            views = list(pool.map(peers, [wan, *borders]))
        return views[0], list(zip(borders, views[1:]))

    @staticmethod
    def _state(inst: BorderInstance, at_wan: dict[str, dict], mine: dict[str, dict]) -> str:
        here = mine.get(inst.peers[0].address, {}).get("state", "Idle") if mine else "NoAnswer"
        there = at_wan.get(inst.router_id, {}).get("state", "Idle") if at_wan else "NoAnswer"
        if here == there == "Established":
            return "Established"
        return here if here != "Established" else there

    def sessions(self) -> dict[str, str]:
        """{border instance label ("bgpd@<ns>"): BGP state} of every border <-> WAN session:
        "Established" when both ends say so, else the state of an end that does not (the border's
        first); "NoAnswer" for an end whose bgpd did not answer."""
        at_wan, borders = self._summaries()
        return {inst.label("bgpd"): self._state(inst, at_wan, mine) for inst, mine in borders}

    def _wait_established(self, progress: Callable[[str], None]) -> None:
        """Until every session is Established at both ends and every border accepted the WAN's
        default route (bounded by ready_timeout); else the failure of the first border not there."""
        started = time.monotonic()
        deadline = started + self.ready_timeout
        states: dict[str, str] = {}
        last_note, next_note = "", started + 1.0
        for _ in range(int(self.ready_timeout / 0.1) + 10):  # bounded in count as well as in time
            self.check_alive()
            at_wan, borders = self._summaries()
            states = {}
            for inst, mine in borders:
                state = self._state(inst, at_wan, mine)
                if state == "Established" and not mine[inst.peers[0].address].get("pfxRcd"):
                    state = "Established (no default route yet)"
                states[inst.label("bgpd")] = state
            up = [label for label, s in states.items() if s == "Established"]
            note = f"{self.name}: {len(up)}/{len(states)} eBGP sessions established"
            if len(up) == len(states):
                progress(note + f" ({time.monotonic() - started:.1f} s)")
                return
            now = time.monotonic()
            if now >= next_note and note != last_note:
                progress(note)
                last_note, next_note = note, now + 2.0
            if now > deadline:
                break
            time.sleep(0.1)
        down = {label: s for label, s in states.items() if s != "Established"}
        label, state = next(iter(down.items()))
        inst = next(i for i in self._borders() if i.label("bgpd") == label)
        proc = self.proc(inst, "bgpd")
        assert proc is not None
        peer = inst.peers[0]
        raise self.failure(proc, f"BGP session {inst.router_id} (AS {inst.asn}) <-> {peer.address} "
                                 f"(AS {peer.asn}) not Established after {self.ready_timeout:.0f} s "
                                 f"(state {state}; {len(down)} of {len(states)} sessions down)")

    # ---- what the WAN learned -------------------------------------------------------------------
    def wan_routes(self) -> dict[str, str]:
        """{prefix: border node} of the WAN router's BGP best paths (from `show ip bgp json`)."""
        wan = self._wan()
        table = self.show(wan, "bgpd", "show ip bgp json", timeout=10.0)
        return best_paths(table, {p.address: p.border for p in wan.peers})

    def set_wan_sessions(self, border: str, up: bool) -> None:
        """Shut down (up=False) or bring back the WAN router's BGP sessions to `border`'s tenant
        namespaces (`neighbor ... shutdown`): the WAN router withdraws, or learns again, what that
        border announces. What a slow BGP convergence looks like, on demand."""
        wan = self._wan()
        peers = [p for p in wan.peers if p.border == border]
        if not peers:
            raise BorderError(f"{self.name}: the WAN router has no session to {border!r}")
        no = "" if not up else "no "
        self.configure(wan, "bgpd", [f"router bgp {wan.asn}"] + [f"{no}neighbor {p.address} shutdown" for p in peers])

    def wan_paths(self) -> dict[str, list[tuple[str, str, bool]]]:
        """{prefix: [(border, tenant, best)]}: every path the WAN router has, from which handoff."""
        wan = self._wan()
        by_addr = {p.address: p for p in wan.peers}
        table = self.show(wan, "bgpd", "show ip bgp json", timeout=10.0)
        out: dict[str, list[tuple[str, str, bool]]] = {}
        for prefix, paths in (table.get("routes") or {}).items():
            for path in paths if isinstance(paths, list) else [paths]:
                p = by_addr.get(path.get("peerId"))
                if p is None:
                    continue
                best = path.get("bestpath")
                out.setdefault(prefix, []).append(
                    (p.border, p.tenant, best is True or (isinstance(best, dict) and bool(best.get("overall")))))
        return out

    # ---- stop -----------------------------------------------------------------------------------
    def stop(self, lab: Any = None) -> list[str]:
        """End every FRR process this object started, by its own pid: bgpd first, then zebra; SIGTERM,
        SIGKILL after a bounded wait; the journal updated. Returns the labels stopped."""
        return super().stop(lab)
