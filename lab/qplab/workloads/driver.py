"""Runs a collective on a set of hosts: one worker process per host (inside
the host's network namespace), queue pairs between every pair of hosts the
schedule connects, iterations timed and every message verified.
"""
from __future__ import annotations

import json
import os
import random
import selectors
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from . import schedules as sch
from .transport import choose_sport
from .worker import EngineConfig


class EngineError(RuntimeError):
    """A worker failed, answered an error or did not finish in time."""


class QpInError(EngineError):
    """A queue pair ran out of retries and is in the error state: the job
    failed, as an RC job does. `qps` lists the QPs in error (host, qpn,
    peer, error, error_at); `result` is what ran before, when the caller
    filled it in (run_collective does)."""

    def __init__(self, host: str, reply: dict):
        self.host = host
        self.reply = reply
        self.qps = [{"host": host, "qpn": q["qpn"], "peer": q["peer"], "sport": q["sport"],
                     "error": q["error"], "error_at": q.get("error_at"),
                     "timeouts": q["tx"]["timeouts"], "retries": q["tx"]["retries"]}
                    for q in reply.get("qps", []) if q.get("error")]
        self.result: dict | None = None
        super().__init__(f"job failed: {reply.get('error')}")


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    netns: str | None = None     # None: the current namespace
    dc: str = ""


@dataclass
class QpInfo:
    src: str
    dst: str
    lqpn: int
    rqpn: int
    sport: int
    index: int                   # which of the K QPs of the connection


class _WorkerProc:
    """A worker and its JSON-lines channel."""

    def __init__(self, host: Host, stderr):
        cmd = [sys.executable, "-m", "qplab.workloads.worker"]
        if host.netns:
            cmd = ["ip", "netns", "exec", host.netns] + cmd
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.host = host
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, env=env)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise EngineError(f"worker on {self.host.name} exited (rc={self.proc.poll()})") from None

    def read_lines(self) -> list[dict]:
        try:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return []
        if not chunk:
            raise EngineError(f"worker on {self.host.name} exited (rc={self.proc.wait()})")
        self._buf += chunk
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=3)
            except (EngineError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


@dataclass
class Engine:
    hosts: list[Host]
    config: EngineConfig = field(default_factory=EngineConfig)
    qps_per_conn: int = 4
    sport_policy: str = "qpn"
    fixed_sport: int = 0xC000
    seed: int = 1
    stderr_path: str | None = None

    def __post_init__(self):
        if self.qps_per_conn < 1:
            raise ValueError("qps_per_conn must be at least 1")
        choose_sport(self.sport_policy, 1, 1)        # validates the policy name
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names repeat: {names}")
        self.by_name = {h.name: h for h in self.hosts}
        self.workers: dict[str, _WorkerProc] = {}
        self.qps: list[QpInfo] = []
        self.connected: set[frozenset] = set()
        rng = random.Random(self.seed)
        # QP numbers as an HCA hands them out: distinct per host, not small.
        self._qpn_pool = {h.name: iter(rng.sample(range(0x100, 0xFFFFFF), 4096)) for h in self.hosts}
        self._stderr = None
        self.broken: str | None = None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "Engine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self._stderr = open(self.stderr_path, "ab") if self.stderr_path else None
        try:
            for h in self.hosts:
                self.workers[h.name] = _WorkerProc(h, self._stderr)
            for i, h in enumerate(self.hosts):
                self.workers[h.name].send({"cmd": "init", "ip": h.ip, "seed": self.seed * 1000 + i,
                                           "config": asdict(self.config)})
            self._collect({h.name for h in self.hosts}, timeout=20)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.workers.clear()
        if self._stderr:
            self._stderr.close()
            self._stderr = None

    def _collect(self, names: set[str], timeout: float) -> dict[str, dict]:
        """Wait for one reply from each named worker."""
        sel = selectors.DefaultSelector()
        for n in names:
            sel.register(self.workers[n].proc.stdout, selectors.EVENT_READ, n)
        replies: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(replies) < len(names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(names - replies.keys())
                    raise EngineError(f"no answer within {timeout:.0f} s from {', '.join(missing)}")
                for key, _ in sel.select(min(left, 1.0)):
                    for msg in self.workers[key.data].read_lines():
                        if not msg.get("ok"):
                            # The other workers' answers are still under way:
                            # this engine cannot run another iteration.
                            self.broken = f"{key.data}: {msg.get('error')}"
                            if any(q.get("error") for q in msg.get("qps") or ()):
                                raise QpInError(key.data, msg)
                            raise EngineError(self.broken)
                        replies[key.data] = msg
                        sel.unregister(key.fileobj)
                        break
        finally:
            sel.close()
        return replies

    # -- queue pairs -----------------------------------------------------------
    def connect(self, pairs) -> None:
        """K queue pairs between each pair of hosts (either order) not yet connected."""
        todo: dict[str, list[dict]] = {}
        for a, b in pairs:
            key = frozenset((a, b))
            if a == b or key in self.connected:
                continue
            for name in (a, b):
                if name not in self.by_name:
                    raise ValueError(f"unknown host {name!r}")
            self.connected.add(key)
            for k in range(self.qps_per_conn):
                qa, qb = next(self._qpn_pool[a]), next(self._qpn_pool[b])
                sport = choose_sport(self.sport_policy, qa, qb, self.fixed_sport)
                ha, hb = self.by_name[a], self.by_name[b]
                todo.setdefault(a, []).append({"qpn": qa, "peer": b, "peer_ip": hb.ip, "rqpn": qb, "sport": sport})
                todo.setdefault(b, []).append({"qpn": qb, "peer": a, "peer_ip": ha.ip, "rqpn": qa, "sport": sport})
                self.qps.append(QpInfo(a, b, qa, qb, sport, k))
        for name, qps in todo.items():
            self.workers[name].send({"cmd": "connect", "qps": qps})
        if todo:
            self._collect(set(todo), timeout=10)

    # -- running -------------------------------------------------------------
    def run_iteration(self, schedule: sch.Schedule, iteration: int, msg_size: int,
                      timeout: float = 120.0) -> dict[str, dict]:
        """One iteration of `schedule` on every host; the workers' replies by host.
        QpInError when a queue pair went to the error state."""
        if self.broken:
            raise EngineError(f"the engine failed earlier ({self.broken}); start a new one")
        self.connect({(t.src, t.dst) for step in schedule for t in step})
        plans = {h: [{"sends": [], "recvs": []} for _ in schedule] for h in self.by_name}
        for s, step in enumerate(schedule):
            for t in step:
                if t.nbytes:
                    plans[t.src][s]["sends"].append([t.dst, t.nbytes])
                    plans[t.dst][s]["recvs"].append([t.src, t.nbytes])
        active = {h for h, p in plans.items() if any(st["sends"] or st["recvs"] for st in p)}
        start_at = time.monotonic() + 0.1
        for h in active:
            self.workers[h].send({"cmd": "run", "iter": iteration, "start_at": start_at,
                                  "msg_size": msg_size, "steps": plans[h]})
        return self._collect(active, timeout=timeout)


def verify(schedule: sch.Schedule, replies: dict[str, dict]) -> tuple[int, list[str]]:
    """Compare, per transfer, the receiver's digest of the messages it
    checked with the sender's; returns (verified bytes, problems)."""
    verified, problems = 0, []
    for s, step in enumerate(schedule):
        for t in step:
            if not t.nbytes:
                continue
            sent = replies[t.src]["tx_digest"].get(f"{s}:{t.dst}")
            got = replies[t.dst]["rx_digest"].get(f"{s}:{t.src}")
            if sent is None or sent != got:
                problems.append(f"step {s} {t.src}->{t.dst}: sent digest {sent}, received {got}")
            else:
                verified += t.nbytes
    return verified, problems
