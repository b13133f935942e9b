"""What an experiment runs: scenarios and the settings they share.

Scenarios: mode x WAN delay x loss x {no failure, the busiest WAN link
blackholed mid-run} x {ring, hierarchical, ps}, each run several times with
different seeds (the seed picks the QP numbers, so kernel hashing lands
differently each time). Modes:

- "kernel": no agent; Linux hashes the outer source port;
- "qpagent-firsthop": the agents balance QPs over their own uplinks only;
- "qpagent": the agents balance over whole end-to-end paths (TTL probes)
  and repair on path liveness.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from qpagent.config import LivenessSettings

from ..workloads.worker import EngineConfig

MODES = ("kernel", "qpagent-firsthop", "qpagent")
PATTERNS = ("ring", "hierarchical", "ps")
SWEEP_DELAYS_MS = (5.0, 20.0, 50.0)
SWEEP_LOSSES_PCT = (0.0, 0.1)
# The sweep's sizes: small enough for 3 runs of 108 scenarios within an hour
# on 2 cores, large enough that a WAN link at its rate is the bottleneck.
SWEEP_SIZE_MB = 0.5
SWEEP_PS_SIZE_MB = 0.25
SWEEP_ITERATIONS = 3
SWEEP_FAIL_ITERATIONS = 5


@dataclass(frozen=True)
class Scenario:
    mode: str            # one of MODES
    delay_ms: float | None   # one way, every WAN link; None: each link's own (the topology's)
    loss_pct: float
    failure: bool
    pattern: str
    run: int = 0         # which of the scenario's runs (its seed offset)

    @property
    def group(self) -> str:
        """The scenario without its run index: what medians are taken over."""
        delay = "topo" if self.delay_ms is None else f"{self.delay_ms:g}ms"
        return (f"{self.mode}-{self.pattern}-d{delay}-l{self.loss_pct:g}pct"
                f"-{'fail' if self.failure else 'ok'}")

    @property
    def name(self) -> str:
        return f"{self.group}-r{self.run}"

    def twin(self) -> "Scenario":
        """The same scenario without the failure: the baseline for time lost."""
        return Scenario(self.mode, self.delay_ms, self.loss_pct, False, self.pattern, self.run)


def quick_scenarios(delay_ms: float | None = 5.0) -> list[Scenario]:
    return [Scenario(m, delay_ms, 0.0, f, "ring")
            for m in ("kernel", "qpagent") for f in (False, True)]


def full_scenarios(runs: int = 3, modes=MODES, delays=SWEEP_DELAYS_MS, losses=SWEEP_LOSSES_PCT,
                   patterns=PATTERNS) -> list[Scenario]:
    """The sweep, in the order it runs: one agent mode at a time (starting
    agents is the slow switch), then one WAN setting at a time."""
    return [Scenario(m, d, l, f, p, r) for m, d, l, p, f, r in itertools.product(
        modes, delays, losses, patterns, (False, True), range(runs))]


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
    # "qpagent" mode's path liveness: on, off, or None for qpagent's own default
    liveness: bool | None = None
    # Tensor size per pattern where it differs from `size` (a parameter
    # server moves each worker's whole tensor through two servers' links).
    pattern_sizes: dict = field(default_factory=dict)

    def size_for(self, pattern: str) -> int:
        return self.pattern_sizes.get(pattern, self.size)

    def __post_init__(self):
        if self.engine is None:
            self.engine = EngineConfig.preset(self.retry_preset, mtu=1024, window=64)


def agent_settings(mode: str, st: Settings) -> dict | None:
    """How `Lab.start_agents` starts the agents for `mode` (None: no agent)."""
    if mode == "kernel":
        return None
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    end_to_end = mode == "qpagent"
    liveness = LivenessSettings() if st.liveness is None else LivenessSettings(enabled=st.liveness)
    return {"end_to_end": end_to_end,
            "liveness": liveness if end_to_end else LivenessSettings(enabled=False)}
