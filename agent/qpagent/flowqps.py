"""A host agent's per-QP counters, summed from its flow table.

Summing means reading the whole flow table, which takes about a second per
100,000 entries from Python. A small table is read afresh for every status
and scrape; once a read gets slow, a status or scrape gets the last sum (with
its age), and the agent's loop sums again in the background, spending at
most a fifth of its time on it.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from .status import flow_qp_view

KEEP_ROWS = 1000          # QPs kept per sum (the busiest); status asks for fewer
CHEAP_READ_S = 0.05       # a read this fast is done afresh for every request
MIN_INTERVAL_S = 1.0      # background sums at most this often
BUSY_SHARE = 0.2          # and taking at most this share of the loop's time


class FlowQpSummary:
    def __init__(self, read_flows: Callable[[], list[dict]],
                 clock: Callable[[], float] = time.monotonic):
        self._read = read_flows
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: list[dict] = []
        self._total = 0
        self._as_of: float | None = None      # unix time of the last sum
        self._took = 0.0
        self._next = 0.0

    def refresh(self) -> None:
        """Sum the flow table now."""
        with self._lock:
            t0 = self._clock()
            rows, total = flow_qp_view(self._read(), KEEP_ROWS)
            self._took = self._clock() - t0
            self._rows, self._total, self._as_of = rows, total, time.time()
            self._next = t0 + max(MIN_INTERVAL_S, self._took / BUSY_SHARE)

    def due(self) -> bool:
        """Whether the loop should sum again (a slow table only)."""
        return self._as_of is not None and self._took >= CHEAP_READ_S and self._clock() >= self._next

    def view(self, top_n: int) -> tuple[list[dict], int, float | None]:
        """The busiest `top_n` QPs, how many QPs in all, and when summed."""
        if self._as_of is None or self._took < CHEAP_READ_S:
            self.refresh()
        with self._lock:
            return self._rows[:top_n], self._total, self._as_of
