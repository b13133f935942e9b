"""RoCEv2 framing: the Base Transport Header (BTH), the ACK Extended Transport
Header (AETH), immediate data and the invariant CRC (ICRC), packed with
struct so the data path never touches Scapy.

A RoCEv2 packet is IP / UDP (dport 4791) / BTH / [ImmDt | AETH] / payload /
pad / ICRC. Only the reliable-connection (RC) SEND and ACKNOWLEDGE opcodes are
used: that is what a collective library's send/recv turns into.
"""
from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass

ROCE_PORT = 4791

# RC opcodes (InfiniBand spec table 38; transport bits 000 = RC).
SEND_FIRST = 0x00
SEND_MIDDLE = 0x01
SEND_LAST = 0x02
SEND_LAST_IMM = 0x03
SEND_ONLY = 0x04
SEND_ONLY_IMM = 0x05
ACKNOWLEDGE = 0x11

DATA_OPCODES = frozenset({SEND_FIRST, SEND_MIDDLE, SEND_LAST, SEND_LAST_IMM,
                          SEND_ONLY, SEND_ONLY_IMM})
LAST_OPCODES = frozenset({SEND_LAST, SEND_LAST_IMM, SEND_ONLY, SEND_ONLY_IMM})
FIRST_OPCODES = frozenset({SEND_FIRST, SEND_ONLY, SEND_ONLY_IMM})
IMM_OPCODES = frozenset({SEND_LAST_IMM, SEND_ONLY_IMM})

# AETH syndrome: top 3 bits say ACK (000), RNR NAK (001) or NAK (011).
# An ACK's low 5 bits carry a credit count; 0x1f means "credits not used".
SYNDROME_ACK = 0x1F
SYNDROME_NAK_PSN_SEQ = 0x60     # NAK, code 0: PSN sequence error
SYNDROME_KIND_MASK = 0xE0
SYNDROME_KIND_ACK = 0x00
SYNDROME_KIND_NAK = 0x60

DEFAULT_PKEY = 0xFFFF
PSN_MASK = 0xFFFFFF
QPN_MASK = 0xFFFFFF
_PSN_HALF = 1 << 23

BTH_LEN = 12
AETH_LEN = 4
IMM_LEN = 4
ICRC_LEN = 4

_BTH = struct.Struct("!BBHII")
_AETH = struct.Struct("!I")
_IMM = struct.Struct("!I")
_ICRC = struct.Struct("<I")           # the ICRC goes on the wire little-endian
_IPV4_PSEUDO = struct.Struct("!8sBBHHHBBH4s4sHHHH")


# ---- 24-bit PSN arithmetic -------------------------------------------------

def psn_add(psn: int, n: int) -> int:
    return (psn + n) & PSN_MASK


def psn_diff(a: int, b: int) -> int:
    """Signed distance a - b in the 24-bit PSN space (a window of +-2^23)."""
    d = (a - b) & PSN_MASK
    return d - (1 << 24) if d >= _PSN_HALF else d


# ---- packets ----------------------------------------------------------------

@dataclass(frozen=True)
class RocePacket:
    """One parsed RoCE packet (the UDP payload)."""
    opcode: int
    dqpn: int
    psn: int
    ackreq: bool
    payload: bytes = b""
    imm: int | None = None
    syndrome: int | None = None     # ACKNOWLEDGE only
    msn: int | None = None          # ACKNOWLEDGE only

    @property
    def is_ack(self) -> bool:
        return self.opcode == ACKNOWLEDGE


class RoceParseError(ValueError):
    """The bytes are not a RoCE packet this engine understands."""


def _bth(opcode: int, dqpn: int, psn: int, ackreq: bool, padcnt: int) -> bytes:
    # flags byte: SE(0) M(0) PadCnt(2 bits) TVer(0)
    return _BTH.pack(opcode, (padcnt & 3) << 4, DEFAULT_PKEY,
                     dqpn & QPN_MASK, (0x80000000 if ackreq else 0) | (psn & PSN_MASK))


def icrc_ipv4_fn(src: str, dst: str, sport: int, dport: int = ROCE_PORT):
    """body -> ICRC for one IPv4 flow, over the masked pseudo-header, UDP
    header and BTH onwards.

    Masked (set to ones): 8 bytes standing for the LRH, IPv4 TOS, TTL and
    checksum, UDP checksum, and the BTH byte holding FECN/BECN/reserved. The
    IP identification must be what the kernel sends: 0 for an unconnected
    UDP socket with DF set, which is how transport.py sends. The CRC of the
    pseudo-header is cached per packet length (most packets are MTU-sized).
    """
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    prefix: dict[int, int] = {}
    crc32 = zlib.crc32

    def icrc(body) -> int:
        n = len(body)
        start = prefix.get(n)
        if start is None:
            udp_len = 8 + n + ICRC_LEN
            start = prefix[n] = crc32(_IPV4_PSEUDO.pack(
                b"\xff" * 8, 0x45, 0xFF, 20 + udp_len, 0, 0x4000, 0xFF,
                socket.IPPROTO_UDP, 0xFFFF, saddr, daddr, sport, dport, udp_len, 0xFFFF))
        crc = crc32(body[:4], start)
        crc = crc32(b"\xff", crc)
        return crc32(memoryview(body)[5:], crc) & 0xFFFFFFFF
    return icrc


def icrc_ipv4(src: str, dst: str, sport: int, dport: int, body: bytes) -> int:
    """The ICRC of one packet (see icrc_ipv4_fn)."""
    return icrc_ipv4_fn(src, dst, sport, dport)(body)


def build_data(opcode: int, dqpn: int, psn: int, payload: bytes, *,
               ackreq: bool = False, imm: int | None = None,
               icrc_of=None) -> bytes:
    """A SEND packet. icrc_of(body) -> int fills the ICRC; None leaves zeros."""
    if opcode not in DATA_OPCODES:
        raise ValueError(f"not a SEND opcode: {opcode:#x}")
    if (opcode in IMM_OPCODES) != (imm is not None):
        raise ValueError("immediate data goes with (and only with) *_WITH_IMMEDIATE")
    padcnt = -len(payload) & 3          # payloads are padded to 4 bytes
    parts = [_bth(opcode, dqpn, psn, ackreq, padcnt)]
    if imm is not None:
        parts.append(_IMM.pack(imm & 0xFFFFFFFF))
    parts.append(payload)
    if padcnt:
        parts.append(b"\0" * padcnt)
    body = b"".join(parts)
    return body + _ICRC.pack(icrc_of(body) if icrc_of else 0)


def build_ack(dqpn: int, psn: int, syndrome: int, msn: int, *, icrc_of=None) -> bytes:
    """An ACKNOWLEDGE: psn is the last PSN acknowledged (ACK) or the PSN
    expected next (NAK PSN sequence error)."""
    body = _bth(ACKNOWLEDGE, dqpn, psn, False, 0) + _AETH.pack(
        ((syndrome & 0xFF) << 24) | (msn & 0xFFFFFF))
    return body + _ICRC.pack(icrc_of(body) if icrc_of else 0)


def parse(buf: bytes, *, icrc_of=None) -> RocePacket:
    """Parse a UDP payload. With icrc_of, a wrong ICRC is a RoceParseError
    (an HCA drops such a packet silently)."""
    n = len(buf)
    if n < BTH_LEN + ICRC_LEN:
        raise RoceParseError(f"{n} bytes is shorter than BTH + ICRC")
    opcode, flags, _pkey, dqpn_word, psn_word = _BTH.unpack_from(buf, 0)
    if flags & 0x0F:
        raise RoceParseError(f"BTH transport version {flags & 0x0F} is not 0")
    if icrc_of is not None:
        body = memoryview(buf)[:n - ICRC_LEN]
        (got,) = _ICRC.unpack_from(buf, n - ICRC_LEN)
        if icrc_of(body) != got:
            raise RoceParseError("ICRC mismatch")
    dqpn = dqpn_word & QPN_MASK
    psn = psn_word & PSN_MASK
    ackreq = bool(psn_word & 0x80000000)
    end = n - ICRC_LEN
    if opcode == ACKNOWLEDGE:
        if end < BTH_LEN + AETH_LEN:
            raise RoceParseError("ACKNOWLEDGE without AETH")
        (word,) = _AETH.unpack_from(buf, BTH_LEN)
        return RocePacket(opcode, dqpn, psn, ackreq, syndrome=word >> 24,
                          msn=word & 0xFFFFFF)
    if opcode not in DATA_OPCODES:
        raise RoceParseError(f"unsupported opcode {opcode:#x}")
    start = BTH_LEN
    imm = None
    if opcode in IMM_OPCODES:
        if end < start + IMM_LEN:
            raise RoceParseError("immediate data missing")
        (imm,) = _IMM.unpack_from(buf, start)
        start += IMM_LEN
    padcnt = (flags >> 4) & 3
    if end - padcnt < start:
        raise RoceParseError("pad count larger than the payload")
    return RocePacket(opcode, dqpn, psn, ackreq, bytes(buf[start:end - padcnt]), imm)


def is_nak(syndrome: int) -> bool:
    return syndrome & SYNDROME_KIND_MASK == SYNDROME_KIND_NAK


def is_ack(syndrome: int) -> bool:
    return syndrome & SYNDROME_KIND_MASK == SYNDROME_KIND_ACK
