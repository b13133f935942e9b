"""Hand go-back NAKs (qpagent.goback) to the hosts behind this VTEP.

The NAK leaves the bridge port the requester's MAC was learnt on, on an
AF_PACKET socket: the frame the bridge would have delivered from the VXLAN
device, with no routing or bridging decision of ours. A MAC the bridge
does not know gets no NAK: flooding it would reach the remote VTEPs too.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter

from pyroute2 import IPRoute

from qpagent import goback

log = logging.getLogger("qpagent")

OUTCOMES = ("sent", "no_ack_kept", "not_an_ack", "no_port", "send_failed")
PORTS_FRESH_S = 1.0     # the bridge FDB read once per burst of NAKs


class GoBackSender:
    def __init__(self, tables, vxlan_devices):
        self.tables = tables
        self.vxlan_devices = tuple(vxlan_devices)
        self.counts: Counter = Counter({o: 0 for o in OUTCOMES})
        self._ports: dict[str, str] = {}      # host MAC -> bridge port name
        self._ports_read = float("-inf")
        self._sock: socket.socket | None = None

    def send(self, qp: bytes, psn: int) -> str:
        """Send one QP's NAK; returns and counts the outcome (OUTCOMES)."""
        outcome = self._send(qp, psn)
        self.counts[outcome] += 1
        return outcome

    def _send(self, qp: bytes, psn: int) -> str:
        ack = self.tables.ack_frame(qp)
        if ack is None:
            return "no_ack_kept"
        try:
            nak = goback.nak_from_ack(ack, psn)
        except goback.NotAnAck as exc:
            log.debug("go-back NAK: %s", exc)
            return "not_an_ack"
        port = self._port_of(goback.host_mac(nak))
        if port is None:
            return "no_port"
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self._sock.sendto(nak, (port, 0))
        except OSError as exc:
            log.debug("go-back NAK out of %s: %s", port, exc)
            return "send_failed"
        return "sent"

    def _port_of(self, mac: str) -> str | None:
        now = time.monotonic()
        if mac not in self._ports and now - self._ports_read > PORTS_FRESH_S:
            self._ports = host_ports(self.vxlan_devices)
            self._ports_read = now
        return self._ports.get(mac)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def host_ports(vxlan_devices) -> dict[str, str]:
    """MAC -> bridge port, for the MACs learnt on the ports (not the VXLAN
    devices) of the bridges the VXLAN devices belong to."""
    with IPRoute() as ipr:
        links = {link["index"]: link for link in ipr.get_links()}
        names = {i: link.get_attr("IFLA_IFNAME") for i, link in links.items()}
        vxlans = {i for i, name in names.items() if name in vxlan_devices}
        bridges = {links[i].get_attr("IFLA_MASTER") for i in vxlans} - {None}
        out = {}
        for entry in ipr.get_neighbours(family=socket.AF_BRIDGE):
            index, mac = entry.get("ifindex"), entry.get_attr("NDA_LLADDR")
            if (mac and index in links and index not in vxlans and index not in bridges
                    and links[index].get_attr("IFLA_MASTER") in bridges):
                out.setdefault(mac.lower(), names[index])
        return out
