"""flow_stats at XDP ingress and tc egress: per-flow counters (with VNI and
inner QP for outer VXLAN packets) and per-interface parse outcome counters.
Both hooks always pass the frame unchanged."""

import time

import pytest

from conftest import TC_ACT_UNSPEC, XDP_PASS, expect, parse_counts
from qpagent import bpfsys
from qt1_maps import (HOOK_TC_EGRESS, HOOK_XDP_INGRESS, PARSE_NOT_IP,
                      PARSE_NOT_ROCE, PARSE_ROCE, flow_entries)
from qt1_packets import arp, icmp, roce, tcp, udp, vxlan

LOOPBACK = 1
UDP, TCP = 17, 6
HAS_VNI, HAS_QP = 1, 2
TICK_BOUND_NS = 20_000_000      # one tick is 10 ms at HZ=100, less above


@pytest.fixture(params=["tc", "xdp"])
def hook(request, flows):
    """(program, verdict, hook id) for each attachment point."""
    tc, xdp = flows
    if request.param == "tc":
        return tc, TC_ACT_UNSPEC, HOOK_TC_EGRESS
    return xdp, XDP_PASS, HOOK_XDP_INGRESS


def test_a_roce_flow_is_counted_with_its_qp(hook):
    prog, verdict, hook_id = hook
    frame = roce(0x00C0DE, sport=49200)
    for _ in range(3):
        expect(prog, frame, verdict)
    flows = flow_entries(prog)
    key = ("10.0.1.1", 49200, "10.0.2.1", 4791, UDP, LOOPBACK, hook_id, HAS_QP, 0, 0x00C0DE)
    assert list(flows) == [key]
    packets, nbytes, first, last = flows[key]
    assert (packets, nbytes) == (3, 3 * len(frame))
    assert 0 < first <= last
    assert parse_counts(prog, LOOPBACK, hook_id) == {PARSE_ROCE: 3}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_an_outer_vxlan_flow_carries_vni_and_inner_qp(hook, family):
    prog, verdict, hook_id = hook
    if family == "ipv4":
        outer_src, outer_dst = "10.255.0.1", "10.255.0.2"
    else:
        outer_src, outer_dst = "fd00:ff::1", "fd00:ff::2"
    frame = vxlan(roce(0x0ABCDE), vni=10100, src=outer_src, dst=outer_dst, sport=51000)
    expect(prog, frame, verdict)
    expect(prog, frame, verdict)
    key = (outer_src, 51000, outer_dst, 4789, UDP, LOOPBACK, hook_id,
           HAS_VNI | HAS_QP, 10100, 0x0ABCDE)
    assert {k: v[:2] for k, v in flow_entries(prog).items()} == {key: (2, 2 * len(frame))}
    assert parse_counts(prog, LOOPBACK, hook_id) == {PARSE_ROCE: 2}


def test_a_vxlan_packet_carrying_non_roce_has_a_vni_and_no_qp(hook):
    prog, verdict, hook_id = hook
    expect(prog, vxlan(tcp(), vni=7, sport=51001), verdict)
    [key] = flow_entries(prog)
    assert key[7:] == (HAS_VNI, 7, 0)
    assert parse_counts(prog, LOOPBACK, hook_id) == {PARSE_NOT_ROCE: 1}


def test_other_udp_and_tcp_are_flows_icmp_and_arp_are_not(hook):
    prog, verdict, hook_id = hook
    for frame in (udp(sport=1111, dport=2222), tcp(sport=40001, dport=443), icmp(), arp()):
        expect(prog, frame, verdict)
    assert sorted(k[:7] for k in flow_entries(prog)) == sorted([
        ("10.0.1.1", 1111, "10.0.2.1", 2222, UDP, LOOPBACK, hook_id),
        ("10.0.1.1", 40001, "10.0.2.1", 443, TCP, LOOPBACK, hook_id)])
    assert parse_counts(prog, LOOPBACK, hook_id) == {PARSE_NOT_ROCE: 3, PARSE_NOT_IP: 1}


def test_flows_are_kept_per_hook_and_interface(flows):
    """The same flow seen at XDP ingress and tc egress is two entries; the
    interface comes from the ctx."""
    tc, xdp = flows
    frame = bytes(roce(0x1))
    expect(xdp, frame, XDP_PASS, ctx=bpfsys.xdp_ctx(LOOPBACK, len(frame)))
    expect(tc, frame, TC_ACT_UNSPEC, ctx=bpfsys.skb_ctx(LOOPBACK))
    keys = sorted((k[5], k[6]) for k in flow_entries(tc))
    assert keys == [(LOOPBACK, HOOK_XDP_INGRESS), (LOOPBACK, HOOK_TC_EGRESS)]


def test_last_seen_follows_the_packets_to_one_tick(hook):
    """first_ns is exact; last_ns comes from a per-CPU clock read once a
    jiffy, so it moves on, never falls below first_ns, and lags the true
    time by at most one tick."""
    prog, verdict, _ = hook
    frame = udp(sport=3333, dport=4444)
    expect(prog, frame, verdict)
    [(_, _, first, last)] = flow_entries(prog).values()
    assert first == last > 0
    deadline = time.monotonic() + 2.0
    while True:
        expect(prog, frame, verdict)
        [(packets, _, first2, last2)] = flow_entries(prog).values()
        assert first2 == first and last2 >= last
        if last2 > last:
            break
        assert time.monotonic() < deadline, "last_ns never moved on"

    before = time.monotonic_ns()          # bpf_ktime_get_ns's clock
    expect(prog, frame, verdict)
    after = time.monotonic_ns()
    [(_, _, _, last3)] = flow_entries(prog).values()
    assert before - TICK_BOUND_NS <= last3 <= after, (before, last3, after)
