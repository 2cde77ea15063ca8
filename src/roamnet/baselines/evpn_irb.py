"""FRR BGP-EVPN with symmetric IRB: the baseline for routed and WAN traffic (issue 16).

What `evpn.FrrEvpn` does for L2, plus routing as FRR does it (RFC 9135 symmetric IRB, RFC 9136 type-5):
  * every tenant has an L3 VNI; MAC+IP type-2 routes carry it (and the VTEP's router MAC), so every VTEP
    installs a /32 per remote VM in the tenant's VRF, via the L3 VNI to the VM's VTEP;
  * every VTEP advertises its routed CUGs' subnets as type-5 routes (`redistribute connected`,
    `advertise ipv4 unicast`), and the borders advertise the WAN's default route as type-5;
  * a distributed anycast gateway on every VTEP: each routed CUG's bridge carries the CUG's gateway
    IP and the topology's anycast gateway MAC (FRR's SVI), in the tenant's VRF;
  * the same borders as roamnet's: each border is a VTEP of the L3 VNI only, and hands the tenant's
    VRF to the WAN router by eBGP over the lab's handoff /31, as AS 65100 + d (`local-as ... no-prepend
    replace-as`), to the WAN router `wan.border` configures for roamnet. A border announces the tenant's
    subnets and the /32s of the VMs in its own data center (next hop one of its data center's VTEPs), and
    takes only the default route from the WAN. A VTEP prefers its own data center's border for the
    default route: a border tags its type-5 routes with community <AS>:<d> (d: its data center, 1-based),
    and a VTEP gives those of its own data center's border local-preference 200. (FRR 8.4's `match evpn
    rd` cannot be configured: its YANG pattern rejects every RD the CLI accepts.)

The VRFs. This kernel has no VRF devices, so a tenant's VRF is FRR's other VRF backend, a network
namespace (zebra `-n`, `--vrfwnetns`; FRR's bgp_evpn_rt5 topotest runs EVPN this way): the lab's own
tenant namespace on that node (`rn-<lab>-<node>.t-<tenant>`). It holds the L3 VNI's bridge and VXLAN
device, each routed CUG's bridge (the SVI) and VXLAN device, and the VMs' ports in those CUGs (the
hypervisor puts them there: `port_namespace`). Each VXLAN device is created in the node's namespace and
moved into the tenant's, so its UDP socket stays on the VTEP address (the kernel keeps a VXLAN device's
socket in the namespace that created it). zebra in netns mode takes every file in /run/netns as a VRF;
so each daemon runs in a mount namespace of its own whose /run/netns holds one file per tenant, named
after the tenant and bound to that node's tenant namespace (`command`): FRR's VRF `t1` is, on each node,
that node's namespace of tenant t1, and no daemon sees another node's namespaces.

Processes, pid journal and stop are `evpn.FrrEvpn`'s (`roamnet.wan.frr`); the WAN router's zebra and bgpd
are among them (its configuration is `wan.border.border_config`'s). Only ever started in lab namespaces.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roamnet import names
from roamnet.baselines.evpn import EvpnError, FrrEvpn, Lab, Segment, evpn_instance, rr_address
from roamnet.dataplane import netns
from roamnet.dataplane.kernel import ensure_segment
from roamnet.names import DCI_NODE
from roamnet.wan import border as wan_border
from roamnet.wan import frr
from roamnet.wan.frr import check_lab_address

IRB_ASN = 64900  # the fabric's AS: not the WAN router's (65000), whose routes the VTEPs must accept
EXIT_LOCAL_PREF = 200  # a VTEP's preference for its own data center's border's default route


@dataclass(frozen=True)
class TenantVrf:
    """One tenant's VRF on one node."""

    name: str  # the tenant: FRR's VRF name (the file in the daemons' private /run/netns)
    ns: str  # the lab's namespace of this tenant on this node
    l3vni: int
    subnets: tuple[str, ...]  # its routed CUGs' subnets
    wan_peer: str = ""  # border: the WAN router's handoff address ...
    wan_local: str = ""  # ... and ours
    wan_asn: int = 0  # border: the AS the WAN router knows this handoff by (65100 + d)


@dataclass(frozen=True)
class IrbInstance:
    """One FRR instance: a VTEP (server), a border (a VTEP of the L3 VNIs, with the WAN handoffs), or the
    route reflector (on the DCI router)."""

    node: str
    ns: str
    role: str  # "vtep" | "border" | "rr"
    address: str  # router-id and update-source: the VTEP address, or the RR's
    peers: tuple[str, ...]  # EVPN neighbours
    tenants: tuple[TenantVrf, ...] = ()
    dc_vteps: tuple[str, ...] = ()  # border: its data center's servers' VTEP addresses
    dc_index: int = 0  # VTEP, border: its data center (1-based): the community of that DC's border's routes

    def label(self, daemon: str) -> str:
        return f"{daemon}@{self.ns}"


def routed_cugs(topo: Any) -> dict[str, Any]:
    """The topology's routed CUGs (a tenant and a gateway): name -> CUG."""
    return {name: c for name, c in topo.cugs.items() if c.tenant and c.gateway is not None}


def plan_irb_instances(plan: Any, topo: Any) -> list[IrbInstance]:
    """Every server (VTEP), every border, then the route reflector on `dci`. Pure. ValueError when the
    lab has no tenant."""
    if not topo.tenants:
        raise ValueError("symmetric IRB needs a tenant (a routed CUG); this topology has none")
    cugs = routed_cugs(topo)
    subnets = {t: tuple(str(c.subnet) for c in cugs.values() if c.tenant == t) for t in topo.tenants}
    dc_index = {dc: d for d, dc in enumerate(topo.datacenters, start=1)}
    nodes = plan.nodes.values()
    servers = [n for n in nodes if n.kind == "server"]
    borders = {n.dc: n for n in nodes if n.kind == "border"}
    rr = rr_address(plan)
    out = []
    for n in servers:
        tenants = tuple(TenantVrf(t, plan.vrf(n.name, t).ns, spec.l3vni, subnets[t])
                        for t, spec in topo.tenants.items())
        out.append(IrbInstance(n.name, n.ns, "vtep", n.vtep, (rr,), tenants, dc_index=dc_index[n.dc]))
    for dc, b in sorted(borders.items(), key=lambda kv: dc_index[kv[0]]):
        tenants = []
        for t, spec in topo.tenants.items():
            mine, theirs = plan.handoff(b.name, t)
            tenants.append(TenantVrf(t, plan.vrf(b.name, t).ns, spec.l3vni, subnets[t],
                                     wan_peer=str(ipaddress.ip_interface(theirs.address).ip),
                                     wan_local=str(ipaddress.ip_interface(mine.address).ip),
                                     wan_asn=wan_border.border_asn(dc_index[dc])))
        out.append(IrbInstance(b.name, b.ns, "border", b.vtep, (rr,), tuple(tenants),
                               tuple(n.vtep for n in servers if n.dc == dc), dc_index[dc]))
    out.append(IrbInstance(DCI_NODE, plan.nodes[DCI_NODE].ns, "rr", rr,
                           tuple(i.address for i in out)))
    return out


def _prefix_list(name: str, prefixes: Iterable[str], suffix: str = "") -> list[str]:
    lines = [f"ip prefix-list {name} seq {5 * i} permit {p}{suffix}" for i, p in enumerate(prefixes, start=1)]
    return lines or [f"ip prefix-list {name} seq 5 deny any"]


def irb_config(daemon: str, inst: IrbInstance, *, log_file: str | None = None, asn: int = IRB_ASN,
               keepalive: int = 3, holdtime: int = 9, connect_retry: int = 1, debug: bool = False) -> str:
    """The configuration file of `daemon` ("zebra" | "bgpd") of one instance. Pure.

    zebra: `vrf <tenant>` / `vni <l3vni>` per tenant (VTEPs and borders). bgpd: the EVPN session to the
    route reflector as `evpn.frr_config` has it (`advertise-all-vni`, duplicate detection off, the
    same timers), and per tenant `router bgp <asn> vrf <tenant>`: on a VTEP its subnets redistributed
    (type-5) and its own border's default route preferred; on a border the eBGP session to the WAN
    router (the WAN's default route in, the tenant's subnets and its data center's /32s out)."""
    frr.check_instance(daemon, inst, ("vtep", "border", "rr"))
    check_lab_address(inst.address, f"{inst.node}: address")
    for p in inst.peers:
        check_lab_address(p, f"{inst.node}: peer")
    lines = frr.config_header(daemon, inst.node, inst.ns, inst.role, "roamnet.baselines.evpn_irb",
                              log_file=log_file, debug=debug)
    if daemon == "zebra":
        if debug:
            lines += ["debug zebra vxlan", "debug zebra kernel", "!"]
        for t in inst.tenants:
            lines += [f"vrf {t.name}", f" vni {t.l3vni}", "exit-vrf", "!"]
        return "\n".join(lines + ["end", ""])
    if debug:
        lines += ["debug bgp zebra", "debug bgp updates", "debug bgp neighbor-events", "!"]
    for t in inst.tenants:
        for s in t.subnets:
            ipaddress.ip_network(s)  # ValueError on a bad one
        lines += _prefix_list(f"RN-SUBNETS-{t.name}", t.subnets)
        if inst.role == "border":
            check_lab_address(t.wan_peer, f"{inst.node}: WAN peer")
            lines += _prefix_list(f"RN-HOSTS-{t.name}", t.subnets, " ge 32")
        lines += ["!", f"route-map RN-CONNECTED-{t.name} permit 10",
                  f" match ip address prefix-list RN-SUBNETS-{t.name}", "exit", "!"]
    if inst.role == "border":
        lines += _prefix_list("RN-DC-VTEPS", (f"{v}/32" for v in inst.dc_vteps))
        lines += ["ip prefix-list RN-DEFAULT seq 5 permit 0.0.0.0/0", "!",
                  "route-map RN-FROM-WAN permit 10", " match ip address prefix-list RN-DEFAULT", "exit", "!",
                  "route-map RN-DC-TAG permit 10", f" set community {asn}:{inst.dc_index} additive", "exit", "!"]
        for t in inst.tenants:
            lines += [f"route-map RN-TO-WAN-{t.name} permit 10",
                      f" match ip address prefix-list RN-SUBNETS-{t.name}", "exit",
                      f"route-map RN-TO-WAN-{t.name} permit 20",
                      f" match ip address prefix-list RN-HOSTS-{t.name}",
                      " match ip next-hop prefix-list RN-DC-VTEPS", "exit", "!"]
    if inst.role == "vtep" and inst.tenants:
        lines += [f"bgp community-list standard RN-OWN-BORDER seq 5 permit {asn}:{inst.dc_index}", "!",
                  "route-map RN-EXIT permit 10", " match evpn route-type prefix", " match community RN-OWN-BORDER",
                  f" set local-preference {EXIT_LOCAL_PREF}", "exit", "route-map RN-EXIT permit 20", "exit", "!"]
    exit_map = ("  neighbor RR route-map RN-EXIT in",) if inst.role == "vtep" and inst.tenants else ()
    lines += evpn_instance(inst, asn=asn, keepalive=keepalive, holdtime=holdtime, connect_retry=connect_retry,
                           vtep_lines=exit_map)
    for t in inst.tenants:
        lines += [f"router bgp {asn} vrf {t.name}",
                  f" bgp router-id {inst.address}",
                  " bgp log-neighbor-changes",
                  " no bgp ebgp-requires-policy",
                  " no bgp default ipv4-unicast"]
        if inst.role == "border":
            w = t.wan_peer
            lines += [f" neighbor {w} remote-as {wan_border.WAN_ASN}",
                      f" neighbor {w} local-as {t.wan_asn} no-prepend replace-as",
                      *wan_border.session_lines(w, t.wan_local)]
        lines += [" !", " address-family ipv4 unicast"]
        if inst.role == "vtep":
            lines.append(f"  redistribute connected route-map RN-CONNECTED-{t.name}")
        else:
            lines += [f"  neighbor {t.wan_peer} activate",
                      f"  neighbor {t.wan_peer} route-map RN-FROM-WAN in",
                      f"  neighbor {t.wan_peer} route-map RN-TO-WAN-{t.name} out"]
        lines += [" exit-address-family", " !", " address-family l2vpn evpn",
                  "  advertise ipv4 unicast" + (" route-map RN-DC-TAG" if inst.role == "border" else ""),
                  " exit-address-family", "exit", "!"]
    return "\n".join(lines + ["end", ""])


def private_netns_script(instdir: Path, tenants: Iterable[TenantVrf], argv: list[str]) -> str:
    """The shell script (run by `unshare --mount` inside the node's namespace) that gives the daemon a
    /run/netns of its own, holding one file per tenant bound to that tenant's namespace on this node,
    then execs the daemon. Pure."""
    view = instdir / "netns"
    cmds = ["set -e"]
    for t in tenants:
        cmds.append(f"mount --bind {shlex.quote(str(Path(netns.NETNS_DIR) / t.ns))} "
                    f"{shlex.quote(str(view / t.name))}")
    cmds.append(f"mount --rbind {shlex.quote(str(view))} {shlex.quote(netns.NETNS_DIR)}")
    cmds.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "; ".join(cmds)


class FrrEvpnIrb(FrrEvpn):
    """FRR BGP-EVPN with symmetric IRB as the lab's control plane (see the module's docstring)."""

    name = "frr-evpn-irb"
    workdir_name = "frr-irb"
    # the lab's VMs announce themselves as a guest with virtio's guest-announce does after a migration:
    # a gratuitous ARP per address beside QEMU's RARP. zebra learns a VM's IP (its MAC+IP route, hence
    # every VTEP's /32) only from the SVI's neighbour entry, which a RARP does not make (roamnet's
    # mapping knows the IPs: its planes get the RARP alone).
    guest_announces_arp = True

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.wan: wan_border.BorderInstance | None = None
        self._wan_peers: dict[str, str] = {}  # handoff address -> border
        self.not_located = ""  # why the last located() said no (for a move that never converged)

    # ---- start ----------------------------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        """As FrrEvpn.start (every VTEP's zebra knowing the L3 VNIs too), with the tenants' devices made
        first, the borders' and the WAN router's FRR started too, and also awaited: every border's zebra
        has each L3 VNI up and the WAN router's session to every border is Established."""
        if self.running():
            raise EvpnError(f"{self.name} is already running ({', '.join(self.running())})")
        progress = getattr(lab, "progress", None) or (lambda msg: None)
        if shutil.which("unshare") is None:
            raise EvpnError(f"{self.name}: needs util-linux unshare (a mount namespace per FRR daemon)")
        try:
            instances = plan_irb_instances(lab.plan, lab.topo)
            wan = next(i for i in wan_border.plan_border_instances(lab.plan, lab.topo) if i.role == "wan")
        except ValueError as exc:
            raise EvpnError(f"{self.name}: {exc}") from None
        try:
            self.prepare_workdir(lab.name)
            self.instances = [*instances, wan]  # type: ignore[list-item]
            self.wan = wan
            self._wan_peers = {p.address: p.border for p in wan.peers}
            self.check_paths()
            vnis = sorted({c.vni for c in lab.topo.cugs.values()})
            progress(f"{self.name}: VXLAN segments {', '.join(map(str, vnis))} and L3 VNIs "
                     f"{', '.join(str(t.l3vni) for t in lab.topo.tenants.values())}")
            for inst in instances:
                if inst.role in ("vtep", "border"):
                    self._make_tenants(lab, inst)
                if inst.role == "vtep":
                    self._segments[inst.ns] = self._make_segments(lab, inst, vnis)  # type: ignore[arg-type]
            self.write_configs(self._render)
            for inst in instances:
                view = self.instdir(inst) / "netns"
                view.mkdir(mode=0o700, exist_ok=True)
                for t in inst.tenants:
                    (view / t.name).touch()
            self.launch(progress)
            l3vnis = [t.l3vni for t in lab.topo.tenants.values()]
            self._wait_ready(lab, vnis + l3vnis, progress)
            self._wait_borders(l3vnis, progress)
        except BaseException:
            self.stop(lab)
            raise

    def _render(self, daemon: str, inst: Any, log_file: str) -> str:
        if inst.role == "wan":
            return wan_border.border_config(daemon, inst, log_file=log_file, debug=self.debug)
        return irb_config(daemon, inst, log_file=log_file, debug=self.debug)

    def command(self, inst: Any, daemon: str, argv: list[str]) -> list[str]:
        """VTEPs and borders: zebra in netns-VRF mode (`-n`), both daemons in a mount namespace of their
        own whose /run/netns holds only this node's tenants (`private_netns_script`)."""
        if getattr(inst, "role", "") not in ("vtep", "border"):
            return super().command(inst, daemon, argv)
        if daemon == "zebra":
            argv = [*argv, "-n"]
        script = private_netns_script(self.instdir(inst), inst.tenants, argv)
        unshare = shutil.which("unshare") or "unshare"
        return netns.command(inst.ns, [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                                       script])

    def _make_tenants(self, lab: Lab, inst: IrbInstance) -> None:
        """Each tenant's L3 VNI in its namespace on this node: VXLAN `vx<l3vni>` (made in the node's
        namespace, moved into the tenant's) in bridge `br<l3vni>`, whose MAC is the node's router MAC."""
        node_ipr = lab.netlink(inst.ns)
        for t in inst.tenants:
            ipr = lab.netlink(t.ns)
            self._tenant_segment(node_ipr, ipr, t.ns, t.l3vni, inst.address, names.router_mac(inst.address))

    @staticmethod
    def _tenant_segment(node_ipr: Any, ipr: Any, ns: str, vni: int, vtep: str, bridge_mac: str) -> Segment:
        br, vx = names.bridge(vni), names.vxlan(vni)
        if not ipr.link_lookup(ifname=br):
            ipr.link("add", ifname=br, kind="bridge", br_stp_state=0, br_mcast_snooping=0, address=bridge_mac)
        br_idx = ipr.link_lookup(ifname=br)[0]
        ipr.link("set", index=br_idx, state="up")
        if not ipr.link_lookup(ifname=vx):
            node_ipr.link("add", ifname=vx, kind="vxlan", vxlan_id=vni, vxlan_port=names.VXLAN_UDP_PORT,
                          vxlan_learning=0, vxlan_local=vtep, mtu=names.OVERLAY_MTU, net_ns_fd=ns)
        vx_idx = ipr.link_lookup(ifname=vx)[0]
        ipr.link("set", index=vx_idx, master=br_idx, state="up")
        ipr.brport("set", index=vx_idx, learning=0, neigh_suppress=1)
        return Segment(ns, br_idx, vx_idx)

    def _make_segments(self, lab: Lab, inst: Any, vnis: Iterable[int]) -> dict[int, Segment]:
        """A routed CUG's segment in its tenant's namespace, its bridge the anycast gateway (the CUG's
        gateway IP, the topology's anycast MAC); any other CUG's in the server's namespace (FrrEvpn's)."""
        by_vni = {c.vni: c for c in lab.topo.cugs.values()}
        routed = routed_cugs(lab.topo)
        tenant_ns = {t.name: t.ns for t in inst.tenants}
        node_ipr = lab.netlink(inst.ns)
        out = {}
        for vni in vnis:
            cug = by_vni[vni]
            if cug not in routed.values():
                out[vni] = Segment(inst.ns, *ensure_segment(node_ipr, vni, inst.address))
                continue
            ns = tenant_ns[cug.tenant]
            ipr = lab.netlink(ns)
            seg = self._tenant_segment(node_ipr, ipr, ns, vni, inst.address, lab.topo.anycast_gateway_mac)
            if not any(a.get_attr("IFA_ADDRESS") == str(cug.gateway) for a in ipr.get_addr(index=seg.bridge)):
                ipr.addr("add", index=seg.bridge, address=str(cug.gateway), prefixlen=cug.subnet.prefixlen)
            # a gratuitous ARP makes a neighbour entry on the SVI (arp_accept), as FRR's EVPN needs
            netns.sysctl(ns, f"net.ipv4.conf.{names.bridge(vni)}.arp_accept", 1)
            out[vni] = seg
        return out

    def port_namespace(self, lab: Lab, vm: str, server: str, nic: int) -> str:
        """The VM's port `nic` on `server` goes where its CUG's bridge is: its tenant's namespace for a
        routed CUG, else the server's. EvpnError for a NIC carrying CUGs of several places."""
        cugs = lab.topo.cugs
        members = lab.topo.nics(vm)[nic]
        places = {cugs[lab.topo.vms[vm].interfaces[i].cug].tenant
                  if lab.topo.vms[vm].interfaces[i].cug in routed_cugs(lab.topo) else None for i in members}
        if len(places) != 1:
            raise EvpnError(f"{vm}: NIC {nic} carries CUGs of different tenants; {self.name} puts a port in one")
        tenant = places.pop()
        return lab.plan.vrf(server, tenant).ns if tenant else lab.plan.nodes[server].ns

    # ---- readiness ------------------------------------------------------------------------------
    def _wait_borders(self, l3vnis: list[int], progress: Any) -> None:
        """Until every border's zebra has each L3 VNI up and the WAN router has every handoff session
        Established (bounded by ready_timeout); else EvpnError naming what is not."""
        borders = [i for i in self.instances if i.role == "border"]
        assert self.wan is not None
        deadline = time.monotonic() + self.ready_timeout
        why = "not checked"
        for _ in range(int(self.ready_timeout / 0.1) + 10):
            self.check_alive()
            why = self._borders_not_ready(borders, l3vnis)
            if why is None:
                progress(f"{self.name}: {len(borders)} borders up, WAN sessions established")
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        proc = self.proc(self.wan, "bgpd")
        assert proc is not None
        raise self.failure(proc, f"borders not ready after {self.ready_timeout:.0f} s: {why}")

    def _borders_not_ready(self, borders: list[Any], l3vnis: list[int]) -> str | None:
        for b in borders:
            known = self.show(b, "zebra", "show evpn vni json")
            for vni in l3vnis:
                state = (known.get(str(vni)) or {}).get("state")
                if state is not None and str(state).lower() != "up":
                    return f"{b.node}: L3 VNI {vni} is {state}"
                if str(vni) not in known:
                    return f"{b.node}: zebra does not know L3 VNI {vni}"
        assert self.wan is not None
        peers = wan_border._peers(self.show(self.wan, "bgpd", "show bgp ipv4 unicast summary json"))
        for addr, border in self._wan_peers.items():
            state = peers.get(addr, {}).get("state", "Idle")
            if state != "Established":
                return f"WAN router <-> {border} ({addr}): {state}"
        return None

    # ---- what the WAN learned (as wan.border.BorderBgp) -----------------------------------------
    def wan_routes(self) -> dict[str, str]:
        """{prefix: border node} of the WAN router's BGP best paths."""
        if self.wan is None:
            raise EvpnError(f"{self.name} is not started")
        table = self.show(self.wan, "bgpd", "show ip bgp json", timeout=10.0)
        return wan_border.best_paths(table, self._wan_peers)

    # ---- locations --------------------------------------------------------------------------------
    def located(self, lab: Lab, vm: str, server: str) -> bool:
        """FrrEvpn's L2 condition (every server's FDB), and for each routed interface of `vm`: every
        other VTEP's and every border's VRF routes the VM's IP to `server`'s VTEP, and `server`'s VRF
        to the CUG's bridge (its own anycast gateway)."""
        if not super().located(lab, vm, server):
            self.not_located = f"{vm}: {self._last_miss.get((vm, server), '?')}'s FDB does not point at {server}"
            return False
        routed = routed_cugs(lab.topo)
        vtep = lab.plan.nodes[server].vtep
        for itf in lab.topo.vms[vm].interfaces:
            cug = routed.get(itf.cug)
            if cug is None:
                continue
            for inst in self.instances:
                if inst.role not in ("vtep", "border"):
                    continue
                ns = next(t.ns for t in inst.tenants if t.name == cug.tenant)
                via = self._route_via(lab, ns, str(itf.ip))
                if via != (None if inst.node == server else vtep):
                    self.not_located = f"{vm}: {inst.node} routes {itf.ip} via {via or 'its own bridge'}"
                    return False
        self.not_located = ""
        return True

    @staticmethod
    def _route_via(lab: Lab, ns: str, ip: str) -> str | None | bool:
        """The gateway of namespace `ns`'s route to `ip` (None: directly connected; False: no route)."""
        try:
            routes = lab.netlink(ns).route("get", dst=ip)
        except OSError:
            return False
        if not routes:
            return False
        return routes[0].get_attr("RTA_GATEWAY")

    # ---- stop -----------------------------------------------------------------------------------
    def stop(self, lab: Lab | None = None) -> list[str]:
        stopped = super().stop(lab)
        if not self.running():
            self.wan, self._wan_peers = None, {}
        return stopped


__all__ = ["FrrEvpnIrb", "IrbInstance", "TenantVrf", "irb_config", "plan_irb_instances",
           "private_netns_script"]
