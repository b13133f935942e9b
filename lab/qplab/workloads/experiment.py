"""Experiment runner: sweeps scenarios over the lab and writes results JSON
and a markdown report with plots.

    python -m qplab.workloads.experiment --quick --out results/quick
    python -m qplab.workloads.experiment --full --out results/full

Scenarios: {kernel hashing, qpagent} x WAN delay x loss x {no failure, the
busiest WAN link blackholed mid-run} x {ring, hierarchical, ps}. "kernel"
runs with no agent attached, "qpagent" with the agents running. The lab is
brought up without agents (or a running one without agents is used), the
kernel scenarios run, then the agents are started for the qpagent ones.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import model, observe
from .collective import run_collective, time_lost
from .driver import Engine, EngineError, Host
from .worker import EngineConfig


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
    engine: EngineConfig = None
    host_rate_bps: float = 1.0e9   # the engine's own rate, for the model
    seed: int = 7

    def __post_init__(self):
        if self.engine is None:
            self.engine = EngineConfig(mtu=1024, window=64, rto=0.25)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- the lab ------------------------------------------------------------------

class LabHandle:
    """The lab the experiment runs on: brought up here (and taken down at the
    end) or found running."""

    def __init__(self, keep: bool, mgmt: str | None = None):
        from qplab import lab
        from qplab.context import LabContext
        from qplab.topology import load_topology
        self.lab = lab
        self.ctx = LabContext.from_env()
        self.keep = keep
        self.owned = False
        self.topo = load_topology()
        state = self.ctx.read_state()
        from qplab import netns
        if state and netns.list_namespaces(self.ctx.prefix):
            log(f"using the running lab '{state.get('name')}' (prefix {self.ctx.prefix})")
            if state.get("management"):
                self.topo = self.topo.with_management(state["management"])
        else:
            log("bringing the lab up without agents")
            if mgmt:
                self.topo = self.topo.with_management(mgmt)
            lab.up(self.topo, self.ctx, progress=lambda m: log("  " + m), start_agents=False)
            self.owned = True
            state = self.ctx.read_state()
        self.state = state

    @property
    def agents_running(self) -> bool:
        st = self.ctx.read_state() or {}
        return any(a.get("ok") for a in (st.get("agents") or {}).values())

    def start_agents(self, timeout: float = 120.0) -> bool:
        """Start the agents once; give slow starts (BCC compiles on a busy
        machine) time to open their control sockets."""
        from qplab import agents
        from qplab.plan import build_plan
        if self.agents_running:
            return True
        if getattr(self, "_agents_tried", False):
            return False
        self._agents_tried = True
        log("starting the agents")
        res = agents.start_all(build_plan(self.topo), self.ctx, lambda m: log("  " + m))
        deadline = time.monotonic() + timeout
        late = [n for n, a in res.items() if not a.get("ok") and "no control socket" in str(a.get("error"))]
        while late and time.monotonic() < deadline:
            for n in list(late):
                if Path(res[n]["socket"]).exists():
                    res[n].update(ok=True, error=None)
                    late.remove(n)
            time.sleep(0.5)
        st = self.ctx.read_state()
        st["agents"] = res
        self.ctx.write_state(st)
        self.state = st
        ok = sum(1 for a in res.values() if a.get("ok"))
        log(f"  agents answering: {ok}/{len(res)}")
        return ok == len(res) and ok > 0

    def hosts(self) -> list[Host]:
        return [Host(n, v["address"].split("/")[0], v["ns"], v["dc"])
                for n, v in self.state["nodes"].items() if v["role"] == "host"]

    def leaves(self) -> list[str]:
        return [n for n, v in self.state["nodes"].items() if v["role"] == "leaf"]

    def set_wan(self, delay_ms: float, loss_pct: float, rate_mbit: float, buffer_ms: float) -> None:
        from qplab import netns, wan
        for w in self.state["wans"].values():
            wan.apply(w, self.ctx, {"delay_ms": delay_ms, "loss_pct": loss_pct})
            burst = max(int(rate_mbit * 1e6 / 8 / 1000), 20_000)
            for node, dev in ((w["a"], w["a_if"]), (w["b"], w["b_if"])):
                netns.run(["tc", "-n", self.ctx.ns(node), "qdisc", "replace", "dev", dev, "root",
                           "tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst),
                           "latency", f"{buffer_ms:g}ms"])

    def blackhole(self, wan_name: str, on: bool) -> None:
        from qplab import wan
        wan.set_blackhole(self.state["wans"][wan_name], on)

    def border_namespaces(self, wan_name: str) -> tuple[list[str], set[str]]:
        w = self.state["wans"][wan_name]
        return [self.ctx.ns(w["a"]), self.ctx.ns(w["b"])], {w["a_address"], w["b_address"]}

    def route_signature(self) -> dict:
        """Next hops per route on the border routers: equal to the baseline
        once BGP has reconverged after a failure."""
        from qplab import netns
        sig = {}
        for n, v in self.state["nodes"].items():
            if v["role"] != "border":
                continue
            res = netns.run(["ip", "-n", v["ns"], "-j", "route", "show", "proto", "bgp"], check=False)
            try:
                routes = json.loads(res.stdout or "[]")
            except ValueError:
                routes = []
            sig[n] = sorted((r.get("dst"), len(r.get("nexthops", [])) or 1) for r in routes)
        return sig

    def wait_converged(self, baseline: dict, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.route_signature() == baseline:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"routes did not return to their baseline within {timeout:.0f} s")

    def close(self) -> None:
        if self.owned and not self.keep:
            log("taking the lab down")
            self.lab.down(self.ctx, progress=lambda m: log("  " + m))


# ---- one scenario ---------------------------------------------------------------

def run_scenario(labh: LabHandle, sc: Scenario, st: Settings, baseline_routes: dict,
                 baselines: dict) -> dict:
    labh.set_wan(sc.delay_ms, sc.loss_pct, st.wan_rate_mbit, st.wan_buffer_ms)
    hosts = labh.hosts()
    iters = st.fail_iterations if sc.failure else st.iterations
    counters = observe.WanCounters(labh.state["wans"], labh.state["nodes"]).start()
    sniffer = observe.QpSniffer(labh.state["wans"]).start()
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
        nss, peers = labh.border_namespaces(target)
        nonlocal bfd
        bfd = observe.BfdWatch(nss, peers).start()

        def cut():
            failure.update(link=target, t_blackhole=time.time())
            labh.blackhole(target, True)
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
    t_start = time.time()
    try:
        with Engine(hosts, st.engine, qps_per_conn=st.qps_per_conn,
                    sport_policy=st.sport_policy, seed=st.seed) as eng:
            result = run_collective(eng, sc.pattern, st.size, iters, msg_size=st.msg_size,
                                    on_iteration=on_iteration, timeout=120)
    except EngineError as e:
        error = str(e)
        log(f"  run failed: {error}")
    finally:
        for t in timers:
            t.join()
        samples = counters.stop()
        seen = sniffer.stop()
        if failure:
            time.sleep(0.2)
            labh.blackhole(failure["link"], False)
            failure["t_restore"] = time.time()
        transitions = bfd.stop() if bfd else []
    statuses = {}
    if sc.mode == "qpagent":
        for leaf in labh.leaves():
            statuses[leaf] = observe.agent_status(str(labh.ctx.agent_socket(leaf)))
    rec = {"scenario": asdict(sc), "name": sc.name, "error": error, "t_start": t_start,
           "rank_dcs": {h.name: h.dc for h in hosts},
           "result": result, "wan_samples": samples,
           "wan_bytes": observe.totals(samples),
           "qp_links": qp_links(seen, result, hosts),
           "failure": failure or None, "bfd": transitions,
           "agents": {k: _agent_digest(v, failure) for k, v in statuses.items()}}
    if result:
        durs = [r["duration_s"] for r in result["per_iteration"]]
        if sc.failure:
            # Baseline: this run's own iterations before the cut (the first
            # one is a warm-up), so machine noise between runs cancels out.
            pre = durs[1:st.fail_at] or durs[:st.fail_at]
            rec["baseline_s"] = statistics.median(pre)
            rec["time_lost_s"] = time_lost(durs[st.fail_at:], rec["baseline_s"])
        else:
            rec["baseline_s"] = baselines[sc.name] = statistics.median(durs)
            rec["time_lost_s"] = 0.0
        rec["timeline"] = failover_timeline(rec)
    if failure:
        rec["reconverge_s"] = labh.wait_converged(baseline_routes)
    return rec


def qp_links(seen: dict, result: dict | None, hosts: list[Host]) -> list[dict]:
    """Which WAN link(s) each QP's data crossed, per direction that carried
    data, from the sniffer's sample (its ACKs may take another way back):
    main_link before a failure, main_link_after after it (None: no failure
    or not seen again)."""
    if not result:
        return []
    ip = {h.name: h.ip for h in hosts}
    out = []
    for q in result["qps"]:
        for frm, to, dqpn, nbytes in ((q["src"], q["dst"], q["rqpn"], q["bytes_src_to_dst"]),
                                      (q["dst"], q["src"], q["lqpn"], q["bytes_dst_to_src"])):
            if not nbytes:
                continue
            phases: list[dict] = [{}, {}]
            for (phase, link, src, dst, d), (pkts, first, last) in seen.items():
                if (src, dst, d) == (ip[frm], ip[to], dqpn):
                    phases[phase][link] = {"packets": pkts, "first": first, "last": last}
            if not phases[0] and not phases[1]:
                continue
            main = lambda links: max(links, key=lambda l: links[l]["packets"]) if links else None  # noqa: E731
            out.append({"from": frm, "to": to, "dqpn": dqpn, "sport": q["sport"],
                        "index": q["index"], "bytes": nbytes,
                        "links": phases[0], "links_after": phases[1],
                        "main_link": main(phases[0]) or main(phases[1]),
                        "main_link_after": main(phases[1])})
    return out


def _agent_digest(status: dict | None, failure: dict) -> dict | None:
    if not status:
        return None
    events = status.get("events") or []
    t0 = (failure or {}).get("t_blackhole")
    return {"qp_total": status.get("qp_total"), "imbalance": status.get("imbalance"),
            "reaction_ms": status.get("reaction_ms"), "replacements": status.get("replacements"),
            "events_after_failure": [e for e in events if t0 and e.get("time", 0) >= t0 - 0.5],
            "qps": status.get("qps")}


def failover_timeline(rec: dict) -> dict | None:
    """Blackhole -> BFD down -> agent re-placement -> traffic recovered,
    in seconds after the blackhole."""
    f = rec.get("failure")
    if not f or "t_blackhole" not in f:
        return None
    t0 = f["t_blackhole"]
    downs = [t["t"] for t in rec["bfd"] if t["to"] == "down" and t["t"] >= t0]
    moves = [e["time"] for a in rec["agents"].values() if a
             for e in a["events_after_failure"] if e.get("kind") == "reaction" and e["time"] >= t0]
    # Traffic recovered: the WAN carries again at least half its pre-failure rate.
    rs = observe.rates(rec["wan_samples"])
    total = [(r["t"], sum(sum(v.values()) for k, v in r.items() if k != "t")) for r in rs]
    before = [v for t, v in total if t0 - 1.0 <= t < t0]
    ref = statistics.median(before) if before else 0.0
    recovered = None
    dip = False
    for t, v in total:
        if t <= t0:
            continue
        if v < 0.5 * ref:
            dip = True
        elif dip:
            recovered = t
            break
    # From the engine: the last QP stall that overlapped the cut ends when
    # every QP is moving again.
    res = rec.get("result") or {}
    off = res.get("clock_offset", 0.0)
    stall_ends = [it["t_start"] + s["to"] + off
                  for it in res.get("per_iteration", []) for s in it["stalls"]
                  if it["t_start"] + s["to"] + off >= t0]
    rel = lambda t: None if t is None else round(t - t0, 4)   # noqa: E731
    return {"link": f["link"], "bfd_down_s": rel(min(downs) if downs else None),
            "agent_reaction_s": rel(min(moves) if moves else None),
            "wan_rate_recovered_s": rel(recovered),
            "qps_recovered_s": rel(max(stall_ends) if stall_ends else None),
            "stalled_qps": len(stall_ends),
            "restored_s": rel(f.get("t_restore"))}


# ---- headline figures --------------------------------------------------------------

def busiest_ratio(wan_bytes: dict) -> dict:
    """Per direction, the busiest WAN link's bytes over the mean of all links."""
    out = {}
    dirs = {d for per in wan_bytes.values() for d in per}
    for d in sorted(dirs):
        vals = [per.get(d, 0) for per in wan_bytes.values()]
        mean = sum(vals) / len(vals) if vals else 0
        out[d] = round(max(vals) / mean, 3) if mean else None
    return out


def headline(records: list[dict], st: Settings, net: model.Net) -> dict:
    rows = []
    for r in records:
        res = r.get("result")
        sc = r["scenario"]
        if not res:
            rows.append({"name": r["name"], "error": r["error"]})
            continue
        by_dc: dict[str, int] = {}
        for h in res["ranks"]:
            dc = r["rank_dcs"].get(h, "")
            by_dc[dc] = by_dc.get(dc, 0) + 1
        net_sc = model.Net(**{**asdict(net), "wan_delay_s": sc["delay_ms"] / 1000})
        ideal = model.ideal(sc["pattern"], list(by_dc.values()), st.size, net_sc)
        per_link_qps: dict[str, int] = {}
        for q in r["qp_links"]:
            key = f"{q['main_link']} {r['rank_dcs'].get(q['from'])}->{r['rank_dcs'].get(q['to'])}"
            per_link_qps[key] = per_link_qps.get(key, 0) + 1
        rows.append({
            "name": r["name"], **sc,
            "median_busbw_gbps": res["summary"]["median_busbw_Bps"] * 8 / 1e9,
            "ideal_busbw_gbps": ideal["busbw_Bps"] * 8 / 1e9 if ideal else None,
            "median_iteration_s": res["summary"]["median_duration_s"],
            "busiest_link_ratio": busiest_ratio(r["wan_bytes"]),
            "wan_bytes": r["wan_bytes"], "wan_qps": per_link_qps,
            "retransmitted_packets": res["summary"]["retransmitted_packets"],
            "all_verified": res["summary"]["all_verified"],
            "time_lost_s": r.get("time_lost_s"), "timeline": r.get("timeline"),
        })
    return {"rows": rows}


# ---- main ------------------------------------------------------------------------

def run(scenarios: list[Scenario], st: Settings, out: Path, keep_lab: bool,
        mgmt: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    labh = LabHandle(keep_lab, mgmt)
    records: list[dict] = []
    try:
        log("waiting for the lab's routes to settle")
        baseline_routes = _settled_routes(labh)
        baselines: dict = {}
        ordered = sorted(scenarios, key=lambda s: (s.mode != "kernel", s.failure))
        kernel_ok = not labh.agents_running
        for sc in ordered:
            if sc.mode == "kernel" and not kernel_ok:
                log(f"skip {sc.name}: agents are running in this lab (kernel hashing needs none)")
                continue
            if sc.mode == "qpagent" and not labh.start_agents():
                log(f"skip {sc.name}: no agent could be started")
                continue
            log(f"run {sc.name}")
            rec = run_scenario(labh, sc, st, baseline_routes, baselines)
            records.append(rec)
            # A long sweep keeps what it has measured if it is stopped.
            (out / "runs-so-far.json").write_text(json.dumps(records, indent=1, default=str))
            res = rec.get("result")
            if res:
                log(f"  median {res['summary']['median_duration_s']:.3f} s/iter, busbw "
                    f"{res['summary']['median_busbw_Bps'] * 8 / 1e6:.1f} Mbit/s, "
                    f"verified {res['summary']['all_verified']}, lost {rec.get('time_lost_s', 0):.2f} s")
    finally:
        labh.close()
    wans = len(labh.state["wans"])
    net = model.Net(wan_links=wans // 1 if wans else 1, wan_rate_bps=st.wan_rate_mbit * 1e6,
                    wan_delay_s=0.0, host_rate_bps=st.host_rate_bps,
                    qps_per_conn=st.qps_per_conn, window_pkts=st.engine.window, mtu=st.engine.mtu)
    results = {"settings": {**asdict(st), "engine": asdict(st.engine)},
               "model": asdict(net), "elapsed_s": round(time.time() - t0, 1),
               "headline": headline(records, st, net), "runs": records}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "runs-so-far.json").unlink(missing_ok=True)
    from .report import write_report
    write_report(results, out)
    log(f"wrote {out / 'results.json'} and {out / 'report.md'} in {results['elapsed_s']} s")
    return results


def _settled_routes(labh: LabHandle, timeout: float = 60.0) -> dict:
    """Routes on the borders once they stop changing (all WAN next hops in)."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        sig = labh.route_signature()
        if sig != last:
            last, stable_since = sig, time.monotonic()
        elif time.monotonic() - stable_since > 3.0 and any(sig.values()):
            return sig
        time.sleep(0.25)
    raise RuntimeError("the lab's routes did not settle")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m qplab.workloads.experiment", description=__doc__,
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
    args = ap.parse_args(argv)
    if args.size_mb <= 0 or args.iterations < 1 or args.qps < 1 or args.wan_rate <= 0:
        ap.error("sizes, iterations, QPs and rates must be positive")
    st = Settings(size=int(args.size_mb * (1 << 20)), iterations=args.iterations,
                  fail_iterations=max(args.iterations, 5), qps_per_conn=args.qps,
                  sport_policy=args.policy, wan_rate_mbit=args.wan_rate)
    scenarios = full_scenarios() if args.full else quick_scenarios(args.delay_ms)
    try:
        run(scenarios, st, Path(args.out), args.keep_lab, args.mgmt)
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except (RuntimeError, OSError, ValueError) as e:
        sys.exit(f"experiment failed: {e}")


if __name__ == "__main__":
    main()
