"""End-to-end path liveness as plain code: how often each path is probed
within a budget, and when a path is healthy, dead or back, from what the
data plane recorded of the probe replies (path_health). No clock and no
maps: readings and the time come in, PathHealthChanged events go out.

A remote VTEP is checked only once it has answered a probe: one that runs
no qpagent never answers, and its paths keep working on routing and BFD
alone. Once it has answered, each of its paths is
    unchecked   until its own first reply (then armed: healthy),
    healthy     while a reply comes within the deadline,
    dead        after the deadline without one (or, never answered, a
                deadline after its VTEP first answered),
    healthy     again only after answering for hold_down without a miss.
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


@dataclass(frozen=True)
class HealthReading:
    """One path_health entry as the data plane wrote it."""
    replies: int = 0
    last_reply_ns: int = 0      # bpf_ktime_get_ns() (CLOCK_MONOTONIC)
    rtt_ns: int = 0


@dataclass
class _PathHealth:
    state: str = UNCHECKED
    answering_since: int | None = None   # a dead path's first reply after the miss


PathId = tuple[VtepKey, int, int]        # (VTEP key, VTEP index, path index)


class HealthTracker:
    def __init__(self, hold_down_ns: int):
        self.hold_down_ns = hold_down_ns
        self._paths: dict[PathId, _PathHealth] = {}
        self._answered_at: dict[VtepKey, int] = {}   # VTEP -> first reply seen

    def state(self, path: PathId) -> str:
        found = self._paths.get(path)
        return found.state if found else UNCHECKED

    def observe(self, readings: dict[PathId, HealthReading], deadlines: dict[VtepKey, int],
                now_ns: int, seen: float) -> list[PathHealthChanged]:
        """One look at every probed path (paths not named are forgotten);
        deadlines per VTEP. Returns the changes."""
        for gone in set(self._paths) - set(readings):
            del self._paths[gone]
        for key in set(self._answered_at) - {p[0] for p in readings}:
            del self._answered_at[key]
        for (key, _, _), reading in readings.items():
            if reading.replies and key not in self._answered_at:
                self._answered_at[key] = now_ns
        out = []
        for path, reading in sorted(readings.items()):
            key = path[0]
            if key not in self._answered_at:
                continue     # never answered: never checked
            health = self._paths.setdefault(path, _PathHealth())
            changed = self._step(health, reading, deadlines[key], self._answered_at[key], now_ns)
            if changed:
                out.append(PathHealthChanged(key, path[2], health.state == UP,
                                             reading.rtt_ns, seen))
        return out

    def _step(self, health: _PathHealth, reading: HealthReading, deadline: int,
              answered_at: int, now_ns: int) -> bool:
        fresh = reading.replies > 0 and now_ns - reading.last_reply_ns <= deadline
        if health.state == UNCHECKED:
            if reading.replies:
                health.state = UP
                return True
            if now_ns - answered_at > deadline:
                health.state = DOWN
                return True
            return False
        if health.state == UP:
            if not fresh:
                health.state, health.answering_since = DOWN, None
                return True
            return False
        # DOWN: back after answering hold_down without a miss.
        if not fresh:
            health.answering_since = None
            return False
        if health.answering_since is None:
            health.answering_since = now_ns
        if now_ns - health.answering_since >= self.hold_down_ns:
            health.state, health.answering_since = UP, None
            return True
        return False
