"""`make demo`: the default lab, agents on every leaf, a RoCEv2 burst across DCs.

Brings the lab up, waits for convergence, sends RoCEv2 (UDP 4791 + BTH) for
several QPs from a DC1 host to a DC2 host, prints `qplab status` and each
agent's path balance, and always tears the lab down.
"""
from __future__ import annotations

import subprocess
import sys
import time

from . import lab, netns, status
from .api import Lab
from .context import LabContext
from .topology import TopologyError, load_topology
from .waiting import Timeout, wait_until

QPS = 8
PACKETS_PER_QP = 100

# Runs inside the sending host's namespace: Scapy builds each frame once,
# an AF_PACKET socket sends it (much faster than scapy.sendp).
BURST = r"""
import socket, sys
from scapy.all import Ether, IP, UDP, Raw, raw
from scapy.contrib.roce import BTH
src_mac, dst_mac, src, dst, qps, per_qp = sys.argv[1:7]
qps, per_qp = int(qps), int(per_qp)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
sent = 0
for psn in range(per_qp):
    for qp in range(qps):
        frame = (Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) /
                 UDP(sport=49152 + qp, dport=4791) /
                 BTH(opcode=4, dqpn=0x100 + qp, psn=psn) / Raw(bytes(1024)))
        s.send(raw(frame))
        sent += 1
print(sent)
"""


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - say.t0:6.1f}s] {message}", flush=True)


say.t0 = time.monotonic()


def roce_burst(running: Lab, src: str, dst: str) -> int:
    s, d = running.state.hosts[src], running.state.hosts[dst]
    out = netns.ns_exec(s.ns, [sys.executable, "-c", BURST, s.mac, d.mac, s.ip, d.ip,
                               str(QPS), str(PACKETS_PER_QP)], timeout=120)
    return int(out.stdout.strip())


def main() -> int:
    ctx = LabContext.from_env()
    if netns.list_namespaces(ctx.prefix):
        print(f"demo: a lab with prefix '{ctx.prefix}' is already up; run `qplab down` first",
              file=sys.stderr)
        return 1
    try:
        topo = load_topology()
    except TopologyError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    try:
        running = Lab.up(topo, ctx, progress=say, start_agents=True)
        agents_ok = [n for n, a in running.state.agents.items() if a.ok]
        if not agents_ok:
            say("NOTE: no agent could start; continuing without agents (see the errors above)")
        running.wait_converged(60)
        say("converged")
        src, dst = "dc1-h1", "dc2-h1"
        # one ping first so that both leaves learn both MACs through EVPN
        wait_until(lambda: netns.ns_exec(ctx.ns(src), ["ping", "-c", "1", "-W", "1",
                                                       running.state.hosts[dst].ip],
                                         check=False).returncode == 0, 15, 0.2, "first ping")
        sent = roce_burst(running, src, dst)
        say(f"RoCEv2 burst: {sent} packets, {QPS} QPs, {src} -> {dst}")
        st = status.collect(running.state)
        st["problems"] = status.problems(running.state, st)
        print(status.render(running.state, st), flush=True)
        for node in agents_ok:
            print(f"\n=== qpagent on {node} ===", flush=True)
            subprocess.run([sys.executable, "-m", "qpagent.cli", "status", "--node", ctx.ns(node)])
        return 0
    except Timeout as e:
        say(f"the lab did not converge: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as e:   # the demo reports and always cleans up
        say(f"failed: {type(e).__name__}: {e}")
        return 1
    finally:
        lab.down(ctx, progress=say)


if __name__ == "__main__":
    sys.exit(main())
