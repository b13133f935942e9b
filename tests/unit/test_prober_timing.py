"""ProberTiming: a prober that falls behind never lets the data plane hold
its own silence against a path."""

from qpagent.sources.liveness import ProberTiming

MS = 1_000_000
DEADLINES = [50 * MS, 80 * MS]


def punctual(timing: ProberTiming, start: int, rounds: int, send: int = MS) -> int:
    """`rounds` rounds every 10 ms from `start`, each sending for `send`; the next start."""
    for _ in range(rounds):
        timing.round(start, start + send)
        start += 10 * MS
    return start


def test_silence_is_believed_only_after_a_whole_deadline_of_punctual_rounds():
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 8)            # 70 ms of rounds: not yet 80
    assert timing.believe_until(start - 10 * MS, DEADLINES) is None
    start = punctual(timing, start, 2)
    # Half the tightest deadline past the round's start.
    assert timing.believe_until(start - 10 * MS, DEADLINES) == start - 10 * MS + 25 * MS


def test_a_round_whose_sends_take_longer_than_an_interval_is_a_stall():
    """The round started on time, but its last probe left 45 ms late: that
    path's replies will be 45 ms late too."""
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    assert timing.believe_until(start - 10 * MS, DEADLINES) is not None
    timing.round(start, start + 45 * MS)
    assert timing.believe_until(start, DEADLINES) is None
    assert timing.probing_since == start + 45 * MS
    start = punctual(timing, start + 46 * MS, 8)
    assert timing.believe_until(start - 10 * MS, DEADLINES) is None
    start = punctual(timing, start, 2)
    assert timing.believe_until(start - 10 * MS, DEADLINES) is not None
    # The round after it started 46 ms after it: late, a stall of its own.
    assert timing.snapshot()["stalls"] == 2
    assert timing.snapshot()["worst_send_ms"] == 45.0


def test_a_late_round_is_a_stall_and_is_counted():
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    start += 30 * MS                                  # 40 ms since the last start
    timing.round(start, start + MS)
    assert timing.probing_since == start + MS
    assert timing.believe_until(start, DEADLINES) is None
    assert timing.snapshot() == {"rounds": 21, "probes_sent": 0, "late_rounds": 1, "stalls": 1,
                                 "worst_round_gap_ms": 40.0, "worst_send_ms": 1.0}


def test_a_round_a_little_late_is_counted_but_is_no_stall():
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    timing.round(start + 8 * MS, start + 9 * MS)     # 18 ms since the last start
    assert timing.snapshot()["late_rounds"] == 1
    assert timing.snapshot()["stalls"] == 0
    assert timing.believe_until(start + 8 * MS, DEADLINES) is not None


def test_nothing_is_believed_without_deadlines():
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    assert timing.believe_until(start, []) is None
