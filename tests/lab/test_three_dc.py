"""The three-DC lab, live: three data centers in a full mesh of WAN links of
unequal delay, and on the dc1 <-> dc2 pair unequal capacity (300 and
100 Mbit/s), with real FRR and real delay lines.

One lab for the module, from the shipped `three-dc` topology with one agent
(dc1-leaf1, the sender's VTEP; the other leaves run none, to keep BCC
compiles few), on its own prefix and management subnet, taken down at the
end. The lab writes the WAN capacities it knows into the agent's config; K
RoCE QPs from dc1-h1 to dc2-h1 must then sit on the two dc1 <-> dc2 WAN
links in proportion to capacity (3:1), as the agent says and as captured on
the WAN links themselves. Every wait polls with a deadline.
"""
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from scapy.all import IP, UDP, rdpcap
from scapy.contrib.roce import BTH
from scapy.layers.vxlan import VXLAN

from conftest import scratch_lab
from qplab import netns
from qplab.topology import resolve_topology
from qplab.waiting import wait_until

SENDER, RECEIVER, LEAF = "dc1-h1", "dc2-h1", "dc1-leaf1"
FAST, SLOW = "wan-dc1-border1-dc2-border1", "wan-dc1-border2-dc2-border2"   # 300, 100 Mbit/s
K_QPS = 8
FIRST_QP = 0x1000
CONVERGE_S = 90      # twelve FRR routers and one BCC compile on two cores

# Runs in the sender's namespace: one small RC SEND per QP every `every` s,
# until killed, so that no QP goes idle while the test watches.
SENDER_LOOP = r"""
import socket, sys, time
from scapy.all import Ether, IP, UDP, Raw, raw
from scapy.contrib.roce import BTH
src_mac, dst_mac, src, dst, first, qps, every = sys.argv[1:8]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
psn = 0
while True:   # PSNs go up, as a transport's do: nothing looks retransmitted
    for i in range(int(qps)):
        s.send(raw(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=49999, dport=4791)
                   / BTH(opcode=4, dqpn=int(first) + i, psn=psn) / Raw(bytes(64))))
    psn += 1
    time.sleep(float(every))
"""


@pytest.fixture(scope="module")
def three_dc():
    with scratch_lab(resolve_topology("three-dc"), {LEAF}, CONVERGE_S) as the_lab:
        yield the_lab


def tbf_rates_mbit(the_lab) -> dict[str, float]:
    """Each WAN link's rate as the kernel holds it, from both routers' tbf."""
    out = {}
    for name, w in the_lab.wan_links().items():
        rates = set()
        for node, dev in ((w.a, w.a_if), (w.b, w.b_if)):
            qdiscs = json.loads(netns.run(["tc", "-j", "-n", the_lab.ns(node), "qdisc", "show",
                                           "dev", dev]).stdout)
            rates |= {q["options"]["rate"] * 8 / 1e6 for q in qdiscs if q["kind"] == "tbf"}
        out[name] = rates.pop() if len(rates) == 1 else sorted(rates)
    return out


def one_way_ms(the_lab, w, count=10) -> list[float]:
    res = netns.run(["ip", "netns", "exec", the_lab.ns(w.a), "ping", "-c", str(count), "-i", "0.05",
                     "-W", "2", w.b_address], check=False, timeout=30)
    return [float(x) / 2 for x in re.findall(r"time=([\d.]+) ms", res.stdout)]


def test_three_dcs_converge_with_each_wan_link_as_written(three_dc):
    topo = three_dc.topology
    assert [dc.name for dc in topo.dcs] == ["dc1", "dc2", "dc3"]
    three_dc.wait_converged(CONVERGE_S)       # every BGP session and BFD peer up (polled)
    written = {w.name: (w.props.delay_ms, w.props.rate_mbit) for w in topo.wan}
    assert {n: (w.props.delay_ms, w.props.rate_mbit) for n, w in three_dc.wan_links().items()} \
        == written
    assert tbf_rates_mbit(three_dc) == {n: rate for n, (_, rate) in written.items()}
    # one link per pair of data centers: its delay line holds what the file says
    for name in (FAST, "wan-dc1-border1-dc3-border1", "wan-dc2-border1-dc3-border1"):
        delay = written[name][0]
        one_way = one_way_ms(three_dc, three_dc.wan_links()[name])
        assert len(one_way) >= 8, (name, one_way)
        assert min(one_way) >= delay - 0.5 and statistics.median(one_way) < delay * 1.5 + 2, \
            (name, delay, one_way)
    # and the overlay reaches across every pair
    hosts = three_dc.state.hosts
    for src, dst in (("dc1-h1", "dc2-h1"), ("dc1-h1", "dc3-h1"), ("dc2-h2", "dc3-h2")):
        wait_until(lambda: netns.ns_exec(hosts[src].ns, ["ping", "-c", "1", "-W", "1",
                                                         hosts[dst].ip], check=False).returncode == 0,
                   20, 0.2, f"{src} pings {dst}")


def agent_status(the_lab) -> dict:
    out = netns.run([sys.executable, "-m", "qpagent.cli", "status", "--json",
                     "--socket", the_lab.agent_socket(LEAF)]).stdout
    return json.loads(out)


def wan_of_paths(the_lab, status: dict, vtep: str) -> dict[int, str]:
    """Path index -> the WAN link it crosses (by its far end's address among the hops)."""
    by_far_end = {w.b_address: name for name, w in the_lab.wan_links().items()}
    out = {}
    for v in status["vteps"]:
        if v["address"] == vtep:
            for p in v["paths"]:
                crossed = [by_far_end[h] for h in p["hops"] if h in by_far_end]
                if p["alive"] and len(crossed) == 1:
                    out[p["index"]] = crossed[0]
    return out


class WanCapture:
    """tcpdump in the WAN boxes, on the end facing dc1: VXLAN going to dc2."""

    def __init__(self, the_lab, names, directory: Path):
        self.procs, self.files = [], {}
        for name in names:
            pcap = directory / f"{name}.pcap"
            proc = subprocess.Popen(["ip", "netns", "exec", the_lab.ns(name), "tcpdump", "-Z", "root",
                                     "--immediate-mode", "-i", "a", "-n", "-U", "-w", str(pcap),
                                     "udp", "port", "4789"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs.append(proc)
            self.files[name] = pcap
            assert "listening on" in proc.stderr.readline()

    def frames_per_qp(self, outer_dst: str) -> dict[str, dict[int, int]]:
        """WAN link -> {dqp: RoCE frames seen} for VXLAN to `outer_dst`."""
        out = {}
        for name, pcap in self.files.items():
            seen = defaultdict(int)
            for p in rdpcap(str(pcap)):
                if p.haslayer(VXLAN) and p[IP].dst == outer_dst:
                    inner = p[VXLAN]
                    if inner.haslayer(UDP) and inner[UDP].dport == 4791:
                        seen[BTH(bytes(inner[UDP].payload)).dqpn] += 1
            out[name] = dict(seen)
        return out

    def stop(self):
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_qps_sit_on_the_wan_links_in_proportion_to_capacity(three_dc, tmp_path):
    assert three_dc.state.agents[LEAF].ok, three_dc.state.agents[LEAF].error
    s, d = three_dc.state.hosts[SENDER], three_dc.state.hosts[RECEIVER]
    remote_vtep = str(three_dc.state.routers["dc2-leaf1"].loopback)
    # the agent learns both end-to-end paths to dc2, each across one WAN link
    paths = wait_until(lambda: (w := wan_of_paths(three_dc, agent_status(three_dc), remote_vtep))
                       and sorted(w.values()) == sorted([FAST, SLOW]) and w,
                       60, 0.5, "both dc1 -> dc2 WAN paths in the agent's table")
    wait_until(lambda: netns.ns_exec(s.ns, ["ping", "-c", "1", "-W", "1", d.ip],
                                     check=False).returncode == 0, 30, 0.2, "a first ping")
    sender = subprocess.Popen(["ip", "netns", "exec", s.ns, sys.executable, "-c", SENDER_LOOP,
                               s.mac, d.mac, s.ip, d.ip, str(FIRST_QP), str(K_QPS), "0.05"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    capture = None
    try:
        qps = set(range(FIRST_QP, FIRST_QP + K_QPS))

        def on_wan_links():
            st = agent_status(three_dc)
            mine = [q for q in st["qps"] if q["dqp"] in qps]
            per_link = defaultdict(set)
            for q in mine:
                per_link[paths.get(q["path"], f"path {q['path']}")].add(q["dqp"])
            return len(mine) == K_QPS and {k: len(v) for k, v in per_link.items()} \
                == {FAST: 6, SLOW: 2} and dict(per_link)
        # 300 : 100 Mbit/s -> 8 QPs as 6 : 2 (the data plane places them 4 : 4,
        # the agent's reconciliation moves two)
        placed = wait_until(on_wan_links, 30, 0.5, "QPs 6 : 2 by capacity in the agent's status")

        capture = WanCapture(three_dc, [FAST, SLOW], tmp_path)
        seen = {}

        def every_qp_seen_often():
            seen.update(capture.frames_per_qp(remote_vtep))
            counts = defaultdict(int)
            for per_qp in seen.values():
                for qp, n in per_qp.items():
                    counts[qp] += n
            return set(counts) == qps and min(counts.values()) >= 10
        wait_until(every_qp_seen_often, 30, 0.5, "every QP captured on a WAN link")
        capture.stop()
        capture = None
        on_wire = {name: set(per_qp) for name, per_qp in seen.items()}
        # each QP on one WAN link only, the same one the agent names, 6 : 2
        assert on_wire == {FAST: placed[FAST], SLOW: placed[SLOW]}
        assert (len(on_wire[FAST]), len(on_wire[SLOW])) == (6, 2)
        assert agent_status(three_dc)["imbalance"][remote_vtep] == 1.0
    finally:
        if capture:
            capture.stop()
        sender.kill()
        sender.wait(timeout=10)
        assert sender.returncode is not None


def test_set_wan_changes_one_link_or_all(three_dc):
    written = {w.name: w.props.rate_mbit for w in three_dc.topology.wan}
    one = "wan-dc2-border2-dc3-border2"
    try:
        three_dc.set_wan(one, rate_mbit=50)
        assert tbf_rates_mbit(three_dc) == {**written, one: 50.0}
        three_dc.set_wan(rate_mbit=200)
        assert tbf_rates_mbit(three_dc) == {n: 200.0 for n in written}
        assert {n: w.props.rate_mbit for n, w in three_dc.wan_links().items()} \
            == {n: 200.0 for n in written}
    finally:
        for name, rate in written.items():
            three_dc.set_wan(name, rate_mbit=rate)
    assert tbf_rates_mbit(three_dc) == written
