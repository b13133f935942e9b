"""Agent reaction time: route event seen -> maps updated. Prints JSON.

Two VTEPs joined by 4 links; the agent runs in vtepA with K QPs placed.
Each round withdraws one next hop from the ECMP route (as FRR does after
BFD says a link died) and then puts it back; the agent times each reaction
itself (event read from netlink -> path table and QPs rewritten) and
reports the samples in `qpagent status`. Target: p99 under 5 ms.

    make bench            (or: .venv/bin/python tests/bench/bench_reaction.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "live"))

from roce_wire import roce_frame, send_frames  # noqa: E402
from test_agent_live import RunningAgent, wait_until  # noqa: E402
from twovtep import two_vteps  # noqa: E402


def ecmp_route(topo, links) -> str:
    hops = " ".join(f"nexthop via {topo.gateway_of(topo.a, u)} dev {u}" for u in links)
    return f"ip route replace {topo.b.vtep_ip}/32 {hops}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--qps", type=int, default=16)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_reaction needs root (namespaces, BPF)", file=sys.stderr)
        return 1
    with two_vteps(4, tag="bench") as topo, tempfile.TemporaryDirectory() as work:
        agent = RunningAgent(topo, work)
        try:
            wait_until("agent up", lambda: (agent.status() or {}).get("vteps"), 30)
            frames = [roce_frame(topo.a.host_mac, topo.b.host_mac, topo.a.host_ip,
                                 topo.b.host_ip, dqp=0x100 + q) for q in range(args.qps)]
            send_frames(topo.a.host_ns, "eth0", frames)
            wait_until("QPs placed", lambda: agent.status()["qp_total"] >= args.qps, 10)
            links = list(topo.a.uplinks)
            for i in range(args.rounds):
                victim = links[i % len(links)]
                for route in (ecmp_route(topo, [u for u in links if u != victim]),
                              ecmp_route(topo, links)):
                    before = agent.status()["reaction_ms"]["count"]
                    topo.a.run(route)
                    wait_until("reaction", lambda: agent.status()["reaction_ms"]["count"] > before, 10)
                    send_frames(topo.a.host_ns, "eth0", frames)
            status = agent.status()
        finally:
            agent.stop()
    print(json.dumps({
        "benchmark": "agent_reaction",
        "paths": 4, "qps": args.qps, "events": status["reaction_ms"]["count"],
        "reaction_ms": status["reaction_ms"],
        "target_p99_ms": 5.0,
        "replacements": status["replacements"],
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
