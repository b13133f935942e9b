"""End-to-end paths of outer source ports, found by Paris-traceroute probes.

Every router on the way hashes the outer 5-tuple again, so two ports that
leave by different uplinks may still meet on a WAN link further on. A probe
that keeps the 5-tuple of a port fixed (same UDP socket, same ports) and only
varies the TTL is hashed exactly like that port's data, so the ICMP
time-exceeded sources for TTL 1, 2, ... are the hops the data crosses. With
`net.ipv4.icmp_errors_use_inbound_ifaddr=1` on the routers each hop names the
link it came in on.

All probes go out in one burst. Replies are matched by the UDP header the
ICMP error quotes (its first 8 bytes are always quoted): the source port says
which port, and the UDP length, which no ECMP hash covers, says which TTL.
Routers rate-limit ICMP errors (Linux: a burst of icmp_msgs_burst=50 per
namespace), so unanswered hops short of the deepest hop seen are probed again.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import struct
import time
from collections import defaultdict
from typing import Iterable

from qpagent import netnsutil
from qpagent.fib import Fib, FibError, VXLAN_PORT

# A hop that stayed silent while a farther hop of the same port answered.
SILENT_HOP = "*"

ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED = 3, 11
# VXLAN header with the I flag and a VNI nobody uses: the far VTEP drops it.
_VXLAN_PROBE = struct.pack("!II", 0x08000000, 0xFFFFFF << 8)
_UDP_HEADER = 8
_MAX_TTL = 64
_RCVBUF = 4 << 20
# Retry rounds wait for a few times the slowest reply seen, at least this long.
_MIN_RETRY_WAIT_S = 0.03


class ProbeError(RuntimeError):
    """Probing cannot start: bad input, no route, missing privilege."""


class Traces(dict):
    """port -> ordered hop addresses (TTL 1, 2, ...), plus what else was seen.

    `skipped`: ports not probed, with why (port in use, send failed).
    `reached`: ports whose remote answered itself (e.g. port unreachable),
    so their trace is known to be complete.
    """

    def __init__(self):
        super().__init__()
        self.skipped: dict[int, str] = {}
        self.reached: set[int] = set()
        self.probes_sent = 0
        self.elapsed_s = 0.0


def udp_length(ttl: int) -> int:
    """The probe for `ttl` is told apart by its UDP length alone."""
    return _UDP_HEADER + len(_VXLAN_PROBE) + ttl


def probe_payload(ttl: int) -> bytes:
    return _VXLAN_PROBE + b"\0" * ttl


def ports_by_path(traces: dict[int, tuple[str, ...]]) -> dict[tuple[str, ...], list[int]]:
    """Group ports whose traces are identical (same end-to-end path)."""
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for port, hops in traces.items():
        groups[hops].append(port)
    return dict(groups)


def parse_icmp_error(packet: bytes) -> tuple[str, int, str, str, int, int, int] | None:
    """(replier, icmp type, quoted src, quoted dst, sport, dport, udp length)
    of an IPv4 packet carrying an ICMP error that quotes a UDP header, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_ICMP or len(packet) < ihl + 8:
        return None
    icmp_type = packet[ihl]
    if icmp_type not in (ICMP_TIME_EXCEEDED, ICMP_DEST_UNREACH):
        return None
    quoted = packet[ihl + 8:]
    if len(quoted) < 20 or quoted[0] >> 4 != 4 or quoted[9] != socket.IPPROTO_UDP:
        return None
    qihl = (quoted[0] & 0x0F) * 4
    if len(quoted) < qihl + _UDP_HEADER:
        return None
    sport, dport, length = struct.unpack_from("!HHH", quoted, qihl)
    return (socket.inet_ntoa(packet[12:16]), icmp_type, socket.inet_ntoa(quoted[12:16]),
            socket.inet_ntoa(quoted[16:20]), sport, dport, length)


def _ipv4(value: str, what: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ProbeError(f"{what} is not an IP address: {value!r}") from None
    if addr.version != 4:
        raise ProbeError(f"{what} must be IPv4 (the VXLAN underlay is IPv4): {value}")
    return str(addr)


def _check_int(value, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProbeError(f"{what} must be an integer in {low}..{high}: {value!r}")


def _checked_ports(ports: Iterable[int]) -> list[int]:
    out: dict[int, None] = {}    # ordered, without repeats
    try:
        for port in ports:
            _check_int(port, 1, 65535, "source port")
            out[port] = None
    except TypeError:
        raise ProbeError(f"ports must be a collection of integers: {ports!r}") from None
    return list(out)


class _Prober:
    """One burst of probes and the collection of their replies."""

    def __init__(self, local_ip: str, remote_ip: str, dport: int, max_ttl: int):
        self.local_ip, self.remote_ip, self.dport = local_ip, remote_ip, dport
        self.max_ttl = max_ttl
        self.ttl_of_length = {udp_length(t): t for t in range(1, max_ttl + 1)}
        self.hops: dict[int, dict[int, str]] = {}     # port -> ttl -> replier
        self.reached_at: dict[int, int] = {}          # port -> ttl the remote answered
        self.max_rtt = 0.0
        self.sent = 0
        self.socks: dict[int, socket.socket] = {}
        self.raw: socket.socket | None = None

    def open(self, ports: list[int], traces: Traces) -> None:
        try:
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError:
            raise ProbeError("probing needs root or CAP_NET_RAW (raw ICMP socket)") from None
        try:
            self.raw.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)   # SO_RCVBUFFORCE
        except OSError:
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self.raw.setblocking(False)
        for port in ports:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as exc:   # e.g. out of file descriptors: say so, go on
                traces.skipped[port] = f"cannot open a socket: {exc.strerror}"
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.local_ip, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ProbeError(f"{self.local_ip} is not an address of this host") from None
                traces.skipped[port] = f"cannot bind {self.local_ip}:{port}: {exc.strerror}"
                continue
            self.socks[port] = sock
            self.hops[port] = {}

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        if self.raw is not None:
            self.raw.close()

    def send(self, probes: Iterable[tuple[int, int]], traces: Traces) -> float:
        sent_at = time.monotonic()
        for port, ttl in probes:
            sock = self.socks.get(port)
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                sock.sendto(probe_payload(ttl), (self.remote_ip, self.dport))
                self.sent += 1
            except OSError as exc:
                # Drop the port: its trace would have holes nobody can explain.
                traces.skipped[port] = f"send failed: {exc.strerror}"
                self.socks.pop(port).close()
                self.hops.pop(port, None)
        return sent_at

    def collect(self, sent_at: float, deadline: float, done) -> None:
        """Read replies until done() or the deadline."""
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.raw], [], [], left)
            if not readable:
                return
            now = time.monotonic()
            while True:
                try:
                    packet = self.raw.recv(2048)
                except BlockingIOError:
                    break
                if self._record(packet):
                    self.max_rtt = max(self.max_rtt, now - sent_at)

    def _record(self, packet: bytes) -> bool:
        reply = parse_icmp_error(packet)
        if reply is None:
            return False
        replier, icmp_type, src, dst, sport, dport, length = reply
        ttl = self.ttl_of_length.get(length)
        if (src != self.local_ip or dst != self.remote_ip or dport != self.dport
                or ttl is None or sport not in self.hops):
            return False
        if replier == self.remote_ip or icmp_type == ICMP_DEST_UNREACH:
            # The remote itself (or a router refusing to go on): nothing lies beyond.
            self.reached_at[sport] = min(ttl, self.reached_at.get(sport, ttl))
            return True
        self.hops[sport][ttl] = replier
        return True

    def last_ttl(self, port: int) -> int:
        """TTLs above this are past the end for this port."""
        return self.reached_at.get(port, self.max_ttl + 1) - 1

    def unanswered(self, up_to: int) -> list[tuple[int, int]]:
        return [(port, ttl) for ttl in range(1, up_to + 1) for port, got in self.hops.items()
                if ttl <= self.last_ttl(port) and ttl not in got]

    def deepest(self) -> int:
        return max((max(got) for got in self.hops.values() if got), default=0)

    def traces(self, traces: Traces) -> None:
        for port, got in self.hops.items():
            depth = max((t for t in got if t <= self.last_ttl(port)), default=0)
            traces[port] = tuple(got.get(t, SILENT_HOP) for t in range(1, depth + 1))
        traces.reached = set(self.reached_at) & set(self.hops)


def trace_ports(local_ip: str, remote_ip: str, ports: Iterable[int], dport: int = VXLAN_PORT,
                max_ttl: int = 8, timeout_s: float = 0.3, netns: str | None = None,
                retries: int = 2, expect_depth: int = 0) -> Traces:
    """For every port, the hop addresses a UDP packet local_ip:port ->
    remote_ip:dport crosses (time-exceeded sources for TTL 1..n, in order).

    The first round waits up to timeout_s (the remote VTEP itself sends no
    time-exceeded, so the end of a path is known only by silence, unless the
    remote answers). Each retry round re-probes hops that stayed silent but
    lie no deeper than the deepest hop any port reached, and waits a few
    times the slowest reply seen. A hop silent throughout shows as SILENT_HOP
    when a farther one answered; a port nothing answered gets ().
    Ports that cannot be bound are left out and listed in `.skipped`.

    expect_depth (0: unknown): the paths are known to be this many hops
    deep. Then only TTLs up to one past it are sent, and the first round
    ends once every port has all of them answered instead of waiting out
    the silence past the end (the remote VTEP sends no time-exceeded): a
    round then takes a round trip, not timeout_s. A path that grew deeper
    shows as deep as it answered in time; the next full round sees it whole.
    """
    local_ip = _ipv4(local_ip, "local address")
    remote_ip = _ipv4(remote_ip, "remote address")
    ports = _checked_ports(ports)
    _check_int(dport, 1, 65535, "destination port")
    _check_int(max_ttl, 1, _MAX_TTL, "max_ttl")
    _check_int(retries, 0, 10, "retries")
    _check_int(expect_depth, 0, _MAX_TTL - 1, "expect_depth")
    if expect_depth:
        max_ttl = min(max_ttl, expect_depth + 1)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ProbeError(f"timeout_s must be a positive number of seconds: {timeout_s!r}")
    try:
        with netnsutil.enter(netns):
            return _trace(local_ip, remote_ip, ports, dport, max_ttl, float(timeout_s), retries,
                          expect_depth)
    except netnsutil.NetnsError as exc:
        raise ProbeError(str(exc)) from None


def _trace(local_ip, remote_ip, ports, dport, max_ttl, timeout_s, retries,
           expect_depth=0) -> Traces:
    started = time.monotonic()
    traces = Traces()
    prober = _Prober(local_ip, remote_ip, dport, max_ttl)
    try:
        # Opening first: "not root" and "not a local address" beat "no route".
        prober.open(ports, traces)
        if ports:
            _check_route(local_ip, remote_ip, ports[0], dport)
        everything = [(p, t) for t in range(1, max_ttl + 1) for p in list(prober.socks)]
        sent_at = prober.send(everything, traces)
        whole = expect_depth or max_ttl
        prober.collect(sent_at, sent_at + timeout_s, lambda: not prober.unanswered(whole))
        for _ in range(retries):
            missing = prober.unanswered(prober.deepest())
            if not missing:
                break
            wait = min(timeout_s, max(_MIN_RETRY_WAIT_S, 3 * prober.max_rtt))
            sent_at = prober.send(missing, traces)
            prober.collect(sent_at, sent_at + wait,
                           lambda: not prober.unanswered(prober.deepest()))
        prober.traces(traces)
        traces.probes_sent = prober.sent
    finally:
        prober.close()
    traces.elapsed_s = time.monotonic() - started
    return traces


def _check_route(local_ip: str, remote_ip: str, sport: int, dport: int) -> None:
    try:
        with Fib() as fib:
            fib.lookup(remote_ip, src=local_ip, sport=sport, dport=dport)
    except FibError as exc:
        raise ProbeError(f"cannot probe {remote_ip} from {local_ip}: {exc}") from None
