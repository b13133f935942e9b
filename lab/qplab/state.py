"""A running lab's state: typed, and saved and loaded here only.

`up` builds it from the plan; every command (status, link, wan, the
experiments) loads it, may change it (a link cut, a WAN setting, the agents
started) and saves it back. On disk it is JSON in the lab's run directory.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .context import LabContext
from .plan import Plan
from .topology import WanProps


@dataclass
class InterfaceState:
    name: str
    address: str            # with its prefix, e.g. 10.0.0.0/31
    peer_address: str
    peer_node: str          # the router at the far end (through a WAN box)
    via: str                # the node at the other end of the cable (a WAN box for WAN links)
    kind: str               # "uplink", "downlink", "wan"


@dataclass
class RouterState:
    name: str
    ns: str                 # its namespace, also its FRR path-space name
    role: str               # spine, leaf, border
    dc: str
    loopback: str
    mgmt: str | None
    interfaces: list[InterfaceState]
    vnis: dict[str, list[str]] = field(default_factory=dict)   # VNI -> remote VTEPs expected

    def interface_to(self, peer_node: str) -> InterfaceState | None:
        return next((i for i in self.interfaces if i.peer_node == peer_node and i.kind != "wan"), None)


@dataclass
class HostState:
    name: str
    ns: str
    dc: str
    leaf: str
    leaf_port: str          # the leaf's interface towards this host
    address: str            # with its prefix
    mac: str
    mgmt: str

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class WanState:
    name: str               # also the WAN box's node name
    ns: str
    a: str
    b: str
    a_dc: str
    b_dc: str
    a_if: str
    b_if: str
    a_address: str
    b_address: str
    control: str            # the delay line's control socket
    props: WanProps
    blackhole: bool = False
    pid: int | None = None


@dataclass
class AgentState:
    node: str
    pid: int
    config: str
    socket: str
    metrics: str
    ok: bool
    error: str | None = None


@dataclass
class MonitorState:
    """Prometheus and the FRR exporters watching the lab (`up --prometheus`)."""
    ns: str
    address: str            # Prometheus' listener, on the management subnet, with its prefix
    prometheus: str         # its URL
    config: str             # the generated prometheus.yml
    exporters: dict[str, str]   # router -> the address its FRR exporter listens on
    pid: int | None = None


@dataclass
class LabState:
    prefix: str
    name: str
    topology: str           # the file it was built from
    management: str         # the management subnet
    started: float
    routers: dict[str, RouterState]
    hosts: dict[str, HostState]
    wans: dict[str, WanState]
    agents: dict[str, AgentState] = field(default_factory=dict)
    links_down: list[list[str]] = field(default_factory=list)   # sorted node pairs
    links_blackholed: list[list[str]] = field(default_factory=list)   # fabric links, sorted pairs
    up_seconds: float | None = None
    monitor: MonitorState | None = None

    # -- questions every command asks -------------------------------------------
    @property
    def node_names(self) -> list[str]:
        return list(self.routers) + list(self.hosts)

    def leaves(self) -> list[RouterState]:
        return [r for r in self.routers.values() if r.role == "leaf"]

    def agents_running(self) -> bool:
        return any(a.ok for a in self.agents.values())

    # -- from a plan, to and from disk ------------------------------------------
    @classmethod
    def from_plan(cls, plan: Plan, ctx: LabContext, topology_path: str = "") -> "LabState":
        routers = {r.name: RouterState(
            r.name, ctx.ns(r.name), r.role, r.dc, str(r.loopback),
            str(r.mgmt.ip) if r.mgmt else None,
            [InterfaceState(i.name, str(i.address), str(i.peer_address), i.peer_node, i.peer, i.kind)
             for i in r.interfaces],
            {str(v): plan.remote_vteps(r.name, v) for v in r.vnis}) for r in plan.routers.values()}
        hosts = {h.name: HostState(h.name, ctx.ns(h.name), h.dc, h.leaf, h.leaf_port, str(h.address),
                                   h.mac, str(h.mgmt.ip)) for h in plan.hosts.values()}
        wans = {w.name: WanState(w.name, ctx.ns(w.name), w.a, w.b, plan.routers[w.a].dc,
                                 plan.routers[w.b].dc, w.a_if, w.b_if, str(w.a_address.ip),
                                 str(w.b_address.ip), str(ctx.wan_socket(w.name)), w.props)
                for w in plan.wans}
        return cls(ctx.prefix, plan.topology.name, topology_path or plan.topology.source,
                   str(plan.topology.addressing.management), time.time(), routers, hosts, wans)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabState":
        routers = {n: RouterState(**{**r, "interfaces": [InterfaceState(**i) for i in r["interfaces"]]})
                   for n, r in d["routers"].items()}
        wans = {n: WanState(**{**w, "props": WanProps(**w["props"])}) for n, w in d["wans"].items()}
        return cls(**{**d, "routers": routers, "wans": wans,
                      "hosts": {n: HostState(**h) for n, h in d["hosts"].items()},
                      "agents": {n: AgentState(**a) for n, a in d.get("agents", {}).items()},
                      "monitor": MonitorState(**d["monitor"]) if d.get("monitor") else None})

    def save(self, ctx: LabContext) -> None:
        """Atomically: a command reading it never sees half a file."""
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(ctx.state_file)

    @classmethod
    def load(cls, ctx: LabContext) -> "LabState | None":
        """The saved state, or None when no lab with this context is up."""
        try:
            return cls.from_dict(json.loads(Path(ctx.state_file).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def with_wan_props(self, wan: str, **changes) -> None:
        w = self.wans[wan]
        w.props = replace(w.props, **changes)
