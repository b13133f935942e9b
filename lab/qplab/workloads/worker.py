"""The traffic engine on one host: RC queue pairs over UDP 4791, driven by a
JSON-lines control channel on stdin/stdout.

Started by the driver, usually as `ip netns exec <ns> python -m
qplab.workloads.worker`. Commands (one JSON object a line):
  {"cmd": "init", "ip": ..., "config": {...}}
  {"cmd": "connect", "qps": [{"qpn", "peer", "peer_ip", "rqpn", "sport"}]}
  {"cmd": "run", "iter": i, "start_at": t, "msg_size": n,
   "steps": [{"sends": [[peer, bytes]], "recvs": [[peer, bytes]]}, ...]}
  {"cmd": "quit"}
Every command is answered with one JSON line ({"ok": true, ...} or
{"ok": false, "error": ...}); "run" is answered when the iteration is done,
or at once with "ok": false when one of the host's QPs went to the error
state (each QP's "state", "error" and "error_at" are in "qps").

Each message carries a 16-byte header (iteration, step, index, count) and its
CRC-32 as immediate data; the receiver recomputes the CRC of every message
and reports digests that the driver compares with the sender's.
"""
from __future__ import annotations

import json
import os
import random
import selectors
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass

from . import gbn, roce
from .transport import RoceEndpoint

APP_HDR = struct.Struct("!IIII")
STALL_MIN = 0.05          # a QP without progress this long is a stall worth reporting


@dataclass
class EngineConfig:
    mtu: int = 1024            # RoCE path MTU (payload bytes per packet)
    window: int = 128          # packets in flight per QP
    # RC retransmission as the verbs QP attributes set it (see gbn.RETRY_PRESETS):
    timeout_exp: int = 14      # `timeout`: local ACK timeout 4.096 us x 2^timeout_exp (0: never)
    retry_cnt: int = 7         # `retry_cnt`: retries without progress before the QP is in error
    rto: float | None = None   # seconds instead of timeout_exp, for finer sweeps than powers of 2
    ack_every: int = 16
    rate_mbit: float = 0.0     # pacing per host (0 = as fast as it goes)
    icrc: bool = True          # compute and check the ICRC

    def __post_init__(self):
        gbn.RetryPolicy(self.timeout_exp, self.retry_cnt)     # validates both ranges
        if self.rto is not None and self.rto <= 0:
            raise ValueError("rto must be positive")

    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        """Known fields only; "retry_preset" names one of gbn.RETRY_PRESETS
        and fields given beside it win."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        preset = d.get("retry_preset")
        if preset:
            return cls.preset(preset, **known)
        return cls(**known)

    @classmethod
    def preset(cls, name: str, **fields) -> "EngineConfig":
        """A configuration with the retry policy of a named preset (gbn.RETRY_PRESETS)."""
        policy = gbn.RETRY_PRESETS.get(name)
        if policy is None:
            raise ValueError(f"unknown retry preset {name!r}; choose one of {', '.join(gbn.RETRY_PRESETS)}")
        return cls(**{"timeout_exp": policy.timeout_exp, "retry_cnt": policy.retry_cnt, **fields})

    @property
    def ack_timeout(self) -> float | None:
        """Seconds of the local ACK timeout; None: the QP never times out."""
        return self.rto if self.rto is not None else gbn.local_ack_timeout(self.timeout_exp)

    def retry_summary(self) -> dict:
        """What a run's result records about RC retransmission."""
        t = self.ack_timeout
        return {"timeout_exp": None if self.rto is not None else self.timeout_exp,
                "retry_cnt": self.retry_cnt, "ack_timeout_s": t,
                "budget_s": None if t is None else t * (self.retry_cnt + 1)}


class QueuePair:
    def __init__(self, qpn, peer, peer_ip, rqpn, sport, cfg: EngineConfig):
        self.qpn, self.peer, self.peer_ip, self.rqpn, self.sport = qpn, peer, peer_ip, rqpn, sport
        # Both ends start at PSN 0 in each direction (exchanged out of band in reality).
        self.tx = gbn.GbnSender(mtu=cfg.mtu, window=cfg.window, ack_timeout=cfg.ack_timeout,
                                retry_cnt=cfg.retry_cnt, stall_min=STALL_MIN)
        self.rx = gbn.GbnReceiver(ack_every=cfg.ack_every)

    def report(self) -> dict:
        tx = self.tx
        stalls = list(tx.stalls)
        if tx.error_at is not None and tx.waiting_since is not None:
            stalls.append((tx.waiting_since, tx.error_at))     # the stall that ended in error
        return {"qpn": self.qpn, "peer": self.peer, "rqpn": self.rqpn, "sport": self.sport,
                "tx": asdict(tx.stats), "rx": asdict(self.rx.stats),
                "stalls": [[round(a, 6), round(b, 6)] for a, b in stalls],
                "state": "error" if tx.error else "rts",
                "error": tx.error,
                "error_at": None if tx.error_at is None else round(tx.error_at, 6)}


class Payloads:
    """Message contents: slices of a seeded random pool, cheap to make."""

    def __init__(self, seed: int, size: int = 1 << 20):
        self.pool = random.Random(seed).randbytes(2 * size)
        self.size = size

    def make(self, nbytes: int, salt: int) -> bytes:
        if nbytes > self.size:
            reps = nbytes // self.size + 1
            return (self.pool[:self.size] * reps)[salt % self.size:][:nbytes]
        off = (salt * 2654435761) % self.size
        return self.pool[off:off + nbytes]


class Worker:
    def __init__(self, out=sys.stdout):
        self.out = out
        self.cfg = EngineConfig()
        self.ep: RoceEndpoint | None = None
        self.qps: dict[int, QueuePair] = {}
        self.by_peer: dict[str, list[QueuePair]] = {}
        self.rr: dict[str, int] = {}
        self.run: dict | None = None
        self.payloads = Payloads(0)
        self.bad_packets = 0
        self.stray_messages = 0
        self._tokens = 0.0
        self._turn = 0
        self._icrc: dict[tuple, object] = {}
        self._last_refill = time.monotonic()

    # -- control -----------------------------------------------------------
    def reply(self, **obj) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def handle(self, msg: dict) -> bool:
        cmd = msg.get("cmd")
        try:
            if cmd == "init":
                self.cfg = EngineConfig.from_dict(msg.get("config", {}))
                self.ep = RoceEndpoint(msg["ip"])
                self.payloads = Payloads(int(msg.get("seed", 0)))
                self.reply(ok=True, pid=os.getpid())
            elif cmd == "connect":
                for q in msg["qps"]:
                    qp = QueuePair(q["qpn"], q["peer"], q["peer_ip"], q["rqpn"], q["sport"], self.cfg)
                    self.qps[qp.qpn] = qp
                    self.by_peer.setdefault(qp.peer, []).append(qp)
                self.reply(ok=True, qps=len(self.qps))
            elif cmd == "run":
                self.start_run(msg)          # answered when done
            elif cmd == "stats":
                self.reply(ok=True, qps=[qp.report() for qp in self.qps.values()],
                           bad_packets=self.bad_packets)
            elif cmd == "quit":
                self.reply(ok=True)
                return False
            else:
                self.reply(ok=False, error=f"unknown command {cmd!r}")
        except Exception as e:      # reported to the driver, which stops the run
            self.reply(ok=False, error=f"{cmd}: {type(e).__name__}: {e}")
        return True

    # -- one iteration -------------------------------------------------------
    def start_run(self, msg: dict) -> None:
        steps = msg["steps"]
        for st in steps:
            for peer, _ in st["sends"] + st["recvs"]:
                if peer not in self.by_peer:
                    raise ValueError(f"no queue pairs to {peer}")
        need = {}
        for s, st in enumerate(steps):
            for peer, n in st["recvs"]:
                need[(s, peer)] = need.get((s, peer), 0) + int(n)
        self.run = {
            "iter": int(msg["iter"]), "steps": steps, "msg_size": max(1, int(msg["msg_size"])),
            "start_at": float(msg.get("start_at", 0.0)), "started": None, "posted": 0,
            "need": need, "got": {k: 0 for k in need}, "rx_digest": {}, "tx_digest": {},
            "step_recv_done": [None] * len(steps), "pending_acks": 0, "tx_bytes": 0,
            "error": None,
        }

    def post_step(self, s: int, now: float) -> None:
        run = self.run
        for peer, nbytes in run["steps"][s]["sends"]:
            nbytes = int(nbytes)
            size = run["msg_size"]
            count = max(1, -(-nbytes // size))
            qps = self.by_peer[peer]
            for idx in range(count):
                n = min(size, nbytes - idx * size)
                data = APP_HDR.pack(run["iter"], s, idx, count) + \
                    self.payloads.make(n, zlib.crc32(f"{run['iter']}:{s}:{peer}:{idx}".encode()))
                crc = zlib.crc32(data)
                k = self.rr.get(peer, 0)             # stripe messages over the QPs
                self.rr[peer] = k + 1
                qps[k % len(qps)].tx.post_send(data, imm=crc, token=n)
                key = f"{s}:{peer}"
                run["tx_digest"][key] = (run["tx_digest"].get(key, 0) + crc) & 0xFFFFFFFFFFFF
                run["pending_acks"] += 1
                run["tx_bytes"] += n

    def advance(self, now: float) -> None:
        """Post every step whose inputs have all arrived."""
        run = self.run
        if run["started"] is None:
            if now < run["start_at"]:
                return
            run["started"] = now
        steps = run["steps"]
        while run["posted"] < len(steps):
            s = run["posted"]
            ready = all(run["got"][k] >= run["need"][k] for k in run["need"] if k[0] < s)
            if not ready:
                break
            self.post_step(s, now)
            run["posted"] += 1

    def run_done(self) -> bool:
        run = self.run
        return (run["started"] is not None and run["posted"] == len(run["steps"])
                and run["pending_acks"] == 0
                and all(run["got"][k] >= run["need"][k] for k in run["need"]))

    def finish_run(self, now: float) -> None:
        run = self.run
        self.run = None
        self.reply(ok=run["error"] is None, error=run["error"], iter=run["iter"],
                   start=run["started"], end=now, step_recv_done=run["step_recv_done"],
                   tx_bytes=run["tx_bytes"], tx_digest=run["tx_digest"],
                   rx_digest=run["rx_digest"], bad_packets=self.bad_packets,
                   stray_messages=self.stray_messages,
                   qps=[qp.report() for qp in self.qps.values()])

    # -- data path -----------------------------------------------------------
    def icrc_fn(self, src_ip, dst_ip, sport):
        if not self.cfg.icrc:
            return None
        key = (src_ip, dst_ip, sport)
        fn = self._icrc.get(key)
        if fn is None:
            fn = self._icrc[key] = roce.icrc_ipv4_fn(src_ip, dst_ip, sport)
        return fn

    def on_datagram(self, data: bytes, addr, now: float) -> None:
        try:
            pkt = roce.parse(data, icrc_of=self.icrc_fn(addr[0], self.ep.local_ip, addr[1]))
        except roce.RoceParseError:
            self.bad_packets += 1
            return
        qp = self.qps.get(pkt.dqpn)
        if qp is None:
            self.bad_packets += 1
            return
        if pkt.is_ack:
            try:
                done = qp.tx.on_ack(pkt.psn, pkt.syndrome, now)
            except gbn.QpError as e:
                self.qp_failed(qp, e)
                return
            if done and self.run is not None:
                self.run["pending_acks"] -= len(done)
            return
        acks, msgs = qp.rx.on_packet(pkt.opcode, pkt.psn, pkt.ackreq, pkt.payload, pkt.imm)
        icrc = self.icrc_fn(self.ep.local_ip, qp.peer_ip, qp.sport)
        for a in acks:
            self.ep.send(qp.sport, qp.peer_ip, roce.build_ack(qp.rqpn, a.psn, a.syndrome, a.msn, icrc_of=icrc))
        for m in msgs:
            self.on_message(qp, m, now)

    def on_message(self, qp: QueuePair, m: gbn.Message, now: float) -> None:
        run = self.run
        if len(m.data) < APP_HDR.size or m.imm is None or zlib.crc32(m.data) != m.imm:
            self.bad_packets += 1
            return
        it, s, _idx, _count = APP_HDR.unpack_from(m.data)
        key = (s, qp.peer)
        if run is None or it != run["iter"] or key not in run["need"]:
            self.stray_messages += 1
            return
        run["got"][key] += len(m.data) - APP_HDR.size
        dk = f"{s}:{qp.peer}"
        run["rx_digest"][dk] = (run["rx_digest"].get(dk, 0) + m.imm) & 0xFFFFFFFFFFFF
        if all(run["got"][k] >= run["need"][k] for k in run["need"] if k[0] == s):
            run["step_recv_done"][s] = now

    def pump(self, now: float) -> bool:
        """Transmit what windows and pacing allow; True if more is waiting."""
        cfg = self.cfg
        pacing = cfg.rate_mbit > 0
        if pacing:
            rate = cfg.rate_mbit * 1e6 / 8
            self._tokens = min(self._tokens + (now - self._last_refill) * rate, rate * 0.002 + 2 * cfg.mtu)
            self._last_refill = now
        more = False
        ep = self.ep
        # Start one QP further each time, so pacing shares the tokens
        # instead of the first QPs starving the rest.
        order = list(self.qps.values())
        if order:
            self._turn = (self._turn + 1) % len(order)
            order = order[self._turn:] + order[:self._turn]
        for qp in order:              # every timer first: pacing may stop the sending loop
            if not qp.tx.error:
                try:
                    qp.tx.on_timer(now)
                except gbn.QpError as e:
                    self.qp_failed(qp, e)
        for qp in order:
            budget = 32
            if pacing:
                budget = min(budget, int(self._tokens // (cfg.mtu + 60)))
                if budget <= 0:
                    return True
            segs = qp.tx.next_segments(now, budget)
            if not segs:
                continue
            icrc = self.icrc_fn(ep.local_ip, qp.peer_ip, qp.sport)
            for seg in segs:
                pkt = roce.build_data(seg.opcode, qp.rqpn, seg.psn, seg.payload,
                                      ackreq=seg.ackreq, imm=seg.imm, icrc_of=icrc)
                ep.send(qp.sport, qp.peer_ip, pkt)
                if pacing:
                    self._tokens -= len(pkt) + 28
            if len(segs) == budget:
                more = True
        return more

    def qp_failed(self, qp: QueuePair, e: gbn.QpError) -> None:
        """A QP in error fails the iteration, as a completion error fails a
        collective: the run is answered at once with every QP's state."""
        if self.run is not None and self.run["error"] is None:
            self.run["error"] = f"QP {qp.qpn:#x} to {qp.peer} in error: {e}"

    def next_deadline(self) -> float | None:
        dls = [d for d in (qp.tx.deadline() for qp in self.qps.values()) if d is not None]
        return min(dls) if dls else None

    # -- loop ---------------------------------------------------------------
    def serve(self, infd: int) -> None:
        sel = selectors.DefaultSelector()
        sel.register(infd, selectors.EVENT_READ, "ctl")
        registered = False
        buf = b""
        busy = False
        while True:
            if self.ep is not None and not registered:
                sel.register(self.ep.fileno(), selectors.EVENT_READ, "data")
                registered = True
            now = time.monotonic()
            timeout = 0.0 if busy else 0.05
            dl = self.next_deadline()
            if dl is not None:
                timeout = min(timeout, max(0.0, dl - now))
            if self.run is not None and self.run["started"] is None:
                timeout = min(timeout, max(0.0, self.run["start_at"] - now))
            for key, _ in sel.select(timeout):
                if key.data == "ctl":
                    chunk = os.read(infd, 65536)
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            try:
                                msg = json.loads(line)
                            except ValueError as e:
                                self.reply(ok=False, error=f"bad JSON: {e}")
                                continue
                            if not self.handle(msg):
                                return
            if self.ep is None:
                continue
            now = time.monotonic()
            for data, addr in self.ep.recv_batch():
                self.on_datagram(data, addr, now)
            if self.run is not None:
                self.advance(now)
            busy = self.pump(now)
            if self.run is not None:
                self.advance(now)
                if self.run["error"] is not None or self.run_done():
                    self.finish_run(time.monotonic())


def main() -> None:
    w = Worker()
    try:
        w.serve(sys.stdin.fileno())
    finally:
        if w.ep is not None:
            w.ep.close()


if __name__ == "__main__":
    main()
