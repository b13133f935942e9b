"""Hitless agent restart and upgrade, with the real agent on two real VTEPs.

RoCEv2 frames for K queue pairs flow steadily from hostA (each QP's PSNs
count up) while `qpagent run` inside vtepA is killed with SIGKILL and started
again; VXLAN is captured on every link at vtepB. The restarted agent adopts
the pinned data plane (no compile): no frame is lost and every QP keeps its
outer port and link, as `qpagent status` says before and after. An upgrade
(programs that differ) replaces every hook in place and unpins the old set,
and balance is exact again. `qpagent purge` then leaves nothing: no pins, no
clsact, no XDP.
"""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from agent_config import write_agent_config
from processes import stop_group, wait_until
from scapy.contrib.roce import BTH
from scapy.layers.l2 import Ether

from qpagent import bpfobj, netnsutil, pins
from roce_wire import LinkCapture, roce_frame
from twovtep import VXLAN_DEV, sh, two_vteps

K_QPS = 6
N_PATHS = 3
FIRST_QP = 0x200
ROUND_S = 0.01        # one frame per QP every 10 ms
QPAGENT = str(Path(sys.executable).parent / "qpagent")



class Agents:
    """`qpagent run` in vtepA, started and killed as the test says, with
    its own pin base and node name."""

    def __init__(self, topo, workdir: str):
        self.topo = topo
        self.workdir = workdir
        self.node = f"qt-{uuid.uuid4().hex[:8]}"
        self.pin_base = f"/run/qt-pins-{uuid.uuid4().hex[:8]}"
        self.socket = os.path.join(workdir, "agent.sock")
        self.config = os.path.join(workdir, "agent.toml")
        write_agent_config(self.config, node=self.node, socket=self.socket, vxlan=VXLAN_DEV,
                           uplinks=topo.a.uplinks)
        self.proc = None
        self.log = None
        self.runs = 0

    def env(self, bpf_dir: str | None = None) -> dict:
        env = dict(os.environ, QPAGENT_PIN_BASE=self.pin_base)
        if bpf_dir:
            env["QPAGENT_BPF_DIR"] = bpf_dir
        return env

    def start(self, bpf_dir: str | None = None) -> float:
        """Start an agent; return seconds until its control socket answered."""
        self.runs += 1
        self.log = open(os.path.join(self.workdir, f"agent{self.runs}.log"), "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.topo.a.vtep_ns, QPAGENT, "run", "--config", self.config],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=self.env(bpf_dir))
        wait_until("the agent's control socket", self.status, deadline_s=90, every_s=0.02)
        return time.monotonic() - t0

    def status(self) -> dict | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"qpagent exited with {self.proc.returncode}:\n{self.log_text()}")
        done = subprocess.run([QPAGENT, "status", "--socket", self.socket, "--json"],
                              capture_output=True, text=True, timeout=10)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 15)
            self.log.close()

    def purge(self) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.topo.a.vtep_ns, QPAGENT, "purge",
                               "--config", self.config],
                              capture_output=True, text=True, timeout=60, env=self.env())

    def pinned_sets(self) -> list[str]:
        return pins.PinStore(self.node, self.pin_base).digests()

    def remove_pin_base(self) -> None:
        pins.remove_base(self.pin_base)


class Traffic:
    """Frames for K QPs, round after round (PSN = round), from hostA; every
    VXLAN frame that reaches vtepB captured, each tagged with the time."""

    def __init__(self, topo):
        self.topo = topo
        self.qps = list(range(FIRST_QP, FIRST_QP + K_QPS))
        self.rounds = 0
        self.got: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._cap = LinkCapture(topo.b.vtep_ns, topo.b.uplinks)
        for sock in self._cap.socks:   # room for a few seconds of frames
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._capture, daemon=True)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _send(self) -> None:
        a, b = self.topo.a, self.topo.b
        with netnsutil.enter(a.host_ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            sock.bind(("eth0", 0))
            next_at = time.monotonic()
            while not self._stop.is_set():
                for qp in self.qps:
                    sock.send(roce_frame(a.host_mac, b.host_mac, a.host_ip, b.host_ip,
                                         dqp=qp, psn=self.rounds))
                self.rounds += 1
                next_at += ROUND_S
                time.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            sock.close()

    def _capture(self) -> None:
        while not self._stop.is_set() or self._sending():
            for c in self._cap.collect(lambda g: len(g) > 200, deadline_s=0.1):
                self.got.append((time.monotonic(), c))

    def _sending(self) -> bool:
        return self._threads[0].is_alive()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._threads[0].join(5)
        # What is still in flight: collect until every round arrived or 2 s.
        end = time.monotonic() + 2
        while time.monotonic() < end and len(self.got) < self.rounds * K_QPS:
            time.sleep(0.05)
        self._threads[1].join(5)
        self._cap.close()

    def lost(self) -> dict[int, list[int]]:
        """Per QP, the PSNs sent but never captured."""
        seen = defaultdict(set)
        for _, c in self.got:
            seen[c.dqp].add(Ether(c.inner)[BTH].psn)
        return {qp: sorted(set(range(self.rounds)) - seen[qp])
                for qp in self.qps if set(range(self.rounds)) - seen[qp]}

    def wire_since(self, t0: float) -> dict[int, set]:
        """Per QP, every (link, outer port) its frames took since t0."""
        out = defaultdict(set)
        for t, c in self.got:
            if t >= t0:
                out[c.dqp].add((c.link, c.outer_sport))
        return dict(out)


def placements(status: dict) -> dict[int, tuple]:
    return {q["dqp"]: (q["port"], q["uplink"], q["path"]) for q in status["qps"]}


def settled(agents) -> dict:
    """Status once every QP is placed on a live path."""
    return wait_until(
        "every QP placed", lambda: (s := agents.status()) and s["qp_total"] == K_QPS
        and all(q["uplink"] for q in s["qps"]) and s, deadline_s=20)


@pytest.fixture
def topo():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF)")
    with two_vteps(N_PATHS) as t:
        yield t


@pytest.fixture
def agents(topo):
    workdir = tempfile.mkdtemp(prefix="qt-restart-")
    running = Agents(topo, workdir)
    try:
        yield running
    finally:
        try:
            running.stop()
            running.purge()
        finally:
            running.remove_pin_base()
            shutil.rmtree(workdir, ignore_errors=True)


def hooks_left(ns: str, devices) -> dict:
    """Our traces on each interface: clsact qdisc, egress filters, XDP."""
    out = {}
    for dev in devices:
        qdiscs = sh(f"tc -n {ns} qdisc show dev {dev}").stdout
        egress = sh(f"tc -n {ns} filter show dev {dev} egress", check=False).stdout
        link = sh(f"ip -n {ns} -d link show dev {dev}").stdout
        out[dev] = {"clsact": "clsact" in qdiscs, "egress": bool(egress.strip()),
                    "xdp": "xdp" in link}
    return out


def test_sigkill_and_restart_lose_nothing_and_move_nothing(topo, agents):
    compile_s = agents.start()
    with Traffic(topo) as traffic:
        before = settled(agents)
        pinned = agents.pinned_sets()
        t_kill = time.monotonic()
        agents.kill()
        rounds_at_kill = traffic.rounds
        wait_until("50 rounds of frames with no agent running",
                   lambda: traffic.rounds >= rounds_at_kill + 50, deadline_s=10)
        adopt_s = agents.start()
        after = wait_until("every QP placed after the restart",
                           lambda: (s := agents.status()) and s["qp_total"] == K_QPS and s,
                           deadline_s=20)
        end_at = time.monotonic() + 1.0
        wait_until("a second of traffic after the restart",
                   lambda: time.monotonic() > end_at, deadline_s=5)
        traffic.stop()
        assert traffic.lost() == {}
        want = {qp: {(p[1], p[0])} for qp, p in placements(before).items()}
        assert traffic.wire_since(t_kill) == want
    assert placements(after) == placements(before)
    # Adopted: the very programs (ids) and the pinned set it found.
    assert {r["prog_id"] for r in after["programs"]} == {r["prog_id"] for r in before["programs"]}
    assert agents.pinned_sets() == pinned
    print(f"\nagent start: compiling {compile_s:.2f} s, adopting {adopt_s:.2f} s; "
          f"{traffic.rounds * K_QPS} frames, none lost")


def test_upgrade_replaces_programs_and_balance_is_exact_again(topo, agents, tmp_path):
    agents.start()
    old_sets = agents.pinned_sets()
    newer = tmp_path / "bpf"
    shutil.copytree(bpfobj.BPF_DIR, newer)
    with open(newer / "include" / "consts.h", "a") as f:
        f.write("/* a newer build */\n")
    with Traffic(topo) as traffic:
        before = settled(agents)
        agents.kill()
        agents.start(bpf_dir=str(newer))
        after = settled(agents)
        t_new = time.monotonic()
        wait_until("half a second of traffic after the upgrade",
                   lambda: time.monotonic() > t_new + 0.5, deadline_s=5)
        traffic.stop()
        lost = traffic.lost()
        wire = traffic.wire_since(t_new)
    old_ids = {r["prog_id"] for r in before["programs"]}
    new_ids = {r["prog_id"] for r in after["programs"]}
    assert len(new_ids) == len(old_ids) and not new_ids & old_ids
    now_sets = agents.pinned_sets()
    assert len(now_sets) == 1 and now_sets != old_sets
    hooks = hooks_left(topo.a.vtep_ns, [VXLAN_DEV, *topo.a.uplinks])
    assert all(h == {"clsact": True, "egress": True, "xdp": h["xdp"]} for h in hooks.values())
    per_link = defaultdict(set)
    for qp, seen in wire.items():
        assert len(seen) == 1, (qp, seen)
        per_link[next(iter(seen))[0]].add(qp)
    assert max(len(q) for q in per_link.values()) == math.ceil(K_QPS / N_PATHS)
    assert lost == {}


def test_purge_leaves_no_pin_no_clsact_no_xdp(topo, agents):
    devices = [VXLAN_DEV, *topo.a.uplinks]
    agents.start()
    agents.stop()     # SIGTERM: programs stay
    assert agents.pinned_sets()
    assert any(h["egress"] for h in hooks_left(topo.a.vtep_ns, devices).values())
    done = agents.purge()
    assert done.returncode == 0, done.stderr
    assert agents.pinned_sets() == []
    assert hooks_left(topo.a.vtep_ns, devices) == {
        dev: {"clsact": False, "egress": False, "xdp": False} for dev in devices}
    assert not os.path.exists(pins.PinStore(agents.node, agents.pin_base).record_path)
