"""The lab's description, computed from the intent: nodes, links, addresses, routes. Pure.

Underlay (198.18.0.0/16, routed, no L2 between data centers):
  data center d (1-based) owns 198.18.d.0/24; server k of it is joined to the DC's border router by
  a /31: border 198.18.d.(2k), server 198.18.d.(2k+1) — that server address is its VTEP address.
  Border of DC d <-> the DCI router (`dci`, the data-center interconnect): /31 198.18.250.(2d-2) (DCI
  side) / .(2d-1) (border side); that border address is the DCBR's VTEP address (a DCBR is an NVE of
  every tenant). The DCI router routes the data centers' underlay /24s to each other and nothing else.
Tenants (VRFs): every server and every border has a namespace per tenant, `rn-<lab>-<node>.t-<tenant>`
  (this kernel has no VRF devices; a namespace is the stronger isolation anyway). The NVE agent fills
  it: the L3 VNI's VXLAN device (its UDP socket stays in the node's namespace), the gateway
  interfaces, host routes. Each border's tenant namespace is handed off to the WAN router (`wan`, the
  outside world) by a /31 from 198.18.251.0/24 (VRF-lite, as a DCBR hands a VRF to a provider), over
  which FRR speaks eBGP.
Transport and outside world are two routers, two namespaces (as a real DCI keeps transport apart from
  tenant traffic): the WAN router has the handoffs and the clients and no route to, or link into, the
  underlay; the DCI router has the borders' underlay links and no tenant or client; no namespace is
  on both sides. So no packet from a tenant VRF or from the WAN can reach an underlay address.
L2 physical domains (draft §3.1): a non-trivial domain's ToR takes the routed /31 (and VTEP) a
  server would have; its servers have no underlay address: an 802.1Q trunk each to the ToR (`trunk`
  on the server, the server's name on the ToR), over which the ToR is their NVE.
WAN clients (the outside world): a namespace each, joined to the WAN router; the client has its own
  address as a /32 and a default route to 198.18.252.1 (the WAN router's address on every client link).
The engine that builds this is `lab/engine.py` (topology description apart from the engine, as in Mininet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from roamnet import names
from roamnet.intent.compile import compile_nves
from roamnet.intent.model import Topology
from roamnet.mapping.records import Nve
from roamnet.names import DCI_NODE, WAN_NODE

UNDERLAY_MTU = 1600  # room for VXLAN's 50 bytes over a 1500-byte overlay
DCI_NET = "198.18.250"  # border underlay <-> DCI router, /31 each
HANDOFF_NET = ipaddress.ip_network("198.18.251.0/24")  # border tenant namespace <-> WAN router, /31 each
CLIENT_GATEWAY = "198.18.252.1"  # the WAN router's address on every client link
MAX_DCS, MAX_SERVERS_PER_DC = 120, 127
MAX_HANDOFFS = HANDOFF_NET.num_addresses // 2


@dataclass(frozen=True)
class Iface:
    name: str
    address: str  # "a.b.c.d/len", or "" (an L2 trunk)


@dataclass(frozen=True)
class Link:
    a: str  # node
    a_if: Iface
    b: str
    b_if: Iface


@dataclass(frozen=True)
class Route:
    dst: str
    gateway: str = ""
    dev: str = ""  # with a gateway: the gateway is on-link through this device (a /32 link address)


@dataclass
class Node:
    name: str
    kind: str  # server | tor | border | dci | wan | vm | client | vrf (a tenant's namespace on an NVE)
    ns: str
    dc: str = ""
    vtep: str = ""
    forwarding: bool = False
    routes: list[Route] = field(default_factory=list)
    tenant: str = ""  # vrf: its tenant
    parent: str = ""  # vrf: the server or border it belongs to
    tor: str = ""  # a server behind a ToR: the ToR (its NVE; the server's vtep is the ToR's)
    domain: str = ""  # a ToR, or a server behind one: its non-trivial L2 domain
    guest: str = ""  # a VM: what runs it (intent.model.GUEST_KINDS)

    @property
    def is_nve(self) -> bool:
        """An overlay edge: a server of a trivial domain, a ToR, a border."""
        return self.kind in ("tor", "border") or (self.kind == "server" and not self.tor)


@dataclass
class LabPlan:
    lab: str
    nodes: dict[str, Node]
    links: list[Link]

    def namespaces(self) -> list[str]:
        """Every namespace of the lab, VM NIC holders included (a QEMU guest has none: its QEMU runs in
        its server's namespace)."""
        out = [n.ns for n in self.nodes.values() if n.guest != "qemu"]
        out += [nic_ns(self.lab, n.name) for n in self.nodes.values() if n.kind == "vm" and n.guest != "qemu"]
        return out

    def vrf(self, node: str, tenant: str) -> Node:
        """The namespace of `tenant` on server or border `node`."""
        return self.nodes[vrf_name(node, tenant)]

    def handoff(self, border: str, tenant: str) -> tuple[Iface, Iface]:
        """(border tenant side, WAN side) of the link handing `tenant` from `border` to the WAN."""
        vrf = vrf_name(border, tenant)
        link = next(lk for lk in self.links if lk.b == vrf and lk.a == WAN_NODE)
        return link.b_if, link.a_if


def vteps(plan: LabPlan) -> dict[str, str]:
    """The VTEP address the plan gives each server, ToR and border (a server behind a ToR: its ToR's)."""
    return {n.name: n.vtep for n in plan.nodes.values() if n.kind in ("server", "tor", "border")}


def deployed_nves(topo: Topology) -> tuple[Nve, ...]:
    """The NVEs `roamnet apply` writes for `topo`: with the topology's own `vteps:` when it gives them
    (real hosts), else with the addresses this plan gives them (a lab's, or a rehearsal of one).
    ValueError when the plan's limits are exceeded."""
    if topo.vteps:
        return compile_nves(topo, {n: str(ip) for n, ip in topo.vteps.items()})
    return compile_nves(topo, vteps(build_plan(topo)))


def vrf_name(node: str, tenant: str) -> str:
    """Plan key of a tenant's namespace on a node ('.' is in no node name: no collision possible)."""
    return f"{node}.t-{tenant}"


def nic_ns(lab: str, vm: str) -> str:
    """The namespace that holds a VM's NICs on the hypervisor side (names.nic_netns)."""
    return names.nic_netns(lab, vm)


def _p2p(net: str, low: int) -> tuple[str, str]:
    return f"{net}.{low}/31", f"{net}.{low + 1}/31"


def build_plan(topo: Topology) -> LabPlan:
    if len(topo.datacenters) > MAX_DCS:
        raise ValueError(f"at most {MAX_DCS} data centers in a lab")
    lab = topo.name
    nodes: dict[str, Node] = {}
    links: list[Link] = []
    wan = Node(WAN_NODE, "wan", names.netns(lab, WAN_NODE), forwarding=True)
    dci = Node(DCI_NODE, "dci", names.netns(lab, DCI_NODE), forwarding=True)
    nodes[DCI_NODE], nodes[WAN_NODE] = dci, wan
    for d, (dc_name, dc) in enumerate(topo.datacenters.items(), start=1):
        domains = [dom for dom in topo.domains().values() if dom.dc == dc_name]
        slots = sum(1 if dom.tor else len(dom.servers) for dom in domains)
        if slots > MAX_SERVERS_PER_DC:
            raise ValueError(f"datacenters.{dc_name}: at most {MAX_SERVERS_PER_DC} servers and ToRs")
        border_name = topo.border_of(dc_name)
        dci_side, border_side = _p2p(DCI_NET, 2 * d - 2)
        nodes[border_name] = Node(border_name, "border", names.netns(lab, border_name), dc=dc_name,
                                  vtep=border_side.split("/")[0], forwarding=True,
                                  routes=[Route("198.18.0.0/16", dci_side.split("/")[0])])
        links.append(Link(DCI_NODE, Iface(dc_name, dci_side), border_name, Iface(DCI_NODE, border_side)))
        dci.routes.append(Route(f"198.18.{d}.0/24", border_side.split("/")[0]))
        routed = [(s, None) for dom in domains if not dom.tor for s in dom.servers]
        routed += [(dom.tor, dom) for dom in domains if dom.tor]
        for k, (name, dom) in enumerate(routed):
            b_side, s_side = _p2p(f"198.18.{d}", 2 * k)
            vtep = s_side.split("/")[0]
            nodes[name] = Node(name, "tor" if dom else "server", names.netns(lab, name), dc=dc_name, vtep=vtep,
                               routes=[Route("198.18.0.0/16", b_side.split("/")[0])], domain=dom.name if dom else "")
            links.append(Link(border_name, Iface(name, b_side), name, Iface("uplink", s_side)))
            for server in dom.servers if dom else ():
                nodes[server] = Node(server, "server", names.netns(lab, server), dc=dc_name, vtep=vtep,
                                     tor=name, domain=dom.name)
                links.append(Link(name, Iface(server, ""), server, Iface(names.TRUNK, "")))
    _plan_tenants(topo, nodes, links)
    for client, spec in topo.wan_clients().items():
        nodes[client] = Node(client, "client", names.netns(lab, client),
                             routes=[Route("0.0.0.0/0", CLIENT_GATEWAY, "eth0")])
        links.append(Link(WAN_NODE, Iface(f"c-{client}", CLIENT_GATEWAY + "/32"), client, Iface("eth0", f"{spec.ip}/32")))
        wan.routes.append(Route(f"{spec.ip}/32", dev=f"c-{client}"))
    for vm, spec in topo.vms.items():  # a QEMU guest has no namespace (its ns is what a namespace VM's would be)
        nodes[vm] = Node(vm, "vm", names.netns(lab, vm), guest=spec.guest)
    return LabPlan(lab, nodes, links)


def _plan_tenants(topo: Topology, nodes: dict[str, Node], links: list[Link]) -> None:
    """A namespace per tenant on every server and border; borders' ones handed off to the WAN."""
    nves = [n for n in nodes.values() if n.is_nve]
    borders = [n for n in nves if n.kind == "border"]
    if len(borders) * len(topo.tenants) > MAX_HANDOFFS:
        raise ValueError(f"at most {MAX_HANDOFFS} (data center, tenant) pairs in a lab "
                         f"({len(borders)} data centers x {len(topo.tenants)} tenants)")
    pairs = iter(HANDOFF_NET.subnets(new_prefix=31))
    for j, tenant in enumerate(topo.tenants, start=1):
        for nve in nves:
            vrf = vrf_name(nve.name, tenant)
            nodes[vrf] = Node(vrf, "vrf", names.vrf_netns(topo.name, nve.name, tenant), dc=nve.dc,
                              vtep=nve.vtep, forwarding=True, tenant=tenant, parent=nve.name)
            if nve.kind == "border":
                net = next(pairs)
                wan_side, vrf_side = (f"{a}/31" for a in net)
                links.append(Link(WAN_NODE, Iface(f"{nve.name}-t{j}", wan_side), vrf, Iface(names.HANDOFF, vrf_side)))


def check_addresses(plan: LabPlan) -> None:
    """Lab safety: every underlay address and route lies in 198.18.0.0/15."""
    lab_range = ipaddress.ip_network("198.18.0.0/15")
    for link in plan.links:
        for iface in (link.a_if, link.b_if):
            if iface.address and ipaddress.ip_interface(iface.address).ip not in lab_range:
                raise ValueError(f"address {iface.address} outside 198.18.0.0/15")
    for node in plan.nodes.values():
        for r in node.routes:
            if r.gateway and ipaddress.ip_address(r.gateway) not in lab_range:
                raise ValueError(f"{node.name}: gateway {r.gateway} outside 198.18.0.0/15")


UNDERLAY_KINDS = ("server", "tor", "border", "dci")  # nodes whose addresses are underlay (transport)


def underlay_prefixes(plan: LabPlan) -> list[str]:
    """The underlay's address space: the /24 of every link of a server, ToR, border or the DCI router
    (data center d owns 198.18.d.0/24, the DCI links 198.18.250.0/24)."""
    nets = [ipaddress.ip_interface(iface.address).network.supernet(new_prefix=24)
            for link in plan.links for node, iface in ((link.a, link.a_if), (link.b, link.b_if))
            if iface.address and plan.nodes[node].kind in UNDERLAY_KINDS]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def check_isolation(plan: LabPlan) -> None:
    """The outside world (the WAN router, its clients, the border tenant namespaces handed off to it) and
    the underlay share no link and no address: what the WAN router reaches over links is no underlay
    node, and no outside address lies in the underlay's space. Raises ValueError naming the culprit."""
    reached, todo = {WAN_NODE}, [WAN_NODE]
    while todo:
        here = todo.pop()
        for link in plan.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                if a == here and b not in reached:
                    if plan.nodes[b].kind in UNDERLAY_KINDS:
                        raise ValueError(f"{b} ({plan.nodes[b].kind}) is linked to the outside world through {here}")
                    reached.add(b)
                    todo.append(b)
    underlay = [ipaddress.ip_network(p) for p in underlay_prefixes(plan)]
    for link in plan.links:
        for node, iface in ((link.a, link.a_if), (link.b, link.b_if)):
            if node in reached and iface.address:
                ip = ipaddress.ip_interface(iface.address).ip
                if any(ip in net for net in underlay):
                    raise ValueError(f"{node}: outside address {iface.address} lies in the underlay's space")
