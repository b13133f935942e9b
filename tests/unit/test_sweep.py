"""The sweep's pure parts: which scenarios it runs and in what order, how
agents are started per mode, runs folded into medians with their spread,
the progress line, resuming, and the report rendered from records."""
import json

import pytest

from qpagent.config import LivenessSettings
from qplab.experiments import runner, scenarios, summary, sweep_report
from qplab.experiments.scenarios import Scenario, Settings


def test_the_sweep_covers_every_axis_three_times_one_mode_at_a_time():
    sweep = scenarios.full_scenarios()
    assert len(sweep) == 3 * 3 * 3 * 2 * 2 * 3 == 324
    assert len({sc.name for sc in sweep}) == 324
    assert {sc.group for sc in sweep} == {sc.group for sc in sweep if sc.run == 2}
    # modes change only twice (starting agents is the slow switch), WAN settings 18 times
    modes = [sc.mode for sc in sweep]
    assert [m for i, m in enumerate(modes) if i == 0 or modes[i - 1] != m] == list(scenarios.MODES)
    wan = [(sc.mode, sc.delay_ms, sc.loss_pct) for sc in sweep]
    assert sum(1 for i in range(1, len(wan)) if wan[i] != wan[i - 1]) == 17
    assert sweep[0].name == "kernel-ring-d5ms-l0pct-ok-r0"
    assert sweep[1].name == "kernel-ring-d5ms-l0pct-ok-r1"
    assert Scenario("qpagent", 20, 0.1, True, "ps", 2).twin().name == "qpagent-ps-d20ms-l0.1pct-ok-r2"


def test_agent_settings_per_mode():
    st = Settings()
    assert scenarios.agent_settings("kernel", st) is None
    first = scenarios.agent_settings("qpagent-firsthop", st)
    assert (first["end_to_end"], first["liveness"].enabled) == (False, False)
    e2e = scenarios.agent_settings("qpagent", st)
    assert (e2e["end_to_end"], e2e["liveness"]) == (True, LivenessSettings())   # qpagent's default
    st.liveness = True
    assert scenarios.agent_settings("qpagent", st)["liveness"].enabled is True
    st.liveness = False
    assert scenarios.agent_settings("qpagent", st)["liveness"].enabled is False
    with pytest.raises(ValueError, match="unknown mode 'bgp'"):
        scenarios.agent_settings("bgp", st)


def record(mode="kernel", pattern="ring", delay=5.0, loss=0.0, failure=False, run=0,
           busbw_mbit=8.0, lost=None, wan=None, error=None, job_failed=False, cpu=0.5, util=0.9):
    sc = Scenario(mode, delay, loss, failure, pattern, run)
    per_iter = [{"duration_s": d} for d in (2.0, 1.0, 1.2)]
    return {"name": sc.name, "scenario": {**sc.__dict__}, "error": error, "job_failed": job_failed,
            "qps_in_error": [{"host": "a"}] if job_failed else [],
            "result": None if error else {"summary": {"median_busbw_Bps": busbw_mbit * 1e6 / 8,
                                                       "median_duration_s": 1.2, "all_verified": True},
                                          "per_iteration": per_iter},
            "wan_bytes": wan or {"w1": {"dc1->dc2": 300}, "w2": {"dc1->dc2": 100}},
            "time_lost_s": lost, "cpu_busy": cpu, "peak_wan_utilization": util,
            "timeline": {"bfd_down_s": 0.3, "agent_reaction_s": 0.05} if failure else None}


def test_runs_fold_into_a_median_with_the_lowest_and_highest_run():
    recs = [record(run=0, busbw_mbit=8.0), record(run=1, busbw_mbit=4.0), record(run=2, busbw_mbit=9.0),
            record(failure=True, run=0, lost=2.0), record(failure=True, run=1, lost=None, job_failed=True,
                                                          error="job failed"),
            record(mode="qpagent", run=0, busbw_mbit=16.0,
                   wan={"w1": {"dc1->dc2": 200}, "w2": {"dc1->dc2": 200}})]
    gs = summary.groups(recs)
    ok = gs[("kernel", "ring", 5.0, 0.0, False)]
    assert ok.busbw_mbit() == summary.Spread(8.0, 4.0, 9.0, 3)
    assert ok.busbw_mbit().text() == "8.0 [4.0-9.0]"
    assert ok.balance() == summary.Spread(1.5, 1.5, 1.5, 3)
    assert ok.time_lost_s() is None                     # no failure, no time lost
    assert ok.durations() == [1.0, 1.2] * 3             # the warm-up iteration left out
    cut = gs[("kernel", "ring", 5.0, 0.0, True)]
    assert cut.time_lost_s() == summary.Spread(2.0, 2.0, 2.0, 1)   # the failed job is not a time
    assert (cut.jobs_failed(), cut.qps_in_error()) == (1, 1)
    assert cut.timeline("bfd_down_s").text(".0f", 1000) == "300 [300-300]"
    assert gs[("qpagent", "ring", 5.0, 0.0, False)].balance().text(".2f") == "1.00"
    check = summary.machine_check(recs)
    assert check["cpu_busy"].median == 0.5 and check["peak_wan_utilization"].n == 4
    assert summary.Spread.of([None, None]) is None


def test_progress_line_estimates_the_time_left_from_runs_done():
    todo = [Scenario("kernel", 5, 0, f, "ring", r) for f in (False, True) for r in range(2)]
    p = runner.Progress(todo, done=3, total=7)
    assert p.eta_s() == 2 * 10.0 + 2 * 25.0              # guesses before any run ended
    line = p.ended(todo[0], record(busbw_mbit=8.0), 4.0)
    assert line == ("[4/7] kernel-ring-d5ms-l0pct-ok-r0: busbw 8.0 Mbit/s, lost 0.00 s, verified True "
                    "(4 s); about 1 min left")
    assert p.eta_s() == 4.0 + 2 * 25.0
    failed = p.ended(todo[2], record(failure=True, job_failed=True, error="x"), 9.0)
    assert "job failed, 1 QPs in error" in failed


def test_resume_reads_saved_runs_and_ignores_a_half_written_one(tmp_path):
    (tmp_path / "kernel-ring-d5ms-l0pct-ok-r0.json").write_text(json.dumps(record()))
    (tmp_path / "kernel-ring-d5ms-l0pct-ok-r1.json").write_text('{"name": "kern')
    assert list(runner.load_done(tmp_path)) == ["kernel-ring-d5ms-l0pct-ok-r0"]


def test_a_sweep_refuses_to_resume_over_runs_made_with_other_settings(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"size": 1}))
    with pytest.raises(ValueError, match="holds runs made with other settings"):
        runner.run([], Settings(), tmp_path, keep_lab=True)


def test_sweep_report_renders_every_section(tmp_path):
    recs = []
    for mode in scenarios.MODES:
        for pattern in scenarios.PATTERNS:
            for failure in (False, True):
                for run in range(3):
                    recs.append(record(mode, pattern, 5.0, 0.0, failure, run,
                                       busbw_mbit=4.0 + run + (8 if mode == "qpagent" else 0),
                                       lost=1.0 + run if failure else 0.0))
    rows = [{"pattern": p, "delay_ms": 5.0, "ideal_busbw_gbps": 0.019} for p in scenarios.PATTERNS]
    results = {"runs": recs, "headline": {"rows": rows}, "elapsed_s": 1800.0,
               "settings": {"size": 1 << 19, "iterations": 4, "fail_iterations": 6, "fail_at": 3,
                            "qps_per_conn": 4, "msg_size": 65536, "sport_policy": "qpn",
                            "wan_rate_mbit": 5, "wan_buffer_ms": 400,
                            "engine": {"mtu": 1024, "window": 64, "rto": None, "timeout_exp": 14,
                                       "retry_cnt": 7}}}
    md = sweep_report.write_sweep_report(results, tmp_path).read_text()
    assert "18 scenarios, 54 runs (3 per scenario" in md
    assert "| ring | 5 ms | 5.0 [4.0-6.0] | 5.0 [4.0-6.0] | 13.0 [12.0-14.0] | 19.0 |" in md
    assert "| ring | 5 | 0% | qpagent end-to-end + repair | 2.00 [1.00-3.00] | 300 [300-300] | 50 [50-50] |" in md
    assert "None: no QP ran out of retries in any run." in md
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + 54 and lines[0].startswith("name,mode,pattern,delay_ms")
    assert lines[1].startswith("kernel-ring-d5ms-l0pct-ok-r0,kernel,ring,5.0,0.0,False,0,,4.0,1.2,")
    for png in ("sweep-busbw-vs-model.png", "sweep-time-lost.png", "sweep-completion-times.png"):
        assert f"]({png})" in md and (tmp_path / png).stat().st_size > 1000


def test_balance_before_and_after_a_modes_first_cut():
    even = {"w1": {"dc1->dc2": 100}, "w2": {"dc1->dc2": 100}}
    skewed = {"w1": {"dc1->dc2": 300}, "w2": {"dc1->dc2": 100}}
    runs = [record("qpagent", run=0, wan=even), record("qpagent", run=1, wan=even),
            record("qpagent", failure=True, run=0, lost=1.0),
            record("qpagent", run=2, wan=skewed), record("qpagent", "ps", run=0, wan=skewed)]
    for t, r in enumerate(runs):
        r["t_start"] = 1000.0 + t
    before, after = summary.balance_before_and_after_cuts(runs)["qpagent"]
    assert (before.median, before.n) == (1.0, 2)
    assert (after.median, after.n) == (1.5, 1)          # the parameter server left out
