"""The agent's local control socket: one JSON request line in, one JSON reply line out.

This is the one control protocol: production serves `agent_handler`, the
tests call the same handler, and `qpagent status --json` / `flows --json`
print the `data` of its replies unchanged.

Requests (unknown commands or arguments are refused, naming them):
    {"cmd": "ping"}                    -> {"node", "pid", "version"}
    {"cmd": "status", "top": N}        N optional, 1..1000 (default agent.top_qps)
    {"cmd": "flows", "limit": N}       N optional, 1..100000 (default 50)
Replies: {"ok": true, "data": ...} or {"ok": false, "error": "one line"}.

status data:
    node, version, pid, uptime_s
    vteps: [{index, address, device, paths: [{index, uplink, gateway, hops,
            alive, ports, qps, packets, bytes}]}]
    qp_total; qps (top N by bytes): [{src, dst, dqp, vtep, path, uplink, port,
            packets, bytes, moves}]
    imbalance: {vtep address: busiest path / ceil(K/P)}
    bfd: {available, reason, peers: [FRR's peer objects]}
    replacements: {reason: count} for every reason in core.actions.REPLACEMENT_REASONS
    reaction_ms: {count, p50, p99, max}; events: [{time, kind, detail, reaction_ms}]
    warnings: [text]
    programs: [{name, hook, interface, ifindex, prog_id, run_cnt, run_time_ns}]
    parse: [{interface, hook, <one count per parse outcome>}]
    steer_events, pin_events: {event name: count}
flows data: [{interface, hook, family, proto, src, dst, sport, dport, vni, dqp,
        packets, bytes, first_seen, last_seen}] by bytes, largest first.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from pathlib import Path
from typing import Any, Callable

from . import __version__

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024        # one request line; anything longer is refused
MAX_UNIX_PATH = 107            # sun_path is 108 bytes with its NUL
SOCKET_MODE = 0o660

Handler = Callable[[dict], Any]   # request -> data; raises RequestError for a bad request


class ControlError(RuntimeError):
    """The control socket could not be served or the agent answered with an error."""


class RequestError(ControlError):
    """A request the handler refuses; its message goes back to the client."""


class AgentNotRunning(ControlError):
    """Nothing answers on the control socket."""

    def __init__(self, path: str, why: str = ""):
        self.path = path
        super().__init__(f"no agent is running (socket {path}){': ' + why if why else ''}")


class SocketInUse(ControlError):
    def __init__(self, path: str):
        self.path = path
        super().__init__(f"another qpagent is running (socket {path} answers)")


# ---------------------------------------------------------------- server

class ControlServer:
    """Serve `handler` on a unix socket from a background thread."""

    def __init__(self, path: str | os.PathLike, handler: Handler):
        self.path = str(path)
        self.handler = handler
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ControlServer":
        if len(self.path.encode()) > MAX_UNIX_PATH:
            raise ControlError(f"control socket path is longer than {MAX_UNIX_PATH} bytes: {self.path}")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.path)
        outer = self

        class _Connection(socketserver.StreamRequestHandler):
            def handle(self):
                self.connection.settimeout(5)
                try:
                    line = self.rfile.readline(MAX_REQUEST + 1)
                except OSError:
                    return
                reply = outer.answer(line)
                try:
                    self.wfile.write(json.dumps(reply, default=_jsonable).encode() + b"\n")
                except OSError:
                    pass   # the client went away; nothing to tell it

        class _Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True

        old_umask = os.umask(0o117)   # never world-accessible, not even for a moment
        try:
            self._server = _Server(self.path, _Connection)
        except OSError as exc:
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="qpagent-control", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)
        return self

    def answer(self, line: bytes) -> dict:
        """Turn one request line into one response object; never raises."""
        if len(line) > MAX_REQUEST:
            return _error(f"request longer than {MAX_REQUEST} bytes")
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _error("bad request: expected one JSON object on one line")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error('bad request: expected an object with a "cmd" string')
        try:
            return {"ok": True, "data": self.handler(request)}
        except (RequestError, ValueError) as exc:   # the request's fault, not the agent's
            return _error(str(exc))
        except Exception as exc:  # the agent must keep serving whatever one request does
            log.exception("control request %r failed", request.get("cmd"))
            return _error(f"{request['cmd']} failed inside the agent: {exc}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _remove_stale_socket(path: str) -> None:
    """Replace a socket left by a dead agent; refuse if a live one answers."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket: remove it or choose another control_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale control socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise ControlError(f"cannot check control socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise SocketInUse(path)


def _error(message: str) -> dict:
    return {"ok": False, "error": message}


def _jsonable(value):
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------- the agent's commands

def agent_handler(agent) -> Handler:
    """The one request handler of a running agent (anything with node,
    snapshot(top) and flows(limit)): production serves it, tests call it."""

    def handle(request: dict):
        cmd = request["cmd"]
        unknown = set(request) - _ARGS.get(cmd, set()) - {"cmd"}
        if cmd not in _ARGS:
            raise RequestError(f"unknown command {cmd!r} (known: {', '.join(_ARGS)})")
        if unknown:
            raise RequestError(f"{cmd}: unknown argument(s) {', '.join(sorted(unknown))}")
        if cmd == "ping":
            return {"node": agent.node, "pid": os.getpid(), "version": __version__}
        if cmd == "status":
            top = _count(request, "top", None, 1000)
            return agent.snapshot(top)
        return agent.flows(_count(request, "limit", 50, 100000))

    return handle


_ARGS = {"ping": set(), "status": {"top"}, "flows": {"limit"}}


def _count(request: dict, key: str, default: int | None, most: int) -> int | None:
    if key not in request:
        return default
    value = request[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise RequestError(f"{key!r} must be an integer 1..{most}, got {value!r}")
    return value


# ---------------------------------------------------------------- client

class ControlClient:
    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    def request(self, request: dict, timeout: float = 2) -> Any:
        """Send one request and return its data; AgentNotRunning or ControlError otherwise."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                raise AgentNotRunning(self.path) from None
            except PermissionError:
                raise ControlError(f"permission denied on {self.path} "
                                   "(run as root or as a member of the socket's group)") from None
            except OSError as exc:
                if exc.errno in (errno.ENOTSOCK, errno.ENAMETOOLONG, errno.ENOTDIR):
                    raise AgentNotRunning(self.path, exc.strerror) from None
                raise ControlError(f"cannot reach the agent on {self.path}: {exc.strerror or exc}") from None
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = _read_line(sock)
        except socket.timeout:
            raise ControlError(f"the agent on {self.path} did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"lost the connection to the agent on {self.path}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        try:
            response = json.loads(reply)
        except ValueError:
            raise ControlError(f"the agent on {self.path} sent a malformed answer") from None
        if not isinstance(response, dict) or "ok" not in response:
            raise ControlError(f"the agent on {self.path} sent a malformed answer")
        if not response["ok"]:
            raise ControlError(f"the agent refused: {response.get('error', 'no reason given')}")
        return response.get("data")


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)
