"""End-to-end path liveness as plain code: how often each path is probed
within a budget, and when a path is healthy, dead or back, from what the
data plane recorded of the probe replies (path_health). No clock and no
maps: readings and the time come in, PathHealthChanged events go out.

A remote VTEP is checked only once it has answered a probe: one that runs
no qpagent never answers, and its paths keep working on routing and BFD
alone. Once it has answered, each of its paths is
    unchecked   until a fresh reply (then armed: healthy),
    healthy     while it is not silent,
    dead        once silent: `misses` requests in a row unanswered, the
                last of them for longer than the deadline (or, never
                answered, the deadline and a hold-down),
    healthy     again only after answering for hold_down without a miss.
Silence is counted from the requests as they left the uplink (the data
plane notes it, path_health): a prober held up on a busy host sends
nothing, and what it did not send cannot go unanswered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qpagent.core.inputs import PathHealthChanged
from qpagent.core.model import VtepKey

UNCHECKED, UP, DOWN = "unchecked", "up", "down"


def probes_per_round(interval_ms: int, budget_pps: int) -> int:
    """Probes one remote VTEP may get each interval (at least one)."""
    return max(1, budget_pps * interval_ms // 1000)


def probe_period_ns(n_paths: int, interval_ms: int, budget_pps: int) -> int:
    """How often each of n_paths is probed: every interval, or every few
    intervals when the paths take turns within the budget."""
    rounds = math.ceil(max(1, n_paths) / probes_per_round(interval_ms, budget_pps))
    return interval_ms * 1_000_000 * rounds


def deadline_ns(n_paths: int, interval_ms: int, budget_pps: int, misses: int) -> int:
    return probe_period_ns(n_paths, interval_ms, budget_pps) * misses


def reply_deadline_ns(period_ns: int, misses: int, srtt_ns: int, margin_ns: int) -> int:
    """How long one request may go unanswered: the smoothed RTT plus margin,
    at least one probe period. A path is dead once `misses` requests in a
    row went unanswered that long (the data plane counts them). Without an
    RTT sample yet, the period x misses (a few intervals)."""
    return max(period_ns, srtt_ns + margin_ns) if srtt_ns else period_ns * misses


def rtt_deadline_ns(base_ns: int, srtt_ns: int, margin_ns: int) -> int:
    """Dead after max(interval x misses, smoothed RTT + margin) of silence:
    on a long or jittery path (a WAN, a delay line on a busy host) replies
    come in bunches, and silence shorter than a round trip says nothing."""
    return max(base_ns, srtt_ns + margin_ns) if srtt_ns else base_ns


class RttEstimator:
    """Smoothed RTT and its variation from probe replies, as TCP keeps them
    (RFC 6298: gains 1/8 and 1/4); the margin is max(floor, 4 x variation)."""

    def __init__(self):
        self.srtt_ns = 0
        self.rttvar_ns = 0

    def sample(self, rtt_ns: int) -> None:
        if rtt_ns <= 0:
            return
        if not self.srtt_ns:
            self.srtt_ns, self.rttvar_ns = rtt_ns, rtt_ns // 2
            return
        self.rttvar_ns += (abs(self.srtt_ns - rtt_ns) - self.rttvar_ns) // 4
        self.srtt_ns += (rtt_ns - self.srtt_ns) // 8

    def margin_ns(self, floor_ns: int) -> int:
        return max(floor_ns, 4 * self.rttvar_ns)


def deadline_changed(written_ns: int, wanted_ns: int) -> bool:
    """Worth a map write: a change of a tenth or more (RTT jitter must not
    rewrite deadlines every round)."""
    return abs(wanted_ns - written_ns) * 10 >= max(written_ns, 1)


@dataclass(frozen=True)
class HealthReading:
    """One path_health entry as the data plane wrote it."""
    replies: int = 0
    last_reply_ns: int = 0      # bpf_ktime_get_ns() (CLOCK_MONOTONIC)
    rtt_ns: int = 0
    unanswered: int = 0         # requests left since the newest reply's
    silent_since_ns: int = 0    # when the misses-th of them left (0: fewer)
    acked_ns: int = 0           # the newest ACK that moved a QP of the path on

    def silent_for(self, now_ns: int, misses: int) -> int:
        """How long the path has been silent: since the `misses`-th
        unanswered request left, or since its QPs' data was last
        acknowledged if that is later (behind a deep queue the probes wait
        as long as the data: a path that delivers is slow, not dead); 0
        while fewer are unanswered. As qp_steer's path_silent has it."""
        if self.unanswered < misses or not self.silent_since_ns:
            return 0
        return max(0, now_ns - max(self.silent_since_ns, self.acked_ns))


@dataclass
class _PathHealth:
    state: str = UNCHECKED
    answering_since: int | None = None   # a dead path's first reply after the miss
    probed_since: int = 0                # first looked at (paths join the probed set late)


PathId = tuple[VtepKey, int, int]        # (VTEP key, VTEP index, path index)


class HealthTracker:
    def __init__(self, hold_down_ns: int, misses: int = 3):
        self.hold_down_ns = hold_down_ns
        self.misses = misses
        self.answering_again: list[PathId] = []   # dead paths with a first fresh reply
        self._paths: dict[PathId, _PathHealth] = {}
        self._answered_at: dict[VtepKey, int] = {}   # VTEP -> first reply seen

    def state(self, path: PathId) -> str:
        found = self._paths.get(path)
        return found.state if found else UNCHECKED

    def observe(self, readings: dict[PathId, HealthReading], deadlines: dict,
                now_ns: int, seen: float) -> list[PathHealthChanged]:
        """One look at every probed path (paths not named are forgotten);
        deadlines per path ((VTEP key, path index)), else per VTEP key.
        Returns the changes; a dead path's first fresh reply (its hold-down
        starts) is added to answering_again."""
        for gone in set(self._paths) - set(readings):
            del self._paths[gone]
        for key in set(self._answered_at) - {p[0] for p in readings}:
            del self._answered_at[key]
        for (key, _, _), reading in readings.items():
            if reading.replies and key not in self._answered_at:
                self._answered_at[key] = now_ns
        out = []
        all_silent = self._all_silent(readings, deadlines, now_ns)
        for path, reading in sorted(readings.items()):
            key = path[0]
            if key not in self._answered_at:
                continue     # never answered: never checked
            if key in all_silent:
                continue     # nothing to tell apart: wait for one path to answer
            health = self._paths.get(path)
            if health is None:
                health = self._paths[path] = _PathHealth(probed_since=now_ns)
            deadline = deadlines.get((key, path[2]), deadlines.get(key))
            waiting = health.state == DOWN and health.answering_since is None
            changed = self._step(health, reading, deadline,
                                 max(self._answered_at[key], health.probed_since), now_ns)
            if waiting and health.answering_since is not None:
                self.answering_again.append(path)
            if changed:
                silent = reading.silent_for(now_ns, self.misses)
                out.append(PathHealthChanged(key, path[2], health.state == UP,
                                             reading.rtt_ns, seen, silent, deadline))
        return out

    def _all_silent(self, readings: dict, deadlines: dict, now_ns: int) -> set:
        """VTEPs whose every path that was up (two or more) is silent at once:
        a stall of this host, its prober or the remote VTEP, not of the
        paths, and moving QPs among its paths could not help."""
        up: dict = {}
        for path, reading in readings.items():
            health = self._paths.get(path)
            if health is None or health.state != UP:
                continue
            deadline = deadlines.get((path[0], path[2]), deadlines.get(path[0]))
            up.setdefault(path[0], []).append(reading.silent_for(now_ns, self.misses) > deadline)
        return {key for key, silent in up.items() if len(silent) >= 2 and all(silent)}

    def _step(self, health: _PathHealth, reading: HealthReading, deadline: int,
              answered_at: int, now_ns: int) -> bool:
        fresh = reading.replies > 0 and now_ns - reading.last_reply_ns <= deadline
        silent = reading.silent_for(now_ns, self.misses)
        if health.state == UNCHECKED:
            # Fresh only: a path probed again after a pause still shows its
            # old replies, and arming it on those would kill it at once.
            if fresh:
                health.state = UP
                return True
            # A deadline learnt from other paths' RTT may be too short for
            # this one's first reply: give it a hold-down more.
            if (now_ns - answered_at > deadline + self.hold_down_ns
                    and silent > deadline + self.hold_down_ns):
                health.state = DOWN
                return True
            return False
        if health.state == UP:
            if silent > deadline:
                health.state, health.answering_since = DOWN, None
                return True
            return False
        # DOWN: back after answering hold_down without a miss (a prober
        # that stalls sends nothing: no answer, but no miss either).
        if silent > deadline:
            health.answering_since = None
            return False
        if not fresh:
            return False
        if health.answering_since is None:
            health.answering_since = now_ns
        if now_ns - health.answering_since >= self.hold_down_ns:
            health.state, health.answering_since = UP, None
            return True
        return False
