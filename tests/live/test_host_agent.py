"""A host agent and a leaf agent count the same queue pairs alike.

    hostA [qpagent, host mode: eth0] --> vtepA [qpagent: vxlan100, uplinks] ==> vtepB --> hostB

RoCEv2 frames for K queue pairs leave hostA, each QP with its own number of
frames and its own frame size. The host agent counts them on eth0 (flow_stats
tc egress; nothing else is attached there), the leaf agent in qp_steer's QP
table and again in its uplinks' outer flow entries (VNI and inner QP). All
three must agree packet for packet, the host's answer through its control
socket and its Prometheus metrics alike. Both agents are stopped and purged
afterwards: nothing is left on any interface, nothing pinned.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processes import stop_group, wait_until
from qpagent import netnsutil, pins
from roce_wire import roce_frame, send_frames
from twovtep import VXLAN_DEV, sh, two_vteps

K_QPS = 8
FIRST_QP = 0x300
VXLAN_OVERHEAD = 50          # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
HOST_METRICS = "127.0.0.1:9464"   # inside hostA's own namespace: nothing else listens there
QPAGENT = str(Path(sys.executable).parent / "qpagent")

HOST_CONFIG = """\
[agent]
node = "{node}"
metrics_address = "{metrics}"
control_socket = "{socket}"
top_qps = 100
[count]
xdp = ["eth0"]
tc_egress = ["eth0"]
"""

LEAF_CONFIG = """\
[agent]
node = "{node}"
metrics_address = ""
control_socket = "{socket}"
top_qps = 100
[steer]
vxlan_devices = ["{vxlan}"]
uplinks = [{uplinks}]
[count]
tc_egress = [{uplinks}]
[frr]
enabled = false
[liveness]
enabled = false
"""


def frames_of(qp_index: int) -> int:
    return 20 + 3 * qp_index          # every QP a count of its own: no two can be swapped


def payload_of(qp_index: int) -> bytes:
    return bytes(64 + 16 * qp_index)  # and a size of its own


class Agent:
    """One `qpagent run` in one namespace, with its own node name and pin base."""

    def __init__(self, ns: str, workdir: str, role: str, config: str):
        self.ns, self.role = ns, role
        self.node = f"qt-{role}-{uuid.uuid4().hex[:6]}"
        self.pin_base = f"/run/qt-pins-{uuid.uuid4().hex[:8]}"
        self.socket = os.path.join(workdir, f"{role}.sock")
        self.config = os.path.join(workdir, f"{role}.toml")
        Path(self.config).write_text(config.format(node=self.node, socket=self.socket))
        self.log_path = os.path.join(workdir, f"{role}.log")
        self.proc = None

    def env(self) -> dict:
        return dict(os.environ, QPAGENT_PIN_BASE=self.pin_base)

    def start(self) -> None:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, QPAGENT, "run", "--config", self.config],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env())

    def ask(self, *args: str) -> dict | list | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.role} agent exited with {self.proc.returncode}:\n"
                                 + Path(self.log_path).read_text())
        done = subprocess.run([QPAGENT, *args, "--socket", self.socket, "--json"],
                              capture_output=True, text=True, timeout=10)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def status(self) -> dict | None:
        return self.ask("status")

    def flows(self) -> list[dict]:
        return self.ask("flows", "--limit", "10000") or []

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def purge(self) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, QPAGENT, "purge",
                               "--config", self.config],
                              capture_output=True, text=True, timeout=60, env=self.env())

    def remove_pin_base(self) -> None:
        pins.remove_base(self.pin_base)


@pytest.fixture
def topo():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF)")
    with two_vteps(2) as t:
        yield t


@pytest.fixture
def agents(topo):
    workdir = tempfile.mkdtemp(prefix="qt-hostagent-")
    uplinks = ", ".join(f'"{u}"' for u in topo.a.uplinks)
    host = Agent(topo.a.host_ns, workdir, "host",
                 HOST_CONFIG.replace("{metrics}", HOST_METRICS))
    leaf = Agent(topo.a.vtep_ns, workdir, "leaf",
                 LEAF_CONFIG.replace("{vxlan}", VXLAN_DEV).replace("{uplinks}", uplinks))
    try:
        yield host, leaf
    finally:
        try:
            for agent in (host, leaf):
                agent.stop()
                agent.purge()
        finally:
            for agent in (host, leaf):
                agent.remove_pin_base()
            shutil.rmtree(workdir, ignore_errors=True)


def send_traffic(topo) -> dict[int, tuple[int, int]]:
    """K QPs from hostA to hostB; returns dqp -> (frames, bytes) sent."""
    a, b = topo.a, topo.b
    sent, frames = {}, []
    for i in range(K_QPS):
        dqp = FIRST_QP + i
        one = [roce_frame(a.host_mac, b.host_mac, a.host_ip, b.host_ip, dqp, psn=psn,
                          payload=payload_of(i)) for psn in range(frames_of(i))]
        sent[dqp] = (len(one), sum(len(f) for f in one))
        frames += one
    send_frames(a.host_ns, "eth0", frames)
    return sent


def per_qp(rows, keep) -> dict[int, tuple[int, int]]:
    """Sum packets and bytes by destination QP over the rows `keep` accepts."""
    out = defaultdict(lambda: [0, 0])
    for row in rows:
        if row.get("dqp") is not None and keep(row):
            out[row["dqp"]][0] += row["packets"]
            out[row["dqp"]][1] += row["bytes"]
    return {dqp: tuple(v) for dqp, v in sorted(out.items())}


def host_metrics(ns: str) -> dict[int, tuple[int, int]]:
    """The host agent's per-QP counters as Prometheus scrapes them (tc egress)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with netnsutil.enter(ns):
        text = opener.open(f"http://{HOST_METRICS}/metrics", timeout=5).read().decode()
    out = defaultdict(lambda: [0, 0])
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            column = {"qpagent_flow_qp_packets_total": 0, "qpagent_flow_qp_bytes_total": 1}
            if sample.name in column and sample.labels["hook"] == "tc_egress":
                out[int(sample.labels["dqp"])][column[sample.name]] += int(sample.value)
    return {dqp: tuple(v) for dqp, v in sorted(out.items())}


def hooks_left(ns: str, devices) -> dict:
    out = {}
    for dev in devices:
        qdiscs = sh(f"tc -n {ns} qdisc show dev {dev}").stdout
        link = sh(f"ip -n {ns} -d link show dev {dev}").stdout
        out[dev] = {"clsact": "clsact" in qdiscs, "xdp": "xdp" in link}
    return out


def test_host_and_leaf_count_every_qp_alike(topo, agents):
    host, leaf = agents
    host.start()
    leaf.start()
    host_status = wait_until("the host agent's control socket", host.status, deadline_s=120)
    wait_until("the leaf agent's control socket", leaf.status, deadline_s=120)

    # Host mode: counters on eth0 only, no steering, no paths.
    assert host_status["mode"] == "host"
    assert sorted((p["name"], p["hook"], p["interface"]) for p in host_status["programs"]) == [
        ("flow_stats_tc", "tc egress", "eth0"), ("flow_stats_xdp", "xdp generic", "eth0")]

    sent = send_traffic(topo)
    want_packets = {dqp: n for dqp, (n, _) in sent.items()}

    def host_counts():
        return per_qp(host.flows(), lambda r: r["interface"] == "eth0" and r["hook"] == "tc_egress")

    def leaf_qp_table():
        return {q["dqp"]: (q["packets"], q["bytes"]) for q in leaf.status()["qps"]}

    def leaf_outer():
        return per_qp(leaf.flows(), lambda r: r["interface"] in topo.a.uplinks
                      and r["hook"] == "tc_egress" and r["vni"] == 100)

    def packets(counts):
        return {dqp: n for dqp, (n, _) in counts.items()}

    for name, read in (("host", host_counts), ("leaf qp_table", leaf_qp_table),
                       ("leaf outer flows", leaf_outer)):
        wait_until(f"every frame counted by the {name}",
                   lambda: packets(read()) == want_packets, deadline_s=10)

    on_host = host_counts()
    assert on_host == sent                      # packets and bytes, QP by QP
    assert leaf_qp_table() == on_host           # the same frames, before encapsulation
    assert leaf_outer() == {dqp: (n, b + VXLAN_OVERHEAD * n) for dqp, (n, b) in on_host.items()}
    assert host_metrics(topo.a.host_ns) == on_host

    status = host.status()
    assert status["flow_qp_total"] == K_QPS
    assert {(q["dqp"], q["packets"]) for q in status["flow_qps"]
            if q["hook"] == "tc_egress"} == set(want_packets.items())
    text = subprocess.run([QPAGENT, "status", "--socket", host.socket],
                          capture_output=True, text=True, timeout=10).stdout
    assert text.splitlines()[0].endswith(f"host mode  QP flows {K_QPS}")
    assert text.splitlines()[1].startswith("host mode: counts flows on eth0")
    print(f"\n{K_QPS} QPs, {sum(want_packets.values())} frames: host eth0, leaf qp_table and "
          f"leaf uplinks agree QP by QP\n{text}")


def test_host_agent_leaves_nothing_after_purge(topo, agents):
    host, _ = agents
    host.start()
    wait_until("the host agent's control socket", host.status, deadline_s=120)
    assert hooks_left(topo.a.host_ns, ["eth0"]) == {"eth0": {"clsact": True, "xdp": True}}
    host.stop()                      # SIGTERM: the counters stay attached, as on a VTEP
    assert hooks_left(topo.a.host_ns, ["eth0"]) == {"eth0": {"clsact": True, "xdp": True}}
    done = host.purge()
    assert done.returncode == 0, done.stderr
    assert hooks_left(topo.a.host_ns, ["eth0"]) == {"eth0": {"clsact": False, "xdp": False}}
    assert pins.PinStore(host.node, host.pin_base).digests() == []
