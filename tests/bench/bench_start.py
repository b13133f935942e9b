"""Data-plane start time: compiling with clang versus adopting a pinned set.

Two VTEPs joined by 2 links; the data plane of vtepA (qp_steer on the VXLAN
device, path_pin + flow_stats tc + XDP on each uplink) is attached from
nothing (compile, pin, attach), released, and adopted again, `--rounds`
times. The whole agent adds its own start-up (imports, FDB, paths) on top:
tests/live/test_restart.py prints that figure for `qpagent run`.

    .venv/bin/python tests/bench/bench_start.py [--rounds 3]

Prints JSON: seconds per attach, each round, and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "live"))

from twovtep import VXLAN_DEV, two_vteps  # noqa: E402

from qpagent import pins  # noqa: E402
from qpagent.datapath import ADOPTED, COMPILED, DataPlane  # noqa: E402


def dataplane(topo, base: str) -> DataPlane:
    a = topo.a
    return DataPlane(vxlan_devices=[VXLAN_DEV], uplinks=a.uplinks, count_xdp=a.uplinks,
                     count_tc=a.uplinks, netns=a.vtep_ns, node=a.vtep_ns, pin_base=base)


def timed_attach(dp: DataPlane, want: str) -> float:
    t0 = time.monotonic()
    got = dp.attach()
    elapsed = time.monotonic() - t0
    if got != want:
        raise SystemExit(f"expected the data plane to be {want}, it was {got}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, BPF)")
    base = f"/run/qt-bench-{uuid.uuid4().hex[:8]}"
    compiled, adopted = [], []
    try:
        with two_vteps(2) as topo:
            for _ in range(args.rounds):
                dp = dataplane(topo, base)
                compiled.append(timed_attach(dp, COMPILED))
                dp.release()
                dp = dataplane(topo, base)
                adopted.append(timed_attach(dp, ADOPTED))
                dp.purge()
    finally:
        pins.remove_base(base)
    print(json.dumps({
        "programs": ["qp_steer", "path_pin x2", "flow_stats_tc x2", "flow_stats_xdp x2"],
        "compile_s": [round(x, 3) for x in compiled],
        "adopt_s": [round(x, 3) for x in adopted],
        "median_compile_s": round(statistics.median(compiled), 3),
        "median_adopt_s": round(statistics.median(adopted), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
