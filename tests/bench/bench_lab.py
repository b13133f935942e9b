"""Lab benchmark (`make bench-lab`): JSON on stdout.

- time from `up` of the default lab (no agents) to full convergence (all BGP
  Established, all BFD up, every leaf knows every remote VTEP), target < 20 s;
- time to tear it down, target < 5 s;
- a silent WAN cut (blackhole): time to BFD's first State Down on the wire
  at each end (kernel capture stamp) and to the route's withdrawal on the
  border (polled every 10 ms), for BFD 100 ms x 3 expect about 300-400 ms;
  then the time for BFD to come back after the restore;
- the WAN delay line alone: throughput at 1500-byte packets (target >= 200
  Mbit/s per direction) and delay error (p99 < 1 ms).
"""
import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lab"))

from bfd_capture import bfd_down_watcher  # noqa: E402
from conftest import free_management_subnet  # noqa: E402
from qplab import delaybench, frr, lab, netns  # noqa: E402
from qplab.api import Lab  # noqa: E402
from qplab.context import LabContext  # noqa: E402
from qplab.topology import load_topology  # noqa: E402
from qplab.waiting import wait_until  # noqa: E402


def bench_ctx() -> LabContext:
    prefix = f"qb{uuid.uuid4().hex[:4]}-"
    return LabContext(prefix, Path(f"/run/qplab-{prefix.rstrip('-')}"))


def spread(values: list[float]) -> dict:
    ms = [round(v * 1000, 1) for v in values]
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": min(ms), "max_ms": max(ms), "all_ms": ms}


def bfd_peer_status(ns: str, peer: str):
    return next((p["status"] for p in frr.vtysh_json(ns, "show bfd peers json") if p["peer"] == peer), None)


def bench_wan_cut(running: Lab, cuts: int) -> dict:
    """Blackhole each WAN link in turn; per cut, BFD and BGP reaction times."""
    names = list(running.wan_links())
    bfd_down, withdrawn, bfd_back = [], [], []
    for k in range(cuts):
        w = running.wan_links()[names[k % len(names)]]
        a_ns = running.ns(w.a)
        far = next(r.loopback for r in running.state.leaves() if r.dc == w.b_dc)
        running.wait_converged(60)
        watchers = [bfd_down_watcher(running.ns(n), dev) for n, dev in ((w.a, w.a_if), (w.b, w.b_if))]
        t0 = time.time()
        try:
            running.cut(w.name)
            stamps = [watch(timeout=10) for watch in watchers]
            bfd_down.append(max(stamps) - t0)
            wait_until(lambda: f"dev {w.a_if} " not in netns.run(
                ["ip", "-n", a_ns, "route", "show", far]).stdout + " ", 10, 0.01, "route withdrawn")
            withdrawn.append(time.time() - t0)
        finally:
            running.restore(w.name)
        t1 = time.time()
        wait_until(lambda: bfd_peer_status(a_ns, w.b_address) == "up", 30, 0.02, "BFD back up")
        bfd_back.append(time.time() - t1)
    return {"cuts": cuts, "bfd": f"{running.topology.bfd.interval_ms} ms x {running.topology.bfd.multiplier}",
            "cut_to_bfd_down_both_ends": spread(bfd_down),
            "cut_to_route_withdrawn": spread(withdrawn),
            "restore_to_bfd_up": spread(bfd_back)}


def bench_lab(runs: int, cuts: int) -> dict:
    ctx = bench_ctx()
    topo = load_topology().with_management(free_management_subnet())
    ups, converges, downs, cut = [], [], [], None
    for i in range(runs):
        try:
            t0 = time.monotonic()
            running = Lab.up(topo, ctx, progress=lambda m: None, start_agents=False)
            ups.append(time.monotonic() - t0)
            wait_until(running.problems, 60, 0.2, "convergence")
            converges.append(time.monotonic() - t0)
            if i == 0 and cuts:
                cut = bench_wan_cut(running, cuts)
        finally:
            t1 = time.monotonic()
            lab.down(ctx, progress=lambda m: None)
            downs.append(time.monotonic() - t1)
    return {"runs": runs,
            "up_build_s": [round(x, 2) for x in ups],
            "up_to_converged_s": [round(x, 2) for x in converges],
            "down_s": [round(x, 2) for x in downs],
            "wan_cut": cut}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="lab up/down cycles")
    p.add_argument("--cuts", type=int, default=4, help="silent WAN cuts measured (0: none)")
    p.add_argument("--seconds", type=float, default=3.0, help="delay-line measurement length")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: needs root (namespaces, FRR)", file=sys.stderr)
        return 1
    result = {"lab": bench_lab(args.runs, args.cuts),
              "delay_line": delaybench.run_bench(f"qb{uuid.uuid4().hex[:4]}-dl-", seconds=args.seconds,
                                                 delay_ms=10.0)}
    conv, down, dl = (max(result["lab"]["up_to_converged_s"]), max(result["lab"]["down_s"]),
                      result["delay_line"])
    result["targets"] = {
        "converged_under_20s": conv < 20,
        "down_under_5s": down < 5,
        "delay_line_at_least_200mbit": dl["delay_line_throughput_mbit"] >= 200,
        "delay_error_p99_under_1ms": dl["delay_error_p99_ms"] < 1.0,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(result["targets"].values()) else 2


if __name__ == "__main__":
    sys.exit(main())
