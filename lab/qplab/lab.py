"""Bring a lab up and tear it down.

`up` builds in phases (namespaces, links, addresses, WAN boxes, FRR, agents)
and reports each; if anything fails, or the user presses Ctrl-C, it tears
down what it made. `down` finds everything by prefix (namespaces, root links,
FRR path spaces, run files), so it works without a state file and twice in a
row.
"""
from __future__ import annotations

import os
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from . import agents, frr, monitor, netns, wan
from .context import LabContext
from .frrconf import render_frr_conf
from .plan import HOST_MTU, UNDERLAY_MTU, VXLAN_SOURCE_PORTS, Plan, build_plan
from .state import LabState
from .topology import Topology

Progress = Callable[[str], None]

ROUTER_SYSCTLS = ["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
                  "net.ipv4.icmp_ratelimit=0", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.default.rp_filter=0",
                  # Time-exceeded from the inbound link's address: a traceroute hop then names the link crossed.
                  "net.ipv4.icmp_errors_use_inbound_ifaddr=1"]
HOST_SYSCTLS = ["net.ipv4.icmp_ratelimit=0"]


# Transit routers hash the outer 5-tuple like a hardware router: policy 3
# with fields src/dst IP, protocol, src/dst port. Policy 1 would take a short
# cut on packets that arrive with an L4 skb hash, and veth carries the
# sender's skb hash across namespaces: every tier would then decide by the
# VTEP's internal hash instead of the headers on the wire (seen here: QPs on
# four probed paths all crossing one WAN link). VTEPs keep policy 1.
TRANSIT_SYSCTLS = ["net.ipv4.fib_multipath_hash_policy=3",
                   "net.ipv4.fib_multipath_hash_fields=0x0037"]


def _hash_seed(name: str) -> list[str]:
    """A multipath hash seed of the router's own. Namespaces all start with
    the same seed, so every tier would make the same choice for a given
    port (hash polarisation: a port's whole WAN path fixed by its first
    hop), which real routers, seeded apart, do not do. Kernel 6.11+."""
    if not os.path.exists("/proc/sys/net/ipv4/fib_multipath_hash_seed"):
        return []
    return [f"net.ipv4.fib_multipath_hash_seed={zlib.crc32(name.encode()) or 1}"]


class LabError(RuntimeError):
    pass


def _parallel(fn, items, workers=8):
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as ex:
        return list(ex.map(fn, items))


def up(topo: Topology, ctx: LabContext, progress: Progress = print, start_agents=True,
       topology_path: str = "", prometheus: bool = False) -> LabState:
    """Build the lab; on any failure (or Ctrl-C) remove what was built, then re-raise."""
    if netns.list_namespaces(ctx.prefix):
        raise LabError(f"a lab with prefix '{ctx.prefix}' is already up: run `qplab down` first")
    plan = build_plan(topo)
    t0 = time.monotonic()
    state = LabState.from_plan(plan, ctx, topology_path)
    try:
        state.save(ctx)
        (ctx.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        _make_namespaces(plan, ctx, progress)
        _make_links(plan, ctx, progress)
        _configure_nodes(plan, ctx, progress)
        _start_wan(plan, ctx, progress, state)
        _start_frr(plan, ctx, progress)
        if start_agents:
            state.agents = agents.start_all(plan, ctx, progress)
        else:
            progress("agents: skipped (--no-agent)")
        if prometheus:
            state.monitor = monitor.start(state, ctx, progress)
        state.up_seconds = round(time.monotonic() - t0, 2)
        state.save(ctx)
        return state
    except BaseException:
        progress("up failed: tearing down what was built")
        down(ctx, progress=lambda m: None)
        raise


def _make_namespaces(plan: Plan, ctx: LabContext, progress: Progress) -> None:
    names = [ctx.ns(n) for n in plan.nodes]
    netns.ip_batch([f"netns add {n}" for n in names])
    progress(f"namespaces: {len(names)} created "
             f"({len(plan.routers)} routers, {len(plan.hosts)} hosts, {len(plan.wans)} WAN boxes)")


def _make_links(plan: Plan, ctx: LabContext, progress: Progress) -> None:
    lines = [f"link add {l.a_if} netns {ctx.ns(l.a)} type veth peer name {l.b_if} netns {ctx.ns(l.b)}"
             for l in plan.links]
    for w in plan.wans:
        lines += wan.box_lines(w, ctx)
    for h in plan.hosts.values():
        leaf = plan.routers[h.leaf]
        lines.append(f"link add eth0 netns {ctx.ns(h.name)} type veth peer name {h.leaf_port} "
                     f"netns {ctx.ns(leaf.name)}")
    # management: a bridge in the root namespace, one veth into each leaf and host
    bridge = ctx.mgmt_bridge
    lines += [f"link add {bridge} type bridge", f"link set dev {bridge} up",
              f"addr add {plan.mgmt_gateway} dev {bridge}"]
    mgmt_nodes = [r.name for r in plan.leaves()] + list(plan.hosts)
    for i, node in enumerate(mgmt_nodes):
        veth = ctx.mgmt_veth(i)
        lines += [f"link add {veth} type veth peer name mgmt0 netns {ctx.ns(node)}",
                  f"link set dev {veth} master {bridge} up"]
    netns.ip_batch(lines)
    progress(f"links: {len(plan.links)} fabric, {2 * len(plan.wans)} WAN halves, "
             f"{len(plan.hosts)} host ports, {len(mgmt_nodes)} management")


def _router_lines(plan: Plan, r, ctx: LabContext) -> tuple[list[str], list[str]]:
    ip_lines = ["link set dev lo up", f"addr add {r.loopback}/32 dev lo"]
    for i in r.interfaces:
        ip_lines += [f"addr add {i.address} dev {i.name}",
                     f"link set dev {i.name} mtu {UNDERLAY_MTU} up"]
    bridge_lines: list[str] = []
    if r.mgmt:
        ip_lines += [f"addr add {r.mgmt} dev mgmt0", "link set dev mgmt0 up"]
    if r.role == "leaf":
        for vni in r.vnis:
            br, vx = f"br{vni}", f"vxlan{vni}"
            ip_lines += [
                f"link add {br} type bridge",
                f"link set dev {br} addrgenmode none mtu {HOST_MTU} up",
                f"link add {vx} type vxlan id {vni} local {r.loopback} dstport 4789 "
                f"srcport {VXLAN_SOURCE_PORTS[0]} {VXLAN_SOURCE_PORTS[1]} nolearning",
                f"link set dev {vx} addrgenmode none mtu {HOST_MTU} master {br} up",
            ]
            bridge_lines.append(f"link set dev {vx} neigh_suppress on learning off")
        for port, host in r.host_ports.items():
            vni = plan.hosts[host].vni
            ip_lines.append(f"link set dev {port} mtu {HOST_MTU} master br{vni} up")
    return ip_lines, bridge_lines


def _configure_nodes(plan: Plan, ctx: LabContext, progress: Progress) -> None:
    def router(r):
        ns = ctx.ns(r.name)
        transit = TRANSIT_SYSCTLS if r.role != "leaf" else []
        netns.ns_exec(ns, ["sysctl", "-qw"] + ROUTER_SYSCTLS + transit + _hash_seed(r.name))
        ip_lines, bridge_lines = _router_lines(plan, r, ctx)
        netns.ip_batch(ip_lines, ns)
        if bridge_lines:
            netns.run(["bridge", "-n", ns, "-batch", "-"], input="\n".join(bridge_lines) + "\n")

    def host(h):
        ns = ctx.ns(h.name)
        netns.ns_exec(ns, ["sysctl", "-qw"] + HOST_SYSCTLS)
        netns.ip_batch(["link set dev lo up",
                        f"link set dev eth0 address {h.mac} mtu {HOST_MTU} up",
                        f"addr add {h.address} dev eth0",
                        f"addr add {h.mgmt} dev mgmt0", "link set dev mgmt0 up"], ns)

    _parallel(router, plan.routers.values())
    _parallel(host, plan.hosts.values())
    _parallel(lambda w: wan.configure_box(w, ctx, UNDERLAY_MTU), plan.wans)
    progress(f"nodes: {len(plan.routers)} routers, {len(plan.hosts)} hosts addressed; "
             f"{sum(len(r.vnis) for r in plan.leaves())} VXLAN devices on {len(plan.leaves())} leaves")


def _start_wan(plan: Plan, ctx: LabContext, progress: Progress, state: LabState) -> None:
    procs = {w.name: wan.start_delay_line(w, ctx) for w in plan.wans}
    for w in plan.wans:
        wan.wait_delay_line(w, ctx, procs[w.name])
        state.wans[w.name].pid = procs[w.name].pid
        wan.set_rate(state.wans[w.name], ctx, w.props.rate_mbit)
    state.save(ctx)
    if plan.wans:
        p = plan.wans[0].props
        progress(f"wan: {len(plan.wans)} delay lines running (e.g. {p.delay_ms:g} ms, "
                 f"jitter {p.jitter_ms:g} ms, loss {p.loss_pct:g}%, rate {p.rate_mbit:g} Mbit/s)")


def _start_frr(plan: Plan, ctx: LabContext, progress: Progress) -> None:
    routers = list(plan.routers.values())
    for r in routers:
        frr.write_config(ctx.ns(r.name), render_frr_conf(plan, r))
    _parallel(lambda r: frr.start_daemons(ctx.ns(r.name), ctx.ns(r.name)), routers, workers=12)
    deadline = time.monotonic() + 30
    waiting = [ctx.ns(r.name) for r in routers]
    while waiting:
        waiting = [n for n in waiting if not frr.daemons_ready(n)]
        if waiting and time.monotonic() > deadline:
            raise LabError(f"FRR daemons not ready on: {', '.join(waiting)}")
        if waiting:
            time.sleep(0.05)
    _parallel(lambda r: frr.apply_config(ctx.ns(r.name)), routers, workers=6)
    progress(f"frr: {len(routers)} routers x {len(frr.DAEMONS)} daemons started and configured")


def down(ctx: LabContext, progress: Progress = print) -> dict:
    """Remove everything a lab with this prefix made. Safe to call any time."""
    t0 = time.monotonic()
    namespaces = netns.list_namespaces(ctx.prefix)
    pids = [p for ns in namespaces for p in netns.namespace_pids(ns)]
    netns.kill_pids(pids, grace=3.0)
    state = LabState.load(ctx)
    agents.purge_nodes(state.agents if state else {}, ctx, progress)
    if namespaces:
        netns.ip_batch([f"netns del {n}" for n in namespaces])
    links = netns.root_links(ctx.prefix)
    for link in links:
        netns.run(["ip", "link", "del", link], check=False)
    frr.remove_files(ctx.prefix)
    agents.remove_files(ctx)
    if ctx.run_dir.exists():
        shutil.rmtree(ctx.run_dir, ignore_errors=True)
    summary = {"namespaces": len(namespaces), "processes": len(pids), "root_links": len(links),
               "seconds": round(time.monotonic() - t0, 2)}
    progress(f"down: {summary['namespaces']} namespaces, {summary['processes']} processes, "
             f"{summary['root_links']} root links removed in {summary['seconds']} s")
    return summary
