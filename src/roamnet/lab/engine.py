"""The namespace lab engine: builds a LabPlan in network namespaces, starts one NVE agent per NVE (and
per hypervisor switch), plugs the VMs in through the lab's hypervisor, and tears it all down.

Its parts: `plan` (pure: nodes, links, addresses), `hypervisor` (VMs, ports, link flips, RARP),
`moves` (the orchestrator: migration phases, one skeleton for every control plane), `inspect`.
The engine reaches the agents only through the mapping: it writes the intent's records
(`intent.compile`), and waits for convergence on the statuses the agents publish (/status/<nve>).

Moves are make-before-break by default (phases prepare -> resume -> activate -> complete, see
mapping/system.py); `prepare=False` keeps the learn-driven path (the destination NVE claims the port
when it comes up). The control plane is roamnet's (mapping system + one agent per NVE) unless
another one is given, e.g. `baselines.evpn.FrrEvpn()` for FRR BGP-EVPN on the same kernel data plane.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

from roamnet import names
from roamnet.agent.loop import Agent
from roamnet.agentd import build_agent
from roamnet.dataplane import netns
from roamnet.dataplane.nft import Nft, filter_counters, read_filter_table
from roamnet.intent.compile import compile_nves, compile_topology
from roamnet.intent.model import Topology
from roamnet.lab import inspect as inspection
from roamnet.lab import libvirt
from roamnet.lab.errors import LabError
from roamnet.lab.etcd import EtcdServer
from roamnet.lab.hypervisor import Hypervisor
from roamnet.lab.moves import Moves
from roamnet.lab.plan import (
    UNDERLAY_MTU,
    LabPlan,
    Node,
    build_plan,
    check_addresses,
    check_isolation,
    underlay_prefixes,
    vteps,
)
from roamnet.lab.processes import AgentProcess
from roamnet.lab.state import make_state_dir, state_dir, write_journal
from roamnet.mapping.apply import ApplyRefused
from roamnet.mapping.client import MappingClient
from roamnet.mapping.store import MemoryStore, Store
from roamnet.mapping.system import MappingSystem
from roamnet.names import WAN_NODE
from roamnet.nve.filters import Table
from roamnet.wan import guard
from roamnet.wan.border import BorderBgp

__all__ = ["ControlPlane", "Lab"]

log = logging.getLogger(__name__)


class ControlPlane(Protocol):
    """Another control plane for the lab's servers (roamnet's own agents when none is given)."""

    name: str

    def start(self, lab: Lab) -> None: ...
    def attach_port(self, lab: Lab, vm: str, server: str) -> None: ...
    def located(self, lab: Lab, vm: str, server: str) -> bool: ...
    def stop(self, lab: Lab) -> list[str]: ...


class Lab:
    def __init__(self, topo: Topology, store: Store | None = None, journal: Path | None = None,
                 progress: Callable[[str], None] | None = None, control_plane: ControlPlane | None = None,
                 wan_bgp: bool = True, border: BorderBgp | None = None, etcd: bool | None = None,
                 etcd_members: int = 1, store_url: str | None = None):
        self.topo = topo
        # The mapping and the agents. By default (roamnet's control plane, no `store` given) the lab runs
        # what real hosts run: a private etcd (lab/etcd.py: `etcd_members` members on unix sockets in the
        # lab's state directory), the mapping there, and one `roamnet agent` process per NVE
        # (lab/processes.py). `store_url`: an etcd of the user's instead (it must hold no mapping yet;
        # `down` removes the mapping the lab wrote there). etcd=False, or a `store` given, keeps the
        # mapping in this process (a MemoryStore by default) with the agents as threads: the in-process lab.
        if etcd is None:
            etcd = store is None and control_plane is None and store_url is None
        self.etcd: EtcdServer | None = None
        self.store_url = store_url  # the store agent processes reach (the lab's own etcd's, set at up)
        self._made_state_dir: Path | None = None
        self.agent_dir: Path | None = None  # agent processes' logs, pid files and metrics
        if etcd or store_url:
            if store is not None or control_plane is not None or (etcd and store_url):
                raise LabError("a lab with agent processes over etcd takes no other store or control plane")
            if not state_dir(topo.name).exists():  # an in-process lab (no daemon made it): removed at down
                self._made_state_dir = state_dir(topo.name)
            self.agent_dir = make_state_dir(topo.name) / "agents"
        if etcd:
            self.etcd = EtcdServer(make_state_dir(topo.name) / "etcd", name=f"rn-{topo.name}", members=etcd_members)
        self._wrote_external = False
        self.control_plane = control_plane
        # FRR (BGP) on the borders' tenant namespaces and the WAN router, when there are tenants;
        # `border` overrides how (e.g. another FRR location), wan_bgp=False leaves the WAN unrouted
        self.wan_bgp = wan_bgp and bool(topo.tenants)
        self._border_arg = border
        self.border: BorderBgp | None = None
        self.plan: LabPlan = build_plan(topo)
        check_addresses(self.plan)
        check_isolation(self.plan)
        self.mapping = MappingSystem(store or MemoryStore())  # replaced by one over etcd at up() (etcd=True)
        self.agents: dict[str, Agent | AgentProcess] = {}
        self.created: list[str] = []
        self.journal = journal
        self.progress = progress or (lambda msg: None)
        self._handles: dict[str, IPRoute] = {}
        qemu_dir = self._qemu_dir() if any(v.guest == "qemu" for v in topo.vms.values()) else None
        port_namespace = getattr(control_plane, "port_namespace", None)
        self.hv = Hypervisor(topo, self.plan, self.netlink, self._new_ns,
                             port_created=self._port_created if control_plane is not None else None,
                             qemu_dir=qemu_dir,
                             port_namespace=(lambda vm, server, i: port_namespace(self, vm, server, i))
                             if port_namespace is not None else None)
        self.hv.garp = bool(getattr(control_plane, "guest_announces_arp", False))
        self.moves = Moves(self)

    def _qemu_dir(self) -> Path:
        """QEMU guests (lab/qemu.py): checked, and their sockets' and pid files' directory in the lab's
        state directory (`<state>/qemu`, where the crash clean-up finds their pids)."""
        if self.control_plane is not None and getattr(self.control_plane, "steers_moves", False):
            raise LabError(f"QEMU guests do not run with {self.control_plane.name} yet (the orchestrator steers its "
                           "moves through the lab's NIC namespaces, which a QEMU guest has not)")
        for vm, spec in self.topo.vms.items():
            node = self.plan.nodes[spec.server]
            if spec.guest == "qemu" and node.tor:
                raise LabError(f"{vm}: a QEMU guest runs on a server with an underlay address of its own (QEMU's "
                               f"migration crosses the underlay); {spec.server} is behind ToR {node.tor}")
        if not state_dir(self.topo.name).exists():  # an in-process lab (no daemon made it): removed at down
            self._made_state_dir = state_dir(self.topo.name)
        return make_state_dir(self.topo.name) / "qemu"

    def netlink(self, ns: str) -> IPRoute:
        """A netlink handle in namespace `ns`, kept open (opening one costs ~8 ms)."""
        if ns not in self._handles:
            self._handles[ns] = IPRoute(netns=ns)
        return self._handles[ns]

    @property
    def name(self) -> str:
        return self.topo.name

    # the orchestrator's view (lab/moves.py) and the hypervisor's (lab/hypervisor.py)
    @property
    def location(self) -> dict[str, str]:
        return self.hv.location

    @property
    def pending(self) -> dict[str, dict]:
        return self.moves.pending

    @property
    def migrations(self) -> list[dict]:
        return self.moves.migrations

    def migrate(self, vm: str, to: str, pause_ms: int = 0, wait: float = 10.0, prepare: bool = True,
                driver: str = "lab") -> dict:
        """`driver`: who does the mapping's side of the move: the lab's orchestrator ("lab"), or libvirt's qemu
        hook at libvirt's points of a migration (lab/libvirt.py), in this process ("libvirt") or as the
        `roamnet hook libvirt` command ("libvirt-command")."""
        if driver == "lab":
            return self.moves.migrate(vm, to, pause_ms, wait, prepare)
        if driver not in libvirt.DRIVERS:
            raise LabError(f"no move driver {driver!r} (drivers: {', '.join(libvirt.DRIVERS)})")
        runner = (libvirt.in_process(self.moves, wait) if driver == "libvirt"
                  else libvirt.command(self.store_url, wait))
        return self.moves.migrate(vm, to, pause_ms, wait, how=libvirt.Libvirt(self.moves, runner, driver))

    def prepare(self, vm: str, to: str, **kw) -> dict:
        return self.moves.prepare(vm, to, **kw)

    def resume(self, vm: str, pause_ms: int = 0, announce: bool = True) -> dict:
        return self.moves.resume(vm, pause_ms, announce)

    def activate(self, vm: str) -> dict:
        return self.moves.activate(vm)

    def complete(self, vm: str, wait: float = 10.0) -> dict:
        return self.moves.complete(vm, wait)

    def abort(self, vm: str) -> dict:
        return self.moves.abort(vm)

    def stop_vm(self, vm: str) -> dict:
        """Cold move, first half: stop `vm` (moves.Moves.stop)."""
        return self.moves.stop(vm)

    def start_vm(self, vm: str, to: str) -> dict:
        """Cold move, second half: start the stopped `vm` on server `to` (moves.Moves.start)."""
        return self.moves.start(vm, to)

    def unfreeze(self, vm: str) -> dict:
        """Thaw `vm`'s interfaces that duplicate detection froze (they stay where they are)."""
        if vm not in self.topo.vms:
            raise LabError(f"no VM {vm!r} in lab {self.name}")
        snap = self.mapping.snapshot()
        frozen = [i for i in self.moves.ifaces(vm) if (b := snap.binding_of(i)) is not None and b.frozen]
        for iface in frozen:
            self.mapping.unfreeze(iface)
        return {"vm": vm, "unfrozen": frozen}

    # ---- bookkeeping ---------------------------------------------------------------------------
    def _record(self) -> None:
        if self.journal:
            write_journal(self.journal, self.name, self.created)

    def add_namespace(self, ns: str) -> None:
        """A namespace of the lab's own (journaled before it exists, removed at down): for a control
        plane's daemons that belong to no node, e.g. OVN's central namespace."""
        self._new_ns(ns)

    def _new_ns(self, ns: str) -> None:
        if netns.exists(ns):
            raise LabError(f"namespace {ns} already exists (is lab {self.name} already up?)")
        self.created.append(ns)
        self._record()  # journal first: a crash after this still knows what to remove
        netns.create(ns)
        netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        self.netlink(ns).link("set", index=1, state="up")

    def _port_created(self, vm: str, server: str) -> None:
        self.control_plane.attach_port(self, vm, server)  # the hypervisor's bridge (libvirt's job)

    # ---- up / down -----------------------------------------------------------------------------
    def up(self, converge_timeout: float = 20.0) -> None:
        if self.control_plane is not None and self.topo.tors():
            raise LabError(f"{self.control_plane.name} drives server NVEs only: this lab has ToR NVEs "
                           f"({', '.join(self.topo.tors())})")
        try:
            self._build_underlay()
            if self.control_plane is not None:
                self.progress(f"starting {self.control_plane.name}")
                self.control_plane.start(self)
                self._start_vms()
                self._wait_located(converge_timeout)
                return
            if self.etcd is not None:
                self.progress("starting etcd (unix socket in the lab's state directory)")
                self.mapping = MappingSystem(self.etcd.start())
                self.store_url = self.etcd.url
            elif self.store_url is not None:
                self.mapping = MappingSystem(self._external_store())
            if self.agent_dir is not None:
                self.agent_dir.mkdir(mode=0o700, exist_ok=True)
            self._register()
            for node in self.agent_nodes():
                self.agents[node.name] = self._new_agent(node.name)
                self.agents[node.name].start()
            if self.wan_bgp:
                self.progress("starting FRR (BGP) on the border routers and the WAN router")
                self.border = self._border_arg or BorderBgp()
                self.border.start(self)
            self._start_vms()
            started = time.monotonic()
            # every VM's server has told the mapping it sees the VM's port up (no binding detached), then
            # every NVE has programmed that mapping
            if self.mapping.wait_for(lambda s: not any(b.detached for b in s.bindings.values()),
                                     converge_timeout) is None:
                detached = sorted(b.iface_id for b in self.mapping.snapshot().bindings.values() if b.detached)
                raise LabError(f"the VMs' servers did not see their ports up within {converge_timeout:.0f} s: "
                               f"{', '.join(detached)}")
            if not self.wait_converged(max(1.0, converge_timeout - (time.monotonic() - started))):
                raise LabError(f"NVE agents did not converge within {converge_timeout:.0f} s: "
                               + self._convergence_problems())
        except BaseException:
            self.down()
            raise

    def _start_vms(self) -> None:
        self.progress("starting VMs")
        for vm in self.topo.vms:
            self.hv.build_vm(vm)
            self.hv.plug(vm, self.hv.location[vm])

    def _wait_located(self, timeout: float) -> None:
        """Another control plane learns MACs from frames: announce every VM, wait until all are known."""
        for vm in self.topo.vms:
            self.hv.announce_async(vm)
        deadline = time.monotonic() + timeout
        waiting = set(self.topo.vms)
        while waiting and time.monotonic() < deadline:
            waiting = {vm for vm in waiting if not self.control_plane.located(self, vm, self.hv.location[vm])}
            time.sleep(0.05)
        if waiting:
            raise LabError(f"{self.control_plane.name} did not learn {', '.join(sorted(waiting))} "
                           f"within {timeout:.0f} s")

    def down(self) -> list[str]:
        self.moves.cancel_timers()
        if self.hv.qemu is not None:  # QEMU guests first, each by its pid (their taps go with them)
            self.hv.qemu.stop_all()
            shutil.rmtree(self.hv.qemu.workdir, ignore_errors=True)
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()
        if self.etcd is not None or self.store_url is not None:
            if self.etcd is None and self._wrote_external:
                self._clear_external()
            close = getattr(self.mapping.store, "close", None)
            if close is not None:
                close()
        if self.etcd is not None:
            self.etcd.stop()  # its own pid; its directory (data) goes with it
        if self.agent_dir is not None:
            shutil.rmtree(self.agent_dir, ignore_errors=True)  # the agents' logs, pid files, metrics
        for cp in (self.control_plane, self.border):
            if cp is None:
                continue
            try:
                cp.stop(self)
            except Exception:  # the namespaces must go whatever happened
                log.exception("%s: stop failed", cp.name)
        self.border = None
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        removed = []
        for ns in reversed(self.created):
            netns.remove(ns)
            removed.append(ns)
        self.created.clear()
        self._record()
        if self._made_state_dir is not None:  # last: FRR's directories were in it too
            with contextlib.suppress(OSError):
                self._made_state_dir.rmdir()
        return removed

    def _build_underlay(self) -> None:
        routers = [n for n in self.plan.nodes.values() if n.kind != "vm"]
        self.progress(f"creating {len(routers)} servers and routers")
        for node in routers:
            self._new_ns(node.ns)
            if node.forwarding:
                netns.sysctl(node.ns, "net.ipv4.ip_forward", 1)
            if node.kind == "vrf":  # routes are symmetric only per flow: no reverse-path filtering
                for conf in ("all", "default"):
                    netns.sysctl(node.ns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        self.progress(f"wiring {len(self.plan.links)} underlay links")
        for link in self.plan.links:
            a, b = self.plan.nodes[link.a], self.plan.nodes[link.b]
            ipr = self.netlink(a.ns)
            ipr.link("add", ifname=link.a_if.name, kind="veth", mtu=UNDERLAY_MTU,
                     peer={"ifname": link.b_if.name, "mtu": UNDERLAY_MTU})
            peer = ipr.link_lookup(ifname=link.b_if.name)[0]
            ipr.link("set", index=peer, net_ns_fd=b.ns)
            self._address(ipr, link.a_if.name, link.a_if.address)
            ipr = self.netlink(b.ns)
            self._address(ipr, link.b_if.name, link.b_if.address)
        guard.apply(self.plan.nodes[WAN_NODE].ns, guard.underlay_guard(underlay_prefixes(self.plan)))
        for node in self.plan.nodes.values():
            if node.routes:
                ipr = self.netlink(node.ns)
                for r in node.routes:
                    via = {"oif": ipr.link_lookup(ifname=r.dev)[0]} if r.dev else {}
                    if r.gateway:
                        via["gateway"] = r.gateway
                        if r.dev:
                            via["flags"] = RTNH_F_ONLINK
                    ipr.route("add", dst=r.dst, **via)

    @staticmethod
    def _address(ipr: IPRoute, ifname: str, cidr: str) -> None:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if cidr:  # else an L2 trunk
            addr, plen = cidr.split("/")
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")

    # ---- NVEs and their agents ------------------------------------------------------------------
    def nves(self) -> list[Node]:
        """The lab's NVEs: every server of a trivial domain, every ToR; every border too when there
        are tenants (a DCBR is an NVE of every tenant)."""
        return [n for n in self.plan.nodes.values() if n.is_nve and (n.kind != "border" or self.topo.tenants)]

    def agent_nodes(self) -> list[Node]:
        """Nodes with an agent: the NVEs, and the servers behind ToRs (their hypervisor switches)."""
        return self.nves() + [n for n in self.plan.nodes.values() if n.kind == "server" and n.tor]

    def _register(self) -> None:
        """The intent into the mapping, as `roamnet apply` writes it (the lab's own VTEPs)."""
        records = compile_topology(self.topo, compile_nves(self.topo, vteps(self.plan)))
        try:
            self.mapping.apply(records)
        except ApplyRefused as exc:
            raise LabError(f"the VMs cannot start where the topology puts them: {exc}") from None

    def _external_store(self) -> Store:
        """The user's etcd at `store_url`, checked empty of any mapping (the lab owns what it writes there)."""
        from roamnet.mapping.records import ROOT
        from roamnet.mapping.store.etcd import EtcdStore, StoreError

        try:
            store = EtcdStore(self.store_url)
            held, _ = store.range(ROOT)
        except (ValueError, StoreError) as exc:
            raise LabError(f"lab {self.name}: the store {self.store_url}: {exc}") from None
        if held:
            store.close()
            raise LabError(f"lab {self.name}: the store {self.store_url} already holds a mapping ({len(held)} keys "
                           f"under {ROOT}): a lab needs a store of its own")
        self._wrote_external = True
        return store

    def _clear_external(self) -> None:
        """Remove the mapping the lab wrote in the user's store (and statuses left by killed agents)."""
        from roamnet.mapping.records import ROOT, STATUS

        store = self.mapping.store
        try:
            for prefix in (ROOT, STATUS):
                keys = [kv.key for kv in store.range(prefix)[0]]
                step = getattr(store, "max_txn_ops", 128)
                for i in range(0, len(keys), step):
                    store.txn({k: None for k in keys[i:i + step]})
        except Exception as exc:  # the namespaces must go whatever happened
            log.warning("lab %s: could not remove its mapping from %s: %s", self.name, self.store_url, exc)

    def _new_agent(self, node: str, store_url: str | None = None) -> Agent | AgentProcess:
        ns = self.plan.nodes[node].ns
        if self.agent_dir is not None:
            return AgentProcess(node, store_url or self.store_url, ns, self.agent_dir / f"agent-{node}.log",
                                metrics=self.agent_dir / f"agent-{node}.prom")
        nve = self.mapping.snapshot().nves[node]
        return build_agent(MappingClient(self.mapping), nve, ns, self.topo.tenants,
                           lambda t: self.plan.vrf(node, t).ns)

    def wait_converged(self, timeout: float, revision: int | None = None) -> bool:
        """Wait until every agent has published that it programmed the mapping at `revision`
        (default: the mapping's revision now). Reads the agents' status keys, not the agents."""
        return self.mapping.statuses.wait_converged([n.name for n in self.agent_nodes()], timeout, revision)

    def _convergence_problems(self) -> str:
        rev = self.mapping.revision
        lagging = self.mapping.statuses.lagging(rev, [n.name for n in self.agent_nodes()])
        st = self.mapping.statuses.all()
        errors = [e for n in lagging if n in st for e in st[n].errors[-3:]]
        return f"behind revision {rev}: {', '.join(lagging) or 'none'}" + (f"; errors: {'; '.join(errors)}" if errors else "")

    def restart_agent(self, server: str, store_url: str | None = None) -> dict:
        """Stop a server's agent and start a new one on the same kernel state; returns its first pass.
        `store_url`: the new agent process reaches the store there (e.g. one member of the lab's etcd)."""
        if server not in self.agents:
            raise LabError(f"no NVE agent on {server!r}")
        if store_url is not None and self.agent_dir is None:
            raise LabError("only agent processes (a lab over etcd) take a store URL")
        self.agents[server].stop()
        agent = self._new_agent(server, store_url)
        if isinstance(agent, AgentProcess):  # a new process: its first pass is in the status it publishes
            before = self.mapping.statuses.all().get(server)
            agent.start()
            self.agents[server] = agent
            if not self._wait_new_status(server, before, 15.0):
                raise LabError(f"the restarted agent of {server} did not publish a status within 15 s")
            st = self.mapping.statuses.all()[server]
            return {"server": server, "pid": agent.pid,
                    "changes_on_restart": list(st.last_changes) if st.changes_applied else []}
        first = agent.reconcile()
        self.agents[server] = agent
        agent.start()
        return {"server": server, "changes_on_restart": [str(c) for c in first]}

    def _wait_new_status(self, server: str, before, timeout: float) -> bool:
        """Until `server`'s agent published a status from another process than `before`'s, converged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.mapping.statuses.all().get(server)
            if st is not None and (before is None or st.pid != before.pid) and self.wait_converged(0.5):
                return True
            time.sleep(0.1)
        return False

    # ---- the WAN edge --------------------------------------------------------------------------
    def border_namespaces(self) -> list[tuple[str, str]]:
        """(border, namespace) of every border's tenant namespace (each has a handoff `wan`)."""
        return [(n.parent, n.ns) for n in self.plan.nodes.values()
                if n.kind == "vrf" and self.plan.nodes[n.parent].kind == "border"]

    def handoff_counters(self) -> dict[str, dict[str, int]]:
        """Per border (summed over tenants): packets received from the WAN ("in", entering the data
        center) and sent to it ("out") on the handoff interfaces."""
        out: dict[str, dict[str, int]] = {}
        for border, ns in self.border_namespaces():
            ipr = self.netlink(ns)
            link = ipr.get_links(ipr.link_lookup(ifname=names.HANDOFF)[0])[0]
            stats = link.get("IFLA_STATS64")
            c = out.setdefault(border, {"in": 0, "out": 0})
            c["in"] += stats["rx_packets"]
            c["out"] += stats["tx_packets"]
        return out

    def guard_counters(self) -> dict[str, dict[str, int]]:
        """The WAN edge's guards (wan.guard): per WAN router and border tenant namespace (plan key), the
        packets dropped towards the underlay and to or from BGP's port outside the configured sessions."""
        spaces = [(WAN_NODE, self.plan.nodes[WAN_NODE].ns)]
        spaces += [(n.name, n.ns) for n in self.plan.nodes.values()
                   if n.kind == "vrf" and self.plan.nodes[n.parent].kind == "border"]
        return {name: guard.counters(ns) for name, ns in spaces}

    # ---- port filters (read from the kernels) ---------------------------------------------------
    def filter_tables(self) -> dict[str, Table]:
        """Each NVE's (and hypervisor switch's) nftables table as it is now (counters included)."""
        out: dict[str, Table] = {}
        for node in self.agent_nodes():
            nft = Nft(node.ns)
            try:
                out[node.name] = read_filter_table(nft)
            finally:
                nft.close()
        return out

    def filter_counters(self) -> dict[str, dict[str, int]]:
        """Per NVE: packets its filters counted by kind (ARP requests answered here, ARP frames to and
        from VXLAN, unknown-IP requests dropped, spoofing drops, policy denies; nve.filters.TOTALS)."""
        return {node.name: filter_counters(node.ns) for node in self.agent_nodes()}

    def inspect(self) -> dict:
        return inspection.inspect(self)

