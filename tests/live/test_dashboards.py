"""The Grafana dashboard, checked panel by panel against a real Prometheus.

The dashboard is built by qpagent.dashboard (grafana-foundation-sdk);
tests/unit/test_dashboard_build.py checks that the committed JSON is what it
builds, and this file checks the JSON against the real thing.

Grafana itself does not run here, so the test does what Grafana would: it
expands each panel's template variables and sends the query to a real
Prometheus (2.x, Debian's) that scrapes a real `qpagent run` on two VTEPs
with real FRR BFD sessions and end-to-end liveness probes (answered by a
second agent's data plane on the far VTEP), while RoCEv2 traffic for several
QPs flows and after an uplink has failed. Every agent panel must come back
valid, with data, with the labels its legend names, and every metric the
dashboard uses must exist in the agent's scrape, so a renamed metric or label
breaks this test. The FRR panels need prometheus-frr-exporter: the lab's
Prometheus checks them (tests/lab/test_lab_prometheus.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import twovtep as twovtep_module
from qt6_prometheus import (PROMETHEUS, Prometheus, dashboard_variables, expand, free_ports,
                            http_get, panel_targets)
from agent_config import write_agent_config
from processes import stop_group, wait_until
from roce_wire import roce_frame, send_frames
from twovtep import VXLAN_DEV, sh, two_vteps

from qpagent import bpfsys, netnsutil
from qplab import frr
from qplab.experiments import panels

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "qpagent.json"
PROVISIONING = REPO / "dashboards" / "provisioning"
QPAGENT = str(Path(sys.executable).parent / "qpagent")
PREFIX = "qt6-"
K_QPS = 6
FIRST_QP = 0x600
FAILED_UPLINK = "up0"
# What a re-placement off the cut path is called: the agent moved it on the
# link event, or the data plane on missed probes, whichever saw the cut first.
REPAIR_REASONS = "dead_path|liveness"

BFD_CONFIG = """\
frr defaults datacenter
hostname {name}
bfd
{peers}
exit
"""

BFD_PEER = """\
 peer {address} interface {uplink}
  detect-multiplier 3
  receive-interval 100
  transmit-interval 100
 exit"""


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# ---------------------------------------------------------------- the file itself

def test_dashboard_is_well_formed():
    """Unique ids, every panel on the grid without overlap, every query on
    the ${DS_PROMETHEUS} data source, the node variable from qpagent_info."""
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 36
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    bad_sources = {f"{title} [{ref}]": t.get("datasource") for title, ref, t in panel_targets(dash)
                   if t.get("datasource") != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}
    assert bad_sources == {}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["node"]["query"] == "label_values(qpagent_info, node)"
    assert variables["router"]["query"] == "label_values(frr_collector_up, node)"
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]


def test_provisioning_points_at_the_dashboard():
    import yaml
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert [d["type"] for d in source["datasources"]] == ["prometheus"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "qpagent.yaml").read_text())
    assert [p["type"] for p in provider["providers"]] == ["file"]
    assert provider["providers"][0]["options"]["path"]


# ---------------------------------------------------------------- the live stack

class BfdRouters:
    """FRR (zebra + bfdd, ...) in both VTEP namespaces, one BFD session per link."""

    def __init__(self):
        self.names: list[str] = []

    def start(self, topo) -> None:
        for side, other in ((topo.a, topo.b), (topo.b, topo.a)):
            name = side.vtep_ns
            peers = "\n".join(BFD_PEER.format(address=other.link_ips[i], uplink=up)
                              for i, up in enumerate(side.uplinks))
            self.names.append(name)   # before anything exists, so stop() finds it
            frr.write_config(name, BFD_CONFIG.format(name=name, peers=peers))
            for launcher in frr.start_daemons(name, name):
                launcher.communicate(timeout=10)   # the daemons fork away; reap the launchers
        for name in self.names:
            wait_until(f"FRR daemons of {name}", lambda: frr.daemons_ready(name), deadline_s=20)
            frr.apply_config(name)

    def peers(self, name: str) -> dict[str, str]:
        try:
            return {p.get("interface"): p.get("status") for p in frr.vtysh_json(name, "show bfd peers json")}
        except frr.FrrError:
            return {}

    def stop(self) -> None:
        pids = [pid for name in self.names for pid in frr.daemon_pids(name)]
        _signal_all(pids, signal.SIGTERM)
        end = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < end:
            time.sleep(0.1)
        _signal_all([p for p in pids if _alive(p)], signal.SIGKILL)
        for name in self.names:
            frr.remove_files(name)


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Agent:
    """`qpagent run` on one VTEP. The watched one (side A) exports metrics,
    reads FRR and probes its paths; the far one (side B) only has to be
    there, so that its data plane (path_probe) answers those probes."""

    def __init__(self, side, metrics_port: int | None = None, frr_name: str | None = None,
                 liveness: bool = False):
        self.workdir = tempfile.mkdtemp(prefix="qt6-agent-")
        self.node = f"{side.vtep_ns}"
        self.topo_ns = side.vtep_ns
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""
        self.socket = os.path.join(self.workdir, "agent.sock")
        self.log_path = Path(self.workdir, "agent.log")
        config = self.config = Path(self.workdir, "agent.toml")
        write_agent_config(config, node=self.node, socket=self.socket, vxlan=VXLAN_DEV,
                           uplinks=side.uplinks,
                           metrics_address=f"127.0.0.1:{metrics_port}" if metrics_port else "",
                           top_qps=20, poll_interval=0.1, frr_namespace=frr_name,
                           liveness=liveness)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", side.vtep_ns, QPAGENT, "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def answering(self) -> bool:
        """The control socket answers (the data plane is attached by then)."""
        self.alive()
        return subprocess.run([QPAGENT, "status", "--socket", self.socket, "--json"],
                              capture_output=True, timeout=10).returncode == 0

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-3000:]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"qpagent exited with {self.proc.returncode}:\n{self.log_text()}")
        return True

    def stop(self) -> None:
        try:
            stop_group(self.proc, 15)
            # Stopping leaves the data plane pinned and steering: remove it.
            subprocess.run(["ip", "netns", "exec", self.topo_ns, QPAGENT, "purge",
                            "--config", str(self.config)], capture_output=True, timeout=60)
        finally:
            self._log.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


class RoceTraffic:
    """One RoCEv2 frame per QP from hostA every `every_s`, until stopped."""

    def __init__(self, topo, qps, every_s: float = 0.1):
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._frames = [roce_frame(topo.a.host_mac, topo.b.host_mac, topo.a.host_ip,
                                   topo.b.host_ip, dqp=qp, psn=0) for qp in qps]
        self._thread = threading.Thread(target=self._run, args=(topo.a.host_ns, every_s), daemon=True)
        self._thread.start()

    def _run(self, netns: str, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                send_frames(netns, "eth0", self._frames)
            except OSError as exc:
                self.errors.append(str(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Stack:
    """Handles on everything the live tests query."""

    def __init__(self, topo, agent: Agent, prometheus: Prometheus):
        self.topo, self.agent, self.prometheus = topo, agent, prometheus
        self.qps_before_cut: dict[str, float] = {}
        self.started = time.time()   # the agent scraped, traffic about to flow

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (None: no series)."""
        result = self.prometheus.query(expr).get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def stack():
    """Two VTEPs with BFD, the agent in vtepA exporting metrics, Prometheus
    beside it, RoCE traffic flowing, and then one uplink taken down."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF, FRR)")
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail("the prometheus server binary is missing (Debian package prometheus)")
    with pytest.MonkeyPatch.context() as mp, bpfsys.bpf_stats():
        # Our own namespace prefix, so parallel suites never collide.
        mp.setattr(twovtep_module, "PREFIX", PREFIX)
        with two_vteps(2, tag=uuid.uuid4().hex[:6]) as topo:
            routers = far_agent = agent = prometheus = traffic = None
            try:
                routers = BfdRouters()
                routers.start(topo)
                frr_name = topo.a.vtep_ns
                wait_until("BFD up on every link",
                           lambda: set(routers.peers(frr_name).values()) == {"up"}
                           and len(routers.peers(frr_name)) == len(topo.a.uplinks),
                           deadline_s=30)
                # One agent at a time: two starting at once race on mounting bpffs.
                far_agent = Agent(topo.b)
                wait_until("the far agent answering", far_agent.answering, deadline_s=120)
                metrics_port, prom_port = free_ports(topo.a.vtep_ns, 2)
                agent = Agent(topo.a, metrics_port, frr_name, liveness=True)
                prometheus = Prometheus(topo.a.vtep_ns, [f"127.0.0.1:{metrics_port}"], prom_port)
                wait_until("Prometheus ready", prometheus.ready, deadline_s=30)
                wait_until("the agent's exporter scraped as up",
                           lambda: agent.alive() and set(prometheus.target_health().values()) == {"up"},
                           deadline_s=120, every_s=0.5)   # BCC compiles first: slow on a busy machine
                traffic = RoceTraffic(topo, range(FIRST_QP, FIRST_QP + K_QPS))
                live = Stack(topo, agent, prometheus)
                wait_until(f"{K_QPS} QPs in Prometheus",
                           lambda: agent.alive() and live.value(f'qpagent_qps{{node="{agent.node}"}}') == K_QPS,
                           deadline_s=20, every_s=0.2)
                # Every path answers its probes (the far agent's path_probe) before the cut.
                wait_until("a probe RTT for every path in Prometheus",
                           lambda: agent.alive() and len(prometheus.query(
                               f'qpagent_path_rtt_seconds{{node="{agent.node}"}} > 0'
                           )["data"]["result"]) == len(topo.a.uplinks),
                           deadline_s=30, every_s=0.5)
                live.qps_before_cut = {
                    r["metric"]["uplink"]: float(r["value"][1]) for r in
                    prometheus.query(f'qpagent_path_qps{{node="{agent.node}"}}')["data"]["result"]}
                # The failure: re-placement and reaction series only exist after one.
                sh(f"ip -n {topo.a.vtep_ns} link set {FAILED_UPLINK} down")
                try:
                    wait_until("a dead-path re-placement and a timed reaction in Prometheus",
                               lambda: agent.alive()
                               and (live.value(f'sum(qpagent_replacements_total{{reason=~"{REPAIR_REASONS}"}})') or 0) > 0
                               and (live.value("sum(qpagent_reaction_seconds_count)") or 0) > 0,
                               deadline_s=20, every_s=0.2)
                except AssertionError as exc:
                    seen = {m: prometheus.query(f'{m}{{node="{agent.node}"}}')["data"]["result"]
                            for m in ("qpagent_replacements_total", "qpagent_repairs_total",
                                      "qpagent_path_qps", "qpagent_reaction_seconds_count")}
                    raise AssertionError(f"{exc}\nbefore the cut: {live.qps_before_cut}\n"
                                         f"after: {json.dumps(seen)}\n{agent.log_text()}") from None
                assert traffic.errors == []
                yield live
            finally:
                stop_all(traffic, prometheus, agent, far_agent, routers)


def stop_all(*parts) -> None:
    """Stop every part that was started, even when one of them fails to stop."""
    failures = []
    for part in parts:
        if part is None:
            continue
        try:
            part.stop()
        except Exception as exc:  # noqa: BLE001 - keep tearing down, report at the end
            failures.append(f"{type(part).__name__}: {exc}")
    if failures:
        raise RuntimeError("teardown failed: " + "; ".join(failures))


def is_frr_panel(expr: str) -> bool:
    """Panels fed by prometheus-frr-exporter (checked against the lab's Prometheus)."""
    return "frr_" in expr


def expanded_targets(dash: dict, node: str, router: str = ".*"):
    """(panel [refId], the query Grafana sends, legend) of every agent panel."""
    values = dashboard_variables(dash, {"node": node, "router": router})
    for title, ref, target in panel_targets(dash):
        if not is_frr_panel(target["expr"]):
            yield f"{title} [{ref}]", expand(target["expr"], values), target.get("legendFormat", "")


def _problem(answer: dict, legend: str) -> str | None:
    """Why a panel would show nothing useful (None: it shows data)."""
    if answer.get("status") != "success":
        return f"query failed: {answer.get('errorType')}: {answer.get('error')}"
    series = answer["data"]["result"]
    if not series:
        return "no series"
    if not any(math.isfinite(float(s["value"][1])) for s in series):
        return "only NaN/Inf values"
    wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    missing = wanted - set().union(*(s["metric"] for s in series))
    if missing:
        return f"legend names labels the query drops: {sorted(missing)}"
    return None


def test_every_panel_query_returns_data(stack):
    dash = load_dashboard()
    targets = list(expanded_targets(dash, stack.agent.node))
    assert len(targets) >= 20
    # the new per-path liveness panels are among them
    assert {"Path RTT [A]", "Path probe loss [A]", "Path state (probes) [A]",
            "QP repairs by cause [A]", "QP acknowledgements [A]"} <= {name for name, _, _ in targets}

    def problems():
        found = {name: _problem(stack.prometheus.query(expr), legend) for name, expr, legend in targets}
        return {name: f"{why} -- {expr}" for (name, expr, _), why in zip(targets, found.values()) if why}

    # Rates need a few scrapes after the failure; poll, then compare whole.
    try:
        wait_until("every panel with data", lambda: not problems(), deadline_s=20, every_s=1)
    except AssertionError:
        pass
    assert problems() == {}
    for name, expr, _ in targets:   # what each panel showed, for the log (pytest -s)
        series = stack.prometheus.query(expr)["data"]["result"]
        values = [float(s["value"][1]) for s in series]
        finite = [v for v in values if math.isfinite(v)]
        print(f"{name:40s} {len(series):3d} series, max {max(finite):.6g}")


def test_panels_show_the_failed_uplink(stack):
    """What an operator looks for after a cut: the path dead, its BFD
    session down, its QPs moved (dead_path or liveness), the reaction time
    measured."""
    dash = load_dashboard()
    exprs = {name: expr for name, expr, _ in expanded_targets(dash, stack.agent.node)}

    def by_uplink(name: str, label: str) -> dict[str, float]:
        result = stack.prometheus.query(exprs[name])["data"]["result"]
        return {s["metric"][label]: float(s["value"][1]) for s in result}

    uplinks = stack.topo.a.uplinks
    alive = {u: 0.0 if u == FAILED_UPLINK else 1.0 for u in uplinks}

    failed_path = {s["metric"]["uplink"]: s["metric"]["path"] for s in
                   stack.prometheus.query(exprs["Path alive [A]"])["data"]["result"]}[FAILED_UPLINK]

    def top_qps() -> dict[int, str]:
        """QP -> path, as the top-QPs panel lists them."""
        result = stack.prometheus.query(exprs["Top QPs by throughput [A]"])["data"]["result"]
        return {int(s["metric"]["dqp"]): s["metric"]["path"] for s in result}

    def panels_now() -> dict:
        return {"alive": by_uplink("Path alive [A]", "uplink"),
                "bfd": by_uplink("BFD peers [A]", "interface"),
                "carrying traffic": {u for u, bps in by_uplink("Throughput per path [A]", "uplink").items()
                                     if bps > 0},
                "top QPs": sorted(top_qps()),
                "QPs on the failed path": sorted(q for q, path in top_qps().items() if path == failed_path),
                "answering probes": {u for u, up in by_uplink("Path state (probes) [A]", "uplink").items()
                                     if up == 1},
                # the failed path may keep the RTT of its last reply: only survivors count
                "survivors with an RTT under 1 s": {u for u, rtt in by_uplink("Path RTT [A]", "uplink").items()
                                                    if u != FAILED_UPLINK and 0 < rtt < 1}}

    survivors = set(uplinks) - {FAILED_UPLINK}
    want = {"alive": alive, "bfd": alive, "carrying traffic": survivors,
            "top QPs": list(range(FIRST_QP, FIRST_QP + K_QPS)), "QPs on the failed path": [],
            "answering probes": survivors, "survivors with an RTT under 1 s": survivors}

    # Rates need one window ($__rate_interval) after the cut to forget the old path.
    try:
        wait_until("the dashboard to show the cut", lambda: panels_now() == want,
                   deadline_s=30, every_s=0.5)
    except AssertionError:
        pass
    assert panels_now() == want
    qps = by_uplink("QPs per path [A]", "uplink")
    assert (qps.get(FAILED_UPLINK), sum(qps.values())) == (0, K_QPS), qps

    # Every reason is exported at 0 from the start, so the cut shows as an
    # increase. Whichever sees the cut first moves the QPs that were on the
    # failed uplink: the agent on the link event (dead_path) or the data
    # plane on missed probes (liveness); between them, each QP once.
    final = {s["metric"]["reason"]: float(s["value"][1]) for s in stack.prometheus.query(
        f'qpagent_replacements_total{{node="{stack.agent.node}",reason=~"{REPAIR_REASONS}"}}'
    )["data"]["result"]}
    assert sum(final.values()) == stack.qps_before_cut[FAILED_UPLINK] > 0, final
    # The panel, evaluated just after a reason's first step, shows that step.
    reason = max(final, key=final.get)
    series = stack.prometheus.query(
        f'qpagent_replacements_total{{node="{stack.agent.node}",reason="{reason}"}}[10m]'
    )["data"]["result"][0]["values"]
    cut_time, moved = next((t, float(v)) for t, v in series if float(v) > 0)
    at_cut = stack.prometheus.api("/api/v1/query", query=exprs["QP re-placements by reason [A]"],
                                  time=cut_time + 1)["data"]["result"]
    shown = {s["metric"]["reason"]: float(s["value"][1]) for s in at_cut}
    # increase() extrapolates over its window, so it may read a little above the step.
    assert moved <= shown[reason] <= 2 * moved, (reason, shown)
    p99 = stack.prometheus.query(exprs["Agent reaction time [B]"])["data"]["result"]
    assert 0 < float(p99[0]["value"][1]) <= 1.0, p99


def dashboard_metric_names(dash: dict) -> set[str]:
    return {name for _, _, target in panel_targets(dash)
            for name in re.findall(r"\bqpagent_\w+", target["expr"])}


def test_every_dashboard_metric_is_exported(stack):
    """A metric renamed in the agent (or misspelled here) breaks this test."""
    status, body = http_get(stack.topo.a.vtep_ns, stack.agent.metrics_url)
    assert status == 200
    exported = {sample.name for family in text_string_to_metric_families(body.decode())
                for sample in family.samples}
    used = dashboard_metric_names(load_dashboard())
    assert len(used) >= 12
    assert used - exported == set()


def test_node_variable_lists_the_agent(stack):
    """label_values(qpagent_info, node), as Grafana's Prometheus source asks it."""
    answer = stack.prometheus.api("/api/v1/label/node/values", **{"match[]": "qpagent_info"})
    assert answer["status"] == "success"
    assert answer["data"] == [stack.agent.node]



def test_report_panels_render_from_the_real_prometheus(stack, tmp_path):
    """The report's key panels (qplab.experiments.panels), range queries over
    everything this Prometheus saw since traffic started: every one has data,
    drawn to a PNG."""
    t0, t1 = stack.started, time.time()
    with netnsutil.enter(stack.topo.a.vtep_ns):   # Prometheus listens inside the namespace
        fetched = {k.name: series for k, series in
                   panels.fetch_panels(stack.prometheus.base, t0, t1, scrape_interval="1s").items()}
        drawn = panels.render_panels(stack.prometheus.base, t0, t1, tmp_path, scrape_interval="1s")

    def finite(series) -> list[float]:
        return [v for s in series for _, v in s.points if math.isfinite(v)]
    assert {name: len(finite(series)) > 0 for name, series in fetched.items()} == {
        "wan-load": True, "qps-per-path": True, "repairs": True, "path-rtt": True}
    last_qps = sum(s.points[-1][1] for s in fetched["qps-per-path"])
    assert last_qps == K_QPS
    survivors = set(stack.topo.a.uplinks) - {FAILED_UPLINK}
    assert {u for u in survivors if any(f"({u})" in s.name for s in fetched["path-rtt"])} == survivors
    assert [p.name for p in drawn] == [f"panel-{name}.png" for name in fetched]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in drawn)
