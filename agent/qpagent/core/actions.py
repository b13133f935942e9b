"""What the core asks the adapters to do. Plain values, compared whole in
tests; qpagent.adapters.maps applies them to the BPF maps in order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WritePath:
    vtep: int
    path: int
    ifindex: int
    alive: bool
    ports: tuple[int, ...]
    hashes: tuple[int, ...]
    qps: int
    shares: int = 0     # bit j: path j crosses a link of this one (end-to-end mode)


@dataclass(frozen=True)
class MoveQp:
    qp: bytes
    vtep: int
    path: int
    slot: int
    port: int
    hash: int
    reason: str          # one of REPLACEMENT_REASONS


@dataclass(frozen=True)
class ForgetQp:
    qp: bytes


@dataclass(frozen=True)
class SetMacVteps:
    macs: tuple[tuple[str, int], ...]    # (mac, VTEP index), sorted


@dataclass(frozen=True)
class SetPathCounts:
    vtep: int
    counts: tuple[tuple[int, int], ...]  # (path, QPs), sorted


@dataclass(frozen=True)
class Note:
    """A line for the event log (and `qpagent status`)."""
    kind: str
    detail: str


@dataclass(frozen=True)
class Warn:
    text: str


@dataclass(frozen=True)
class WriteDeadline:
    """Arm (or, with 0, disarm) the data plane's liveness check of a path:
    it is unusable after deadline_ns without a probe reply."""
    vtep: int
    path: int
    deadline_ns: int


@dataclass(frozen=True)
class DisarmAll:
    """No path is checked: nobody probes (the agent starts or stops)."""


@dataclass(frozen=True)
class SetRepairConfig:
    holddown_ns: int
    retransmit: bool
    nak: bool = False
    stall_ns: int = 0          # 0: off


@dataclass(frozen=True)
class GoBack:
    """Hand the QP's requester a NAK naming `psn`, its oldest unacknowledged
    PSN (qpagent.goback): the QP left a dead path with data in flight."""
    qp: bytes
    psn: int


REPLACEMENT_REASONS = ("dead_path", "liveness", "path_up", "rebalance", "port_remap")
# Repairs the agent makes itself, by what told it (the data plane counts its own).
AGENT_REPAIR_CAUSES = ("bfd", "route", "liveness")
MAP_WRITES = (WritePath, MoveQp, ForgetQp, SetMacVteps, SetPathCounts, WriteDeadline,
              DisarmAll, SetRepairConfig)
