"""Kernel I/O only: network namespaces, an NVE's bridges, VXLAN devices and FDB (netlink, pyroute2),
tenant VRF namespaces, nftables (libnftables), 802.1Q VLAN ports (tc BPF), VM announcements (packet
sockets). Never reads the mapping: it applies the changes `nve` plans."""
