"""A traffic scenario: streams between VMs (and WAN clients) of a topology, and timed migration steps."""

from __future__ import annotations

from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, Strict, StringConstraints, ValidationError, model_validator

from .model import (
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
MAX_DURATION = 600.0
STREAM_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"

StrictInt = Annotated[int, Strict()]


class Stream(Model):
    """Traffic from one VM (or WAN client) to another: sequence-numbered UDP datagrams, or one paced
    TCP connection. At most one end may be a WAN client."""

    model_config = ConfigDict(populate_by_name=True)  # Stream(from_=...) in code, `from:` in YAML

    name: Annotated[str, StringConstraints(pattern=STREAM_NAME_RE)]
    from_: str = Field(alias="from")
    to: str
    proto: Literal["udp", "tcp"]
    rate: StrictInt = Field(default=DEFAULT_RATE["udp"], ge=1, le=100_000)  # default depends on proto
    port: StrictInt | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _default_rate(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("rate") is None and data.get("proto") in DEFAULT_RATE:
            data = {**data, "rate": DEFAULT_RATE[data["proto"]]}
        return data

    def endpoints(self, topology: Topology) -> tuple[IPv4Address, IPv4Address, str]:
        """(source IP, destination IP, via). `via` is how the traffic goes:

        - a CUG name: both are VMs and share that CUG (the sender's first CUG the receiver is in);
        - ``"tenant:<name>"``: two VMs with interfaces in (different) CUGs of that tenant, routed
          through the anycast gateway; the sender's first tenant the receiver also has, from each
          one's first interface in a CUG of that tenant;
        - ``"wan"``: a WAN client and a VM, from/to the VM's first interface in a routed CUG.

        Raises ValueError when the two cannot reach each other."""
        clients = topology.wan_clients()
        if self.from_ in clients or self.to in clients:
            if self.from_ in clients and self.to in clients:
                raise ValueError(f"a stream needs at least one VM ({self.from_} and {self.to} are both WAN clients)")
            client, vm = (self.from_, self.to) if self.from_ in clients else (self.to, self.from_)
            routed = topology.routed_interface(vm)
            if routed is None:
                raise ValueError(f"{client} can only reach VMs with an interface in a routed CUG "
                                 f"(one with a gateway and a tenant); {vm} has none")
            client_ip, vm_ip = clients[client].ip, routed[1].ip
            return (client_ip, vm_ip, "wan") if self.from_ == client else (vm_ip, client_ip, "wan")
        src, dst = topology.vms[self.from_], topology.vms[self.to]
        for iface in src.interfaces:
            peer = dst.interface_in(iface.cug)
            if peer is not None:
                return iface.ip, peer.ip, iface.cug
        for iface in src.interfaces:
            tenant = topology.tenant_of(iface.cug)
            if tenant is None:
                continue
            peer = next((p for p in dst.interfaces if topology.tenant_of(p.cug) == tenant), None)
            if peer is not None:
                return iface.ip, peer.ip, f"tenant:{tenant}"
        raise ValueError(f"{self.from_} and {self.to} share no CUG and no tenant")


class Step(Model):
    """At time `at` (seconds from the start), migrate a VM to another server."""

    at: float = Field(ge=0)
    migrate: str
    to: str
    pause_ms: StrictInt = Field(default=0, ge=0, le=60_000)


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
    for i, st in enumerate(s.streams):
        path = f"streams[{i}]"
        if st.name in names:
            problems.append((f"{path}.name", f"duplicate stream name {st.name!r} (also streams[{names[st.name]}])"))
        names.setdefault(st.name, i)
        known = True
        for key, end in (("from", st.from_), ("to", st.to)):
            if end not in vms and end not in clients:
                problems.append((f"{path}.{key}", f"unknown VM or WAN client {end!r}"))
                known = False
        if not known:
            continue
        if st.from_ == st.to:
            problems.append((f"{path}.to", f"a stream needs two different nodes (from and to are both {st.to})"))
            continue
        try:
            st.endpoints(s.topology)
        except ValueError as e:
            problems.append((f"{path}.to", str(e)))

    placement = {name: vm.server for name, vm in vms.items()}
    for i, step in sorted(enumerate(s.steps), key=lambda x: x[1].at):
        path = f"steps[{i}]"
        if step.at >= s.duration:
            reason = f"{step.at:g} is not before the end of the scenario (duration {s.duration:g})"
            problems.append((f"{path}.at", reason))
        if step.migrate not in vms:
            problems.append((f"{path}.migrate", f"unknown VM {step.migrate!r}"))
        if step.to not in servers:
            problems.append((f"{path}.to", f"unknown server {step.to!r}"))
        elif placement.get(step.migrate) == step.to:
            problems.append((f"{path}.to", f"{step.migrate} is already on {step.to} at {step.at:g}s"))
        if step.migrate in placement and step.to in servers:
            placement[step.migrate] = step.to
    problems.sort(key=lambda p: _order(p[0]))
    return problems


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
