"""How long a silent path cut stalls an RC queue pair, with NCCL's default
retransmission settings (local ACK timeout 4.3 s, 7 retries) beside a tight
setting (67 ms, 7 retries).

The real engine runs between two namespaces joined by a veth: one host sends
to the other at a paced rate over K QPs; once a quarter of the data has
arrived, the path is cut silently in both directions (the link stays up) for
--cut-ms, then restored. Per QP, the stall is the time from its last ACK
progress before the cut to its first after it (or to its error). Prints JSON,
with the model's figure beside each measurement: the first retry after the
cut ends comes ceil(cut / timeout) timeouts after the last progress, and
with more than retry_cnt of them the QP is in error instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit"))

from qplab.workloads import gbn  # noqa: E402
from qplab.workloads.driver import Engine, Host, QpInError  # noqa: E402
from qplab.workloads.schedules import Transfer  # noqa: E402
from qplab.workloads.worker import EngineConfig  # noqa: E402
from workloads_netns import rx_bytes, silent_cut, veth_pair_namespaces  # noqa: E402

A_IP, B_IP = "10.244.0.1", "10.244.0.2"


def cut_after(ns_a, ns_b, start_bytes, cut_s, box):
    """Cut the path once ns_b has received start_bytes more, for cut_s."""
    base = rx_bytes(ns_b, "v1")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if rx_bytes(ns_b, "v1") - base >= start_bytes:
            silent_cut(ns_a, A_IP, ns_b, B_IP)
            box["cut_at"] = time.monotonic()
            time.sleep(cut_s)                 # the outage itself: a set duration
            silent_cut(ns_a, A_IP, ns_b, B_IP, cut=False)
            box["restored_at"] = time.monotonic()
            return
        time.sleep(0.005)


def one_run(hosts, ns_a, ns_b, cfg, qps, size, cut_s) -> dict:
    box = {}
    watcher = threading.Thread(target=cut_after, args=(ns_a, ns_b, size // 4, cut_s, box), daemon=True)
    failed = None
    with Engine(hosts, cfg, qps_per_conn=qps) as eng:
        watcher.start()
        try:
            reply = eng.run_iteration([[Transfer("a", "b", size)]], 0, 1 << 16, timeout=120)["a"]
        except QpInError as e:
            reply, failed = e.reply, str(e)
    watcher.join()
    if "cut_at" not in box:
        raise SystemExit("the transfer ended before the cut: raise --size-mb")
    a, b = box["cut_at"], box["restored_at"]
    stalls = []
    for q in reply["qps"]:
        hit = [(s, e) for s, e in q["stalls"] if s <= b and e >= a]    # overlaps the cut
        stalls.append({"qpn": q["qpn"], "stall_s": round(max((e - s for s, e in hit), default=0.0), 4),
                       "timeouts": q["tx"]["timeouts"], "retransmitted": q["tx"]["retransmitted"],
                       "state": q["state"]})
    k = math.ceil((b - a) / cfg.ack_timeout)
    return {"cut_s": round(b - a, 4), "duration_s": round(reply["end"] - reply["start"], 3),
            "model_stall_s": round(k * cfg.ack_timeout, 4) if k <= cfg.retry_cnt else None,
            "job_failed": failed, "qps": stalls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cut-ms", default="300", help="outage lengths, comma-separated (ms)")
    ap.add_argument("--presets", default="nccl,tight")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--qps", type=int, default=2)
    ap.add_argument("--rate-mbit", type=float, default=100.0, help="sender's paced rate")
    ap.add_argument("--size-mb", type=float, default=16.0)
    args = ap.parse_args()
    size = int(args.size_mb * (1 << 20))
    out = {"qps": args.qps, "rate_mbit": args.rate_mbit, "bytes": size, "cpus": os.cpu_count(),
           "results": []}
    with veth_pair_namespaces(prefix="qt4-t") as (ns_a, ns_b):
        hosts = [Host("a", A_IP, ns_a), Host("b", B_IP, ns_b)]
        for cut_ms in (float(x) for x in args.cut_ms.split(",")):
            for name in args.presets.split(","):
                cfg = EngineConfig.preset(name, rate_mbit=args.rate_mbit)
                policy = gbn.RETRY_PRESETS[name]
                t = policy.ack_timeout
                runs = [one_run(hosts, ns_a, ns_b, cfg, args.qps, size, cut_ms / 1000)
                        for _ in range(args.repeats)]
                stalls = [q["stall_s"] for r in runs for q in r["qps"]]
                row = {"preset": name, "cut_ms": cut_ms, "ack_timeout_s": round(t, 6),
                       "retry_cnt": policy.retry_cnt, "budget_s": round(policy.budget, 4),
                       "stall_s": {"median": round(statistics.median(stalls), 4),
                                   "min": min(stalls), "max": max(stalls)},
                       "jobs_failed": sum(r["job_failed"] is not None for r in runs),
                       "runs": runs}
                out["results"].append(row)
                models = ["error" if r["model_stall_s"] is None else f"{r['model_stall_s'] * 1e3:.0f} ms"
                          for r in runs]
                print(f"cut {cut_ms:g} ms, {name}: QP stall median {row['stall_s']['median'] * 1e3:.0f} ms "
                      f"(model per run: {', '.join(models)}), jobs failed {row['jobs_failed']}/{args.repeats}",
                      file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
