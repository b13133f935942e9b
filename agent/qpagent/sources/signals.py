"""What sources put on the daemon loop's one queue. `seen` is
time.monotonic() when the agent learnt of the change: reactions are timed
from it to the maps written."""

from __future__ import annotations

from dataclasses import dataclass

from qpagent.core.inputs import BfdSeen, PathsSeen


@dataclass(frozen=True)
class RouteChanged:
    kind: str       # route_add | route_del | link_up | link_down | resync
    seen: float
    summary: str


@dataclass(frozen=True)
class BfdChanged:
    bfd: BfdSeen
    seen: float


@dataclass(frozen=True)
class ProbeRound:
    paths: PathsSeen
    seen: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stop:
    seen: float
