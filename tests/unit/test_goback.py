"""Go-back NAKs (qpagent.goback): the responder's last ACK in, the NAK the
requester must take as its responder's out, compared whole with the frame
Scapy builds (and checksums) on its own."""

import pytest
from scapy.contrib.roce import AETH, BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from qpagent import goback

HOST, PEER = "02:00:00:00:01:01", "02:00:00:00:02:01"


def ack(psn=77, syndrome=0x1F, msn=9, opcode=0x11, ip=None):
    """The responder 10.0.2.1's ACK to the requester's QP 0x0a (ICRC by Scapy)."""
    ip = ip or IP(src="10.0.2.1", dst="10.0.1.1", flags="DF", id=0, ttl=63, tos=0x6a)
    return bytes(Ether(src=PEER, dst=HOST) / ip / UDP(sport=49152, dport=4791)
                 / BTH(opcode=opcode, dqpn=0x0A, psn=psn, pkey=0xFFFF)
                 / AETH(syndrome=syndrome, msn=msn))


def dump(frame: bytes) -> str:
    return Ether(frame).show(dump=True)


def test_the_icrc_is_the_one_scapy_computes():
    frame = ack()
    assert goback.icrc(frame).to_bytes(4, "little") == frame[-4:]


def test_an_ack_becomes_the_nak_its_responder_would_send_for_the_psn():
    got = goback.nak_from_ack(ack(psn=77, msn=9), psn=78)
    want = ack(psn=78, syndrome=goback.SYNDROME_NAK_PSN_SEQ, msn=9)
    assert dump(got) == dump(want)
    assert got == want


def test_the_psn_wraps_at_24_bits():
    got = goback.nak_from_ack(ack(psn=0xFFFFFF), psn=0x1000000)
    assert Ether(got)[BTH].psn == 0


def test_the_nak_goes_to_the_host_the_ack_was_for():
    assert goback.host_mac(ack()) == HOST


@pytest.mark.parametrize("frame, why", [
    (ack(syndrome=0x60), "not an ACK"),
    (ack(opcode=0x04), "not RC ACKNOWLEDGE"),
    (ack()[:-1], "61 bytes"),
    (ack(ip=IP(src="10.0.2.1", dst="10.0.1.1", options=b"\x01\x01\x01\x00"))[:62],
     "not IPv4 without options"),
    (bytes(Ether(src=PEER, dst=HOST) / IPv6(src="fd00::2", dst="fd00::1")
           / UDP(sport=49152, dport=4791) / BTH(opcode=0x11) / AETH())[:62],
     "not IPv4 without options"),
])
def test_anything_but_a_whole_ipv4_ack_makes_no_nak(frame, why):
    with pytest.raises(goback.NotAnAck, match=why):
        goback.nak_from_ack(frame, psn=1)


def test_a_udp_checksum_left_out_stays_out():
    frame = bytes(Ether(ack()[:14]) / IP(ack()[14:34]) / UDP(sport=49152, dport=4791, chksum=0)
                  / BTH(opcode=0x11, dqpn=0x0A, psn=77, pkey=0xFFFF) / AETH(syndrome=0x1F, msn=9))
    assert Ether(goback.nak_from_ack(frame, psn=78))[UDP].chksum == 0
