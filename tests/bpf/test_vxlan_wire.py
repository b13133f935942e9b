"""qp_steer on a real VXLAN device: the outer UDP source port the kernel's
driver puts on the wire is exactly the port qp_steer assigned to each QP,
for a device port range (srcport LO HI) and for the fallback to the
namespace's ip_local_port_range. The inner frame is carried unchanged."""

import socket
import time

import pytest
from pyroute2 import IPRoute
from scapy.all import UDP, Ether, raw
from scapy.layers.vxlan import VXLAN

from qpagent.portmath import effective_port_range
from qt1_maps import qp_state, set_path, set_vtep
from qt1_netns import NetNs
from qt1_packets import HOST_B_MAC, roce

ETH_P_ALL = 0x0003
N_QPS = 12


def build_vtep(ns, srcport):
    ns.ip("link", "set", "lo", "up")
    ns.ip("addr", "add", "10.255.0.1/32", "dev", "lo")
    ns.ip("link", "add", "up1", "type", "veth", "peer", "name", "up1p")
    ns.ip("addr", "add", "10.1.1.1/30", "dev", "up1")
    ns.ip("link", "set", "up1", "up")
    ns.ip("link", "set", "up1p", "up")
    ns.ip("neigh", "replace", "10.1.1.2", "lladdr", "02:00:00:00:11:02", "dev", "up1",
          "nud", "permanent")
    ns.ip("route", "add", "10.255.0.2/32", "via", "10.1.1.2")
    extra = ["srcport", str(srcport[0]), str(srcport[1])] if srcport else []
    ns.ip("link", "add", "vxlan0", "type", "vxlan", "id", "10100", "local", "10.255.0.1",
          "remote", "10.255.0.2", "dstport", "4789", "nolearning", *extra)
    ns.ip("link", "set", "vxlan0", "up")


def is_vxlan_roce(pkt):
    if UDP not in pkt or pkt[UDP].dport != 4789 or VXLAN not in pkt:
        return False
    inner = Ether(raw(pkt[VXLAN].payload))
    return UDP in inner and inner[UDP].dport == 4791


def send_and_capture(ns, steer, frames):
    """Inside the namespace: attach qp_steer to vxlan0's egress, send the
    inner frames on vxlan0, return the outer frames seen on the wire."""
    def body():
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="vxlan0")[0]
            ipr.tc("add", "clsact", idx)
            ipr.tc("add-filter", "bpf", idx, ":1", fd=steer.fn.fd, name="qp_steer",
                   parent="ffff:fff3", classid=1, direct_action=True)
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            cap.bind(("up1p", 0))
            cap.settimeout(0.2)
            tx.bind(("vxlan0", 0))
            for frame in frames:
                tx.send(bytes(frame))
            seen, deadline = [], time.monotonic() + 5
            while len(seen) < len(frames) and time.monotonic() < deadline:
                try:
                    data = cap.recv(65535)
                except socket.timeout:
                    continue
                pkt = Ether(data)
                if is_vxlan_roce(pkt):     # not the namespace's own ND/RS
                    seen.append(pkt)
            return seen
        finally:
            cap.close()
            tx.close()
    return ns.run_in(body)


@pytest.mark.parametrize("srcport,local_range", [((49152, 49200), None), (None, (40000, 40100))],
                         ids=["device-srcport", "ip_local_port_range"])
def test_the_wire_carries_the_assigned_port_of_every_qp(steer, srcport, local_range):
    ns = NetNs()
    try:
        if local_range:
            ns.sysctl("net.ipv4.ip_local_port_range", f"{local_range[0]} {local_range[1]}")
        build_vtep(ns, srcport)
        dev_lo, dev_hi = srcport or (0, 0)
        port_range = effective_port_range(dev_lo, dev_hi, local_range)
        set_vtep(steer, HOST_B_MAC, 0)
        for p in range(3):
            set_path(steer, 0, p, 4, port_range)
        frames = [roce(0x300 + q, dmac=HOST_B_MAC) for q in range(N_QPS)]

        seen = send_and_capture(ns, steer, frames)

        assert len(seen) == N_QPS, f"captured {len(seen)} of {N_QPS} VXLAN frames"
        want, got = {}, {}
        for q, frame in enumerate(frames):
            st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x300 + q)
            want[0x300 + q] = st["port"]
        for pkt in seen:
            inner = raw(pkt[VXLAN].payload)
            dqp = int.from_bytes(inner[14 + 20 + 8 + 5:14 + 20 + 8 + 8], "big")
            got[dqp] = pkt[UDP].sport
            assert inner == raw(frames[dqp - 0x300]), "inner frame changed on the way"
        assert got == want
        assert len(set(want.values())) == N_QPS
    finally:
        ns.delete()


def attach(ipr, dev, prog, name):
    idx = ipr.link_lookup(ifname=dev)[0]
    ipr.tc("add", "clsact", idx)
    ipr.tc("add-filter", "bpf", idx, ":1", fd=prog.fn.fd, name=name,
           parent="ffff:fff3", classid=1, direct_action=True)


def test_path_pin_spreads_the_ports_over_the_uplinks_the_fib_names(steer, pin):
    """Two uplinks, an ECMP route: without path_pin the driver's cached route
    sends everything out of one uplink; with it each port leaves where
    `ip route get ... sport N` says."""
    import json
    import subprocess
    ns = NetNs()
    try:
        build_vtep(ns, (49152, 49216))
        ns.ip("link", "add", "up2", "type", "veth", "peer", "name", "up2p")
        ns.ip("addr", "add", "10.1.2.1/30", "dev", "up2")
        ns.ip("link", "set", "up2", "up")
        ns.ip("link", "set", "up2p", "up")
        ns.ip("neigh", "replace", "10.1.2.2", "lladdr", "02:00:00:00:12:02", "dev", "up2",
              "nud", "permanent")
        ns.ip("route", "replace", "10.255.0.2/32", "nexthop", "via", "10.1.1.2", "dev", "up1",
              "nexthop", "via", "10.1.2.2", "dev", "up2")
        ns.sysctl("net.ipv4.conf.all.forwarding", 1)
        ns.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        set_vtep(steer, None, 0)
        for p in range(4):
            set_path(steer, 0, p, 4, (49152, 49216))
        uplinks = pin.table("pin_uplinks")
        for dev in ("up1", "up2"):
            uplinks[uplinks.Key(ns.ifindex(dev))] = uplinks.Leaf(1)
        frames = [roce(0x700 + q) for q in range(16)]

        def body():
            with IPRoute() as ipr:
                attach(ipr, "vxlan0", steer, "qp_steer")
                attach(ipr, "up1", pin, "path_pin")
                attach(ipr, "up2", pin, "path_pin")
            caps = {}
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            try:
                for dev in ("up1", "up2"):
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                    s.bind((f"{dev}p", 0))
                    s.setblocking(False)
                    caps[dev] = s
                tx.bind(("vxlan0", 0))
                for frame in frames:
                    tx.send(bytes(frame))
                seen, deadline = [], time.monotonic() + 5
                while len(seen) < len(frames) and time.monotonic() < deadline:
                    got_any = False
                    for dev, s in caps.items():
                        try:
                            pkt = Ether(s.recv(65535))
                        except BlockingIOError:
                            continue
                        got_any = True
                        if UDP in pkt and pkt[UDP].dport == 4789:
                            seen.append((dev, pkt))
                    if not got_any:
                        time.sleep(0.01)
                return seen
            finally:
                tx.close()
                for s in caps.values():
                    s.close()

        seen = ns.run_in(body)
        assert len(seen) == len(frames)
        lines = "".join(f"route get 10.255.0.2 from 10.255.0.1 ipproto udp sport "
                        f"{pkt[UDP].sport} dport 4789\n" for _, pkt in seen)
        out = subprocess.run(["ip", "-n", ns.name, "-j", "-batch", "-"], input=lines,
                             capture_output=True, text=True, check=True).stdout
        fib = [json.loads(line)[0]["dev"] for line in out.splitlines() if line.strip()]
        left = [dev for dev, _ in seen]
        assert left == fib, "a port left on an uplink the FIB does not name"
        assert set(left) == {"up1", "up2"}, "all QPs on one uplink"
        for dev, pkt in seen:
            assert pkt.dst == ("02:00:00:00:11:02" if dev == "up1" else "02:00:00:00:12:02")
            assert pkt.src == ns.mac(dev)
    finally:
        ns.delete()
