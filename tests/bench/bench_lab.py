"""Lab benchmark (`make bench-lab`): JSON on stdout.

- time from `up` of the default lab (no agents) to full convergence (all BGP
  Established, all BFD up, every leaf knows every remote VTEP), target < 20 s;
- time to tear it down, target < 5 s;
- the WAN delay line alone: throughput at 1500-byte packets (target >= 200
  Mbit/s per direction) and delay error (p99 < 1 ms).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from qplab import delaybench, lab, status
from qplab.context import LabContext
from qplab.topology import load_topology
from qplab.waiting import wait_until

PREFIX = "qt3-"


def bench_lab(runs: int) -> dict:
    ctx = LabContext(PREFIX, Path("/run/qplab-qt3"))
    topo = load_topology().with_management("172.31.254.0/24")
    ups, converges, downs = [], [], []
    lab.down(ctx, progress=lambda m: None)
    for _ in range(runs):
        try:
            t0 = time.monotonic()
            state = lab.up(topo, ctx, progress=lambda m: None, start_agents=False)
            ups.append(time.monotonic() - t0)
            wait_until(lambda: status.problems(state, status.collect(state)), 60, 0.2, "convergence")
            converges.append(time.monotonic() - t0)
        finally:
            t1 = time.monotonic()
            lab.down(ctx, progress=lambda m: None)
            downs.append(time.monotonic() - t1)
    return {"runs": runs,
            "up_build_s": [round(x, 2) for x in ups],
            "up_to_converged_s": [round(x, 2) for x in converges],
            "down_s": [round(x, 2) for x in downs]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="lab up/down cycles")
    p.add_argument("--seconds", type=float, default=3.0, help="delay-line measurement length")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: needs root (namespaces, FRR)", file=sys.stderr)
        return 1
    result = {"lab": bench_lab(args.runs),
              "delay_line": delaybench.run_bench("qt3-dl-", seconds=args.seconds, delay_ms=10.0)}
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
