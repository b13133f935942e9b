"""Host agents in the lab: `agent: true` under a host, scraped beside the leaves.

One lab for the module, from the shipped topology with two hosts asking for
an agent (dc1-h1 sends, dc2-h1 receives) and one leaf agent (dc1-leaf1, the
sender's VTEP; the other leaves run none, to keep BCC compiles few), up with
its Prometheus. K RoCE QPs cross the WAN from dc1-h1 to dc2-h1, each with a
frame count of its own; what the sender's host agent counted leaving eth0,
what the leaf's qp_steer counted before encapsulation and what the receiver's
host agent counted arriving on eth0 must agree QP by QP, as Prometheus
scrapes them. Every wait polls with a deadline.
"""
import sys

import pytest

from conftest import scratch_lab
from qplab import netns
from qplab.topology import DEFAULT_TOPOLOGY
from qplab.waiting import wait_until

SENDER, RECEIVER, LEAF = "dc1-h1", "dc2-h1", "dc1-leaf1"
K_QPS = 6
FIRST_QP = 0x400
SCRAPED_S = 120     # three agents compile with BCC at once, then a few scrape intervals

# Runs in the sender's namespace: QP i sends 10 + 5 i frames over AF_PACKET.
BURST = r"""
import socket, sys
from scapy.all import Ether, IP, UDP, Raw, raw
from scapy.contrib.roce import BTH
src_mac, dst_mac, src, dst, first, qps = sys.argv[1:7]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(int(qps)):
    for psn in range(10 + 5 * i):
        s.send(raw(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=49999, dport=4791)
                   / BTH(opcode=4, dqpn=int(first) + i, psn=psn) / Raw(bytes(256))))
"""


def frames_of(i: int) -> int:
    return 10 + 5 * i


@pytest.fixture(scope="module")
def host_lab():
    with scratch_lab(DEFAULT_TOPOLOGY, {LEAF, SENDER, RECEIVER}, 60, prometheus=True) as the_lab:
        yield the_lab


def by_dqp(the_lab, promql: str) -> dict[int, int]:
    return {int(r["metric"]["dqp"]): int(float(r["value"][1])) for r in the_lab.query(promql)}


def differences(want: dict, got: dict) -> list[str]:
    """One line per QP whose count is not the one wanted; empty when all agree."""
    return [f"dqp {dqp:#x}: want {want.get(dqp)}, got {got.get(dqp)}"
            for dqp in sorted(set(want) | set(got)) if want.get(dqp) != got.get(dqp)]


def test_host_agents_run_in_host_mode_and_are_scraped(host_lab):
    state = host_lab.state
    assert {n: a.error for n, a in state.agents.items()} == {LEAF: None, SENDER: None, RECEIVER: None}
    wait_until(lambda: sorted({SENDER, RECEIVER} - {r["metric"]["node"] for r in host_lab.query(
        'qpagent_up{role="host"}')}), SCRAPED_S, 1.0, "both host agents scraped")
    status = netns.run([sys.executable, "-m", "qpagent.cli", "status", "--json",
                        "--socket", host_lab.agent_socket(SENDER)]).stdout
    assert '"mode": "host"' in status


def test_host_and_leaf_counters_agree_per_qp(host_lab):
    s, d = host_lab.state.hosts[SENDER], host_lab.state.hosts[RECEIVER]
    # one ping first, so both leaves learn both MACs through EVPN
    wait_until(lambda: netns.ns_exec(s.ns, ["ping", "-c", "1", "-W", "1", d.ip],
                                     check=False).returncode == 0, 30, 0.2, "a first ping")
    netns.ns_exec(s.ns, [sys.executable, "-c", BURST, s.mac, d.mac, s.ip, d.ip,
                         str(FIRST_QP), str(K_QPS)], timeout=120)
    want = {FIRST_QP + i: frames_of(i) for i in range(K_QPS)}
    sent = f'qpagent_flow_qp_packets_total{{node="{SENDER}",hook="tc_egress"}}'
    received = f'qpagent_flow_qp_packets_total{{node="{RECEIVER}",hook="xdp_ingress"}}'
    leaf_bytes = f'sum by (dqp) (qpagent_qp_bytes_total{{node="{LEAF}"}})'
    seen = {}

    def sender_and_leaf():
        # One poll reads both: the leaf forgets a QP 10 s after its last packet.
        seen["sent"] = by_dqp(host_lab, f"sum by (dqp) ({sent})")
        seen["sent_bytes"] = by_dqp(host_lab, f"sum by (dqp) ({sent.replace('packets', 'bytes')})")
        seen["leaf_bytes"] = by_dqp(host_lab, leaf_bytes)
        return differences(want, seen["sent"]) + \
            [f"leaf {line}" for line in differences(seen["sent_bytes"], seen["leaf_bytes"])]
    wait_until(sender_and_leaf, SCRAPED_S, 0.5,
               "the sender host's per-QP packets, and the leaf's bytes equal to its bytes")
    wait_until(lambda: differences(want, by_dqp(host_lab, f"sum by (dqp) ({received})")),
               SCRAPED_S, 1.0, "the receiver host's per-QP packets")
    received_bytes = by_dqp(host_lab, f"sum by (dqp) ({received.replace('packets', 'bytes')})")
    assert len(seen["sent_bytes"]) == K_QPS
    assert received_bytes == seen["sent_bytes"] == seen["leaf_bytes"]
