"""Parse outcomes mean what they say, in every program: the control traffic
an uplink carries (BGP, BFD, ICMP, ARP, IPv6 ND, LLDP, the agent's own
path probes and the routers' answers to them) is counted as not RoCE or not
IP, never as TRUNCATED; TRUNCATED is for a frame that ends inside a header
its types and lengths announce, at whichever header that is. Packet in,
the same packet and the pass verdict out, the one expected counter moved."""

import math
import os

import pytest
from scapy.all import (ARP, ICMP, IP, TCP, UDP, Ether, ICMPv6MLReport2,
                       ICMPv6ND_NS, IPv6, IPv6ExtHdrHopByHop, Raw, raw)
from scapy.contrib.bfd import BFD
from scapy.contrib.bgp import BGPHeader, BGPKeepAlive
from scapy.contrib.roce import BTH
from scapy.layers.vxlan import VXLAN

from conftest import TC_ACT_UNSPEC, expect, parse_counts
from qpagent import contract
from qpagent.probe import probe_payload
from qt1_packets import HOST_A_MAC, HOST_B_MAC, RC_SEND_ONLY, roce, vxlan

OUTCOME = {name: value for name, value in contract.ENUMS["parse_outcome"].members}
LOOPBACK = 1
LEAF, SPINE = "10.0.0.2", "10.0.0.1"
VTEP_A, VTEP_B = "10.255.0.3", "10.255.0.9"


def eth(dst=HOST_B_MAC):
    return Ether(src=HOST_A_MAC, dst=dst)


def bgp_keepalive():
    return eth() / IP(src=LEAF, dst=SPINE) / TCP(sport=40179, dport=179, flags="PA") \
        / BGPHeader(type=4) / BGPKeepAlive()


def bfd(dport=3784):
    return eth() / IP(src=LEAF, dst=SPINE, ttl=255) / UDP(sport=49152, dport=dport) \
        / BFD(my_discriminator=1, your_discriminator=2)


def padded_tcp_ack():
    """54 bytes of headers padded to Ethernet's 60-byte minimum."""
    frame = eth() / IP(src=LEAF, dst=SPINE) / TCP(sport=179, dport=40179, flags="A")
    return Ether(raw(frame) + b"\0" * 6)


def path_probe(ttl):
    """The agent's Paris-traceroute probe (qpagent.probe): UDP to 4789 with
    a VXLAN header and `ttl` zero bytes, no inner frame."""
    return eth() / IP(src=VTEP_A, dst=VTEP_B, ttl=ttl) / UDP(sport=50001, dport=4789) \
        / Raw(probe_payload(ttl))


def time_exceeded_for(probe):
    """A router's answer to a probe: ICMP quoting its IP header + 8 bytes."""
    quoted = raw(probe[IP])[:28]
    return eth() / IP(src=SPINE, dst=VTEP_A) / ICMP(type=11, code=0) / Raw(quoted)


def neighbour_solicitation():
    return Ether(src=HOST_A_MAC, dst="33:33:ff:00:00:02") \
        / IPv6(src="fe80::1", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fe80::2")


def mld_report():
    return Ether(src=HOST_A_MAC, dst="33:33:00:00:00:16") \
        / IPv6(src="fe80::1", dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop() / ICMPv6MLReport2()


def arp_request():
    return Ether(src=HOST_A_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=LEAF, pdst=SPINE)


def lldp():
    return Ether(src=HOST_A_MAC, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07\x04" + bytes(20))


def runt_on(port, payload):
    return eth() / IP(src=VTEP_A, dst=VTEP_B) / UDP(sport=50002, dport=port) / Raw(payload)


def vxlan_arp():
    """Flooded ARP inside VXLAN, as EVPN BUM traffic crosses an uplink."""
    return vxlan(arp_request(), src=VTEP_A, dst=VTEP_B)


CONTROL = [
    ("bgp-keepalive", bgp_keepalive(), "NOT_ROCE"),
    ("bfd-control", bfd(3784), "NOT_ROCE"),
    ("bfd-echo", bfd(3785), "NOT_ROCE"),
    ("bfd-multihop", bfd(4784), "NOT_ROCE"),
    ("tcp-ack-padded", padded_tcp_ack(), "NOT_ROCE"),
    ("icmp-echo", eth() / IP(src=LEAF, dst=SPINE) / ICMP(), "NOT_ROCE"),
    ("icmp-time-exceeded", time_exceeded_for(path_probe(1)), "NOT_ROCE"),
    ("arp", arp_request(), "NOT_IP"),
    ("lldp", lldp(), "NOT_IP"),
    ("ipv6-nd", neighbour_solicitation(), "NOT_ROCE"),
    ("ipv6-mld", mld_report(), "IPV6_EXT"),
    ("vxlan-flooded-arp", vxlan_arp(), "NOT_IP"),
    ("udp-4789-runt", runt_on(4789, b"\x08\0\0"), "NOT_ROCE"),
    ("udp-4791-runt", runt_on(4791, b"\0" * 11), "BAD_BTH"),
] + [(f"path-probe-ttl{ttl}", path_probe(ttl), "NOT_ROCE" if ttl < 14 else "NOT_IP")
     for ttl in (1, 2, 5, 13, 14, 20)]


@pytest.mark.parametrize("name,frame,outcome", CONTROL, ids=[c[0] for c in CONTROL])
def test_control_traffic_is_counted_as_what_it_is(program, name, frame, outcome):
    prog, verdict, hook = program
    expect(prog, frame, verdict, context=f"({name})")
    assert parse_counts(prog, LOOPBACK, hook) == {OUTCOME[f"PARSE_{outcome}"]: 1}


def _vxlan_roce():
    return vxlan(roce(0x42), src=VTEP_A, dst=VTEP_B)


ETH, IP4, UDP_H, VX, BTH_H = 14, 20, 8, 8, 12
INNER = ETH + IP4 + UDP_H + VX          # where the inner frame starts
# (header, cut at: the middle of that header)
CUTS = [
    ("outer-udp", ETH + IP4 + 4),
    ("vxlan", ETH + IP4 + UDP_H + 4),
    ("inner-ethernet", INNER + 7),
    ("inner-ipv4", INNER + ETH + 10),
    ("inner-udp", INNER + ETH + IP4 + 4),
    ("bth", INNER + ETH + IP4 + UDP_H + 6),
]


@pytest.mark.parametrize("header,cut", CUTS, ids=[c[0] for c in CUTS])
def test_a_frame_cut_inside_a_header_is_truncated(program, header, cut):
    """The outer lengths announce the whole packet, the bytes end inside
    `header`: TRUNCATED, and the cut frame still passes unchanged."""
    prog, verdict, hook = program
    piece = raw(_vxlan_roce())[:cut]
    expect(prog, piece, verdict, context=f"(cut inside {header})")
    assert parse_counts(prog, LOOPBACK, hook) == {OUTCOME["PARSE_TRUNCATED"]: 1}


def test_a_bare_roce_frame_cut_inside_its_bth_is_truncated(program):
    prog, verdict, hook = program
    frame = eth() / IP(src=LEAF, dst=SPINE) / UDP(sport=49152, dport=4791) \
        / BTH(opcode=RC_SEND_ONLY, dqpn=7, psn=1) / Raw(bytes(16))
    expect(prog, raw(frame)[:ETH + IP4 + UDP_H + 5], verdict)
    assert parse_counts(prog, LOOPBACK, hook) == {OUTCOME["PARSE_TRUNCATED"]: 1}


def test_a_vxlan_header_with_its_inner_frame_announced_but_absent_is_truncated(program):
    """The difference from a probe: here the UDP length promises the frame."""
    prog, verdict, hook = program
    frame = raw(eth() / IP(src=VTEP_A, dst=VTEP_B) / UDP(sport=50003, dport=4789)
                / VXLAN(vni=100, flags=0x08) / Raw(bytes(60)))
    expect(prog, frame[:ETH + IP4 + UDP_H + VX + 5], verdict)
    assert parse_counts(prog, LOOPBACK, hook) == {OUTCOME["PARSE_TRUNCATED"]: 1}


def test_interfaces_that_share_an_array_slot_are_counted_apart(flows):
    """lo (index 1) and the first interface index after it whose counters
    fall in the same parse_stats slot: the second one's counts go to the
    spill hash, and neither interface sees the other's."""
    from qpagent import bpfsys
    from qt1_netns import NetNs
    tc, _ = flows
    # (ifindex * HOOK_IDS + hook) % PARSE_SLOTS repeats every
    # PARSE_SLOTS / gcd(PARSE_SLOTS, HOOK_IDS) interfaces.
    slots, hooks = contract.CONSTANTS["PARSE_SLOTS"], contract.CONSTANTS["HOOK_IDS"]
    shared = 1 + slots // math.gcd(slots, hooks)
    hook = contract.CONSTANTS["HOOK_TC_EGRESS"]
    # The compiled object is shared with earlier tests: count what this test adds.
    before = {ifindex: parse_counts(tc, ifindex, hook) for ifindex in (LOOPBACK, shared)}
    spilled_before = len(tc.table("parse_stats_spill"))
    ns = NetNs()
    try:
        ns.ip("link", "set", "lo", "up")
        ns.ip("link", "add", "name", "far", "index", str(shared), "type", "veth", "peer", "name", "farp")
        ns.ip("link", "set", "far", "up")
        cpu = min(os.sched_getaffinity(0))

        def on_one_cpu(frame, ifindex):
            # Slots are per CPU: both interfaces must meet on the same one.
            os.sched_setaffinity(0, {cpu})
            expect(tc, frame, TC_ACT_UNSPEC, ctx=bpfsys.skb_ctx(ifindex))

        ns.run_in(on_one_cpu, arp_request(), LOOPBACK)
        for _ in range(2):
            ns.run_in(on_one_cpu, bgp_keepalive(), shared)
    finally:
        ns.delete()
    def added(ifindex):
        after = parse_counts(tc, ifindex, hook)
        return {k: v - before[ifindex].get(k, 0) for k, v in after.items()
                if v != before[ifindex].get(k, 0)}
    assert added(LOOPBACK) == {OUTCOME["PARSE_NOT_IP"]: 1}
    assert added(shared) == {OUTCOME["PARSE_NOT_ROCE"]: 2}
    spill = tc.table("parse_stats_spill")
    assert len(spill) == spilled_before + 1
    assert {leaf.ifindex for key in spill.keys() for leaf in spill[key] if leaf.ifindex} >= {shared}
