"""The Prometheus exporter, scraped over real HTTP on loopback.

A small agent object with a fixed snapshot stands in for the BPF-backed
agent (the live agent test covers that one); everything else is real.
"""

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qpagent.metrics import MetricsError, ReactionHistogram, start_metrics_server

SNAPSHOT = {
    "node": "qt5-leaf1", "version": "0.1.0", "pid": 42, "uptime_s": 12.5,
    "programs": [
        {"name": "qp_steer", "hook": "tc egress", "interface": "vxlan100", "ifindex": 5,
         "prog_id": 101, "run_cnt": 1000, "run_time_ns": 2_500_000},
        {"name": "flow_stats_xdp", "hook": "xdp ingress", "interface": "eth1", "ifindex": 3,
         "prog_id": 102, "run_cnt": 10, "run_time_ns": 500},
    ],
    "vteps": [{"index": 0, "address": "10.255.0.2", "paths": [
        {"index": 0, "uplink": "eth1", "gateway": "10.1.0.1", "alive": True,
         "ports": [49152, 49153], "qps": 2, "packets": 300, "bytes": 450000},
        {"index": 1, "uplink": "eth2", "gateway": "10.1.1.1", "alive": False,
         "ports": [49154], "qps": 0, "packets": 7, "bytes": 700},
    ]}],
    "qp_total": 2,
    "qps": [
        {"src": "192.168.10.1", "dst": "192.168.10.2", "dqp": 17, "vtep": "10.255.0.2",
         "path": 0, "uplink": "eth1", "port": 49152, "packets": 200, "bytes": 300000, "moves": 1},
        {"src": "192.168.10.1", "dst": "192.168.10.2", "dqp": 18, "vtep": "10.255.0.2",
         "path": 0, "uplink": "eth1", "port": 49153, "packets": 100, "bytes": 150000, "moves": 0},
    ],
    "imbalance": {"10.255.0.2": 1.0},
    "bfd": {"available": True, "reason": None, "peers": [
        {"peer": "10.1.0.1", "interface": "eth1", "status": "up", "diagnostic": "ok"},
        {"peer": "10.1.1.1", "interface": "eth2", "status": "down",
         "diagnostic": "control detection time expired"},
    ]},
    "events": [],
    "replacements": {"new": 2, "dead_path": 1},
    "reaction_ms": {"count": 3, "p50": 2.0, "p99": 300.0, "max": 300.0},
    "parse": [{"interface": "vxlan100", "hook": "tc egress", "roce": 290, "not_roce": 5,
               "not_ip": 3, "truncated": 1, "fragment": 0, "ipv6_ext": 0, "bad_bth": 2}],
    "steer_events": {"placed_new": 2, "placed_dead": 1, "hash_set": 290, "no_vtep": 0,
                     "no_live_path": 0},
    "pin_events": {"on_fib_link": 200, "redirected": 90, "fib_failed": 0, "not_vxlan": 4},
    "warnings": [],
}


class FixedAgent:
    node = "qt5-leaf1"

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
            assert ("node", "qt5-leaf1") in labels, (name, labels)
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


def test_path_series(exporter):
    samples = scrape(exporter(FixedAgent()))
    eth1 = (("path", "0"), ("uplink", "eth1"), ("vtep", "10.255.0.2"))
    eth2 = (("path", "1"), ("uplink", "eth2"), ("vtep", "10.255.0.2"))
    assert pick(samples, "qpagent_path_bytes_total") == {eth1: 450000, eth2: 700}
    assert pick(samples, "qpagent_path_packets_total") == {eth1: 300, eth2: 7}
    assert pick(samples, "qpagent_path_qps") == {eth1: 2, eth2: 0}
    assert pick(samples, "qpagent_path_alive") == {eth1: 1, eth2: 0}
    assert pick(samples, "qpagent_imbalance_ratio") == {(("vtep", "10.255.0.2"),): 1.0}


def test_bfd_series(exporter):
    samples = scrape(exporter(FixedAgent()))
    assert pick(samples, "qpagent_bfd_available") == {(): 1}
    assert pick(samples, "qpagent_bfd_peer_up") == {
        (("interface", "eth1"), ("peer", "10.1.0.1")): 1,
        (("interface", "eth2"), ("peer", "10.1.1.1")): 0,
    }


def test_event_counters(exporter):
    samples = scrape(exporter(FixedAgent()))
    assert pick(samples, "qpagent_replacements_total") == {
        (("reason", "dead_path"),): 1, (("reason", "new"),): 2}
    assert pick(samples, "qpagent_steer_events_total") == {
        (("event", "placed_new"),): 2, (("event", "placed_dead"),): 1,
        (("event", "hash_set"),): 290, (("event", "no_vtep"),): 0,
        (("event", "no_live_path"),): 0}
    assert pick(samples, "qpagent_pin_events_total") == {
        (("event", "on_fib_link"),): 200, (("event", "redirected"),): 90,
        (("event", "fib_failed"),): 0, (("event", "not_vxlan"),): 4}
    parse = pick(samples, "qpagent_parse_packets_total")
    assert parse == {
        (("hook", "tc egress"), ("interface", "vxlan100"), ("outcome", outcome)): value
        for outcome, value in [("roce", 290), ("not_roce", 5), ("not_ip", 3), ("truncated", 1),
                               ("fragment", 0), ("ipv6_ext", 0), ("bad_bth", 2)]}


def test_program_series_in_base_units(exporter):
    samples = scrape(exporter(FixedAgent()))
    steer = (("interface", "vxlan100"), ("program", "qp_steer"))
    xdp = (("interface", "eth1"), ("program", "flow_stats_xdp"))
    assert pick(samples, "qpagent_prog_runs_total") == {steer: 1000, xdp: 10}
    assert pick(samples, "qpagent_prog_run_time_seconds_total") == {steer: 0.0025, xdp: 5e-07}


def test_qp_series_and_totals(exporter):
    samples = scrape(exporter(FixedAgent()))
    assert pick(samples, "qpagent_qp_bytes_total") == {
        (("dqp", "17"), ("dst", "192.168.10.2"), ("path", "0"), ("port", "49152"),
         ("src", "192.168.10.1")): 300000,
        (("dqp", "18"), ("dst", "192.168.10.2"), ("path", "0"), ("port", "49153"),
         ("src", "192.168.10.1")): 150000,
    }
    assert pick(samples, "qpagent_qps") == {(): 2}
    assert pick(samples, "qpagent_info") == {(("version", "0.1.0"),): 1}
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
    assert all(dict(labels).get("node") == "qt5-leaf1" for _, labels in samples)


def test_empty_snapshot_scrapes(exporter):
    empty = {"node": "qt5-leaf1", "version": "0.1.0", "vteps": [], "qps": [], "qp_total": 0,
             "bfd": {"available": False, "reason": "FRR not found", "peers": []}}
    samples = scrape(exporter(FixedAgent(snapshot=empty, samples=[])))
    assert pick(samples, "qpagent_bfd_available") == {(): 0}
    assert pick(samples, "qpagent_reaction_seconds_count") == {(): 0}
    assert pick(samples, "qpagent_path_bytes_total") == {}


def test_failing_agent_reports_down_instead_of_breaking_the_scrape(exporter):
    server = exporter(BrokenAgent())
    samples = scrape(server)
    assert [(name, dict(labels)["node"], value) for (name, labels), value in samples.items()] \
        == [("qpagent_up", "qt5-leaf1", 0)]


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
