"""The Prometheus exporter, scraped over real HTTP on loopback.

A small agent object answers with a snapshot a real agent produced
(fixtures/agent_status.json) in place of the BPF-backed agent (the live
agent test covers that one); everything else is real. Expected values are
read from the snapshot, so the tests say which field feeds which series.
"""

import json
import socket
import urllib.request

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qpagent.contract import HOOK_NAMES, PARSE_OUTCOME_NAMES, PIN_EVENT_NAMES, STEER_EVENT_NAMES
from qpagent.core.actions import REPLACEMENT_REASONS
from qpagent.metrics import MetricsError, ReactionHistogram, start_metrics_server

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# `qpagent status --json` of a real agent: two paths, one of them cut, QPs
# moved off it (fixtures/capture_agent_status.py regenerates it).
SNAPSHOT = json.loads((FIXTURES / "agent_status.json").read_text())
NODE = SNAPSHOT["node"]


class FixedAgent:
    node = NODE

    def __init__(self, snapshot=SNAPSHOT, samples=(0.0004, 0.002, 0.3)):
        self._snapshot = snapshot
        self.reaction_histogram = ReactionHistogram()
        for seconds in samples:
            self.reaction_histogram.observe(seconds)
        self.top_asked = []

    def snapshot(self, top_n):
        self.top_asked.append(top_n)
        return self._snapshot


class BrokenAgent(FixedAgent):
    def snapshot(self, top_n):
        raise RuntimeError("map read failed")


@pytest.fixture
def exporter():
    servers = []

    def start(agent, top_n=None):
        server = start_metrics_server("127.0.0.1:0", agent, top_n=top_n)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def scrape(server) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def pick(samples: dict, name: str) -> dict:
    """Samples of one name as {tuple of sorted (label, value) without node: value}."""
    out = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            assert ("node", NODE) in labels, (name, labels)
            out[tuple(sorted((k, v) for k, v in labels if k != "node"))] = value
    return out


def test_scrape_asks_the_agent_for_its_top_n(exporter):
    agent = FixedAgent()
    server = exporter(agent, top_n=7)
    scrape(server)
    assert agent.top_asked == [7]
    scrape(server)
    assert agent.top_asked == [7, 7]   # read at each scrape, not cached


def test_default_top_n_is_left_to_the_agent(exporter):
    agent = FixedAgent()
    scrape(exporter(agent))
    assert agent.top_asked == [None]   # the agent applies its configured agent.top_qps


def path_labels(vtep: dict, path: dict) -> tuple:
    return (("path", str(path["index"])), ("uplink", path["uplink"]), ("vtep", vtep["address"]))


def test_path_series(exporter):
    samples = scrape(exporter(FixedAgent()))
    paths = [(path_labels(v, p), p) for v in SNAPSHOT["vteps"] for p in v["paths"]]
    assert pick(samples, "qpagent_path_bytes_total") == {k: p["bytes"] for k, p in paths}
    assert pick(samples, "qpagent_path_packets_total") == {k: p["packets"] for k, p in paths}
    assert pick(samples, "qpagent_path_qps") == {k: p["qps"] for k, p in paths}
    assert pick(samples, "qpagent_path_alive") == {k: int(p["alive"]) for k, p in paths}
    # The snapshot was taken after a cut: one path dead, one carrying every QP.
    assert sorted(pick(samples, "qpagent_path_alive").values()) == [0, 1]
    assert sorted(pick(samples, "qpagent_path_qps").values()) == [0, SNAPSHOT["qp_total"]]
    assert pick(samples, "qpagent_imbalance_ratio") == {
        (("vtep", vtep),): ratio for vtep, ratio in SNAPSHOT["imbalance"].items()}


def test_bfd_series_without_frr(exporter):
    """The snapshot's agent ran without FRR: BFD reads as unavailable and
    no peer series is made up (tests/live/test_dashboards.py has real peers)."""
    samples = scrape(exporter(FixedAgent()))
    assert pick(samples, "qpagent_bfd_available") == {(): 0}
    assert pick(samples, "qpagent_bfd_peer_up") == {}


def test_replacements_by_every_reason(exporter):
    samples = scrape(exporter(FixedAgent()))
    replacements = pick(samples, "qpagent_replacements_total")
    assert {dict(k)["reason"] for k in replacements} == set(REPLACEMENT_REASONS)
    assert replacements == {(("reason", r),): n for r, n in SNAPSHOT["replacements"].items()}
    assert replacements[(("reason", "dead_path"),)] > 0   # the cut moved QPs


def test_data_plane_events_by_every_name(exporter):
    samples = scrape(exporter(FixedAgent()))
    for metric, key, names in (("qpagent_steer_events_total", "steer_events", STEER_EVENT_NAMES),
                               ("qpagent_pin_events_total", "pin_events", PIN_EVENT_NAMES)):
        events = pick(samples, metric)
        assert {dict(k)["event"] for k in events} == set(names), metric
        assert events == {(("event", e),): n for e, n in SNAPSHOT[key].items()}
    # Next hops were forgotten before the traffic: path_pin had the kernel resolve one.
    assert pick(samples, "qpagent_pin_events_total")[(("event", "redirected_neigh"),)] > 0


def test_parse_outcomes_by_hook_and_interface(exporter):
    samples = scrape(exporter(FixedAgent()))
    parse = pick(samples, "qpagent_parse_packets_total")
    assert parse == {
        (("hook", row["hook"]), ("interface", row["interface"]), ("outcome", outcome)): row[outcome]
        for row in SNAPSHOT["parse"] for outcome in PARSE_OUTCOME_NAMES}
    hooks = {dict(k)["hook"] for k in parse}
    assert hooks == set(HOOK_NAMES.values()) == {"xdp_ingress", "tc_egress", "qp_steer", "path_pin",
                                                 "path_probe"}
    roce = {(dict(k)["hook"], dict(k)["interface"]): v for k, v in parse.items()
            if dict(k)["outcome"] == "roce"}
    assert roce[("qp_steer", "vxlan100")] == sum(q["packets"] for q in SNAPSHOT["qps"])


def test_program_series_in_base_units(exporter):
    samples = scrape(exporter(FixedAgent()))
    progs = {(("interface", p["interface"]), ("program", p["name"])): p
             for p in SNAPSHOT["programs"]}
    assert {dict(k)["program"] for k in progs} == {"qp_steer", "path_pin", "path_probe", "probe_sent",
                                                    "flow_stats_tc", "flow_stats_xdp"}
    assert pick(samples, "qpagent_prog_runs_total") == {k: p["run_cnt"] for k, p in progs.items()}
    assert pick(samples, "qpagent_prog_run_time_seconds_total") == {
        k: pytest.approx(p["run_time_ns"] / 1e9) for k, p in progs.items()}


def test_qp_series_and_totals(exporter):
    samples = scrape(exporter(FixedAgent()))
    assert pick(samples, "qpagent_qp_bytes_total") == {
        (("dqp", str(q["dqp"])), ("dst", q["dst"]), ("path", str(q["path"])),
         ("port", str(q["port"])), ("src", q["src"])): q["bytes"] for q in SNAPSHOT["qps"]}
    assert len(SNAPSHOT["qps"]) == SNAPSHOT["qp_total"] > 0
    assert pick(samples, "qpagent_qps") == {(): SNAPSHOT["qp_total"]}
    assert pick(samples, "qpagent_info") == {(("version", SNAPSHOT["version"]),): 1}
    assert pick(samples, "qpagent_up") == {(): 1}


def test_reaction_histogram_buckets(exporter):
    samples = scrape(exporter(FixedAgent(samples=[0.0004, 0.002, 0.3, 2.0])))
    buckets = {dict(labels)["le"]: value for labels, value in
               pick(samples, "qpagent_reaction_seconds_bucket").items()}
    assert buckets == {"0.0005": 1, "0.001": 1, "0.0025": 2, "0.005": 2, "0.01": 2,
                       "0.025": 2, "0.05": 2, "0.1": 2, "0.25": 2, "0.5": 3, "1.0": 3,
                       "+Inf": 4}
    assert pick(samples, "qpagent_reaction_seconds_count") == {(): 4}
    assert pick(samples, "qpagent_reaction_seconds_sum")[()] == pytest.approx(2.3024)


def test_every_series_carries_node(exporter):
    samples = scrape(exporter(FixedAgent()))
    names = {name for name, _ in samples}
    assert all(name.startswith("qpagent_") for name in names), names
    assert all(dict(labels).get("node") == NODE for _, labels in samples)


def test_empty_snapshot_scrapes(exporter):
    empty = {"node": NODE, "version": "0.1.0", "vteps": [], "qps": [], "qp_total": 0,
             "bfd": {"available": False, "reason": "FRR not found", "peers": []}}
    samples = scrape(exporter(FixedAgent(snapshot=empty, samples=[])))
    assert pick(samples, "qpagent_bfd_available") == {(): 0}
    assert pick(samples, "qpagent_reaction_seconds_count") == {(): 0}
    assert pick(samples, "qpagent_path_bytes_total") == {}


def test_failing_agent_reports_down_instead_of_breaking_the_scrape(exporter):
    server = exporter(BrokenAgent())
    samples = scrape(server)
    assert [(name, dict(labels)["node"], value) for (name, labels), value in samples.items()] \
        == [("qpagent_up", NODE, 0)]


def test_disabled_address_starts_nothing():
    assert start_metrics_server("", FixedAgent()) is None


@pytest.mark.parametrize("address, message", [
    ("9464", "bad metrics address: expected host:port (e.g. 127.0.0.1:9464 or [::1]:9464), got '9464'"),
    ("127.0.0.1:99999", "bad metrics address: port must be 1..65535, got 99999"),
])
def test_bad_address_is_a_clear_error(address, message):
    with pytest.raises(MetricsError) as caught:
        start_metrics_server(address, FixedAgent())
    assert str(caught.value) == message


def test_port_in_use_is_a_clear_error():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(MetricsError) as caught:
            start_metrics_server(f"127.0.0.1:{port}", FixedAgent())
        assert str(caught.value) == f"cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    finally:
        holder.close()
