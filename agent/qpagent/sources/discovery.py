"""Path discovery: which outer source ports take which path to a remote VTEP.

First hops come from the kernel FIB (microseconds per port, so the loop asks
right after a route event). End-to-end paths come from TTL probes that keep
the outer 5-tuple fixed (a round trip per hop), so the Prober re-traces them
in its own thread and queues what it found. Neither touches the core: both
return, or queue, PathsSeen values.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from qpagent.core import pathtable
from qpagent.core.inputs import PathsSeen
from qpagent.core.model import Found, VtepKey, VtepState
from qpagent.core.placement import diverse_order, path_links
from qpagent.fib import Fib, FibError
from qpagent.paths import discover_paths
from qpagent.sources.signals import ProbeRound

log = logging.getLogger("qpagent")
PROBE_EVERY_S = 2.0
# Beyond the first hop a path splits again: ask the FIB for more ports per
# first hop than one path keeps, so that every end-to-end path gets enough.
E2E_PORTS_FACTOR = 4
# A quick round (a dead path answers again, routes changed) traces half as
# many: each router then answers every TTL that reaches it within its ICMP
# burst (Linux: 50), so no retry round is needed for most.
QUICK_PORTS_FACTOR = 2


@dataclass(frozen=True)
class Target:
    """What discovery needs of a remote VTEP (a copy: threads never share
    the core's state)."""
    key: VtepKey
    address: str
    local: str
    port_range: tuple[int, int]
    depth: int = 0       # hops of its live paths as last traced (0: unknown)
    # The first port of each path in the table: a quick round traces these
    # first, so that each path is seen where its ports go now.
    known_ports: tuple[int, ...] = ()

    @classmethod
    def of(cls, vtep: VtepState) -> "Target":
        depth = max((len(p.hops) for p in vtep.paths.values() if p.alive), default=0)
        known = tuple(p.ports[0] for _, p in sorted(vtep.paths.items()) if p.ports)
        return cls(vtep.key, vtep.address, vtep.local, vtep.port_range, depth, known)


class PathDiscovery:
    def __init__(self, uplinks, source_ports: tuple[int, int], ports_per_path: int,
                 end_to_end: bool, fib: Fib | None = None):
        self.uplinks = set(uplinks)
        self.source_ports = source_ports
        self.ports_per_path = ports_per_path
        self.end_to_end = end_to_end
        self.fib = fib if fib is not None else Fib()
        self.warnings: list[str] = []

    def close(self) -> None:
        self.fib.close()

    def candidate_ports(self, port_range: tuple[int, int]) -> list[int]:
        """Configured source ports the device can emit (its max is exclusive)."""
        lo = max(self.source_ports[0], port_range[0])
        hi = min(self.source_ports[1], port_range[1] - 1)
        return list(range(lo, hi + 1)) if lo <= hi else []

    def discover(self, target: Target, quick: bool = False) -> list[Found]:
        """Every path to one VTEP, numbered so that the first QPs of an idle
        VTEP take disjoint links (placement.diverse_order). An empty list
        means no path at all (no route): every path is dead. `quick` (end
        to end): fewer ports, and no waiting for silence past the depth
        the paths had (see trace_ports' expect_depth)."""
        per_path = self.ports_per_path
        factor = QUICK_PORTS_FACTOR if quick else E2E_PORTS_FACTOR
        candidates = self.candidate_ports(target.port_range)
        if quick:
            first_known = set(target.known_ports)
            candidates = list(target.known_ports) + [p for p in candidates if p not in first_known]
        try:
            first = discover_paths(target.local, target.address, candidates, self.uplinks,
                                   ports_per_path=(min(64, per_path * factor)
                                                   if self.end_to_end else per_path),
                                   fib=self.fib)
        except FibError as exc:
            self._warn(f"VTEP {target.address}: {exc}")
            return []
        found = [Found(p.ifindex, p.ifname, p.gateway, (), tuple(p.ports)) for p in first]
        if self.end_to_end:
            found = self._split_by_hops(target, found, target.depth if quick else 0) or [
                Found(f.ifindex, f.ifname, f.gateway, (), f.ports[:per_path]) for f in found]
        else:
            found = [Found(f.ifindex, f.ifname, f.gateway, (), f.ports[:per_path]) for f in found]
        order = diverse_order([path_links(f.ifname, f.gateway, f.hops) for f in found])
        return [found[i] for i in order]

    def first_hops_still(self, vtep: VtepState) -> list[Found]:
        """End-to-end mode, after a route event: each live path with the
        ports whose first hop the FIB still names (no probing)."""
        link_up: dict[int, bool] = {}

        def first_hop_of(port):
            try:
                route = self.fib.lookup(vtep.address, src=vtep.local, sport=port)
            except FibError:
                return None
            # Right after a link goes down the FIB may still name it.
            if route.oif not in link_up:
                link_up[route.oif] = self.fib.link_up(route.oif)
            return (route.oif_name, route.gateway) if link_up[route.oif] else None
        return pathtable.still_on_first_hop(vtep, first_hop_of)

    def _split_by_hops(self, target: Target, first: list[Found],
                       expect_depth: int = 0) -> list[Found]:
        from qpagent.probe import ProbeError, trace_ports
        ports = [port for p in first for port in p.ports]
        try:
            traces = trace_ports(target.local, target.address, ports, expect_depth=expect_depth)
        except ProbeError as exc:
            self._warn(f"end-to-end probes to {target.address}: {exc}")
            return []
        grouped = pathtable.group_by_hops(first, traces, self.ports_per_path)
        if not grouped:
            self._warn(f"end-to-end probes to {target.address}: no router answered")
        return grouped

    def _warn(self, text: str) -> None:
        self.warnings.append(text)

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out


class Prober:
    """Re-traces every remote VTEP's end-to-end paths every PROBE_EVERY_S in
    its own thread (with its own FIB socket) and queues a ProbeRound; or
    sooner when asked (soon()), at most every SOON_EVERY_S."""

    SOON_EVERY_S = 0.25

    def __init__(self, discovery_args: dict, events: queue.Queue, every_s: float = PROBE_EVERY_S):
        self._discovery = PathDiscovery(**discovery_args)
        self.events = events
        self.every_s = every_s
        self._targets: list[Target] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._soon: set[VtepKey] = set()      # VTEPs asked for (soon())
        self._why = ""

    def set_targets(self, targets: list[Target]) -> None:
        with self._lock:
            self._targets = list(targets)

    def start(self) -> "Prober":
        threading.Thread(target=self._run, name="qpagent-probe", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def soon(self, keys: set[VtepKey], why: str = "a dead path answers again") -> None:
        """Trace these VTEPs' paths again now (a quick round), not at the
        next period: routing moved under the paths (a dead path answers
        again, through links its identity does not name, once BGP has
        routed around the failure; or the failure healed; or the routes
        changed)."""
        with self._lock:
            self._soon |= set(keys)
            self._why = why
        self._wake.set()

    def _run(self) -> None:
        try:
            while True:
                asked = self._wake.wait(max(0.0, self.every_s - self.SOON_EVERY_S))
                if self._stop.is_set():
                    return
                self._wake.clear()
                with self._lock:
                    targets = list(self._targets)
                    soon, self._soon, why = self._soon, set(), self._why
                if asked:
                    targets = [t for t in targets if t.key in soon]
                    log.info("probe: tracing the paths to %s again now (%s)",
                             ", ".join(t.address for t in targets) or "no VTEP probed", why)
                started = time.monotonic()
                found = {t.key: self._discovery.discover(t, quick=asked) for t in targets}
                self.events.put(ProbeRound(PathsSeen(found, "probe", started=started),
                                           time.monotonic(),
                                           tuple(self._discovery.take_warnings())))
                # Asked again meanwhile: not before a little while.
                if self._stop.wait(self.SOON_EVERY_S):
                    return
        finally:
            self._discovery.close()
