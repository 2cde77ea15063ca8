"""What `roamnet lab inspect` shows of a running lab: its nodes, each NVE's desired state as the mapping
says, each agent's published status (/status/<nve>), each NVE's filter counters (read from its
kernel), the mapping, the moves, the WAN's BGP routes and the WAN edge's guard counters. Agents are never asked: only the mapping
and the kernels are read."""

from __future__ import annotations

from typing import Any

from roamnet.mapping.records import NveStatus
from roamnet.nve.desired import compute_desired
from roamnet.nve.switch import compute_switch


def status_row(st: NveStatus | None) -> dict:
    """An agent's published status, as inspect shows it."""
    if st is None:
        return {"published": False}
    return {"reconciles": st.reconciles, "resyncs": st.resyncs, "changes": st.changes_applied,
            "moves_reported": st.moves_reported, "announcements_seen": st.announcements_seen,
            "converged_revision": st.converged_revision, "pending_prunes": list(st.pending_prunes),
            "errors": list(st.errors)}


def inspect(lab: Any) -> dict:
    """`lab`: a running `engine.Lab`."""
    snap = lab.mapping.snapshot()
    statuses = lab.mapping.statuses.all()
    counted = lab.filter_counters()
    agents = {n.name for n in lab.agent_nodes()} if lab.control_plane is None else set()
    nodes = []
    for name, node in lab.plan.nodes.items():
        qemu = node.kind == "vm" and node.guest == "qemu"  # a real VM: no namespace, a QEMU process
        row = {"name": name, "kind": node.kind, "namespace": "" if qemu else node.ns, "dc": node.dc}
        if qemu:
            inst = lab.hv.qemu.instances.get((name, lab.hv.location[name]))
            row["qemu"] = {"pid": inst.pid if inst else None, "accel": lab.hv.qemu.accel,
                           "console": str(inst.paths.console) if inst else None}
        if node.kind == "vrf":
            row.update({"tenant": node.tenant, "parent": node.parent})
        if node.kind == "client":
            row["ip"] = str(lab.topo.wan_clients()[name].ip)
        if node.tor:
            row.update({"tor": node.tor, "domain": node.domain})
            if name in agents:
                sw = compute_switch(snap, name)
                row["switch"] = sw.to_json()
                row["agent"] = status_row(statuses.get(name))
                row["filters"] = {"ports": sorted(sw.filters), "counters": counted.get(name, {})}
        elif node.is_nve and node.vtep:
            row["vtep"] = node.vtep
            if node.kind == "tor":
                row["domain"] = node.domain
            if name in agents:
                want = compute_desired(snap, name)
                row["segments"] = sorted(want.segments)
                if node.kind == "tor":
                    row["trunk_vlans"] = sorted(want.attachments)
                if want.vrfs:
                    row["vrfs"] = {t: {"l3vni": v.l3vni, "router_mac": v.rmac,
                                       "gateways": sorted(v.gateways.values()),
                                       "host_routes": sum(p.endswith("/32") for _, p in v.routes),
                                       "default_via": v.routes.get(("main", "0.0.0.0/0"))}
                                   for t, v in want.vrfs.items()}
                row["agent"] = status_row(statuses.get(name))
                row["filters"] = {"ports": sorted(want.filters), "counters": counted.get(name, {})}
        if node.kind == "vm":
            row["server"] = lab.hv.location[name]
            row["stopped"] = name in lab.moves.stopped
            row["dc"] = lab.plan.nodes[lab.hv.location[name]].dc
            row["interfaces"] = [{"cug": i.cug, "mac": i.mac, "ip": str(i.ip), "guest_vlan": i.vlan}
                                 for i in lab.topo.vms[name].interfaces]
        nodes.append(row)
    return {"lab": lab.name, "nodes": nodes, "namespaces": list(lab.created),
            "mapping": snap.to_json(), "migrations": lab.migrations,
            "pending": {vm: {k: v for k, v in p.items() if k in ("from", "to", "resumed")}
                        for vm, p in lab.pending.items()},
            "control_plane": lab.control_plane.name if lab.control_plane else "roamnet",
            "wan_bgp": wan_bgp_state(lab.border), "guards": lab.guard_counters()}


def wan_bgp_state(border: Any) -> dict | None:
    if border is None:
        return None
    try:
        return {"sessions": border.sessions(), "wan_routes": border.wan_routes()}
    except Exception as exc:  # inspect must answer even when FRR does not
        return {"error": str(exc)}
