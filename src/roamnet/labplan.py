"""The lab's description, computed from the intent: nodes, links, addresses, routes. Pure.

Underlay (198.18.0.0/16, routed, no L2 between data centers):
  data center d (1-based) owns 198.18.d.0/24; server k of it is joined to the DC's border router by
  a /31: border 198.18.d.(2k), server 198.18.d.(2k+1) — that server address is its VTEP address.
  Border of DC d <-> the WAN core router: /31 198.18.250.(2d-2) (WAN side) / .(2d-1) (border side).
The engine that builds this is `lab.py` (topology description apart from the engine, as in Mininet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import names
from .model import Topology

UNDERLAY_MTU = 1600  # room for VXLAN's 50 bytes over a 1500-byte overlay
WAN_NET = "198.18.250"
WAN_NODE = "wan"
MAX_DCS, MAX_SERVERS_PER_DC = 120, 127


@dataclass(frozen=True)
class Iface:
    name: str
    address: str  # "a.b.c.d/len"


@dataclass(frozen=True)
class Link:
    a: str  # node
    a_if: Iface
    b: str
    b_if: Iface


@dataclass
class Node:
    name: str
    kind: str  # server | border | wan | vm
    ns: str
    dc: str = ""
    vtep: str = ""
    forwarding: bool = False
    routes: list[tuple[str, str]] = field(default_factory=list)  # (prefix, gateway)


@dataclass
class LabPlan:
    lab: str
    nodes: dict[str, Node]
    links: list[Link]

    def namespaces(self) -> list[str]:
        """Every namespace of the lab, VM NIC holders included."""
        out = [n.ns for n in self.nodes.values()]
        out += [nic_ns(self.lab, n.name) for n in self.nodes.values() if n.kind == "vm"]
        return out


def nic_ns(lab: str, vm: str) -> str:
    """The namespace that holds a VM's NICs on the hypervisor side (the QEMU process's taps)."""
    return names.netns(lab, vm) + ".nic"  # '.' is in no lab or node name: no collision possible


def _p2p(net: str, low: int) -> tuple[str, str]:
    return f"{net}.{low}/31", f"{net}.{low + 1}/31"


def build_plan(topo: Topology) -> LabPlan:
    if len(topo.datacenters) > MAX_DCS:
        raise ValueError(f"at most {MAX_DCS} data centers in a lab")
    lab = topo.name
    nodes: dict[str, Node] = {}
    links: list[Link] = []
    wan = Node(WAN_NODE, "wan", names.netns(lab, WAN_NODE), forwarding=True)
    nodes[WAN_NODE] = wan
    for d, (dc_name, dc) in enumerate(topo.datacenters.items(), start=1):
        if len(dc.servers) > MAX_SERVERS_PER_DC:
            raise ValueError(f"datacenters.{dc_name}: at most {MAX_SERVERS_PER_DC} servers")
        border_name = topo.border_of(dc_name)
        wan_side, border_side = _p2p(WAN_NET, 2 * d - 2)
        nodes[border_name] = Node(border_name, "border", names.netns(lab, border_name), dc=dc_name,
                                  forwarding=True, routes=[("198.18.0.0/16", wan_side.split("/")[0])])
        links.append(Link(WAN_NODE, Iface(dc_name, wan_side), border_name, Iface(WAN_NODE, border_side)))
        wan.routes.append((f"198.18.{d}.0/24", border_side.split("/")[0]))
        for k, server in enumerate(dc.servers):
            b_side, s_side = _p2p(f"198.18.{d}", 2 * k)
            vtep = s_side.split("/")[0]
            nodes[server] = Node(server, "server", names.netns(lab, server), dc=dc_name, vtep=vtep,
                                 routes=[("198.18.0.0/16", b_side.split("/")[0])])
            links.append(Link(border_name, Iface(server, b_side), server, Iface("uplink", s_side)))
    for vm in topo.vms:
        nodes[vm] = Node(vm, "vm", names.netns(lab, vm))
    return LabPlan(lab, nodes, links)


def check_addresses(plan: LabPlan) -> None:
    """Lab safety: every underlay address lies in 198.18.0.0/15."""
    lab_range = ipaddress.ip_network("198.18.0.0/15")
    for link in plan.links:
        for iface in (link.a_if, link.b_if):
            if ipaddress.ip_interface(iface.address).ip not in lab_range:
                raise ValueError(f"address {iface.address} outside 198.18.0.0/15")
