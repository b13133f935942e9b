"""The `qpagent` command line against a real control socket served by a fixed handler."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from qpagent.bpfobj import BpfUnavailable
from qpagent.cli import main
from qpagent.control import ControlServer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# What a real agent answered after traffic and a cut uplink
# (fixtures/capture_agent_status.py regenerates both; then redo STATUS_TEXT).
SNAPSHOT = json.loads((FIXTURES / "agent_status.json").read_text())

STATUS_TEXT = """\
qpagent 0.1.0 on qt2-b41b43-vtepA  pid 14639  up 7s  QPs 5

Programs
PROGRAM         HOOK         INTERFACE    ID  RUNS  NS/RUN
qp_steer        tc egress    vxlan100   2539    10    2466
probe_sent      tc egress    up0        2540    18     507
probe_sent      tc egress    up1        2540    18     507
path_pin        tc egress    up0        2537    18    1034
path_pin        tc egress    up1        2537    18    1034
path_probe      tc ingress   up0        2538     9     437
path_probe      tc ingress   up1        2538     9     437
flow_stats_tc   tc egress    up0        2535    16    2185
flow_stats_tc   tc egress    up1        2535    16    2185
flow_stats_xdp  xdp generic  up0        2536     9     851
flow_stats_xdp  xdp generic  up1        2536     9     851

Paths
VTEP      PATH  UPLINK  GATEWAY    STATE  QPS  PACKETS  BYTES  PORTS
10.0.0.2     0  up0     10.10.0.2  DOWN     0        0    0 B  49155,49158-49160,49162,49164-49166,49168-49170,49174-49175,49182,49184-49185
10.0.0.2     1  up1     10.10.1.2  up       5        0    0 B  49152-49167
Imbalance (busiest/best possible, 1.00 = even): 10.0.0.2 1.00

QPs (top 5 of 5 by bytes)
SRC -> DST                      DQP  VTEP       PORT  PATH  UPLINK  PACKETS  BYTES  MOVES
192.168.100.1 -> 192.168.100.2  260  10.0.0.2  49156     1  up1           2  244 B      1
192.168.100.1 -> 192.168.100.2  259  10.0.0.2  49153     1  up1           2  244 B      0
192.168.100.1 -> 192.168.100.2  258  10.0.0.2  49155     1  up1           2  244 B      1
192.168.100.1 -> 192.168.100.2  257  10.0.0.2  49152     1  up1           2  244 B      0
192.168.100.1 -> 192.168.100.2  256  10.0.0.2  49154     1  up1           2  244 B      1

BFD: unavailable (FRR not asked: frr.enabled = false)

Liveness: off

Reaction (event -> maps): 1 samples  p50 4.8 ms  p99 4.8 ms  max 4.8 ms
Placements: dead_path 3  liveness 0  path_up 0  port_remap 0  rebalance 0

Last 2 events
TIME          KIND      REACTION  DETAIL
11:14:42.301  start            -  attached 9 programs; 1 remote VTEPs
11:14:42.662  reaction    4.8 ms  link_down: 3 QP moves

Steer: hash_set 10  no_live_path 0  no_vtep 0  placed_dead 0  placed_new 5
Pin: fib_failed 0  not_vxlan 6  on_fib_link 10  redirected 1  redirected_neigh 1
Replies: ack 0  nak 0  unpaired 0
Go-back NAKs: sent 0  no_ack_kept 0  not_an_ack 0  no_port 0  send_failed 0

Parse outcomes
INTERFACE  HOOK         ROCE  NOT_ROCE  NOT_IP  TRUNCATED  FRAGMENT  IPV6_EXT  BAD_BTH
up0        xdp_ingress     0         0       1          0         0         0        0
up0        tc_egress       3         0       1          0         0         1        0
up0        path_pin        5         0       1          0         0         1        0
up0        path_probe      0         0       1          0         0         0        0
up1        xdp_ingress     0         6       2          0         0         0        0
up1        tc_egress       7         0       2          0         0         2        0
up1        path_pin        7         0       2          0         0         2        0
up1        path_probe      0         6       2          0         0         0        0
vxlan100   qp_steer       10         0       0          0         0         0        0
"""


def recent_flows(now: float) -> list[dict]:
    """The captured flows, moved in time so the busiest was last seen 1 s ago."""
    flows = json.loads((FIXTURES / "agent_flows.json").read_text())
    shift = now - 1.0 - flows[0]["last_seen"]
    return [dict(f, first_seen=f["first_seen"] + shift, last_seen=f["last_seen"] + shift)
            for f in flows]


NOW = time.time()
FLOWS = recent_flows(NOW)


@pytest.fixture
def utc(monkeypatch):
    """Event times print in local time; pin it so the expected text is fixed."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.fixture
def agent_socket(tmp_path):
    """A control socket answering like an agent; yields (path, requests seen)."""
    path = str(tmp_path / "qt5-cli.sock")
    seen = []

    def handler(request):
        seen.append(request)
        if request["cmd"] == "status":
            return SNAPSHOT
        if request["cmd"] == "flows":
            return FLOWS[:request["limit"]]
        return None

    server = ControlServer(path, handler).start()
    try:
        yield path, seen
    finally:
        server.stop()


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env or {})


def test_status_human_output(agent_socket, utc):
    path, seen = agent_socket
    result = invoke("status", "--socket", path, "--top", "3")
    assert (result.exit_code, result.output) == (0, STATUS_TEXT)
    assert seen == [{"cmd": "status", "top": 3}]


def test_status_json_is_the_raw_data(agent_socket):
    path, _ = agent_socket
    result = invoke("status", "--socket", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == SNAPSHOT


def test_flows_human_output(agent_socket):
    path, seen = agent_socket
    result = invoke("flows", "--socket", path, "--limit", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:-1] for line in lines] == [
        ["INTERFACE", "HOOK", "PROTO", "SOURCE", "DESTINATION", "VNI", "DQP", "PACKETS", "BYTES"],
        # The outer VXLAN flow coming back from vtepB, counted by XDP.
        ["up1", "xdp_ingress", "udp", "10.0.0.2:64159", "10.0.0.1:4789", "100", "-", "6",
         "1.2", "KiB"],
        # One QP's outer flow leaving, counted at tc egress with VNI and dest QP.
        ["up1", "tc_egress", "udp", "10.0.0.1:49152", "10.0.0.2:4789", "100", "257", "2",
         "344", "B"],
    ]
    # Idle time: seconds since last seen, a little more than when the data was made.
    idle = [float(line.split()[-1].rstrip("s")) for line in lines[1:]]
    want = [NOW - f["last_seen"] for f in FLOWS[:2]]
    since_made = time.time() - NOW + 0.1
    assert all(w <= i <= w + since_made for i, w in zip(idle, want)), (idle, want)
    assert seen == [{"cmd": "flows", "limit": 2}]


def test_flows_json(agent_socket):
    path, _ = agent_socket
    result = invoke("flows", "--socket", path, "--json", "--limit", "1")
    assert (result.exit_code, json.loads(result.output)) == (0, FLOWS[:1])


def test_socket_from_environment(agent_socket):
    path, seen = agent_socket
    result = invoke("status", "--json", env={"QPAGENT_SOCKET": path})
    assert result.exit_code == 0, result.output
    assert seen == [{"cmd": "status", "top": 20}]


def test_no_daemon_exit_1_and_message(tmp_path):
    path = str(tmp_path / "qt5-none.sock")
    for command in ("status", "flows"):
        result = invoke(command, "--socket", path)
        assert (result.exit_code, result.output) == \
            (1, f"qpagent: no agent is running (socket {path})\n")


def test_node_shortcut_names_the_lab_socket():
    result = invoke("status", "--node", "qt5-nosuchnode")
    assert (result.exit_code, result.output) == \
        (1, "qpagent: no agent is running (socket /run/qpagent/qt5-nosuchnode.sock)\n")


def test_socket_and_node_together_is_a_usage_error():
    result = invoke("status", "--node", "a", "--socket", "/x.sock")
    assert result.exit_code == 2
    assert "give either --socket or --node, not both" in result.output


def test_bad_top_is_refused_before_asking():
    result = invoke("status", "--top", "0", "--socket", "/nonexistent/qt5.sock")
    assert result.exit_code == 2
    assert "Invalid value for '--top'" in result.output


def test_agent_error_is_one_line(tmp_path):
    path = str(tmp_path / "qt5-err.sock")

    def handler(request):
        raise KeyError("vteps")

    with ControlServer(path, handler):
        result = invoke("status", "--socket", path)
    assert (result.exit_code, result.output) == \
        (1, "qpagent: the agent refused: status failed inside the agent: 'vteps'\n")


def test_check_config_prints_effective_config(tmp_path):
    path = tmp_path / "qpagent.toml"
    path.write_text('[agent]\nnode = "leaf1"\n[steer]\nvxlan_devices = ["vxlan100"]\n'
                    'uplinks = ["eth1", "eth2"]\nports_per_path = 4\n')
    result = invoke("check-config", str(path))
    assert result.exit_code == 0, result.output
    assert result.output == f"""\
# {path}: valid; effective configuration:
# VTEP mode: steers RoCE QPs on vxlan100 over uplinks eth1, eth2
[agent]
metrics_address = "127.0.0.1:9464"
control_socket = "/run/qpagent/qpagent.sock"
top_qps = 20
poll_interval = 0.2
bpf_stats = true
node = "leaf1"
realtime_priority = 0

[steer]
vxlan_devices = ["vxlan100"]
uplinks = ["eth1", "eth2"]
source_ports = [49152, 65535]
ports_per_path = 4
rebalance = true
end_to_end = false
capacities = {{}}

[count]
xdp = []
tc_egress = []
xdp_mode = "generic"

[frr]
enabled = "auto"
namespace = ""
vtysh = "vtysh"

[liveness]
enabled = false
interval_ms = 10
misses = 3
rtt_margin_ms = 10
budget_pps = 1000
hold_down_ms = 1000
dscp = 48

[repair]
retransmit = false
nak = false
stall_ms = 0
holddown_ms = 100
go_back = true
"""


def test_check_config_error_is_one_line_exit_2(tmp_path):
    path = tmp_path / "qpagent.toml"
    path.write_text('[steer]\nvxlan_devices = ["vxlan100"]\nuplinks = ["eth1"]\nsource_ports = [9, 3]\n')
    result = invoke("check-config", str(path))
    assert (result.exit_code, result.output) == (2, (
        f"qpagent: {path}:4: steer.source_ports: expected [lo, hi] with "
        "1 <= lo < hi <= 65535, got [9, 3]\n"))


def test_run_with_bad_config_exits_2_without_traceback(tmp_path):
    path = tmp_path / "qpagent.toml"
    path.write_text("[steer]\nuplinks = [\"eth1\"]\n")
    result = invoke("run", "--config", str(path))
    assert (result.exit_code, result.output) == \
        (2, f"qpagent: {path}:1: steer.vxlan_devices: required when steer.uplinks is set "
            "(VTEP mode); for host mode (counting only) leave both out and list interfaces "
            "under [count]\n")


@pytest.fixture
def world_readable_config():
    """A valid config in a directory an unprivileged user can read."""
    directory = tempfile.mkdtemp(prefix="qt5-cli-")
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "qpagent.toml")
        with open(path, "w") as out:
            out.write('[steer]\nvxlan_devices = ["vxlan100"]\nuplinks = ["eth1"]\n')
        os.chmod(path, 0o644)
        yield path
    finally:
        shutil.rmtree(directory)


def test_run_needs_root(world_readable_config):
    command = [sys.executable, "-m", "qpagent.cli", "run", "--config", world_readable_config]
    if os.geteuid() == 0:   # drop to an unprivileged user for real
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    assert (result.returncode, result.stdout, result.stderr) == \
        (1, "", "qpagent: qpagent run needs root (BPF, tc, XDP)\n")


class UnloadableAgent:
    """Stands in for the daemon when the kernel refuses the BPF programs,
    a failure this test cannot cause on a working machine."""

    def __init__(self, config):
        self.config = config

    def run(self):
        raise BpfUnavailable("the kernel refused qp_steer (qp_steer.c): Permission denied")


class AgentWithUserMessage(UnloadableAgent):
    def run(self):
        error = RuntimeError("netlink: ENODEV")
        error.user_message = "steer.vxlan_devices: no interface named vxlan100"
        raise error


class BuggyAgent(UnloadableAgent):
    def run(self):
        raise KeyError("bug")


@pytest.mark.skipif(os.geteuid() != 0, reason="run refuses to start without root")
@pytest.mark.parametrize("agent_class, expected", [
    (UnloadableAgent, "qpagent: the kernel refused qp_steer (qp_steer.c): Permission denied\n"),
    (AgentWithUserMessage, "qpagent: steer.vxlan_devices: no interface named vxlan100\n"),
])
def test_run_turns_agent_failures_into_one_line(monkeypatch, world_readable_config,
                                                agent_class, expected):
    monkeypatch.setitem(sys.modules, "qpagent.daemon", types.SimpleNamespace(Agent=agent_class))
    result = invoke("run", "--config", world_readable_config)
    assert (result.exit_code, result.output) == (1, expected)


@pytest.mark.skipif(os.geteuid() != 0, reason="run refuses to start without root")
def test_run_keeps_the_traceback_of_a_bug(monkeypatch, world_readable_config):
    monkeypatch.setitem(sys.modules, "qpagent.daemon", types.SimpleNamespace(Agent=BuggyAgent))
    result = invoke("run", "--config", world_readable_config)
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_unexpected_answer_is_one_line(tmp_path):
    path = str(tmp_path / "qt5-odd.sock")
    with ControlServer(path, lambda request: ["not", "a", "snapshot"]):
        result = invoke("status", "--socket", path)
    assert result.exit_code == 1
    assert result.output.startswith("qpagent: the agent sent data this qpagent cannot show")
    assert result.output.endswith("try --json\n") and result.output.count("\n") == 1


def test_end_to_end_paths_show_the_hops_beyond_the_gateway():
    from qpagent.render import _paths
    snap = {"vteps": [{"address": "10.255.0.9", "paths": [
        {"index": 0, "uplink": "eth1", "gateway": "10.0.0.1", "alive": True, "qps": 1,
         "packets": 10, "bytes": 1000, "ports": [49153],
         "hops": ["10.0.0.1", "10.0.0.12", "10.0.0.39", "10.0.0.29"]},
        {"index": 1, "uplink": "eth2", "gateway": "10.0.0.3", "alive": False, "qps": 0,
         "packets": 0, "bytes": 0, "ports": [49152], "hops": []}]}],
        "imbalance": {"10.255.0.9": 1.0}}
    lines = _paths(snap).splitlines()
    assert lines[1].split() == ["VTEP", "PATH", "UPLINK", "GATEWAY", "THEN", "STATE", "QPS",
                                "PACKETS", "BYTES", "PORTS"]
    assert lines[2].split() == ["10.255.0.9", "0", "eth1", "10.0.0.1",
                                "10.0.0.12", ">", "10.0.0.39", ">", "10.0.0.29",
                                "up", "1", "10", "1000", "B", "49153"]
    assert lines[3].split() == ["10.255.0.9", "1", "eth2", "10.0.0.3", "-", "DOWN", "0",
                                "0", "0", "B", "49152"]
