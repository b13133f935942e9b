"""Which outer source ports lead out of which uplink, asked of the FIB.

For one (local VTEP, remote VTEP) pair every ECMP next hop is a path. We walk
the candidate ports in order and file each under the next hop the FIB names
for it, until every path has enough ports or the lookup budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from qpagent.fib import Fib, VXLAN_PORT

MAX_LOOKUPS = 4096
# Once this many consecutive candidates found no new path, stop looking for
# paths nobody has seen yet (a next hop that never shows is not a path).
_SETTLE_AFTER = 256


@dataclass
class Path:
    index: int
    ifindex: int
    ifname: str
    gateway: str | None
    ports: list[int] = field(default_factory=list)


def _order_key(hop: tuple[int, str, str | None]) -> tuple:
    _, ifname, gateway = hop
    return (ifname, gateway or "")


def discover_paths(local_ip: str, remote_ip: str, port_candidates: Iterable[int],
                   uplinks: set[str] | frozenset[str], ports_per_path: int = 16,
                   dport: int = VXLAN_PORT,
                   max_lookups: int = MAX_LOOKUPS, fib: Fib | None = None,
                   expected_paths: int | None = None) -> list[Path]:
    """Paths to remote_ip via the configured uplinks, with ports that take them.

    Paths are ordered by (uplink name, gateway) so an index survives
    rediscovery as long as the set of next hops does not change. Next hops
    through interfaces outside `uplinks`, or down, are ignored. `expected_paths` (e.g.
    the number of uplinks that are up) lets the walk stop as soon as that
    many paths are full, instead of looking on for paths nobody has seen.
    Pass a long-lived `fib` to avoid opening a socket per call.
    """
    if ports_per_path < 1:
        raise ValueError("ports_per_path must be at least 1")
    uplinks = set(uplinks)
    own_fib = fib is None
    fib = Fib() if own_fib else fib
    if expected_paths is None:
        hops = fib.next_hops(remote_ip)
        if hops is not None:
            expected_paths = len({(h.oif, h.gateway) for h in hops if h.oif_name in uplinks})
    found: dict[tuple[int, str, str | None], list[int]] = {}
    link_up: dict[int, bool] = {}   # asked once per call, not per port
    lookups = 0
    since_new_path = 0
    try:
        for port in port_candidates:
            if lookups >= max_lookups:
                break
            lookups += 1
            # FibError (no route at all) propagates: there are no paths.
            route = fib.lookup(remote_ip, src=local_ip, sport=port, dport=dport)
            if route.oif not in link_up and route.oif_name in uplinks:
                link_up[route.oif] = fib.link_up(route.oif)
            if route.oif_name not in uplinks or not link_up[route.oif]:
                since_new_path += 1
                continue
            hop = (route.oif, route.oif_name, route.gateway)
            if hop not in found:
                found[hop] = []
                since_new_path = 0
            else:
                since_new_path += 1
            if len(found[hop]) < ports_per_path:
                found[hop].append(port)
            full = all(len(p) >= ports_per_path for p in found.values())
            if full and (since_new_path >= _SETTLE_AFTER or
                         (expected_paths is not None and len(found) >= expected_paths)):
                break
    finally:
        if own_fib:
            fib.close()
    return [Path(index=i, ifindex=hop[0], ifname=hop[1], gateway=hop[2], ports=ports)
            for i, (hop, ports) in enumerate(sorted(found.items(), key=lambda kv: _order_key(kv[0])))]
