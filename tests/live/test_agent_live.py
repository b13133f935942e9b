"""The whole agent, as users run it, on two real VTEPs.

`qpagent run` inside vtepA; RoCEv2 frames for K queue pairs (one shared
inner UDP source port) from hostA; VXLAN captured on every link at vtepB.
Each QP must leave with the outer source port `qpagent status` reports, on
the link the FIB names for that port, VNI and inner frame intact, balanced
(busiest link = ceil(K/P)); and when a link goes away its QPs move, none
stays on it, and the reaction is timed in status.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from agent_config import write_agent_config
from processes import stop_group, wait_until
from roce_wire import LinkCapture, roce_frame, send_frames
from twovtep import VNI, VXLAN_DEV, sh

K_QPS = 7
FIRST_QP = 0x100
QPAGENT = str(Path(sys.executable).parent / "qpagent")



class RunningAgent:
    def __init__(self, topo, workdir: str):
        self.topo = topo
        self.socket = os.path.join(workdir, "agent.sock")
        self.log_path = os.path.join(workdir, "agent.log")
        config = self.config = os.path.join(workdir, "agent.toml")
        write_agent_config(config, node=topo.a.vtep_ns, socket=self.socket, vxlan=VXLAN_DEV,
                           uplinks=topo.a.uplinks)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.a.vtep_ns, QPAGENT, "run", "--config", config],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def status(self) -> dict | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"qpagent exited with {self.proc.returncode}:\n{self.log_text()}")
        done = subprocess.run([QPAGENT, "status", "--socket", self.socket, "--json"],
                              capture_output=True, text=True, timeout=10)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log_path).read_text()

    def stop(self) -> None:
        stop_group(self.proc, 15)
        self.log.close()
        # Stopping leaves the data plane pinned and steering: remove it.
        subprocess.run(["ip", "netns", "exec", self.topo.a.vtep_ns, QPAGENT, "purge",
                        "--config", self.config], capture_output=True, timeout=60)


@pytest.fixture
def agent(twovtep):
    workdir = tempfile.mkdtemp(prefix="qt2-agent-")
    running = RunningAgent(twovtep, workdir)
    try:
        wait_until("the agent's control socket", running.status, deadline_s=60)
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def send_qps(topo, qps, psn: int) -> dict[int, bytes]:
    frames = {qp: roce_frame(topo.a.host_mac, topo.b.host_mac, topo.a.host_ip, topo.b.host_ip,
                             dqp=qp, psn=psn) for qp in qps}
    send_frames(topo.a.host_ns, "eth0", frames.values())
    return frames


def fib_link(topo, sport: int) -> str:
    out = sh(f"ip -n {topo.a.vtep_ns} route get {topo.b.vtep_ip} from {topo.a.vtep_ip} "
             f"ipproto udp sport {sport} dport 4789").stdout.split()
    return out[out.index("dev") + 1]


def round_trip(topo, agent, cap, psn: int):
    """Send one frame per QP; return (captured per QP, status QPs per dqp)."""
    qps = range(FIRST_QP, FIRST_QP + K_QPS)
    cap.drain()
    frames = send_qps(topo, qps, psn)
    got = cap.collect(lambda g: len(g) >= K_QPS, deadline_s=5)
    assert sorted(c.dqp for c in got) == list(qps), got
    status = wait_until("status with every QP",
                        lambda: (s := agent.status()) and s["qp_total"] == K_QPS and s)
    by_qp = {q["dqp"]: q for q in status["qps"]}
    return frames, {c.dqp: c for c in got}, by_qp, status


def check_wire(topo, frames, captured, by_qp):
    """Every QP on the wire as status says and the FIB wants; frame intact."""
    seen = {qp: (c.link, c.outer_sport, c.vni, c.outer_src, c.outer_dst, c.inner)
            for qp, c in captured.items()}
    want = {qp: (fib_link(topo, by_qp[qp]["port"]), by_qp[qp]["port"], VNI,
                 topo.a.vtep_ip, topo.b.vtep_ip, frames[qp]) for qp in captured}
    assert seen == want
    for qp, c in captured.items():
        assert by_qp[qp]["uplink"] == c.link  # both ends of a link share its name


def busiest(captured) -> int:
    per_link = defaultdict(set)
    for c in captured.values():
        per_link[c.link].add(c.dqp)
    return max(len(s) for s in per_link.values())


def forget_neighbours(topo) -> None:
    """As on a machine, or a path, never used before: no VTEP knows the MAC
    of any next hop, so path_pin's first FIB lookups meet NO_NEIGH (until
    the agent's managed entries for its gateways resolve again, which is
    what it keeps them for)."""
    for ns in (topo.a.vtep_ns, topo.b.vtep_ns):
        sh(f"ip -n {ns} neigh flush all")


def test_qps_are_placed_pinned_and_moved(twovtep, agent):
    topo = twovtep
    n_paths = topo.n_paths
    forget_neighbours(topo)
    with LinkCapture(topo.b.vtep_ns, topo.b.uplinks) as cap:
        frames, captured, by_qp, _ = round_trip(topo, agent, cap, psn=1)
        check_wire(topo, frames, captured, by_qp)
        assert busiest(captured) == math.ceil(K_QPS / n_paths)

        # Take up0 away at vtepA: its QPs must move, none may stay.
        orphans = {qp for qp, c in captured.items() if c.link == "up0"}
        assert orphans, "no QP was placed on up0 to begin with"
        reactions_before = agent.status()["reaction_ms"]["count"]
        sh(f"ip -n {topo.a.vtep_ns} link set up0 down")
        status = wait_until(
            "QPs off up0 and a timed reaction",
            lambda: (s := agent.status()) and s["reaction_ms"]["count"] > reactions_before
            and all(q["uplink"] != "up0" for q in s["qps"]) and s)
        frames, captured, by_qp, status = round_trip(topo, agent, cap, psn=2)
        check_wire(topo, frames, captured, by_qp)
        assert not [c for c in captured.values() if c.link == "up0"]
        assert busiest(captured) == math.ceil(K_QPS / (n_paths - 1))
        assert {qp for qp in orphans if by_qp[qp]["moves"] >= 1} == orphans
        reaction = status["reaction_ms"]
        assert reaction["max"] is not None and 0 < reaction["max"] < 1000, reaction
        print(f"\n{n_paths} paths: link-down reaction {reaction['max']:.2f} ms (max), "
              f"{len(orphans)} QPs moved")


def test_uplink_egress_counts_every_qp(twovtep, agent):
    """flow_stats_tc sits behind path_pin on each uplink: every QP's outer
    flow must be counted on the link it left by (needs path_pin to hand the
    packet on with TC_ACT_UNSPEC rather than end the tc chain)."""
    topo = twovtep
    forget_neighbours(topo)
    with LinkCapture(topo.b.vtep_ns, topo.b.uplinks) as cap:
        _, captured, by_qp, _ = round_trip(topo, agent, cap, psn=1)

    def counted():
        done = subprocess.run([QPAGENT, "flows", "--socket", agent.socket, "--json",
                               "--limit", "1000"], capture_output=True, text=True, timeout=10)
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        return {(r["interface"], r["sport"], r["vni"], r["dqp"]) for r in rows
                if r["hook"] == "tc_egress" and r["dport"] == 4789}

    want = {(c.link, c.outer_sport, VNI, qp) for qp, c in captured.items()}
    try:
        wait_until("tc egress flow rows for every QP", lambda: want <= counted(), deadline_s=3)
    except AssertionError:
        assert counted() >= want  # shows the readable set difference
