"""Where liveness probes go missing in steady state (JSON and a table).

Liveness kills a path after a few probes without a reply; in the full lab
paths died with nothing failed. This runs the default lab with liveness on
(no NAK or stall repair), 8 RC QPs dc1-h1 -> dc2-h1 for a while at one WAN
delay, nothing cut, and accounts for every probe of dc1-leaf1's agent:

- sent: probes dc1-leaf1's prober sent (`qpagent status`, liveness.prober);
- answered: requests dc2-leaf1's path_probe turned into replies;
- seen: replies dc1-leaf1's path_probe recorded;
- where the rest went: each delay line's drops (loss, overflow, send
  errors) and late frames, each tbf's drops, the kernel's backlog drops;
- deaths: paths declared dead, with the silence and deadline of each;
- the prober's own punctuality: rounds late, the longest gap between two.

    .venv/bin/python tests/bench/bench_probe_loss.py [--delay 20] [--seconds 20]
"""
import argparse
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lab"))

from conftest import free_management_subnet  # noqa: E402
from qpagent.config import LivenessSettings, RepairSettings  # noqa: E402
from qplab import delayline, netns  # noqa: E402
from qplab import lab as build  # noqa: E402
from qplab.api import Lab  # noqa: E402
from qplab.context import LabContext  # noqa: E402
from qplab.experiments.failover import Traffic, engine_host, settle  # noqa: E402
from qplab.experiments.observe import agent_status  # noqa: E402
from qplab.topology import load_topology  # noqa: E402

SENDER_LEAF = "dc1-leaf1"
RECEIVER_LEAF = "dc2-leaf1"


def probe_events(lab: Lab) -> dict[str, dict]:
    """Per leaf agent, its path_probe's counters (answered, reply_seen...)."""
    out = {}
    for leaf in lab.leaves():
        status = agent_status(lab.agent_socket(leaf)) or {}
        out[leaf] = dict(status.get("probe_events") or {})
    return out


def prober_stats(lab: Lab) -> dict:
    """The sending agent's prober: probes sent, rounds, stalls."""
    status = agent_status(lab.agent_socket(SENDER_LEAF)) or {}
    return (status.get("liveness") or {}).get("prober") or {}


def delay_lines(lab: Lab) -> dict[str, dict]:
    return {name: delayline.control(w.control, {"get": True}).get("stats", {})
            for name, w in lab.wan_links().items()}


def tbf_drops(lab: Lab) -> dict[str, int]:
    """Drops of every qdisc on the routers' WAN egress."""
    out = {}
    for w in lab.wan_links().values():
        for node, dev in ((w.a, w.a_if), (w.b, w.b_if)):
            res = netns.run(["tc", "-n", lab.ns(node), "-s", "qdisc", "show", "dev", dev], check=False)
            out[f"{node}:{dev}"] = sum(int(n) for n in re.findall(r"dropped (\d+)", res.stdout or ""))
    return out


def backlog_drops() -> int:
    """The kernel's per-CPU input backlog drops (every namespace shares it)."""
    return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())


def diff(after, before):
    if isinstance(after, dict):
        return {k: diff(v, before.get(k, 0) if isinstance(before, dict) else 0) for k, v in after.items()}
    if isinstance(after, (int, float)) and isinstance(before, (int, float)):
        return round(after - before, 3)
    return after


def deaths(status: dict) -> dict[float, str]:
    """Liveness deaths among the status's recent events, by time (the
    status keeps only the last few events: sample often)."""
    return {e["time"]: e["detail"] for e in status.get("events", [])
            if "stopped answering" in e.get("detail", "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delay", type=float, default=20.0, help="WAN one-way delay, ms")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    prefix = f"qp{uuid.uuid4().hex[:4]}-"
    ctx = LabContext(prefix, Path(f"/run/qplab-{prefix.rstrip('-')}"))
    try:
        lab = Lab.up(load_topology().with_management(free_management_subnet()), ctx,
                     progress=log, start_agents=False)
        lab.wait_converged(90)
        started = lab.start_agents(progress=log, liveness=LivenessSettings(enabled=True),
                                   repair=RepairSettings(retransmit=False))
        broken = {n: a.error for n, a in started.items() if not a.ok}
        if broken:
            raise RuntimeError(f"agents did not start: {broken}")
        lab.set_wan(delay_ms=args.delay)
        settle(lab, SENDER_LEAF, log=log)
        prober_before = prober_stats(lab)
        before = {"probe_events": probe_events(lab), "delay_lines": delay_lines(lab),
                  "tbf_drops": tbf_drops(lab), "backlog_drops": backlog_drops()}
        traffic = Traffic(engine_host(lab, "dc1-h1"), engine_host(lab, "dc2-h1"), args.seconds,
                          log=str(ctx.run_dir / "logs" / "probe-loss-engine.log")).start()
        log(f"8 QPs dc1-h1 -> dc2-h1 for {args.seconds:g} s, WAN one-way delay {args.delay:g} ms")
        t_end = time.monotonic() + args.seconds
        status, died = {}, {}
        try:
            while time.monotonic() < t_end:
                status = agent_status(lab.agent_socket(SENDER_LEAF)) or status
                died.update(deaths(status))
                time.sleep(0.25)   # a sampling period, not a wait for a condition
        finally:
            engine = traffic.result(timeout=args.seconds + 60)
            traffic.close()
        after = {"probe_events": probe_events(lab), "delay_lines": delay_lines(lab),
                 "tbf_drops": tbf_drops(lab), "backlog_drops": backlog_drops()}
        # After the data plane's counts: the probes sent include all answered.
        prober = prober_stats(lab)
    finally:
        build.down(ctx, progress=log)
    counters = diff(after, before)
    probes = {"sent": prober.get("probes_sent", 0) - prober_before.get("probes_sent", 0),
              "answered": counters["probe_events"][RECEIVER_LEAF].get("answered", 0),
              "seen": counters["probe_events"][SENDER_LEAF].get("reply_seen", 0)}
    out = {"bench": "probe_loss", "delay_ms": args.delay, "seconds": args.seconds,
           "engine": {k: engine.get(k) for k in ("completed", "timeouts", "retransmitted", "seconds")},
           "probes": probes, "counters": counters, "deaths": [d for _, d in sorted(died.items())],
           "repairs": status.get("repairs"),
           "prober": prober}
    print(json.dumps(out, indent=1))
    print(f"probes sent {probes['sent']}, answered {probes['answered']}, replies seen "
          f"{probes['seen']} (the sender's last probes may be in flight); deaths {len(out['deaths'])}; "
          f"prober: {prober.get('stalls')} stalls in {prober.get('rounds')} rounds")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
