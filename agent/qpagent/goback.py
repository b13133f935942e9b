"""Go-back NAKs: the frame that makes a requester resend at once.

A QP whose path died with data in flight has lost a window: its requester
learns of it from the responder's NAK when a later packet arrives, or from
its local ACK timer (about a second with NCCL's settings) when nothing
later was sent or the NAK itself was lost. After the VTEP moves such a QP,
the agent hands the requester the NAK it is waiting for: the responder's
own latest ACK (path_probe keeps it, struct ack_frame) turned into a NAK
(PSN sequence error) naming the oldest unacknowledged PSN. The requester
goes back to it over the new path one RTT earlier than any NAK could come,
and a second or later resend is harmless: the responder re-ACKs duplicates.

Only IPv4 without options (the shape path_probe keeps). The ICRC is
computed over the masked fields of RoCEv2 (IBA annex A17): 8 bytes of ones
for the LRH, IPv4 TOS, TTL and checksum, UDP checksum and the BTH byte with
FECN/BECN set to ones.
"""

from __future__ import annotations

import struct
import zlib

from qpagent.contract import CONSTANTS

ACK_FRAME_LEN = CONSTANTS["ACK_FRAME_LEN"]
ROCE_UDP_PORT = CONSTANTS["ROCE_UDP_PORT"]
PSN_MASK = CONSTANTS["PSN_MASK"]
ETH_LEN, IP_LEN, UDP_LEN, BTH_LEN, AETH_LEN, ICRC_LEN = 14, 20, 8, 12, 4, 4
IP_AT = ETH_LEN
UDP_AT = IP_AT + IP_LEN
BTH_AT = UDP_AT + UDP_LEN
AETH_AT = BTH_AT + BTH_LEN
ICRC_AT = AETH_AT + AETH_LEN
RC_ACKNOWLEDGE = 0x11
SYNDROME_NAK_PSN_SEQ = 0x60
AETH_TYPE_MASK = 0x60
AETH_TYPE_ACK = 0x00


class NotAnAck(ValueError):
    """The kept frame is not an RC ACK of the shape a NAK is made from."""


def check_ack(frame: bytes) -> None:
    """Raise NotAnAck unless `frame` is an IPv4 RoCEv2 RC ACK, whole."""
    if len(frame) != ACK_FRAME_LEN:
        raise NotAnAck(f"{len(frame)} bytes, not {ACK_FRAME_LEN}")
    if frame[12:14] != b"\x08\x00" or frame[IP_AT] != 0x45:
        raise NotAnAck("not IPv4 without options")
    if frame[IP_AT + 9] != 17 or struct.unpack_from("!H", frame, UDP_AT + 2)[0] != ROCE_UDP_PORT:
        raise NotAnAck("not UDP to the RoCEv2 port")
    if frame[BTH_AT] != RC_ACKNOWLEDGE:
        raise NotAnAck(f"BTH opcode {frame[BTH_AT]:#x} is not RC ACKNOWLEDGE")
    if frame[AETH_AT] & AETH_TYPE_MASK != AETH_TYPE_ACK:
        raise NotAnAck(f"AETH syndrome {frame[AETH_AT]:#x} is not an ACK")


def icrc(frame: bytes | bytearray) -> int:
    """The ICRC of an IPv4 RoCEv2 frame (Ethernet header first, ICRC last)."""
    ip = bytearray(frame[IP_AT:UDP_AT])
    ip[1] = 0xFF                              # TOS (DSCP and ECN)
    ip[8] = 0xFF                              # TTL
    ip[10:12] = b"\xff\xff"                   # header checksum
    udp = bytearray(frame[UDP_AT:BTH_AT])
    udp[6:8] = b"\xff\xff"                    # UDP checksum
    bth = bytearray(frame[BTH_AT:len(frame) - ICRC_LEN])
    bth[4] = 0xFF                             # FECN, BECN, reserved
    return zlib.crc32(b"\xff" * 8 + ip + udp + bth) & 0xFFFFFFFF


def nak_from_ack(frame: bytes, psn: int) -> bytes:
    """The responder's ACK `frame` as a NAK (PSN sequence error) expecting
    `psn`: the same addresses, ports, QP, P_Key and MSN, so the requester
    takes it as its responder's. Raises NotAnAck for anything else."""
    check_ack(frame)
    out = bytearray(frame)
    word = struct.unpack_from("!I", out, BTH_AT + 8)[0]
    # AckReq stays clear; the PSN is the one the requester goes back to.
    struct.pack_into("!I", out, BTH_AT + 8, (word & 0x7F000000) | (psn & PSN_MASK))
    out[AETH_AT] = SYNDROME_NAK_PSN_SEQ
    struct.pack_into("<I", out, ICRC_AT, icrc(out))   # the ICRC goes on the wire little-endian
    if struct.unpack_from("!H", out, UDP_AT + 6)[0]:   # 0: the sender left it out
        struct.pack_into("!H", out, UDP_AT + 6, udp_checksum(out))
    return bytes(out)


def udp_checksum(frame: bytes | bytearray) -> int:
    """The UDP checksum of an IPv4 frame (the field itself taken as 0)."""
    udp = bytearray(frame[UDP_AT:])
    udp[6:8] = b"\0\0"
    pseudo = frame[IP_AT + 12:IP_AT + 20] + struct.pack("!BBH", 0, 17, len(udp))
    data = pseudo + udp + b"\0" * (len(udp) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


def host_mac(frame: bytes) -> str:
    """The requester's MAC: where the NAK goes (the ACK's destination)."""
    return ":".join(f"{b:02x}" for b in frame[:6])
