"""A QP's own signals in the kernel (BPF_PROG_TEST_RUN): path_probe reads the
ACKs and NAKs coming back on an uplink and records them on the QP they
answer; qp_steer moves the QP on its next packet when a NAK came back, or
when data waits for an ACK past the stall time. Acknowledgements pass
untouched to the host; qp_steer never rewrites a frame.

The requester 10.0.1.1 (behind this VTEP) sends to QP 0x61 of the
responder 10.0.2.1 from UDP source port 49152; the responder's ACKs come
back to the requester's own QP number (0x0a here), from the same port."""

import time

import pytest
from scapy.contrib.roce import AETH, BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from conftest import TC_ACT_UNSPEC, event_counts, expect
from qpagent import bpfsys, contract
from qpagent.contract import MAX_PATHS
from qt1_maps import (PROBE_REPLY, REPAIR_LIVENESS, REPAIR_NAK, REPAIR_STALL, REPLY_ACK,
                      REPLY_NAK, REPLY_UNPAIRED, qp_key, qp_state, set_alive, set_path, set_vtep)
from qt1_maps import set_health as set_health_silent
from qt1_packets import (AETH_NAK_PSN_SEQ, AETH_RNR_NAK, HOST_A_MAC, HOST_B_MAC, probe_frame, probe_msg,
                         roce, roce_ack, vxlan)

PORT_RANGE = (32768, 60999)
REPAIR_CAUSES = contract.CONSTANTS["REPAIR_CAUSES"]    # last_cause of a QP never repaired
VTEP = 3
UPLINK = 1                 # the device a test run hands the packet in on (lo)
DQP, OWN_QP = 0x61, 0x0a
MS = 1_000_000
LONG_AGO = 10_000 * MS


def forward(steer, psn, dqp=DQP, sport=49152):
    return expect(steer, roce(dqp, psn=psn, sport=sport), TC_ACT_UNSPEC)


def back(probe, psn, syndrome=0x1f, sport=49152, src="10.0.2.1"):
    """An ACK (or NAK) arriving on an uplink, VXLAN as the remote VTEP sent it."""
    frame = vxlan(roce_ack(OWN_QP, psn, syndrome, src=src, sport=sport),
                  src="10.255.0.2", dst="10.255.0.1")
    return expect(probe, frame, TC_ACT_UNSPEC, ctx=bpfsys.skb_ctx(UPLINK))


def state(steer, dqp=DQP):
    return qp_state(steer, "10.0.1.1", "10.0.2.1", dqp)


def configure(steer, nak=False, stall_ns=0, retransmit=False, holddown_ns=100 * MS):
    table = steer.table("repair_config")
    leaf = table[table.Key(0)]
    leaf.nak, leaf.stall_ns, leaf.retransmit, leaf.holddown_ns = \
        int(nak), stall_ns, int(retransmit), holddown_ns
    table[table.Key(0)] = leaf


def rewind(steer, dqp=DQP, **by_ns):
    """Move the QP's timestamps (placed_ns, ack_wait_ns, ...) that far into
    the past, as if that much time had gone by: no sleeping in tests."""
    table = steer.table("qp_table")
    key = qp_key(steer, "10.0.1.1", "10.0.2.1", dqp)
    leaf = table[key]
    for name, ns in by_ns.items():
        setattr(leaf, name, max(0, getattr(leaf, name) - ns))
    table[key] = leaf


def health(steer, path):
    table = steer.table("path_health")
    leaf = table[table.Key(VTEP * MAX_PATHS + path)]
    return {name: getattr(leaf, name) for name, _ in leaf._fields_}


def set_health(steer, path, **fields):
    """Write path_health fields of one of our VTEP's paths, as the agent
    (deadline) or the passing of time (suspicion) would."""
    table = steer.table("path_health")
    key = table.Key(VTEP * MAX_PATHS + path)
    leaf = table[key]
    for name, value in fields.items():
        setattr(leaf, name, value)
    table[key] = leaf


def sent(steer, psns, n_paths=2):
    """A QP on path 0 of two that sent `psns`, placed long ago."""
    set_vtep(steer, HOST_B_MAC, VTEP)
    for p in range(n_paths):
        set_path(steer, VTEP, p, 2, PORT_RANGE)
    for psn in psns:
        forward(steer, psn)
    rewind(steer, placed_ns=LONG_AGO)
    assert state(steer)["path"] == 0


@pytest.fixture
def probe_and_steer(probe, steer):
    return probe, steer


def test_an_ack_is_recorded_on_the_qp_it_answers_and_passes(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    back(probe, psn=3)                        # acknowledges 1..3
    st = state(steer)
    assert (st["acked_psn"], st["ack_valid"], st["next_psn"]) == (4, 1, 6)
    assert st["ack_wait_ns"] > 0
    back(probe, psn=2)                        # an older ACK changes nothing
    assert state(steer)["acked_psn"] == 4
    assert event_counts(steer, "reply_events") == {REPLY_ACK: 2}


def test_an_ack_for_a_qp_we_do_not_steer_is_counted_and_passes(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 3))
    back(probe, psn=1, sport=50000)           # another port: another QP pair
    back(probe, psn=1, src="10.0.2.9")        # another responder
    assert state(steer)["ack_valid"] == 0
    assert event_counts(steer, "reply_events") == {REPLY_UNPAIRED: 2}


def test_a_nak_moves_the_qp_on_its_next_packet(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=True)
    sent(steer, range(1, 6))
    back(probe, psn=3, syndrome=AETH_NAK_PSN_SEQ)     # "expected 3": a gap
    assert state(steer)["nak_ns"] > 0
    forward(steer, psn=3)                     # go-back-N: on another path
    st = state(steer)
    assert (st["path"], st["moves"], st["repairs"], st["last_cause"]) == (1, 1, 1, REPAIR_NAK)
    assert event_counts(steer, "repair_events") == {REPAIR_NAK: 1}
    assert event_counts(steer, "reply_events") == {REPLY_NAK: 1}
    # The NAK is spent: the next packets stay.
    rewind(steer, placed_ns=LONG_AGO, repaired_ns=LONG_AGO)
    forward(steer, psn=4)
    assert (state(steer)["path"], state(steer)["moves"]) == (1, 1)


def test_a_nak_moves_nothing_when_nak_repair_is_off(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=False)
    sent(steer, range(1, 6))
    back(probe, psn=3, syndrome=AETH_NAK_PSN_SEQ)
    forward(steer, psn=3)
    st = state(steer)
    assert (st["path"], st["moves"], st["last_cause"]) == (0, 0, REPAIR_CAUSES)


def test_a_receiver_not_ready_nak_is_no_sign_of_the_path(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=True)
    sent(steer, range(1, 6))
    back(probe, psn=3, syndrome=AETH_RNR_NAK)
    forward(steer, psn=6)
    assert (state(steer)["path"], state(steer)["nak_ns"]) == (0, 0)
    assert event_counts(steer, "reply_events") == {}


def test_a_nak_within_the_holddown_of_a_placement_waits_for_it(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=True, holddown_ns=LONG_AGO * 2)
    sent(steer, range(1, 6))
    back(probe, psn=3, syndrome=AETH_NAK_PSN_SEQ)
    forward(steer, psn=3)
    assert state(steer)["moves"] == 0


def test_data_waiting_past_the_stall_time_moves_the_qp(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, stall_ns=50 * MS)
    sent(steer, range(1, 6))
    back(probe, psn=2)                        # 3..5 outstanding
    rewind(steer, ack_wait_ns=80 * MS)        # no ACK progress for 80 ms
    forward(steer, psn=6)
    st = state(steer)
    assert (st["path"], st["moves"], st["last_cause"]) == (1, 1, REPAIR_STALL)
    assert event_counts(steer, "repair_events") == {REPAIR_STALL: 1}


def test_one_late_ack_does_not_move_the_qp(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, stall_ns=50 * MS)
    sent(steer, range(1, 6))
    back(probe, psn=2)
    rewind(steer, ack_wait_ns=30 * MS)        # late, but within the stall time
    forward(steer, psn=6)
    back(probe, psn=6)                        # and here it is: all caught up
    rewind(steer, ack_wait_ns=30 * MS)
    forward(steer, psn=7)
    st = state(steer)
    assert (st["path"], st["moves"]) == (0, 0)
    assert event_counts(steer, "repair_events") == {}


def test_steady_ack_progress_never_moves_the_qp(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, stall_ns=50 * MS, nak=True, holddown_ns=0)
    sent(steer, range(1, 3))
    for psn in range(3, 200):
        back(probe, psn=psn - 2)              # ACKs trail two packets behind
        forward(steer, psn=psn)
    st = state(steer)
    assert (st["path"], st["moves"], st["acked_psn"], st["next_psn"]) == (0, 0, 198, 200)
    assert event_counts(steer, "repair_events") == {}


def test_a_qp_with_nothing_outstanding_is_not_stalled(probe_and_steer):
    """Idle after its last ACK: the next send starts a new wait."""
    probe, steer = probe_and_steer
    configure(steer, stall_ns=50 * MS)
    sent(steer, range(1, 6))
    back(probe, psn=5)
    rewind(steer, ack_wait_ns=LONG_AGO)
    forward(steer, psn=6)
    assert state(steer)["moves"] == 0


def test_without_any_ack_seen_there_is_no_stall(probe_and_steer):
    """A QP whose ACKs we cannot pair (or an unreliable one) never stalls."""
    _, steer = probe_and_steer
    configure(steer, stall_ns=50 * MS)
    sent(steer, range(1, 6))
    rewind(steer, ack_wait_ns=LONG_AGO)
    forward(steer, psn=6)
    assert (state(steer)["moves"], state(steer)["ack_valid"]) == (0, 0)


def test_a_path_deadline_longer_than_the_stall_time_is_the_one_waited(probe_and_steer):
    """The stall time is a floor; a path whose RTT makes its liveness
    deadline longer waits that long."""
    probe, steer = probe_and_steer
    configure(steer, stall_ns=50 * MS)
    sent(steer, range(1, 6))
    set_health(steer, 0, deadline_ns=200 * MS)
    back(probe, psn=2)
    rewind(steer, ack_wait_ns=120 * MS)
    forward(steer, psn=6)
    assert state(steer)["moves"] == 0
    rewind(steer, ack_wait_ns=100 * MS)       # 220 ms now
    forward(steer, psn=7)
    assert (state(steer)["path"], state(steer)["last_cause"]) == (1, REPAIR_STALL)


# ------------------------------------------------------------- suspicion

TC_ACT_SHOT = 2


def two_qps_on_path_0(steer):
    """QPs 0x61 and 0x63 on path 0, 0x62 on path 1 (fewest QPs first), each
    with a port of its own so that its ACKs find it; placed long ago."""
    set_vtep(steer, HOST_B_MAC, VTEP)
    for p in range(2):
        set_path(steer, VTEP, p, 4, PORT_RANGE)
    for dqp, sport in ((0x61, 49152), (0x62, 49153), (0x63, 49154)):
        for psn in range(1, 6):
            forward(steer, psn, dqp=dqp, sport=sport)
        rewind(steer, dqp=dqp, placed_ns=LONG_AGO)
    assert [state(steer, d)["path"] for d in (0x61, 0x62, 0x63)] == [0, 1, 0]


def nak_and_resend(probe, steer, dqp, sport):
    back(probe, psn=3, syndrome=AETH_NAK_PSN_SEQ, sport=sport)
    forward(steer, psn=3, dqp=dqp, sport=sport)


def path_0_made_suspect(probe, steer):
    """Both QPs of path 0 leave it on their own NAKs: path 0 is suspect."""
    configure(steer, nak=True)
    two_qps_on_path_0(steer)
    nak_and_resend(probe, steer, 0x61, 49152)
    nak_and_resend(probe, steer, 0x63, 49154)


def test_two_qps_leaving_one_path_make_it_suspect_until_a_probe_clears_it(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=True)
    two_qps_on_path_0(steer)
    nak_and_resend(probe, steer, 0x61, 49152)
    assert (health(steer, 0)["leavers"], health(steer, 0)["suspect_ns"]) == (1, 0)
    nak_and_resend(probe, steer, 0x63, 49154)
    assert [state(steer, d)["path"] for d in (0x61, 0x62, 0x63)] == [1, 1, 1]
    assert health(steer, 0)["suspect_ns"] > 0
    # Path 0 is empty and live, yet under suspicion it takes no new QP.
    forward(steer, 1, dqp=0x64, sport=49155)
    assert state(steer, 0x64)["path"] == 1
    # A probe sent after the suspicion comes back: the path forwards.
    expect(probe, probe_frame(probe_msg(PROBE_REPLY, vtep=VTEP, path=0,
                                        tx_ns=time.monotonic_ns())),
           TC_ACT_SHOT, ctx=bpfsys.skb_ctx(UPLINK))
    assert (health(steer, 0)["suspect_ns"], health(steer, 0)["leavers"]) == (0, 0)
    forward(steer, 1, dqp=0x65, sport=49156)
    assert state(steer, 0x65)["path"] == 0


def test_a_probe_sent_before_the_suspicion_does_not_clear_it(probe_and_steer):
    probe, steer = probe_and_steer
    path_0_made_suspect(probe, steer)
    expect(probe, probe_frame(probe_msg(PROBE_REPLY, vtep=VTEP, path=0, tx_ns=1)),
           TC_ACT_SHOT, ctx=bpfsys.skb_ctx(UPLINK))
    assert health(steer, 0)["suspect_ns"] > 0


def test_one_qp_leaving_does_not_make_its_path_suspect(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=True)
    two_qps_on_path_0(steer)
    nak_and_resend(probe, steer, 0x61, 49152)
    forward(steer, 1, dqp=0x64, sport=49155)
    assert (state(steer, 0x64)["path"], health(steer, 0)["suspect_ns"]) == (0, 0)


def test_suspicion_with_no_probe_to_clear_it_lapses(probe_and_steer):
    probe, steer = probe_and_steer
    path_0_made_suspect(probe, steer)
    set_health(steer, 0, suspect_ns=health(steer, 0)["suspect_ns"] - 2_000 * MS)   # 1 s hold past
    forward(steer, 1, dqp=0x64, sport=49155)
    assert state(steer, 0x64)["path"] == 0


def four_paths(steer, shares_of_0):
    """Our QP on path 0 of four; path 0 crosses a link of each path in
    `shares_of_0` (the agent's path_entry.shares)."""
    sent(steer, range(1, 6), n_paths=4)
    set_path(steer, VTEP, 0, 2, PORT_RANGE, shares=sum(1 << p for p in shares_of_0))


def test_a_qp_leaving_on_its_own_nak_avoids_every_path_sharing_a_link(probe_and_steer):
    """Paths 1 and 2 cross a link of path 0: the link that failed may be
    theirs too. Path 3, the one that shares none, takes the QP, though
    path 1 has as few QPs and a lower index."""
    probe, steer = probe_and_steer
    configure(steer, nak=True)
    four_paths(steer, {1, 2})
    back(probe, psn=3, syndrome=AETH_NAK_PSN_SEQ)
    forward(steer, psn=3)
    assert (state(steer)["path"], state(steer)["last_cause"]) == (3, REPAIR_NAK)


def test_a_qp_leaving_a_dead_path_avoids_every_path_sharing_a_link(steer):
    four_paths(steer, {1, 3})
    set_alive(steer, VTEP, 0, False)
    forward(steer, psn=6)
    assert state(steer)["path"] == 2


def test_when_every_other_path_shares_a_link_the_qp_still_leaves(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, nak=True)
    four_paths(steer, {1, 2, 3})
    back(probe, psn=3, syndrome=AETH_NAK_PSN_SEQ)
    forward(steer, psn=3)
    assert state(steer)["path"] == 1           # the fewest QPs, then the lowest index


def test_a_new_qp_is_placed_by_load_alone(steer):
    """shares is about leaving a path: a new QP has nothing to flee."""
    four_paths(steer, {1, 2, 3})
    forward(steer, psn=1, dqp=0x62)
    assert state(steer, dqp=0x62)["path"] == 1  # path 0 holds a QP already


# ---------------------------------------------------------------- kept ACKs
def wire_ack(psn, syndrome=0x1f, trailer=b""):
    """An ACK as a NIC sends it: BTH, AETH, then the ICRC (Scapy's)."""
    return bytes(Ether(src=HOST_B_MAC, dst=HOST_A_MAC) / IP(src="10.0.2.1", dst="10.0.1.1")
                 / UDP(sport=49152, dport=4791) / BTH(opcode=0x11, dqpn=OWN_QP, psn=psn)
                 / AETH(syndrome=syndrome, msn=1)) + trailer


def back_whole(probe, inner: bytes):
    frame = vxlan(Ether(inner), src="10.255.0.2", dst="10.255.0.1")
    return expect(probe, frame, TC_ACT_UNSPEC, ctx=bpfsys.skb_ctx(UPLINK))


def kept_ack(steer, dqp=DQP):
    """The ACK frame path_probe kept for the QP (qp_ack_frame), or None."""
    table = steer.table("qp_ack_frame")
    try:
        return bytes(table[qp_key(steer, "10.0.1.1", "10.0.2.1", dqp)].bytes)
    except KeyError:
        return None


def test_an_ack_that_moves_the_qp_on_is_kept_whole_for_the_go_back_nak(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    back_whole(probe, wire_ack(3))
    assert kept_ack(steer) == wire_ack(3)
    back_whole(probe, wire_ack(2))            # an older ACK: the newer stays
    assert kept_ack(steer) == wire_ack(3)


def test_a_nak_is_not_kept_as_the_template(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    back_whole(probe, wire_ack(3, syndrome=AETH_NAK_PSN_SEQ))
    assert kept_ack(steer) is None


def test_an_ack_of_another_shape_is_recorded_but_not_kept(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    back_whole(probe, wire_ack(3, trailer=b"\0\0"))     # two bytes after the ICRC
    assert state(steer)["acked_psn"] == 4
    assert kept_ack(steer) is None


# ---------------------------------------------------------------- a QP's numbers used again
def test_a_new_qp_with_the_same_numbers_starts_its_stream_afresh(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, retransmit=True, holddown_ns=0)
    sent(steer, range(1, 6))
    back(probe, psn=5)                        # all acknowledged: the job ended
    path = state(steer)["path"]
    forward(steer, psn=1)                     # the next job's first PSN, below the last
    st = state(steer)
    assert (st["path"], st["next_psn"], st["ack_valid"], st["repairs"]) == (path, 2, 0, 0)
    back(probe, psn=1)
    st = state(steer)
    assert (st["acked_psn"], st["ack_valid"], st["next_psn"]) == (2, 1, 2)
    assert event_counts(steer, "repair_events") == {}


def test_a_lower_psn_with_data_outstanding_is_a_resend(probe_and_steer):
    probe, steer = probe_and_steer
    configure(steer, retransmit=True, holddown_ns=0)
    sent(steer, range(1, 6))
    back(probe, psn=3)                        # 4 and 5 outstanding
    forward(steer, psn=4)                     # go-back-N from 4
    st = state(steer)
    assert (st["repairs"], st["next_psn"], st["ack_valid"]) == (1, 6, 1)


# ------------------------------------------------------------ ACKs as signs of life

def test_an_ack_moving_a_qp_on_notes_that_its_path_delivers(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    before = time.monotonic_ns()
    back(probe, psn=3)
    delivered = health(steer, 0)["acked_ns"]
    assert before <= delivered <= time.monotonic_ns()
    back(probe, psn=2)                        # an older ACK is no news
    back(probe, 3, syndrome=AETH_NAK_PSN_SEQ)  # nor is a NAK
    assert health(steer, 0)["acked_ns"] == delivered
    assert health(steer, 1)["acked_ns"] == 0  # the other path delivered nothing


def silent_by_probes(steer, path):
    """Armed, its requests unanswered past the deadline (as qt1_maps.set_health)."""
    set_health_silent(steer, VTEP, path, deadline_ns=30 * MS,
                      last_reply_ns=time.monotonic_ns() - 1000 * MS)


def test_a_path_whose_acks_keep_coming_is_not_dead_however_late_its_probes(probe_and_steer):
    """Behind a deep queue (the lab's WAN links buffer 400 ms) the probes
    wait as long as the data: a path whose QPs' data is acknowledged within
    its deadline is slow, not dead, and keeps its QPs."""
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    set_health_silent(steer, VTEP, 1, deadline_ns=10_000 * MS, last_reply_ns=time.monotonic_ns())
    silent_by_probes(steer, 0)
    back(probe, psn=3)                        # data delivered just now
    forward(steer, 6)
    assert state(steer)["path"] == 0
    assert event_counts(steer, "repair_events") == {}


def test_acks_older_than_the_deadline_do_not_keep_a_silent_path_alive(probe_and_steer):
    probe, steer = probe_and_steer
    sent(steer, range(1, 6))
    set_health_silent(steer, VTEP, 1, deadline_ns=10_000 * MS, last_reply_ns=time.monotonic_ns())
    back(probe, psn=3)
    silent_by_probes(steer, 0)
    # 30 ms plus qp_steer's clock tick (clock.h) ago
    set_health(steer, 0, acked_ns=health(steer, 0)["acked_ns"] - 50 * MS)
    forward(steer, 6)
    assert state(steer)["path"] == 1
    assert event_counts(steer, "repair_events") == {REPAIR_LIVENESS: 1}
