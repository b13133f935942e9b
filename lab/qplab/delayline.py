"""User-space WAN delay line, for kernels without sch_netem.

Runs inside a WAN box namespace that sits in the middle of a WAN link: the
link is two veth pairs, and this process bridges the box's two ends. Each
frame read on one end (AF_PACKET) is held until its release time, then
written to the other end. Delay, jitter (uniform in [-j, +j]), loss and a
blackhole switch (drop everything while the link stays up, the silent failure
only BFD notices) are applied here; rate is a tbf on the routers' egress.

With zero jitter release times grow with arrival time, so order is kept.

Settings change at run time through a unix datagram socket carrying JSON:
{"set": {"delay_ms": 20, "blackhole": true}} or {"get": true}; the reply is
the current settings and counters.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
MAX_FRAME = 65536
MAX_IN_FLIGHT = 200_000      # frames held at once; beyond this the line drops
DRAIN_BATCH = 64             # frames read per wake-up before releasing again
SPIN_BELOW = 50e-6           # release this close to due without sleeping
LATE_S = 0.005               # a frame released this much past due counts as late


class Settings:
    FIELDS = ("delay_ms", "jitter_ms", "loss_pct", "blackhole")

    def __init__(self, delay_ms=0.0, jitter_ms=0.0, loss_pct=0.0, blackhole=False):
        self.delay_ms, self.jitter_ms = float(delay_ms), float(jitter_ms)
        self.loss_pct, self.blackhole = float(loss_pct), bool(blackhole)

    def update(self, changes: dict) -> None:
        for key, value in changes.items():
            if key not in self.FIELDS:
                raise ValueError(f"unknown setting {key!r}")
            if key == "blackhole":
                self.blackhole = bool(value)
                continue
            value = float(value)
            if value < 0 or (key == "loss_pct" and value > 100):
                raise ValueError(f"{key}={value} out of range")
            setattr(self, key, value)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.FIELDS}


def open_port(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)   # never re-read what we send
    # Frames come with a virtio-net header carrying their checksum-offload and
    # GSO state, and go out with it: without it a frame whose checksum the
    # sender left to "hardware" would leave here with a wrong checksum.
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    for opt, size in ((SO_RCVBUFFORCE, 16 << 20), (SO_SNDBUFFORCE, 4 << 20)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


class DelayLine:
    def __init__(self, a: str, b: str, settings: Settings, control: str | None):
        self.settings = settings
        self.ports = {"a": open_port(a), "b": open_port(b)}
        self.peer = {self.ports["a"].fileno(): self.ports["b"],
                     self.ports["b"].fileno(): self.ports["a"]}
        self.direction = {self.ports["a"].fileno(): "a>b", self.ports["b"].fileno(): "b>a"}
        # late_*: frames sent more than LATE_S after their release time (the
        # line itself held them up: a busy machine), and the worst lateness.
        self.stats = {d: {"received": 0, "sent": 0, "lost": 0, "blackholed": 0,
                          "overflow": 0, "send_errors": 0, "late_frames": 0, "late_max_ms": 0.0}
                      for d in ("a>b", "b>a")}
        self.heap: list = []
        self.seq = 0
        self.control = None
        self.control_path = control
        if control:
            try:
                os.unlink(control)
            except FileNotFoundError:
                pass
            self.control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.control.bind(control)
        self.running = True

    def receive(self, sock: socket.socket) -> None:
        st = self.stats[self.direction[sock.fileno()]]
        out = self.peer[sock.fileno()]
        cfg = self.settings
        delay = cfg.delay_ms / 1000.0
        jitter = cfg.jitter_ms / 1000.0
        loss = cfg.loss_pct / 100.0
        heap, recv, clock = self.heap, sock.recv, time.monotonic
        for _ in range(DRAIN_BATCH):
            try:
                frame = recv(MAX_FRAME)
            except BlockingIOError:
                return
            now = clock()
            st["received"] += 1
            if cfg.blackhole:
                st["blackholed"] += 1
                continue
            if loss and random.random() < loss:
                st["lost"] += 1
                continue
            if len(heap) >= MAX_IN_FLIGHT:
                st["overflow"] += 1
                continue
            release = now + delay
            if jitter:
                release = max(now, release + random.uniform(-jitter, jitter))
            self.seq += 1
            heapq.heappush(heap, (release, self.seq, out, frame, st))

    def release_due(self) -> float | None:
        """Send every frame whose time has come; return seconds to the next one."""
        heap, clock = self.heap, time.monotonic
        while heap:
            now = clock()
            due = heap[0][0]
            if due - now > SPIN_BELOW:
                return due - now
            _, _, out, frame, st = heapq.heappop(heap)
            late = now - due
            if late > LATE_S:
                st["late_frames"] += 1
                if late * 1e3 > st["late_max_ms"]:
                    st["late_max_ms"] = round(late * 1e3, 2)
            try:
                out.send(frame)
                st["sent"] += 1
            except OSError:
                st["send_errors"] += 1
        return None

    def serve_control(self) -> None:
        try:
            data, addr = self.control.recvfrom(65536)
        except BlockingIOError:
            return
        reply: dict
        try:
            msg = json.loads(data)
            if "set" in msg:
                self.settings.update(msg["set"])
            reply = {"ok": True, "settings": self.settings.as_dict(), "stats": self.stats,
                     "in_flight": len(self.heap)}
        except (ValueError, TypeError, AttributeError) as e:
            reply = {"ok": False, "error": str(e)}
        if addr:
            try:
                self.control.sendto(json.dumps(reply).encode(), addr)
            except OSError:
                pass

    def run(self) -> None:
        readers = list(self.ports.values()) + ([self.control] if self.control else [])
        receive = self.receive
        while self.running:
            wait = self.release_due()
            try:
                ready, _, _ = select.select(readers, [], [], 1.0 if wait is None else wait)
            except InterruptedError:
                continue
            for sock in ready:
                if sock is self.control:
                    self.serve_control()
                else:
                    receive(sock)

    def close(self) -> None:
        for s in self.ports.values():
            s.close()
        if self.control:
            self.control.close()
            try:
                os.unlink(self.control_path)
            except FileNotFoundError:
                pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="interface towards router A")
    p.add_argument("--b", required=True, help="interface towards router B")
    p.add_argument("--control", help="unix datagram socket for run-time changes")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--blackhole", action="store_true")
    p.add_argument("--rt-priority", type=int, default=20,
                   help="SCHED_FIFO priority (0 = normal scheduling)")
    args = p.parse_args(argv)
    if args.rt_priority:
        # a release time is only as good as our wake-up: on a busy machine a
        # normal-priority process wakes milliseconds late (netem runs in
        # softirq context for the same reason). The kernel's RT throttling
        # still leaves time to everyone else if we ever spin.
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt_priority))
        except (OSError, AttributeError) as e:
            print(f"delayline: running without real-time priority ({e})", file=sys.stderr)
    try:
        settings = Settings(args.delay_ms, args.jitter_ms, args.loss_pct, args.blackhole)
        settings.update({})
        line = DelayLine(args.a, args.b, settings, args.control)
    except (OSError, ValueError) as e:
        print(f"delayline: {e}", file=sys.stderr)
        return 1

    def stop(*_):
        line.running = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        line.run()
    finally:
        line.close()
    return 0


def control(path: str, message: dict, timeout: float = 2.0, attempts: int = 3) -> dict:
    """Send one request to a running delay line and return its reply. Asked
    again on a timeout: on a machine busy with other real-time delay lines a
    datagram can wait its turn, and every request here is idempotent."""
    for _ in range(attempts - 1):
        try:
            return _ask(path, message, timeout)
        except TimeoutError:
            continue
    try:
        return _ask(path, message, timeout)
    except TimeoutError:
        raise TimeoutError(f"delay line {path} did not answer within {attempts} x {timeout:g} s") from None


def _ask(path: str, message: dict, timeout: float) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    local = f"{path}.{os.getpid()}.{time.monotonic_ns()}.c"
    try:
        s.bind(local)
        s.settimeout(timeout)
        s.sendto(json.dumps(message).encode(), path)
        data, _ = s.recvfrom(65536)
        return json.loads(data)
    finally:
        s.close()
        try:
            os.unlink(local)
        except FileNotFoundError:
            pass

if __name__ == "__main__":
    sys.exit(main())
