"""The traffic engine and the experiment runner on the real two-DC lab (FRR,
VXLAN, WAN delay lines): an AllReduce across both DCs with every byte
verified; per-WAN-link QP counts and bytes for kernel hashing beside
qpagent; a WAN link blackholed mid-run, the collective still completes and
the report shows the gap."""
import os
import re

import pytest

from conftest import free_management_subnet, unique_ctx  # this directory's conftest, at collection

pytestmark = [pytest.mark.lab, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the lab")]

@pytest.fixture(scope="module")
def lab_ctx():
    """A lab of our own (prefix, run directory, management subnet), removed
    at the end whatever happens; the experiment finds it through the
    environment, as `qplab` commands would."""
    from qplab import lab
    from qplab.topology import load_topology
    ctx = unique_ctx()
    saved = {k: os.environ.get(k) for k in ("QPLAB_PREFIX", "QPLAB_RUN_DIR")}
    os.environ["QPLAB_PREFIX"], os.environ["QPLAB_RUN_DIR"] = ctx.prefix, str(ctx.run_dir)
    try:
        lab.up(load_topology().with_management(free_management_subnet()), ctx,
               progress=lambda m: None, start_agents=False)
        yield ctx
    finally:
        lab.down(ctx, progress=lambda m: None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def running_lab(lab_ctx):
    from qplab.api import Lab
    return Lab.running(lab_ctx)


def test_allreduce_across_both_dcs_every_byte_verified(running_lab):
    from qplab.experiments import observe
    from qplab.experiments.run import engine_hosts
    from qplab.experiments.runner import settled_routes
    from qplab.workloads.collective import run_collective
    from qplab.workloads.driver import Engine
    from qplab.workloads.worker import EngineConfig
    hosts = engine_hosts(running_lab.hosts())
    settled_routes(running_lab)
    counters = observe.WanCounters(running_lab.wan_links().values()).start()
    try:
        with Engine(hosts, EngineConfig(window=64, rto=0.25), qps_per_conn=4) as eng:
            res = run_collective(eng, "ring", 1 << 20, iterations=2)
    finally:
        samples = counters.stop()
    s = res["summary"]
    assert s["problems"] == [] and s["all_verified"]
    assert s["verified_bytes"] == 2 * res["schedule_bytes"]
    assert {h.name for h in hosts} == set(res["ranks"]) and {h.dc for h in hosts} == {"dc1", "dc2"}
    # The ring's two cross-DC hops went over the WAN: at least their payload
    # crossed the WAN boxes in each direction.
    dc = {h.name: h.dc for h in hosts}
    cross = {}
    from qplab.workloads.collective import build_schedule
    for step in build_schedule("ring", hosts, 1 << 20):
        for t in step:
            if dc[t.src] != dc[t.dst]:
                d = f"{dc[t.src]}->{dc[t.dst]}"
                cross[d] = cross.get(d, 0) + 2 * t.nbytes
    wan = observe.totals(samples)
    for d, nbytes in cross.items():
        assert sum(per.get(d, 0) for per in wan.values()) >= nbytes


@pytest.fixture(scope="module")
def experiment_out(lab_ctx, tmp_path_factory):
    from qplab.experiments import runner, scenarios
    out = tmp_path_factory.mktemp("experiment")
    st = scenarios.Settings(size=2 << 20, iterations=3, fail_iterations=5, fail_at=3)
    results = runner.run(scenarios.quick_scenarios(5.0), st, out, keep_lab=True)
    return results, out


def _run(results, name):
    runs = {r["name"]: r for r in results["runs"]}
    assert name in runs, f"{name} did not run; ran: {sorted(runs)}"
    return runs[name]


def test_wan_link_qps_and_bytes_side_by_side(experiment_out):
    results, out = experiment_out
    for mode in ("kernel", "qpagent"):
        r = _run(results, f"{mode}-ring-d5ms-l0pct-ok-r0")
        assert r["error"] is None and r["result"]["summary"]["all_verified"]
        # every cross-DC data flow of every QP was seen on one WAN link
        dcs = r["rank_dcs"]
        flows = [q for q in r["qp_links"] if dcs[q["from"]] != dcs[q["to"]]]
        assert len(flows) == 2 * 4, flows          # 2 WAN hops of the ring x 4 QPs
        assert all(q["main_link"] in r["wan_bytes"] for q in flows)
        for d in ("dc1->dc2", "dc2->dc1"):
            assert sum(per.get(d, 0) for per in r["wan_bytes"].values()) > 3 * (2 << 20)
    md = (out / "report.md").read_text()
    assert "| WAN link | direction | kernel QPs | kernel MiB | qpagent QPs | qpagent MiB |" in md
    rows = re.findall(r"^\| (b\d-b\d) \| (dc\d->dc\d) \| (\d+) \| ([\d.]+) \| (\d+) \| ([\d.]+) \|$",
                      md.split("**no failure**")[1].split("**with the failure")[0], re.M)
    assert len(rows) == 4 * 2                      # 4 WAN links x 2 directions
    for d in ("dc1->dc2", "dc2->dc1"):
        assert sum(int(r[2]) for r in rows if r[1] == d) == 4     # kernel: all 4 QPs placed
        assert sum(int(r[4]) for r in rows if r[1] == d) == 4     # qpagent: all 4 QPs placed
        # qpagent learnt every hop of its ports (TTL probes) and gave each of a
        # connection's 4 QPs its own WAN link; hashing leaves that to chance.
        assert sorted(int(r[4]) for r in rows if r[1] == d) == [1, 1, 1, 1], rows
    assert (out / "wan-load-ring-d5-l0.png").stat().st_size > 1000


def test_blackholed_wan_link_mid_run_collective_completes_and_report_shows_gap(experiment_out):
    results, out = experiment_out
    for mode in ("kernel", "qpagent"):
        r = _run(results, f"{mode}-ring-d5ms-l0pct-fail-r0")
        assert r["error"] is None and r["result"]["summary"]["all_verified"]
        link = r["failure"]["link"]
        t0, t1 = r["failure"]["t_blackhole"], r["failure"]["t_restore"]
        # the blackholed link carried nothing while it was cut (after BFD)
        from qplab.experiments import observe
        cut = [x for x in observe.rates(r["wan_samples"]) if t0 + 0.2 < x["t"] < t1]
        assert cut and all(sum(x[link].values()) == 0 for x in cut)
        # after the cut no QP is seen on the dead link any more
        assert not [q for q in r["qp_links"] if q["main_link_after"] == link]
        tl = r["timeline"]
        assert tl["link"] == link
        # BFD saw the cut (how fast: `make bench-lab`)
        assert tl["bfd_down_s"] is not None and tl["bfd_down_s"] > 0
        # QPs on the cut link stalled until BFD and rerouting moved them
        assert tl["stalled_qps"] > 0 and tl["qps_recovered_s"] > tl["bfd_down_s"]
    md = (out / "report.md").read_text()
    assert "## Failover timeline" in md
    assert re.search(r"^\| kernel-ring-d5ms-l0pct-fail-r0 \| b\d-b\d \| \d+ ms \|", md, re.M)
    assert re.search(r"^\| qpagent-ring-d5ms-l0pct-fail-r0 \| b\d-b\d \| \d+ ms \|", md, re.M)
    assert (out / "failover-timeline.png").stat().st_size > 1000
