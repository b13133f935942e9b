"""Where each queue pair goes: pure functions, no kernel, no I/O.

The goal is exact balance by count (with K QPs on P live paths the busiest
path carries ceil(K/P)), then by bytes, reached with the fewest moves:
- QPs on a dead or unknown path (orphans) always move;
- a live path over its quota gives up its surplus, lightest and least
  recently moved first (hysteresis: a QP just moved stays if another can go);
- quotas of ceil(K/P) go to the paths that already hold the most QPs, so
  nothing moves that need not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

QpId = Hashable


@dataclass(frozen=True)
class Move:
    qp: QpId
    old_path: int | None   # None: the QP had no (live) path
    new_path: int


def quotas(paths: Iterable[int], counts: Mapping[int, int], total: int) -> dict[int, int]:
    """Per-path QP quota summing to `total`: ceil on the paths holding most."""
    ordered = sorted(paths, key=lambda p: (-counts.get(p, 0), p))
    if not ordered:
        return {}
    base, extra = divmod(total, len(ordered))
    return {p: base + (1 if i < extra else 0) for i, p in enumerate(ordered)}


def rebalance(assignment: Mapping[QpId, int | None],
              live_paths: Iterable[int],
              qp_bytes: Mapping[QpId, int] | None = None,
              recently_moved: Iterable[QpId] = (),
              path_bytes: Mapping[int, int] | None = None) -> list[Move]:
    """Moves that make `assignment` exactly balanced over `live_paths`.

    assignment: QP -> its current path (None or a dead path = orphan).
    qp_bytes: recent bytes per QP, to spread heavy QPs and move light ones.
    recently_moved: QPs to leave alone when another QP can move instead.
    path_bytes: load already on each path (only used to break ties).
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
    quota = quotas(live, counts, len(assignment))

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
    moves = []
    # Heaviest first, each onto the path with room and the least load.
    for qp, old in sorted(to_place, key=lambda item: (-qp_bytes.get(item[0], 0), str(item[0]))):
        room = [p for p in live if len(members[p]) < quota[p]]
        target = min(room, key=lambda p: (len(members[p]), load[p], p))
        members[target].append(qp)
        load[target] += qp_bytes.get(qp, 0)
        moves.append(Move(qp, old, target))
    return moves


def place_new(counts: Mapping[int, int], live_paths: Iterable[int]) -> int | None:
    """The path a newly seen QP takes: fewest QPs, lowest index on ties.

    This is the rule the data plane applies itself (qp_steer); the agent
    uses it to predict and to check."""
    live = sorted(set(live_paths))
    if not live:
        return None
    return min(live, key=lambda p: (counts.get(p, 0), p))


def imbalance(counts: Mapping[int, int], live_paths: Iterable[int]) -> float:
    """Busiest live path over the best it could be, ceil(K/P): 1.0 is as
    even as K QPs on P paths can be (0 when idle). With more paths than
    QPs the plain busiest/mean would read P/K even for a perfect spread."""
    live = list(set(live_paths))
    total = sum(counts.get(p, 0) for p in live)
    if not live or total == 0:
        return 0.0
    return max(counts.get(p, 0) for p in live) / math.ceil(total / len(live))


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
