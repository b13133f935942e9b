"""Keeping each remote VTEP's path table: indexes stable by identity,
dead paths kept (their QPs must move) until a new path needs the slot."""

from __future__ import annotations

from typing import Callable

from qpagent.contract import MAX_PATHS, PORTS_PER_PATH
from qpagent.core.model import Found, PathState, VtepState

SILENT_HOP = "*"


def merge_paths(vtep: VtepState, discovered: list[Found],
                warn: Callable[[str], None] = lambda _: None) -> bool:
    """Fold what was discovered into vtep.paths; True when anything the
    data plane sees changed. Paths that are gone die first, so their
    indexes can go to the paths that replace them (a full table must not
    block those)."""
    changed = False
    by_identity = {p.identity: p for p in vtep.paths.values()}
    seen = {found.identity for found in discovered}
    for ident, path in by_identity.items():
        if ident not in seen and path.alive:
            path.alive = False
            changed = True
    for found in discovered:
        ports = list(found.ports)[:PORTS_PER_PATH]
        old = by_identity.get(found.identity)
        if old is None:
            index = free_path_index(vtep, seen)
            if index is None:
                warn(f"VTEP {vtep.address}: more than {MAX_PATHS} paths")
                continue
            vtep.paths[index] = PathState(index, found.ifindex, found.ifname,
                                          found.gateway, ports, found.hops)
            changed = True
        elif old.ports != ports or not old.alive or old.ifindex != found.ifindex:
            old.ports, old.alive, old.ifindex = ports, True, found.ifindex
            changed = True
    return changed


def free_path_index(vtep: VtepState, keep: set) -> int | None:
    """A never-used index, else one of a dead path whose identity is not
    coming back (its QPs were moved when it died)."""
    for i in range(MAX_PATHS):
        if i not in vtep.paths:
            return i
    for i, path in sorted(vtep.paths.items()):
        if not path.alive and path.identity not in keep:
            del vtep.paths[i]
            return i
    return None


def carry_over(previous: list[Found], found: list[Found], per_path: int = PORTS_PER_PATH) -> list[Found]:
    """A TTL probe round seen against the round before: routers that did
    not answer every TTL leave ports, even whole paths, out of a round, and
    that says nothing about them. So a path keeps its identity, and with it
    its index and health, unless the round traced its ports onto another
    path: a path of the previous round (as deep) not found again stays
    while none of its ports was traced elsewhere (one that was says routing
    moved under the path: where its other ports go is unknown); a path
    found again keeps its ports first (the QPs' slots and the probe port
    stay) and gains the new ones, less any traced elsewhere."""
    elsewhere: dict[int, tuple] = {}
    for f in found:
        for port in f.ports:
            elsewhere[port] = f.identity
    before = {f.identity: f for f in previous}
    out = []
    for f in found:
        old = before.get(f.identity)
        if old is None:
            out.append(f)
            continue
        kept = [p for p in old.ports if elsewhere.get(p, f.identity) == f.identity]
        ports = kept + [p for p in f.ports if p not in kept]
        out.append(Found(f.ifindex, f.ifname, f.gateway, f.hops, tuple(ports[:per_path])))
    seen = {f.identity for f in found}
    depth = max((len(f.hops) for f in found), default=0)
    for old in previous:
        if old.identity in seen or len(old.hops) != depth:
            continue      # found again, or from a view of another depth (no hops yet)
        if not any(p in elsewhere for p in old.ports):
            out.append(old)
    return out


def trustworthy(vtep: VtepState, found: list[Found]) -> bool:
    """A probe round that saw fewer hops than the live paths have (a router
    too busy to answer every TTL, a lost reply) says nothing about the
    paths: adopting it would kill them all. First-hop changes still reach
    the agent through route events and the FIB."""
    depth_now = max((len(p.hops) for p in vtep.paths.values() if p.alive), default=0)
    depth_new = max((len(f.hops) for f in found), default=0)
    return bool(found) and depth_new >= depth_now


def group_by_hops(first_hops: list[Found], traces: dict[int, tuple],
                  per_path: int) -> list[Found]:
    """Split each first-hop path's ports by every hop they cross. Ports
    with a silent hop, or traced less deep than the deepest trace, are
    left out: each would make a path of its own."""
    depth = max((len(h) for h in traces.values()), default=0)
    if depth == 0:
        return []
    groups: dict[tuple, list[int]] = {}
    for path in first_hops:
        for port in path.ports:
            hops = tuple(traces.get(port, ()))
            if len(hops) == depth and SILENT_HOP not in hops:
                groups.setdefault((path.ifindex, path.ifname, path.gateway, hops), []).append(port)
    return [Found(i, name, gw, hops, tuple(ports[:per_path]))
            for (i, name, gw, hops), ports in groups.items()]


def still_on_first_hop(vtep: VtepState, first_hop_of: Callable[[int], tuple | None]) -> list[Found]:
    """Each live path with only the ports whose first hop is still the
    path's own (first_hop_of(port) -> (uplink, gateway), None when there is
    no route): the fast check after a route event in end-to-end mode,
    where probing the whole path would take a round trip per hop."""
    found = []
    for path in vtep.paths.values():
        if not path.alive:
            continue
        ok = []
        for port in path.ports:
            hop = first_hop_of(port)
            if hop is None:
                break
            if hop == (path.uplink, path.gateway):
                ok.append(port)
        if ok:
            found.append(Found(path.ifindex, path.uplink, path.gateway, path.hops, tuple(ok)))
    return found
