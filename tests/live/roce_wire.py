"""RoCEv2 frames in, VXLAN frames captured and decoded out, over real
AF_PACKET sockets opened inside the test's namespaces."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

from scapy.contrib.roce import BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from qpagent import netnsutil

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ROCE_PORT = 4791
RC_SEND_ONLY = 4


def roce_frame(src_mac, dst_mac, src_ip, dst_ip, dqp: int, psn: int = 0,
               udp_sport: int = 49999, payload: bytes = b"x" * 64) -> bytes:
    """One RoCEv2 RC SEND ONLY frame; every QP shares the same UDP source
    port, so only the BTH tells them apart (as with real NICs' fixed ports)."""
    pkt = (Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip, ttl=64)
           / UDP(sport=udp_sport, dport=ROCE_PORT) / BTH(opcode=RC_SEND_ONLY, dqpn=dqp, psn=psn)
           / payload)
    return bytes(pkt)


def send_frames(netns: str, ifname: str, frames) -> None:
    with netnsutil.enter(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


@dataclass(frozen=True)
class Captured:
    link: str
    outer_sport: int
    outer_src: str
    outer_dst: str
    vni: int
    dqp: int
    inner: bytes


class LinkCapture:
    """Incoming frames on several interfaces of one namespace."""

    def __init__(self, netns: str, links):
        self.socks = {}
        with netnsutil.enter(netns):
            for link in links:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                sock.bind((link, 0))
                sock.setblocking(False)
                self.socks[sock] = link

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def drain(self) -> None:
        """Forget what arrived so far."""
        self.collect(lambda got: False, deadline_s=0.05)

    def collect(self, done, deadline_s: float = 5.0) -> list[Captured]:
        """VXLAN frames carrying RoCE until done(list) is true or the deadline."""
        got: list[Captured] = []
        end = time.monotonic() + deadline_s
        while not done(got) and time.monotonic() < end:
            ready, _, _ = select.select(list(self.socks), [], [], 0.05)
            for sock in ready:
                while True:
                    try:
                        data, addr = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    decoded = decode(self.socks[sock], data)
                    if decoded is not None:
                        got.append(decoded)
        return got


def decode(link: str, data: bytes) -> Captured | None:
    pkt = Ether(data)
    if not (pkt.haslayer(VXLAN) and pkt[UDP].dport == 4789):
        return None
    inner = pkt[VXLAN].payload
    if not inner.haslayer(BTH):
        return None
    return Captured(link=link, outer_sport=pkt[UDP].sport, outer_src=pkt[IP].src,
                    outer_dst=pkt[IP].dst, vni=pkt[VXLAN].vni, dqp=inner[BTH].dqpn,
                    inner=bytes(inner))
