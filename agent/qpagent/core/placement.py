"""Where each queue pair goes: pure functions, no kernel, no I/O.

The goal is exact balance by count (with K QPs on P live paths the busiest
path carries ceil(K/P)), then by bytes, reached with the fewest moves:
- QPs on a dead or unknown path (orphans) always move;
- a live path over its quota gives up its surplus, lightest and least
  recently moved first (hysteresis: a QP just moved stays if another can go);
- quotas of ceil(K/P) go to the paths that already hold the most QPs, so
  nothing moves that need not;
- where whole paths share links (end-to-end mode: 16 paths over 4 WAN
  links), links decide instead of per-path quotas (each path counting as a
  link of its own too): QPs move one at a time while a move makes the
  busiest links less busy. Distinct paths are not enough if they cross
  one WAN link.

Paths may carry weights (their bottleneck capacity): then balance means QPs
in proportion to weight, each path's quota K*w/W rounded by largest
remainder. Equal weights (or none) give exactly the unweighted quotas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Iterable, Mapping

QpId = Hashable


@dataclass(frozen=True)
class Move:
    qp: QpId
    old_path: int | None   # None: the QP had no (live) path
    new_path: int


def quotas(paths: Iterable[int], counts: Mapping[int, int], total: int,
           weights: Mapping[int, float] | None = None) -> dict[int, int]:
    """Per-path QP quota summing to `total`, in proportion to `weights`
    (equal when None) by largest remainder; among equal remainders the
    extra QP goes to the path already holding most, so fewest QPs move."""
    paths = list(paths)
    if not paths:
        return {}
    w = _exact_weights(paths, weights)
    whole = sum(w.values())
    share = {p: total * w[p] / whole for p in paths}
    quota = {p: math.floor(share[p]) for p in paths}
    extra = total - sum(quota.values())
    ordered = sorted(paths, key=lambda p: (-(share[p] - quota[p]), -counts.get(p, 0), p))
    for p in ordered[:extra]:
        quota[p] += 1
    return quota


def _exact_weights(paths: list[int], weights: Mapping[int, float] | None) -> dict[int, Fraction]:
    """Weights as exact fractions (equal floats give equal remainders); a
    path without a positive weight counts as 1 when none has one, else as
    the smallest weight given."""
    given = {p: Fraction(weights[p]) for p in paths
             if weights and weights.get(p) is not None and weights[p] > 0}
    fallback = min(given.values()) if given else Fraction(1)
    return {p: given.get(p, fallback) for p in paths}


def path_weights(identities: Mapping[int, tuple], capacities: Mapping[str, float]) -> dict[int, float]:
    """Each path's weight: the smallest configured capacity among the
    links it names (uplink, gateway, hop addresses), i.e. its bottleneck.
    A path naming none of them is not limited by anything known: it gets
    the largest capacity found. Without any capacity every weight is 1."""
    found = {p: [capacities[x] for x in _flat(ident) if isinstance(x, str) and x in capacities]
             for p, ident in identities.items()}
    known = [c for caps in found.values() for c in caps]
    if not known:
        return {p: 1.0 for p in identities}
    ceiling = max(known)
    return {p: float(min(caps)) if caps else float(ceiling) for p, caps in found.items()}


def bottleneck_links(links: Mapping[int, Iterable], capacities: Mapping[str, float]) -> dict:
    """The links of these paths (path_links) that a configured capacity
    names, as path_weights reads the names (a first hop by its uplink or
    gateway, a hop by its address), with that capacity: the links
    rebalance evens first."""
    out = {}
    for crossed in links.values():
        for link in crossed:
            caps = [capacities[n] for n in _flat((link,)) if isinstance(n, str) and n in capacities]
            if caps:
                out[link] = float(min(caps))
    return out


def _flat(identity: tuple) -> list:
    """(uplink, gateway, (hop, hop, ...)) -> [uplink, gateway, hop, hop, ...]"""
    out = []
    for part in identity:
        out.extend(part if isinstance(part, tuple) else (part,))
    return out


def rebalance(assignment: Mapping[QpId, int | None],
              live_paths: Iterable[int],
              qp_bytes: Mapping[QpId, int] | None = None,
              recently_moved: Iterable[QpId] = (),
              path_bytes: Mapping[int, int] | None = None,
              weights: Mapping[int, float] | None = None,
              links: Mapping[int, Iterable] | None = None,
              bottlenecks: Mapping | None = None) -> list[Move]:
    """Moves that make `assignment` exactly balanced over `live_paths`
    (in proportion to `weights`, when given).

    assignment: QP -> its current path (None or a dead path = orphan).
    qp_bytes: recent bytes per QP, to spread heavy QPs and move light ones.
    recently_moved: QPs to leave alone when another QP can move instead.
    path_bytes: load already on each path (only used to break ties).
    weights: path -> bottleneck capacity (any unit); missing means equal.
    links: path -> the links it crosses (path_links); None: every path is
    a link of its own, and balance per path is balance per link.
    bottlenecks: link -> capacity, for the links known to bound (configured
    capacities, such as WAN links): these are balanced first, against
    their own capacity, and the other links only among placements equal
    on them.
    """
    live = sorted(set(live_paths))
    if not live:
        return []
    qp_bytes = qp_bytes or {}
    path_bytes = dict(path_bytes or {})
    recent = set(recently_moved)

    members: dict[int, list[QpId]] = {p: [] for p in live}
    orphans: list[QpId] = []
    for qp, path in assignment.items():
        (members[path] if path in members else orphans).append(qp)

    counts = {p: len(q) for p, q in members.items()}
    # floats suffice to order targets (the quotas are exact), and are fast
    w = {p: float(x) for p, x in _exact_weights(live, weights).items()}
    if links is None:
        quota = quotas(live, counts, len(assignment), weights)
    else:
        # Links decide, each path being a link of its own as well: per-path
        # quotas would pin QPs where only a chain of moves evens out a link.
        quota = {p: len(assignment) for p in live}

    # Surplus: cheapest to move first (not recently moved, then lightest).
    to_place: list[tuple[QpId, int | None]] = [(qp, assignment[qp]) for qp in orphans]
    for path in live:
        surplus = counts[path] - quota[path]
        if surplus <= 0:
            continue
        movable = sorted(members[path],
                         key=lambda qp: (qp in recent, qp_bytes.get(qp, 0), str(qp)))
        for qp in movable[:surplus]:
            to_place.append((qp, path))
            members[path].remove(qp)

    load = {p: sum(qp_bytes.get(qp, 0) for qp in members[p]) + path_bytes.get(p, 0)
            for p in live}
    spread = _LinkSpread(live, links, w, bottlenecks)
    for p in live:
        spread.add(p, len(members[p]))
    # Heaviest first, each onto the path with room whose links are least
    # loaded, then the least loaded path.
    for qp, _ in sorted(to_place, key=lambda item: (-qp_bytes.get(item[0], 0), str(item[0]))):
        room = [p for p in live if len(members[p]) < quota[p]]
        target = min(room, key=lambda p: (spread.after_one_more(p), len(members[p]) / w[p],
                                          load[p] / w[p], p))
        members[target].append(qp)
        spread.add(target, 1)
        load[target] += qp_bytes.get(qp, 0)
    if links is not None:
        _spread_over_links(members, spread, qp_bytes, recent)
    final = {qp: p for p, qps in members.items() for qp in qps}
    moved = [qp for qp, old in assignment.items() if final[qp] != old]
    # Heaviest first, as placed.
    return [Move(qp, assignment[qp], final[qp])
            for qp in sorted(moved, key=lambda qp: (-qp_bytes.get(qp, 0), str(qp)))]


def path_links(uplink: str, gateway: str | None, hops: tuple) -> tuple:
    """The links a path crosses, as far as a TTL trace names them: its
    first hop, then each hop. A router that answers from the interface the
    probe came in on (icmp_errors_use_inbound_ifaddr) names the link it
    came in on, so the remote border's answer names the WAN link; one that
    answers from a loopback names itself, and balance is per router."""
    return (("first", uplink, gateway),) + tuple(hops)


class _LinkSpread:
    """QPs per link, each against the link's capacity. Links are taken as
    equal unless paths carry weights: then a link is taken to carry as
    much as the widest live path through it (a path's weight is its
    bottleneck). Links named in `bottlenecks` carry their own capacity and
    come first: a placement is more even when they are, whatever the rest
    (the WAN links, not the fabric links that lead to them: after a
    spine-border cut, evening the WAN links loads one border link more).
    The count is raw, not per path offered: a link left with fewer live
    paths after a failure is no smaller for it."""

    def __init__(self, live: list[int], links: Mapping[int, Iterable] | None,
                 w: Mapping[int, float], bottlenecks: Mapping | None = None):
        self.links = {p: (("path", p),) + (tuple(links[p]) if links is not None and p in links else ())
                      for p in live}
        self.capacity: dict = {}
        for p in live:
            for link in self.links[p]:
                self.capacity[link] = max(self.capacity.get(link, 0.0), w[p])
        self.first = {link for link in self.capacity if bottlenecks and link in bottlenecks}
        for link in self.first:
            self.capacity[link] = float(bottlenecks[link])
        self.count = {link: 0 for link in self.capacity}

    def add(self, path: int, n: int) -> None:
        for link in self.links[path]:
            self.count[link] += n

    def after_one_more(self, path: int) -> tuple:
        """The path's links, most loaded first (bottlenecks before the
        rest), with one more QP on it."""
        return self._tiers({l: self.count[l] + 1 for l in self.links[path]})

    def score(self) -> tuple:
        """Every link's load, most loaded first (bottlenecks before the
        rest): lower (compared from the busiest link down) is more even."""
        return self._tiers(self.count)

    def _tiers(self, counts: Mapping) -> tuple:
        return (_descending(c / self.capacity[l] for l, c in counts.items() if l in self.first),
                _descending(c / self.capacity[l] for l, c in counts.items() if l not in self.first))


def _descending(loads: Iterable[float]) -> tuple:
    # rounded: float noise must not pass for an improvement
    return tuple(sorted((round(x, 9) for x in loads), reverse=True))


def _spread_over_links(members: dict[int, list], spread: _LinkSpread,
                       qp_bytes: Mapping, recent: set) -> None:
    """Move QPs one at a time between paths while a move makes the busiest
    links less busy (compared busiest first, so it ends, and an even
    placement makes no move). Among equal moves, the QP that goes is one
    not recently moved, then the lightest."""
    paths = sorted(members)
    for _ in range(sum(len(m) for m in members.values()) * len(paths) + 1):
        now = spread.score()
        best = None
        for a in paths:
            if not members[a]:
                continue
            qp = min(members[a], key=lambda q: (q in recent, qp_bytes.get(q, 0), str(q)))
            for b in paths:
                if b == a:
                    continue
                spread.add(a, -1)
                spread.add(b, 1)
                score = spread.score()
                spread.add(b, -1)
                spread.add(a, 1)
                if score >= now:
                    continue
                key = (score, qp in recent, qp_bytes.get(qp, 0))
                if best is None or key < best[0]:
                    best = (key, qp, a, b)
        if best is None:
            return
        _, qp, a, b = best
        members[a].remove(qp)
        members[b].append(qp)
        spread.add(a, -1)
        spread.add(b, 1)


def place_new(counts: Mapping[int, int], live_paths: Iterable[int],
              weights: Mapping[int, float] | None = None) -> int | None:
    """The path a newly seen QP takes: fewest QPs, lowest index on ties;
    weighted, the path where one more QP leaves the fewest per unit of
    weight (so K new QPs fill the paths in proportion).

    Unweighted, this is the rule the data plane applies itself (qp_steer);
    the agent uses it to predict and to check."""
    live = sorted(set(live_paths))
    if not live:
        return None
    w = _exact_weights(live, weights)
    return min(live, key=lambda p: ((counts.get(p, 0) + 1) / w[p], counts.get(p, 0), p))


def imbalance(counts: Mapping[int, int], live_paths: Iterable[int],
              weights: Mapping[int, float] | None = None) -> float:
    """Busiest live path over the best it could be, ceil(K/P): 1.0 is as
    even as K QPs on P paths can be (0 when idle). With more paths than
    QPs the plain busiest/mean would read P/K even for a perfect spread.
    Weighted, each path is measured against its own ceil(K*w/W)."""
    live = list(set(live_paths))
    total = sum(counts.get(p, 0) for p in live)
    if not live or total == 0:
        return 0.0
    w = _exact_weights(live, weights)
    whole = sum(w.values())
    return max(counts.get(p, 0) / math.ceil(total * w[p] / whole) for p in live)


def diverse_order(paths: list[tuple]) -> list[int]:
    """An order of paths (each a tuple of the links it crosses) in which
    every prefix spreads over links as evenly as it can.

    The data plane gives a new QP the lowest-index path among the least
    loaded, so numbering paths in this order makes the first QPs of an
    idle VTEP take disjoint links wherever the topology has them (e.g.
    4 QPs over 2 uplinks x 4 WAN links: 2 per uplink, 1 per WAN link)."""
    load: dict = {}
    remaining = list(range(len(paths)))
    order = []
    while remaining:
        best = min(remaining, key=lambda i: (max((load.get(l, 0) for l in paths[i]), default=0),
                                             sum(load.get(l, 0) for l in paths[i]), i))
        order.append(best)
        remaining.remove(best)
        for link in paths[best]:
            load[link] = load.get(link, 0) + 1
    return order
