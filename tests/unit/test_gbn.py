"""Go-back-N recovers every message, in order and intact, over a simulated
channel with seeded random loss, reordering and delay in both directions."""
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


def run_pair(seed, n_msgs, loss, jitter, start_psn, window, mtu=64, max_time=600.0):
    rng = random.Random(seed)
    tx = gbn.GbnSender(mtu=mtu, window=window, rto=0.05, retry_limit=None,
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
    tx, rx, sent, received, completed, net = run_pair(
        seed, rng.randrange(1, 12), loss, jitter, start_psn, window)
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
    tx = gbn.GbnSender(mtu=10, window=8, rto=1.0)
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


def test_timeout_rewinds_and_retry_limit_errors_the_qp():
    tx = gbn.GbnSender(mtu=10, window=8, rto=0.1, retry_limit=2)
    tx.post_send(b"x" * 20, token=1)
    assert len(tx.next_segments(0.0)) == 2
    assert tx.deadline() == pytest.approx(0.1)
    assert not tx.on_timer(0.05)
    assert tx.on_timer(0.1)
    assert [s.psn for s in tx.next_segments(0.1)] == [0, 1]
    assert tx.on_timer(0.2)
    tx.next_segments(0.2)
    with pytest.raises(gbn.QpError, match="retry limit 2"):
        tx.on_timer(0.35)


def test_window_limits_packets_in_flight():
    tx = gbn.GbnSender(mtu=1, window=4, rto=1.0)
    tx.post_send(b"abcdefgh", token=0)
    segs = tx.next_segments(0.0)
    assert [s.ackreq for s in segs] == [False, False, False, True]   # AckReq as the window fills
    assert tx.next_segments(0.0) == []
    tx.on_ack(1, roce.SYNDROME_ACK, 0.001)
    assert [s.psn for s in tx.next_segments(0.001)] == [4, 5]
