"""Pure parts of the experiment: the VXLAN/RoCE frame parser of the WAN
sniffer, rates and totals from link counter samples, the alpha-beta model,
the failover timeline, and the report rendered from a results record."""
import json

import pytest
from scapy.contrib.roce import BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from qplab.experiments import analysis, observe, report
from qplab.workloads import model


def vxlan_roce(dqpn=0x123456, inner_dport=4791, outer_dport=4789):
    return bytes(Ether() / IP(src="10.255.0.3", dst="10.255.0.9") /
                 UDP(sport=50000, dport=outer_dport) / VXLAN(vni=100) /
                 Ether() / IP(src="10.100.0.11", dst="10.100.0.21") /
                 UDP(sport=0xC001, dport=inner_dport) / BTH(opcode=4, dqpn=dqpn, psn=1) / Raw(b"x" * 64))


def test_sniffer_parses_vxlan_roce_frames():
    f = vxlan_roce()
    assert observe.parse_vxlan_roce(f) == ("10.100.0.11", "10.100.0.21", 0x123456, len(f))


@pytest.mark.parametrize("frame", [
    vxlan_roce(inner_dport=4792),            # inner UDP, not RoCE
    vxlan_roce(outer_dport=4790),            # not VXLAN
    vxlan_roce()[:70],                       # truncated
    b"",
    bytes(Ether() / IP() / UDP()),
])
def test_sniffer_ignores_other_frames(frame):
    assert observe.parse_vxlan_roce(frame) is None


SAMPLES = [
    {"t": 100.0, "w1": {"dc1->dc2": 0, "dc2->dc1": 0}, "w2": {"dc1->dc2": 0, "dc2->dc1": 0}},
    {"t": 101.0, "w1": {"dc1->dc2": 1_000_000, "dc2->dc1": 10}, "w2": {"dc1->dc2": 250_000, "dc2->dc1": 10}},
    {"t": 102.0, "w1": {"dc1->dc2": 1_000_000, "dc2->dc1": 20}, "w2": {"dc1->dc2": 1_250_000, "dc2->dc1": 20}},
]


def test_rates_and_totals_from_counter_samples():
    assert observe.rates(SAMPLES) == [
        {"t": 101.0, "w1": {"dc1->dc2": 8e6, "dc2->dc1": 80.0}, "w2": {"dc1->dc2": 2e6, "dc2->dc1": 80.0}},
        {"t": 102.0, "w1": {"dc1->dc2": 0.0, "dc2->dc1": 80.0}, "w2": {"dc1->dc2": 8e6, "dc2->dc1": 80.0}},
    ]
    assert observe.totals(SAMPLES) == {"w1": {"dc1->dc2": 1_000_000, "dc2->dc1": 20},
                                       "w2": {"dc1->dc2": 1_250_000, "dc2->dc1": 20}}
    assert analysis.busiest_ratio(observe.totals(SAMPLES)) == {"dc1->dc2": 1.111, "dc2->dc1": 1.0}


def test_alpha_beta_model_ring():
    net = model.Net(wan_links=4, wan_rate_bps=100e6, wan_delay_s=0.005, host_rate_bps=1e9,
                    qps_per_conn=4, window_pkts=10_000, mtu=1024)
    # perfect placement: 4 QPs on 4 links = 400 Mbit/s for the WAN hop
    assert model.wan_conn_bps(net) == pytest.approx(400e6)
    t = model.ring_time(8, 8 << 20, net)
    assert t == pytest.approx(14 * (0.005 + (1 << 20) / 50e6))
    ideal = model.ideal("ring", [4, 4], 8 << 20, net)
    assert ideal["busbw_Bps"] == pytest.approx((8 << 20) / t * 14 / 8)
    # the window caps a QP: 16 x 1 KiB per 10.4 ms round trip
    small = model.Net(**{**net.__dict__, "window_pkts": 16})
    assert model.wan_conn_bps(small) == pytest.approx(4 * 16 * 1024 * 8 / 0.0104)
    assert model.ideal("ps", [4, 4], 1, net) is None


def test_failover_timeline_from_a_record():
    t0 = 1000.0
    rec = {
        "failure": {"link": "w1", "t_blackhole": t0, "t_restore": t0 + 3},
        "bfd": [{"t": t0 + 0.31, "router": "r1", "peer": "p", "from": "up", "to": "down"}],
        "agents": {"leaf1": {"events_after_failure": [{"time": t0 + 0.35, "kind": "reaction"}]}},
        # 80 Mbit/s until the cut, nothing for 0.5 s, then 80 Mbit/s again
        "wan_samples": [{"t": t0 - 1 + 0.1 * i, "w1": {"x": int(1e6 * (i if i <= 10 else max(10, i - 5)))}}
                        for i in range(25)],
        "result": {"clock_offset": 500.0, "per_iteration": [
            {"t_start": 499.0, "stalls": [{"from": 0.5, "to": 1.6}, {"from": 0.2, "to": 0.4}]}]},
    }
    tl = analysis.failover_timeline(rec)
    assert tl == {"link": "w1", "bfd_down_s": 0.31, "agent_reaction_s": 0.35,
                  "wan_rate_recovered_s": 0.6, "qps_recovered_s": 0.6, "stalled_qps": 1,
                  "restored_s": 3.0}


def test_report_renders_tables_and_plots(tmp_path):
    def run(mode, failure, links):
        name = f"{mode}-ring-d5ms-l0pct-{'fail' if failure else 'ok'}"
        per_iter = [{"duration_s": d, "stalls": [], "t_start": 0.0} for d in (1.0, 1.2, 1.1)]
        return {"name": name, "scenario": {"mode": mode, "pattern": "ring", "delay_ms": 5.0,
                                           "loss_pct": 0.0, "failure": failure},
                "rank_dcs": {"a": "dc1", "b": "dc2"},
                "result": {"per_iteration": per_iter}, "wan_samples": SAMPLES,
                "wan_bytes": observe.totals(SAMPLES),
                "qp_links": [{"from": "a", "to": "b", "main_link": l,
                              "main_link_after": ("w1" if l == "w2" else "w2") if failure else None}
                             for l in links],
                "failure": {"link": "w1", "t_blackhole": 101.5} if failure else None,
                "timeline": {"link": "w1", "bfd_down_s": 0.3, "agent_reaction_s": None,
                             "qps_recovered_s": 0.7, "wan_rate_recovered_s": 0.6} if failure else None,
                "time_lost_s": 0.5 if failure else 0.0}
    runs = [run("kernel", False, ["w1", "w1"]), run("qpagent", False, ["w1", "w2"]),
            run("kernel", True, ["w2", "w2"])]
    rows = [{"name": r["name"], "median_iteration_s": 1.1, "median_busbw_gbps": 0.05,
             "ideal_busbw_gbps": 0.2, "busiest_link_ratio": {"dc1->dc2": 1.1},
             "retransmitted_packets": 3, "time_lost_s": r["time_lost_s"], "all_verified": True}
            for r in runs]
    in_error = [{"host": "a", "qpn": 257, "peer": "b", "sport": 49153, "error": "retry exceeded",
                 "error_at": 3.0, "timeouts": 8, "retries": 7}]
    failed = run("qpagent", True, ["w1", "w2"])
    failed.update(name="qpagent-ring-d20ms-l0pct-fail", scenario={**failed["scenario"], "delay_ms": 20.0},
                  error="job failed: QP in error", job_failed=True, qps_in_error=in_error,
                  time_lost_s=None)
    runs.append(failed)
    rows += analysis.headline([{**failed, "result": {"summary": {"failed_iteration": 3}}}],
                              None, None)["rows"]
    results = {"runs": runs, "headline": {"rows": rows}, "elapsed_s": 12.0,
               "settings": {"size": 1 << 20, "qps_per_conn": 2, "msg_size": 65536, "sport_policy": "qpn",
                            "wan_rate_mbit": 50, "wan_buffer_ms": 400,
                            "engine": {"mtu": 1024, "window": 64, "rto": None,
                                       "timeout_exp": 20, "retry_cnt": 7}},
               "model": {"qps_per_conn": 2, "wan_links": 2, "wan_rate_bps": 50e6,
                         "window_pkts": 64, "mtu": 1024, "host_rate_bps": 1e9}}
    json.dumps(results)
    md = report.write_report(results, tmp_path).read_text()
    assert "local ACK timeout 4.29e+03 ms (timeout 20), retry_cnt 7" in md
    assert "| kernel-ring-d5ms-l0pct-ok | 1.100 | 50.0 | 200.0 | dc1->dc2 1.1 | 3 | 0.00 | True | 0 |" in md
    assert "| qpagent-ring-d20ms-l0pct-fail | job failed in iteration 3 | | | | | | | 1 |" in md
    assert md.split("## QPs in error")[1].split("\n")[4] == \
        "| qpagent-ring-d20ms-l0pct-fail | a | 257 | b | 49153 | 7 | 8 | retry exceeded |"
    section = md.split("**no failure**")[1].split("**with the failure")[0]
    assert "| w1 | dc1->dc2 | 2 | 1.0 | 1 | 1.0 |" in section
    assert "| w2 | dc1->dc2 | 0 | 1.2 | 1 | 1.2 |" in section
    after = md.split("**with the failure")[1].split("![")[0]
    # after the cut the table counts where the QPs went: both from w2 to w1
    assert "| w1 | dc1->dc2 | 2 | 1.0 | - | - |" in after
    assert "| w2 | dc1->dc2 | 0 | 1.2 | - | - |" in after
    assert "| kernel-ring-d5ms-l0pct-fail | w1 | 300 ms | - | 700 ms | 600 ms | 0.50 s |" in md
    for png in ("wan-load-ring-d5-l0.png", "completion-times.png", "failover-timeline.png",
                "busbw-vs-model.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"({png})" in md


def test_qp_links_attributes_each_data_direction_before_and_after_a_cut():
    from qplab.workloads.driver import Host
    hosts = [Host("a", "10.0.0.1", None, "dc1"), Host("b", "10.0.0.2", None, "dc2")]
    result = {"qps": [{"src": "a", "dst": "b", "lqpn": 11, "rqpn": 22, "sport": 0xC001, "index": 0,
                       "bytes_src_to_dst": 1000, "bytes_dst_to_src": 0}]}
    seen = {
        (0, "w1", "10.0.0.1", "10.0.0.2", 22): [90, 1.0, 2.0],    # data a->b before the cut
        (0, "w2", "10.0.0.1", "10.0.0.2", 22): [10, 1.5, 1.6],
        (1, "w2", "10.0.0.1", "10.0.0.2", 22): [50, 2.5, 3.0],    # after the cut
        (0, "w3", "10.0.0.2", "10.0.0.1", 11): [80, 1.0, 3.0],    # ACKs b->a: no data that way
    }
    assert analysis.qp_links(seen, result, hosts) == [{
        "from": "a", "to": "b", "dqpn": 22, "sport": 0xC001, "index": 0, "bytes": 1000,
        "links": {"w1": {"packets": 90, "first": 1.0, "last": 2.0},
                  "w2": {"packets": 10, "first": 1.5, "last": 1.6}},
        "links_after": {"w2": {"packets": 50, "first": 2.5, "last": 3.0}},
        "main_link": "w1", "main_link_after": "w2"}]


def test_run_cli_parses_hosts_and_rejects_bad_ones():
    from qplab.workloads.driver import Host
    from qplab.experiments.run import parse_hosts
    assert parse_hosts("a=10.0.0.1@ns1/dc1, b=10.0.0.2") == [
        Host("a", "10.0.0.1", "ns1", "dc1"), Host("b", "10.0.0.2", None, "")]
    for bad in ("a=10.0.0.1", "a10.0.0.1,b=1.2.3.4", ""):
        with pytest.raises(ValueError):
            parse_hosts(bad)


def test_engine_never_imports_the_lab_or_the_experiments():
    """The layering: experiments -> lab API and engine; the engine -> nothing above it."""
    import ast
    from pathlib import Path

    import qplab.workloads
    above = []
    for path in sorted(Path(qplab.workloads.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            above += [f"{path.name}: {n}" for n in names
                      if n.startswith("..") or (n.startswith("qplab") and not n.startswith("qplab.workloads"))]
    assert above == []


def test_short_link_names_name_the_dcs_beyond_dc1_and_dc2():
    assert report._short("wan-dc1-border1-dc2-border2") == "b1-b2"
    assert report._short("wan-dc1-border1-dc3-border1") == "dc1b1-dc3b1"
    assert report._short("w1") == "w1"


def test_capacity_section_sets_byte_shares_beside_capacity_shares():
    def run(mode, bytes_by_link):
        return {"scenario": {"mode": mode, "failure": False},
                "wan_rates": {"wan-dc1-border1-dc2-border1": 15.0, "wan-dc1-border2-dc2-border2": 5.0,
                              "wan-dc1-border1-dc3-border1": 5.0},
                "wan_bytes": {l: {"dc1->dc2" if "dc2" in l else "dc1->dc3": b}
                              for l, b in bytes_by_link.items()}}
    runs = [run("kernel", {"wan-dc1-border1-dc2-border1": 500, "wan-dc1-border2-dc2-border2": 500,
                           "wan-dc1-border1-dc3-border1": 10}),
            run("qpagent", {"wan-dc1-border1-dc2-border1": 750, "wan-dc1-border2-dc2-border2": 250,
                            "wan-dc1-border1-dc3-border1": 10})]
    md = report.capacity_section(runs)
    assert "| b1-b1 | dc1->dc2 | 15 | 0.75 | 0.50 | 0.75 |" in md
    assert "| b2-b2 | dc1->dc2 | 5 | 0.25 | 0.50 | 0.25 |" in md
    assert "| dc1b1-dc3b1 | dc1->dc3 | 5 | 1.00 | 1.00 | 1.00 |" in md
    equal = [{**r, "wan_rates": dict.fromkeys(r["wan_rates"], 5.0)} for r in runs]
    assert report.capacity_section(equal) == []
