"""Path liveness without a kernel: the probe budget, the health tracker
(arming, deadline, hold-down) and the probe packet as it goes on the wire."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN

from qpagent.core.inputs import PathHealthChanged
from qpagent.core.liveness import (DOWN, UNCHECKED, UP, HealthReading, HealthTracker,
                                   deadline_ns, probe_period_ns, probes_per_round)
from qpagent.sources.liveness import PROBE_MAGIC, PROBE_VNI, PathCounters, probe_packet

MS = 1_000_000
KEY = ("vxlan100", "10.0.0.2")
DEADLINE = 30 * MS
HOLD_DOWN = 1000 * MS


@pytest.mark.parametrize("paths, interval_ms, budget, per_round, period_ms", [
    (4, 10, 1000, 10, 10),      # 4 paths x 100/s fit in 1000/s: every interval
    (16, 10, 1000, 10, 20),     # 16 paths take turns 10 at a time
    (3, 10, 200, 2, 20),
    (1, 10, 50, 1, 10),         # never below one probe a round
])
def test_budget_sets_how_often_each_path_is_probed(paths, interval_ms, budget, per_round,
                                                   period_ms):
    assert probes_per_round(interval_ms, budget) == per_round
    assert probe_period_ns(paths, interval_ms, budget) == period_ms * MS
    assert deadline_ns(paths, interval_ms, budget, 3) == 3 * period_ms * MS


def reading(replies: int, last_ms: int | None) -> HealthReading:
    return HealthReading(replies, 0 if last_ms is None else last_ms * MS, 2 * MS)


def play(steps) -> list[tuple[int, int, bool]]:
    """steps: (now_ms, {path: (replies, last_reply_ms)}); the changes as
    (now_ms, path, healthy)."""
    tracker = HealthTracker(HOLD_DOWN)
    out = []
    for now_ms, paths in steps:
        readings = {(KEY, 0, p): reading(*r) for p, r in paths.items()}
        for change in tracker.observe(readings, {KEY: DEADLINE}, now_ms * MS, now_ms / 1e3):
            assert isinstance(change, PathHealthChanged) and change.key == KEY
            out.append((now_ms, change.path_index, change.healthy))
    return out


def test_a_vtep_that_never_answers_is_never_checked():
    assert play([(t, {0: (0, None), 1: (0, None)}) for t in range(0, 5000, 10)]) == []


def test_first_reply_arms_the_path_and_a_steady_path_stays_up():
    steps = [(t, {0: (t // 10, t - 1)}) for t in range(10, 2000, 10)]
    assert play(steps) == [(10, 0, True)]


def test_no_reply_within_the_deadline_is_down_and_one_late_round_is_not():
    steps = [(10, {0: (1, 9)}), (20, {0: (2, 19)}),
             (45, {0: (2, 19)}),          # 26 ms since the last reply: still within 30
             (50, {0: (3, 49)}),
             (75, {0: (3, 49)}), (81, {0: (3, 49)})]   # 32 ms: dead
    assert play(steps) == [(10, 0, True), (81, 0, False)]


def test_a_dead_path_is_back_only_after_answering_for_the_hold_down():
    steps = [(10, {0: (1, 9)}), (50, {0: (1, 9)})]                      # down at 50
    steps += [(t, {0: (t // 10, t - 1)}) for t in range(100, 600, 10)]   # answers again
    steps += [(700, {0: (60, 599)})]                                    # a miss: start over
    steps += [(t, {0: (t // 10, t - 1)}) for t in range(710, 1800, 10)]
    assert play(steps) == [(10, 0, True), (50, 0, False), (1710, 0, True)]


def test_a_path_that_never_answered_while_its_vtep_does_is_down_after_a_deadline():
    steps = [(t, {0: (t // 10, t - 1), 1: (0, None)}) for t in range(10, 100, 10)]
    assert play(steps) == [(10, 0, True), (50, 1, False)]


def test_tracker_states_and_forgetting_a_path():
    tracker = HealthTracker(HOLD_DOWN)
    path = (KEY, 0, 0)
    assert tracker.state(path) == UNCHECKED
    tracker.observe({path: reading(1, 10)}, {KEY: DEADLINE}, 10 * MS, 0.01)
    assert tracker.state(path) == UP
    tracker.observe({path: reading(1, 10)}, {KEY: DEADLINE}, 100 * MS, 0.1)
    assert tracker.state(path) == DOWN
    tracker.observe({}, {}, 110 * MS, 0.11)
    assert tracker.state(path) == UNCHECKED


def test_probe_packet_is_vxlan_with_the_paths_5_tuple_and_a_whole_probe_msg():
    raw = probe_packet("10.0.0.1", "10.0.0.2", 49160, vtep=3, path=5, seq=7, tx_ns=123456789)
    pkt = IP(raw)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[IP].len) == \
        ("10.0.0.1", "10.0.0.2", 64, len(raw))
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].chksum, pkt[UDP].len) == \
        (49160, 4789, 0, len(raw) - 20)
    assert (pkt[VXLAN].flags, pkt[VXLAN].vni) == (0x08, PROBE_VNI)
    msg = bytes(pkt[VXLAN].payload)
    assert msg == (PROBE_MAGIC.to_bytes(4, "big") + bytes([1, 0, 0, 0])
                   + (3).to_bytes(4, "little") + (5).to_bytes(4, "little")
                   + (7).to_bytes(4, "little") + bytes(4) + (123456789).to_bytes(8, "little"))


def test_loss_ratio_over_the_last_second():
    counters = PathCounters()
    assert counters.loss_ratio() is None
    for i in range(1, 201):                   # 2 s of probes every 10 ms
        counters.sent = i
        counters.record(i / 100, HealthReading(i if i <= 100 else 100 + (i - 100) // 2, 0, MS))
    assert counters.loss_ratio() == pytest.approx(0.5, abs=0.02)
