"""The hypervisor switch of a server behind a ToR, in the kernel: bridges hs<VLAN> joining the trunk's
VLAN port and the VM ports of that VLAN's CUG, with static entries (see nve/switch.py). Netlink only."""

from __future__ import annotations

from pyroute2 import IPRoute

from roamnet import names
from roamnet.dataplane import vlan
from roamnet.dataplane.kernel import NTF_MASTER, NUD_NOARP, KernelBase, VmPorts, attach, read_vm_ports
from roamnet.dataplane.nft import Nft
from roamnet.nve.plan import Change
from roamnet.nve.switch import SwitchActual


class SwitchKernel(KernelBase):
    """The switch's kernel objects in the server's namespace, through netlink."""

    def __init__(self, ns: str):
        self.ns = ns
        self.ipr = IPRoute(netns=ns)
        self.nft = Nft(ns)
        self._vm = VmPorts()
        self._index: dict[str, int] = {}
        self._dev: dict[tuple[int, str], int] = {}  # (VLAN, MAC) -> device of its static entry
        self._trunk_ports: dict[int, int] = {}  # VLAN -> the trunk's VLAN port
        self._bridges: dict[int, int] = {}  # VLAN -> its bridge, as last read or made

    def close(self) -> None:
        self.nft.close()
        self.ipr.close()

    def read(self) -> tuple[SwitchActual, list[str]]:
        links = self.ipr.get_links()
        self._index = {link.get("ifname"): link["index"] for link in links}
        bridges = {}  # ifindex -> domain VLAN
        for link in links:
            alias = link.get("IFLA_IFALIAS") or ""
            if alias.startswith(names.SWITCH_ALIAS):
                bridges[link["index"]] = int(alias[len(names.SWITCH_ALIAS):])
        self._bridges = {v: idx for idx, v in bridges.items()}
        vports = vlan.read_ports(self.ipr, links)
        vm = read_vm_ports(links, vports)
        act = SwitchActual()
        act.vlans = {v for (t, v), vp in vports.items()
                     if t == names.TRUNK and vp.complete and bridges.get(vp.master) == v}
        act.ports = {i: bridges.get(m) if m else None for i, m in vm.master.items()}
        act.orphans = set(vm.orphans)
        ports = {vm.bridge_port[i]: i for i in vm.master if i in vm.bridge_port}
        ports.update({vp.index: names.TRUNK for (t, _), vp in vports.items() if t == names.TRUNK})
        self._dev = {}
        for entry in self.ipr.fdb("dump"):
            master = entry.get("NDA_MASTER")
            if master in bridges and entry["state"] == NUD_NOARP and entry["ifindex"] in ports:
                key = (bridges[master], entry.get("NDA_LLADDR"))
                act.bridge_fdb[key] = ports[entry["ifindex"]]
                self._dev[key] = entry["ifindex"]
        self._vm = vm
        self._trunk_ports = {v: vp.index for (t, v), vp in vports.items() if t == names.TRUNK}
        self._read_filters(act, links, vm)
        self._read_claimants(act)
        return act, list(vm.up)

    def _bridge(self, v: int) -> int:
        """Bridge hs<v>, made if missing (the last read knows the ones that exist)."""
        if v in self._bridges:
            return self._bridges[v]
        name = names.switch_bridge(v)
        if not self.ipr.link_lookup(ifname=name):
            self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_mcast_snooping=0)  # see kernel.py
        idx = self.ipr.link_lookup(ifname=name)[0]
        self.ipr.link("set", index=idx, ifalias=f"{names.SWITCH_ALIAS}{v}", state="up")
        self._bridges[v] = idx
        return idx

    def _add_vlan(self, ch: Change) -> None:
        self._trunk_ports[ch.vni] = attach(self.ipr, self._vm, f"{names.TRUNK}:{ch.vni}", self._bridge(ch.vni),
                                           learning=False)

    def _attach_port(self, ch: Change) -> None:
        self._vm.bridge_port[ch.target] = attach(self.ipr, self._vm, ch.target, self._bridge(ch.vni), learning=False)

    def _set_bridge_entry(self, ch: Change) -> None:
        dev = self._trunk_ports.get(ch.vni) if ch.target == names.TRUNK else self._vm.bridge_port.get(ch.target)
        if dev is None:
            raise LookupError(f"no port for {ch.target} in VLAN {ch.vni}")
        self.ipr.fdb("replace", ifindex=dev, lladdr=ch.mac, master=self._bridge(ch.vni), state=NUD_NOARP,
                     flags=NTF_MASTER)

    def _del_bridge_entry(self, ch: Change) -> None:
        dev = self._dev.get((ch.vni, ch.mac))
        if dev is not None:
            self.ipr.fdb("del", ifindex=dev, lladdr=ch.mac, master=self._bridge(ch.vni), flags=NTF_MASTER)

    def _del_vlan_port(self, ch: Change) -> None:
        tagged, vid = ch.target.rsplit("/", 1)
        vlan.remove_port(self.ipr, tagged, int(vid))

    def _del_vlan(self, ch: Change) -> None:
        vlan.remove_port(self.ipr, names.TRUNK, ch.vni)
        for idx in self.ipr.link_lookup(ifname=names.switch_bridge(ch.vni)):
            self.ipr.link("del", index=idx)
        self._bridges.pop(ch.vni, None)
