"""Names of what roamnet creates: namespaces, devices, aliases. Linux interface names fit in 15 chars."""

from __future__ import annotations

OWNER = "roamnet"  # alias prefix marking devices roamnet created and may remove
PORT_ALIAS = OWNER + ":port="  # alias of a VM port on an NVE: carries the VM interface id (like OVN's iface-id)
SEGMENT_ALIAS = OWNER + ":segment="
GATEWAY_ALIAS = OWNER + ":gateway="  # a CUG's gateway port in its bridge (peer of the irb device)
IRB_ALIAS = OWNER + ":irb="  # the gateway interface in the tenant's namespace
L3VNI_ALIAS = OWNER + ":l3vni="  # the tenant's L3 VNI device


def netns(lab: str, node: str) -> str:
    return f"rn-{lab}-{node}"


def vrf_netns(lab: str, node: str, tenant: str) -> str:
    """A tenant's namespace (its VRF) on a server or border."""
    return f"{netns(lab, node)}.t-{tenant}"


def bridge(vni: int) -> str:
    return f"br{vni}"


def bridge_mac(vni: int) -> str:
    """A segment bridge's own MAC, in roamnet's reserved 02:52:4e range (02:52:4e:02:<low 16 bits of
    the VNI>): never a VM's, the anycast gateway's or a router MAC; bridges in one namespace may share."""
    return f"02:52:4e:02:{(vni >> 8) & 0xFF:02x}:{vni & 0xFF:02x}"


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


def port_alias(iface: str) -> str:
    return PORT_ALIAS + iface


def iface_from_alias(alias: str | None) -> str | None:
    if alias and alias.startswith(PORT_ALIAS):
        return alias[len(PORT_ALIAS):]
    return None
