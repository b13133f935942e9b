"""End-to-end path liveness: probes out, the data plane's record of the
replies read back, health changes queued for the loop.

Every interval one thread sends a REQUEST on every path the core wants
probed (those in use and the spares their QPs would fail over to; they take
turns when they exceed the budget), then reads path_health, lets a
HealthTracker decide, and smooths each path's RTT (its deadline follows). A probe
is an ordinary VXLAN packet with that path's outer 5-tuple (VNI PROBE_VNI,
then struct probe_msg), sent from a raw socket with our own IPv4 header:
path_pin pins it to the uplink the FIB names for the 5-tuple, as it does
for the data, and every router hashes it like the data. The remote VTEP's
path_probe answers it in its data plane; ours records the reply. IPv4 only.
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time
from collections import deque
from typing import Callable

from qpagent.contract import CONSTANTS, ENUMS, STRUCTS, VXLAN_UDP_PORT
from qpagent.core.decisions import ProbeTarget
from qpagent.core.inputs import PathRttSeen
from qpagent.core.liveness import (HealthReading, HealthTracker, RttEstimator, deadline_changed,
                                   probes_per_round)

log = logging.getLogger("qpagent")

PROBE_VNI = CONSTANTS["PROBE_VNI"]
PROBE_MAGIC = CONSTANTS["PROBE_MAGIC"]
PROBE_REQUEST = dict(ENUMS["probe_kind"].members)["PROBE_REQUEST"]
PROBE_MSG = STRUCTS["probe_msg"]
VXLAN_FLAG_VNI = 0x08
LOSS_WINDOW_S = 1.0      # probe loss is reported over the last second


def probe_packet(local: str, remote: str, sport: int, vtep: int, path: int, seq: int,
                 tx_ns: int, dscp: int = 0) -> bytes:
    """IPv4 + UDP + VXLAN + probe_msg. The kernel fills the IP id and
    checksum (IP_HDRINCL); the UDP checksum is 0, as VXLAN senders leave it.
    `dscp` marks it (the reply keeps it): ECMP hashes no DSCP, so the probe
    still takes the data's path, but a router that queues network control
    apart (as for BFD) does not hold it behind the data."""
    msg = PROBE_MSG()
    msg.magic = socket.htonl(PROBE_MAGIC)
    msg.kind = PROBE_REQUEST
    msg.vtep, msg.path, msg.seq, msg.tx_ns = vtep, path, seq & 0xFFFFFFFF, tx_ns
    vxlan = struct.pack("!II", VXLAN_FLAG_VNI << 24, PROBE_VNI << 8)
    payload = vxlan + bytes(msg)
    udp = struct.pack("!HHHH", sport, VXLAN_UDP_PORT, 8 + len(payload), 0)
    total = 20 + len(udp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, dscp << 2, total, 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(local), socket.inet_aton(remote))
    return ip + udp + payload


class PathCounters:
    """Probes sent and replies recorded for one path, with a short history
    for the recent loss ratio."""

    def __init__(self):
        self.sent = 0
        self.replies = 0
        self.unanswered = 0
        self.rtt_ns = 0
        self.state = "unchecked"
        self.deadline_ns = 0
        self.rtt = RttEstimator()
        self.reported_ns = 0             # srtt + margin last told to the core
        self._history: deque = deque()   # (monotonic s, sent, replies)

    def record(self, now: float, reading: HealthReading) -> None:
        if reading.replies > self.replies:    # a new reply: one RTT sample
            self.rtt.sample(reading.rtt_ns)
        self.replies, self.rtt_ns = reading.replies, reading.rtt_ns
        self.unanswered = reading.unanswered
        self._history.append((now, self.sent, self.replies))
        while len(self._history) > 2 and now - self._history[1][0] >= LOSS_WINDOW_S:
            self._history.popleft()

    def loss_ratio(self) -> float | None:
        if len(self._history) < 2:
            return None
        (_, sent0, rep0), (_, sent1, rep1) = self._history[0], self._history[-1]
        if sent1 <= sent0:
            return None
        return min(1.0, max(0.0, 1 - (rep1 - rep0) / (sent1 - sent0)))


def rtt_changes(key, index: int, counters: PathCounters) -> list[PathRttSeen]:
    """A PathRttSeen when the path's smoothed RTT plus margin moved by a
    tenth or more since it was last told (not every round's jitter)."""
    srtt = counters.rtt.srtt_ns
    if not srtt:
        return []
    margin = counters.rtt.margin_ns(0)
    if counters.reported_ns and not deadline_changed(counters.reported_ns, srtt + margin):
        return []
    counters.reported_ns = srtt + margin
    return [PathRttSeen(key, index, srtt, margin)]


class ProberTiming:
    """How punctually the prober itself runs, for the status.

    A round that starts late, or whose sends take long (on a busy host this
    thread waits for a CPU, or for the GIL), sends its probes that much
    later. That costs no path its life: silence is counted from the
    requests as they left (the data plane notes it), so a stall only
    delays what probes would have seen. Counted here to show how often."""

    LATE_NS = 5_000_000     # a round this much past its period counts as late

    def __init__(self, interval_ms: int):
        self.interval_ns = interval_ms * 1_000_000
        self.rounds = 0
        self.probes = 0           # sent, every path and VTEP
        self.late_rounds = 0
        self.stalls = 0
        self.worst_gap_ns = 0     # longest time between two rounds' starts
        self.worst_send_ns = 0    # longest time one round took to send
        self._last_start = 0

    def round(self, start: int, sent: int, probes: int = 0) -> None:
        """One round: it started at `start`, had sent its `probes` at `sent`."""
        gap = start - self._last_start if self._last_start else None
        self._last_start = start
        self.rounds += 1
        self.probes += probes
        self.worst_send_ns = max(self.worst_send_ns, sent - start)
        if gap is not None:
            self.worst_gap_ns = max(self.worst_gap_ns, gap)
            self.late_rounds += gap > self.interval_ns + self.LATE_NS
            self.stalls += gap > 2 * self.interval_ns or sent - start > self.interval_ns

    def snapshot(self) -> dict:
        return {"rounds": self.rounds, "probes_sent": self.probes,
                "late_rounds": self.late_rounds, "stalls": self.stalls,
                "worst_round_gap_ms": round(self.worst_gap_ns / 1e6, 3),
                "worst_send_ms": round(self.worst_send_ns / 1e6, 3)}


class LivenessSource:
    """The prober and health reader thread. `read_health(pairs)` reads
    path_health for (vtep index, path) pairs (qpagent.tables.QpTables.health)."""

    # Silence means a dead path only while we probe: each round tells the
    # data plane so, this far ahead. An agent that stops sends no request
    # that could go unanswered anyway; the lease lets a path that died
    # while nobody probes it be used again.
    LEASE_NS = 1_000_000_000

    def __init__(self, events: queue.Queue, read_health: Callable, interval_ms: int,
                 budget_pps: int, hold_down_ms: int, misses: int = 3,
                 believe_until: Callable[[int, int], None] = lambda _until, _misses: None,
                 answering_again: Callable[[set], None] = lambda _keys: None,
                 dscp: int = 0):
        self.events = events
        self.dscp = dscp
        self.read_health = read_health
        self.believe_until = believe_until
        # A dead path answers again: routing moved under it (or it healed).
        # End to end, its hops are worth tracing again at once.
        self.answering_again = answering_again
        self.interval_ms = interval_ms
        self.misses = misses
        self.per_round = probes_per_round(interval_ms, budget_pps)
        self.tracker = HealthTracker(hold_down_ms * 1_000_000, misses)
        self._targets: list[ProbeTarget] = []
        self._deadlines: dict = {}
        self._counters: dict[tuple[int, int], PathCounters] = {}
        self._turn: dict = {}                 # VTEP key -> next path to probe (round-robin)
        # Each path's requests are numbered in order (the data plane counts
        # the unanswered ones by these numbers), from the milliseconds since
        # boot: ahead of whatever an earlier agent got to, at 1000 a second
        # to its at most 1000 / interval_ms.
        self._seq: dict[tuple[int, int], int] = {}
        self.timing = ProberTiming(interval_ms)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def set_targets(self, targets: list[ProbeTarget], deadlines: dict) -> None:
        with self._lock:
            self._targets, self._deadlines = list(targets), dict(deadlines)

    def start(self) -> "LivenessSource":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._thread = threading.Thread(target=self._run, name="qpagent-liveness", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def snapshot(self) -> dict[tuple[int, int], dict]:
        """Per (vtep index, path): health, rtt_ms, probes sent, replies,
        requests unanswered now, loss ratio."""
        with self._lock:
            return {k: {"health": c.state, "rtt_ms": round(c.rtt_ns / 1e6, 3) if c.replies else None,
                        "srtt_ms": round(c.rtt.srtt_ns / 1e6, 3) if c.rtt.srtt_ns else None,
                        "deadline_ms": round(c.deadline_ns / 1e6, 3) if c.deadline_ns else None,
                        "probes_sent": c.sent, "replies": c.replies,
                        "unanswered": c.unanswered, "loss_ratio": c.loss_ratio()}
                    for k, c in self._counters.items()}

    # ---------------------------------------------------------------- thread
    def _run(self) -> None:
        period = self.interval_ms / 1000
        next_round = time.monotonic()
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:   # a bad round must not stop liveness for good
                log.exception("liveness round failed")
            next_round += period
            delay = next_round - time.monotonic()
            if delay < 0:          # fell behind (a busy machine): do not burst
                next_round, delay = time.monotonic(), 0
            self._stop.wait(delay)

    def _round(self) -> None:
        with self._lock:
            targets, deadlines = self._targets, self._deadlines
            wanted = {(t.vtep, index) for t in targets for index, _ in t.paths}
            for gone in set(self._counters) - wanted:
                del self._counters[gone]
                self._seq.pop(gone, None)
            for pair in wanted - set(self._counters):
                self._counters[pair] = PathCounters()
        started = time.monotonic_ns()
        self.believe_until(started + self.LEASE_NS, self.misses)
        probes = sum(self._send(target) for target in targets)
        self.timing.round(started, time.monotonic_ns(), probes)
        # The clock before the maps: a thread held up in between (the GIL,
        # a busy host) then sees replies fresher, never older, than they are.
        now_ns = time.monotonic_ns()
        readings = self.read_health(sorted(wanted))
        now = now_ns / 1e9
        by_path = {(t.key, t.vtep, index): readings.get((t.vtep, index), HealthReading())
                   for t in targets for index, _ in t.paths}
        changes = self.tracker.observe(by_path, deadlines, now_ns, now)
        if self.tracker.answering_again:
            keys = {path[0] for path in self.tracker.answering_again}
            self.tracker.answering_again.clear()
            self.answering_again(keys)
        rtts = []
        with self._lock:
            for (key, vtep, index), reading in by_path.items():
                counters = self._counters[(vtep, index)]
                counters.record(now, reading)
                counters.state = self.tracker.state((key, vtep, index))
                counters.deadline_ns = deadlines.get((key, index), 0)
                rtts += rtt_changes(key, index, counters)
        for change in changes + rtts:
            self.events.put(change)

    def _send(self, target: ProbeTarget) -> int:
        """This round's probes to one VTEP; returns how many left."""
        paths = target.paths
        sent = 0
        if len(paths) > self.per_round:    # take turns within the budget
            start = self._turn.get(target.key, 0) % len(paths)
            paths = (paths + paths)[start:start + self.per_round]
            self._turn[target.key] = start + self.per_round
        for index, port in paths:
            pair = (target.vtep, index)
            seq = self._seq.get(pair, time.monotonic_ns() // 1_000_000) + 1 & 0xFFFFFFFF
            self._seq[pair] = seq
            packet = probe_packet(target.local, target.address, port, target.vtep, index,
                                  seq, time.monotonic_ns(), self.dscp)
            try:
                self._sock.sendto(packet, (target.address, 0))
            except OSError as exc:   # no route right now: the path will miss
                log.debug("probe to %s path %d: %s", target.address, index, exc)
                continue
            sent += 1
            with self._lock:
                counters = self._counters.get((target.vtep, index))
                if counters is not None:
                    counters.sent += 1
        return sent
