"""Measure the delay line alone: throughput at 1500-byte packets and delay error.

Three namespaces, src <-> box <-> dst, with the delay line in the box. The
sender and the receiver are small Python programs in src and dst; the clock
(CLOCK_MONOTONIC) is shared by every namespace, so one-way delay is read
directly from a timestamp carried in each packet.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager

from . import netns

SENDER = r"""
import socket, struct, sys, time
dst, seconds, rate_pps, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
pad = bytes(size - 28 - 12)
sent, seq = 0, 0
start = time.monotonic(); end = start + seconds
gap = 1.0 / rate_pps if rate_pps else 0.0
next_t = start
while True:
    now = time.monotonic()
    if now >= end:
        break
    if gap:
        if now < next_t:
            time.sleep(max(0.0, next_t - now - 50e-6))
            continue
        next_t += gap
    try:
        s.sendto(struct.pack("!IQ", seq, time.time_ns()) + pad, (dst, 9000))
        sent += 1
    except OSError:
        pass
    seq += 1
print(sent)
"""

RECEIVER = r"""
import socket, struct, sys, time, json
seconds = float(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind(("0.0.0.0", 9000))
# the kernel stamps each datagram on arrival: the receiver's own scheduling
# delays do not count against the delay line
SO_TIMESTAMPNS = 35  # Linux; not exported by Python 3.11
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.settimeout(0.5)
lat, n, nbytes, last_seq, reordered = [], 0, 0, -1, 0
first = last = None
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data, anc, _, _ = s.recvmsg(65536, 256)
    except socket.timeout:
        continue
    now = time.time_ns()
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", raw[:16])
            now = sec * 1_000_000_000 + nsec
    seq, t = struct.unpack("!IQ", data[:12])
    if seq < last_seq:
        reordered += 1
    last_seq = max(seq, last_seq)
    n += 1; nbytes += len(data) + 28
    first = first or now; last = now
    lat.append((now - t) / 1e6)
print(json.dumps({"received": n, "ip_bytes": nbytes, "reordered": reordered,
                  "span_s": ((last - first) / 1e9) if n > 1 else 0, "latency_ms": lat}))
"""


@contextmanager
def delay_line_rig(prefix: str, delay_ms: float, jitter_ms: float = 0.0, loss_pct: float = 0.0):
    """src (10.9.0.1) <-> delay line box <-> dst (10.9.0.2); removed on exit."""
    src, box, dst = f"{prefix}src", f"{prefix}box", f"{prefix}dst"
    proc = None
    tmp = tempfile.mkdtemp(prefix="qplab-dl-")
    try:
        for ns in (src, box, dst):
            netns.run(["ip", "netns", "add", ns])
        netns.ip_batch([f"link add s0 netns {src} type veth peer name a netns {box}",
                        f"link add d0 netns {dst} type veth peer name b netns {box}"])
        netns.ip_batch(["addr add 10.9.0.1/24 dev s0", "link set dev s0 up", "link set dev lo up"], src)
        netns.ip_batch(["addr add 10.9.0.2/24 dev d0", "link set dev d0 up", "link set dev lo up"], dst)
        netns.ip_batch(["link set dev a up", "link set dev b up"], box)
        netns.ns_exec(box, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        control = os.path.join(tmp, "dl.sock")
        proc = netns.spawn(box, [sys.executable, "-m", "qplab.delayline", "--a", "a", "--b", "b",
                                 "--control", control, "--delay-ms", str(delay_ms),
                                 "--jitter-ms", str(jitter_ms), "--loss-pct", str(loss_pct)],
                           os.path.join(tmp, "dl.log"))
        deadline = time.monotonic() + 10
        while not os.path.exists(control):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("delay line did not start: " +
                                   open(os.path.join(tmp, "dl.log")).read())
            time.sleep(0.02)
        yield {"src": src, "dst": dst, "box": box, "control": control, "pid": proc.pid}
    finally:
        if proc is not None:
            netns.kill_pids([proc.pid])
        for ns in (src, box, dst):
            netns.kill_pids(netns.namespace_pids(ns))
            netns.run(["ip", "netns", "del", ns], check=False)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


def measure(rig: dict, seconds: float, rate_pps: float, size: int = 1500) -> dict:
    """Send `size`-byte IP packets for `seconds` (rate 0 = as fast as possible)."""
    import subprocess
    recv = subprocess.Popen(["ip", "netns", "exec", rig["dst"], sys.executable, "-c", RECEIVER,
                             str(seconds + 1.5)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)   # receiver socket bound before the first packet
        sent = int(netns.ns_exec(rig["src"], [sys.executable, "-c", SENDER, "10.9.0.2",
                                              str(seconds), str(rate_pps), str(size)],
                                 timeout=seconds + 30).stdout.strip())
        out, _ = recv.communicate(timeout=seconds + 30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    res = json.loads(out)
    res["sent"] = sent
    return res


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run_bench(prefix: str = "qt3-dl-", seconds: float = 3.0, delay_ms: float = 10.0) -> dict:
    with delay_line_rig(prefix, delay_ms) as rig:
        # warm-up ARP so the first packets are not held in the neighbour queue
        netns.ns_exec(rig["src"], ["ping", "-c", "1", "-W", "2", "10.9.0.2"], check=False)
        blast = measure(rig, seconds, 0)
        mbit = blast["ip_bytes"] * 8 / blast["span_s"] / 1e6 if blast["span_s"] else 0.0
        paced = measure(rig, seconds, 2000)
        errors = [abs(x - delay_ms) for x in paced["latency_ms"]]
        return {
            "delay_line_throughput_mbit": round(mbit, 1),
            "delay_line_throughput_pps": round(blast["received"] / blast["span_s"], 0) if blast["span_s"] else 0,
            "delay_line_blast_sent": blast["sent"],
            "delay_line_blast_received": blast["received"],
            # nothing lost means the sender, not the delay line, set the pace:
            # the figure is then a lower bound of the line's capacity
            "delay_line_sender_limited": blast["received"] >= blast["sent"],
            "delay_line_reordered": blast["reordered"] + paced["reordered"],
            "delay_configured_ms": delay_ms,
            "delay_error_p50_ms": round(percentile(errors, 50), 4),
            "delay_error_p99_ms": round(percentile(errors, 99), 4),
            "delay_error_max_ms": round(max(errors), 4) if errors else None,
            "delay_samples": len(errors),
        }


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
