"""Path liveness without a kernel: the probe budget, the health tracker
(arming, deadline, hold-down) and the probe packet as it goes on the wire."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN

from qpagent.core.inputs import PathHealthChanged
from qpagent.core.inputs import PathRttSeen
from qpagent.core.liveness import (DOWN, UNCHECKED, UP, HealthReading, HealthTracker,
                                   RttEstimator, deadline_changed, deadline_ns, probe_period_ns,
                                   probes_per_round, rtt_deadline_ns)
from qpagent.sources.liveness import (PROBE_MAGIC, PROBE_VNI, PathCounters, probe_packet,
                                      rtt_changes)

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


MISSES = 3
PERIOD_MS = 10


def reading(replies: int, last_ms: int | None, now_ms: int, since_ms: int = 0) -> HealthReading:
    """path_health as the data plane keeps it for a punctual prober: a
    request leaves every PERIOD_MS (from since_ms, when the path was first
    probed), and those that left after the last reply are unanswered."""
    start = since_ms if last_ms is None else last_ms
    first = -(-start // PERIOD_MS) * PERIOD_MS
    unanswered = list(range(first, now_ms + 1, PERIOD_MS))
    silent_since = unanswered[MISSES - 1] * MS if len(unanswered) >= MISSES else 0
    return HealthReading(replies, 0 if last_ms is None else last_ms * MS, 2 * MS,
                         len(unanswered), silent_since)


def play(steps) -> list[tuple[int, int, bool]]:
    """steps: (now_ms, {path: (replies, last_reply_ms)}); the changes as
    (now_ms, path, healthy)."""
    tracker = HealthTracker(HOLD_DOWN, MISSES)
    since: dict[int, int] = {}
    out = []
    for now_ms, paths in steps:
        readings = {(KEY, 0, p): reading(*r, now_ms, since.setdefault(p, now_ms))
                    for p, r in paths.items()}
        for change in tracker.observe(readings, {KEY: DEADLINE}, now_ms * MS, now_ms / 1e3):
            assert isinstance(change, PathHealthChanged) and change.key == KEY
            out.append((now_ms, change.path_index, change.healthy))
    return out


def test_a_vtep_that_never_answers_is_never_checked():
    assert play([(t, {0: (0, None), 1: (0, None)}) for t in range(0, 5000, 10)]) == []


def test_first_reply_arms_the_path_and_a_steady_path_stays_up():
    steps = [(t, {0: (t // 10, t - 1)}) for t in range(10, 2000, 10)]
    assert play(steps) == [(10, 0, True)]


def test_misses_requests_unanswered_past_the_deadline_is_down_and_one_late_reply_is_not():
    steps = [(10, {0: (1, 9)}), (20, {0: (2, 19)}),
             (45, {0: (2, 19)}),          # 3 unanswered, the third for 5 ms only
             (50, {0: (3, 49)}),
             (75, {0: (3, 49)}),          # 50, 60 and 70 unanswered
             (101, {0: (3, 49)})]         # the third (70 ms) for 31 ms: dead
    assert play(steps) == [(10, 0, True), (101, 0, False)]


def test_a_dead_path_is_back_only_after_answering_for_the_hold_down():
    steps = [(10, {0: (1, 9)}), (70, {0: (1, 9)})]                      # down at 70
    steps += [(t, {0: (t // 10, t - 1)}) for t in range(100, 600, 10)]   # answers again
    steps += [(700, {0: (60, 599)})]                                    # misses: start over
    steps += [(t, {0: (t // 10, t - 1)}) for t in range(710, 1800, 10)]
    assert play(steps) == [(10, 0, True), (70, 0, False), (1710, 0, True)]


def test_a_path_that_never_answered_while_its_vtep_does_is_down_after_deadline_and_hold_down():
    steps = [(t, {0: (t // 10, t - 1), 1: (0, None)}) for t in range(10, 1100, 10)]
    # Its third request left at 30 ms: dead 30 ms and a hold-down after that.
    assert play(steps) == [(10, 0, True), (1070, 1, False)]


def test_tracker_states_and_forgetting_a_path():
    tracker = HealthTracker(HOLD_DOWN, MISSES)
    path = (KEY, 0, 0)
    assert tracker.state(path) == UNCHECKED
    tracker.observe({path: reading(1, 10, 10)}, {KEY: DEADLINE}, 10 * MS, 0.01)
    assert tracker.state(path) == UP
    tracker.observe({path: reading(1, 10, 100)}, {KEY: DEADLINE}, 100 * MS, 0.1)
    assert tracker.state(path) == DOWN
    tracker.observe({}, {}, 110 * MS, 0.11)
    assert tracker.state(path) == UNCHECKED


def test_a_path_is_armed_by_a_fresh_reply_only():
    """A path probed again after a pause still shows its old replies."""
    steps = [(t, {0: (t // 10, t - 1), 1: (5, 3)}) for t in range(100, 130, 10)]
    steps += [(130, {0: (13, 129), 1: (6, 125)})]
    assert play(steps) == [(100, 0, True), (130, 1, True)]


def test_a_path_that_joins_the_probed_set_late_gets_a_whole_deadline():
    steps = [(t, {0: (t // 10, t - 1)}) for t in range(2000, 2500, 10)]
    steps += [(t, {0: (t // 10, t - 1), 1: (0, None)}) for t in range(2500, 3600, 10)]
    assert play(steps) == [(2000, 0, True), (3560, 1, False)]


def test_a_prober_that_stalls_kills_no_path():
    """A busy host held the prober up: what it did not send cannot go
    unanswered. One request left before the stall and was lost; the two
    that leave when it resumes are not lost yet, however old the last reply."""
    tracker = HealthTracker(HOLD_DOWN, MISSES)
    path = (KEY, 0, 0)
    tracker.observe({path: HealthReading(1, 10 * MS, 2 * MS)}, {KEY: DEADLINE}, 10 * MS, 0.01)
    assert tracker.state(path) == UP
    # The request of 12 ms went unanswered; nothing else left until 200 ms.
    stalled = HealthReading(1, 10 * MS, 2 * MS, unanswered=1)
    assert tracker.observe({path: stalled}, {KEY: DEADLINE}, 200 * MS, 0.2) == []
    # Requests at 200 and 210 ms: three unanswered, the third for 5 ms.
    resumed = HealthReading(1, 10 * MS, 2 * MS, unanswered=3, silent_since_ns=210 * MS)
    assert tracker.observe({path: resumed}, {KEY: DEADLINE}, 215 * MS, 0.215) == []
    assert tracker.state(path) == UP
    # Still unanswered 31 ms after the third left: that is the path's.
    out = tracker.observe({path: resumed}, {KEY: DEADLINE}, 241 * MS, 0.241)
    assert [(c.path_index, c.healthy, c.silent_ns) for c in out] == [(0, False, 31 * MS)]


def test_a_path_whose_data_is_acknowledged_is_slow_not_dead():
    """Behind a deep queue the probes wait as long as the data: while the
    QPs' data on a path is acknowledged within its deadline, unanswered
    requests do not kill it; once the ACKs stop too, they do (as
    qp_steer's path_silent)."""
    tracker = HealthTracker(HOLD_DOWN, MISSES)
    path = (KEY, 0, 0)
    tracker.observe({path: HealthReading(1, 10 * MS, 2 * MS)}, {KEY: DEADLINE}, 10 * MS, 0.01)
    queued = HealthReading(1, 10 * MS, 2 * MS, unanswered=5, silent_since_ns=40 * MS,
                           acked_ns=300 * MS)
    assert tracker.observe({path: queued}, {KEY: DEADLINE}, 310 * MS, 0.31) == []
    assert tracker.state(path) == UP
    out = tracker.observe({path: queued}, {KEY: DEADLINE}, 300 * MS + DEADLINE + MS, 0.4)
    assert [(c.path_index, c.healthy, c.silent_ns) for c in out] == \
        [(0, False, DEADLINE + MS)]


def test_every_path_silent_at_once_is_a_stall_not_a_failure():
    steps = [(t, {0: (t // 10, t - 1), 1: (t // 10, t - 1)}) for t in range(10, 100, 10)]
    steps += [(t, {0: (9, 89), 1: (9, 89)}) for t in range(100, 200, 10)]   # both silent
    steps += [(t, {0: (t // 10, t - 1), 1: (9, 89)}) for t in range(200, 300, 10)]
    # Path 1 stays silent while path 0 answers again: now that is path 1's.
    assert play(steps) == [(10, 0, True), (10, 1, True), (200, 1, False)]


def test_a_per_path_deadline_wins_over_the_vtep_one():
    tracker = HealthTracker(HOLD_DOWN, MISSES)
    a, b = (KEY, 0, 0), (KEY, 0, 1)
    deadlines = {KEY: DEADLINE, (KEY, 1): 120 * MS}      # b crosses a 100 ms RTT WAN
    tracker.observe({a: reading(1, 10, 10), b: reading(1, 10, 10)}, deadlines, 10 * MS, 0.01)
    out = tracker.observe({a: reading(1, 10, 100), b: reading(1, 10, 100)}, deadlines,
                          100 * MS, 0.1)
    assert [(c.path_index, c.healthy) for c in out] == [(0, False)]
    assert tracker.state(b) == UP


def test_rtt_deadline_is_the_longer_of_misses_and_smoothed_rtt_plus_margin():
    assert rtt_deadline_ns(30 * MS, 0, 10 * MS) == 30 * MS        # no RTT yet
    assert rtt_deadline_ns(30 * MS, 5 * MS, 10 * MS) == 30 * MS
    assert rtt_deadline_ns(30 * MS, 100 * MS, 10 * MS) == 110 * MS
    assert deadline_changed(100 * MS, 111 * MS) and not deadline_changed(100 * MS, 105 * MS)


def test_smoothed_rtt_and_margin_follow_rfc_6298():
    est = RttEstimator()
    est.sample(100 * MS)
    assert (est.srtt_ns, est.rttvar_ns) == (100 * MS, 50 * MS)
    for _ in range(60):
        est.sample(100 * MS)
    assert est.srtt_ns == 100 * MS and est.margin_ns(10 * MS) == 10 * MS   # steady: the floor
    est.sample(180 * MS)
    assert est.srtt_ns == 110 * MS and est.margin_ns(10 * MS) == 80 * MS   # jitter widens it


def test_the_prober_tells_the_core_of_rtt_changes_worth_a_new_deadline():
    counters = PathCounters()
    counters.record(0.01, HealthReading(1, 0, 100 * MS))
    (first,) = rtt_changes(KEY, 2, counters)
    assert first == PathRttSeen(KEY, 2, 100 * MS, 200 * MS)
    counters.record(0.02, HealthReading(2, 0, 100 * MS))
    assert rtt_changes(KEY, 2, counters)           # margin shrank by more than a tenth
    counters.record(0.03, HealthReading(2, 0, 500 * MS))   # no new reply: no sample
    assert rtt_changes(KEY, 2, counters) == []


def test_probe_packet_is_vxlan_with_the_paths_5_tuple_and_a_whole_probe_msg():
    raw = probe_packet("10.0.0.1", "10.0.0.2", 49160, vtep=3, path=5, seq=7, tx_ns=123456789,
                       dscp=48)
    pkt = IP(raw)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[IP].len, pkt[IP].tos) == \
        ("10.0.0.1", "10.0.0.2", 64, len(raw), 0xC0)
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
