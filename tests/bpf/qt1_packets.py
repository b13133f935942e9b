"""Frames for the data-plane tests, built with Scapy."""

from scapy.all import (ARP, IP, TCP, UDP, Dot1Q, Ether, ICMP, IPv6,
                       IPv6ExtHdrHopByHop, IPOption_RR, raw)
from scapy.contrib.roce import AETH, BTH
from scapy.layers.vxlan import VXLAN

from qpagent import contract

HOST_A_MAC = "02:00:00:00:0a:01"
HOST_B_MAC = "02:00:00:00:0b:01"
HOST_C_MAC = "02:00:00:00:0c:01"
RC_SEND_ONLY = 4     # Scapy's BTH wants the integer opcode


def roce(dqp, src="10.0.1.1", dst="10.0.2.1", sport=49152, psn=1,
         smac=HOST_A_MAC, dmac=HOST_B_MAC, payload=64, tver=0, opcode=RC_SEND_ONLY):
    """An inner RoCEv2 frame (IPv4 or IPv6 chosen by the address)."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    bth = BTH(opcode=opcode, dqpn=dqp, psn=psn, version=tver)
    return Ether(src=smac, dst=dmac) / ip / UDP(sport=sport, dport=4791) / bth / (b"\x5a" * payload)


RC_ACKNOWLEDGE = 17
AETH_ACK = 0x1f           # ACK, credit field "invalid"
AETH_NAK_PSN_SEQ = 0x60   # NAK, PSN sequence error
AETH_RNR_NAK = 0x20 | 0x0e


def roce_ack(dqp, psn, syndrome=AETH_ACK, src="10.0.2.1", dst="10.0.1.1", sport=49152,
             smac=HOST_B_MAC, dmac=HOST_A_MAC, msn=1):
    """An RC ACKNOWLEDGE (or NAK) from the responder: BTH, AETH, ICRC."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return (Ether(src=smac, dst=dmac) / ip / UDP(sport=sport, dport=4791)
            / BTH(opcode=RC_ACKNOWLEDGE, dqpn=dqp, psn=psn) / AETH(syndrome=syndrome, msn=msn)
            / (b"\0" * 4))


def vxlan(inner, vni=10100, src="10.255.0.1", dst="10.255.0.2", sport=50000,
          smac="02:00:00:00:01:01", dmac="02:00:00:00:01:02"):
    """`inner` as the kernel's VXLAN driver sends it on an uplink."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return (Ether(src=smac, dst=dmac) / ip / UDP(sport=sport, dport=4789, chksum=0)
            / VXLAN(vni=vni, flags=0x08) / inner)


def udp(sport=1000, dport=2000, src="10.0.1.1", dst="10.0.2.1", payload=32):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return Ether(src=HOST_A_MAC, dst=HOST_B_MAC) / ip / UDP(sport=sport, dport=dport) / (b"u" * payload)


def tcp(sport=40000, dport=80, src="10.0.1.1", dst="10.0.2.1"):
    return Ether(src=HOST_A_MAC, dst=HOST_B_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport) / b"GET /"


def icmp():
    return Ether(src=HOST_A_MAC, dst=HOST_B_MAC) / IP(src="10.0.1.1", dst="10.0.2.1") / ICMP()


def arp():
    return Ether(src=HOST_A_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.1", pdst="10.0.2.1")


def vlan_tagged_roce(dqp=0x11):
    frame = roce(dqp)
    return Ether(src=frame.src, dst=frame.dst) / Dot1Q(vlan=100) / frame.payload


def roce_with_ipv4_options(dqp=0x22):
    frame = roce(dqp)
    frame[IP].options = [IPOption_RR(routers=["10.9.9.9"])]
    return Ether(raw(frame))


def roce_ipv6_hop_by_hop(dqp=0x33):
    return (Ether(src=HOST_A_MAC, dst=HOST_B_MAC) / IPv6(src="fd00::1", dst="fd00::2")
            / IPv6ExtHdrHopByHop() / UDP(sport=49152, dport=4791)
            / BTH(opcode=RC_SEND_ONLY, dqpn=dqp, psn=1) / (b"\x5a" * 16))


def roce_fragment(first=True, dqp=0x44):
    frame = roce(dqp)
    if first:
        frame[IP].flags = "MF"
    else:
        frame[IP].frag = 8
    return Ether(raw(frame))


def roce_bad_bth(dqp=0x55):
    return roce(dqp, tver=3)


def probe_msg(kind, vtep=2, path=1, seq=7, tx_ns=123_456_789):
    """struct probe_msg as the agent sends it (layout from bpf/include)."""
    msg = contract.STRUCTS["probe_msg"]()
    msg.magic = int.from_bytes(contract.CONSTANTS["PROBE_MAGIC"].to_bytes(4, "big"), "little")
    msg.kind, msg.vtep, msg.path, msg.seq, msg.tx_ns = kind, vtep, path, seq, tx_ns
    return bytes(msg)


def probe_frame(payload, src="10.255.0.2", dst="10.255.0.1", sport=50123, dport=4789,
          smac="02:00:00:00:01:02", dmac="02:00:00:00:01:01", ttl=61, vni=0xFFFFFF, tos=0):
    """A liveness probe as it arrives on an uplink: outer IPv4 VXLAN with the
    probe VNI, `payload` (a probe_msg, or anything) after the VXLAN header."""
    ip = (IPv6(src=src, dst=dst, hlim=ttl) if ":" in src
          else IP(src=src, dst=dst, ttl=ttl, id=0x4242, tos=tos))
    return Ether(raw(Ether(src=smac, dst=dmac) / ip / UDP(sport=sport, dport=dport, chksum=0)
                     / VXLAN(vni=vni, flags=0x08) / payload))
