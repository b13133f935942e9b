"""Go-back-N recovers every message, in order and intact, over a simulated
channel with seeded random loss, reordering and delay in both directions;
retransmission follows the verbs semantics (local ACK timeout from the
exponent, retry_cnt, no backoff, error state, NAK => go back at once)."""
import heapq
import random
import zlib

import pytest

from qplab.workloads import gbn, roce


class LossyChannel:
    """Discrete-event link: each packet is dropped with probability `loss`,
    otherwise delivered after delay + uniform jitter (jitter reorders)."""

    def __init__(self, rng, loss, delay, jitter):
        self.rng, self.loss, self.delay, self.jitter = rng, loss, delay, jitter
        self.events = []
        self.seq = 0
        self.dropped = 0

    def send(self, now, dest, item):
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.seq += 1
        at = now + self.delay + self.rng.random() * self.jitter
        heapq.heappush(self.events, (at, self.seq, dest, item))


def run_pair(seed, n_msgs, loss, jitter, start_psn, window, mtu=64, max_time=600.0, retry_cnt=None):
    rng = random.Random(seed)
    tx = gbn.GbnSender(mtu=mtu, window=window, ack_timeout=0.05, retry_cnt=retry_cnt,
                       start_psn=start_psn)
    rx = gbn.GbnReceiver(start_psn=start_psn, ack_every=rng.choice([1, 4, 16]))
    net = LossyChannel(rng, loss, delay=0.001, jitter=jitter)
    sent = []
    for i in range(n_msgs):
        data = rng.randbytes(rng.choice([0, 1, mtu - 1, mtu, mtu + 1, rng.randrange(1, 10 * mtu)]))
        imm = zlib.crc32(data)
        sent.append((data, imm))
        tx.post_send(data, imm=imm, token=i)
    received, completed = [], []
    now = 0.0
    while not (tx.idle and len(received) == n_msgs):
        for seg in tx.next_segments(now):
            net.send(now, "rx", seg)
        dl = tx.deadline()
        nxt = net.events[0][0] if net.events else None
        if nxt is None and dl is None:
            break
        now = min(t for t in (nxt, dl) if t is not None)
        assert now < max_time, f"seed {seed}: no completion by t={now}"
        if dl is not None and now >= dl:
            tx.on_timer(now)
        while net.events and net.events[0][0] <= now:
            _, _, dest, item = heapq.heappop(net.events)
            if dest == "rx":
                acks, msgs = rx.on_packet(item.opcode, item.psn, item.ackreq, item.payload, item.imm)
                received += [(m.data, m.imm) for m in msgs]
                for a in acks:
                    net.send(now, "tx", a)
            else:
                completed += tx.on_ack(item.psn, item.syndrome, now)
    return tx, rx, sent, received, completed, net


CASES = [(seed, loss, jitter) for seed in range(100)
         for loss, jitter in [(0.0, 0.0), (0.02, 0.0), (0.1, 0.004), (0.3, 0.002)]]


@pytest.mark.parametrize("seed,loss,jitter", CASES)
def test_every_message_recovered(seed, loss, jitter):
    rng = random.Random(seed * 7 + 1)
    start_psn = rng.choice([0, 0xFFFFF0, rng.randrange(1 << 24)])   # include PSN wrap
    window = rng.choice([1, 3, 8, 32])
    # A real retry_cnt survives up to 10% loss each way; at 30% it sometimes
    # runs out (as an RC QP would), so that case checks recovery alone.
    tx, rx, sent, received, completed, net = run_pair(
        seed, rng.randrange(1, 12), loss, jitter, start_psn, window,
        retry_cnt=7 if loss <= 0.1 else None)
    assert received == sent                       # every message, in order, intact
    assert completed == list(range(len(sent)))    # every WQE completed once, in order
    assert tx.stats.bytes_completed == sum(len(d) for d, _ in sent)
    assert rx.stats.sequence_errors == 0
    if net.dropped == 0:
        assert tx.stats.retransmitted == 0 or jitter > 0


def test_loss_costs_retransmissions_and_timeouts():
    tx, rx, sent, received, _, net = run_pair(3, 20, 0.2, 0.0, 0, 16)
    assert received == sent
    assert net.dropped > 0
    assert tx.stats.retransmitted > 0
    assert tx.stats.timeouts + tx.stats.naks > 0


def test_nak_rewinds_to_expected_psn():
    tx = gbn.GbnSender(mtu=10, window=8, ack_timeout=1.0)
    tx.post_send(b"x" * 50, token="m")
    first = tx.next_segments(0.0)
    assert [s.psn for s in first] == [0, 1, 2, 3, 4]
    rx = gbn.GbnReceiver(ack_every=100)
    rx.on_packet(first[0].opcode, 0, False, first[0].payload)
    acks, _ = rx.on_packet(first[2].opcode, 2, False, first[2].payload)   # PSN 1 lost
    assert acks == [gbn.Ack(1, roce.SYNDROME_NAK_PSN_SEQ, 0)]
    assert rx.on_packet(first[3].opcode, 3, False, first[3].payload) == ([], [])  # one NAK per gap
    assert tx.on_ack(1, roce.SYNDROME_NAK_PSN_SEQ, 0.01) == []
    again = tx.next_segments(0.01)
    assert [(s.psn, s.retransmit) for s in again] == [(1, True), (2, True), (3, True), (4, True)]


def test_timeout_rewinds_and_retry_cnt_errors_the_qp():
    tx = gbn.GbnSender(mtu=10, window=8, ack_timeout=0.125, retry_cnt=2)   # exact in binary
    tx.post_send(b"x" * 20, token=1)
    assert len(tx.next_segments(0.0)) == 2
    assert tx.deadline() == 0.125
    assert not tx.on_timer(0.1)
    assert tx.on_timer(0.125)
    assert [s.psn for s in tx.next_segments(0.125)] == [0, 1]
    assert tx.on_timer(0.25)
    tx.next_segments(0.25)
    with pytest.raises(gbn.QpError, match="retry_cnt 2 exhausted"):
        tx.on_timer(0.375)
    # The error state is final: nothing more is sent, no timer, feedback ignored.
    assert (tx.error_at, tx.deadline(), tx.next_segments(0.5)) == (0.375, None, [])
    assert tx.on_ack(1, roce.SYNDROME_ACK, 0.5) == [] and tx.stats.acks == 0


def test_window_limits_packets_in_flight():
    tx = gbn.GbnSender(mtu=1, window=4, ack_timeout=1.0)
    tx.post_send(b"abcdefgh", token=0)
    segs = tx.next_segments(0.0)
    assert [s.ackreq for s in segs] == [False, False, False, True]   # AckReq as the window fills
    assert tx.next_segments(0.0) == []
    tx.on_ack(1, roce.SYNDROME_ACK, 0.001)
    assert [s.psn for s in tx.next_segments(0.001)] == [4, 5]


# ---- verbs retransmission semantics ------------------------------------------

def test_local_ack_timeout_is_4096_ns_times_two_to_the_exponent():
    assert gbn.local_ack_timeout(14) == pytest.approx(0.067108864)
    assert gbn.local_ack_timeout(20) == pytest.approx(4.294967296)
    assert gbn.local_ack_timeout(1) == pytest.approx(8.192e-6)
    assert gbn.local_ack_timeout(0) is None                  # 0: never time out
    with pytest.raises(ValueError, match="timeout exponent 32"):
        gbn.local_ack_timeout(32)
    with pytest.raises(ValueError, match="retry_cnt 8"):
        gbn.RetryPolicy(timeout_exp=14, retry_cnt=8)
    nccl, tight = gbn.RETRY_PRESETS["nccl"], gbn.RETRY_PRESETS["tight"]
    assert (nccl.timeout_exp, nccl.retry_cnt, tight.timeout_exp, tight.retry_cnt) == (20, 7, 14, 7)
    assert nccl.budget == pytest.approx(8 * 4.294967296)     # first try + 7 retries
    assert tight.budget == pytest.approx(8 * 0.067108864)


class Link:
    """One direction of a path: fixed delay, and blackhole windows that drop
    everything sent inside them (a silent cut), or a drop rule."""

    def __init__(self, delay=0.001, blackholes=(), drop=None):
        self.delay, self.blackholes, self.drop = delay, list(blackholes), drop
        self.dropped = 0

    def passes(self, now, item):
        if any(a <= now < b for a, b in self.blackholes) or (self.drop and self.drop(now, item)):
            self.dropped += 1
            return False
        return True


class Sim:
    """A requester and a responder joined by two Links, driven in simulated
    time; records when each packet left, every go-back, every progress."""

    def __init__(self, tx, rx, fwd, back):
        self.tx, self.rx, self.fwd, self.back = tx, rx, fwd, back
        self.events, self.seq = [], 0
        self.sent = []          # (time, psn, retransmit)
        self.timeouts = []      # times the local ACK timer made the sender go back
        self.naks = []          # times a NAK reached the sender
        self.progress = []      # times the oldest unacknowledged PSN moved
        self.delivered = []
        self.error_at = None

    def _push(self, at, dest, item):
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, dest, item))

    def run(self, until):
        tx, now = self.tx, 0.0
        while True:
            for seg in tx.next_segments(now):
                self.sent.append((now, seg.psn, seg.retransmit))
                if self.fwd.passes(now, seg):
                    self._push(now + self.fwd.delay, "rx", seg)
            if tx.idle:
                return
            dl = tx.deadline()
            nxt = self.events[0][0] if self.events else None
            if nxt is None and dl is None:
                return
            now = min(t for t in (nxt, dl) if t is not None)
            assert now < until, f"still running at t={now}"
            try:
                if dl is not None and now >= dl and tx.on_timer(now):
                    self.timeouts.append(now)
                while self.events and self.events[0][0] <= now:
                    _, _, dest, item = heapq.heappop(self.events)
                    if dest == "rx":
                        acks, msgs = self.rx.on_packet(item.opcode, item.psn, item.ackreq,
                                                       item.payload, item.imm)
                        self.delivered += msgs
                        for a in acks:
                            if self.back.passes(now, a):
                                self._push(now + self.back.delay, "tx", a)
                    else:
                        before = tx.progress
                        if roce.is_nak(item.syndrome):
                            self.naks.append(now)
                        tx.on_ack(item.psn, item.syndrome, now)
                        if tx.progress != before:
                            self.progress.append(now)
            except gbn.QpError:
                self.error_at = now
                return


def stream(policy, blackholes=(), drop=None, n_packets=3000, until=120.0):
    """A requester streaming n_packets over a 2 ms RTT path cut in both
    directions during `blackholes`."""
    tx = gbn.GbnSender(mtu=64, window=16, ack_timeout=policy.ack_timeout,
                       retry_cnt=policy.retry_cnt, stall_min=0.01)
    for i in range(n_packets // 50):
        tx.post_send(bytes([i % 256]) * (64 * 50), token=i)
    sim = Sim(tx, gbn.GbnReceiver(ack_every=4), Link(blackholes=blackholes, drop=drop),
              Link(blackholes=blackholes))
    sim.run(until)
    return sim


def test_nak_makes_the_sender_go_back_at_once():
    """One packet lost: the responder NAKs the next one, and the PSN goes out
    again the moment the NAK arrives, not a timer later."""
    lost = []

    def drop_first_psn_100(now, seg):
        if seg.psn == 100 and not seg.retransmit:
            lost.append(now)
            return True
        return False
    sim = stream(gbn.RETRY_PRESETS["nccl"], drop=drop_first_psn_100, n_packets=500)
    again = [t for t, psn, retx in sim.sent if psn == 100 and retx]
    assert len(lost) == 1 and len(sim.naks) == 1
    assert again == [sim.naks[0]]                       # resent when the NAK came in
    assert sim.naks[0] - lost[0] < 0.01                 # about one RTT after the loss
    assert sim.timeouts == [] and sim.error_at is None
    assert len(sim.delivered) == 10 and sim.tx.idle


@pytest.mark.parametrize("preset,cut,timeouts", [
    ("tight", 0.3, 5),          # 67 ms timer: the 5th go-back (335 ms) is the first after the cut
    ("tight", 0.45, 7),         # 7 retries (470 ms) still fit
    ("nccl", 0.3, 1),           # 4.3 s timer: one go-back, long after the path is back
    ("nccl", 25.0, 6),
])
def test_a_blackhole_shorter_than_the_retry_budget_recovers(preset, cut, timeouts):
    policy = gbn.RETRY_PRESETS[preset]
    t = policy.ack_timeout
    sim = stream(policy, blackholes=[(0.1, 0.1 + cut)])
    assert sim.error_at is None and sim.tx.idle and len(sim.delivered) == 60
    last = max(p for p in sim.progress if p <= 0.1 + 0.002)   # last progress before the cut bit
    # go-backs exactly one timeout apart, from the last progress on: no backoff
    assert sim.timeouts == pytest.approx([last + k * t for k in range(1, timeouts + 1)])
    assert sim.tx.stats.retries == timeouts
    # the QP stalls from its last progress until the first retry after the cut
    (since, until), = [s for s in sim.tx.stalls if s[1] - s[0] > 0.05]
    assert since == pytest.approx(last)
    assert until - since == pytest.approx(timeouts * t + 0.002)   # + one RTT


@pytest.mark.parametrize("retry_cnt", [0, 3, 7])
def test_a_blackhole_past_the_budget_errors_after_exactly_retry_cnt_retries(retry_cnt):
    policy = gbn.RetryPolicy(timeout_exp=14, retry_cnt=retry_cnt)
    t = policy.ack_timeout
    sim = stream(policy, blackholes=[(0.1, 1e9)])
    last = max(sim.progress)
    assert sim.timeouts == pytest.approx([last + k * t for k in range(1, retry_cnt + 1)])
    assert sim.error_at == pytest.approx(last + (retry_cnt + 1) * t) == sim.tx.error_at
    assert sim.tx.error.startswith(f"retry_cnt {retry_cnt} exhausted: local ACK timeout")
    assert sim.tx.stats.retries == retry_cnt and sim.tx.stats.timeouts == retry_cnt + 1
    # each retry resent the oldest unacknowledged PSN, nothing after the error
    oldest = sim.tx.oldest_unacked_psn
    assert [t_ for t_, psn, retx in sim.sent if retx and psn == oldest] == pytest.approx(sim.timeouts)
    assert max(t_ for t_, _, _ in sim.sent) < sim.error_at


def test_progress_gives_the_retries_back():
    """Two cuts of 6 timeouts each, with the path back in between: 12 go-backs
    in all, never 8 without progress, so the QP survives with retry_cnt 7."""
    policy = gbn.RETRY_PRESETS["tight"]
    t = policy.ack_timeout
    sim = stream(policy, blackholes=[(0.1, 0.1 + 5.5 * t), (0.6, 0.6 + 5.5 * t)])
    assert sim.error_at is None and sim.tx.idle
    assert sim.tx.stats.retries == 12 and len(sim.tx.stalls) == 2


def test_nak_without_progress_uses_a_retry_and_progress_restores_them():
    tx = gbn.GbnSender(mtu=10, window=8, ack_timeout=1.0, retry_cnt=1)
    tx.post_send(b"x" * 80, token="m")
    tx.next_segments(0.0)
    tx.on_ack(1, roce.SYNDROME_NAK_PSN_SEQ, 0.01)       # PSN 0 acked implicitly: progress
    assert tx.retries == 0 and tx.oldest_unacked_psn == 1
    assert [s.psn for s in tx.next_segments(0.01)][:2] == [1, 2]
    tx.on_ack(1, roce.SYNDROME_NAK_PSN_SEQ, 0.02)       # PSN 1 again, no progress
    assert tx.retries == 1 and tx.deadline() == pytest.approx(1.02)
    tx.next_segments(0.02)
    with pytest.raises(gbn.QpError, match="retry_cnt 1 exhausted: NAK at PSN 0x1"):
        tx.on_ack(1, roce.SYNDROME_NAK_PSN_SEQ, 0.03)


def test_timeout_exponent_zero_never_times_out():
    tx = gbn.GbnSender(mtu=10, window=8, ack_timeout=gbn.local_ack_timeout(0), retry_cnt=0)
    tx.post_send(b"x" * 20)
    tx.next_segments(0.0)
    assert tx.deadline() is None and not tx.on_timer(1e9) and tx.error is None
