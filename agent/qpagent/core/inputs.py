"""The typed events that reach the core. Sources make them; the daemon's
loop hands them to Core together with the QP table it read from the maps."""

from __future__ import annotations

from dataclasses import dataclass, field

from qpagent.core.model import Found, VtepAddress, VtepKey


@dataclass(frozen=True)
class FdbSeen:
    """The VXLAN FDB: every remote VTEP present, and which inner MAC goes
    to which of them."""
    vteps: dict[VtepKey, VtepAddress]
    macs: dict[str, VtepKey] = field(default_factory=dict)


@dataclass(frozen=True)
class PathsSeen:
    """Paths discovered towards some remote VTEPs. VTEPs not named are left
    alone. cause names what prompted the look ("start", "periodic",
    "route_del", "probe", ...); a probe round can only refine, never kill
    every path (see pathtable.trustworthy)."""
    paths: dict[VtepKey, list[Found]]
    cause: str
    fdb: FdbSeen | None = None
    started: float | None = None    # time.monotonic() when the look began


@dataclass(frozen=True)
class BfdSeen:
    """FRR's BFD peers; `down_uplinks` are managed uplinks with a peer not up."""
    available: bool
    reason: str | None
    peers: tuple[dict, ...] = ()
    down_uplinks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Tick:
    """The once-a-second reconciliation: counters, idle QPs, balance.
    now_ns is on bpf_ktime_get_ns's clock (CLOCK_MONOTONIC)."""
    now_ns: int


@dataclass(frozen=True)
class PathHealthChanged:
    """A path of a remote VTEP that answers probes went unhealthy (misses
    requests in a row unanswered for their deadline) or healthy (first
    reply, or answering for the hold-down again). `seen` is
    time.monotonic() when the change was seen."""
    key: VtepKey
    path_index: int
    healthy: bool
    rtt_ns: int
    seen: float
    silent_ns: int = 0      # unhealthy: how long its requests went unanswered
                            # (since the misses-th of them left)
    deadline_ns: int = 0    # unhealthy: the deadline that silence passed


@dataclass(frozen=True)
class PathRttSeen:
    """A probed path's smoothed RTT and the margin its jitter asks for
    moved enough to change its liveness deadline."""
    key: VtepKey
    path_index: int
    srtt_ns: int
    margin_ns: int
