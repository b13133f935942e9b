"""BTH/AETH/ImmDt/ICRC built by the engine parse with Scapy's RoCE layers."""
import pytest
from scapy.contrib.roce import AETH, BTH
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from qplab.workloads import roce

SRC, DST, SPORT = "10.100.0.11", "10.100.0.21", 0xC123


def icrc(body):
    return roce.icrc_ipv4(SRC, DST, SPORT, roce.ROCE_PORT, body)


def on_wire(udp_payload):
    """What the kernel puts on the wire for an unconnected DF socket."""
    return IP(bytes(IP(src=SRC, dst=DST, flags="DF", id=0, ttl=64) /
                    UDP(sport=SPORT, dport=roce.ROCE_PORT) / Raw(udp_payload)))


def scapy_icrc(pkt):
    """Scapy's own ICRC for the same packet (rebuilt with icrc unset)."""
    rebuilt = pkt.copy()
    rebuilt[BTH].icrc = None
    return IP(bytes(rebuilt))[BTH].icrc


@pytest.mark.parametrize("opcode,payload,imm", [
    (roce.SEND_FIRST, b"A" * 1024, None),
    (roce.SEND_MIDDLE, b"B" * 1024, None),
    (roce.SEND_LAST, b"C" * 7, None),
    (roce.SEND_LAST_IMM, b"D" * 9, 0xDEADBEEF),
    (roce.SEND_ONLY, b"", None),
    (roce.SEND_ONLY_IMM, b"hello", 0x01020304),
])
def test_send_packets_parse_with_scapy(opcode, payload, imm):
    raw = roce.build_data(opcode, 0xABCDEF, 0xFFFFFE, payload, ackreq=True,
                          imm=imm, icrc_of=icrc)
    pkt = on_wire(raw)
    bth = pkt[BTH]
    got = dict(opcode=bth.opcode, dqpn=bth.dqpn, psn=bth.psn, ackreq=bth.ackreq,
               version=bth.version, pkey=bth.pkey, padcount=bth.padcount)
    want = dict(opcode=opcode, dqpn=0xABCDEF, psn=0xFFFFFE, ackreq=1,
                version=0, pkey=0xFFFF, padcount=-len(payload) & 3)
    assert got == want
    # Scapy leaves ImmDt + payload + pad as raw bytes after the BTH.
    rest = bytes(bth.payload)
    head = b"" if imm is None else imm.to_bytes(4, "big")
    assert rest == head + payload + b"\0" * (-len(payload) & 3)
    assert bth.icrc == scapy_icrc(pkt)
    # And our parser reads back what we built.
    back = roce.parse(raw, icrc_of=icrc)
    assert (back.opcode, back.dqpn, back.psn, back.ackreq, back.payload, back.imm) == \
        (opcode, 0xABCDEF, 0xFFFFFE, True, payload, imm)


@pytest.mark.parametrize("syndrome,psn,msn", [
    (roce.SYNDROME_ACK, 0x000123, 7),
    (roce.SYNDROME_NAK_PSN_SEQ, 0xFFFFFF, 0xFFFFFF),
])
def test_acknowledge_parses_with_scapy_aeth(syndrome, psn, msn):
    raw = roce.build_ack(0x000042, psn, syndrome, msn, icrc_of=icrc)
    pkt = on_wire(raw)
    assert pkt[BTH].opcode == roce.ACKNOWLEDGE
    assert (pkt[BTH].dqpn, pkt[BTH].psn) == (0x42, psn)
    assert (pkt[AETH].syndrome, pkt[AETH].msn) == (syndrome, msn)
    assert pkt[BTH].icrc == scapy_icrc(pkt)
    back = roce.parse(raw, icrc_of=icrc)
    assert (back.is_ack, back.psn, back.syndrome, back.msn) == (True, psn, syndrome, msn)


def test_scapy_built_packet_parses_with_engine():
    pkt = IP(src=SRC, dst=DST, flags="DF", id=0) / UDP(sport=SPORT, dport=roce.ROCE_PORT) / \
        BTH(opcode=roce.SEND_ONLY, dqpn=5, psn=9, ackreq=1) / Raw(b"abcd")
    udp_payload = bytes(IP(bytes(pkt))[UDP].payload)
    back = roce.parse(udp_payload, icrc_of=icrc)
    assert (back.opcode, back.dqpn, back.psn, back.ackreq, back.payload) == \
        (roce.SEND_ONLY, 5, 9, True, b"abcd")


def test_corrupted_packet_fails_icrc():
    raw = bytearray(roce.build_data(roce.SEND_ONLY, 1, 2, b"x" * 64, icrc_of=icrc))
    raw[20] ^= 1
    with pytest.raises(roce.RoceParseError, match="ICRC"):
        roce.parse(bytes(raw), icrc_of=icrc)


@pytest.mark.parametrize("bad,msg", [
    (b"\x04" * 5, "shorter"),
    (roce.build_data(roce.SEND_ONLY, 1, 2, b"")[:1] + b"\x01" + b"\0" * 14, "version"),
    (bytes([0x64]) + b"\0" * 15, "unsupported opcode"),
])
def test_malformed_packets_are_clear_errors(bad, msg):
    with pytest.raises(roce.RoceParseError, match=msg):
        roce.parse(bad)


def test_psn_arithmetic_wraps_at_24_bits():
    assert roce.psn_add(0xFFFFFF, 1) == 0
    assert roce.psn_add(0, -1) == 0xFFFFFF
    assert roce.psn_diff(0, 0xFFFFFF) == 1
    assert roce.psn_diff(0xFFFFFF, 0) == -1
    assert roce.psn_diff(5, 5) == 0
