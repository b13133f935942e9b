"""Run experiments over the lab and write results JSON and a markdown report.

    python -m qplab.experiments --quick --out results/quick
    python -m qplab.experiments --full --out results/full

The lab is the running one (used as it is) or one brought up here without
agents (and taken down at the end). The kernel-hashing scenarios run first,
with no agent; the agents are then started for the qpagent ones.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from ..api import Lab
from ..context import LabContext
from ..topology import load_topology
from ..workloads import model
from ..workloads.collective import run_collective, time_lost
from ..workloads.driver import Engine, EngineError, QpInError
from ..workloads.gbn import RETRY_PRESETS
from . import observe
from .analysis import agent_digest, failover_timeline, headline, qp_links
from .report import write_report
from .run import engine_hosts
from .scenarios import Scenario, Settings, full_scenarios, quick_scenarios


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def open_lab(mgmt: str | None = None) -> Lab:
    """The running lab, or a new one without agents (owned: `close_lab` takes it down)."""
    ctx = LabContext.from_env()
    lab = Lab.running(ctx)
    if lab is not None:
        log(f"using the running lab '{lab.state.name}' (prefix {ctx.prefix})")
        return lab
    log("bringing the lab up without agents")
    topo = load_topology()
    if mgmt:
        topo = topo.with_management(mgmt)
    return Lab.up(topo, ctx, progress=lambda m: log("  " + m), start_agents=False)


def start_agents(lab: Lab) -> bool:
    """True when every agent the lab asks for answers."""
    if not lab.state.agents:
        log("starting the agents")
    res = lab.start_agents(progress=lambda m: log("  " + m))
    ok = sum(1 for a in res.values() if a.ok)
    return ok == len(res) and ok > 0


def settled_routes(lab: Lab, timeout: float = 60.0) -> dict:
    """Routes on the borders once they stop changing (all WAN next hops in)."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        sig = lab.border_routes()
        if sig != last:
            last, stable_since = sig, time.monotonic()
        elif time.monotonic() - stable_since > 3.0 and any(sig.values()):
            return sig
        time.sleep(0.25)
    raise RuntimeError("the lab's routes did not settle")


def routes_back(lab: Lab, baseline: dict, timeout: float = 60.0) -> float:
    """Seconds until the border routes equal `baseline` again."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if lab.border_routes() == baseline:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise RuntimeError(f"routes did not return to their baseline within {timeout:.0f} s")


# ---- one scenario ---------------------------------------------------------------

def run_scenario(lab: Lab, sc: Scenario, st: Settings, baseline_routes: dict,
                 baselines: dict) -> dict:
    lab.set_wan(delay_ms=sc.delay_ms, loss_pct=sc.loss_pct, rate_mbit=st.wan_rate_mbit,
                buffer_ms=st.wan_buffer_ms)
    hosts = engine_hosts(lab.hosts())
    wans = lab.wan_links()
    iters = st.fail_iterations if sc.failure else st.iterations
    counters = observe.WanCounters(wans.values()).start()
    sniffer = observe.QpSniffer(wans.values()).start()
    failure: dict = {}
    bfd = None
    timers: list[threading.Timer] = []

    def on_iteration(i, rec):
        if not sc.failure or i != st.fail_at - 1:
            return
        # Blackhole the busiest WAN link half-way into the next iteration.
        loads = observe.totals(counters.samples + [counters.read()])
        target = max(loads, key=lambda n: sum(loads[n].values()))
        base = baselines.get(sc.twin().name) or rec["duration_s"]
        w = wans[target]
        nonlocal bfd
        bfd = observe.BfdWatch([lab.ns(w.a), lab.ns(w.b)], {w.a_address, w.b_address}).start()

        def cut():
            failure.update(link=target, t_blackhole=time.time())
            lab.cut(target)
            # Where QPs went: counted from 1 s after the cut (BFD takes ~0.3 s),
            # so frames still entering the dead link just after it do not count.
            later = threading.Timer(1.0, sniffer.mark)
            later.start()
            timers.append(later)
            log(f"  blackholed {target}")
        t = threading.Timer(0.1 + base / 2, cut)
        t.start()
        timers.append(t)

    error = None
    result = None
    qps_in_error: list[dict] = []
    t_start = time.time()
    try:
        with Engine(hosts, st.engine, qps_per_conn=st.qps_per_conn,
                    sport_policy=st.sport_policy, seed=st.seed) as eng:
            result = run_collective(eng, sc.pattern, st.size, iters, msg_size=st.msg_size,
                                    on_iteration=on_iteration, timeout=120)
    except QpInError as e:
        # The job failed as an RC job does; what ran before the error is kept.
        error, result, qps_in_error = str(e), e.result, e.qps
        log(f"  job failed: {len(qps_in_error)} QPs in error")
    except EngineError as e:
        error = str(e)
        log(f"  run failed: {error}")
    finally:
        for t in timers:
            t.join()
        samples = counters.stop()
        seen = sniffer.stop()
        if failure:
            lab.restore(failure["link"])
            failure["t_restore"] = time.time()
        transitions = bfd.stop() if bfd else []
    statuses = {}
    if sc.mode == "qpagent":
        for leaf in lab.leaves():
            statuses[leaf] = observe.agent_status(lab.agent_socket(leaf))
    rec = {"scenario": asdict(sc), "name": sc.name, "error": error, "t_start": t_start,
           "job_failed": bool(qps_in_error), "qps_in_error": qps_in_error,
           "rank_dcs": {h.name: h.dc for h in hosts},
           "result": result, "wan_samples": samples,
           "wan_bytes": observe.totals(samples),
           "qp_links": qp_links(seen, result, hosts),
           "failure": failure or None, "bfd": transitions,
           "agents": {k: agent_digest(v, failure) for k, v in statuses.items()}}
    if result and result["per_iteration"]:
        durs = [r["duration_s"] for r in result["per_iteration"]]
        if sc.failure:
            # Baseline: this run's own iterations before the cut (the first
            # one is a warm-up), so machine noise between runs cancels out.
            pre = durs[1:st.fail_at] or durs[:st.fail_at]
            rec["baseline_s"] = statistics.median(pre)
            # A failed job lost the rest of the run, not a measurable time.
            rec["time_lost_s"] = None if qps_in_error else time_lost(durs[st.fail_at:], rec["baseline_s"])
        else:
            rec["baseline_s"] = baselines[sc.name] = statistics.median(durs)
            rec["time_lost_s"] = 0.0
        rec["timeline"] = failover_timeline(rec)
    if failure:
        rec["reconverge_s"] = routes_back(lab, baseline_routes)
    return rec


# ---- a sweep ------------------------------------------------------------------------

def run(scenarios: list[Scenario], st: Settings, out: Path, keep_lab: bool,
        mgmt: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lab = open_lab(mgmt)
    records: list[dict] = []
    try:
        log("waiting for the lab's routes to settle")
        baseline_routes = settled_routes(lab)
        baselines: dict = {}
        ordered = sorted(scenarios, key=lambda s: (s.mode != "kernel", s.failure))
        kernel_ok = not lab.agents_running()
        for sc in ordered:
            if sc.mode == "kernel" and not kernel_ok:
                log(f"skip {sc.name}: agents are running in this lab (kernel hashing needs none)")
                continue
            if sc.mode == "qpagent" and not start_agents(lab):
                log(f"skip {sc.name}: no agent could be started")
                continue
            log(f"run {sc.name}")
            rec = run_scenario(lab, sc, st, baseline_routes, baselines)
            records.append(rec)
            # A long sweep keeps what it has measured if it is stopped.
            (out / "runs-so-far.json").write_text(json.dumps(records, indent=1, default=str))
            res = rec.get("result")
            if res and res["summary"]["median_duration_s"] is not None:
                log(f"  median {res['summary']['median_duration_s']:.3f} s/iter, busbw "
                    f"{res['summary']['median_busbw_Bps'] * 8 / 1e6:.1f} Mbit/s, "
                    f"verified {res['summary']['all_verified']}, lost {rec.get('time_lost_s') or 0:.2f} s")
    finally:
        if lab.owned and not keep_lab:
            log("taking the lab down")
            lab.down(progress=lambda m: log("  " + m))
    wans = len(lab.wan_links())
    net = model.Net(wan_links=wans or 1, wan_rate_bps=st.wan_rate_mbit * 1e6,
                    wan_delay_s=0.0, host_rate_bps=st.host_rate_bps,
                    qps_per_conn=st.qps_per_conn, window_pkts=st.engine.window, mtu=st.engine.mtu)
    results = {"settings": {**asdict(st), "engine": asdict(st.engine)},
               "model": asdict(net), "elapsed_s": round(time.time() - t0, 1),
               "headline": headline(records, st, net), "runs": records}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "runs-so-far.json").unlink(missing_ok=True)
    write_report(results, out)
    log(f"wrote {out / 'results.json'} and {out / 'report.md'} in {results['elapsed_s']} s")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qplab.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="kernel vs qpagent x failure or not, ring (default)")
    g.add_argument("--full", action="store_true", help="the whole sweep (long)")
    ap.add_argument("--out", default="results/quick", help="output directory")
    ap.add_argument("--size-mb", type=float, default=2, help="tensor size (MiB)")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--qps", type=int, default=4, help="QPs per connection")
    ap.add_argument("--policy", choices=("qpn", "fixed"), default="qpn", help="inner UDP source port policy")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="WAN delay of the quick run (one way)")
    ap.add_argument("--wan-rate", type=float, default=5.0,
                    help="WAN link rate (Mbit/s); low enough that the WAN, not this machine's CPU, is the bottleneck")
    ap.add_argument("--mgmt", help="management subnet for a lab this run brings up (default: the topology's)")
    ap.add_argument("--keep-lab", action="store_true", help="leave a lab this run brought up")
    ap.add_argument("--retry-preset", choices=sorted(RETRY_PRESETS), default="nccl",
                    help="RC retransmission of every QP: nccl (local ACK timeout 4.3 s, as "
                         "collective libraries set it) or tight (67 ms); 7 retries either way")
    args = ap.parse_args(argv)
    if args.size_mb <= 0 or args.iterations < 1 or args.qps < 1 or args.wan_rate <= 0:
        ap.error("sizes, iterations, QPs and rates must be positive")
    st = Settings(size=int(args.size_mb * (1 << 20)), iterations=args.iterations,
                  fail_iterations=max(args.iterations, 5), qps_per_conn=args.qps,
                  sport_policy=args.policy, wan_rate_mbit=args.wan_rate,
                  retry_preset=args.retry_preset)
    scenarios = full_scenarios() if args.full else quick_scenarios(args.delay_ms)
    try:
        run(scenarios, st, Path(args.out), args.keep_lab, args.mgmt)
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except (RuntimeError, OSError, ValueError) as e:
        sys.exit(f"experiment failed: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
