"""What the network did during a run, seen from outside the engine:

- WanCounters: per-WAN-link bytes per direction over time, from the
  interface counters of each WAN box (netlink opened inside its namespace).
  In a box, frames from end A leave through end B, so B's tx is A->B.
- QpSniffer: which WAN link each RoCE QP crossed, from a sample of the VXLAN
  frames in each WAN box (outer VXLAN, inner IPv4/UDP 4791, BTH dest QP).
  A small socket buffer makes it a sample: the kernel drops what we do not
  read, which is fine for "which link", not for "how many bytes".
- BfdWatch: BFD peer state of the routers at both ends of one WAN link,
  polled through vtysh, with the times it changed.
- agent_status: the qpagent status JSON of a leaf, when the agent runs.
- CpuMeter: how busy this machine's CPUs were during a run, to check that
  the WAN, not the CPU, was the bottleneck.
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netns import popns, pushns

from ..state import WanState

ETH_P_ALL = 0x0003


class Periodic:
    """Calls `sample()` once at start and then every `interval` seconds in a
    thread until stop()."""

    interval: float
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self):
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _join(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class WanCounters(Periodic):
    """Samples every WAN link's delivered bytes per direction in a thread."""

    def __init__(self, wans: Iterable[WanState], interval: float = 0.1):
        self.interval = interval
        self.links = {w.name: {"ns": w.ns, "dirs": {"b": f"{w.a_dc}->{w.b_dc}", "a": f"{w.b_dc}->{w.a_dc}"}}
                      for w in wans}
        self.samples: list[dict] = []      # {"t": wall, name: {dir: tx_bytes}}
        self._iprs = {n: IPRoute(netns=l["ns"]) for n, l in self.links.items()}

    def read(self) -> dict:
        out = {"t": time.time()}
        for name, ipr in self._iprs.items():
            dirs = self.links[name]["dirs"]
            per = {}
            for link in ipr.get_links():
                ifname = link.get("IFLA_IFNAME")
                stats = link.get("IFLA_STATS64")
                if ifname in dirs and stats:
                    per[dirs[ifname]] = stats["tx_bytes"]
            out[name] = per
        return out

    def sample(self) -> None:
        try:
            self.samples.append(self.read())
        except OSError:
            pass

    def stop(self) -> list[dict]:
        self._join()
        self.samples.append(self.read())
        for ipr in self._iprs.values():
            ipr.close()
        return self.samples


def totals(samples: list[dict], t0: float | None = None, t1: float | None = None) -> dict:
    """Bytes per WAN link and direction between the samples nearest t0 and t1."""
    sel = [s for s in samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)]
    if len(sel) < 2:
        sel = samples[:1] + samples[-1:]
    first, last = sel[0], sel[-1]
    out = {}
    for name, per in last.items():
        if name == "t":
            continue
        out[name] = {d: per[d] - first.get(name, {}).get(d, 0) for d in per}
    return out


def rates(samples: list[dict], min_interval: float = 0.0) -> list[dict]:
    """Per-interval rates (bit/s) per link and direction: the load over time.
    Intervals shorter than min_interval are merged (smoother plots)."""
    out = []
    if not samples:
        return out
    a = samples[0]
    for b in samples[1:]:
        dt = b["t"] - a["t"]
        if dt <= 0 or dt < min_interval:
            continue
        row = {"t": b["t"]}
        for name, per in b.items():
            if name != "t":
                row[name] = {d: (v - a.get(name, {}).get(d, v)) * 8 / dt for d, v in per.items()}
        out.append(row)
        a = b
    return out


def parse_vxlan_roce(frame: bytes):
    """(inner src, inner dst, dest QP, frame length) of a VXLAN-encapsulated
    RoCEv2 frame, else None. Bounds checked at every header."""
    n = len(frame)
    if n < 14 + 20 + 8 + 8 + 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 17:
        return None
    udp = 14 + ihl
    if struct.unpack_from("!H", frame, udp + 2)[0] != 4789:
        return None
    inner = udp + 8 + 8
    if n < inner + 14 + 20 or frame[inner + 12:inner + 14] != b"\x08\x00":
        return None
    ip = inner + 14
    iihl = (frame[ip] & 0x0F) * 4
    if frame[ip + 9] != 17 or n < ip + iihl + 8 + 12:
        return None
    iudp = ip + iihl
    if struct.unpack_from("!H", frame, iudp + 2)[0] != 4791:
        return None
    bth = iudp + 8
    dqpn = struct.unpack_from("!I", frame, bth + 4)[0] & 0xFFFFFF
    return socket.inet_ntoa(frame[ip + 12:ip + 16]), socket.inet_ntoa(frame[ip + 16:ip + 20]), dqpn, n


class QpSniffer:
    """Per WAN link and direction, the RoCE QPs seen crossing it (sampled).
    Frames are taken as they enter the WAN box (end A: from DC A, end B:
    from DC B); the delay line sends bypassing the taps, so outgoing
    frames are not seen anyway. A blackholed link still shows what entered."""

    PACKET_OUTGOING = 4

    def __init__(self, wans: Iterable[WanState], rcvbuf: int = 1 << 18):
        self.socks = {}
        for w in wans:
            for end in ("a", "b"):
                pushns(w.ns)
                try:
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                finally:
                    popns()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind((end, 0))
                s.setblocking(False)
                self.socks[(w.name, end)] = s
        # (phase, link, inner src, inner dst, dqpn) -> [packets, first, last]
        self.seen: dict[tuple, list] = {}
        self.phase = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def mark(self) -> None:
        """Count from now on apart (phase 1): where QPs went after a failure."""
        self.phase = 1

    def _loop(self):
        while not self._stop.wait(0.02):
            now = time.time()
            for (name, _end), s in self.socks.items():
                for _ in range(200):
                    try:
                        frame, addr = s.recvfrom(256)
                    except (BlockingIOError, InterruptedError):
                        break
                    if addr[2] == self.PACKET_OUTGOING:
                        continue
                    p = parse_vxlan_roce(frame)
                    if p is None:
                        continue
                    key = (self.phase, name, p[0], p[1], p[2])
                    e = self.seen.get(key)
                    if e is None:
                        self.seen[key] = [1, now, now]
                    else:
                        e[0] += 1
                        e[2] = now

    def start(self) -> "QpSniffer":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        for s in self.socks.values():
            s.close()
        return self.seen


class BfdWatch(Periodic):
    """Polls `show bfd peers json` on the given routers; records transitions."""

    def __init__(self, namespaces: list[str], peers: set[str], interval: float = 0.05):
        self.namespaces, self.peers, self.interval = namespaces, peers, interval
        self.transitions: list[dict] = []
        self._state: dict[tuple, str] = {}

    def poll(self) -> None:
        for ns in self.namespaces:
            try:
                out = subprocess.run(["vtysh", "-N", ns, "-c", "show bfd peers json"],
                                     capture_output=True, text=True, timeout=5).stdout
                peers = json.loads(out or "[]")
            except (subprocess.TimeoutExpired, ValueError, OSError):
                continue
            if not isinstance(peers, list):     # a busy or restarting bfdd: no sample
                continue
            now = time.time()
            for p in peers:
                peer = p.get("peer") if isinstance(p, dict) else None
                if peer not in self.peers:
                    continue
                key = (ns, peer)
                st = p.get("status")
                if self._state.get(key) != st:
                    if key in self._state:
                        self.transitions.append({"t": now, "router": ns, "peer": peer,
                                                 "from": self._state[key], "to": st})
                    self._state[key] = st

    def sample(self) -> None:
        self.poll()

    def stop(self) -> list[dict]:
        """Stops polling after one last look, so a state that still holds
        (a peer down until the link is restored) is seen even when every
        poll during the failure was lost to a loaded host."""
        self._join()
        self.poll()
        return self.transitions


def agent_status(socket_path: str, top: int = 256) -> dict | None:
    """The agent's status, or None when no agent answers there."""
    try:
        from qpagent.control import ControlClient
    except ImportError:
        return None
    try:
        return ControlClient(socket_path).request({"cmd": "status", "top": top}, timeout=3)
    except Exception:           # not running, or an older agent: no status
        return None


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)      # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """The fraction of all CPU time spent busy between start() and stop()."""

    def start(self) -> "CpuMeter":
        self._t0 = _cpu_times()
        return self

    def stop(self) -> float | None:
        busy, total = _cpu_times()
        db, dt = busy - self._t0[0], total - self._t0[1]
        return round(db / dt, 3) if dt > 0 else None


def peak_utilization(samples: list[dict], rate_mbit: float, window_s: float = 1.0) -> float | None:
    """The busiest WAN link direction's highest rate over `window_s`, as a
    fraction of the configured link rate (near 1.0: the WAN was the limit)."""
    rs = rates(samples, min_interval=window_s)
    peaks = [v for r in rs for name, per in r.items() if name != "t" for v in per.values()]
    return round(max(peaks) / (rate_mbit * 1e6), 3) if peaks and rate_mbit > 0 else None
