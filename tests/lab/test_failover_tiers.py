"""Silent cuts at every tier of the default lab, with qpagent's end-to-end
liveness: every QP resumes, none goes to the error state.

The default two-DC lab (real FRR, BFD 100 ms x 3, WAN delay lines at 10 ms)
with an agent on every leaf in end-to-end mode, liveness on (10 ms x 3).
8 RC QPs from dc1-h1 to dc2-h1 through the traffic engine with NCCL's retry
settings. For each tier, the link of that tier carrying the most of the
traffic is blackholed (it stays up and drops everything, so only BFD and the
agents' probes can see it): a WAN link, a spine-border link, and one of the
sending leaf's uplinks. The gaps are read from the packets arriving at dc2-h1
(kernel timestamps); run with -s for the figures. The figures against their
targets are in tests/bench/bench_failover.py.
"""
import pytest

from qpagent.config import LivenessSettings, RepairSettings

from qplab.experiments.failover import CUT_MIN_BYTES, TIERS, measure_cut, settle
from qplab.experiments.observe import agent_status

SENDER_LEAF = "dc1-leaf1"


@pytest.fixture(scope="module")
def lab_with_agents(default_lab):
    started = default_lab.start_agents(progress=lambda m: None,
                                       liveness=LivenessSettings(enabled=True),
                                       repair=RepairSettings(retransmit=True))
    assert started and all(a.ok for a in started.values()), started
    settle(default_lab, SENDER_LEAF)
    return default_lab


def repairs(lab) -> dict:
    status = agent_status(lab.agent_socket(SENDER_LEAF)) or {}
    return {cause: r.get("total", 0) for cause, r in status.get("repairs", {}).items()}


@pytest.mark.parametrize("tier", TIERS)
def test_silent_cut_every_qp_resumes_and_none_goes_to_error(lab_with_agents, tier):
    lab = lab_with_agents
    before = repairs(lab)
    result = measure_cut(lab, tier)
    print(f"\n{tier}: cut {result.link}, {len(result.hit)}/{result.qps} QPs hit, longest gap per "
          "QP (ms): " + ", ".join(f"{qp:#x} {g:.0f}" for qp, g in sorted(result.gaps_ms.items()))
          + f"; WAN balanced {result.balanced_after_ms} ms after the cut; QPs per WAN link 1 s "
          f"after it {result.wan_load_1s}; {result.engine}")
    assert result.engine["completed"], result.engine
    assert result.engine["qps_in_error"] == [], result.engine
    assert result.engine["problems"] == [], result.engine
    assert result.engine["verified_bytes"] > 0
    # The cut link carried the QPs' traffic, else this test would prove
    # nothing. (Which QPs were hit is not asserted: a repair as fast as the
    # target leaves a gap no longer than the engine's own jitter.)
    assert result.carried_bytes >= CUT_MIN_BYTES, result.carried_bytes
    after = repairs(lab)
    moved_by_agent = sum(after.get(c, 0) - before.get(c, 0) for c in ("liveness", "retransmit"))
    assert moved_by_agent >= 1, (before, after)
