"""Throughput of the RoCEv2 traffic engine per host on this machine: two
namespaces joined by a veth, one worker each, K queue pairs between them.
Prints JSON: one-way (one host sending) and both ways (each host sending
and receiving), with and without the ICRC, in Gbit/s of message payload.

With --lab, also one host of the first DC to one host of the second through
the running lab (VXLAN, FRR fabric, a WAN delay line), at the WAN rate the
lab has configured."""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit"))

from qplab.workloads.driver import Engine, Host, verify  # noqa: E402
from qplab.workloads.schedules import Transfer  # noqa: E402
from qplab.workloads.worker import EngineConfig  # noqa: E402
from workloads_netns import veth_pair_namespaces  # noqa: E402


def measure(eng: Engine, schedule, size: int, repeats: int) -> dict:
    best = None
    for i in range(repeats):
        replies = eng.run_iteration(schedule, i, 1 << 16)
        dur = max(r["end"] for r in replies.values()) - min(r["start"] for r in replies.values())
        verified, problems = verify(schedule, replies)
        if problems:
            raise SystemExit(f"verification failed: {problems[:3]}")
        best = dur if best is None else min(best, dur)
    return {"seconds": round(best, 4), "gbit_per_s_per_sender": round(size * 8 / best / 1e9, 3),
            "packets_per_s_per_sender": round(size / eng.config.mtu / best)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=float, default=32, help="bytes each sender moves per run (MiB)")
    ap.add_argument("--qps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mtu", type=int, default=1024)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--lab", action="store_true", help="also measure across the running lab's WAN")
    args = ap.parse_args()
    size = int(args.size_mb * (1 << 20))
    out = {"qps_per_conn": args.qps, "mtu": args.mtu, "window": args.window,
           "bytes_per_sender": size, "cpus": os.cpu_count(), "results": {}}
    with veth_pair_namespaces(prefix="qt4-b") as (ns_a, ns_b):
        hosts = [Host("a", "10.244.0.1", ns_a), Host("b", "10.244.0.2", ns_b)]
        for icrc in (True, False):
            cfg = EngineConfig(mtu=args.mtu, window=args.window, icrc=icrc)
            with Engine(hosts, cfg, qps_per_conn=args.qps) as eng:
                one_way = [[Transfer("a", "b", size)]]
                both = [[Transfer("a", "b", size), Transfer("b", "a", size)]]
                key = "icrc" if icrc else "no_icrc"
                out["results"][key] = {"one_way": measure(eng, one_way, size, args.repeats),
                                       "both_ways": measure(eng, both, size, args.repeats)}
    if args.lab:
        from qplab.experiments.run import lab_hosts
        hosts = lab_hosts()
        by_dc = {}
        for h in hosts:
            by_dc.setdefault(h.dc, h)
        a, b = list(by_dc.values())[:2]
        cfg = EngineConfig(mtu=args.mtu, window=args.window)
        with Engine([a, b], cfg, qps_per_conn=args.qps) as eng:
            out["results"]["lab_one_way"] = {"from": a.name, "to": b.name, **measure(
                eng, [[Transfer(a.name, b.name, size)]], size, args.repeats)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
