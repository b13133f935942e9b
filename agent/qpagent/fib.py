"""Ask the kernel FIB which next hop a UDP flow takes.

The multipath hash (net.ipv4.fib_multipath_hash_policy=1) covers the L4
ports, so the answer depends on the outer UDP source port. pyroute2 0.9.7's
rtmsg does not know RTA_IP_PROTO/RTA_SPORT/RTA_DPORT; unknown keys are
dropped without a word, and the lookup then answers for port-less traffic.
We teach rtmsg those attributes once, at import.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.rtmsg import rtmsg

VXLAN_PORT = 4789

# Linux include/uapi/linux/rtnetlink.h, in order after RTA_EXPIRES (23).
_MISSING_RTA = (
    ("RTA_PAD", "hex"),               # 24
    ("RTA_UID", "uint32"),            # 25
    ("RTA_TTL_PROPAGATE", "uint8"),   # 26
    ("RTA_IP_PROTO", "uint8"),        # 27
    ("RTA_SPORT", "be16"),            # 28
    ("RTA_DPORT", "be16"),            # 29
)


def _teach_rtmsg_ports() -> None:
    """Append RTA 24..29 to rtmsg's positional nla_map (idempotent)."""
    names = [entry[0] for entry in rtmsg.nla_map]
    if "RTA_DPORT" in names:
        return
    if isinstance(rtmsg.nla_map[0][0], int):
        raise RuntimeError("unexpected pyroute2 rtmsg.nla_map layout (explicit ids)")
    if names[-1] != "RTA_EXPIRES" or len(names) != 24:
        raise RuntimeError(
            f"unexpected pyroute2 rtmsg.nla_map: ends with {names[-1]} at "
            f"{len(names) - 1}, expected RTA_EXPIRES at 23")
    rtmsg.nla_map = tuple(rtmsg.nla_map) + _MISSING_RTA
    # The map is compiled once per class on first use: force a recompile.
    rtmsg._nlmsg_base__compiled_nla = False


_teach_rtmsg_ports()


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
    """One netlink socket for many lookups, with interface names cached.

    Given a pyroute2 socket (IPRoute or NetNS), lookups go through it. Without
    one, lookups use a hand-packed RTM_GETROUTE socket in the current network
    namespace (rtnl_route, ~30x cheaper) and pyroute2 only resolves names.
    """

    def __init__(self, ipr=None):
        self._own = ipr is None
        self.ipr = ipr
        self._raw = None
        if self._own:
            from qpagent.rtnl_route import RouteSocket
            self._raw = RouteSocket()
        self._names: dict[int, str] = {}
        self._valid: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        if self._own:
            self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ifname(self, index: int) -> str:
        name = self._names.get(index)
        if name is None:
            if self.ipr is None:   # raw mode: ask in the socket's own netns
                name = self._raw.link_name(index) or f"if{index}"
            else:
                links = self.ipr.get_links(index)
                name = links[0].get("ifname") if links else f"if{index}"
            self._names[index] = name
        return name

    def forget_names(self) -> None:
        """Drop the ifindex->name cache (an interface was recreated)."""
        self._names.clear()

    def next_hops(self, dst: str) -> list[Route] | None:
        """Every live next hop of the FIB entry for dst (fibmatch), or None
        when this Fib has no raw socket or the kernel cannot say."""
        if self._raw is None:
            return None
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
        query = {"dst": self._checked(dst, "destination"), "ip_proto": proto}
        if src is not None:
            query["src"] = self._checked(src, "source")
        for key, port in (("sport", sport), ("dport", dport)):
            if port is None:
                continue
            if not 0 <= int(port) <= 65535:
                raise FibError(f"{key} out of range: {port}")
            query[key] = int(port)
        if self._raw is not None:
            return self._lookup_raw(query, sport)
        try:
            reply = self.ipr.route("get", **query)
        except NetlinkError as exc:
            raise FibError(f"no route to {dst} (sport {sport}): {exc.args[-1]}") from None
        msg = reply[0]
        oif = msg.get("oif")
        if oif is None:
            raise FibError(f"route to {dst} has no output interface")
        return Route(oif=oif, oif_name=self.ifname(oif), gateway=msg.get("gateway"))

    def _lookup_raw(self, query: dict, sport) -> Route:
        from qpagent.rtnl_route import RouteLookupError
        try:
            oif, gateway = self._raw.get(query["dst"], src=query.get("src"),
                                         sport=query.get("sport"), dport=query.get("dport"),
                                         proto=query["ip_proto"])
        except RouteLookupError as exc:
            raise FibError(f"no route to {query['dst']} (sport {sport}): {exc.strerror}") from None
        if not oif:
            raise FibError(f"route to {query['dst']} has no output interface")
        return Route(oif=oif, oif_name=self.ifname(oif), gateway=gateway)


def lookup(dst: str, src: str | None = None, sport: int | None = None,
           dport: int | None = VXLAN_PORT, proto: int = 17, ipr=None) -> Route:
    """Next hop of one UDP flow (dst, src, sport, dport) per the kernel FIB."""
    fib = Fib(ipr)
    try:
        return fib.lookup(dst, src=src, sport=sport, dport=dport, proto=proto)
    finally:
        fib.close()
