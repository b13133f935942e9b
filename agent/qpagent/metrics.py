"""Prometheus exporter: a collector that reads the agent's snapshot at scrape time.

Nothing is copied in the background: every scrape asks the agent, which reads
the BPF maps then. Per-QP series are bounded to the top N QPs by bytes.
"""

from __future__ import annotations

import logging
from typing import Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

from .config import parse_address
from .contract import PARSE_OUTCOME_NAMES

log = logging.getLogger(__name__)

# Reaction times (event seen -> maps updated), in seconds.
REACTION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
PARSE_OUTCOMES = PARSE_OUTCOME_NAMES


class MetricsError(RuntimeError):
    """The exporter cannot start; the message says why."""


class ReactionHistogram:
    """Reaction times as running totals: a Prometheus histogram must never
    go down, so it is not rebuilt from a bounded window of samples."""

    def __init__(self, bounds=REACTION_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)   # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_bound(bound), running))
        out.append(("+Inf", self.count))
        return out


class AgentCollector:
    """Turns `agent.snapshot(top_n)` and `agent.reaction_histogram` into metric families."""

    def __init__(self, agent, top_n: int | None = None):
        # top_n None lets the agent use its own configured agent.top_qps.
        self.agent = agent
        self.top_n = top_n
        self.fallback_node = str(getattr(agent, "node", ""))

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self.agent.snapshot(self.top_n)
            reactions = self.agent.reaction_histogram
        except Exception:
            # A scrape must not take the exporter down; say the agent could not answer.
            log.exception("snapshot for metrics failed")
            up = GaugeMetricFamily("qpagent_up", "1 if the agent answered this scrape",
                                   labels=["node"])
            up.add_metric([self.fallback_node], 0)
            yield up
            return
        node = str(snap.get("node") or self.fallback_node)
        yield from _families(node, snap, reactions)


def _families(node: str, snap: dict, reactions: ReactionHistogram) -> Iterable[Metric]:
    def gauge(name, doc, labels=()):
        return GaugeMetricFamily(name, doc, labels=["node", *labels])

    def counter(name, doc, labels=()):
        return CounterMetricFamily(name, doc, labels=["node", *labels])

    up = gauge("qpagent_up", "1 if the agent answered this scrape")
    up.add_metric([node], 1)
    yield up

    info = gauge("qpagent_info", "The agent's version", ["version"])
    info.add_metric([node, str(snap.get("version", ""))], 1)
    yield info

    # Paths per remote VTEP.
    path_labels = ("vtep", "path", "uplink")
    path_bytes = counter("qpagent_path_bytes", "Bytes steered onto a path", path_labels)
    path_packets = counter("qpagent_path_packets", "Packets steered onto a path", path_labels)
    path_qps = gauge("qpagent_path_qps", "RoCE QPs placed on a path", path_labels)
    path_alive = gauge("qpagent_path_alive", "1 if the path is usable", path_labels)
    for vtep in snap.get("vteps", []):
        for path in vtep.get("paths", []):
            labels = [node, str(vtep["address"]), str(path["index"]), str(path["uplink"])]
            path_bytes.add_metric(labels, path.get("bytes", 0))
            path_packets.add_metric(labels, path.get("packets", 0))
            path_qps.add_metric(labels, path.get("qps", 0))
            path_alive.add_metric(labels, 1 if path.get("alive") else 0)
    yield from (path_bytes, path_packets, path_qps, path_alive)

    # Liveness per path (only paths whose VTEP answers probes have RTT and loss).
    rtt = gauge("qpagent_path_rtt_seconds", "Round-trip time of the path's newest probe reply",
                path_labels)
    loss = gauge("qpagent_path_probe_loss_ratio",
                 "Probes without a reply over the last second", path_labels)
    deadline = gauge("qpagent_path_liveness_deadline_seconds",
                     "Silence after which the path is dead: max(interval x misses, "
                     "smoothed RTT + margin); absent when the path is not probed",
                     path_labels)
    healthy = gauge("qpagent_path_healthy",
                    "1 if the path answers probes, 0 if it stopped (unchecked paths: absent)",
                    path_labels)
    for vtep in snap.get("vteps", []):
        for path in vtep.get("paths", []):
            labels = [node, str(vtep["address"]), str(path["index"]), str(path["uplink"])]
            if path.get("rtt_ms") is not None:
                rtt.add_metric(labels, path["rtt_ms"] / 1e3)
            if path.get("loss_ratio") is not None:
                loss.add_metric(labels, path["loss_ratio"])
            if path.get("deadline_ms") is not None:
                deadline.add_metric(labels, path["deadline_ms"] / 1e3)
            if path.get("health") in ("up", "down"):
                healthy.add_metric(labels, 1 if path["health"] == "up" else 0)
    yield from (rtt, loss, deadline, healthy)

    repairs = counter("qpagent_repairs", "QPs moved off a failing path, by what told",
                      ["cause"])
    for cause, row in sorted((snap.get("repairs") or {}).items()):
        repairs.add_metric([node, str(cause)], row.get("total", 0))
    yield repairs

    imbalance = gauge("qpagent_imbalance_ratio",
                      "QPs on the busiest live path over ceil(QPs/live paths), the best possible (1 = balanced)",
                      ["vtep"])
    for vtep, ratio in sorted(snap.get("imbalance", {}).items()):
        if ratio is not None:
            imbalance.add_metric([node, str(vtep)], float(ratio))
    yield imbalance

    bfd = snap.get("bfd") or {}
    available = gauge("qpagent_bfd_available", "1 if BFD state can be read from FRR")
    available.add_metric([node], 1 if bfd.get("available") else 0)
    yield available
    peer_up = gauge("qpagent_bfd_peer_up", "1 if the BFD session is up", ["peer", "interface"])
    for peer in bfd.get("peers", []):
        peer_up.add_metric([node, str(peer.get("peer", "")), str(peer.get("interface") or "")],
                           1 if peer.get("status") == "up" else 0)
    yield peer_up

    replacements = counter("qpagent_replacements", "QP placements by reason", ["reason"])
    for reason, count in sorted(snap.get("replacements", {}).items()):
        replacements.add_metric([node, str(reason)], count)
    yield replacements

    yield _reaction_histogram(node, reactions)

    parse = counter("qpagent_parse_packets", "Packets by parse outcome",
                    ["interface", "hook", "outcome"])
    for row in snap.get("parse", []):
        for outcome in PARSE_OUTCOMES:
            parse.add_metric([node, str(row["interface"]), str(row["hook"]), outcome],
                             row.get(outcome, 0))
    yield parse

    for name, key, doc in (("qpagent_steer_events", "steer_events", "qp_steer data-plane events"),
                           ("qpagent_pin_events", "pin_events", "path_pin data-plane events"),
                           ("qpagent_reply_events", "reply_events",
                            "ACKs and NAKs path_probe read for the QPs it steers"),
                           ("qpagent_go_back_naks", "go_back_naks",
                            "NAKs handed to requesters whose QP left a dead path with data in flight")):
        family = counter(name, doc, ["event"])
        for event, count in sorted((snap.get(key) or {}).items()):
            family.add_metric([node, str(event)], count)
        yield family

    prog_labels = ("program", "interface")
    run_time = counter("qpagent_prog_run_time_seconds",
                       "Time spent in the BPF program (needs kernel.bpf_stats_enabled=1)", prog_labels)
    runs = counter("qpagent_prog_runs", "Runs of the BPF program (needs kernel.bpf_stats_enabled=1)",
                   prog_labels)
    for prog in snap.get("programs", []):
        labels = [node, str(prog["name"]), str(prog["interface"])]
        run_time.add_metric(labels, prog.get("run_time_ns", 0) / 1e9)
        runs.add_metric(labels, prog.get("run_cnt", 0))
    yield from (run_time, runs)

    qp_bytes = counter("qpagent_qp_bytes", "Bytes of the top QPs by bytes",
                       ["src", "dst", "dqp", "port", "path"])
    for qp in snap.get("qps", []):
        qp_bytes.add_metric([node, str(qp["src"]), str(qp["dst"]), str(qp["dqp"]),
                             str(qp["port"]), str(qp["path"])], qp.get("bytes", 0))
    yield qp_bytes

    # A host agent (host mode) counts QPs instead of steering them.
    flow_labels = ("interface", "hook", "src", "dst", "vni", "dqp")
    flow_packets = counter("qpagent_flow_qp_packets", "Packets of the top counted RoCE QPs",
                           flow_labels)
    flow_bytes = counter("qpagent_flow_qp_bytes", "Bytes of the top counted RoCE QPs", flow_labels)
    for row in snap.get("flow_qps", []):
        labels = [node] + ["" if row[k] is None else str(row[k]) for k in flow_labels]
        flow_packets.add_metric(labels, row.get("packets", 0))
        flow_bytes.add_metric(labels, row.get("bytes", 0))
    yield from (flow_packets, flow_bytes)

    qps = gauge("qpagent_qps", "RoCE QPs the agent steers")
    qps.add_metric([node], snap.get("qp_total", 0))
    yield qps


def _reaction_histogram(node: str, reactions: ReactionHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily("qpagent_reaction_seconds",
                                   "Time from a path event seen to the maps updated",
                                   labels=["node"])
    family.add_metric([node], reactions.cumulative(), sum_value=reactions.sum)
    return family


def _bound(value: float) -> str:
    return repr(float(value))


# ---------------------------------------------------------------- server

class MetricsServer:
    """The HTTP exporter; `port` is the one really bound (useful with port 0)."""

    def __init__(self, httpd, thread, registry):
        self._httpd, self._thread, self.registry = httpd, thread, registry

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)

    shutdown = stop


def start_metrics_server(address: str, agent, top_n: int | None = None) -> MetricsServer | None:
    """Serve /metrics on host:port from a thread; "" disables the exporter (returns None)."""
    if not address:
        return None
    try:
        host, port = parse_address(address, allow_any_port=True)
    except ValueError as exc:
        raise MetricsError(f"bad metrics address: {exc}") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent, top_n))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s/metrics", address)
    return MetricsServer(httpd, thread, registry)
