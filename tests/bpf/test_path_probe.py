"""path_probe in the kernel (BPF_PROG_TEST_RUN): the remote VTEP's data plane
answers a liveness probe in place, the sending VTEP's records the answer in
path_health, and qp_steer (the same object, the same maps) takes a path whose
answers stopped out of use. No probe ever reaches a host: a request leaves
again as its reply, a reply is consumed."""

import contextlib
import socket
import time

import pytest
from scapy.all import IP, UDP, Ether, raw

from conftest import (TC_ACT_REDIRECT, TC_ACT_UNSPEC, assert_frame, event_counts, expect,
                      parse_counts)
from qpagent import bpfsys, contract
from qpagent.contract import MAX_PATHS, MAX_VTEPS
from qt1_maps import (HOOK_PATH_PROBE, PARSE_ROCE, PROBE_ANSWERED, PROBE_MALFORMED, REPAIR_LIVENESS,
                      PROBE_REPLY, PROBE_REPLY_SEEN, PROBE_REPLY_UNKNOWN, PROBE_REQUEST,
                      STEER_HASH_SET, STEER_PLACED_NEW, qp_state, set_health, set_path,
                      set_vtep)
from qt1_packets import HOST_B_MAC, probe_frame, probe_msg, roce, vxlan

TC_ACT_SHOT = 2
UPLINK = 1                     # the device the test run hands the packet in on (lo)
PROBE_VNI = contract.CONSTANTS["PROBE_VNI"]
PORT_FLIP = contract.CONSTANTS["PROBE_REPLY_PORT_FLIP"]
PROBE_REPLY_AGAIN = dict(contract.ENUMS["probe_event"].members)["PROBE_REPLY_AGAIN"]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PORT_RANGE = (32768, 60999)


def ctx():
    return bpfsys.skb_ctx(UPLINK)


def health(steer, vtep, path):
    table = steer.table("path_health")
    leaf = table[table.Key(vtep * MAX_PATHS + path)]
    return {name: (list(value) if name == "sent_ns" else value)
            for name, value in ((n, getattr(leaf, n)) for n, _ in leaf._fields_) if name != "pad"}


@contextlib.contextmanager
def frames_leaving_lo():
    """Frames the kernel sends out of lo meanwhile (a clone the program
    redirects there), as a list filled on exit."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind(("lo", 0))
    sock.setblocking(False)
    seen = []
    try:
        yield seen
        while True:
            try:
                frame, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                seen.append(frame)
    finally:
        sock.close()


def answered_twice(probe, tx_ns, tos=0):
    """A request (vtep 9, path 3, seq 41) in; both copies of its reply out,
    compared whole: addresses swapped back towards the sender, the
    destination port kept (still VXLAN on the way back), the message echoed
    but for its kind, TTL 64 with the IP checksum to match, UDP checksum 0,
    the DSCP kept. The copy the program hands back (redirected out of the
    uplink) has its source port flipped, so the way back hashes it
    elsewhere; the other, cloned out of the same uplink, the request's own."""
    request = probe_frame(probe_msg(PROBE_REQUEST, vtep=9, path=3, seq=41, tx_ns=tx_ns), tos=tos)

    def reply(sport):
        return Ether(raw(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
                         / IP(src="10.255.0.1", dst="10.255.0.2", ttl=64, id=0x4242, tos=tos)
                         / UDP(sport=sport, dport=4789, chksum=0)
                         / raw(request[UDP].payload)[:8]
                         / probe_msg(PROBE_REPLY, vtep=9, path=3, seq=41, tx_ns=tx_ns)))
    with frames_leaving_lo() as clones:
        expect(probe, request, TC_ACT_REDIRECT, reply(50123 ^ PORT_FLIP), ctx=ctx())
    assert_frame(next(f for f in clones if f[12:14] == b"\x08\x00"), bytes(reply(50123)))


def test_a_request_leaves_again_as_its_exact_reply_in_two_copies(probe):
    answered_twice(probe, tx_ns=987_654_321)
    assert event_counts(probe, "probe_events") == {PROBE_ANSWERED: 1}
    assert parse_counts(probe, UPLINK, HOOK_PATH_PROBE) != {}
    # The answering side keeps no state: nothing recorded as a reply.
    assert health(probe, 9, 3)["replies"] == 0


def test_a_reply_keeps_the_requests_dscp(probe):
    """The agent marks its probes network control (liveness.dscp, CS6): both
    copies of the reply go back marked, so routers queue them as the
    request was queued."""
    answered_twice(probe, tx_ns=1, tos=0xC0)


def test_a_request_whose_ip_header_has_options_is_answered_with_a_valid_checksum(probe):
    request = probe_frame(probe_msg(PROBE_REQUEST), ttl=3)
    request[IP].options = b"\x01\x01\x01\x00"          # NOP NOP NOP EOL
    del request[IP].chksum, request[IP].ihl, request[IP].len, request[UDP].len
    request = Ether(raw(request))
    reply = Ether(raw(request))
    reply.src, reply.dst = request.dst, request.src
    reply[IP].src, reply[IP].dst, reply[IP].ttl = request[IP].dst, request[IP].src, 64
    del reply[IP].chksum                                 # Scapy computes it afresh
    reply[UDP].sport ^= PORT_FLIP                        # the copy handed back
    reply = Ether(raw(reply)[:-32] + probe_msg(PROBE_REPLY))
    expect(probe, request, TC_ACT_REDIRECT, reply, ctx=ctx())


def test_a_reply_is_recorded_in_path_health_and_consumed(probe):
    sent = time.monotonic_ns() - 5_000_000          # the agent's clock, 5 ms ago
    reply = probe_frame(probe_msg(PROBE_REPLY, vtep=4, path=2, seq=77, tx_ns=sent))
    before = time.monotonic_ns()
    expect(probe, reply, TC_ACT_SHOT, ctx=ctx())
    after = time.monotonic_ns()
    h = health(probe, 4, 2)
    assert before <= h["last_reply_ns"] <= after
    assert h["last_reply_ns"] - sent == h["rtt_ns"]
    assert 5_000_000 <= h["rtt_ns"] <= after - sent
    assert (h["replies"], h["last_seq"], h["deadline_ns"]) == (1, 77, 0)
    expect(probe, probe_frame(probe_msg(PROBE_REPLY, vtep=4, path=2, seq=78, tx_ns=sent)),
           TC_ACT_SHOT, ctx=ctx())
    h2 = health(probe, 4, 2)
    assert (h2["replies"], h2["last_seq"]) == (2, 78)
    assert h2["last_reply_ns"] >= h["last_reply_ns"]
    assert event_counts(probe, "probe_events") == {PROBE_REPLY_SEEN: 2}
    # The other copy of 78 (the remote answers twice): consumed, counted
    # apart, and nothing recorded again.
    expect(probe, probe_frame(probe_msg(PROBE_REPLY, vtep=4, path=2, seq=78, tx_ns=sent),
                              sport=50123 ^ PORT_FLIP), TC_ACT_SHOT, ctx=ctx())
    assert health(probe, 4, 2) == h2
    assert event_counts(probe, "probe_events") == {PROBE_REPLY_SEEN: 2, PROBE_REPLY_AGAIN: 1}


@pytest.mark.parametrize("vtep,path", [(MAX_VTEPS, 0), (0, MAX_PATHS), (0xFFFFFFFF, 0xFFFFFFFF)])
def test_a_reply_for_an_unknown_path_is_consumed_and_counted(probe, vtep, path):
    expect(probe, probe_frame(probe_msg(PROBE_REPLY, vtep=vtep, path=path)), TC_ACT_SHOT, ctx=ctx())
    assert event_counts(probe, "probe_events") == {PROBE_REPLY_UNKNOWN: 1}


@pytest.mark.parametrize("frame", [
    probe_frame(probe_msg(PROBE_REQUEST)[:-1]),                                     # message cut short
    Ether(raw(probe_frame(probe_msg(PROBE_REQUEST)))[:-4]),                          # frame cut short
    probe_frame(b"XXXX" + probe_msg(PROBE_REQUEST)[4:]),                             # bad magic
    probe_frame(probe_msg(3)),                                                       # unknown kind
    probe_frame(probe_msg(PROBE_REQUEST), src="fd00:ff::2", dst="fd00:ff::1"),       # IPv6: not probed
], ids=["short-message", "cut-frame", "bad-magic", "unknown-kind", "ipv6"])
def test_a_probe_vni_packet_that_is_not_a_whole_probe_passes_untouched(probe, frame):
    expect(probe, frame, TC_ACT_UNSPEC, ctx=ctx())
    assert event_counts(probe, "probe_events") == {PROBE_MALFORMED: 1}


@pytest.mark.parametrize("frame", [
    vxlan(roce(0x1234), src="10.255.0.2", dst="10.255.0.1"),
    probe_frame(probe_msg(PROBE_REQUEST), vni=10100),
    probe_frame(probe_msg(PROBE_REQUEST), dport=4790),
    roce(0x1234),
], ids=["vxlan-data", "probe-on-a-segment-vni", "not-4789", "bare-roce"])
def test_everything_else_passes_untouched_and_uncounted(probe, frame):
    expect(probe, frame, TC_ACT_UNSPEC, ctx=ctx())
    assert event_counts(probe, "probe_events") == {}


def test_data_arriving_on_an_uplink_is_counted_under_its_own_hook(probe):
    expect(probe, vxlan(roce(0x1234)), TC_ACT_UNSPEC, ctx=ctx())
    assert parse_counts(probe, UPLINK, HOOK_PATH_PROBE) == {PARSE_ROCE: 1}


def test_a_reply_brings_a_silent_path_back_for_qp_steer(probe, steer):
    """The two programs share path_health: a path whose last answer is past
    its deadline takes no new QP, and one reply makes it live again."""
    set_vtep(steer, HOST_B_MAC, 2)
    set_path(steer, 2, 0, 2, PORT_RANGE)
    set_path(steer, 2, 1, 2, PORT_RANGE)
    long_ago = time.monotonic_ns() - 10_000_000_000
    set_health(steer, 2, 0, deadline_ns=1_000_000_000, last_reply_ns=long_ago)
    expect(steer, roce(0x31), TC_ACT_UNSPEC)
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x31)["path"] == 1

    expect(probe, probe_frame(probe_msg(PROBE_REPLY, vtep=2, path=0)), TC_ACT_SHOT, ctx=ctx())
    expect(steer, roce(0x32), TC_ACT_UNSPEC)
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x32)["path"] == 0
    assert event_counts(steer, "steer_events") == {STEER_PLACED_NEW: 2, STEER_HASH_SET: 2}
    assert event_counts(steer, "repair_events") == {}   # no QP was on it


# ------------------------------------------------- probe_sent: silence counted from what left

RING = contract.CONSTANTS["PROBE_RING"]
MS = 1_000_000


def request(vtep=4, path=2, seq=7):
    """One of our requests as it leaves an uplink (the remote VTEP is dst)."""
    return probe_frame(probe_msg(PROBE_REQUEST, vtep=vtep, path=path, seq=seq),
                       src="10.255.0.1", dst="10.255.0.2", ttl=64)


def reply(vtep=4, path=2, seq=7, tx_ns=1):
    return probe_frame(probe_msg(PROBE_REPLY, vtep=vtep, path=path, seq=seq, tx_ns=tx_ns))


def silence(steer, vtep=4, path=2):
    h = health(steer, vtep, path)
    return {k: h[k] for k in ("sent_seq", "last_seq", "unanswered")} | \
        {"silent": h["silent_since_ns"] != 0}


def count_misses(steer, misses=3):
    """What the agent's prober writes every round: how many unanswered
    requests make a path silent."""
    config = steer.table("repair_config")
    entry = config[config.Key(0)]
    entry.believe_until_ns, entry.probe_misses = 2**63, misses
    config[config.Key(0)] = entry


def test_a_request_leaving_is_noted_and_passes_untouched(sent, steer):
    count_misses(steer)
    before = time.monotonic_ns()
    expect(sent, request(seq=100), TC_ACT_UNSPEC)      # unchanged, on to path_pin
    after = time.monotonic_ns()
    assert silence(steer) == {"sent_seq": 100, "last_seq": 99, "unanswered": 1, "silent": False}
    assert before <= health(steer, 4, 2)["sent_ns"][100 % RING] <= after
    # The third unanswered in a row: silent since it left.
    expect(sent, request(seq=101), TC_ACT_UNSPEC)
    expect(sent, request(seq=102), TC_ACT_UNSPEC)
    h = health(steer, 4, 2)
    assert silence(steer) == {"sent_seq": 102, "last_seq": 99, "unanswered": 3, "silent": True}
    assert h["silent_since_ns"] == h["sent_ns"][102 % RING]
    expect(sent, request(seq=103), TC_ACT_UNSPEC)
    assert health(steer, 4, 2)["silent_since_ns"] == h["silent_since_ns"]


def test_a_request_path_pin_sends_out_of_another_uplink_is_noted_once(sent, steer):
    count_misses(steer)
    expect(sent, request(seq=5), TC_ACT_UNSPEC)
    expect(sent, request(seq=5), TC_ACT_UNSPEC)      # the same request, past a second uplink
    assert silence(steer)["unanswered"] == 1


def test_a_reply_leaves_unanswered_what_left_after_its_request(sent, probe, steer):
    count_misses(steer)
    for seq in range(10, 15):
        expect(sent, request(seq=seq), TC_ACT_UNSPEC)
    left_13 = health(steer, 4, 2)["sent_ns"][13 % RING]
    expect(probe, reply(seq=10), TC_ACT_SHOT, ctx=ctx())
    # 11 to 14 unanswered: silent since the third of them left.
    assert silence(steer) == {"sent_seq": 14, "last_seq": 10, "unanswered": 4, "silent": True}
    assert health(steer, 4, 2)["silent_since_ns"] == left_13
    # A late reply to an older request changes nothing.
    expect(probe, reply(seq=9), TC_ACT_SHOT, ctx=ctx())
    assert silence(steer)["unanswered"] == 4
    # Two unanswered are not silence; none after the newest.
    expect(probe, reply(seq=12), TC_ACT_SHOT, ctx=ctx())
    assert silence(steer) == {"sent_seq": 14, "last_seq": 12, "unanswered": 2, "silent": False}
    expect(probe, reply(seq=14), TC_ACT_SHOT, ctx=ctx())
    assert silence(steer) == {"sent_seq": 14, "last_seq": 14, "unanswered": 0, "silent": False}


def test_a_new_prober_numbering_afresh_forgets_the_old_ones_requests(sent, probe, steer):
    """An agent restarted numbers its requests from elsewhere: what the old
    one sent and never saw answered is not held against the path."""
    count_misses(steer)
    for seq in (50, 51, 52, 53):
        expect(sent, request(seq=seq), TC_ACT_UNSPEC)
    expect(sent, request(seq=9000), TC_ACT_UNSPEC)
    assert silence(steer) == {"sent_seq": 9000, "last_seq": 8999, "unanswered": 1, "silent": False}
    expect(probe, reply(seq=9000), TC_ACT_SHOT, ctx=ctx())
    assert silence(steer)["unanswered"] == 0


@pytest.mark.parametrize("frame", [
    reply(),                                                       # we answer theirs: a reply leaves
    vxlan(roce(0x1234), src="10.255.0.1", dst="10.255.0.2"),       # data
    probe_frame(probe_msg(PROBE_REQUEST), vni=10100),              # a request's shape on a segment
    probe_frame(probe_msg(PROBE_REQUEST), dport=4790),
    Ether(raw(request())[:-4]),                                    # cut short
    request(vtep=MAX_VTEPS),
], ids=["reply", "vxlan-data", "segment-vni", "not-4789", "cut-frame", "unknown-vtep"])
def test_anything_else_leaving_passes_untouched_and_notes_nothing(sent, steer, frame):
    expect(sent, frame, TC_ACT_UNSPEC)
    assert all(health(steer, 4, 2)[k] == 0 for k in ("sent_seq", "unanswered", "silent_since_ns"))
    assert all(health(steer, 2, 1)[k] == 0 for k in ("sent_seq", "unanswered", "silent_since_ns"))


def arm(steer, vtep, path, deadline_ns):
    """What the agent writes: the deadline, and (its prober running) the misses."""
    table = steer.table("path_health")
    key = table.Key(vtep * MAX_PATHS + path)
    leaf = table[key]
    leaf.deadline_ns = deadline_ns
    table[key] = leaf
    count_misses(steer)


def place_on_path_0(steer):
    set_vtep(steer, HOST_B_MAC, 2)
    set_path(steer, 2, 0, 2, PORT_RANGE)
    set_path(steer, 2, 1, 2, PORT_RANGE)
    arm(steer, 2, 0, deadline_ns=30 * MS)
    arm(steer, 2, 1, deadline_ns=30 * MS)
    expect(steer, roce(0x31), TC_ACT_UNSPEC)
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x31)["path"] == 0


def age_silence(steer, vtep, path, by_ns):
    """Everything path_health noted (requests leaving, the last reply) by_ns
    earlier than it happened."""
    table = steer.table("path_health")
    key = table.Key(vtep * MAX_PATHS + path)
    leaf = table[key]
    if leaf.silent_since_ns:
        leaf.silent_since_ns -= by_ns
    if leaf.last_reply_ns:
        leaf.last_reply_ns -= by_ns
    table[key] = leaf


def test_requests_unanswered_past_the_deadline_move_the_qp_on_its_next_packet(sent, steer):
    place_on_path_0(steer)
    for seq in (1, 2, 3):
        expect(sent, request(vtep=2, path=0, seq=seq), TC_ACT_UNSPEC)
    expect(steer, roce(0x31), TC_ACT_UNSPEC)          # silent, but not for a deadline yet
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x31)["path"] == 0
    age_silence(steer, 2, 0, 31 * MS)
    expect(steer, roce(0x31), TC_ACT_UNSPEC)
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x31)["path"] == 1
    assert event_counts(steer, "repair_events") == {REPAIR_LIVENESS: 1}


def test_a_prober_that_stalled_kills_no_path_however_long_ago_the_last_reply(sent, probe, steer):
    """A reply, two more requests, then the prober stalled for a second: two
    unanswered (fewer than the misses) are no silence, and the path whose
    last reply is a second old keeps its QP."""
    place_on_path_0(steer)
    expect(sent, request(vtep=2, path=0, seq=1), TC_ACT_UNSPEC)
    expect(probe, reply(vtep=2, path=0, seq=1, tx_ns=time.monotonic_ns()), TC_ACT_SHOT, ctx=ctx())
    for seq in (2, 3):
        expect(sent, request(vtep=2, path=0, seq=seq), TC_ACT_UNSPEC)
    age_silence(steer, 2, 0, 1000 * MS)
    expect(steer, roce(0x31), TC_ACT_UNSPEC)
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x31)["path"] == 0
    assert event_counts(steer, "repair_events") == {}
