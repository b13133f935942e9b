"""One VTEP steering towards many remote VTEPs, in network namespaces.

    host --veth-- [br100: hostlink + vxlan100] vtep ==P uplinks== core

The core namespace holds every remote VTEP's address on its loopback and
answers ARP for the next hops; VXLAN sent to it ends there (no socket on
4789, no route back, so not even an ICMP error), counted by the kernel as
UDP datagrams to no port: the count of frames that made it across. The
VTEP has an ECMP route per remote VTEP over all uplinks (L4 multipath
hashing on), one VXLAN device (VNI 100, ports 49152-65535, nolearning) and
static FDB entries: the default remote (all-zero MAC) and one remote host
MAC per remote VTEP. Everything is removed on exit, also when building
fails half way.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from dataclasses import dataclass, field

PREFIX = "qtscale-"
VNI = 100
VXLAN_DEV = "vxlan100"
SRCPORT_RANGE = (49152, 65535)
HOST_MAC = "02:00:00:00:10:01"
HOST_IP = "192.168.100.1"
LOCAL_VTEP = "10.0.0.1"


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"command failed ({done.returncode}): {cmd}\n{done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Remote:
    vtep_ip: str        # the remote VTEP (on the core's loopback)
    host_mac: str       # a host behind it, as the FDB says
    host_ip: str


@dataclass
class ScaleTopo:
    tag: str
    n_uplinks: int
    remotes: list[Remote]
    uplinks: list[str] = field(default_factory=list)

    @property
    def vtep_ns(self) -> str:
        return f"{PREFIX}{self.tag}-vtep"

    @property
    def host_ns(self) -> str:
        return f"{PREFIX}{self.tag}-host"

    @property
    def core_ns(self) -> str:
        return f"{PREFIX}{self.tag}-core"

    @property
    def namespaces(self) -> list[str]:
        return [self.vtep_ns, self.host_ns, self.core_ns]

    def delivered(self) -> int:
        """UDP datagrams the core received for a port nobody listens on:
        every VXLAN frame that crossed (nothing else sends UDP there)."""
        text = sh(f"ip netns exec {self.core_ns} cat /proc/net/snmp").stdout
        udp = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
        return int(dict(zip(udp[0][1:], udp[1][1:]))["NoPorts"])


def _remotes(count: int) -> list[Remote]:
    return [Remote(vtep_ip=f"10.0.1.{i + 1}", host_mac=f"02:00:00:01:00:{i + 1:02x}",
                   host_ip=f"192.168.100.{i + 101}") for i in range(count)]


def _batch(ns: str | None, lines: list[str], tool: str = "ip") -> None:
    """Many ip/bridge commands in one process (-batch): building stays fast."""
    target = f"-n {ns} " if ns else ""
    done = subprocess.run(f"{tool} {target}-batch -", shell=True, input="\n".join(lines) + "\n",
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} -batch failed in {ns}: {done.stderr.strip()}")


def _build(topo: ScaleTopo) -> None:
    v, h, c = topo.vtep_ns, topo.host_ns, topo.core_ns
    for ns in topo.namespaces:
        sh(f"ip netns add {ns}")
        sh(f"ip -n {ns} link set lo up")
    sh(f"ip netns exec {v} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 "
       "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0")
    sh(f"ip netns exec {c} sysctl -qw net.ipv4.conf.all.rp_filter=0 "
       "net.ipv4.conf.default.rp_filter=0")
    sh(f"ip -n {v} addr add {LOCAL_VTEP}/32 dev lo")
    _batch(c, [f"addr add {r.vtep_ip}/32 dev lo" for r in topo.remotes])
    for i in range(topo.n_uplinks):
        up = f"up{i}"
        sh(f"ip -n {v} link add {up} type veth peer name {up} netns {c}")
        _batch(v, [f"addr add 10.10.{i}.1/24 dev {up}", f"link set {up} up"])
        _batch(c, [f"addr add 10.10.{i}.2/24 dev {up}", f"link set {up} up"])
        topo.uplinks.append(up)
    hops = " ".join(f"nexthop via 10.10.{i}.2 dev {up}" for i, up in enumerate(topo.uplinks))
    _batch(v, [f"route add {r.vtep_ip}/32 {hops}" for r in topo.remotes])
    lo, hi = SRCPORT_RANGE
    sh(f"ip -n {v} link add {VXLAN_DEV} type vxlan id {VNI} local {LOCAL_VTEP} "
       f"dstport 4789 srcport {lo} {hi} nolearning")
    sh(f"ip -n {v} link add br{VNI} type bridge")
    sh(f"ip -n {v} link add hostlink type veth peer name eth0 netns {h}")
    _batch(v, [f"link set {VXLAN_DEV} master br{VNI}", "link set hostlink master br100",
               f"link set {VXLAN_DEV} up", "link set hostlink up", f"link set br{VNI} up"])
    _batch(h, [f"link set eth0 address {HOST_MAC}", f"addr add {HOST_IP}/24 dev eth0",
               "link set eth0 up"])
    fdb = []
    for r in topo.remotes:
        fdb.append(f"fdb append 00:00:00:00:00:00 dev {VXLAN_DEV} dst {r.vtep_ip}")
        fdb.append(f"fdb add {r.host_mac} dev {VXLAN_DEV} dst {r.vtep_ip}")
    _batch(v, fdb, tool="bridge")


def teardown(topo: ScaleTopo) -> None:
    for ns in topo.namespaces:
        sh(f"ip netns del {ns}", check=False)


@contextlib.contextmanager
def scale_topology(n_remotes: int, n_uplinks: int, tag: str | None = None):
    topo = ScaleTopo(tag or uuid.uuid4().hex[:6], n_uplinks, _remotes(n_remotes))
    try:
        _build(topo)
        yield topo
    finally:
        teardown(topo)
