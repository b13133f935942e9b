"""A lean RTM_GETROUTE: one netlink socket, requests packed by hand.

Path discovery asks the FIB hundreds of times per remote VTEP, and a route
event must be answered within milliseconds. pyroute2's generic message
machinery costs ~170 us a lookup here; this costs ~5 us, so a full
rediscovery fits in the reaction budget.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_IFNAME = 3
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST, RTA_SRC, RTA_OIF, RTA_GATEWAY = 1, 2, 4, 5
RTA_MULTIPATH = 9
RTA_VIA = 18
RTM_F_FIB_MATCH = 0x2000          # answer with the FIB entry, all next hops
RTNH_F_DEAD, RTNH_F_LINKDOWN = 1, 16
RTA_IP_PROTO, RTA_SPORT, RTA_DPORT = 27, 28, 29

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


class RouteLookupError(OSError):
    """The kernel answered with an error (no route, unreachable...)."""


def _attr(kind: int, data: bytes) -> bytes:
    length = _RTATTR.size + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * (-length % 4)


class RouteSocket:
    """Ask the FIB of the network namespace this socket was opened in."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def get(self, dst: str, src: str | None = None, sport: int | None = None,
            dport: int | None = None, proto: int | None = None) -> tuple[int, str | None]:
        """(output ifindex, gateway or None) for one flow."""
        family, reply = self._request(dst, src, sport, dport, proto, 0)
        return _parse_route(reply, family)

    def next_hops(self, dst: str) -> list[tuple[int, str | None]]:
        """Every live (ifindex, gateway) of the FIB entry that routes dst
        (`ip route get fibmatch`): one lookup tells how many paths exist."""
        family, reply = self._request(dst, None, None, None, None, RTM_F_FIB_MATCH)
        return _parse_next_hops(reply, family)

    def link_name(self, ifindex: int) -> str | None:
        """The name of an interface in this socket's network namespace
        (which need not be the calling thread's)."""
        reply = self._get_link(ifindex)
        if reply is None:
            return None
        for kind, data in _attrs(reply, _NLMSGHDR.size + 16, len(reply)):
            if kind == IFLA_IFNAME:
                return data.rstrip(b"\0").decode()
        return None

    def link_up(self, ifindex: int) -> bool:
        """Whether an interface is up with carrier. The kernel clears the
        flag before it announces the change, and only then marks the routes
        through the interface dead: right after a link event the FIB may
        still name a link that is down."""
        reply = self._get_link(ifindex)
        if reply is None:
            return False
        flags = struct.unpack_from("=I", reply, _NLMSGHDR.size + 8)[0]
        return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)

    def _get_link(self, ifindex: int) -> bytes | None:
        """The RTM_NEWLINK answer for one interface (ifinfomsg, then its
        attributes), or None when there is no such interface."""
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0)
        try:
            return self._exchange(RTM_GETLINK, body)
        except RouteLookupError:
            return None

    def _exchange(self, msg_type: int, body: bytes) -> bytes:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type,
                                       NLM_F_REQUEST, self._seq, 0) + body)
        while True:
            reply = self._sock.recv(65536)
            length, kind, _, seq, _ = _NLMSGHDR.unpack_from(reply)
            if seq == self._seq:
                break
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0]
            raise RouteLookupError(code, f"{os.strerror(code)} ({errno.errorcode.get(code, code)})")
        return reply[:length]

    def _request(self, dst, src, sport, dport, proto, flags) -> tuple[int, bytes]:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        width = 128 if family == socket.AF_INET6 else 32
        body = _RTMSG.pack(family, width, width if src else 0, 0, 0, 0, 0, 0, flags)
        body += _attr(RTA_DST, socket.inet_pton(family, dst))
        if src:
            body += _attr(RTA_SRC, socket.inet_pton(family, src))
        if proto is not None:
            body += _attr(RTA_IP_PROTO, bytes([proto]))
        if sport is not None:
            body += _attr(RTA_SPORT, struct.pack("!H", sport))
        if dport is not None:
            body += _attr(RTA_DPORT, struct.pack("!H", dport))
        reply = self._exchange(RTM_GETROUTE, body)
        if _NLMSGHDR.unpack_from(reply)[1] != RTM_NEWROUTE:
            raise RouteLookupError(errno.EPROTO, "unexpected netlink reply type")
        return family, reply


def _attrs(buf: bytes, offset: int, end: int):
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(buf, offset)
        if length < _RTATTR.size:
            return
        yield kind, buf[offset + _RTATTR.size: offset + length]
        offset += (length + 3) & ~3


def _gateway(kind: int, data: bytes, family: int) -> str | None:
    if kind == RTA_GATEWAY:
        return socket.inet_ntop(family, data)
    if kind == RTA_VIA:   # IPv6 route via an IPv4 next hop (or the reverse)
        via_family = struct.unpack_from("=H", data)[0]
        return socket.inet_ntop(via_family, data[2:])
    return None


def _parse_route(msg: bytes, family: int) -> tuple[int, str | None]:
    oif, gateway = 0, None
    for kind, data in _attrs(msg, _NLMSGHDR.size + _RTMSG.size, len(msg)):
        if kind == RTA_OIF:
            oif = struct.unpack("=I", data)[0]
        elif kind in (RTA_GATEWAY, RTA_VIA):
            gateway = _gateway(kind, data, family)
    return oif, gateway


_RTNEXTHOP = struct.Struct("=HBBi")   # len, flags, hops, ifindex


def _parse_next_hops(msg: bytes, family: int) -> list[tuple[int, str | None]]:
    single = _parse_route(msg, family)
    hops = []
    for kind, data in _attrs(msg, _NLMSGHDR.size + _RTMSG.size, len(msg)):
        if kind != RTA_MULTIPATH:
            continue
        offset = 0
        while offset + _RTNEXTHOP.size <= len(data):
            length, flags, _, ifindex = _RTNEXTHOP.unpack_from(data, offset)
            if length < _RTNEXTHOP.size:
                break
            gateway = None
            for akind, adata in _attrs(data, offset + _RTNEXTHOP.size, offset + length):
                gateway = _gateway(akind, adata, family) or gateway
            if not flags & (RTNH_F_DEAD | RTNH_F_LINKDOWN):
                hops.append((ifindex, gateway))
            offset += (length + 3) & ~3
    if not hops and single[0]:
        hops.append(single)
    return hops
