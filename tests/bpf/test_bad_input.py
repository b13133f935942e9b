"""Every program against frames it must not choke on: each frame cut at
every length the kernel's test run accepts (XDP: from 14 bytes, ETH_HLEN;
tc: from 14, but an IPv4 frame needs its 20-byte IP header (34) and an IPv6
one its 40-byte header (54), the skb test run refuses less with EINVAL; the
same parser is cut shorter through XDP),
IPv4 options, IPv6 extension headers, IPv4 fragments, a VLAN tag, ARP, a BTH
with a non-zero transport version. The verdict is always pass, the frame
comes back unchanged, and the right parse counter moves."""

import pytest
from scapy.all import IP, Ether, raw

from conftest import TC_ACT_UNSPEC, TC_MIN_FRAME, assert_frame, parse_counts
from qt1_maps import (PARSE_BAD_BTH, PARSE_FRAGMENT,
                      PARSE_IPV6_EXT, PARSE_NOT_IP, PARSE_NOT_ROCE, PARSE_ROCE,
                      PARSE_TRUNCATED)
from qt1_packets import (arp, icmp, roce, roce_bad_bth, roce_fragment,
                         roce_ipv6_hop_by_hop, roce_with_ipv4_options, tcp, udp,
                         vlan_tagged_roce, vxlan)

LOOPBACK = 1
ETH, IP4, IP6, UDP_H, BTH, VXLAN_H = 14, 20, 40, 8, 12, 8


def ihl_below_five():
    frame = bytearray(raw(roce(0x66)))
    frame[ETH] = 0x44              # version 4, IHL 4: shorter than any header
    return bytes(frame)


# (name, frame, bytes of headers the parser needs, outcome when all present)
FRAMES = [
    ("roce4", roce(0x10), ETH + IP4 + UDP_H + BTH, PARSE_ROCE),
    ("roce6", roce(0x10, src="fd00::1", dst="fd00::2"), ETH + IP6 + UDP_H + BTH, PARSE_ROCE),
    ("vxlan4-roce4", vxlan(roce(0x10)), 2 * (ETH + IP4 + UDP_H) + VXLAN_H + BTH, PARSE_ROCE),
    ("vxlan6-roce6", vxlan(roce(0x10, src="fd00::1", dst="fd00::2"), src="fd00:ff::1", dst="fd00:ff::2"),
     2 * (ETH + IP6 + UDP_H) + VXLAN_H + BTH, PARSE_ROCE),
    ("ipv4-options", roce_with_ipv4_options(), ETH + IP4 + 8 + UDP_H + BTH, PARSE_ROCE),
    ("ipv6-hop-by-hop", roce_ipv6_hop_by_hop(), ETH + IP6, PARSE_IPV6_EXT),
    ("vxlan-inner-ipv6-ext", vxlan(roce_ipv6_hop_by_hop()),
     ETH + IP4 + UDP_H + VXLAN_H + ETH + IP6, PARSE_IPV6_EXT),
    ("first-fragment", roce_fragment(first=True), ETH + IP4, PARSE_FRAGMENT),
    ("later-fragment", roce_fragment(first=False), ETH + IP4, PARSE_FRAGMENT),
    ("vlan-tag", vlan_tagged_roce(), ETH, PARSE_NOT_IP),
    ("arp", arp(), ETH, PARSE_NOT_IP),
    ("bad-bth", roce_bad_bth(), ETH + IP4 + UDP_H + BTH, PARSE_BAD_BTH),
    ("vxlan-bad-bth", vxlan(roce_bad_bth()), 2 * (ETH + IP4 + UDP_H) + VXLAN_H + BTH, PARSE_BAD_BTH),
    ("tcp", tcp(), ETH + IP4 + 20, PARSE_NOT_ROCE),
    ("udp", udp(), ETH + IP4 + UDP_H, PARSE_NOT_ROCE),
    ("icmp", icmp(), ETH + IP4, PARSE_NOT_ROCE),
    ("ihl-below-5", ihl_below_five(), 10_000, PARSE_TRUNCATED),
]


def kernel_min_len(kind, data):
    """Shortest frame BPF_PROG_TEST_RUN accepts for this program type."""
    if kind == "xdp":
        return TC_MIN_FRAME
    ethertype = int.from_bytes(data[12:14], "big")
    return {0x0800: ETH + IP4, 0x86DD: ETH + IP6}.get(ethertype, TC_MIN_FRAME)


@pytest.mark.parametrize("name,frame,headers,outcome", FRAMES, ids=[f[0] for f in FRAMES])
def test_every_cut_of_the_frame_passes_unchanged_and_is_counted(program, name, frame, headers, outcome):
    prog, verdict, hook = program
    data = bytes(frame)
    counts = {}
    for cut in range(kernel_min_len(prog.kind, data), len(data) + 1):
        piece = data[:cut]
        res = prog.run(piece)
        assert res.retval == verdict, f"{name} cut at {cut}: verdict {res.retval}"
        assert_frame(res.data_out, piece, f"({name} cut at {cut})")
        want = outcome if cut >= headers else PARSE_TRUNCATED
        counts[want] = counts.get(want, 0) + 1
        got = parse_counts(prog, LOOPBACK, hook)
        assert got == counts, f"{name} cut at {cut}: parse counters {got}, expected {counts}"


def test_ipv4_options_do_not_hide_the_qp(steer):
    """IHL > 5 is followed: the QP behind the options is placed."""
    from qt1_maps import qp_state, set_path, set_vtep
    set_vtep(steer, None, 0)
    set_path(steer, 0, 0, 2, (32768, 60999))
    frame = roce_with_ipv4_options(dqp=0x22)
    assert len(Ether(raw(frame))[IP].options) > 0
    assert steer.run(bytes(frame)).retval == TC_ACT_UNSPEC
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x22) is not None


def test_mutated_frames_always_pass_unchanged(program):
    """Random byte flips over valid frames (seeded, so a failure replays)."""
    import random
    prog, verdict, hook = program
    rng = random.Random(4791)
    seeds = [bytes(f[1]) for f in FRAMES]
    runs = 0
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(kernel_min_len(prog.kind, data), len(data))])
        try:
            res = prog.run(data)
        except OSError:
            continue            # refused by the test-run harness, not the program
        runs += 1
        assert res.retval == verdict, f"verdict {res.retval} for {data.hex()}"
        assert_frame(res.data_out, data, f"(mutated frame {data.hex()})")
    assert runs > 300
    assert sum(parse_counts(prog, LOOPBACK, hook).values()) == runs
