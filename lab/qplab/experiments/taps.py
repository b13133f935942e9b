"""Packet taps for failover measurements, timestamped by the kernel.

- ReceiverTap: every RoCE packet a host's stack takes in, as (time, dest QP,
  PSN): the receiving host's view of each QP, from which a QP's longest gap
  is read. Kernel receive timestamps (SO_TIMESTAMPNS), so a busy 2-core
  machine delays the reading, not the figure.
- WanTap: which WAN link each QP's VXLAN frames cross, one direction, from a
  tap in every WAN box (sampled: a small buffer is fine for "which link").
Both read in a thread of their own and keep everything until stop().
"""
from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Iterable

from pyroute2.netns import popns, pushns

from ..state import WanState
from .observe import parse_vxlan_roce

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_HOST = 0
PACKET_OUTGOING = 4
_TS = struct.Struct("qq")


def _socket_in(ns: str, ifname: str, rcvbuf: int) -> socket.socket:
    pushns(ns)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    finally:
        popns()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def _recv(s: socket.socket, size: int):
    """(frame, packet type, kernel time in seconds) or None when empty."""
    try:
        data, anc, _flags, addr = s.recvmsg(size, socket.CMSG_SPACE(_TS.size))
    except (BlockingIOError, InterruptedError):
        return None
    t = None
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TS.unpack(raw[:_TS.size])
            t = sec + nsec * 1e-9
    return data, addr[2], t


class _Reader:
    """A thread draining some sockets into `handle(key, frame, pkttype, t)`."""

    def __init__(self, socks: dict):
        self.socks = socks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def handle(self, key, frame: bytes, pkttype: int, t: float) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        by_sock = {s: k for k, s in self.socks.items()}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_sock), [], [], 0.05)
            for s in ready:
                for _ in range(512):
                    got = _recv(s, 256)
                    if got is None:
                        break
                    if got[2] is not None:
                        self.handle(by_sock[s], *got)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks.values():
            s.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def parse_roce(frame: bytes) -> tuple[int, int] | None:
    """(dest QP, PSN) of Ether/IPv4/UDP 4791/BTH, else None."""
    if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 17 or len(frame) < 14 + ihl + 8 + 12:
        return None
    udp = 14 + ihl
    if struct.unpack_from("!H", frame, udp + 2)[0] != 4791:
        return None
    bth = udp + 8
    return (int.from_bytes(frame[bth + 5:bth + 8], "big"),
            int.from_bytes(frame[bth + 9:bth + 12], "big"))


class ReceiverTap(_Reader):
    """RoCE packets arriving at a host: `seen` is [(t, dqp, psn)], time-ordered
    per QP (one socket, kernel timestamps)."""

    def __init__(self, ns: str, ifname: str = "eth0", rcvbuf: int = 8 << 20):
        super().__init__({ifname: _socket_in(ns, ifname, rcvbuf)})
        self.seen: list[tuple[float, int, int]] = []

    def handle(self, key, frame, pkttype, t) -> None:
        if pkttype != PACKET_HOST:
            return
        got = parse_roce(frame)
        if got is not None:
            self.seen.append((t, *got))

    def arrivals(self, t0: float = 0.0, t1: float = float("inf")) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for t, qp, _ in list(self.seen):
            if t0 <= t <= t1:
                out.setdefault(qp, []).append(t)
        return out


class WanTap(_Reader):
    """VXLAN RoCE frames entering each WAN link from `src_dc`'s side:
    `seen` is [(t, wan link, inner src, inner dst, dqp)]."""

    def __init__(self, wans: Iterable[WanState], src_dc: str, rcvbuf: int = 1 << 20):
        socks = {}
        for w in wans:
            end = "a" if w.a_dc == src_dc else "b"
            socks[w.name] = _socket_in(w.ns, end, rcvbuf)
        super().__init__(socks)
        self.seen: list[tuple[float, str, str, str, int]] = []

    def handle(self, key, frame, pkttype, t) -> None:
        if pkttype == PACKET_OUTGOING:
            return
        p = parse_vxlan_roce(frame)
        if p is not None:
            self.seen.append((t, key, p[0], p[1], p[2]))
