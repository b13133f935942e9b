"""Frames for the scale benchmark: Scapy builds one template per remote
host, the fields that vary (dest QP, UDP source port) are patched into the
bytes, so thousands of frames cost microseconds each."""

from __future__ import annotations

from scapy.contrib.roce import BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from scale_topology import HOST_IP, HOST_MAC

ROCE_PORT = 4791
RC_SEND_ONLY = 4
UDP_SPORT_AT = 14 + 20              # Ethernet + IPv4 without options
BTH_DQP_AT = 14 + 20 + 8 + 5        # BTH: opcode, flags, pkey (2), reserved, dest QP (3)


class FrameFactory:
    def __init__(self, topo):
        # UDP checksum 0 (not computed), as RoCEv2 NICs send it: patching stays valid.
        self._roce = [bytes(Ether(src=HOST_MAC, dst=r.host_mac) / IP(src=HOST_IP, dst=r.host_ip)
                            / UDP(sport=49999, dport=ROCE_PORT, chksum=0)
                            / BTH(opcode=RC_SEND_ONLY, dqpn=0, psn=0) / (b"x" * 64))
                      for r in topo.remotes]
        self._udp = [bytes(Ether(src=HOST_MAC, dst=r.host_mac) / IP(src=HOST_IP, dst=r.host_ip)
                           / UDP(sport=0, dport=5000, chksum=0) / (b"y" * 64))
                     for r in topo.remotes]

    def roce(self, remote: int, dqp: int) -> bytes:
        frame = bytearray(self._roce[remote])
        frame[BTH_DQP_AT:BTH_DQP_AT + 3] = dqp.to_bytes(3, "big")
        return bytes(frame)

    def udp(self, remote: int, sport: int) -> bytes:
        frame = bytearray(self._udp[remote])
        frame[UDP_SPORT_AT:UDP_SPORT_AT + 2] = sport.to_bytes(2, "big")
        return bytes(frame)
