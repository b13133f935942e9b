"""The traffic engine between real processes in two network namespaces
joined by a veth: collectives complete with every byte verified, loss is
repaired by go-back-N, a path cut past the retry budget puts its QPs in
error and fails the job, bad input is a clear error. No lab needed."""
import os
import subprocess
import threading
import time

import pytest

from qplab.workloads.collective import run_collective
from qplab.workloads.driver import Engine, EngineError, Host, QpInError
from qplab.workloads.worker import EngineConfig
from workloads_netns import rx_bytes, silent_cut, veth_pair_namespaces

pytestmark = [pytest.mark.live, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

A = ("10.244.0.1", "10.244.0.3")
B = ("10.244.0.2", "10.244.0.4")


@pytest.fixture
def two_ns():
    with veth_pair_namespaces(addrs_a=A, addrs_b=B) as pair:
        yield pair


def four_hosts(ns_a, ns_b):
    return [Host("a1", A[0], ns_a, "A"), Host("a2", A[1], ns_a, "A"),
            Host("b1", B[0], ns_b, "B"), Host("b2", B[1], ns_b, "B")]


@pytest.mark.parametrize("pattern", ["ring", "hierarchical", "ps"])
def test_collective_completes_with_every_byte_verified(two_ns, pattern):
    size = (2 << 20) + 3                      # uneven chunks on purpose
    with Engine(four_hosts(*two_ns), EngineConfig(), qps_per_conn=3) as eng:
        res = run_collective(eng, pattern, size, iterations=2, msg_size=50_000)
    s = res["summary"]
    assert s["problems"] == []
    assert s["verified_bytes"] == s["expected_bytes"] == res["schedule_bytes"] * 2
    assert s["all_verified"]
    assert all(it["bad_packets"] == 0 for it in res["per_iteration"])
    # K QPs per connection, all used (messages striped round-robin)
    conns = {(q["src"], q["dst"]) for q in res["qps"]}
    assert len(res["qps"]) == 3 * len(conns)
    assert all(q["bytes_src_to_dst"] + q["bytes_dst_to_src"] > 0 for q in res["qps"])


def test_loss_on_the_wire_is_repaired(two_ns):
    """A shallow token bucket at the veth drops what overflows it, as a
    congested link does: go-back-N retransmits and every message still
    arrives intact."""
    ns_a, ns_b = two_ns
    for ns, dev in ((ns_a, "v0"), (ns_b, "v1")):
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                        "tbf", "rate", "100mbit", "burst", "16kb", "limit", "24kb"], check=True)
    cfg = EngineConfig(timeout_exp=12)         # 16.8 ms local ACK timeout, 7 retries
    with Engine(four_hosts(ns_a, ns_b)[::2], cfg, qps_per_conn=2) as eng:
        res = run_collective(eng, "ring", 1 << 20, iterations=2, msg_size=30_000)
    s = res["summary"]
    assert s["all_verified"], s["problems"]
    assert s["retransmitted_packets"] > 0
    assert sum(it["naks"] + it["timeouts"] for it in res["per_iteration"]) > 0


def test_fixed_policy_gives_every_qp_one_port_and_qpn_policy_varies(two_ns):
    hosts = four_hosts(*two_ns)
    with Engine(hosts, EngineConfig(), qps_per_conn=4, sport_policy="fixed") as eng:
        fixed = run_collective(eng, "ring", 64 << 10, iterations=1)
    with Engine(hosts, EngineConfig(), qps_per_conn=4, sport_policy="qpn") as eng:
        derived = run_collective(eng, "ring", 64 << 10, iterations=1)
    assert {q["sport"] for q in fixed["qps"]} == {0xC000}
    ports = {q["sport"] for q in derived["qps"]}
    assert len(ports) > len(derived["qps"]) // 2
    assert all(0xC000 <= p <= 0xFFFF for p in ports)
    assert fixed["summary"]["all_verified"] and derived["summary"]["all_verified"]


def test_unreachable_peer_fails_clearly(two_ns):
    ns_a, _ = two_ns
    hosts = [Host("a1", A[0], ns_a), Host("ghost", "10.244.0.99", ns_a)]
    with pytest.raises(EngineError, match="ghost"):
        with Engine(hosts, EngineConfig()) as eng:
            run_collective(eng, "ring", 4096, iterations=1)


def cut_when_flowing(ns_a, ip_a, ns_b, ip_b, threshold, deadline_s=30.0):
    """In the background: once ns_b has received `threshold` bytes, cut the
    path between the two addresses for good (the namespaces go at the end)."""
    box = {}

    def watch():
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if rx_bytes(ns_b, "v1") >= threshold:
                silent_cut(ns_a, ip_a, ns_b, ip_b)
                box["cut_at"] = time.monotonic()
                return
            time.sleep(0.01)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, box


def test_a_path_cut_past_the_retry_budget_fails_the_job_with_its_qps_in_error(two_ns):
    """Ring a1 -> a2 -> b1 -> b2 -> a1; the a2 <-> b1 path is cut silently in
    the middle of the run and stays cut. The QPs of that connection with data
    outstanding run out of retries and go to error; the job fails at once,
    not at the driver's timeout, and the result names them."""
    ns_a, ns_b = two_ns
    # 134 ms x (1 + 3 retries): well above a busy machine's scheduling hiccups
    cfg = EngineConfig(timeout_exp=15, retry_cnt=3, rate_mbit=40)
    watcher, box = cut_when_flowing(ns_a, A[1], ns_b, B[0], threshold=1 << 20)
    with Engine(four_hosts(ns_a, ns_b), cfg, qps_per_conn=2) as eng:
        with pytest.raises(QpInError) as info:
            run_collective(eng, "ring", 8 << 20, iterations=2, timeout=60)
        with pytest.raises(EngineError, match="failed earlier"):
            run_collective(eng, "ring", 4096, iterations=1)
    watcher.join()
    assert "cut_at" in box, "the run never got going"
    e = info.value
    assert e.qps, "no QP reported in error"
    for q in e.qps:
        assert {q["host"], q["peer"]} == {"a2", "b1"}            # only the cut connection
        assert q["error"].startswith("retry_cnt 3 exhausted: local ACK timeout (134.2 ms)")
        assert q["error"].endswith("after 3 retries")
        assert q["error_at"] > box["cut_at"]
    summary = e.result["summary"]
    assert summary["qps_in_error"] == e.qps
    assert summary["failed_iteration"] == 0 and "in error" in summary["job_failed"]
    assert not summary["all_verified"]
    t = 0.134217728
    assert e.result["retry"] == {"timeout_exp": 15, "retry_cnt": 3, "ack_timeout_s": pytest.approx(t),
                                 "budget_s": pytest.approx(4 * t)}
    # The QP gave up only after the whole budget of silence, not earlier.
    failed = [q for q in e.reply["qps"] if q["error"]]
    for q in failed:
        since, until = q["stalls"][-1]
        assert until == q["error_at"] and until - since >= 4 * t - 1e-6


def test_engine_config_presets_and_validation():
    nccl = EngineConfig.preset("nccl", window=64)
    assert (nccl.timeout_exp, nccl.retry_cnt, nccl.window) == (20, 7, 64)
    assert nccl.ack_timeout == pytest.approx(4.294967296)
    assert EngineConfig.from_dict({"retry_preset": "tight", "retry_cnt": 2}).retry_summary() == {
        "timeout_exp": 14, "retry_cnt": 2, "ack_timeout_s": pytest.approx(0.067108864),
        "budget_s": pytest.approx(3 * 0.067108864)}
    assert EngineConfig(rto=0.25).ack_timeout == 0.25
    with pytest.raises(ValueError, match="retry_cnt 8"):
        EngineConfig(retry_cnt=8)
    with pytest.raises(ValueError, match="unknown retry preset 'fast'"):
        EngineConfig.preset("fast")


def test_pacing_holds_a_host_to_its_rate(two_ns):
    from qplab.workloads.driver import verify
    from qplab.workloads.schedules import Transfer
    ns_a, ns_b = two_ns
    hosts = [Host("a1", A[0], ns_a), Host("b1", B[0], ns_b)]
    size, rate = 1 << 20, 40.0
    with Engine(hosts, EngineConfig(rate_mbit=rate), qps_per_conn=2) as eng:
        schedule = [[Transfer("a1", "b1", size)]]
        replies = eng.run_iteration(schedule, 0, 1 << 16)
    took = replies["a1"]["end"] - replies["a1"]["start"]
    assert verify(schedule, replies) == (size, [])
    wire_floor = size * 8 / (rate * 1e6)          # payload alone, headers make it longer
    assert wire_floor * 0.95 <= took <= wire_floor * 3
