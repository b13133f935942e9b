"""What the data plane costs real traffic: overlay throughput between two
VTEPs with every qpagent program attached, over the same without them.

Two VTEPs joined by two links (tests/live/twovtep.py). In one run, for each
stream, alternately: nothing attached, then every program attached on vtepA
(qp_steer on the VXLAN device, path_pin and flow_stats tc + XDP on both
uplinks) with its maps filled as the agent fills them (remote VTEP, both
paths with the ports the FIB sends their way), then purged again. Streams,
hostA -> hostB, each for --seconds:

    tcp    one TCP connection (a small Python sender and receiver; iperf3 is
           not part of the product's dependencies)
    roce   UDP to port 4791, each datagram a BTH (RC SEND ONLY) and payload,
           over --qps destination QPs; counted at the receiver

The ratio is attached / bare of the median over --rounds (target >= 0.97).
Pins live under a throw-away QPAGENT_PIN_BASE; namespaces and pins are
removed at the end, also on failure.

    python tests/bench/bench_throughput.py [--seconds S] [--rounds N] [--qps K]
Prints JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIN_BASE = f"/run/qt-bench-pins-{uuid.uuid4().hex[:8]}"
os.environ["QPAGENT_PIN_BASE"] = PIN_BASE    # before qpagent reads it
sys.path.insert(0, str(REPO / "agent"))
sys.path.insert(0, str(REPO / "tests" / "live"))

from qpagent import fib, pins  # noqa: E402
from qpagent.datapath import DataPlane  # noqa: E402
from qpagent.portmath import hash_for_port  # noqa: E402
from qpagent.tables import QpTables  # noqa: E402
from twovtep import SRCPORT_RANGE, VXLAN_DEV, two_vteps  # noqa: E402

PORT = 5201
PORTS_EACH_PATH = 8

# Receivers print the bytes they got; senders run for a fixed time.
TCP_RECEIVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {port})); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); total = 0; buf = bytearray(1 << 20)
while (n := conn.recv_into(buf)):
    total += n
print(total, flush=True)
"""

TCP_SENDER = """
import socket, time
s = socket.create_connection(("{dst}", {port})); chunk = b"x" * (1 << 20)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    s.sendall(chunk)
s.close()
"""

UDP_RECEIVER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.bind(("0.0.0.0", 4791)); s.settimeout(1.0); print("ready", flush=True)
total = first = last = 0
while True:
    try:
        n = s.recv(65535)
    except socket.timeout:
        if first:
            break
        continue
    now = time.monotonic(); first = first or now; last = now; total += len(n)
print(total, last - first, flush=True)
"""

UDP_SENDER = """
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("{dst}", 4791))
payload = b"r" * 1024
frames = [struct.pack("!BBHII", 4, 0, 0xFFFF, qp, 0) + payload for qp in range(0x100, 0x100 + {qps})]
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    for f in frames:
        try:
            s.send(f)
        except OSError:
            pass
"""


def netns_python(ns: str, code: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_stream(topo, kind: str, seconds: float, qps: int) -> float:
    """Goodput in Gbit/s as the receiver counted it."""
    receiver_code = TCP_RECEIVER if kind == "tcp" else UDP_RECEIVER
    sender_code = TCP_SENDER if kind == "tcp" else UDP_SENDER
    receiver = netns_python(topo.b.host_ns, receiver_code.format(port=PORT))
    try:
        assert receiver.stdout.readline().strip() == "ready", receiver.stderr.read()
        sender = netns_python(topo.a.host_ns, sender_code.format(
            dst=topo.b.host_ip, port=PORT, seconds=seconds, qps=qps))
        _, err = sender.communicate(timeout=seconds + 30)
        assert sender.returncode == 0, err
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    fields = out.split()
    assert fields, err
    total = int(fields[0])
    elapsed = seconds if kind == "tcp" else float(fields[1])
    return total * 8 / elapsed / 1e9


def steering_dataplane(topo) -> DataPlane:
    """Every program on vtepA, maps filled as the agent would: the remote
    VTEP for every inner MAC, one path per uplink with the ports the FIB
    sends there."""
    side = topo.a
    dp = DataPlane(vxlan_devices=[VXLAN_DEV], uplinks=side.uplinks, count_xdp=side.uplinks,
                   count_tc=side.uplinks, xdp_mode="generic", netns=side.vtep_ns,
                   node=side.vtep_ns, pin_base=PIN_BASE)
    dp.attach()
    tables = QpTables(dp)
    lo, hi = SRCPORT_RANGE
    by_uplink = {u: [] for u in side.uplinks}
    for port in range(lo, lo + 64):
        route = fib.lookup(topo.b.vtep_ip, src=side.vtep_ip, sport=port, netns=side.vtep_ns)
        ports = by_uplink[route.oif_name]
        if len(ports) < PORTS_EACH_PATH:
            ports.append(port)
    indexes = ifindexes(side.vtep_ns, side.uplinks)
    for path, uplink in enumerate(side.uplinks):
        ports = by_uplink[uplink]
        tables.write_path(0, path, indexes[uplink], True, ports,
                          [hash_for_port(p, lo, hi) for p in ports], 0)
    tables.set_mac_vteps({"00:00:00:00:00:00": 0, topo.b.host_mac: 0})
    tables.set_pin_uplinks(list(indexes.values()))
    return dp


def ifindexes(ns: str, devices) -> dict[str, int]:
    out = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True,
                                    text=True, check=True).stdout)
    return {link["ifname"]: link["ifindex"] for link in out if link["ifname"] in devices}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--qps", type=int, default=8)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces, BPF)")
    results = {kind: {"bare": [], "attached": []} for kind in ("tcp", "roce")}
    try:
        with two_vteps(2) as topo:
            for _ in range(args.rounds):
                for kind in results:
                    results[kind]["bare"].append(run_stream(topo, kind, args.seconds, args.qps))
                    dp = steering_dataplane(topo)
                    try:
                        results[kind]["attached"].append(
                            run_stream(topo, kind, args.seconds, args.qps))
                    finally:
                        dp.purge()
    finally:
        pins.remove_base(PIN_BASE)
    report = {"seconds": args.seconds, "rounds": args.rounds, "qps": args.qps, "target": 0.97}
    for kind, runs in results.items():
        bare, attached = statistics.median(runs["bare"]), statistics.median(runs["attached"])
        report[kind] = {"bare_gbps": round(bare, 3), "attached_gbps": round(attached, 3),
                        "ratio": round(attached / bare, 3),
                        "runs_gbps": {k: [round(v, 3) for v in vs] for k, vs in runs.items()}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
