"""What `roamnet apply`, `roamnet status` and `roamnet get` show of a mapping store.

The data (what `-f json` prints) comes from a snapshot and the NVEs' published statuses by pure
functions; the rich tables are drawn from that same data, so both formats always agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from roamnet.mapping.apply import ADDED, CHANGED, KINDS, REMOVED, ApplyResult
from roamnet.mapping.records import ACTIVATED, NveStatus, Snapshot

# KIND for `roamnet get`, and its aliases
GET_KINDS = ("nves", "ports", "bindings", "migrations", "segments", "tenants", "domains", "policy", "statuses")
ALIASES = {"cugs": "segments", "nve": "nves", "port": "ports", "binding": "bindings", "migration": "migrations",
           "segment": "segments", "cug": "segments", "tenant": "tenants", "domain": "domains",
           "policies": "policy", "status": "statuses"}


class NotFound(LookupError):
    """A `get` NAME that matches nothing; the message lists what there is."""


# ---- apply -------------------------------------------------------------------------------------

def render_apply(res: ApplyResult, source: str, console: Console) -> None:
    if res.plan.empty:
        console.print(f"{escape(source)}: no changes (mapping revision {res.revision})", soft_wrap=True)
        return
    head = (f"{escape(source)}: dry run, nothing written; applying would change:" if res.dry_run else
            f"{escape(source)}: applied in {res.txns} transaction{'s' if res.txns != 1 else ''}, "
            f"mapping revision {res.revision}")
    console.print(head, soft_wrap=True)
    t = Table()
    for col in ("kind", ADDED, CHANGED, REMOVED):
        t.add_column(col)
    summary = res.plan.summary()
    for kind in KINDS:
        if kind in summary:
            t.add_row(kind, *(", ".join(summary[kind].get(w, [])) or "-" for w in (ADDED, CHANGED, REMOVED)))
    console.print(t)


# ---- status ------------------------------------------------------------------------------------

def status_data(snap: Snapshot, statuses: dict[str, NveStatus]) -> dict:
    """Every NVE with its liveness (its status key exists: the agent keeps it on a lease) and how far
    it has programmed the mapping; the bindings' states; the moves in progress."""
    rev = snap.revision
    nves = []
    for name, nve in sorted(snap.nves.items()):
        st = statuses.get(name)
        nves.append({
            "name": name, "role": nve.role, "dc": nve.dc, "vtep": nve.vtep, "tor": nve.tor,
            "alive": st is not None,
            "converged_revision": st.converged_revision if st else None,
            "lagging": st is None or st.converged_revision < rev,
            "pid": st.pid if st else None,
            "last_pass_ms": st.last_pass_ms if st else None,
            "errors": list(st.errors) if st else [],
            "expired": list(st.expired) if st else [],  # moves to it the mapping's expiry ended, and why
        })
    bs = snap.bindings.values()
    return {
        "revision": rev,
        "nves": nves,
        "bindings": {"total": len(bs), "frozen": sum(b.frozen for b in bs), "stopped": sum(b.stopped for b in bs),
                     "detached": sum(b.detached and not b.stopped for b in bs)},
        "migrations": [_migration_row(snap, m) for _, m in sorted(snap.migrations.items())],
        "unknown_statuses": sorted(set(statuses) - set(snap.nves)),  # published by NVEs the mapping no longer has
    }


def render_status(data: dict, console: Console) -> None:
    t = Table(title=f"NVEs (mapping revision {data['revision']})", title_justify="left")
    for col in ("NVE", "role", "dc", "VTEP", "alive", "converged", "lag", "pid", "last pass ms", "errors"):
        t.add_column(col)
    for n in data["nves"]:
        conv = n["converged_revision"]
        lag = "-" if conv is None else "[yellow]behind[/]" if n["lagging"] else "no"
        errors = f"{len(n['errors'])}: {escape(n['errors'][-1])}" if n["errors"] else ""
        t.add_row(n["name"], n["role"] + (f" (behind {n['tor']})" if n["tor"] else ""), n["dc"], n["vtep"],
                  "yes" if n["alive"] else "[red]no[/]", "-" if conv is None else str(conv), lag,
                  str(n["pid"] or "-"), "-" if n["last_pass_ms"] is None else f"{n['last_pass_ms']:.1f}", errors)
    console.print(t)
    b = data["bindings"]
    console.print(f"bindings: {b['total']} ({b['frozen']} frozen, {b['stopped']} stopped, {b['detached']} detached); "
                  f"moves in progress: {len(data['migrations'])}")
    if data["migrations"]:
        _table(console, "moves in progress", _COLUMNS["migrations"], data["migrations"])
    if data["unknown_statuses"]:
        console.print(f"statuses of NVEs not in the mapping: {', '.join(data['unknown_statuses'])}")


# ---- get ---------------------------------------------------------------------------------------

def kind_of(word: str) -> str:
    """The KIND `word` names (a kind or an alias); NotFound listing the kinds otherwise."""
    kind = ALIASES.get(word.lower(), word.lower())
    if kind not in GET_KINDS:
        raise NotFound(f"unknown kind {word!r}: one of {', '.join(GET_KINDS)} (cugs = segments)")
    return kind


def get_rows(kind: str, snap: Snapshot, statuses: dict[str, NveStatus], name: str | None = None) -> list[dict]:
    """The records of `kind` as rows (dicts, as JSON prints them), those of `name` only if given: an
    NVE, a VM (ports, bindings, migrations; or one interface, "vm/0"), a CUG (or its VNI), a tenant,
    a domain, a policy rule. NotFound names what exists."""
    rows, keys, what = _ROWS[kind](snap, statuses)
    if name is None:
        return rows
    hit = [r for r, k in zip(rows, keys, strict=True) if name in k]
    if not hit:
        known = sorted({k[0] for k in keys})
        raise NotFound(f"no {what} {name!r} among the {kind}" + (f" ({what}s: {', '.join(known)})" if known else
                                                                  f" (there are no {kind})"))
    return hit


def _vm_of(snap: Snapshot, iface: str) -> str:
    port = snap.ports.get(iface)
    return port.vm if port is not None else iface


def _migration_row(snap: Snapshot, m) -> dict:
    """A move in progress, with what the mapping's expiry does at its deadline if nobody acts first."""
    at_deadline = "completed" if m.state == ACTIVATED else "rolled back"
    return {**asdict(m), "vm": _vm_of(snap, m.iface_id), "at_deadline": at_deadline if m.deadline else None}


def _deadline(r: dict) -> str:
    if not r.get("at_deadline"):
        return "-"
    return f"{'completes' if r['at_deadline'] == 'completed' else 'rolls back'} {time.strftime('%H:%M:%S', time.gmtime(r['deadline']))}"


Rows = tuple[list[dict], list[tuple[str, ...]], str]  # rows, the names each answers to, what a name is


def _nves(snap: Snapshot, _st) -> Rows:
    items = sorted(snap.nves.items())
    return [asdict(n) for _, n in items], [(k,) for k, _ in items], "NVE"


def _ports(snap: Snapshot, _st) -> Rows:
    items = sorted(snap.ports.values(), key=lambda p: p.iface_id)
    return [asdict(p) for p in items], [(p.vm, p.iface_id) for p in items], "VM"


def _bindings(snap: Snapshot, _st) -> Rows:
    items = sorted(snap.bindings.values(), key=lambda b: (_vm_of(snap, b.iface_id), b.iface_id))
    sticky = {i for i, p in snap.ports.items() if p.sticky}
    rows = [{**asdict(b), "vm": _vm_of(snap, b.iface_id), "sticky": b.iface_id in sticky} for b in items]
    return rows, [(r["vm"], r["iface_id"]) for r in rows], "VM"


def _migrations(snap: Snapshot, _st) -> Rows:
    rows = [_migration_row(snap, m) for _, m in sorted(snap.migrations.items())]
    return rows, [(r["vm"], r["iface_id"]) for r in rows], "VM"


def _segments(snap: Snapshot, _st) -> Rows:
    items = sorted(snap.segments.values(), key=lambda s: s.name)
    return [asdict(s) for s in items], [(s.name, str(s.vni)) for s in items], "CUG"


def _tenants(snap: Snapshot, _st) -> Rows:
    items = sorted(snap.tenants.items())
    rows = [{**asdict(t), "default_policy": snap.policy.defaults.get(k, "allow"),
             "cugs": sorted(s.name for s in snap.segments.values() if s.tenant == k)} for k, t in items]
    return rows, [(k,) for k, _ in items], "tenant"


def _domains(snap: Snapshot, _st) -> Rows:
    items = sorted(snap.domains.items())
    rows = [{**asdict(d), "vlans": {str(v): vl for v, vl in sorted(snap.vlans.get(k, {}).items())}} for k, d in items]
    return rows, [(k,) for k, _ in items], "domain"


def _policy(snap: Snapshot, _st) -> Rows:
    rows = [{"order": i, **r.to_json()} for i, r in enumerate(snap.policy.rules)]
    return rows, [(r["name"],) for r in rows], "rule"


def _statuses(_snap: Snapshot, st: dict[str, NveStatus]) -> Rows:
    items = sorted(st.items())
    return [asdict(s) for _, s in items], [(k,) for k, _ in items], "NVE"


_ROWS: dict[str, Callable[[Snapshot, dict[str, NveStatus]], Rows]] = {
    "nves": _nves, "ports": _ports, "bindings": _bindings, "migrations": _migrations, "segments": _segments,
    "tenants": _tenants, "domains": _domains, "policy": _policy, "statuses": _statuses}


def _ips(r: dict) -> str:
    return ",".join(r["ips"])


def _list(v) -> str:
    return "any" if v is None else ",".join(map(str, v)) or "-"


def _binding_state(r: dict) -> str:
    return " ".join(w for w, on in (("[red]FROZEN[/]", r["frozen"]), ("stopped", r["stopped"]),
                                    ("detached", r["detached"] and not r["stopped"]), ("sticky", r["sticky"])) if on)


Column = tuple[str, Callable[[dict], object]]
_COLUMNS: dict[str, list[Column]] = {
    "nves": [("NVE", lambda r: r["name"]), ("role", lambda r: r["role"]), ("dc", lambda r: r["dc"]),
             ("VTEP", lambda r: r["vtep"]), ("ToR", lambda r: r["tor"]), ("domain", lambda r: r["domain"])],
    "ports": [("interface", lambda r: r["iface_id"]), ("VM", lambda r: r["vm"]), ("VNI", lambda r: r["vni"]),
              ("MAC", lambda r: r["mac"]), ("IPs", _ips), ("guest VLAN", lambda r: r["vlan"] or "-"),
              ("sticky", lambda r: "yes" if r["sticky"] else "")],
    "bindings": [("interface", lambda r: r["iface_id"]), ("VNI", lambda r: r["vni"]), ("MAC", lambda r: r["mac"]),
                 ("IPs", _ips), ("NVE", lambda r: r["nve"]), ("VTEP", lambda r: r["vtep"]), ("seq", lambda r: r["seq"]),
                 ("moves", lambda r: len(r["moves"])), ("state", _binding_state)],
    "migrations": [("interface", lambda r: r["iface_id"]), ("VNI", lambda r: r["vni"]), ("MAC", lambda r: r["mac"]),
                   ("from", lambda r: r["src"]), ("to", lambda r: r["dst"]), ("state", lambda r: r["state"]),
                   ("expiry (UTC)", _deadline)],
    "segments": [("CUG", lambda r: r["name"]), ("VNI", lambda r: r["vni"]), ("subnet", lambda r: r["subnet"]),
                 ("gateway", lambda r: r["gateway"] or "-"), ("tenant", lambda r: r["tenant"] or "-"),
                 ("flood unknown ARP", lambda r: "yes" if r["flood_unknown_arp"] else "no"),
                 ("pps announce/arp/bum", lambda r: f"{r['announce_pps']}/{r['arp_pps']}/{r['bum_pps']}"),
                 ("duplicates", lambda r: f"{r['max_moves']} in {r['window_s']:g} s")],
    "tenants": [("tenant", lambda r: r["name"]), ("L3 VNI", lambda r: r["l3vni"]),
                ("anycast MAC", lambda r: r["anycast_mac"]), ("default", lambda r: r["default_policy"]),
                ("CUGs", lambda r: ",".join(r["cugs"]) or "-")],
    "domains": [("domain", lambda r: r["name"]), ("dc", lambda r: r["dc"]), ("ToR", lambda r: r["tor"]),
                ("servers", lambda r: ",".join(r["servers"])), ("VLAN range", lambda r: f"{r['vlan_lo']}-{r['vlan_hi']}"),
                ("VLANs (VNI:VLAN)", lambda r: " ".join(f"{k}:{v}" for k, v in r["vlans"].items()) or "-")],
    "policy": [("#", lambda r: r["order"]), ("rule", lambda r: r["name"]), ("in", lambda r: _list(r["scopes"])),
               ("from", lambda r: _list(r["src"])), ("to", lambda r: _list(r["dst"])), ("proto", lambda r: r["proto"]),
               ("ports", lambda r: _list(r["ports"]) if r["ports"] else "any"), ("action", lambda r: r["action"])],
    "statuses": [("NVE", lambda r: r["nve"]), ("converged", lambda r: r["converged_revision"]),
                 ("passes", lambda r: r["reconciles"]), ("resyncs", lambda r: r["resyncs"]),
                 ("changes", lambda r: r["changes_applied"]), ("moves reported", lambda r: r["moves_reported"]),
                 ("claims refused", lambda r: r["claims_refused"]), ("pid", lambda r: r["pid"] or "-"),
                 ("last pass ms", lambda r: f"{r['last_pass_ms']:.1f}"),
                 ("last error", lambda r: escape(r["errors"][-1]) if r["errors"] else "")],
}


def render_get(kind: str, rows: list[dict], revision: int, console: Console) -> None:
    _table(console, f"{kind} (mapping revision {revision})", _COLUMNS[kind], rows)


def _table(console: Console, title: str, columns: list[Column], rows: list[dict]) -> None:
    t = Table(title=title, title_justify="left")
    for head, _ in columns:
        t.add_column(head)
    for r in rows:
        t.add_row(*(str(cell(r)) for _, cell in columns))
    console.print(t)
