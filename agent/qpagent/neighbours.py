"""Keep the next hops of managed uplinks resolved, without traffic.

path_pin asks the FIB which uplink a packet's outer 5-tuple takes. When the
next hop on that uplink has no resolved neighbour entry (a path used for
the first time, or an entry that went stale), the lookup says NO_NEIGH and
path_pin has to let the kernel resolve it while the packet waits
(bpf_redirect_neigh). Neighbour entries flagged `managed` (NTF_EXT_MANAGED,
kernel 5.16+) are resolved by the kernel as soon as they exist and kept
REACHABLE without traffic, so every path the agent uses has its next hop's
MAC ready and path_pin takes its plain redirect.

    keep_resolved([("up0", "10.10.0.2"), ...], netns="vtep")  # when paths are learned
    forget([("up0", "10.10.0.2")], netns="vtep")              # when a path is gone

Both are idempotent. A permanent (static) entry an operator made is left as
it is: it never needs resolving, and the kernel refuses `managed` on it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from qpagent import netnsutil

NTF_EXT_MANAGED = 0x01       # NDA_FLAGS_EXT bit (include/uapi/linux/neighbour.h)
NUD_NONE = 0x00
NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class Gateway:
    uplink: str
    address: str
    outcome: str   # "managed", "static" (permanent, left alone) or "error: ..."


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _existing(ipr: IPRoute, index: int, address: str):
    try:
        return ipr.neigh("get", dst=address, ifindex=index, family=_family(address))[0]
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return None
        raise


def _is_managed(entry) -> bool:
    return bool((entry.get_attr("NDA_FLAGS_EXT") or 0) & NTF_EXT_MANAGED)


def _manage_one(ipr: IPRoute, uplink: str, address: str) -> Gateway:
    try:
        found = ipr.link_lookup(ifname=uplink)
        if not found:
            return Gateway(uplink, address, "error: no such interface")
        index = found[0]
        entry = _existing(ipr, index, address)
        if entry is not None and entry["state"] & NUD_PERMANENT:
            return Gateway(uplink, address, "static")
        if entry is not None and _is_managed(entry):
            return Gateway(uplink, address, "managed")   # replacing would restart it
        # NUD_NONE with the managed flag: the kernel starts resolving at
        # once and keeps re-confirming the entry on its own.
        ipr.neigh("replace", dst=address, ifindex=index, family=_family(address),
                  state=NUD_NONE, NDA_FLAGS_EXT=NTF_EXT_MANAGED)
        return Gateway(uplink, address, "managed")
    except (NetlinkError, ValueError) as exc:
        return Gateway(uplink, address, f"error: {exc}")


def keep_resolved(gateways: Iterable[tuple[str, str]], netns: str | None = None) -> list[Gateway]:
    """Make a managed neighbour entry for each (uplink, next-hop address).

    Runs in network namespace `netns` (None: the caller's). Never raises for
    one bad gateway: each gets its outcome, so the caller can log and carry
    on (path_pin still resolves on demand without the entry).
    """
    wanted = list(gateways)
    with netnsutil.enter(netns), IPRoute() as ipr:
        return [_manage_one(ipr, uplink, address) for uplink, address in wanted]


def forget(gateways: Iterable[tuple[str, str]], netns: str | None = None) -> None:
    """Remove the managed entries of gateways no path uses any more; static
    entries and entries that are already gone are left alone."""
    wanted = list(gateways)
    with netnsutil.enter(netns), IPRoute() as ipr:
        for uplink, address in wanted:
            found = ipr.link_lookup(ifname=uplink)
            if not found:
                continue
            entry = _existing(ipr, found[0], address)
            if entry is None or not _is_managed(entry):
                continue
            try:
                ipr.neigh("del", dst=address, ifindex=found[0], family=_family(address))
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:
                    raise
