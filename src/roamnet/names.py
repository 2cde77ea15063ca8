"""Names of what roamnet creates (namespaces, devices, aliases, state directories) and the numbers and
MAC ranges it reserves, each defined once. Linux interface names fit in 15 chars."""

from __future__ import annotations

import functools
import os
from pathlib import Path

RUN_DIR_ENV = "ROAMNET_RUN_DIR"  # where labs keep their state (default /run/roamnet); one place for all

OWNER = "roamnet"  # alias prefix marking devices roamnet created and may remove
PORT_ALIAS = OWNER + ":port="  # alias of a VM port on an NVE: carries the VM interface id (like OVN's iface-id)
SEGMENT_ALIAS = OWNER + ":segment="
GATEWAY_ALIAS = OWNER + ":gateway="  # a CUG's gateway port in its bridge (peer of the irb device)
IRB_ALIAS = OWNER + ":irb="  # the gateway interface in the tenant's namespace
L3VNI_ALIAS = OWNER + ":l3vni="  # the tenant's L3 VNI device
SWITCH_ALIAS = OWNER + ":hs="  # a hypervisor switch's bridge for one domain VLAN (server behind a ToR)
WAN_NODE = "wan"  # the lab's WAN router: the outside world, tenants' handoffs and clients (a reserved node name)
DCI_NODE = "dci"  # the lab's data-center interconnect router: the underlay between borders (a reserved node name)
HANDOFF = "wan"  # a border's interface to the WAN, in each tenant namespace (VRF-lite)
TRUNK = "trunk"  # a server's 802.1Q trunk to its ToR (on the ToR, the trunk is named after the server)
ANNOUNCE_LOG_GROUP = 77  # nflog group of each NVE namespace: the VM announcements its port filters pass
PROTO = 77  # route and neighbour protocol of roamnet's entries (unassigned in iproute2's rt_protos)
VXLAN_UDP_PORT = 4789  # IANA's VXLAN port, on every VXLAN device roamnet makes
OVERLAY_MTU = 1500  # the MTU VMs get (the underlay leaves room for VXLAN's 50 bytes)

# MACs roamnet gives its own devices: the 02:52:4e range (locally administered, "RN"), never a VM's
RESERVED_MAC_PREFIX = "02:52:4e"
DEFAULT_ANYCAST_MAC = RESERVED_MAC_PREFIX + ":00:00:01"  # the distributed gateway's MAC, on every NVE
ROUTER_MAC_PREFIX = RESERVED_MAC_PREFIX + ":01:"  # NVE router MACs (router_mac); never the anycast MAC
BRIDGE_MAC_PREFIX = RESERVED_MAC_PREFIX + ":02:"  # segment bridges' own MACs (bridge_mac)


def run_dir() -> Path:
    """The directory of every lab's state (`$ROAMNET_RUN_DIR`, default /run/roamnet)."""
    return Path(os.environ.get(RUN_DIR_ENV, "/run/roamnet"))


def state_dir(lab: str) -> Path:
    """Lab `lab`'s state directory: daemon socket, journal, log, FRR workdirs."""
    return run_dir() / lab


def netns(lab: str, node: str) -> str:
    return f"rn-{lab}-{node}"


def nic_netns(lab: str, vm: str) -> str:
    """The namespace that holds a VM's NICs on the hypervisor side (the QEMU process's taps); '.' is in
    no lab or node name: no collision possible."""
    return netns(lab, vm) + ".nic"


def ovn_central_netns(lab: str) -> str:
    """The namespace of the OVN baseline's central daemons (NB/SB ovsdb-servers, ovn-northd): '.' is in no
    node name, so no node's namespace can have this name."""
    return f"{netns(lab, 'ovn')}.central"


def vrf_netns(lab: str, node: str, tenant: str) -> str:
    """A tenant's namespace (its VRF) on a server or border."""
    return f"{netns(lab, node)}.t-{tenant}"


def bridge(vni: int) -> str:
    return f"br{vni}"


def bridge_mac(vni: int) -> str:
    """A segment bridge's own MAC, in roamnet's reserved range (02:52:4e:02:<low 16 bits of the VNI>):
    never a VM's, the anycast gateway's or a router MAC; bridges in one namespace may share."""
    return f"{BRIDGE_MAC_PREFIX}{(vni >> 8) & 0xFF:02x}:{vni & 0xFF:02x}"


@functools.lru_cache(maxsize=4096)  # every host route's next hop, at every pass
def router_mac(vtep: str) -> str:
    """An NVE's router MAC on every L3 VNI, derived from its VTEP address (in 198.18.0.0/16): the
    reserved prefix, 01, then the address's last two octets."""
    a = [int(x) for x in vtep.split(".")]
    return f"{ROUTER_MAC_PREFIX}{a[2]:02x}:{a[3]:02x}"


def vxlan(vni: int) -> str:
    return f"vx{vni}"


def gateway_port(vni: int) -> str:
    return f"g{vni}"


def irb(vni: int) -> str:
    return f"irb{vni}"


def iface_id(vm: str, index: int) -> str:
    return f"{vm}/{index}"


def port(vm: str, index: int) -> str:
    """The NVE-side name of a VM's port (the 'tap' a hypervisor creates)."""
    return f"{vm}-e{index}"


def switch_bridge(vlan: int) -> str:
    return f"hs{vlan}"


def port_alias(ifaces: list[tuple[str, int]]) -> str:
    """The alias of a VM's port (one NIC): the VM interfaces it carries, each with the guest's own
    VLAN tag ("vm9/1@10,vm9/2@20"; an untagged interface has no "@")."""
    return PORT_ALIAS + ",".join(f"{i}@{v}" if v else i for i, v in ifaces)


def ifaces_from_alias(alias: str | None) -> list[tuple[str, int]]:
    """[(iface_id, guest VLAN or 0)] of a VM port's alias; [] for any other device."""
    if not alias or not alias.startswith(PORT_ALIAS):
        return []
    out = []
    for part in alias[len(PORT_ALIAS):].split(","):
        iface, _, vlan = part.partition("@")
        out.append((iface, int(vlan) if vlan else 0))
    return out
