"""The prober: how punctual it is (for the status), the lease it renews
every round, how it numbers each path's requests (the data plane counts
the unanswered ones by these numbers), and the TTL round it asks for when
a dead path answers again."""

import queue
import time

from scapy.layers.inet import IP
from scapy.layers.vxlan import VXLAN

from qpagent.contract import STRUCTS
from qpagent.core.decisions import ProbeTarget
from qpagent.core.liveness import HealthReading
from qpagent.sources.discovery import Prober, Target
from qpagent.sources.liveness import LivenessSource, ProberTiming

MS = 1_000_000


def punctual(timing: ProberTiming, start: int, rounds: int, send: int = MS) -> int:
    """`rounds` rounds every 10 ms from `start`, each sending for `send`; the next start."""
    for _ in range(rounds):
        timing.round(start, start + send)
        start += 10 * MS
    return start


def test_a_round_whose_sends_take_longer_than_an_interval_is_a_stall():
    """The round started on time, but its last probe left 45 ms late."""
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    timing.round(start, start + 45 * MS)
    start = punctual(timing, start + 46 * MS, 2)
    # The round after it started 46 ms after it: late, a stall of its own.
    assert timing.snapshot()["stalls"] == 2
    assert timing.snapshot()["worst_send_ms"] == 45.0


def test_a_late_round_is_a_stall_and_is_counted():
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    start += 30 * MS                                  # 40 ms since the last start
    timing.round(start, start + MS, probes=4)
    assert timing.snapshot() == {"rounds": 21, "probes_sent": 4, "late_rounds": 1, "stalls": 1,
                                 "worst_round_gap_ms": 40.0, "worst_send_ms": 1.0}


def test_a_round_a_little_late_is_counted_but_is_no_stall():
    timing = ProberTiming(10)
    start = punctual(timing, 1000 * MS, 20)
    timing.round(start + 8 * MS, start + 9 * MS)     # 18 ms since the last start
    assert timing.snapshot()["late_rounds"] == 1
    assert timing.snapshot()["stalls"] == 0


class SentFrames:
    """Stands in for the raw socket: keeps what would have left."""

    def __init__(self):
        self.sent = []

    def sendto(self, packet, _address):
        self.sent.append(packet)


def prober(misses=3):
    leases = []
    source = LivenessSource(queue.Queue(), lambda pairs: {}, interval_ms=10, budget_pps=1000,
                            hold_down_ms=1000, misses=misses,
                            believe_until=lambda until, m: leases.append((until, m)))
    source._sock = SentFrames()
    return source, leases


def sent_seqs(source):
    """(VTEP index, path index, seq) of every request sent so far."""
    out = []
    for packet in source._sock.sent:
        msg = STRUCTS["probe_msg"].from_buffer_copy(bytes(IP(packet)[VXLAN].payload))
        out.append((msg.vtep, msg.path, msg.seq))
    return out


def test_every_round_renews_the_lease_on_silence_with_the_misses():
    source, leases = prober(misses=4)
    before = time.monotonic_ns()
    source._round()
    source._round()
    assert len(leases) == 2
    assert all(until >= before + LivenessSource.LEASE_NS and m == 4 for until, m in leases)


def test_each_paths_requests_are_numbered_in_order_from_the_clock():
    """Numbered per path, one after the other, from the milliseconds since
    boot: ahead of anything an earlier agent numbered."""
    source, _ = prober()
    target = ProbeTarget(("vxlan100", "10.0.0.2"), 3, "10.0.0.1", "10.0.0.2",
                         ((0, 49152), (5, 49160)))
    source.set_targets([target], {})
    floor = time.monotonic_ns() // MS
    for _ in range(3):
        source._round()
    seqs = sent_seqs(source)
    path_0 = [s for v, p, s in seqs if (v, p) == (3, 0)]
    path_5 = [s for v, p, s in seqs if (v, p) == (3, 5)]
    assert len(path_0) == len(path_5) == 3
    assert path_0[0] > floor and path_0 == list(range(path_0[0], path_0[0] + 3))
    assert path_5 == list(range(path_5[0], path_5[0] + 3))


class Traces:
    """Stands in for the path discovery (and its FIB socket): counts rounds."""

    def __init__(self):
        self.rounds = 0
        self.traced: list[tuple[str, bool]] = []

    def discover(self, target, quick=False):
        self.rounds += 1
        self.traced.append((target.address, quick))
        return []

    def take_warnings(self):
        return []

    def close(self):
        pass


def test_a_dead_path_answering_again_is_told_once():
    """Once BGP routes around a failure, a dead path's probes answer
    through links its identity does not name: its first fresh reply asks
    for the hops to be traced again (Prober.soon), once."""
    source, _ = prober()
    asked = []
    source.answering_again = lambda keys: asked.append(keys)
    key = ("vxlan100", "10.0.0.2")
    source.set_targets([ProbeTarget(key, 3, "10.0.0.1", "10.0.0.2", ((0, 49152),))],
                       {(key, 0): 30 * MS})
    phase = {"now": "alive", "replies": 1}

    def read_health(pairs):
        now = time.monotonic_ns()
        if phase["now"] == "dead":
            reading = HealthReading(phase["replies"], now - 200 * MS, MS, unanswered=9,
                                    silent_since_ns=now - 100 * MS)
        else:
            phase["replies"] += 1
            reading = HealthReading(phase["replies"], now - MS, MS)
        return {pair: reading for pair in pairs}

    source.read_health = read_health
    for now in ("alive", "dead", "dead", "back", "back", "back"):
        phase["now"] = now
        source._round()
        if now == "dead":
            assert source.tracker.state((key, 3, 0)) == "down" and asked == []
    assert asked == [{key}]


def test_the_hops_are_traced_again_when_asked_not_at_the_next_period():
    events = queue.Queue()
    tracer = Prober({"uplinks": ["eth1"], "source_ports": (49152, 65535), "ports_per_path": 4,
                     "end_to_end": True, "fib": Traces()}, events, every_s=60)
    tracer._discovery = Traces()
    tracer.set_targets([Target(("vxlan100", "10.0.0.2"), "10.0.0.2", "10.0.0.1", (49152, 65535)),
                        Target(("vxlan100", "10.0.0.3"), "10.0.0.3", "10.0.0.1", (49152, 65535))])
    tracer.start()
    try:
        before = time.monotonic()
        tracer.soon({("vxlan100", "10.0.0.3")})
        first = events.get(timeout=5)          # a period is 60 s
        # Only the VTEP asked for, quickly; the round says when it began.
        assert first.paths.cause == "probe" and tracer._discovery.traced == [("10.0.0.3", True)]
        assert list(first.paths.paths) == [("vxlan100", "10.0.0.3")]
        assert first.paths.started >= before
    finally:
        tracer.stop()


def test_a_quick_round_knows_the_depth_and_a_port_of_every_path():
    """What a quick round needs of a VTEP: how deep its live paths are (to
    stop at the last hop instead of waiting out the silence) and the first
    port of every path in the table, dead ones too (traced first, each path
    is seen where its ports go now)."""
    from qpagent.core.model import PathState, VtepState
    vtep = VtepState(3, "vxlan100", "10.0.0.2", "10.0.0.1", (49152, 65535), {
        0: PathState(0, 11, "eth1", "10.1.0.1", [49160, 49161], ("10.1.0.1", "10.2.0.1", "10.3.0.1")),
        2: PathState(2, 12, "eth2", "10.1.0.3", [49170], ("10.1.0.3", "10.2.0.3", "10.3.0.1"),
                     alive=False),
        5: PathState(5, 12, "eth2", "10.1.0.3", [], ("10.1.0.3",)),
    })
    target = Target.of(vtep)
    assert (target.depth, target.known_ports) == (3, (49160, 49170))
