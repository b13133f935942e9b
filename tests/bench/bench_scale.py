"""Scale of one agent: 1,000 QPs towards 16 remote VTEPs and up to 1,000,000
flow entries. Prints JSON and a short table.

One VTEP (namespace) with 16 remote VTEPs in its VXLAN FDB and 4 uplinks
runs `qpagent run` (own node name, pin base, metrics port). A host sends
one RoCEv2 frame for each of 1,000 QPs (distinct dest QPs, 62-63 per remote
VTEP by inner MAC) through an AF_PACKET socket; placement must be exact:
every QP on its VTEP, and per VTEP the busiest path carries ceil(K/P), as
`qpagent status --json` reports. Then the flow table is filled through the
map API the agent itself uses (the pinned flow_table, bpf(2)) to 100,000 and
1,000,000 entries; at each level `qpagent status`, `qpagent flows` and a
Prometheus scrape of /metrics are timed (wall clock, several times) and the
agent's RSS is read. Last, with the table full, new flows are sent as real
traffic: every frame must arrive (a full LRU table loses counts, never
packets), the table stays at its capacity, and placement stays exact.

MAX_FLOWS is a compile-time size; --max-flows compiles the agent's data
plane from a copy of bpf/ with that capacity (default 1,048,576).

    .venv/bin/python tests/bench/bench_scale.py [--qps 1000 --vteps 16 --uplinks 4
                                                 --levels 100000,1000000 --repeat 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "live"))

from processes import wait_until  # noqa: E402
from scale_agent import ScaleAgent, workdir  # noqa: E402
from scale_frames import FrameFactory  # noqa: E402
from scale_topology import VXLAN_DEV, scale_topology  # noqa: E402

from qpagent import bpfsys, netnsutil  # noqa: E402
from qpagent.maps import RawMap  # noqa: E402

ETH_P_ALL = 0x0003
FIRST_QP = 0x1000
STATUS_TARGET_S = 1.0
SCRAPE_TARGET_S = 0.2
FLOWS_TIMEOUT_S = 180


# ---------------------------------------------------------------- traffic
def send(netns: str, frames) -> float:
    """Send frames from one AF_PACKET socket; return the seconds it took."""
    with netnsutil.enter(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind(("eth0", 0))
        t0 = time.monotonic()
        for frame in frames:
            sock.send(frame)
        return time.monotonic() - t0
    finally:
        sock.close()


# ---------------------------------------------------------------- placement
def expected_vtep(topo, qp_index: int) -> str:
    return topo.remotes[qp_index % len(topo.remotes)].vtep_ip


def placement_report(topo, status: dict, n_qps: int) -> dict:
    """Per VTEP: QPs, live paths, busiest path and ceil(K/P); QPs on the
    wrong VTEP. Exact means every VTEP's busiest path equals ceil(K/P)."""
    want_vtep = {FIRST_QP + q: expected_vtep(topo, q) for q in range(n_qps)}
    wrong = [q for q in status.get("qps", []) if want_vtep.get(q["dqp"]) != q["vtep"]]
    per_vtep = {}
    for vtep in status.get("vteps", []):
        live = [p for p in vtep["paths"] if p["alive"]]
        k = sum(p["qps"] for p in vtep["paths"])
        per_vtep[vtep["address"]] = {
            "qps": k, "live_paths": len(live),
            "busiest": max((p["qps"] for p in live), default=0),
            "ceil_k_over_p": math.ceil(k / len(live)) if live else None,
            "dead_paths_with_qps": sum(1 for p in vtep["paths"] if not p["alive"] and p["qps"]),
        }
    exact = (status.get("qp_total") == n_qps and not wrong
             and len(per_vtep) == len(topo.remotes)
             and all(v["busiest"] == v["ceil_k_over_p"] and not v["dead_paths_with_qps"]
                     for v in per_vtep.values())
             and sum(v["qps"] for v in per_vtep.values()) == n_qps)
    return {"exact": exact, "qp_total": status.get("qp_total"), "listed": len(status.get("qps", [])),
            "wrong_vtep": len(wrong), "per_vtep": per_vtep}


# ---------------------------------------------------------------- timings
class FlowsFailed(RuntimeError):
    """A `qpagent` command answered with an error: recorded, not fatal."""


def timed(fn, repeat: int) -> dict:
    samples = []
    for _ in range(repeat):
        t0 = time.monotonic()
        fn()
        samples.append(time.monotonic() - t0)
    return {"median_s": round(statistics.median(samples), 4), "max_s": round(max(samples), 4),
            "min_s": round(min(samples), 4), "runs": len(samples)}


def measure(agent, repeat: int, flows_repeat: int) -> dict:
    size = {}

    def status_json():
        done = agent.cli("status", "--json")
        assert done.returncode == 0, done.stderr

    def status_text():
        done = agent.cli("status")
        if done.returncode != 0:
            raise FlowsFailed(done.stderr.strip()[-300:])

    def scrape():
        size["metrics_bytes"] = len(agent.scrape())

    def flows_top10():
        done = agent.cli("flows", "--json", "--limit", "10", timeout=FLOWS_TIMEOUT_S)
        if done.returncode != 0:
            raise FlowsFailed(done.stderr.strip())

    out = {"status_json": timed(status_json, repeat), "scrape": timed(scrape, repeat)}
    try:
        out["status_text"] = timed(status_text, repeat)
    except FlowsFailed as exc:
        out["status_text"] = {"median_s": None, "error": str(exc)}
    try:
        out["flows_top10"] = timed(flows_top10, flows_repeat)
    except subprocess.TimeoutExpired:
        out["flows_top10"] = {"median_s": None, "error": f"no answer in {FLOWS_TIMEOUT_S} s"}
    except FlowsFailed as exc:
        out["flows_top10"] = {"median_s": None, "error": str(exc)}
    out.update(size)
    out["memory"] = agent.memory_kib()
    return out


# ---------------------------------------------------------------- the flow table
class FlowTable:
    """The agent's pinned flow_table, written as the data plane would."""

    def __init__(self, agent):
        self.map = RawMap.open_pinned(agent.pinned_map_path("flows", "flow_table"), "flow_table")
        info = bpfsys.map_info(self.map.fd)
        self.capacity = info.max_entries
        self.next_id = 0

    def close(self) -> None:
        self.map.close()

    def memlock_bytes(self) -> int:
        with open(f"/proc/self/fdinfo/{self.map.fd}") as f:
            for line in f:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
        return 0

    def count(self) -> int:
        key, nxt, n = None, self.map.Key(), 0
        while bpfsys.map_next_key(self.map.fd, key, nxt):
            n += 1
            key, nxt = nxt, self.map.Key()
        return n

    def add(self, count: int) -> float:
        """Add `count` distinct IPv4 UDP flows (10.128.0.0/9 sources); seconds taken."""
        key, value = self.map.Key(), self.map.Leaf()
        key.family, key.proto, key.hook, key.ifindex = 4, 17, 0, 1
        key.daddr[0] = int.from_bytes(socket.inet_aton("10.0.0.1"), "little")
        key.dport = 5000
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        value.packets, value.bytes, value.first_ns, value.last_ns = 1, 100, now, now
        base = int.from_bytes(socket.inet_aton("10.128.0.0"), "big")
        fd, update = self.map.fd, bpfsys.map_update
        t0 = time.monotonic()
        for i in range(self.next_id, self.next_id + count):
            key.saddr[0] = int.from_bytes((base + i).to_bytes(4, "big"), "little")
            key.sport = i & 0xFFFF
            update(fd, key, value)
        self.next_id += count
        return time.monotonic() - t0


def fill_to(table: FlowTable, target: int) -> dict:
    before = table.count()
    seconds = table.add(max(0, target - before))
    return {"target": target, "entries_before": before, "written": max(0, target - before),
            "write_s": round(seconds, 2), "entries": table.count()}


# ---------------------------------------------------------------- phases
def place_qps(topo, agent, frames: FrameFactory, n_qps: int) -> tuple[dict, dict]:
    qp_frames = [frames.roce(q % len(topo.remotes), FIRST_QP + q) for q in range(n_qps)]
    t0 = time.monotonic()
    send_s = send(topo.host_ns, qp_frames)
    last = {}

    def exact():
        status = agent.status()
        if status:
            last["report"] = placement_report(topo, status, n_qps)
            last["status"] = status
        return status and last["report"]["exact"]

    try:
        wait_until("exact placement of every QP", exact, deadline_s=30, every_s=0.2)
    finally:
        if "report" in last:
            last["report"]["send_s"] = round(send_s, 4)
            last["report"]["exact_after_s"] = round(time.monotonic() - t0, 3)
    return last["report"], last["status"]


def full_table_traffic(topo, agent, table: FlowTable, frames: FrameFactory, n_new: int,
                       n_qps: int) -> dict:
    """With the table full, new flows by real traffic: every frame arrives,
    the table stays at capacity, and the QPs sent again are placed exactly
    (the agent forgets QPs idle for 10 s, so they may take new ports)."""
    delivered0 = topo.delivered()
    new = [frames.udp(i % len(topo.remotes), 10000 + i) for i in range(n_new)]
    qp_frames = [frames.roce(q % len(topo.remotes), FIRST_QP + q) for q in range(n_qps)]
    send(topo.host_ns, new + qp_frames)
    sent = len(new) + len(qp_frames)
    try:
        wait_until("every frame delivered", lambda: topo.delivered() - delivered0 >= sent,
                   deadline_s=20, every_s=0.1)
    except AssertionError:
        pass   # reported below as lost frames
    delivered = topo.delivered() - delivered0
    status = agent.status()
    placement = placement_report(topo, status, n_qps)
    return {"frames_sent": sent, "frames_delivered": delivered, "frames_lost": sent - delivered,
            "entries": table.count(), "capacity": table.capacity,
            "placement_exact": placement["exact"], "placement": placement,
            "recent_events": [e["detail"] for e in status.get("events", [])[-5:]]}


def _seconds(timing: dict) -> str:
    if timing.get("median_s") is None:
        return "failed"
    return f"{timing['median_s']:.3f} s"


def table(result: dict) -> str:
    rows = ["| flows in table | `qpagent status` (json) median / max | status (text) median "
            "| scrape median / max | `qpagent flows --limit 10` | agent RSS |",
            "|--:|--:|--:|--:|--:|--:|"]
    for level in result["levels"]:
        m = level["measured"]
        rows.append(
            f"| {level['fill']['entries']:,} | {m['status_json']['median_s']:.3f} / "
            f"{m['status_json']['max_s']:.3f} s | {_seconds(m['status_text'])} "
            f"| {m['scrape']['median_s'] * 1e3:.1f} / {m['scrape']['max_s'] * 1e3:.1f} ms "
            f"| {_seconds(m['flows_top10'])} | {m['memory']['rss_kib'] / 1024:.0f} MiB |")
    p = result["placement"]
    rows.append("")
    rows.append(f"placement: {p['qp_total']} QPs over {len(p['per_vtep'])} VTEPs, exact={p['exact']}"
                f" (after {p['exact_after_s']} s); full table: "
                f"{result['full_table']['frames_lost']} of {result['full_table']['frames_sent']} "
                f"frames lost, placement exact={result['full_table']['placement_exact']}")
    return "\n".join(rows)


def run(args) -> dict:
    result = {"benchmark": "agent_scale", "qps": args.qps, "remote_vteps": args.vteps,
              "uplinks": args.uplinks, "targets": {"status_s": STATUS_TARGET_S,
                                                   "scrape_s_at_100k_flows": SCRAPE_TARGET_S}}
    work = workdir()
    try:
        with scale_topology(args.vteps, args.uplinks) as topo:
            agent = ScaleAgent(topo, work, VXLAN_DEV, args.max_flows)
            try:
                result["agent_start_s"] = round(agent.start(), 2)
                wait_until(f"{args.vteps} remote VTEPs with paths",
                           lambda: len((agent.status() or {}).get("vteps", [])) == args.vteps,
                           deadline_s=60, every_s=0.2)
                result["memory_idle"] = agent.memory_kib()
                frames = FrameFactory(topo)
                result["placement"], _ = place_qps(topo, agent, frames, args.qps)
                table_ = FlowTable(agent)
                try:
                    result["flow_capacity"] = table_.capacity
                    result["flow_map_memlock_bytes"] = table_.memlock_bytes()
                    result["levels"] = [{"fill": {"target": 0, "entries": table_.count()},
                                         "measured": measure(agent, args.repeat, args.repeat)}]
                    for target in args.levels:
                        if target > table_.capacity:
                            result.setdefault("skipped_levels", []).append(target)
                            continue
                        fill = fill_to(table_, target)
                        flows_repeat = args.repeat if target <= 100_000 else 2
                        result["levels"].append({"fill": fill, "measured":
                                                 measure(agent, args.repeat, flows_repeat)})
                    overflow = table_.add(table_.capacity - table_.count() + args.new_flows)
                    result["overfill_write_s"] = round(overflow, 2)
                    result["full_table"] = full_table_traffic(topo, agent, table_, frames,
                                                              args.new_flows, args.qps)
                finally:
                    table_.close()
                result["memory_end"] = agent.memory_kib()
            except BaseException:
                sys.stderr.write(agent.log_text()[-4000:])
                raise
            finally:
                agent.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=int, default=1000)
    parser.add_argument("--vteps", type=int, default=16)
    parser.add_argument("--uplinks", type=int, default=4)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100_000, 1_000_000])
    parser.add_argument("--max-flows", type=int, default=1 << 20,
                        help="flow table capacity to compile with (0: the sources' own)")
    parser.add_argument("--new-flows", type=int, default=20_000,
                        help="new flows sent as traffic once the table is full")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_scale needs root (namespaces, BPF)", file=sys.stderr)
        return 1
    result = run(args)
    print(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
