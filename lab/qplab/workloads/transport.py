"""UDP endpoints for RoCEv2 on one host, and the inner UDP source port policy.

Every RoCE packet goes to UDP port 4791; the source port is what varies
between queue pairs. The Linux RDMA stack derives it from the QP numbers
(rdma_get_udp_sport: a 20-bit flow label from lqpn * rqpn folded, then
0xC000 | low 14 bits xor the high 6 bits); the "fixed" policy gives every QP
the same port, the worst case for hashing on the inner 5-tuple.
"""
from __future__ import annotations

import errno
import socket

from . import roce

SPORT_MIN = 0xC000
FLOW_LABEL_MASK = 0xFFFFF
POLICIES = ("fixed", "qpn")
# <linux/in.h>; Python's socket module does not export them on every version.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)


def rdma_flow_label(lqpn: int, rqpn: int) -> int:
    v = (lqpn & roce.QPN_MASK) * (rqpn & roce.QPN_MASK)
    v ^= v >> 20
    v ^= v >> 40
    return v & FLOW_LABEL_MASK


def flow_label_to_sport(fl: int) -> int:
    low, high = fl & 0x3FFF, fl & 0xFC000
    return (low ^ (high >> 14)) | SPORT_MIN


def choose_sport(policy: str, lqpn: int, rqpn: int, fixed_port: int = SPORT_MIN) -> int:
    """Inner UDP source port of a QP under `policy` ("fixed" or "qpn").
    Symmetric in the QP numbers, so both ends of a QP use the same port."""
    if policy == "fixed":
        return fixed_port
    if policy == "qpn":
        return flow_label_to_sport(rdma_flow_label(lqpn, rqpn))
    raise ValueError(f"unknown source port policy {policy!r}; choose one of {', '.join(POLICIES)}")


class RoceEndpoint:
    """A host's RoCE sockets: one bound to <ip>:4791 receives everything (the
    destination QP in the BTH says which QP it is for), one per source port
    sends. Sends are unconnected with DF set, so the kernel writes IP ID 0,
    which the ICRC covers."""

    def __init__(self, local_ip: str, *, bufsize: int = 8 << 20):
        self.local_ip = local_ip
        self.bufsize = bufsize
        self.rx = self._socket()
        self.rx.bind((local_ip, roce.ROCE_PORT))
        self.rx.setblocking(False)
        self._tx: dict[int, socket.socket] = {}
        self.send_errors = 0

    def _socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
            try:    # SO_RCVBUFFORCE / SO_SNDBUFFORCE (root) pass rmem_max
                s.setsockopt(socket.SOL_SOCKET, force, self.bufsize)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, opt, self.bufsize)
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        return s

    def tx_socket(self, sport: int) -> socket.socket:
        s = self._tx.get(sport)
        if s is None:
            s = self._socket()
            s.bind((self.local_ip, sport))
            self._tx[sport] = s
        return s

    def send(self, sport: int, dst_ip: str, data: bytes) -> bool:
        """Send one packet; a full queue or an unreachable peer is a loss, as
        on a wire, not an exception."""
        try:
            self.tx_socket(sport).sendto(data, (dst_ip, roce.ROCE_PORT))
            return True
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED,
                               errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE):
                raise
            self.send_errors += 1
            return False

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, tuple[str, int]]]:
        out = []
        recv = self.rx.recvfrom
        try:
            for _ in range(limit):
                out.append(recv(65536))
        except (BlockingIOError, InterruptedError):
            pass
        return out

    def fileno(self) -> int:
        return self.rx.fileno()

    def close(self) -> None:
        self.rx.close()
        for s in self._tx.values():
            s.close()
        self._tx.clear()
