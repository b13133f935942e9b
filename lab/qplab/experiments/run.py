"""One collective on the running lab (or on hosts you name), results as JSON.

    python -m qplab.experiments.run --pattern ring --size-mb 8 --iterations 5 --qps 4
    python -m qplab.experiments.run --hosts a=10.0.0.1@ns1,b=10.0.0.2@ns2 --pattern ring

Without --hosts the running lab's hosts are used (QPLAB_PREFIX and
QPLAB_RUN_DIR select another lab). `qplab run` calls main() with the same
arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable

from ..api import Lab
from ..context import LabContext
from ..state import HostState
from ..workloads.collective import PATTERNS, run_collective
from ..workloads.driver import Engine, EngineError, Host
from ..workloads.worker import EngineConfig


def parse_hosts(spec: str) -> list[Host]:
    """name=ip[@netns][/dc],... ; e.g. h1=10.0.0.1@ns1/dc1"""
    hosts = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, sep, rest = item.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"bad host {item!r}: use name=ip[@netns][/dc]")
        rest, _, dc = rest.partition("/")
        ip, _, ns = rest.partition("@")
        hosts.append(Host(name, ip, ns or None, dc))
    if len(hosts) < 2:
        raise ValueError("name at least two hosts")
    return hosts


def engine_hosts(hosts: Iterable[HostState]) -> list[Host]:
    """The engine's view of lab hosts: a name, an address, a namespace, a DC."""
    return [Host(h.name, h.ip, h.ns, h.dc) for h in hosts]


def lab_hosts() -> list[Host]:
    lab = Lab.running(LabContext.from_env())
    if lab is None:
        raise ValueError("no lab is up (start one with `qplab up`, or name hosts with --hosts)")
    return engine_hosts(lab.hosts())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qplab run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", choices=PATTERNS, default="ring")
    ap.add_argument("--size-mb", type=float, default=8.0, help="tensor size (MiB)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--qps", type=int, default=4, help="QPs per connection")
    ap.add_argument("--msg-kb", type=int, default=64, help="message size (KiB)")
    ap.add_argument("--ps-servers", type=int, default=0, help="parameter servers (default N/4)")
    ap.add_argument("--policy", choices=("qpn", "fixed"), default="qpn",
                    help="inner UDP source port: derived from QP numbers (Linux) or fixed")
    ap.add_argument("--mtu", type=int, default=1024)
    ap.add_argument("--window", type=int, default=64, help="packets in flight per QP")
    ap.add_argument("--rto-ms", type=float, default=250.0)
    ap.add_argument("--rate-mbit", type=float, default=0.0, help="pace each host (0: no pacing)")
    ap.add_argument("--hosts", help="name=ip[@netns][/dc],... instead of the lab's hosts")
    ap.add_argument("--out", help="write the result JSON here (default: stdout)")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.size_mb <= 0 or args.iterations < 1 or args.qps < 1 or args.msg_kb < 1:
            raise ValueError("sizes, iterations and QPs must be positive")
        if not 256 <= args.mtu <= 4096 or args.window < 1 or args.rto_ms <= 0:
            raise ValueError("MTU must be in [256, 4096], window and RTO positive")
        hosts = parse_hosts(args.hosts) if args.hosts else lab_hosts()
        cfg = EngineConfig(mtu=args.mtu, window=args.window, rto=args.rto_ms / 1000,
                           rate_mbit=args.rate_mbit)
        with Engine(hosts, cfg, qps_per_conn=args.qps, sport_policy=args.policy) as eng:
            res = run_collective(eng, args.pattern, int(args.size_mb * (1 << 20)), args.iterations,
                                 msg_size=args.msg_kb * 1024, ps_servers=args.ps_servers)
    except (ValueError, EngineError, OSError) as e:
        sys.exit(f"qplab run: {e}")
    text = json.dumps(res, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    s = res["summary"]
    print(f"{args.pattern}: median {s['median_duration_s']:.3f} s/iteration, busbw "
          f"{s['median_busbw_Bps'] * 8 / 1e6:.1f} Mbit/s, retransmitted {s['retransmitted_packets']}, "
          f"every byte verified: {s['all_verified']}", file=sys.stderr)


if __name__ == "__main__":
    main()
