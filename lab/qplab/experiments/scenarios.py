"""What an experiment runs: scenarios and the settings they share.

Scenarios: {kernel hashing, qpagent} x WAN delay x loss x {no failure, the
busiest WAN link blackholed mid-run} x {ring, hierarchical, ps}. "kernel"
runs with no agent attached, "qpagent" with the agents running.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..workloads.worker import EngineConfig


@dataclass(frozen=True)
class Scenario:
    mode: str            # "kernel" or "qpagent"
    delay_ms: float
    loss_pct: float
    failure: bool
    pattern: str

    @property
    def name(self) -> str:
        return (f"{self.mode}-{self.pattern}-d{self.delay_ms:g}ms-l{self.loss_pct:g}pct"
                f"-{'fail' if self.failure else 'ok'}")

    def twin(self) -> "Scenario":
        """The same scenario without the failure: the baseline for time lost."""
        return Scenario(self.mode, self.delay_ms, self.loss_pct, False, self.pattern)


def quick_scenarios(delay_ms: float = 5.0) -> list[Scenario]:
    return [Scenario(m, delay_ms, 0.0, f, "ring")
            for m in ("kernel", "qpagent") for f in (False, True)]


def full_scenarios() -> list[Scenario]:
    return [Scenario(m, d, l, f, p) for m, d, l, f, p in itertools.product(
        ("kernel", "qpagent"), (0, 5, 20, 50), (0.0, 0.1), (False, True),
        ("ring", "hierarchical", "ps"))]


@dataclass
class Settings:
    size: int = 2 << 20
    iterations: int = 6
    fail_iterations: int = 8
    fail_at: int = 3               # blackhole during this iteration
    qps_per_conn: int = 4
    msg_size: int = 1 << 16
    sport_policy: str = "qpn"
    wan_rate_mbit: float = 5.0
    wan_buffer_ms: float = 400.0   # deep WAN buffers: RoCE fabrics are run lossless
    retry_preset: str = "nccl"     # RC retransmission as a collective library sets it
    engine: EngineConfig = None
    host_rate_bps: float = 1.0e9   # the engine's own rate, for the model
    seed: int = 7

    def __post_init__(self):
        if self.engine is None:
            self.engine = EngineConfig.preset(self.retry_preset, mtu=1024, window=64)
