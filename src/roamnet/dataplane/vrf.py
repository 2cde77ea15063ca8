"""A tenant's VRF on one NVE, in the kernel, through netlink: read what roamnet put there, apply changes.

The VRF is a namespace of its own (`rn-<lab>-<node>.t-<tenant>`, created with the lab; this kernel has
no VRF devices). roamnet puts in it, and only ever reads or removes, these objects of its own:
  * the L3 VNI device `vx<l3vni>` (alias roamnet:l3vni=<vni>, the NVE's router MAC as address). It is
    created from the NVE's namespace straight into the tenant's, so its UDP socket stays on the
    NVE's VTEP address (the kernel keeps a VXLAN device's sockets in the namespace that created it);
  * a gateway interface `irb<vni>` per hosted routed CUG (alias roamnet:irb=<vni>): the tenant end of
    a veth whose other end `g<vni>` (alias roamnet:gateway=<vni>) is a port of the CUG's bridge; it
    carries the CUG's gateway IP and the fabric's anycast MAC. In the bridge: a static entry for the
    anycast MAC on `g<vni>`, a neighbour entry gateway IP -> anycast MAC on the bridge device, and
    `neigh_suppress` on the VXLAN port, so the bridge never floods an ARP request for the gateway
    onto the overlay (the kernel's EVPN ARP suppression: a request whose target the bridge knows
    is not sent to suppressing ports);
  * routes with protocol 77 (roamnet's) in the main table and, on a border, the transit table 100,
    looked up first by a rule of roamnet's (priority 100): /32 host routes via the L3 VNI device
    with the egress NVE's VTEP as on-link next hop, a default route via the border, a border's
    blackhole covering routes;
  * permanent neighbour entries: a next-hop VTEP -> its router MAC on the L3 VNI device (with the
    FDB entry router MAC -> VTEP), and the local VMs' IP -> MAC on the gateway interfaces (from the
    mapping: the VRF never ARPs for them).
  * on a border, a rule per tenant subnet (priority 90): a packet from the WAN handoff with a source
    in the tenant's own subnets is dropped (blackhole), as a border does (ingress filtering).
Routes of any other protocol (FRR's BGP routes on a border) are never touched.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_type
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_BLACKHOLE
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_SELF, NUD_NOARP, NUD_PERMANENT
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

from roamnet import names
from roamnet.names import OVERLAY_MTU, PROTO, VXLAN_UDP_PORT, router_mac
from roamnet.nve.plan import VrfActual, VrfChange
from roamnet.nve.vrf import MAIN, TRANSIT

TABLES = {MAIN: 254, TRANSIT: 100}
TABLE_NAMES = {v: k for k, v in TABLES.items()}
TRANSIT_RULE_PRIORITY = 100
GUARD_RULE_PRIORITY = 90
RTN_BLACKHOLE = rt_type["blackhole"]


class VrfKernel:
    """One NVE's tenant namespaces. `nve_ipr` is the NVE's own namespace (bridges, VXLAN sockets)."""

    def __init__(self, nve_ipr: IPRoute, vtep: str, namespaces: dict[str, str]):
        self.nve_ipr, self.vtep, self.namespaces = nve_ipr, vtep, namespaces
        self._handles: dict[str, IPRoute] = {}
        self._l3dev: dict[str, int] = {}  # tenant -> ifindex of its L3 VNI device, as last read
        self._irb: dict[tuple[str, int], int] = {}  # (tenant, vni) -> ifindex of irb<vni>

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    def ipr(self, tenant: str) -> IPRoute:
        if tenant not in self.namespaces:
            raise LookupError(f"no namespace for tenant {tenant!r} on this NVE")
        if tenant not in self._handles:
            self._handles[tenant] = IPRoute(netns=self.namespaces[tenant])
        return self._handles[tenant]

    # ---- read ----------------------------------------------------------------------------------
    def read(self, gateway_ports: dict[int, bool]) -> dict[str, VrfActual]:
        """What every tenant namespace holds of roamnet's. `gateway_ports`: VNI -> whether its
        gateway port is in the CUG's bridge (read by the caller in the NVE's namespace)."""
        out = {}
        for tenant in self.namespaces:
            out[tenant] = self._read_one(tenant, gateway_ports)
        return out

    def _read_one(self, tenant: str, gateway_ports: dict[int, bool]) -> VrfActual:
        ipr, v = self.ipr(tenant), VrfActual()
        irbs: dict[int, int] = {}  # ifindex -> vni
        l3dev = None
        for link in ipr.get_links():
            alias = link.get("IFLA_IFALIAS") or ""
            if alias.startswith(names.L3VNI_ALIAS):
                v.l3vni, l3dev = int(alias[len(names.L3VNI_ALIAS):]), link["index"]
            elif alias.startswith(names.IRB_ALIAS):
                irbs[link["index"]] = int(alias[len(names.IRB_ALIAS):])
        if l3dev is not None:
            self._l3dev[tenant] = l3dev
        else:
            self._l3dev.pop(tenant, None)
        for idx, vni in irbs.items():
            self._irb[(tenant, vni)] = idx
            addrs = [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=socket.AF_INET)]
            v.irbs[vni] = addrs[0] if addrs and gateway_ports.get(vni) else ""
        rules = ipr.get_rules(family=socket.AF_INET)
        v.transit_rule = any(r.get("FRA_TABLE") == TABLES[TRANSIT] and r.get("FRA_PRIORITY") == TRANSIT_RULE_PRIORITY
                             for r in rules)
        v.guard = {f"{r.get('FRA_SRC')}/{r['src_len']}" for r in rules
                   if r.get("FRA_PRIORITY") == GUARD_RULE_PRIORITY and r["action"] == FR_ACT_BLACKHOLE
                   and r.get("FRA_IIFNAME") == names.HANDOFF and r.get("FRA_SRC")}
        for table, tid in TABLES.items():
            for r in ipr.get_routes(family=socket.AF_INET, table=tid):
                if r["proto"] != PROTO:
                    continue
                prefix = f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
                v.routes[(table, prefix)] = "" if r["type"] == RTN_BLACKHOLE else (r.get("RTA_GATEWAY") or "")
        neigh_l3: dict[str, str] = {}
        for n in ipr.get_neighbours(family=socket.AF_INET):
            if not n["state"] & NUD_PERMANENT:
                continue
            ip, mac = n.get("NDA_DST"), n.get("NDA_LLADDR")
            if n["ifindex"] == l3dev:
                neigh_l3[ip] = mac
            elif n["ifindex"] in irbs:
                v.neighbors[ip] = (irbs[n["ifindex"]], mac)
        if l3dev is not None:
            fdb = {(e.get("NDA_LLADDR"), e.get("NDA_DST")) for e in ipr.fdb("dump")
                   if e["ifindex"] == l3dev and e["flags"] & NTF_SELF}
            v.rmacs = {ip: mac for ip, mac in neigh_l3.items() if (mac, ip) in fdb}
        return v

    # ---- apply ---------------------------------------------------------------------------------
    def apply(self, ch: VrfChange) -> None:
        getattr(self, "_" + ch.op.replace("-", "_"))(ch)

    def _l3(self, tenant: str) -> int:
        if tenant not in self._l3dev:
            raise LookupError(f"tenant {tenant}: no L3 VNI device")
        return self._l3dev[tenant]

    def _add_l3vni(self, ch: VrfChange) -> None:
        ipr, vni = self.ipr(ch.tenant), int(ch.key)
        name, alias = names.vxlan(vni), names.L3VNI_ALIAS + str(vni)
        if not ipr.link_lookup(ifname=name):
            self.nve_ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=VXLAN_UDP_PORT,
                              vxlan_learning=0, vxlan_local=self.vtep, mtu=OVERLAY_MTU,
                              address=router_mac(self.vtep), net_ns_fd=self.namespaces[ch.tenant])
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, ifalias=alias, state="up")
        self._l3dev[ch.tenant] = idx
        if ch.value == "border":
            try:
                ipr.rule("add", table=TABLES[TRANSIT], priority=TRANSIT_RULE_PRIORITY, family=socket.AF_INET)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST
                    raise

    def _guard_rule(self, op: str, ch: VrfChange) -> None:
        addr, plen = ch.key.split("/")
        self.ipr(ch.tenant).rule(op, priority=GUARD_RULE_PRIORITY, iifname=names.HANDOFF, src=addr,
                                 src_len=int(plen), action=FR_ACT_BLACKHOLE, family=socket.AF_INET)

    def _set_guard(self, ch: VrfChange) -> None:
        self._guard_rule("add", ch)

    def _del_guard(self, ch: VrfChange) -> None:
        self._guard_rule("del", ch)

    def _del_l3vni(self, ch: VrfChange) -> None:
        ipr = self.ipr(ch.tenant)
        for idx in ipr.link_lookup(ifname=names.vxlan(int(ch.key))):
            ipr.link("del", index=idx)
        self._l3dev.pop(ch.tenant, None)
        try:
            ipr.rule("del", table=TABLES[TRANSIT], priority=TRANSIT_RULE_PRIORITY, family=socket.AF_INET)
        except NetlinkError:
            pass  # a server's VRF has no transit rule

    def _add_irb(self, ch: VrfChange) -> None:
        """Make the CUG's gateway interface whole (idempotent: a recreated bridge gets it back)."""
        vni = int(ch.key)
        gateway, anycast = ch.value.split(" ")
        ip, plen = gateway.split("/")
        n, t = self.nve_ipr, self.ipr(ch.tenant)
        gport, irb = names.gateway_port(vni), names.irb(vni)
        if not t.link_lookup(ifname=irb):
            for idx in n.link_lookup(ifname=gport):  # a half left over: start again
                n.link("del", index=idx)
            n.link("add", ifname=gport, kind="veth", mtu=OVERLAY_MTU,
                   peer={"ifname": irb, "net_ns_fd": self.namespaces[ch.tenant], "address": anycast,
                         "mtu": OVERLAY_MTU})
        g = n.link_lookup(ifname=gport)[0]
        br = n.link_lookup(ifname=names.bridge(vni))
        vx = n.link_lookup(ifname=names.vxlan(vni))
        if not br or not vx:
            raise LookupError(f"VNI {vni}: no segment for its gateway")
        n.link("set", index=g, ifalias=names.GATEWAY_ALIAS + str(vni), master=br[0], state="up")
        n.brport("set", index=g, learning=0)
        n.fdb("replace", ifindex=g, lladdr=anycast, master=br[0], state=NUD_NOARP, flags=NTF_MASTER)
        n.neigh("replace", dst=ip, lladdr=anycast, ifindex=br[0], state=NUD_PERMANENT)
        n.brport("set", index=vx[0], neigh_suppress=1)
        i = t.link_lookup(ifname=irb)[0]
        t.link("set", index=i, ifalias=names.IRB_ALIAS + str(vni), state="up")
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in t.get_addr(index=i, family=socket.AF_INET)}
        if (ip, int(plen)) not in have:
            t.addr("add", index=i, address=ip, prefixlen=int(plen))
        self._irb[(ch.tenant, vni)] = i

    def _del_irb(self, ch: VrfChange) -> None:
        vni = int(ch.key)
        for idx in self.nve_ipr.link_lookup(ifname=names.gateway_port(vni)):
            self.nve_ipr.link("del", index=idx)  # its peer, the irb device, goes with it
        self._irb.pop((ch.tenant, vni), None)

    def _set_rmac(self, ch: VrfChange) -> None:
        ipr, dev = self.ipr(ch.tenant), self._l3(ch.tenant)
        ipr.neigh("replace", dst=ch.key, lladdr=ch.value, ifindex=dev, state=NUD_PERMANENT)
        ipr.fdb("replace", ifindex=dev, lladdr=ch.value, dst=ch.key, flags=NTF_SELF)

    def _del_rmac(self, ch: VrfChange) -> None:
        ipr, dev = self.ipr(ch.tenant), self._l3(ch.tenant)
        ipr.neigh("del", dst=ch.key, ifindex=dev)
        ipr.fdb("del", ifindex=dev, lladdr=ch.value, dst=ch.key, flags=NTF_SELF)

    def _set_route(self, ch: VrfChange) -> None:
        table, prefix = ch.key.split(" ")
        ipr = self.ipr(ch.tenant)
        if ch.value:
            ipr.route("replace", dst=prefix, gateway=ch.value, oif=self._l3(ch.tenant), flags=RTNH_F_ONLINK,
                      table=TABLES[table], proto=PROTO)
        else:
            ipr.route("replace", dst=prefix, type="blackhole", table=TABLES[table], proto=PROTO)

    def _del_route(self, ch: VrfChange) -> None:
        table, prefix = ch.key.split(" ")
        self.ipr(ch.tenant).route("del", dst=prefix, table=TABLES[table], proto=PROTO)

    def _irb_idx(self, tenant: str, vni: int) -> int:
        if (tenant, vni) not in self._irb:
            found = self.ipr(tenant).link_lookup(ifname=names.irb(vni))
            if not found:
                raise LookupError(f"tenant {tenant}: no gateway interface for VNI {vni}")
            self._irb[(tenant, vni)] = found[0]
        return self._irb[(tenant, vni)]

    def _set_neighbor(self, ch: VrfChange) -> None:
        vni, mac = ch.value.split(" ")
        self.ipr(ch.tenant).neigh("replace", dst=ch.key, lladdr=mac, ifindex=self._irb_idx(ch.tenant, int(vni)),
                                  state=NUD_PERMANENT)

    def _del_neighbor(self, ch: VrfChange) -> None:
        self.ipr(ch.tenant).neigh("del", dst=ch.key, ifindex=self._irb_idx(ch.tenant, int(ch.value)))
