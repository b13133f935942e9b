"""Ask the kernel FIB which next hop a UDP flow takes.

The multipath hash (net.ipv4.fib_multipath_hash_policy=1) covers the L4
ports, so the answer depends on the outer UDP source port. Lookups go
through a hand-packed RTM_GETROUTE socket (rtnl_route) that sets
RTA_IP_PROTO, RTA_SPORT and RTA_DPORT: pyroute2 0.9.7's rtmsg does not know
those attributes and drops them without a word, and is ~30x slower.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from qpagent import netnsutil

VXLAN_PORT = 4789


class FibError(RuntimeError):
    """The FIB has no usable answer (no route, unreachable, bad address)."""


@dataclass(frozen=True)
class Route:
    oif: int
    oif_name: str
    gateway: str | None


def _check_address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise FibError(f"{what} is not an IP address: {value!r}") from None


class Fib:
    """One netlink socket for many lookups, in the network namespace that
    was current when it was made, with interface names cached."""

    def __init__(self):
        from qpagent.rtnl_route import RouteSocket
        self._raw = RouteSocket()
        self._names: dict[int, str] = {}
        self._valid: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ifname(self, index: int) -> str:
        name = self._names.get(index)
        if name is None:
            name = self._raw.link_name(index) or f"if{index}"
            self._names[index] = name
        return name

    def link_up(self, index: int) -> bool:
        """Up with carrier, asked now (never cached: it is asked because a
        link just changed)."""
        return self._raw.link_up(index)

    def next_hops(self, dst: str) -> list[Route] | None:
        """Every live next hop of the FIB entry for dst (fibmatch), or None
        when the kernel cannot say."""
        from qpagent.rtnl_route import RouteLookupError
        try:
            hops = self._raw.next_hops(self._checked(dst, "destination"))
        except RouteLookupError:
            return None
        return [Route(oif=i, oif_name=self.ifname(i), gateway=g) for i, g in hops]

    def _checked(self, value: str, what: str) -> str:
        # Validated once per address: lookups run hundreds of times a second.
        key = (value, what)
        if key not in self._valid:
            self._valid[key] = _check_address(value, what)
        return self._valid[key]

    def lookup(self, dst: str, src: str | None = None, sport: int | None = None,
               dport: int | None = VXLAN_PORT, proto: int = 17) -> Route:
        from qpagent.rtnl_route import RouteLookupError
        dst = self._checked(dst, "destination")
        if src is not None:
            src = self._checked(src, "source")
        for key, port in (("sport", sport), ("dport", dport)):
            if port is not None and not 0 <= int(port) <= 65535:
                raise FibError(f"{key} out of range: {port}")
        try:
            oif, gateway = self._raw.get(dst, src=src, sport=sport, dport=dport, proto=proto)
        except RouteLookupError as exc:
            raise FibError(f"no route to {dst} (sport {sport}): {exc.strerror}") from None
        if not oif:
            raise FibError(f"route to {dst} has no output interface")
        return Route(oif=oif, oif_name=self.ifname(oif), gateway=gateway)


def lookup(dst: str, src: str | None = None, sport: int | None = None,
           dport: int | None = VXLAN_PORT, proto: int = 17, netns: str | None = None) -> Route:
    """Next hop of one UDP flow (dst, src, sport, dport) per the kernel FIB
    of network namespace `netns` (None: the current one)."""
    with netnsutil.enter(netns):
        fib = Fib()
    try:
        return fib.lookup(dst, src=src, sport=sport, dport=dport, proto=proto)
    finally:
        fib.close()
