"""End-to-end path liveness with the whole agent on two real VTEPs.

    hostA - vtepA =up0..up3= mid0..mid3 =up0..up3= vtepB - hostB

Each of the 4 paths crosses a middle router of its own, so a path can fail
where neither VTEP sees a link go down. With agents on both VTEPs (probes
are answered by vtepB's data plane) and K QPs sending steadily, one middle
router's far link is silently blackholed (both neighbour entries point at a
MAC nobody has): every QP that used it must show up on another path at
vtepB within the liveness deadline plus a round trip, the path must come
back after the hold-down and balance be exact again. Without an agent at
vtepB nothing answers, so nothing is ever declared dead.
Run with -s for the measured gap per QP.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from scapy.contrib.roce import AETH, BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from agent_config import write_agent_config
from processes import stop_group, wait_until
from roce_wire import roce_frame
from twovtep import sh
from qpagent import netnsutil

K_QPS = 8
N_PATHS = 4
FIRST_QP = 0x300
SEND_EVERY_S = 0.002          # each QP sends a frame this often
DEADLINE_MS = 30              # liveness 10 ms x 3
GAP_BOUND_MS = 1000           # correctness only: the measured figure is printed
QPAGENT = str(Path(sys.executable).parent / "qpagent")
ETH_P_ALL = 0x0003
PACKET_HOST = 0
PACKET_OUTGOING = 4
RC_ACKNOWLEDGE = 0x11
AETH_ACK, AETH_NAK_PSN_SEQ = 0x1F, 0x60



# ---------------------------------------------------------------- topology

class Topo:
    def __init__(self, tag: str):
        p = f"qt8-{tag}-"
        self.vtep = {"A": p + "vtepA", "B": p + "vtepB"}
        self.host = {"A": p + "hostA", "B": p + "hostB"}
        self.mids = [f"{p}mid{i}" for i in range(N_PATHS)]
        self.lo = {"A": "10.0.0.1", "B": "10.0.0.2"}
        self.host_ip = {"A": "192.168.100.1", "B": "192.168.100.2"}
        self.host_mac = {"A": "02:00:00:00:30:01", "B": "02:00:00:00:30:02"}
        self.uplinks = [f"up{i}" for i in range(N_PATHS)]

    @property
    def namespaces(self) -> list[str]:
        return [*self.vtep.values(), *self.host.values(), *self.mids]

    @staticmethod
    def link_ip(side: str, i: int, who: str) -> str:
        """Link i between vtep `side` and mid i: the VTEP is .1, the mid .2."""
        return f"10.{20 if side == 'A' else 21}.{i}.{1 if who == 'vtep' else 2}"

    def build(self) -> None:
        for ns in self.namespaces:
            sh(f"ip netns add {ns}")
            sh(f"ip -n {ns} link set lo up")
        for ns in [*self.vtep.values(), *self.mids]:
            sh(f"ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1 "
               "net.ipv4.fib_multipath_hash_policy=1 net.ipv4.conf.all.rp_filter=0 "
               "net.ipv4.conf.default.rp_filter=0")
        for side in "AB":
            ns = self.vtep[side]
            sh(f"ip -n {ns} addr add {self.lo[side]}/32 dev lo")
            for i, (up, mid) in enumerate(zip(self.uplinks, self.mids)):
                far = f"to{side}"
                sh(f"ip -n {ns} link add {up} type veth peer name {far} netns {mid}")
                sh(f"ip -n {ns} addr add {self.link_ip(side, i, 'vtep')}/24 dev {up}")
                sh(f"ip -n {mid} addr add {self.link_ip(side, i, 'mid')}/24 dev {far}")
                sh(f"ip -n {ns} link set {up} up")
                sh(f"ip -n {mid} link set {far} up")
                sh(f"ip -n {mid} route add {self.lo[side]}/32 via {self.link_ip(side, i, 'vtep')}")
        for side, other in (("A", "B"), ("B", "A")):
            ns = self.vtep[side]
            hops = " ".join(f"nexthop via {self.link_ip(side, i, 'mid')} dev {up}"
                            for i, up in enumerate(self.uplinks))
            sh(f"ip -n {ns} route add {self.lo[other]}/32 {hops}")
            sh(f"ip -n {ns} link add vxlan100 type vxlan id 100 local {self.lo[side]} "
               "dstport 4789 srcport 49152 65535 nolearning")
            sh(f"ip -n {ns} link add br100 type bridge")
            sh(f"ip -n {ns} link add hostlink type veth peer name eth0 netns {self.host[side]}")
            for dev in ("vxlan100", "hostlink"):
                sh(f"ip -n {ns} link set {dev} master br100")
                sh(f"ip -n {ns} link set {dev} up")
            sh(f"ip -n {ns} link set br100 up")
            host = self.host[side]
            sh(f"ip -n {host} link set eth0 address {self.host_mac[side]}")
            sh(f"ip -n {host} addr add {self.host_ip[side]}/24 dev eth0")
            sh(f"ip -n {host} link set eth0 up")
            sh(f"bridge -n {ns} fdb append 00:00:00:00:00:00 dev vxlan100 dst {self.lo[other]}")
            sh(f"bridge -n {ns} fdb add {self.host_mac[other]} dev vxlan100 dst {self.lo[other]}")
            sh(f"ip -n {host} neigh replace {self.host_ip[other]} "
               f"lladdr {self.host_mac[other]} dev eth0")

    def teardown(self) -> None:
        for ns in self.namespaces:
            sh(f"ip netns del {ns}", check=False)

    def blackhole(self, i: int, cut: bool = True) -> None:
        """Mid router i silently drops everything between the VTEPs, both
        ways (a blackhole route sends no ICMP), while its links, and so
        every VTEP's routes and neighbours, stay as they were: only
        end-to-end probes can tell."""
        for side in "AB":
            route = (f"blackhole {self.lo[side]}/32" if cut else
                     f"{self.lo[side]}/32 via {self.link_ip(side, i, 'vtep')}")
            sh(f"ip -n {self.mids[i]} route replace {route}")


@pytest.fixture
def topo():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF)")
    t = Topo(uuid.uuid4().hex[:6])
    try:
        t.build()
        wait_until("hostA reaching hostB over the overlay",
                   lambda: sh(f"ip netns exec {t.host['A']} ping -c1 -W1 {t.host_ip['B']}",
                              check=False).returncode == 0, deadline_s=10)
        yield t
    finally:
        t.teardown()


# ---------------------------------------------------------------- agents

class Agent:
    def __init__(self, topo: Topo, side: str, workdir: str):
        self.ns = topo.vtep[side]
        self.socket = os.path.join(workdir, f"agent{side}.sock")
        self.config = os.path.join(workdir, f"agent{side}.toml")
        write_agent_config(self.config, node=self.ns, socket=self.socket, vxlan="vxlan100",
                           uplinks=topo.uplinks, count=False, liveness=True)
        self.log_path = os.path.join(workdir, f"agent{side}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, QPAGENT, "run",
                                      "--config", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def status(self) -> dict | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"qpagent in {self.ns} exited with {self.proc.returncode}:\n"
                                 + Path(self.log_path).read_text())
        done = subprocess.run([QPAGENT, "status", "--socket", self.socket, "--json"],
                              capture_output=True, text=True, timeout=10)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def paths(self) -> list[dict]:
        status = self.status() or {"vteps": []}
        return [p for v in status["vteps"] for p in v["paths"]]

    def stop(self) -> None:
        stop_group(self.proc, 15)
        self.log.close()
        subprocess.run(["ip", "netns", "exec", self.ns, QPAGENT, "purge", "--config", self.config],
                       capture_output=True, timeout=60)


@contextlib.contextmanager
def agents(topo: Topo, sides: str):
    workdir = tempfile.mkdtemp(prefix="qt8-agents-")
    running = []
    try:
        # One at a time: two agents starting at once race on mounting bpffs.
        for side in sides:
            running.append(Agent(topo, side, workdir))
            wait_until(f"the agent in {running[-1].ns} answering", running[-1].status,
                       deadline_s=120)
        yield running
    finally:
        for agent in running:
            agent.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- traffic

class Traffic:
    """K QPs from hostA, one RC SEND frame each every SEND_EVERY_S, PSNs
    rising; at vtepB every VXLAN RoCE frame arriving on an uplink is
    recorded as (time, uplink, dqp, psn) from a thread per run."""

    def __init__(self, topo: Topo):
        self.topo = topo
        self.seen: list[tuple[float, str, int, int]] = []
        self.samples: dict[int, bytes] = {}   # one whole frame per QP, for Scapy
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._capture, daemon=True)]
        with netnsutil.enter(topo.host["A"]):
            self._tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._tx.bind(("eth0", 0))
        self._rx = {}
        with netnsutil.enter(topo.vtep["B"]):
            for up in topo.uplinks:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                sock.bind((up, 0))
                sock.settimeout(0.05)
                self._rx[up] = sock

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._tx.close()
        for sock in self._rx.values():
            sock.close()

    def _send(self) -> None:
        t, psn = self.topo, 0
        # Built once by Scapy; only the PSN (BTH bytes 9-11) changes per frame.
        frames = [bytearray(roce_frame(t.host_mac["A"], t.host_mac["B"], t.host_ip["A"],
                                       t.host_ip["B"], dqp=qp))
                  for qp in range(FIRST_QP, FIRST_QP + K_QPS)]
        psn_at = 14 + 20 + 8 + 9
        while not self._stop.is_set():
            psn = (psn + 1) & 0xFFFFFF
            for frame in frames:
                frame[psn_at:psn_at + 3] = psn.to_bytes(3, "big")
                self._tx.send(frame)
            self._stop.wait(SEND_EVERY_S)

    def _capture(self) -> None:
        import select
        socks = {s: up for up, s in self._rx.items()}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(socks), [], [], 0.05)
            now = time.monotonic()
            for sock in ready:
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, socket.timeout):
                    continue
                if addr[2] != PACKET_HOST:
                    # Outgoing, or addressed to another MAC (the blackhole):
                    # only what vtepB's stack takes in has arrived.
                    continue
                got = _decode(data)
                if got is not None:
                    self.seen.append((now, socks[sock], *got))
                    self.samples.setdefault(got[0], data)

    def links_since(self, t0: float) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for t, link, qp, _ in list(self.seen):
            if t >= t0:
                out.setdefault(qp, set()).add(link)
        return out


def _decode(data: bytes) -> tuple[int, int] | None:
    """(dqp, psn) of Ether/IPv4/UDP 4789/VXLAN/Ether/IPv4/UDP 4791/BTH,
    read at fixed offsets (fast enough for every frame); Scapy checks a
    sample of them afterwards."""
    if len(data) < 14 + 20 + 8 + 8 + 14 + 20 + 8 + 12 or data[12:14] != b"\x08\x00":
        return None
    if data[23] != 17 or struct.unpack_from("!H", data, 36)[0] != 4789:
        return None
    inner = 14 + 20 + 8 + 8
    if data[inner + 12:inner + 14] != b"\x08\x00" or data[inner + 23] != 17:
        return None
    if struct.unpack_from("!H", data, inner + 36)[0] != 4791:
        return None
    bth = inner + 14 + 20 + 8
    return (int.from_bytes(data[bth + 5:bth + 8], "big"),
            int.from_bytes(data[bth + 9:bth + 12], "big"))


def scapy_agrees(traffic: Traffic) -> None:
    for qp, frame in traffic.samples.items():
        pkt = Ether(frame)
        assert pkt[VXLAN].vni == 100 and pkt[BTH].dqpn == qp == _decode(frame)[0]


def longest_gap_ms(traffic: Traffic, qp: int, t0: float, t1: float) -> float:
    times = sorted(t for t, _, q, _ in list(traffic.seen) if q == qp and t0 <= t <= t1)
    return max((b - a for a, b in zip(times, times[1:])), default=float("inf")) * 1e3


def busiest(links: dict[int, set[str]]) -> int:
    per_link: dict[str, int] = {}
    for qp_links in links.values():
        assert len(qp_links) == 1, qp_links
        (link,) = qp_links
        per_link[link] = per_link.get(link, 0) + 1
    return max(per_link.values())


def all_qps_steady(traffic: Traffic, since: float) -> dict[int, set[str]] | None:
    links = traffic.links_since(since)
    ok = len(links) == K_QPS and all(len(v) == 1 for v in links.values())
    return links if ok else None


# ---------------------------------------------------------------- tests

def test_a_silent_middle_failure_moves_its_qps_within_the_liveness_deadline(topo):
    with agents(topo, "AB") as (agent_a, _agent_b):
        with Traffic(topo) as traffic:
            t = time.monotonic()
            # Only paths in use are probed: every path carries QPs once traffic runs.
            wait_until("every path of vtepA answering probes",
                       lambda: len(p := agent_a.paths()) == N_PATHS
                       and all(x["health"] == "up" for x in p) and p, deadline_s=30)
            links = wait_until("every QP steady on one path",
                               lambda: all_qps_steady(traffic, time.monotonic() - 0.3),
                               deadline_s=15, every_s=0.35)
            assert busiest(links) == math.ceil(K_QPS / N_PATHS)
            cut_link = sorted(links[FIRST_QP])[0]
            cut = topo.uplinks.index(cut_link)
            victims = sorted(qp for qp, ls in links.items() if cut_link in ls)
            t_cut = time.monotonic()
            topo.blackhole(cut)
            moved = wait_until(
                "every victim QP arriving on another path",
                lambda: (m := traffic.links_since(time.monotonic() - 0.1))
                and all(m.get(qp) and cut_link not in m[qp] for qp in victims) and m,
                deadline_s=10)
            t_moved = time.monotonic()
            gaps = {qp: longest_gap_ms(traffic, qp, t_cut - 0.05, t_moved) for qp in victims}
            print(f"\nsilent cut of mid{cut}'s far link: longest gap per QP (ms): "
                  + ", ".join(f"{qp:#x} {g:.1f}" for qp, g in gaps.items())
                  + f"; deadline {DEADLINE_MS} ms + RTT")
            assert all(g < GAP_BOUND_MS for g in gaps.values()), gaps
            assert all(len(ls) == 1 for ls in moved.values())
            wait_until("the cut path reported down in status",
                       lambda: any(p["health"] == "down" and not p["alive"]
                                   for p in agent_a.paths() if p["uplink"] == cut_link),
                       deadline_s=5)
            status = agent_a.status()
            repairs = status["repairs"]["liveness"]
            assert repairs["total"] >= len(victims), status["repairs"]

            t_heal = time.monotonic()
            topo.blackhole(cut, cut=False)
            wait_until("the healed path back in use after the hold-down",
                       lambda: any(p["health"] == "up" and p["alive"]
                                   for p in agent_a.paths() if p["uplink"] == cut_link),
                       deadline_s=15)
            back_after = time.monotonic() - t_heal
            assert back_after >= 1.0, back_after     # not before the hold-down
            links = wait_until("exact balance again, on all four paths",
                               lambda: (ls := all_qps_steady(traffic, time.monotonic() - 0.3))
                               and busiest(ls) == math.ceil(K_QPS / N_PATHS)
                               and any(cut_link in v for v in ls.values()) and ls,
                               deadline_s=10, every_s=0.35)
            print(f"healed path back in use after {back_after:.2f} s (hold-down 1 s); "
                  f"traffic started {t_cut - t:.1f} s before the cut")
            scapy_agrees(traffic)


def test_without_a_remote_agent_nothing_is_declared_dead_and_traffic_flows(topo):
    with agents(topo, "A") as (agent_a,):
        with Traffic(topo) as traffic:
            wait_until("probes sent on every path",
                       lambda: len(p := agent_a.paths()) == N_PATHS
                       and all(x["probes_sent"] > 50 for x in p) and p, deadline_s=30)
            t0 = time.monotonic()
            wait_until("a second of traffic", lambda: time.monotonic() - t0 > 1.0,
                       deadline_s=5, every_s=0.1)
            links = all_qps_steady(traffic, t0)
            assert links is not None and busiest(links) == math.ceil(K_QPS / N_PATHS), links
            gaps = [longest_gap_ms(traffic, qp, t0, time.monotonic()) for qp in links]
            assert max(gaps) < GAP_BOUND_MS, gaps
            paths = agent_a.paths()
            assert [(p["health"], p["alive"], p["replies"]) for p in paths] == \
                [("unchecked", True, 0)] * N_PATHS
            assert agent_a.status()["repairs"]["liveness"]["total"] == 0


# ---------------------------------------------------------------- go-back NAKs

class RcPair:
    """One RC QP: hostA's requester sends SENDs with rising PSNs when told
    to; hostB's responder ACKs each in order, from the QP's UDP source port
    (as a NIC does), so vtepA's path_probe pairs the ACKs with the QP. Every
    ACKNOWLEDGE reaching hostA is recorded as (time, psn, syndrome, frame)."""

    QP, OWN_QP, SPORT = 0x3A0, 0x0A, 49999

    def __init__(self, topo: Topo):
        self.topo = topo
        self.next_psn = 1
        self.replies: list[tuple[float, int, int, bytes]] = []
        self._stop = threading.Event()
        socks = {}
        for side in "AB":
            with netnsutil.enter(topo.host[side]):
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind(("eth0", 0))
            socks[side] = sock
        self._a, self._b = socks["A"], socks["B"]
        self._threads = [threading.Thread(target=self._respond, daemon=True),
                         threading.Thread(target=self._record, daemon=True)]
        for t in self._threads:
            t.start()

    def send(self, n: int) -> None:
        for _ in range(n):
            self._send(self.next_psn)
            self.next_psn += 1

    def go_back(self, psn: int) -> None:
        """Resend from `psn` on, as a requester does on a NAK."""
        for again in range(psn, self.next_psn):
            self._send(again)

    def _send(self, psn: int) -> None:
        t = self.topo
        self._a.send(roce_frame(t.host_mac["A"], t.host_mac["B"], t.host_ip["A"],
                                t.host_ip["B"], dqp=self.QP, psn=psn, udp_sport=self.SPORT))

    def _frames(self, sock: socket.socket):
        """(frame, decoded) for each frame the host's stack takes in, until closed."""
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if ready:
                data, addr = sock.recvfrom(65535)
                if addr[2] == PACKET_HOST:
                    yield data, Ether(data)

    def _respond(self) -> None:
        t, msn = self.topo, 0
        for _, pkt in self._frames(self._b):
            if BTH not in pkt or pkt[BTH].dqpn != self.QP:
                continue
            msn += 1
            self._b.send(bytes(Ether(src=t.host_mac["B"], dst=t.host_mac["A"])
                               / IP(src=t.host_ip["B"], dst=t.host_ip["A"], flags="DF", id=0)
                               / UDP(sport=self.SPORT, dport=4791)
                               / BTH(opcode=RC_ACKNOWLEDGE, dqpn=self.OWN_QP, psn=pkt[BTH].psn)
                               / AETH(syndrome=AETH_ACK, msn=msn)))

    def _record(self) -> None:
        for data, pkt in self._frames(self._a):
            if AETH in pkt and pkt[BTH].dqpn == self.OWN_QP:
                self.replies.append((time.monotonic(), pkt[BTH].psn, pkt[AETH].syndrome, data))

    def acked(self) -> int:
        """The last PSN acknowledged so far (0: none)."""
        return max((psn for _, psn, syn, _ in list(self.replies) if syn == AETH_ACK), default=0)

    def naks(self) -> list[tuple[float, int, int, bytes]]:
        return [r for r in list(self.replies) if r[2] != AETH_ACK]

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._a.close()
        self._b.close()


def test_a_requester_whose_window_died_with_its_path_is_sent_back_at_once(topo):
    """The requester sends a window into a path that then falls silent and
    sends nothing more (its window is full): no later packet can carry the
    QP to another path, and no NAK can come. vtepA's agent moves the QP when
    the path dies and hands hostA the NAK its responder would send for the
    oldest unacknowledged PSN, with a valid ICRC; the window it resends is
    acknowledged over another path."""
    with agents(topo, "AB") as (agent_a, _agent_b):
        pair = RcPair(topo)
        try:
            def steady_on_a_checked_path():
                pair.send(1)
                used = [p for p in agent_a.paths() if p["qps"]]
                return (pair.acked() >= 20 and len(used) == 1 and used[0]["health"] == "up"
                        and used[0]["uplink"])

            cut_link = wait_until("the QP acknowledged, on a path that answers probes",
                                  steady_on_a_checked_path, deadline_s=30, every_s=0.01)
            wait_until("every SEND acknowledged", lambda: pair.acked() == pair.next_psn - 1,
                       deadline_s=2)
            first_lost = pair.next_psn
            t_cut = time.monotonic()
            topo.blackhole(topo.uplinks.index(cut_link))
            pair.send(8)                         # the window, into the silent path
            (t_nak, psn, syndrome, frame), = wait_until(
                "a NAK at hostA", lambda: pair.naks(), deadline_s=5, every_s=0.005)
            print(f"\ngo-back NAK for PSN {psn} at hostA {(t_nak - t_cut) * 1e3:.0f} ms after "
                  f"the cut of {cut_link} (liveness deadline {DEADLINE_MS} ms + RTT)")
            assert (psn, syndrome) == (first_lost, AETH_NAK_PSN_SEQ)
            nak = Ether(frame)
            assert (nak[IP].src, nak[IP].dst, nak[UDP].sport) == \
                (topo.host_ip["B"], topo.host_ip["A"], RcPair.SPORT)
            recomputed = Ether(frame)
            del recomputed[BTH].icrc
            assert bytes(Ether(bytes(recomputed))) == frame      # Scapy's ICRC agrees
            pair.go_back(psn)
            wait_until("the resent window acknowledged",
                       lambda: pair.acked() == pair.next_psn - 1, deadline_s=5)
            # The resend's ACKs may have gone back the dead way before vtepB
            # moved them: then more NAKs came, one a deadline, never another PSN.
            sent = agent_a.status()["go_back_naks"]
            assert 1 <= sent["sent"] <= 3, sent
            assert {p for _, p, _, _ in pair.naks()} == {first_lost}
            assert all(p["qps"] == 0 for p in agent_a.paths() if p["uplink"] == cut_link)
        finally:
            pair.close()
