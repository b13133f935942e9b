"""Run experiments over the lab and write results JSON and a markdown report.

    python -m qplab.experiments --quick --out results/quick
    python -m qplab.experiments --full --out results/full --report lab/report

The lab is the running one or one brought up here (and taken down at the
end). Scenarios run one agent mode at a time: kernel hashing with no agent,
then the agents started in each qpagent mode. Every run is saved as it ends
(DIR/runs/NAME.json); a sweep started again skips the runs already saved,
so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
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
from .scenarios import (SWEEP_FAIL_ITERATIONS, SWEEP_ITERATIONS, SWEEP_PS_SIZE_MB, SWEEP_SIZE_MB,
                        Scenario, Settings, agent_settings, full_scenarios, quick_scenarios)
from .sweep_report import write_sweep_report


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def open_lab(mgmt: str | None = None, topology: str | None = None) -> Lab:
    """The running lab, or a new one without agents, of `topology` (a shipped
    name or a file; None: the default) (owned: it is taken down at the end)."""
    ctx = LabContext.from_env()
    lab = Lab.running(ctx)
    if lab is not None:
        log(f"using the running lab '{lab.state.name}' (prefix {ctx.prefix})")
        return lab
    log("bringing the lab up without agents")
    topo = load_topology(topology)
    if mgmt:
        topo = topo.with_management(mgmt)
    return Lab.up(topo, ctx, progress=lambda m: log("  " + m), start_agents=False)


class AgentModes:
    """Puts the lab's agents in the mode a scenario needs: none for kernel
    hashing, else started with that mode's settings (restarted on a change)."""

    def __init__(self, lab: Lab, st: Settings):
        self.lab, self.st = lab, st
        self.current: str | None = None      # unknown until set here
        self.whole: dict = {}                # live paths per leaf and VTEP, nothing failed

    def enter(self, mode: str) -> bool:
        """True when the lab runs in `mode`."""
        if mode == self.current:
            return True
        if self.lab.agents_running():
            log("stopping the agents")
            self.lab.stop_agents(progress=lambda m: log("  " + m))
        self.current = None
        settings = agent_settings(mode, self.st)
        if settings is not None:
            log(f"starting the agents ({mode})")
            res = self.lab.start_agents(progress=lambda m: log("  " + m), **settings)
            ok = sum(1 for a in res.values() if a.ok)
            if not (ok == len(res) and ok > 0):
                return False
            self._wait_placed()
            self.whole = self.live_paths()
        else:
            self.whole = {}
        self.current = mode
        return True

    def live_paths(self) -> dict:
        """(leaf, remote VTEP) -> live paths, as each agent's status has them."""
        out = {}
        for leaf in self.lab.leaves():
            status = observe.agent_status(self.lab.agent_socket(leaf)) or {}
            for vtep in status.get("vteps") or []:
                out[(leaf, vtep["address"])] = sum(1 for p in vtep.get("paths", []) if p.get("alive"))
        return out

    def wait_whole(self, timeout: float = 30.0) -> float | None:
        """After a cut is restored and routing is back: seconds until every
        agent has its paths back (end to end, a TTL round finds them), so the
        next run starts from the placement the mode keeps with nothing
        failed; None when they did not come back in time."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            now = self.live_paths()
            if all(now.get(k, 0) >= n for k, n in self.whole.items()):
                return round(time.monotonic() - t0, 2)
            time.sleep(0.2)
        log("  warning: the agents did not find every path again in time")
        return None

    def _wait_placed(self, timeout: float = 30.0) -> None:
        """Until every leaf's agent knows a path to every remote VTEP (end-to-end
        paths come from a TTL probe round, seconds after the start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [observe.agent_status(self.lab.agent_socket(leaf)) for leaf in self.lab.leaves()]
            if all(s and s.get("vteps") and all(v.get("paths") for v in s["vteps"]) for s in statuses):
                return
            time.sleep(0.5)
        log("  warning: not every agent reported paths to every VTEP in time")


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

def link_rates(lab: Lab, rate_mbit: float) -> dict[str, float]:
    """Each WAN link's rate for a run: the topology's capacity ratios kept,
    its slowest link at `rate_mbit` (all at it when the links are equal; an
    unlimited link counts as the fastest)."""
    given = {n: w.props.rate_mbit for n, w in lab.wan_links().items()}
    limited = [r for r in given.values() if r > 0]
    if not limited:
        return {n: rate_mbit for n in given}
    slowest, fastest = min(limited), max(limited)
    return {n: round(rate_mbit * (r if r > 0 else fastest) / slowest, 3) for n, r in given.items()}


def apply_wan(lab: Lab, sc: Scenario, st: Settings) -> dict[str, float]:
    """The scenario's WAN: its delay (None: each link's own, as the topology
    has it), its loss, and the rates of link_rates; returns the rates."""
    rates = link_rates(lab, st.wan_rate_mbit)
    for name, rate in rates.items():
        settings = {"loss_pct": sc.loss_pct, "rate_mbit": rate}
        if sc.delay_ms is not None:
            settings["delay_ms"] = sc.delay_ms
        lab.set_wan(name, buffer_ms=st.wan_buffer_ms, **settings)
    return rates


def run_scenario(lab: Lab, sc: Scenario, st: Settings, baseline_routes: dict,
                 baselines: dict) -> dict:
    rates = apply_wan(lab, sc, st)
    hosts = engine_hosts(lab.hosts())
    wans = lab.wan_links()
    iters = st.fail_iterations if sc.failure else st.iterations
    counters = observe.WanCounters(wans.values()).start()
    sniffer = observe.QpSniffer(wans.values()).start()
    cpu = observe.CpuMeter().start()
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
                    sport_policy=st.sport_policy, seed=st.seed + sc.run) as eng:
            result = run_collective(eng, sc.pattern, st.size_for(sc.pattern), iters, msg_size=st.msg_size,
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
        cpu_busy = cpu.stop()
        transitions = bfd.stop() if bfd else []     # before the restore: its last look sees the cut
        if failure:
            lab.restore(failure["link"])
            failure["t_restore"] = time.time()
    statuses = {}
    if sc.mode != "kernel":
        for leaf in lab.leaves():
            statuses[leaf] = observe.agent_status(lab.agent_socket(leaf))
    rec = {"scenario": asdict(sc), "name": sc.name, "error": error, "t_start": t_start,
           "job_failed": bool(qps_in_error), "qps_in_error": qps_in_error,
           "rank_dcs": {h.name: h.dc for h in hosts},
           "result": result, "wan_samples": samples,
           "wan_bytes": observe.totals(samples),
           "qp_links": qp_links(seen, result, hosts),
           "failure": failure or None, "bfd": transitions, "seed": st.seed + sc.run,
           "cpu_busy": cpu_busy, "elapsed_s": round(time.time() - t_start, 2), "wan_rates": rates,
           "peak_wan_utilization": observe.peak_utilization(samples, st.wan_rate_mbit),
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

MAX_LAB_FAILURES = 3        # runs in a row the lab fails before a sweep stops
PANELS_RUN = "qpagent-ring-d5ms-l0pct-fail-r0"   # the run whose dashboard panels the report shows
PANEL_SCRAPE_S = 5.0        # the slowest scrape interval of the lab's Prometheus


class Progress:
    """A line per run: what it measured, how far the sweep is, the time left
    (from the mean time of the runs done so far, failure runs apart)."""

    GUESS_S = {False: 10.0, True: 25.0}     # before any run of a kind has ended

    def __init__(self, todo: list[Scenario], done: int, total: int):
        self.todo, self.done, self.total = list(todo), done, total
        self.took: dict[bool, list[float]] = {False: [], True: []}

    def eta_s(self) -> float:
        mean = {k: statistics.mean(v) if v else self.GUESS_S[k] for k, v in self.took.items()}
        return sum(mean[sc.failure] for sc in self.todo)

    def ended(self, sc: Scenario, rec: dict, took_s: float) -> str:
        self.todo.remove(sc)
        self.done += 1
        self.took[sc.failure].append(took_s)
        res = rec.get("result")
        if rec.get("job_failed"):
            what = f"job failed, {len(rec['qps_in_error'])} QPs in error"
        elif res and res["summary"]["median_duration_s"] is not None:
            what = (f"busbw {res['summary']['median_busbw_Bps'] * 8 / 1e6:.1f} Mbit/s, "
                    f"lost {rec.get('time_lost_s') or 0:.2f} s, verified {res['summary']['all_verified']}")
        else:
            what = f"failed: {rec.get('error')}"
        eta = self.eta_s()
        return (f"[{self.done}/{self.total}] {sc.name}: {what} ({took_s:.0f} s); "
                f"about {eta / 60:.0f} min left")


class StopRequest:
    """Ctrl-C or SIGTERM: finish (or abandon) the run under way, save nothing
    it left half-measured, take the lab down, and exit; the same command
    resumes. (Ctrl-C also reaches the engine's workers, so a run under way
    fails at once rather than being waited for.)"""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self) -> "StopRequest":
        self._pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            # a child forked without exec inherited this handler: die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.requested:          # a second one: stop now
            raise KeyboardInterrupt
        self.requested = True
        log(f"{signal.Signals(signum).name}: stopping after the run under way (again to stop at "
            "once); the same command resumes")


def load_done(runs_dir: Path) -> dict[str, dict]:
    """The runs an earlier, interrupted sweep saved (by name)."""
    done = {}
    for f in sorted(runs_dir.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue            # a run cut off while being written: run it again
        done[rec["name"]] = rec
    return done


def measure(lab: Lab, todo: list[Scenario], st: Settings, runs_dir: Path, done: dict,
            progress: Progress, stop: StopRequest, panels_dir: Path | None = None) -> None:
    """Run each scenario in turn, saving each run as it ends; with
    `panels_dir`, a Prometheus scrapes the lab and the dashboard's key panels
    of one run (PANELS_RUN) are drawn there from it."""
    prometheus = None
    if panels_dir is not None:
        log("starting Prometheus")
        prometheus = lab.start_prometheus(progress=lambda m: log("  " + m))
    log("waiting for the lab's routes to settle")
    baseline_routes = settled_routes(lab)
    modes = AgentModes(lab, st)
    baselines: dict = {}
    lab_failures = 0
    for sc in list(todo):
        if stop.requested:
            return
        if not modes.enter(sc.mode):
            log(f"skip {sc.name}: the agents could not be started")
            progress.todo.remove(sc)
            continue
        started = time.monotonic()
        try:
            rec = run_scenario(lab, sc, st, baseline_routes, baselines)
        except (RuntimeError, OSError) as e:
            # The lab, not the workload, failed (a delay line that did not
            # answer, routes that did not come back): an hour-long sweep goes
            # on, and a resume runs this one again; a lab that keeps failing stops it.
            lab_failures += 1
            progress.todo.remove(sc)
            log(f"  {sc.name}: the lab failed this run ({e}); not saved")
            if lab_failures >= MAX_LAB_FAILURES:
                raise RuntimeError(f"{lab_failures} runs in a row failed in the lab; last: {e}") from e
            continue
        lab_failures = 0
        if sc.failure and modes.whole:
            rec["paths_back_s"] = modes.wait_whole()
        if stop.requested and rec.get("error"):
            log(f"  {sc.name} was interrupted: not saved")
            return
        # Saved as it ends (written whole, then renamed): a sweep started
        # again skips it.
        tmp = runs_dir / f".{sc.name}.json.tmp"
        tmp.write_text(json.dumps(rec, default=str))
        tmp.rename(runs_dir / f"{sc.name}.json")
        done[sc.name] = rec
        log(progress.ended(sc, rec, time.monotonic() - started))
        if prometheus and sc.name == PANELS_RUN:
            draw_panels(prometheus, rec, panels_dir)


def draw_panels(prometheus: str, rec: dict, out: Path) -> None:
    """The dashboard's key panels over one run, from the lab's Prometheus,
    once it has scraped the run's end."""
    t0, t1 = rec["t_start"] - 5, rec["t_start"] + rec["elapsed_s"] + 5
    while time.time() < t1 + 2 * PANEL_SCRAPE_S:     # the scrapes that cover the run's end
        time.sleep(0.5)
    try:
        drawn = draw_key_panels(prometheus, t0, t1, out)
    except (OSError, RuntimeError, ValueError) as e:
        log(f"  the dashboard's panels could not be drawn: {e}")
        return
    (out / "panels.json").write_text(json.dumps({"run": rec["name"], "t0": t0, "t1": t1, **drawn},
                                                indent=1))
    log(f"  drew the dashboard's panels of {rec['name']} from Prometheus")


def draw_key_panels(prometheus: str, t0: float, t1: float, out: Path) -> dict:
    """The key panels that have data over [t0, t1] as PNGs in `out`, and the
    titles of those that have none (path RTT, when no path is probed). Series
    that stay at zero are left out: sixteen flat lines hide the four that move."""
    from .panels import draw, fetch_panels
    series = {p: [x for x in s if any(v for _, v in x.points)]
              for p, s in fetch_panels(prometheus, t0, t1).items()}
    return {"files": [draw(p, s, t0, out / f"panel-{p.name}.png").name for p, s in series.items() if s],
            "empty": [p.title for p, s in series.items() if not s]}


def run(scenarios: list[Scenario], st: Settings, out: Path, keep_lab: bool,
        mgmt: str | None = None, report_dir: Path | None = None, sweep: bool = False,
        prometheus: bool = False, topology: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    t0 = time.time()
    settings = json.loads(json.dumps({**asdict(st), "engine": asdict(st.engine)}))
    saved = out / "settings.json"
    if saved.exists() and json.loads(saved.read_text()) != settings:
        raise ValueError(f"{out} holds runs made with other settings (see {saved}): "
                         "name another --out, or remove it to start over")
    saved.write_text(json.dumps(settings, indent=1))
    done = load_done(runs_dir)
    todo = [sc for sc in scenarios if sc.name not in done]
    if done:
        log(f"resuming: {len(scenarios) - len(todo)} of {len(scenarios)} runs already saved in {runs_dir}")
    progress = Progress(todo, len(scenarios) - len(todo), len(scenarios))
    lab = open_lab(mgmt, topology) if todo else None
    with StopRequest() as stop:
        try:
            if todo:
                measure(lab, todo, st, runs_dir, done, progress, stop,
                        panels_dir=(report_dir or out) if prometheus else None)
        finally:
            if lab is not None and lab.owned and not keep_lab:
                log("taking the lab down")
                lab.down(progress=lambda m: log("  " + m))
    if stop.requested:
        raise KeyboardInterrupt
    records = [done[sc.name] for sc in scenarios if sc.name in done]
    wans = len({link for r in records for link in r.get("wan_bytes", {})})
    net = model.Net(wan_links=wans or 1, wan_rate_bps=st.wan_rate_mbit * 1e6,
                    wan_delay_s=0.0, host_rate_bps=st.host_rate_bps,
                    qps_per_conn=st.qps_per_conn, window_pkts=st.engine.window, mtu=st.engine.mtu)
    results = {"settings": settings,
               "model": asdict(net), "elapsed_s": round(time.time() - t0, 1),
               "runs_total_s": round(sum(r.get("elapsed_s") or 0 for r in records), 1),
               "headline": headline(records, st, net), "runs": records}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if sweep:
        report = write_sweep_report(results, report_dir or out)
    else:
        report = write_report(results, report_dir or out)
    log(f"wrote {out / 'results.json'} and {report} in {results['elapsed_s']} s")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qplab.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="kernel vs qpagent x failure or not, ring (default)")
    g.add_argument("--full", action="store_true",
                   help="the whole sweep: 3 modes x 3 patterns x 3 delays x 2 losses x failure or not")
    ap.add_argument("--out", default="results/quick", help="output directory (runs, results.json)")
    ap.add_argument("--report", help="write report.md and its plots here (default: --out)")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario of the sweep (seeds)")
    ap.add_argument("--only", metavar="REGEX",
                    help="run only the sweep's scenarios whose name matches, e.g. 'ring-d5ms-l0pct'")
    ap.add_argument("--size-mb", type=float, default=None,
                    help="tensor size (MiB; default 2, or 0.5 for the sweep)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="iterations per run (default 6, or 3 for the sweep)")
    ap.add_argument("--qps", type=int, default=4, help="QPs per connection")
    ap.add_argument("--policy", choices=("qpn", "fixed"), default="qpn", help="inner UDP source port policy")
    ap.add_argument("--delay-ms", type=float, default=5.0,
                    help="WAN delay of the quick run (one way; a negative value keeps each "
                         "link's own delay, as the topology has it)")
    ap.add_argument("--topology", help="the lab to bring up: a shipped name (three-dc) or a file "
                                       "(default: the two-DC lab)")
    ap.add_argument("--wan-rate", type=float, default=5.0,
                    help="WAN link rate (Mbit/s); low enough that the WAN, not this machine's CPU, is the bottleneck")
    ap.add_argument("--liveness", choices=("on", "off", "default"),
                    help="path liveness of the end-to-end mode's agents: on, off, or "
                         "qpagent's own default (the default: off, see the README)")
    ap.add_argument("--prometheus", action="store_true",
                    help="run a Prometheus on the lab and draw the dashboard's key panels of "
                         f"{PANELS_RUN} from it into the report")
    ap.add_argument("--mgmt", help="management subnet for a lab this run brings up (default: the topology's)")
    ap.add_argument("--keep-lab", action="store_true", help="leave a lab this run brought up")
    ap.add_argument("--retry-preset", choices=sorted(RETRY_PRESETS), default=None,
                    help="RC retransmission of every QP: nccl (local ACK timeout 4.3 s, as "
                         "collective libraries set it; the quick run's default), wan (1.07 s: the "
                         "sweep's default, above the WAN's worst queueing plus a round trip) or "
                         "tight (67 ms); 7 retries each")
    args = ap.parse_args(argv)
    size_mb = args.size_mb if args.size_mb is not None else (SWEEP_SIZE_MB if args.full else 2.0)
    iterations = args.iterations if args.iterations is not None else (SWEEP_ITERATIONS if args.full else 6)
    if size_mb <= 0 or iterations < 1 or args.qps < 1 or args.wan_rate <= 0 or args.runs < 1:
        ap.error("sizes, iterations, runs, QPs and rates must be positive")
    st = Settings(size=int(size_mb * (1 << 20)), iterations=iterations,
                  fail_iterations=max(iterations, 5) if not args.full else SWEEP_FAIL_ITERATIONS,
                  qps_per_conn=args.qps, sport_policy=args.policy, wan_rate_mbit=args.wan_rate,
                  retry_preset=args.retry_preset or ("wan" if args.full else "nccl"),
                  pattern_sizes={"ps": int(SWEEP_PS_SIZE_MB * (1 << 20))}
                  if args.full and args.size_mb is None else {},
                  liveness={"on": True, "off": False}.get(args.liveness or "default"))
    scenarios = full_scenarios(args.runs) if args.full else \
        quick_scenarios(args.delay_ms if args.delay_ms >= 0 else None)
    if args.only:
        try:
            scenarios = [sc for sc in scenarios if re.search(args.only, sc.name)]
        except re.error as e:
            ap.error(f"--only: {e}")
        if not scenarios:
            ap.error(f"--only {args.only!r} matches no scenario")
    try:
        run(scenarios, st, Path(args.out), args.keep_lab, args.mgmt,
            Path(args.report) if args.report else None, sweep=args.full, prometheus=args.prometheus,
            topology=args.topology)
    except KeyboardInterrupt:
        sys.exit(f"interrupted: the runs saved in {args.out}/runs are kept; run the same command to resume")
    except (RuntimeError, OSError, ValueError) as e:     # a bad topology is a ValueError
        sys.exit(f"experiment failed: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
