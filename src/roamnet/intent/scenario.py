"""A traffic scenario: streams between VMs (and WAN clients) of a topology, and timed migration steps."""

from __future__ import annotations

from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, Strict, StringConstraints, ValidationError, model_validator

from roamnet.intent.model import (
    CrossCheckError,
    IntentError,
    Model,
    Problem,
    Topology,
    load_topology,
    problems_from,
    read_yaml_file,
)

DEFAULT_RATE = {"udp": 1000, "tcp": 200}  # udp: datagrams/s; tcp: writes/s
Expectation = Literal["delivered", "denied"]  # what a stream is expected to do (Stream.expect)
MAX_DURATION = 600.0
STREAM_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"

StrictInt = Annotated[int, Strict()]


class Stream(Model):
    """Traffic from one VM (or WAN client) to another: sequence-numbered UDP datagrams, or one paced
    TCP connection. At most one end may be a WAN client. `to:` names a VM or a WAN client, or is an
    IP address of one (a VM interface's: that very interface receives)."""

    model_config = ConfigDict(populate_by_name=True)  # Stream(from_=...) in code, `from:` in YAML

    name: Annotated[str, StringConstraints(pattern=STREAM_NAME_RE)]
    from_: str = Field(alias="from", description="sending VM or WAN client (by name)")
    to: str = Field(description=(
        "receiving VM or WAN client, by name or by IP address (a VM interface's or a WAN client's)"))
    proto: Literal["udp", "tcp"]
    rate: StrictInt = Field(default=DEFAULT_RATE["udp"], ge=1, le=100_000)  # default depends on proto
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    expect: Expectation = Field(default="delivered", description=(
        "delivered: the stream must get through (TCP: the connection survives; UDP: something sent after "
        "the last migration arrives); denied: the policy must stop it (nothing arrives)"))

    @model_validator(mode="before")
    @classmethod
    def _default_rate(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("rate") is None and data.get("proto") in DEFAULT_RATE:
            data = {**data, "rate": DEFAULT_RATE[data["proto"]]}
        return data

    def target(self, topology: Topology) -> tuple[str, int | None]:
        """(node, interface index) that `to:` names: a VM or WAN client named as such (index None),
        or the owner of the IP address `to:` is (index None for a WAN client).
        Raises ValueError for an IP address nobody in `topology` has, or several have (addresses
        are unique per tenant only, so VMs of two tenants may share one)."""
        if not _is_ip(self.to):
            return self.to, None
        owners = topology.owners_of_ip(self.to)
        if not owners:
            raise ValueError(f"unknown IP address {self.to}: no VM interface nor WAN client has it")
        if len(owners) > 1:
            raise ValueError(_ambiguous(topology, self.to, owners))
        return owners[0]

    def receiver(self, topology: Topology) -> str:
        """Name of the receiving VM or WAN client (`to:` may be an IP address of it)."""
        return self.target(topology)[0]

    def endpoints(self, topology: Topology) -> tuple[IPv4Address, IPv4Address, str]:
        """(source IP, destination IP, via). `via` is how the traffic goes:

        - a CUG name: both are VMs and share that CUG (the sender's first CUG the receiver is in);
        - ``"tenant:<name>"``: two VMs with interfaces in (different) CUGs of that tenant, routed
          through the anycast gateway; the sender's first tenant the receiver also has, from each
          one's first interface in a CUG of that tenant;
        - ``"wan"``: a WAN client and a VM, from/to the VM's first interface in a routed CUG.

        When `to:` is a VM interface's IP address, that interface receives: from the sender's
        interface in its CUG if there is one (via that CUG), else from the sender's first interface
        in a CUG of its tenant (via the tenant); from a WAN client, it must be in a routed CUG.
        A WAN client's IP address means that client.

        Raises ValueError when the two cannot reach each other."""
        clients = topology.wan_clients()
        dst, index = self.target(topology)
        if self.from_ in clients or dst in clients:
            if self.from_ in clients and dst in clients:
                raise ValueError(f"a stream needs at least one VM ({self.from_} and {dst} are both WAN clients)")
            client, vm = (self.from_, dst) if self.from_ in clients else (dst, self.from_)
            vm_ip = _wan_facing_ip(topology, client, vm, index if vm == dst else None)
            client_ip = clients[client].ip
            return (client_ip, vm_ip, "wan") if self.from_ == client else (vm_ip, client_ip, "wan")
        if index is not None:
            return _endpoints_to_interface(topology, self.from_, dst, index)
        src, dst_vm = topology.vms[self.from_], topology.vms[dst]
        for iface in src.interfaces:
            peer = dst_vm.interface_in(iface.cug)
            if peer is not None:
                return iface.ip, peer.ip, iface.cug
        for iface in src.interfaces:
            tenant = topology.tenant_of(iface.cug)
            if tenant is None:
                continue
            peer = next((p for p in dst_vm.interfaces if topology.tenant_of(p.cug) == tenant), None)
            if peer is not None:
                return iface.ip, peer.ip, f"tenant:{tenant}"
        raise ValueError(f"{self.from_} and {dst} share no CUG and no tenant")


def _is_ip(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def _ambiguous(topology: Topology, ip: str, owners: list[tuple[str, int | None]]) -> str:
    """Why `to: <ip>` names no single receiver: e.g. "ambiguous: vm1 and vm7 have 198.19.1.10
    (tenants t1 and t2); name the VM instead"."""
    vms = [name for name, _ in owners]
    shared = len(set(vms)) < len(vms)  # one VM has it on several interfaces (in several scopes)
    who = [f"{name} interfaces[{i}]" if shared and i is not None else name for name, i in owners]
    tenants: list[str | None] = []
    scopes: list[str] = []
    for name, i in owners:
        cug = topology.vms[name].interfaces[i].cug if i is not None else None
        tenant = topology.tenant_of(cug) if cug is not None else None
        tenants.append(tenant)
        scopes.append("the WAN" if cug is None else f"tenant {tenant}" if tenant else f"CUG {cug} (L2-only)")
    if all(tenants):
        scopes = [f"tenants {tenants[0]}", *(str(t) for t in tenants[1:])]
    return f"ambiguous: {_and(who)} have {ip} ({_and(scopes)}); name the VM instead"


def _and(words: list[str]) -> str:
    """Join words: "a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def _wan_facing_ip(topology: Topology, client: str, vm: str, index: int | None) -> IPv4Address:
    """IP address of `vm` that WAN client `client` talks to: interface `index` (which must be in a
    routed CUG), or by default the VM's first interface in a routed CUG."""
    if index is None:
        routed = topology.routed_interface(vm)
        if routed is None:
            raise ValueError(f"{client} can only reach VMs with an interface in a routed CUG "
                             f"(one with a gateway and a tenant); {vm} has none")
        return routed[1].ip
    iface = topology.vms[vm].interfaces[index]
    if topology.tenant_of(iface.cug) is None:
        raise ValueError(f"{client} can only reach VM interfaces in a routed CUG (one with a gateway and "
                         f"a tenant); {iface.ip} ({vm} interfaces[{index}]) is in L2-only CUG {iface.cug}")
    return iface.ip


def _endpoints_to_interface(topology: Topology, src: str, dst: str, index: int) -> tuple[
        IPv4Address, IPv4Address, str]:
    """Endpoints from VM `src` to interface `index` of VM `dst` (see `Stream.endpoints`)."""
    peer, sender = topology.vms[dst].interfaces[index], topology.vms[src]
    iface = sender.interface_in(peer.cug)
    if iface is not None:
        return iface.ip, peer.ip, peer.cug
    tenant = topology.tenant_of(peer.cug)
    if tenant is not None:
        iface = next((i for i in sender.interfaces if topology.tenant_of(i.cug) == tenant), None)
        if iface is not None:
            return iface.ip, peer.ip, f"tenant:{tenant}"
        raise ValueError(f"{src} cannot reach {peer.ip} ({dst} interfaces[{index}]): it has no interface in "
                         f"CUG {peer.cug} nor in another CUG of tenant {tenant}")
    raise ValueError(f"{src} cannot reach {peer.ip} ({dst} interfaces[{index}]): it has no interface in "
                     f"CUG {peer.cug} (an L2-only CUG)")


class Step(Model):
    """At time `at` (seconds from the start): live-migrate a VM to another server (`migrate`, `to`,
    `pause_ms`), or stop one (`stop`), or start a stopped one on a server (`start`, `on`): a cold move."""

    at: float = Field(ge=0)
    migrate: str | None = None
    to: str | None = None
    pause_ms: StrictInt = Field(default=0, ge=0, le=60_000)
    stop: str | None = Field(default=None, description="a VM to stop (its MAC and addresses stay reserved)")
    start: str | None = Field(default=None, description="a stopped VM to start, on server `on`")
    on: str | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [k for k in ("migrate", "stop", "start") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a step does exactly one of `migrate: VM` (with `to:`), `stop: VM`, `start: VM` "
                             f"(with `on:`), got {', '.join(given) or 'none'}")
        if self.migrate is not None and self.to is None:
            raise ValueError("`migrate:` needs `to:` (the destination server)")
        if self.start is not None and self.on is None:
            raise ValueError("`start:` needs `on:` (the server the VM starts on)")
        if self.to is not None and self.migrate is None:
            raise ValueError("`to:` goes with `migrate:` (a stopped VM starts `on:` a server)")
        if self.on is not None and self.start is None:
            raise ValueError("`on:` goes with `start:`")
        return self

    @property
    def vm(self) -> str:
        return self.migrate or self.stop or self.start or ""

    @property
    def action(self) -> str:
        return "migrate" if self.migrate is not None else "stop" if self.stop is not None else "start"

    @property
    def server(self) -> str | None:
        """Where the step puts the VM (None: nowhere, it stops)."""
        return self.to if self.migrate is not None else self.on


class Scenario(Model):
    topology: Topology
    duration: float = Field(gt=0, le=MAX_DURATION)
    streams: list[Stream] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_check(self) -> Scenario:
        problems = _check_scenario(self)
        if problems:
            raise CrossCheckError(problems)
        return self


def _check_scenario(s: Scenario) -> list[Problem]:
    problems: list[Problem] = []
    vms, servers, clients = s.topology.vms, s.topology.server_dc(), s.topology.wan_clients()
    names: dict[str, int] = {}
    echoed: dict[str, int] = {}  # sender's address -> the UDP stream into a QEMU guest it already sends
    for i, st in enumerate(s.streams):
        path = f"streams[{i}]"
        if st.name in names:
            problems.append((f"{path}.name", f"duplicate stream name {st.name!r} (also streams[{names[st.name]}])"))
        names.setdefault(st.name, i)
        known = True
        if st.from_ not in vms and st.from_ not in clients:
            hint = " (`from:` names a VM or a WAN client, not an address)" if _is_ip(st.from_) else ""
            problems.append((f"{path}.from", f"unknown VM or WAN client {st.from_!r}{hint}"))
            known = False
        try:
            receiver = st.receiver(s.topology)
        except ValueError as e:
            problems.append((f"{path}.to", str(e)))
            continue
        if receiver not in vms and receiver not in clients:
            problems.append((f"{path}.to", f"unknown VM or WAN client {st.to!r} "
                             "(`to:` names a VM or a WAN client, or is an IP address of one)"))
            known = False
        if not known:
            continue
        if st.from_ == receiver:
            problems.append((f"{path}.to", f"a stream needs two different nodes (from and to are both {receiver})"))
            continue
        try:
            src_ip = st.endpoints(s.topology)[0]
        except ValueError as e:
            problems.append((f"{path}.to", str(e)))
            continue
        problems += _guest_problems(s.topology, st, i, receiver, str(src_ip), echoed)

    placement: dict[str, str | None] = {name: vm.server for name, vm in vms.items()}  # None: stopped
    for i, step in sorted(enumerate(s.steps), key=lambda x: x[1].at):
        path = f"steps[{i}]"
        if step.at >= s.duration:
            reason = f"{step.at:g} is not before the end of the scenario (duration {s.duration:g})"
            problems.append((f"{path}.at", reason))
        vm, key = step.vm, step.action
        if vm not in vms:
            problems.append((f"{path}.{key}", f"unknown VM {vm!r}"))
            continue
        where = "to" if key == "migrate" else "on"
        if key == "stop":
            if placement[vm] is None:
                problems.append((f"{path}.stop", f"{vm} is already stopped at {step.at:g}s"))
            placement[vm] = None
            continue
        if key == "migrate" and placement[vm] is None:
            problems.append((f"{path}.migrate", f"{vm} is stopped at {step.at:g}s: start it (`start: {vm}`, `on:`)"))
            continue
        if key == "start" and placement[vm] is not None:
            problems.append((f"{path}.start", f"{vm} runs on {placement[vm]} at {step.at:g}s: stop it first, "
                             "or migrate it"))
            continue
        if step.server not in servers:
            tor = s.topology.tors().get(step.server or "")
            if tor is None:
                problems.append((f"{path}.{where}", f"unknown server {step.server!r}"))
            else:
                verb = "migrate to" if key == "migrate" else "start it on"
                problems.append((f"{path}.{where}", f"{step.server} is the ToR switch of domain {tor.name}, and a "
                                 f"ToR hosts no VMs ({verb} one of its servers: {', '.join(tor.servers)})"))
            continue
        if key == "migrate" and placement[vm] == step.server:
            problems.append((f"{path}.to", f"{vm} is already on {step.server} at {step.at:g}s"))
        placement[vm] = step.server
    problems.sort(key=lambda p: _order(p[0]))
    return problems


def _guest_problems(topology: Topology, st: Stream, i: int, receiver: str, src_ip: str,
                    echoed: dict[str, int]) -> list[Problem]:
    """A QEMU guest (`guest: qemu`) runs echoes only: streams go into it and are measured on the round trip,
    from the sender (the scenario runner); its UDP echo answers at one port of the sender's address."""
    vms, out, path = topology.vms, [], f"streams[{i}]"
    if st.from_ in vms and vms[st.from_].guest == "qemu":
        out.append((f"{path}.from", f"{st.from_} is a QEMU guest: it runs echoes only, so a stream goes into it "
                                    f"(from another VM or a WAN client), not out of it"))
    if receiver in vms and vms[receiver].guest == "qemu":
        if st.port is not None:
            out.append((f"{path}.port", f"{receiver} is a QEMU guest: its echo listens on its own port; leave "
                                        f"`port:` out"))
        if st.proto == "udp":
            if src_ip in echoed:
                out.append((f"{path}.to", f"streams[{echoed[src_ip]}] already sends UDP from {src_ip} into a QEMU "
                                          f"guest, whose echo answers at one port of that address: one such "
                                          f"stream per sender address"))
            echoed.setdefault(src_ip, i)
    return out


def _order(path: str) -> tuple[int, int]:
    """Sort key keeping problems in file order (streams, then steps by index)."""
    section, _, rest = path.partition("[")
    return (section == "steps", int(rest.split("]")[0]) if rest else -1)


def packaged_example(name: str) -> Path | None:
    """Path of a YAML file shipped in `roamnet/examples/`, or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    entry = resources.files("roamnet").joinpath("examples", name)
    return Path(str(entry)) if entry.is_file() else None


def _resolve_topology(ref: str, source: str, base_dir: Path) -> Topology:
    path = Path(ref).expanduser()
    candidate = path if path.is_absolute() else base_dir / path
    if candidate.exists():
        return load_topology(candidate)
    packaged = packaged_example(ref)
    if packaged is not None:
        return load_topology(packaged)
    raise IntentError(source, [("topology", f"topology file {ref!r} not found in {base_dir} "
                                            "nor among the packaged examples")])


def parse_scenario(data: Any, source: str = "<inline>", base_dir: str | Path | None = None) -> Scenario:
    """Validate a scenario given as plain data. A `topology` given as a string is a file
    name, looked up relative to `base_dir` (default: the current directory), then among
    the packaged examples; errors inside that file are reported with that file as source."""
    if not isinstance(data, dict):
        raise IntentError(source, [("", f"a scenario must be a mapping, got {type(data).__name__}")])
    ref = data.get("topology")
    if isinstance(ref, str):
        topology = _resolve_topology(ref, source, Path(base_dir) if base_dir is not None else Path.cwd())
        data = {**data, "topology": topology}
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise IntentError(source, problems_from(e, data)) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file (its topology path is relative to it)."""
    return parse_scenario(read_yaml_file(path), str(path), Path(path).parent)
