"""The lab as one object: what experiments and tools above the lab use.

    lab = Lab.running(ctx) or Lab.up(load_topology(), ctx, start_agents=False)
    lab.hosts(); lab.set_wan(delay_ms=5, rate_mbit=5); lab.cut(name); lab.restore(name)
    lab.start_agents(); lab.down()

Every change goes through here and is saved in the lab's state file, so a
`qplab status` run beside an experiment sees what the experiment did.
"""
from __future__ import annotations

import json
from typing import Callable

from qpagent.config import LivenessSettings, RepairSettings

from . import agents, lab as build, links, monitor, netns, status, wan
from .context import LabContext
from .plan import build_plan
from .state import AgentState, HostState, LabState, WanState
from .topology import Topology, load_topology
from .waiting import wait_until

Progress = Callable[[str], None]


class Lab:
    def __init__(self, ctx: LabContext, state: LabState, owned: bool = False):
        self.ctx, self.state = ctx, state
        self.owned = owned          # brought up by this object (so `close` takes it down)

    # -- life cycle ---------------------------------------------------------------
    @classmethod
    def up(cls, topo: Topology, ctx: LabContext, progress: Progress = print,
           start_agents: bool = True, prometheus: bool = False) -> "Lab":
        return cls(ctx, build.up(topo, ctx, progress, start_agents=start_agents,
                                 prometheus=prometheus), owned=True)

    @classmethod
    def running(cls, ctx: LabContext) -> "Lab | None":
        """The lab up with this context, or None."""
        state = LabState.load(ctx)
        if state is None or not netns.list_namespaces(ctx.prefix):
            return None
        return cls(ctx, state)

    def down(self, progress: Progress = print) -> dict:
        return build.down(self.ctx, progress)

    def save(self) -> None:
        self.state.save(self.ctx)

    @property
    def topology(self) -> Topology:
        """The topology the lab was built from, on the management subnet it uses."""
        return load_topology(self.state.topology).with_management(self.state.management)

    # -- what is in it ------------------------------------------------------------
    def hosts(self) -> list[HostState]:
        return list(self.state.hosts.values())

    def leaves(self) -> list[str]:
        return [r.name for r in self.state.leaves()]

    def wan_links(self) -> dict[str, WanState]:
        return self.state.wans

    def ns(self, node: str) -> str:
        return self.ctx.ns(node)

    # -- convergence --------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every way the lab is not converged yet; empty when it is."""
        return status.problems(self.state, status.collect(self.state))

    def wait_converged(self, timeout: float = 60.0) -> None:
        wait_until(self.problems, timeout, 0.5, "lab convergence")

    def border_routes(self) -> dict[str, list]:
        """Per border router, its BGP routes with their next-hop counts: equal
        to an earlier answer once routing has healed after a failure."""
        out = {}
        for r in self.state.routers.values():
            if r.role != "border":
                continue
            res = netns.run(["ip", "-n", r.ns, "-j", "route", "show", "proto", "bgp"], check=False)
            try:
                routes = json.loads(res.stdout or "[]")
            except ValueError:
                routes = []
            out[r.name] = sorted((x.get("dst"), len(x.get("nexthops", [])) or 1) for x in routes)
        return out

    # -- the WAN ------------------------------------------------------------------
    def set_wan(self, name: str | None = None, buffer_ms: float = wan.DEFAULT_BUFFER_MS,
                **settings) -> None:
        """Change one WAN link (or all): delay_ms, jitter_ms, loss_pct, rate_mbit."""
        for w in ([self.state.wans[name]] if name else self.state.wans.values()):
            wan.apply(w, self.ctx, settings, buffer_ms)
        self.save()

    def cut(self, name: str) -> None:
        """Blackhole a WAN link: it stays up and drops everything (only BFD notices)."""
        wan.set_blackhole(self.state.wans[name], True)
        self.save()

    def restore(self, name: str) -> None:
        wan.set_blackhole(self.state.wans[name], False)
        self.save()

    def blackhole(self, a: str, b: str, on: bool = True) -> str:
        """Silently cut (or restore) the link between two routers, at any tier:
        a WAN link in its delay line, a fabric link by a drop filter at its
        non-leaf end. The link stays up; only BFD or end-to-end probes notice."""
        said = links.act(self.state, self.ctx, a, b, "blackhole" if on else "restore")
        self.save()
        return said

    # -- agents -------------------------------------------------------------------
    def agents_running(self) -> bool:
        return self.state.agents_running()

    def start_agents(self, progress: Progress = print, liveness: LivenessSettings | None = None,
                     repair: RepairSettings | None = None,
                     end_to_end: bool = True) -> dict[str, AgentState]:
        """Start the agents the topology asks for (once), with qpagent's own
        liveness and repair settings unless given; end_to_end=False balances
        over each leaf's own uplinks only."""
        if not self.state.agents:
            self.state.agents = agents.start_all(build_plan(self.topology), self.ctx, progress,
                                                 liveness=liveness, repair=repair,
                                                 end_to_end=end_to_end)
            if self.state.monitor:   # Prometheus scrapes the new agents too
                monitor.reload(self.state, self.state.monitor)
            self.save()
        return self.state.agents

    def stop_agents(self, progress: Progress = print) -> None:
        """Stop every agent and remove its data plane: kernel hashing again."""
        if self.state.agents:
            agents.stop_all(self.state.agents, self.ctx, progress)
            self.state.agents = {}
            self.save()

    # -- Prometheus -----------------------------------------------------------------
    def start_prometheus(self, progress: Progress = print) -> str:
        """Start Prometheus and the FRR exporters (once); return its URL."""
        if not self.state.monitor:
            self.state.monitor = monitor.start(self.state, self.ctx, progress)
            self.save()
        return self.state.monitor.prometheus

    def query(self, promql: str) -> list[dict]:
        """An instant query against the lab's Prometheus (started with `prometheus=True`)."""
        if not self.state.monitor:
            raise monitor.MonitorError("this lab runs no Prometheus (up with prometheus=True)")
        return monitor.query(self.state.monitor, promql)

    def agent_socket(self, node: str) -> str:
        return str(self.ctx.agent_socket(node))
