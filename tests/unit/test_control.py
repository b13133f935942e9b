"""The control socket: JSON request/response over a real unix socket."""

import json
import os
import socket
import stat
import threading

import pytest

from qpagent import __version__
from qpagent.control import (AgentNotRunning, ControlClient, ControlError, ControlServer,
                             SocketInUse, agent_handler)


class FixedAgent:
    """The two calls the control socket makes of the agent, with fixed answers."""

    node = "qt5-node"

    def __init__(self):
        self.asked = []

    def snapshot(self, top_n):
        self.asked.append(("snapshot", top_n))
        return {"node": "qt5-node", "qp_total": 3, "qps": [{"dqp": 17}][:top_n]}

    def flows(self, limit):
        self.asked.append(("flows", limit))
        return [{"src": "10.0.0.1", "dst": "10.0.0.2"}]


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "qt5.sock")   # parent does not exist yet


@pytest.fixture
def served(sock_path):
    agent = FixedAgent()
    server = ControlServer(sock_path, agent_handler(agent)).start()
    try:
        yield server, agent
    finally:
        server.stop()


def raw_exchange(path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2)
        conn.connect(path)
        conn.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def test_status_round_trip(served, sock_path):
    _server, agent = served
    data = ControlClient(sock_path).request({"cmd": "status", "top": 1})
    assert data == {"node": "qt5-node", "qp_total": 3, "qps": [{"dqp": 17}]}
    assert agent.asked == [("snapshot", 1)]


def test_flows_round_trip(served, sock_path):
    _server, agent = served
    assert ControlClient(sock_path).request({"cmd": "flows", "limit": 7}) == \
        [{"src": "10.0.0.1", "dst": "10.0.0.2"}]
    assert agent.asked == [("flows", 7)]


def test_ping_names_node_pid_and_version(served, sock_path):
    assert ControlClient(sock_path).request({"cmd": "ping"}) == \
        {"node": "qt5-node", "pid": os.getpid(), "version": __version__}


def test_status_without_top_leaves_the_number_to_the_agent(served, sock_path):
    _server, agent = served
    ControlClient(sock_path).request({"cmd": "status"})
    assert agent.asked == [("snapshot", None)]


def test_socket_file_mode_and_parent_created(served, sock_path):
    mode = os.stat(sock_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


@pytest.mark.parametrize("payload, expected", [
    (b'{"cmd": "reboot"}\n',
     {"ok": False, "error": "unknown command 'reboot' (known: ping, status, flows)"}),
    (b'{"cmd": "status", "top": 0}\n',
     {"ok": False, "error": "'top' must be an integer 1..1000, got 0"}),
    (b'{"cmd": "flows", "limit": "all"}\n',
     {"ok": False, "error": "'limit' must be an integer 1..100000, got 'all'"}),
    (b'{"cmd": "status", "limit": 3}\n',
     {"ok": False, "error": "status: unknown argument(s) limit"}),
    (b'not json\n', {"ok": False, "error": "bad request: expected one JSON object on one line"}),
    (b'[1, 2]\n', {"ok": False, "error": 'bad request: expected an object with a "cmd" string'}),
])
def test_bad_requests_get_an_error_reply(served, sock_path, payload, expected):
    assert raw_exchange(sock_path, payload) == expected


def test_client_raises_the_agents_refusal(served, sock_path):
    with pytest.raises(ControlError, match="the agent refused: unknown command 'x'"):
        ControlClient(sock_path).request({"cmd": "x"})


def test_handler_failure_is_reported_and_server_keeps_serving(sock_path):
    def handler(request):
        if request["cmd"] == "status":
            raise KeyError("vteps")
        return "pong"

    with ControlServer(sock_path, handler):
        assert raw_exchange(sock_path, b'{"cmd": "status"}\n') == \
            {"ok": False, "error": "status failed inside the agent: 'vteps'"}
        assert ControlClient(sock_path).request({"cmd": "ping"}) == "pong"


def test_stop_removes_the_socket(sock_path):
    server = ControlServer(sock_path, lambda request: None).start()
    assert os.path.exists(sock_path)
    server.stop()
    assert not os.path.exists(sock_path)


def test_no_daemon_is_agent_not_running(tmp_path):
    path = str(tmp_path / "qt5-absent.sock")
    with pytest.raises(AgentNotRunning) as caught:
        ControlClient(path).request({"cmd": "ping"})
    assert str(caught.value) == f"no agent is running (socket {path})"


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "qt5-stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)          # a socket file nobody listens on: a dead agent's
    dead.close()
    with pytest.raises(AgentNotRunning):
        ControlClient(path).request({"cmd": "ping"})
    with ControlServer(path, lambda request: "alive"):
        assert ControlClient(path).request({"cmd": "ping"}) == "alive"


def test_live_socket_is_refused(sock_path, served):
    with pytest.raises(SocketInUse) as caught:
        ControlServer(sock_path, lambda request: None).start()
    assert str(caught.value) == f"another qpagent is running (socket {sock_path} answers)"
    # ... and the running one is untouched.
    assert ControlClient(sock_path).request({"cmd": "ping"})["pid"] == os.getpid()


def test_a_regular_file_is_not_replaced(tmp_path):
    path = tmp_path / "qt5-file.sock"
    path.write_text("keep me")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(str(path), lambda request: None).start()
    assert path.read_text() == "keep me"


def test_silent_agent_times_out(tmp_path):
    path = str(tmp_path / "qt5-silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)   # accepts into the backlog, never answers
    try:
        with pytest.raises(ControlError, match=r"did not answer within 0.2 s"):
            ControlClient(path).request({"cmd": "ping"}, timeout=0.2)
    finally:
        listener.close()


def test_large_answer_arrives_whole(sock_path):
    flows = [{"src": f"10.0.{i // 256}.{i % 256}", "bytes": i} for i in range(20000)]
    with ControlServer(sock_path, lambda request: flows):
        assert ControlClient(sock_path).request({"cmd": "flows"}) == flows


def test_concurrent_clients(served, sock_path):
    answers, errors = [], []

    def ask():
        try:
            answers.append(ControlClient(sock_path).request({"cmd": "status", "top": 5}))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert len(answers) == 8


def test_handler_value_error_is_the_requests_fault(sock_path):
    def handler(request):
        raise ValueError(f"unknown command: {request['cmd']!r}")

    with ControlServer(sock_path, handler):
        assert raw_exchange(sock_path, b'{"cmd": "nope"}\n') == \
            {"ok": False, "error": "unknown command: 'nope'"}


def test_socket_path_too_long_is_a_clear_error(tmp_path):
    path = str(tmp_path / ("q" * 120) / "qt5.sock")
    with pytest.raises(ControlError, match="control socket path is longer than 107 bytes"):
        ControlServer(path, lambda request: None).start()
    assert not (tmp_path / ("q" * 120)).exists()
