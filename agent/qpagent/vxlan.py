"""Read what the agent needs to know about a VXLAN device from the kernel."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2 import IPRoute

LOCAL_PORT_RANGE_SYSCTL = "/proc/sys/net/ipv4/ip_local_port_range"
ZERO_MAC = "00:00:00:00:00:00"


class VxlanError(RuntimeError):
    """The named device is missing or is not a VXLAN device."""


@dataclass(frozen=True)
class VxlanInfo:
    ifindex: int
    vni: int
    local: str | None
    dstport: int
    port_min: int   # effective outer source-port range the driver uses
    port_max: int


def local_port_range(path: str = LOCAL_PORT_RANGE_SYSCTL) -> tuple[int, int]:
    """net.ipv4.ip_local_port_range of the current network namespace."""
    with open(path) as f:
        low, high = (int(x) for x in f.read().split())
    return low, high


def effective_port_range(dev_lo: int, dev_hi: int,
                         local_range: tuple[int, int]) -> tuple[int, int]:
    """The range the VXLAN driver draws source ports from.

    A device created without `srcport` reports 0/0 and the driver then uses
    the namespace's ip_local_port_range (vxlan_newlink/udp_flow_src_port).
    """
    try:  # the shared port arithmetic, when present, is the single truth
        from qpagent import portmath
        return tuple(portmath.effective_port_range(dev_lo, dev_hi, local_range))
    except (ImportError, AttributeError):
        pass
    if dev_lo == 0 and dev_hi == 0:
        return tuple(local_range)
    return dev_lo, dev_hi


def _ipr(ipr):
    return (ipr, False) if ipr is not None else (IPRoute(), True)


def _link(ipr, ifname: str):
    links = ipr.get_links(ifname=ifname) if ifname else []
    if not links:
        raise VxlanError(f"no such interface: {ifname}")
    return links[0]


def vxlan_info(ifname: str, ipr=None, local_range: tuple[int, int] | None = None) -> VxlanInfo:
    """VNI, local address, UDP port and effective source-port range of a device."""
    ipr, own = _ipr(ipr)
    try:
        link = _link(ipr, ifname)
    finally:
        if own:
            ipr.close()
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind != "vxlan":
        raise VxlanError(f"{ifname} is not a VXLAN device (kind {kind or 'none'})")
    data = info.get_attr("IFLA_INFO_DATA")
    port_range = data.get_attr("IFLA_VXLAN_PORT_RANGE") or {"low": 0, "high": 0}
    lo, hi = port_range["low"], port_range["high"]
    if local_range is None:
        local_range = local_port_range()
    lo, hi = effective_port_range(lo, hi, local_range)
    return VxlanInfo(
        ifindex=link["index"],
        vni=data.get_attr("IFLA_VXLAN_ID"),
        local=data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6"),
        dstport=data.get_attr("IFLA_VXLAN_PORT") or 4789,
        port_min=lo,
        port_max=hi,
    )


def fdb_remotes(ifname: str, ipr=None) -> list[tuple[str, str]]:
    """(MAC, remote VTEP IP) for every FDB entry of the device that names a
    remote. The all-zero MAC is the default remote (flooding, head-end
    replication); EVPN installs one entry per learned MAC."""
    ipr, own = _ipr(ipr)
    try:
        index = _link(ipr, ifname)["index"]
        entries = ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=index)
    finally:
        if own:
            ipr.close()
    remotes = []
    for entry in entries:
        if entry.get("ifindex") != index:
            continue  # older kernels ignore the filter in a dump
        mac, dst = entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")
        if mac and dst:
            remotes.append((mac.lower(), dst))
    return sorted(set(remotes))
