"""Go-back-N reliable connection state machines, like an RC queue pair's
requester and responder. Pure: no sockets, time passed in, so a simulated
lossy and reordering channel can drive them in tests.

Requester: SEND messages are cut into MTU-sized packets with consecutive
24-bit PSNs; at most `window` packets are unacknowledged. Retransmission
follows the verbs semantics of an RC QP:
- an ACK names the last PSN received in order; progress (the oldest
  unacknowledged PSN moving) restarts the local ACK timer and the retry count;
- a NAK (PSN sequence error) names the PSN the responder expects: the
  requester goes back to it at once (go-back-N), without waiting for a timer;
- the local ACK timer (4.096 us x 2^timeout, see local_ack_timeout) firing
  with packets outstanding and no progress makes it go back to the oldest
  unacknowledged packet. The timer interval never grows: no backoff;
- every go-back that follows no progress (a timeout, or a NAK naming the
  oldest unacknowledged PSN again) uses one of `retry_cnt` retries; when a
  go-back is due with none left, the QP is in the error state for good, as an
  RC QP is after retry_cnt (IBV_WC_RETRY_EXC_ERR).

The requester sets AckReq at each message end and on the last packet of
each burst. Responder: accepts only the expected PSN, reassembles messages, ACKs
cumulatively (on AckReq and every `ack_every` packets), re-ACKs duplicates
and sends one NAK per gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import roce

ACK_TIMEOUT_UNIT = 4.096e-6    # seconds; the verbs `timeout` attribute is its log2 multiplier
TIMEOUT_EXP_MAX = 31           # 5-bit field
RETRY_CNT_MAX = 7              # 3-bit field


def local_ack_timeout(timeout_exp: int) -> float | None:
    """Seconds of the local ACK timeout for the verbs QP attribute `timeout`;
    None for 0, which means the requester never times out."""
    if not 0 <= timeout_exp <= TIMEOUT_EXP_MAX:
        raise ValueError(f"timeout exponent {timeout_exp} is outside 0..{TIMEOUT_EXP_MAX}")
    return None if timeout_exp == 0 else ACK_TIMEOUT_UNIT * (1 << timeout_exp)


@dataclass(frozen=True)
class RetryPolicy:
    """The two verbs QP attributes that decide how long an RC QP survives
    silence: `timeout` (exponent) and `retry_cnt`."""
    timeout_exp: int
    retry_cnt: int

    def __post_init__(self):
        local_ack_timeout(self.timeout_exp)             # validates the range
        if not 0 <= self.retry_cnt <= RETRY_CNT_MAX:
            raise ValueError(f"retry_cnt {self.retry_cnt} is outside 0..{RETRY_CNT_MAX}")

    @property
    def ack_timeout(self) -> float | None:
        return local_ack_timeout(self.timeout_exp)

    @property
    def budget(self) -> float | None:
        """Silence from the last progress to the QP in error: the first
        transmission's timeout plus one per retry."""
        t = self.ack_timeout
        return None if t is None else t * (self.retry_cnt + 1)


# "nccl": the NCCL_IB_TIMEOUT and NCCL_IB_RETRY_CNT defaults of current NCCL
# releases (older ones used timeout 14, then 18): 4.3 s, 7 retries, 34 s to error.
# "tight": tuned for fast recovery: 67 ms, 7 retries, 537 ms to error.
RETRY_PRESETS = {
    "nccl": RetryPolicy(timeout_exp=20, retry_cnt=7),
    "tight": RetryPolicy(timeout_exp=14, retry_cnt=7),
    # 1.07 s: above the lab WAN's worst queueing (400 ms of buffer) plus a
    # 100 ms round trip, so a full queue never fires it, yet a lost tail
    # costs a quarter of NCCL's 4.3 s: the sweep measures the network, not the timer.
    "wan": RetryPolicy(timeout_exp=18, retry_cnt=7),
}


@dataclass(frozen=True)
class Segment:
    """One packet of a message, ready to be (re)transmitted."""
    psn: int
    opcode: int
    payload: bytes
    ackreq: bool
    imm: int | None
    retransmit: bool


@dataclass
class SenderStats:
    packets: int = 0            # every packet put on the wire
    retransmitted: int = 0      # of which sent before
    payload_bytes: int = 0      # payload on the wire, retransmissions included
    timeouts: int = 0           # local ACK timer expiries
    naks: int = 0
    acks: int = 0
    retries: int = 0            # go-backs that used a retry (timeouts + NAKs without progress)
    messages_completed: int = 0
    bytes_completed: int = 0


class QpError(RuntimeError):
    """The requester ran out of retries: the QP is in the error state."""


class GbnSender:
    def __init__(self, *, mtu: int = 1024, window: int = 128, ack_timeout: float | None = 0.2,
                 retry_cnt: int | None = RETRY_CNT_MAX, start_psn: int = 0,
                 stall_min: float = 0.05):
        """ack_timeout None: never time out (verbs timeout 0). retry_cnt
        None: never give up (no verbs setting does that; for models only).
        Stalls (outstanding data without progress) of at least stall_min
        seconds are kept in `stalls`."""
        if mtu <= 0 or window <= 0 or (ack_timeout is not None and ack_timeout <= 0):
            raise ValueError("mtu, window and ack_timeout must be positive")
        if retry_cnt is not None and retry_cnt < 0:
            raise ValueError("retry_cnt must not be negative")
        self.mtu, self.window, self.ack_timeout = mtu, window, ack_timeout
        self.retry_cnt = retry_cnt
        self.stall_min = stall_min
        self.base_psn = start_psn & roce.PSN_MASK   # PSN of _segs[0]
        # Segment list: (opcode, payload, imm, msg_end_token); index i has
        # PSN base_psn + i. [una, nxt) is in flight, [nxt, len) not yet sent.
        self._segs: list[tuple[int, bytes, int | None, object]] = []
        self._una = 0
        self._nxt = 0
        self._high = 0                 # one past the highest index ever sent
        self._timer_from: float | None = None     # local ACK timer running since
        self._waiting_since: float | None = None  # outstanding without progress since
        self.retries = 0               # retries used since the last progress
        self.error: str | None = None
        self.error_at: float | None = None
        self.progress = 0              # bumps whenever the oldest unacked PSN moves
        self.stalls: list[tuple[float, float]] = []
        self.stats = SenderStats()

    # -- posting work ------------------------------------------------------
    def post_send(self, data: bytes, imm: int | None = None, token: object = None) -> None:
        """Queue one SEND message; `token` comes back from on_ack when the
        whole message is acknowledged."""
        n = len(data)
        chunks = [data[o:o + self.mtu] for o in range(0, n, self.mtu)] or [b""]
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            if last == 0:
                op = roce.SEND_ONLY if imm is None else roce.SEND_ONLY_IMM
            elif i == 0:
                op = roce.SEND_FIRST
            elif i < last:
                op = roce.SEND_MIDDLE
            else:
                op = roce.SEND_LAST if imm is None else roce.SEND_LAST_IMM
            done = (token, n) if i == last else None
            self._segs.append((op, chunk, imm if i == last else None, done))

    # -- state -------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return self._nxt - self._una

    @property
    def idle(self) -> bool:
        """Nothing unacknowledged and nothing waiting to be sent."""
        return self._una == len(self._segs)

    @property
    def next_psn(self) -> int:
        return roce.psn_add(self.base_psn, self._nxt)

    @property
    def oldest_unacked_psn(self) -> int:
        return roce.psn_add(self.base_psn, self._una)

    @property
    def waiting_since(self) -> float | None:
        """Since when packets have been outstanding without progress."""
        return self._waiting_since

    def deadline(self) -> float | None:
        """When on_timer must run next, or None when no timer runs."""
        if self.error or self.ack_timeout is None or self._timer_from is None:
            return None
        return self._timer_from + self.ack_timeout

    # -- sending -----------------------------------------------------------
    def next_segments(self, now: float, budget: int | None = None) -> list[Segment]:
        """Packets to transmit now, within the window (and budget)."""
        if self.error:
            return []
        out = []
        limit = min(len(self._segs), self._una + self.window)
        if budget is not None:
            limit = min(limit, self._nxt + budget)
        if self._nxt < limit and self._una == self._nxt and self._timer_from is None:
            self._timer_from = now                 # first packet in flight: the timer starts
            if self._waiting_since is None:
                self._waiting_since = now
        while self._nxt < limit:
            i = self._nxt
            op, payload, imm, done = self._segs[i]
            # Ask for an ACK at a message end and at the end of each burst
            # (window full, budget spent, or a lone retransmission): what is
            # sent is always answered, even when nothing follows for a while.
            ackreq = done is not None or i + 1 == limit
            retx = i < self._high
            out.append(Segment(roce.psn_add(self.base_psn, i), op, payload, ackreq, imm, retx))
            self._nxt = i + 1
            st = self.stats
            st.packets += 1
            st.payload_bytes += len(payload)
            if retx:
                st.retransmitted += 1
        if self._nxt > self._high:
            self._high = self._nxt
        return out

    # -- feedback ----------------------------------------------------------
    def on_ack(self, psn: int, syndrome: int, now: float) -> list[object]:
        """Feed one ACKNOWLEDGE; returns the tokens of messages now complete.
        A NAK that leaves no retry puts the QP in error (QpError)."""
        if self.error:
            return []
        st = self.stats
        if roce.is_nak(syndrome):
            if syndrome != roce.SYNDROME_NAK_PSN_SEQ:
                self._fail(now, f"NAK syndrome {syndrome:#x} at PSN {psn:#x}")
            st.naks += 1
            upto = roce.psn_diff(psn, self.base_psn)     # index expected next
            if not self._una <= upto <= self._high:
                return []                                  # stale or bogus
            progressed = upto > self._una
            done = self._advance(upto, now)
            if not progressed and self._una < self._nxt:
                self._use_retry(now, f"NAK at PSN {psn:#x}")
            self._go_back(now)
            return done
        if not roce.is_ack(syndrome):
            return []                                      # RNR NAK: not used here
        st.acks += 1
        upto = roce.psn_diff(psn, self.base_psn) + 1
        if not self._una < upto <= self._high:
            return []                                      # duplicate or stale ACK
        return self._advance(upto, now)

    def on_timer(self, now: float) -> bool:
        """Go back to the oldest unacknowledged packet if the local ACK
        timer has expired. Returns True when it did; raises QpError when no
        retry was left."""
        dl = self.deadline()
        if dl is None or now < dl:
            return False
        self.stats.timeouts += 1
        self._use_retry(now, f"local ACK timeout ({self.ack_timeout * 1e3:.4g} ms)")
        self._go_back(now)
        return True

    # -- internals ---------------------------------------------------------
    def _use_retry(self, now: float, why: str) -> None:
        if self.retry_cnt is not None and self.retries >= self.retry_cnt:
            self._fail(now, f"retry_cnt {self.retry_cnt} exhausted: {why} at PSN "
                            f"{self.oldest_unacked_psn:#x} after {self.retries} retries")
        self.retries += 1
        self.stats.retries += 1

    def _fail(self, now: float, why: str) -> None:
        self.error, self.error_at = why, now
        self._timer_from = None
        raise QpError(why)

    def _go_back(self, now: float) -> None:
        self._nxt = self._una
        # Nothing is in flight now; the timer restarts with the retransmission.
        self._timer_from = None if self._una == len(self._segs) else now

    def _advance(self, upto: int, now: float) -> list[object]:
        done = []
        st = self.stats
        if upto > self._una:
            self.retries = 0
            self.progress += 1
            since = self._waiting_since
            if since is not None and now - since >= self.stall_min:
                self.stalls.append((since, now))
        for i in range(self._una, upto):
            fin = self._segs[i][3]
            if fin is not None:
                token, n = fin
                done.append(token)
                st.messages_completed += 1
                st.bytes_completed += n
        if upto > self._una:
            self._una = upto
            if self._nxt < self._una:
                self._nxt = self._una
            if self._una == self._nxt:
                self._timer_from = self._waiting_since = None   # nothing in flight
            else:
                self._timer_from = self._waiting_since = now
        self._compact()
        return done

    def _compact(self) -> None:
        # Drop acknowledged segments now and then so memory stays bounded.
        if self._una >= 4096 and self._una * 2 >= len(self._segs):
            k = self._una
            del self._segs[:k]
            self.base_psn = roce.psn_add(self.base_psn, k)
            self._una -= k
            self._nxt -= k
            self._high -= k


@dataclass
class ReceiverStats:
    packets: int = 0
    accepted: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    naks_sent: int = 0
    acks_sent: int = 0
    messages: int = 0
    bytes: int = 0
    sequence_errors: int = 0


@dataclass(frozen=True)
class Ack:
    psn: int
    syndrome: int
    msn: int


@dataclass(frozen=True)
class Message:
    data: bytes
    imm: int | None


@dataclass
class GbnReceiver:
    start_psn: int = 0
    ack_every: int = 16
    epsn: int = field(init=False)
    msn: int = field(init=False, default=0)
    stats: ReceiverStats = field(init=False, default_factory=ReceiverStats)

    def __post_init__(self):
        self.epsn = self.start_psn & roce.PSN_MASK
        self._parts: list[bytes] | None = None   # message being reassembled
        self._nak_sent = False
        self._since_ack = 0
        self._dups = 0

    def _ack(self) -> Ack:
        self._since_ack = 0
        self.stats.acks_sent += 1
        return Ack(roce.psn_add(self.epsn, -1), roce.SYNDROME_ACK, self.msn)

    def on_packet(self, opcode: int, psn: int, ackreq: bool, payload: bytes,
                  imm: int | None = None) -> tuple[list[Ack], list[Message]]:
        """Feed one SEND packet; returns (ACKs/NAKs to send, messages delivered)."""
        st = self.stats
        st.packets += 1
        d = roce.psn_diff(psn, self.epsn)
        if d < 0:                                   # already have it
            st.duplicates += 1
            self._dups += 1
            if ackreq or self._dups >= self.ack_every:
                self._dups = 0
                return [self._ack()], []
            return [], []
        if d > 0:                                   # a gap: NAK once per gap
            st.out_of_order += 1
            if self._nak_sent:
                return [], []
            self._nak_sent = True
            st.naks_sent += 1
            return [Ack(self.epsn, roce.SYNDROME_NAK_PSN_SEQ, self.msn)], []
        # In order. Check the opcode sequence like a responder does.
        in_msg = self._parts is not None
        if (opcode in roce.FIRST_OPCODES) == in_msg:
            st.sequence_errors += 1                 # cannot happen with a sane requester
            self._parts = None
            return [], []
        st.accepted += 1
        self._nak_sent = False
        self._dups = 0
        self.epsn = roce.psn_add(self.epsn, 1)
        delivered = []
        if opcode in (roce.SEND_ONLY, roce.SEND_ONLY_IMM):
            delivered.append(Message(payload, imm))
        else:
            if opcode == roce.SEND_FIRST:
                self._parts = [payload]
            else:
                self._parts.append(payload)
            if opcode in roce.LAST_OPCODES:
                delivered.append(Message(b"".join(self._parts), imm))
                self._parts = None
        if delivered:
            self.msn = (self.msn + 1) & 0xFFFFFF
            st.messages += 1
            st.bytes += len(delivered[0].data)
        self._since_ack += 1
        if ackreq or self._since_ack >= self.ack_every:
            return [self._ack()], delivered
        return [], delivered
