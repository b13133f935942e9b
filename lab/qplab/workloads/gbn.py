"""Go-back-N reliable connection state machines, like an RC queue pair's
requester and responder. Pure: no sockets, time passed in, so a simulated
lossy and reordering channel can drive them in tests.

Requester: SEND messages are cut into MTU-sized packets with consecutive
24-bit PSNs; at most `window` packets are unacknowledged. An ACK names the
last PSN received in order; a NAK (PSN sequence error) names the PSN the
responder expects and makes the requester go back to it; no progress for
`rto` seconds makes it go back to the oldest unacknowledged packet. After
`retry_limit` timeouts in a row without progress the QP is in error, as an
RC QP is after retry_cnt.

Responder: accepts only the expected PSN, reassembles messages, ACKs
cumulatively (on AckReq and every `ack_every` packets), re-ACKs duplicates
and sends one NAK per gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import roce


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
    timeouts: int = 0
    naks: int = 0
    acks: int = 0
    messages_completed: int = 0
    bytes_completed: int = 0


class QpError(RuntimeError):
    """The requester gave up (retry limit exceeded)."""


class GbnSender:
    def __init__(self, *, mtu: int = 1024, window: int = 128, rto: float = 0.2,
                 retry_limit: int | None = 7, start_psn: int = 0):
        if mtu <= 0 or window <= 0 or rto <= 0:
            raise ValueError("mtu, window and rto must be positive")
        self.mtu, self.window, self.rto = mtu, window, rto
        self.retry_limit = retry_limit
        self.base_psn = start_psn & roce.PSN_MASK   # PSN of _segs[0]
        # Segment list: (opcode, payload, imm, msg_end_token); index i has
        # PSN base_psn + i. [una, nxt) is in flight, [nxt, len) not yet sent.
        self._segs: list[tuple[int, bytes, int | None, object]] = []
        self._una = 0
        self._nxt = 0
        self._high = 0                 # one past the highest index ever sent
        self._last_progress: float | None = None
        self._retries = 0
        self.error: str | None = None
        self.progress = 0              # bumps whenever the oldest unacked PSN moves
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

    def deadline(self) -> float | None:
        """When on_timer must run next, or None when nothing is in flight."""
        if self._una == self._nxt or self._last_progress is None:
            return None
        return self._last_progress + self.rto

    # -- sending -----------------------------------------------------------
    def next_segments(self, now: float, budget: int | None = None) -> list[Segment]:
        """Packets to transmit now, within the window (and budget)."""
        if self.error:
            return []
        out = []
        limit = min(len(self._segs), self._una + self.window)
        if budget is not None:
            limit = min(limit, self._nxt + budget)
        while self._nxt < limit:
            i = self._nxt
            op, payload, imm, done = self._segs[i]
            # Ask for an ACK at a message end and when the window fills.
            ackreq = done is not None or i + 1 == self._una + self.window
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
        if out and self._last_progress is None:
            self._last_progress = now
        return out

    # -- feedback ----------------------------------------------------------
    def on_ack(self, psn: int, syndrome: int, now: float) -> list[object]:
        """Feed one ACKNOWLEDGE; returns the tokens of messages now complete."""
        st = self.stats
        if roce.is_nak(syndrome):
            if syndrome != roce.SYNDROME_NAK_PSN_SEQ:
                self.error = f"NAK syndrome {syndrome:#x}"
                return []
            st.naks += 1
            upto = roce.psn_diff(psn, self.base_psn)     # index expected next
            if not self._una <= upto <= self._high:
                return []                                  # stale or bogus
            done = self._advance(upto, now)
            self._nxt = self._una                          # go back N
            return done
        if not roce.is_ack(syndrome):
            return []                                      # RNR NAK: not used here
        st.acks += 1
        upto = roce.psn_diff(psn, self.base_psn) + 1
        if not self._una < upto <= self._high:
            return []                                      # duplicate or stale ACK
        return self._advance(upto, now)

    def on_timer(self, now: float) -> bool:
        """Go back to the oldest unacknowledged packet if it has timed out.
        Returns True when it did."""
        dl = self.deadline()
        if dl is None or now < dl:
            return False
        self.stats.timeouts += 1
        self._retries += 1
        if self.retry_limit is not None and self._retries > self.retry_limit:
            self.error = f"retry limit {self.retry_limit} exceeded at PSN {roce.psn_add(self.base_psn, self._una)}"
            raise QpError(self.error)
        self._nxt = self._una
        self._last_progress = now
        return True

    def _advance(self, upto: int, now: float) -> list[object]:
        done = []
        st = self.stats
        if upto > self._una:
            self._retries = 0
            self._last_progress = now
            self.progress += 1
        for i in range(self._una, upto):
            fin = self._segs[i][3]
            if fin is not None:
                token, n = fin
                done.append(token)
                st.messages_completed += 1
                st.bytes_completed += n
        self._una = max(self._una, upto)
        if self._nxt < self._una:
            self._nxt = self._una
        if self._una == self._nxt:
            self._last_progress = None if self._una == len(self._segs) else now
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
