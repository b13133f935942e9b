"""The lab watched by a real Prometheus: every agent and every router's FRR.

One lab for the module, up with its agents and `prometheus=True`. Every wait
polls Prometheus' own answers with a deadline.
"""
import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import free_management_subnet, need_root, unique_ctx
from qplab import lab, monitor, netns
from qplab.experiments import panels
from qplab.api import Lab
from qplab.topology import load_topology
from qplab.waiting import wait_until

SCRAPED_S = 90      # agents compile with BCC first; then a few scrape intervals
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "qpagent.json"


@pytest.fixture(scope="module")
def watched_lab():
    need_root()
    ctx = unique_ctx()
    topo = load_topology().with_management(free_management_subnet())
    try:
        the_lab = Lab.up(topo, ctx, progress=lambda m: None, start_agents=True, prometheus=True)
        the_lab.wait_converged(60)
        yield the_lab
    finally:
        lab.down(ctx, progress=lambda m: None)
        assert netns.list_namespaces(ctx.prefix) == []
        assert not ctx.run_dir.exists()


def nodes_with_data(the_lab, promql: str) -> set[str]:
    return {r["metric"].get("node") for r in the_lab.query(promql)}


def missing(the_lab, promql: str, want: set[str]) -> list[str]:
    """Nodes the query has no series for yet (a list, so wait_until shows it)."""
    return sorted(want - nodes_with_data(the_lab, promql))


def test_prometheus_listens_on_the_labs_management_subnet_only(watched_lab):
    mon = watched_lab.state.monitor
    host = urllib.parse.urlsplit(mon.prometheus).hostname
    assert ipaddress.IPv4Address(host) in ipaddress.IPv4Network(watched_lab.state.management)
    # inside the monitor namespace: Prometheus on that address, exporters on loopback
    listening = {line.split()[3] for line in
                 netns.run(["ip", "netns", "exec", mon.ns, "ss", "-Hltn"]).stdout.splitlines()}
    assert listening == {f"{host}:{monitor.PROMETHEUS_PORT}"} | set(mon.exporters.values())


def test_every_target_is_scraped(watched_lab):
    state = watched_lab.state
    agents = {n for n, a in state.agents.items() if a.ok}
    assert agents == {r.name for r in state.leaves()}, state.agents
    want = {("qpagent", n) for n in agents} | {("frr", n) for n in state.routers}

    def unhealthy():
        got = monitor.targets(state.monitor)
        bad = [f"{t['job']} {t['node']}: {t['health']} {t['error']}" for t in got if t["health"] != "up"]
        return bad + [f"{job} {n}: no target" for job, n in
                      sorted(want - {(t["job"], t["node"]) for t in got})]
    wait_until(unhealthy, SCRAPED_S, 1.0, "every agent and FRR exporter scraped")


def test_agent_metric_for_every_agent(watched_lab):
    agents = {n for n, a in watched_lab.state.agents.items() if a.ok}
    wait_until(lambda: missing(watched_lab, "qpagent_info", agents), SCRAPED_S, 1.0,
               "qpagent_info from every agent")
    # the agent's own view of its BFD sessions, one per uplink
    wait_until(lambda: missing(watched_lab, "sum by (node) (qpagent_bfd_peer_up) == 2", agents),
               SCRAPED_S, 1.0, "every agent sees its two BFD peers up")


def test_frr_bgp_and_bfd_state_for_every_router(watched_lab):
    state = watched_lab.state
    routers = set(state.routers)
    # every session of every router Established and every BFD peer up, as
    # FRR reports them through its exporter
    sessions = {n: len(r.interfaces) for n, r in state.routers.items()}

    def bgp_gaps():
        got = {r["metric"]["node"]: int(float(r["value"][1])) for r in watched_lab.query(
            'sum by (node) (frr_bgp_peer_state{afi="ipv4", safi="unicast"})')}
        return [f"{n}: {got.get(n, 0)}/{want} BGP sessions up" for n, want in sessions.items()
                if got.get(n) != want]

    def bfd_gaps():
        got = {r["metric"]["node"]: int(float(r["value"][1])) for r in watched_lab.query(
            "sum by (node) (frr_bfd_peer_state)")}
        return [f"{n}: {got.get(n, 0)}/{want} BFD peers up" for n, want in sessions.items()
                if got.get(n) != want]
    wait_until(bgp_gaps, SCRAPED_S, 1.0, "BGP state for every router")
    wait_until(bfd_gaps, SCRAPED_S, 1.0, "BFD state for every router")
    assert nodes_with_data(watched_lab, 'frr_collector_up{collector="bfd"} == 1') == routers
    # EVPN beside them: every leaf knows its remote VTEPs
    leaves = {r.name for r in state.leaves()}
    wait_until(lambda: missing(watched_lab, "frr_bgp_l2vpn_evpn_remote_vtep_count_total > 0", leaves),
               SCRAPED_S, 1.0, "EVPN remote VTEPs for every leaf")


def test_qplab_status_prints_where_prometheus_is(watched_lab):
    ctx = watched_lab.ctx
    env = dict(os.environ, QPLAB_PREFIX=ctx.prefix, QPLAB_RUN_DIR=str(ctx.run_dir))
    res = subprocess.run([sys.executable, "-m", "qplab.cli", "status"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert f"Prometheus  {watched_lab.state.monitor.prometheus}" in res.stdout, res.stdout + res.stderr


def frr_panel_targets() -> list[tuple[str, str, str]]:
    """(panel [refId], expression, legend) of every dashboard panel fed by
    prometheus-frr-exporter, from the committed dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(f"{p['title']} [{t['refId']}]", t["expr"], t.get("legendFormat", ""))
            for p in dash["panels"] for t in p.get("targets", []) if "frr_" in t["expr"]]


def test_every_frr_panel_shows_every_router(watched_lab):
    """Each FRR panel's query, variables filled as Grafana would (All routers),
    returns finite data from the lab's Prometheus for every router, with the
    labels its legend names."""
    targets = frr_panel_targets()
    assert {name.split(" [")[0] for name, _, _ in targets} >= {
        "BGP sessions established", "BGP prefixes received", "BGP peers", "BFD peers (FRR)"}
    now = time.time()
    values = panels.grafana_values(now - 300, now, 2, panels.seconds(monitor.FRR_SCRAPE_INTERVAL))
    routers = set(watched_lab.state.routers)

    def problems() -> list[str]:
        found = []
        for name, expr, legend in targets:
            series = watched_lab.query(panels.expand(expr, values))
            finite = [s for s in series if math.isfinite(float(s["value"][1]))]
            shown = {s["metric"].get("node") for s in finite}
            if shown != routers:
                found.append(f"{name}: no data for {sorted(routers - shown)}")
            wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            dropped = {label for s in finite for label in wanted - set(s["metric"])}
            if dropped:
                found.append(f"{name}: legend names labels the query drops: {sorted(dropped)}")
        return found
    wait_until(problems, SCRAPED_S, 1.0, "every FRR panel with data for every router")
    # converged: every router's sessions are all Established on the panel
    sessions = {n: len(r.interfaces) for n, r in watched_lab.state.routers.items()}
    expr = dict((n, e) for n, e, _ in targets)["BGP sessions established [A]"]

    def established_gaps() -> list[str]:
        shown = {s["metric"]["node"]: int(float(s["value"][1]))
                 for s in watched_lab.query(panels.expand(expr, values))
                 if s["metric"].get("afi") == "ipv4" and s["metric"].get("safi") == "unicast"}
        return [f"{n}: {shown.get(n)}/{want} established" for n, want in sessions.items()
                if shown.get(n) != want]
    wait_until(established_gaps, SCRAPED_S, 1.0, "the BGP panel showing every session established")
