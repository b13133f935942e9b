"""Two VTEPs joined by N parallel links, in network namespaces.

    hostA --veth-- [br100: hostlink + vxlan100] vtepA ==N links== vtepB [...] --veth-- hostB

Each VTEP has its loopback address as VXLAN source, an ECMP route over all
N links to the other's loopback (L4 multipath hashing on, forwarding on),
one VXLAN device (VNI 100, dstport 4789, srcport 49152-65535, nolearning)
in a bridge with a veth to its host, and static FDB entries: the default
remote (all-zero MAC) plus the far host's MAC. Everything is torn down on
exit, also when building fails half way.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from dataclasses import dataclass, field

PREFIX = "qt2-"
VNI = 100
VXLAN_DEV = "vxlan100"
SRCPORT_RANGE = (49152, 65535)


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"command failed ({done.returncode}): {cmd}\n{done.stderr.strip()}")
    return done


@dataclass
class Side:
    vtep_ns: str
    host_ns: str
    vtep_ip: str        # loopback, VXLAN source
    host_ip: str        # inner address of the host
    host_mac: str
    uplinks: list[str] = field(default_factory=list)
    link_ips: list[str] = field(default_factory=list)   # this side's address per link

    def run(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(f"ip netns exec {self.vtep_ns} {cmd}", check=check)


@dataclass
class TwoVtep:
    a: Side
    b: Side
    n_paths: int

    @property
    def namespaces(self) -> list[str]:
        return [self.a.vtep_ns, self.a.host_ns, self.b.vtep_ns, self.b.host_ns]

    def gateway_of(self, side: Side, uplink: str) -> str:
        """The far end's address on one link (the next hop via that uplink)."""
        other = self.b if side is self.a else self.a
        return other.link_ips[side.uplinks.index(uplink)]


def _side(tag: str, letter: str, index: int) -> Side:
    return Side(vtep_ns=f"{PREFIX}{tag}-vtep{letter}", host_ns=f"{PREFIX}{tag}-host{letter}",
                vtep_ip=f"10.0.0.{index}", host_ip=f"192.168.100.{index}",
                host_mac=f"02:00:00:00:10:{index:02x}")


def _build(topo: TwoVtep) -> None:
    a, b = topo.a, topo.b
    for ns in topo.namespaces:
        sh(f"ip netns add {ns}")
        sh(f"ip -n {ns} link set lo up")
    for side in (a, b):
        side.run("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 "
                 "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0")
        sh(f"ip -n {side.vtep_ns} addr add {side.vtep_ip}/32 dev lo")
    for i in range(topo.n_paths):
        up = f"up{i}"
        sh(f"ip -n {a.vtep_ns} link add {up} type veth peer name {up} netns {b.vtep_ns}")
        for side, host in ((a, 1), (b, 2)):
            ip = f"10.10.{i}.{host}"
            sh(f"ip -n {side.vtep_ns} addr add {ip}/24 dev {up}")
            sh(f"ip -n {side.vtep_ns} link set {up} up")
            side.uplinks.append(up)
            side.link_ips.append(ip)
    for side, other in ((a, b), (b, a)):
        hops = " ".join(f"nexthop via {other.link_ips[i]} dev {up}"
                        for i, up in enumerate(side.uplinks))
        sh(f"ip -n {side.vtep_ns} route add {other.vtep_ip}/32 {hops}")
        lo, hi = SRCPORT_RANGE
        sh(f"ip -n {side.vtep_ns} link add {VXLAN_DEV} type vxlan id {VNI} local {side.vtep_ip} "
           f"dstport 4789 srcport {lo} {hi} nolearning")
        sh(f"ip -n {side.vtep_ns} link add br{VNI} type bridge")
        sh(f"ip -n {side.vtep_ns} link add hostlink type veth peer name eth0 netns {side.host_ns}")
        for dev in (VXLAN_DEV, "hostlink"):
            sh(f"ip -n {side.vtep_ns} link set {dev} master br{VNI}")
            sh(f"ip -n {side.vtep_ns} link set {dev} up")
        sh(f"ip -n {side.vtep_ns} link set br{VNI} up")
        sh(f"ip -n {side.host_ns} link set eth0 address {side.host_mac}")
        sh(f"ip -n {side.host_ns} addr add {side.host_ip}/24 dev eth0")
        sh(f"ip -n {side.host_ns} link set eth0 up")
        sh(f"bridge -n {side.vtep_ns} fdb append 00:00:00:00:00:00 dev {VXLAN_DEV} dst {other.vtep_ip}")
        sh(f"bridge -n {side.vtep_ns} fdb add {other.host_mac} dev {VXLAN_DEV} dst {other.vtep_ip}")
        # The far host's MAC is known, so hosts need no ARP across the overlay.
        sh(f"ip -n {side.host_ns} neigh replace {other.host_ip} lladdr {other.host_mac} dev eth0")


def wait_reachable(topo: TwoVtep, deadline_s: float = 10.0) -> None:
    """Poll host-to-host ping until it answers (links and ARP settle)."""
    end = time.monotonic() + deadline_s
    while True:
        done = sh(f"ip netns exec {topo.a.host_ns} ping -c1 -W1 {topo.b.host_ip}", check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"hostA cannot reach hostB over the overlay: {done.stdout}{done.stderr}")
        time.sleep(0.1)


def teardown(topo: TwoVtep) -> None:
    for ns in topo.namespaces:
        sh(f"ip netns del {ns}", check=False)


@contextlib.contextmanager
def two_vteps(n_paths: int, tag: str | None = None, reachable: bool = True):
    tag = tag or uuid.uuid4().hex[:6]
    topo = TwoVtep(_side(tag, "A", 1), _side(tag, "B", 2), n_paths)
    try:
        _build(topo)
        if reachable:
            wait_reachable(topo)
        yield topo
    finally:
        teardown(topo)
