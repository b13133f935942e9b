"""Kernel route and link changes, the first sign that a path moved.

RouteMonitor listens to rtnetlink multicast groups in a background thread and
queues a RouteChanged for each change that matters, stamped with
time.monotonic() at receipt so reactions can be timed from the moment the
agent learnt of it.
"""

from __future__ import annotations

import errno
import queue
import select
import socket
import threading
import time

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from qpagent import netnsutil
from qpagent.sources.signals import RouteChanged

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RT_TABLE_LOCAL = 255


def _route_summary(msg) -> str | None:
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    if table == RT_TABLE_LOCAL:
        return None  # addresses coming and going, not paths
    dst = msg.get("dst")
    if dst and (dst.startswith("fe80:") or dst.startswith("ff00:")):
        return None  # IPv6 link-local/multicast housekeeping
    text = f"{dst or 'default'}/{msg['dst_len']}" if dst else "default"
    hops = []
    if msg.get("multipath"):
        for nh in msg.get("multipath"):
            hops.append(f"via {nh.get('gateway')} oif {nh['oif']}")
    elif msg.get("gateway") or msg.get("oif"):
        hops.append(f"via {msg.get('gateway')} oif {msg.get('oif')}")
    return " ".join([text, *hops])


class RouteMonitor:
    """Queue of route and link changes seen in one network namespace."""

    POLL_S = 0.2  # how often the thread checks whether it should stop

    def __init__(self, events: queue.Queue | None = None, netns: str | None = None):
        self.netns = netns
        # The caller's queue may carry its own wake-ups too (same tuple shape).
        self.events: queue.Queue = events if events is not None else queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link_state: dict[int, bool] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> "RouteMonitor":
        self._thread = threading.Thread(target=self._run, name="qpagent-route-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self) -> None:
        # A plain socket, parsed by pyroute2's marshal: pyroute2's IPRoute.get()
        # hands out one message per call and keeps the rest in its own buffer,
        # where select() cannot see them, so events would lag behind.
        try:
            with netnsutil.enter(self.netns):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_LINK))
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        try:
            self._seed_link_state()
        except Exception:  # only costs a spurious first event per link
            pass
        self._ready.set()
        marshal = MarshalRtnl()
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([sock], [], [], self.POLL_S)
                if not readable:
                    continue
                now = time.monotonic()
                try:
                    data = sock.recv(1 << 20)
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:  # we fell behind: state unknown
                        self.events.put(RouteChanged("resync", now, "netlink overflow: events lost"))
                        continue
                    raise
                for msg in marshal.parse(data):
                    event = self._interpret(now, msg)
                    if event:
                        self.events.put(event)
        finally:
            sock.close()

    def _seed_link_state(self) -> None:
        """Know every link's state up front, so that the first NEWLINK for an
        attribute change (an XDP attach, say) is not mistaken for a link_up."""
        with netnsutil.enter(self.netns):
            ipr = IPRoute()
        try:
            for link in ipr.get_links():
                flags = link["flags"]
                self._link_state[link["index"]] = bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
        finally:
            ipr.close()

    def _interpret(self, now: float, msg) -> RouteChanged | None:
        kind = msg.get("event")
        if kind in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            summary = _route_summary(msg)
            if summary is None:
                return None
            return RouteChanged("route_add" if kind == "RTM_NEWROUTE" else "route_del", now, summary)
        if kind in ("RTM_NEWLINK", "RTM_DELLINK"):
            index, name = msg["index"], msg.get("ifname")
            flags = msg["flags"]
            up = kind == "RTM_NEWLINK" and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
            if kind == "RTM_DELLINK":
                self._link_state.pop(index, None)
            elif self._link_state.get(index) == up:
                return None  # an attribute changed, not the state
            else:
                self._link_state[index] = up
            suffix = " deleted" if kind == "RTM_DELLINK" else ""
            return RouteChanged("link_up" if up else "link_down", now, f"{name} index {index}{suffix}")
        return None
