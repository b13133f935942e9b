"""Turn a topology into a concrete build plan: namespaces, interfaces, addresses.

Pure and deterministic (the same topology always gives the same plan), so the
FRR configs, the ContainerLab export and the live lab all agree.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .topology import Topology, WanLink, WanProps

UNDERLAY_MTU = 9000   # room for VXLAN's 50 bytes above the hosts' 1500
HOST_MTU = 1500
VXLAN_SOURCE_PORTS = (49152, 65535)   # the VTEPs' outer UDP source port range (qpagent steers in it)


@dataclass
class Interface:
    name: str
    address: ipaddress.IPv4Interface
    peer: str                       # node at the other end (a WAN box for WAN links)
    peer_address: ipaddress.IPv4Address
    peer_node: str                  # the router at the far end (through a WAN box)
    kind: str                       # "uplink", "downlink", "wan"


@dataclass
class Router:
    name: str
    role: str                       # spine, leaf, border
    dc: str
    asn: int
    loopback: ipaddress.IPv4Address
    interfaces: list[Interface] = field(default_factory=list)
    vnis: list[int] = field(default_factory=list)                 # leaves only
    host_ports: dict[str, str] = field(default_factory=dict)      # port -> host (leaves)
    mgmt: ipaddress.IPv4Interface | None = None
    agent: bool = False

    @property
    def uplinks(self) -> list[str]:
        return [i.name for i in self.interfaces if i.kind == "uplink"]


@dataclass
class HostPlan:
    name: str
    dc: str
    leaf: str
    leaf_port: str
    vni: int
    address: ipaddress.IPv4Interface
    mac: str
    mgmt: ipaddress.IPv4Interface
    agent: bool = False             # a host-mode qpagent counting on eth0


@dataclass
class P2PLink:
    """A veth pair; for WAN links one of the two halves around a WAN box."""
    a: str
    a_if: str
    b: str
    b_if: str


@dataclass
class WanPlan:
    name: str                       # also the WAN box's node name
    a: str
    a_if: str                       # interface on router a
    b: str
    b_if: str
    props: WanProps
    a_address: ipaddress.IPv4Interface
    b_address: ipaddress.IPv4Interface


@dataclass
class Plan:
    topology: Topology
    routers: dict[str, Router]
    hosts: dict[str, HostPlan]
    links: list[P2PLink]
    wans: list[WanPlan]
    mgmt_gateway: ipaddress.IPv4Interface

    @property
    def nodes(self) -> list[str]:
        """Every namespace the lab needs, routers first."""
        return list(self.routers) + list(self.hosts) + [w.name for w in self.wans]

    def leaves(self) -> list[Router]:
        return [r for r in self.routers.values() if r.role == "leaf"]

    def remote_vteps(self, leaf: str, vni: int) -> list[str]:
        return [str(r.loopback) for r in self.leaves() if r.name != leaf and vni in r.vnis]


def build_plan(topo: Topology) -> Plan:
    loopbacks = topo.addressing.loopbacks.hosts()
    p2p = topo.addressing.links.subnets(new_prefix=31)
    mgmt_hosts = topo.addressing.management.hosts()
    mgmt_len = topo.addressing.management.prefixlen
    gateway = ipaddress.IPv4Interface(f"{next(mgmt_hosts)}/{mgmt_len}")

    routers: dict[str, Router] = {}
    for dc in topo.dcs:
        for s in dc.spines:
            routers[s] = Router(s, "spine", dc.name, dc.spine_asn, next(loopbacks))
        for leaf in dc.leaves:
            routers[leaf.name] = Router(leaf.name, "leaf", dc.name, leaf.asn, next(loopbacks),
                                        vnis=sorted({h.vni for h in leaf.hosts}),
                                        agent=leaf.agent)
        for b in dc.borders:
            routers[b] = Router(b, "border", dc.name, dc.border_asn, next(loopbacks))

    links: list[P2PLink] = []

    def connect(a: Router, a_kind: str, b: Router, b_kind: str) -> None:
        net = next(p2p)
        a_ip, b_ip = net[0], net[1]
        a_if, b_if = f"eth{len(a.interfaces) + 1}", f"eth{len(b.interfaces) + 1}"
        a.interfaces.append(Interface(a_if, ipaddress.IPv4Interface(f"{a_ip}/31"), b.name, b_ip, b.name, a_kind))
        b.interfaces.append(Interface(b_if, ipaddress.IPv4Interface(f"{b_ip}/31"), a.name, a_ip, a.name, b_kind))
        links.append(P2PLink(a.name, a_if, b.name, b_if))

    # leaves take eth1..ethN towards the spines, in spine order (the agent's uplinks)
    for dc in topo.dcs:
        for leaf in dc.leaves:
            for s in dc.spines:
                connect(routers[leaf.name], "uplink", routers[s], "downlink")
        for b in dc.borders:
            for s in dc.spines:
                connect(routers[b], "uplink", routers[s], "downlink")

    wans: list[WanPlan] = []
    for w in topo.wan:
        wans.append(_wan_plan(w, routers[w.a], routers[w.b], next(p2p)))

    hosts: dict[str, HostPlan] = {}
    for leaf in topo.leaves:
        r = routers[leaf.name]
        r.mgmt = ipaddress.IPv4Interface(f"{next(mgmt_hosts)}/{mgmt_len}")
        for h in leaf.hosts:
            port = "h-" + h.name.split("-", 1)[1]
            r.host_ports[port] = h.name
            hosts[h.name] = HostPlan(h.name, h.dc, leaf.name, port, h.vni, h.address,
                                     _host_mac(h.address.ip), None, agent=h.agent)
    for h in hosts.values():
        h.mgmt = ipaddress.IPv4Interface(f"{next(mgmt_hosts)}/{mgmt_len}")
    return Plan(topo, routers, hosts, links, wans, gateway)


def _wan_plan(w: WanLink, a: Router, b: Router, net: ipaddress.IPv4Network) -> WanPlan:
    a_if = f"wan{sum(1 for i in a.interfaces if i.kind == 'wan') + 1}"
    b_if = f"wan{sum(1 for i in b.interfaces if i.kind == 'wan') + 1}"
    a_addr = ipaddress.IPv4Interface(f"{net[0]}/31")
    b_addr = ipaddress.IPv4Interface(f"{net[1]}/31")
    a.interfaces.append(Interface(a_if, a_addr, w.name, b_addr.ip, b.name, "wan"))
    b.interfaces.append(Interface(b_if, b_addr, w.name, a_addr.ip, a.name, "wan"))
    return WanPlan(w.name, a.name, a_if, b.name, b_if, w.props, a_addr, b_addr)


def _host_mac(ip: ipaddress.IPv4Address) -> str:
    """Locally administered and derived from the address: easy to read in captures."""
    o = ip.packed
    return "02:00:%02x:%02x:%02x:%02x" % tuple(o)
