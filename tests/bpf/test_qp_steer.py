"""qp_steer in the kernel (BPF_PROG_TEST_RUN): placement of RoCE QPs on
paths, the hash that yields each path's port, balance, moves off dead paths.
qp_steer never rewrites a frame, so every frame must come out as it went in."""

import math
import time

import pytest

from conftest import TC_ACT_UNSPEC, event_counts, expect, parse_counts
from qpagent import contract
from qpagent.contract import MAX_PATHS
from qpagent.portmath import hash_for_port, udp_flow_src_port
from qt1_maps import (HOOK_QP_STEER, PARSE_NOT_ROCE, PARSE_ROCE, REPAIR_LIVENESS,
                      REPAIR_RETRANSMIT,
                      STEER_HASH_SET, STEER_NO_LIVE_PATH, STEER_NO_VTEP,
                      STEER_PLACED_DEAD, STEER_PLACED_NEW, bump_mac_gen,
                      path_qps, qp_key, qp_state, set_alive, set_health, set_path, set_vtep)
from qt1_packets import HOST_B_MAC, HOST_C_MAC, roce, tcp, udp

PORT_RANGE = (32768, 60999)     # the driver's default: ip_local_port_range
TICK_BOUND_NS = 20_000_000      # last_ns lags by at most one tick: 10 ms at HZ=100
LOOPBACK = 1                    # test runs without a ctx see the loopback device
VTEP = 3
REPAIR_CAUSES = contract.CONSTANTS["REPAIR_CAUSES"]    # last_cause of a QP never repaired
RC_ACK = 17                     # RC ACKNOWLEDGE: its PSN is the other side's


def setup_vtep(steer, n_paths, n_ports, vtep=VTEP, mac=HOST_B_MAC):
    set_vtep(steer, mac, vtep)
    for p in range(n_paths):
        set_path(steer, vtep, p, n_ports, PORT_RANGE)


def send(steer, frame):
    return expect(steer, frame, TC_ACT_UNSPEC)   # always pass, byte-identical


def test_first_packet_of_a_qp_is_placed_with_the_hash_of_its_port(steer):
    setup_vtep(steer, n_paths=2, n_ports=4)
    frame = roce(0x000101)
    send(steer, frame)

    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x000101)
    assert st is not None, "no qp_table entry for the new QP"
    port = PORT_RANGE[0]                 # path 0, slot 0
    assert st["first_ns"] > 0 and st["first_ns"] == st["last_ns"] == st["placed_ns"]
    got = {k: v for k, v in st.items() if not k.endswith("_ns")}
    assert got == {"vtep": VTEP, "path": 0, "slot": 0,
                   "hash": hash_for_port(port, *PORT_RANGE), "port": port,
                   "moves": 0, "mac_gen": 0, "packets": 1, "bytes": len(frame),
                   "next_psn": 2, "psn_valid": 1, "repairs": 0, "last_cause": REPAIR_CAUSES,
                   "acked_psn": 0, "ack_valid": 0}
    assert st["repaired_ns"] == st["ack_wait_ns"] == st["nak_ns"] == 0
    assert udp_flow_src_port(st["hash"], *PORT_RANGE) == port
    assert path_qps(steer, VTEP, 0) == 1
    assert event_counts(steer, "steer_events") == {STEER_PLACED_NEW: 1, STEER_HASH_SET: 1}
    assert parse_counts(steer, LOOPBACK, HOOK_QP_STEER) == {PARSE_ROCE: 1}

    # Steady state: same placement, counted, hash set again, no new placement.
    send(steer, roce(0x000101, psn=2))
    st2 = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x000101)
    assert (st2["path"], st2["slot"], st2["hash"], st2["packets"], st2["bytes"]) == \
        (0, 0, st["hash"], 2, 2 * len(frame))
    assert st2["last_ns"] >= st["last_ns"] and st2["first_ns"] == st["first_ns"]
    assert event_counts(steer, "steer_events") == {STEER_PLACED_NEW: 1, STEER_HASH_SET: 2}


@pytest.mark.parametrize("n_qps,n_paths", [(8, 2), (8, 4), (10, 4), (7, 4), (33, 4)])
def test_k_qps_over_p_paths_balance_to_ceil_k_over_p(steer, n_qps, n_paths):
    n_ports = 4
    setup_vtep(steer, n_paths, n_ports)
    for q in range(n_qps):
        send(steer, roce(0x1000 + q))

    per_path = [0] * n_paths
    ports = []
    for q in range(n_qps):
        st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x1000 + q)
        per_path[st["path"]] += 1
        lo = PORT_RANGE[0] + st["path"] * n_ports
        assert st["port"] == lo + st["slot"]
        assert udp_flow_src_port(st["hash"], *PORT_RANGE) == st["port"]
        ports.append(st["port"])
    assert max(per_path) == math.ceil(n_qps / n_paths), per_path
    assert min(per_path) == n_qps // n_paths, per_path
    assert [path_qps(steer, VTEP, p) for p in range(n_paths)] == per_path
    if n_qps <= n_paths * n_ports:
        assert len(set(ports)) == n_qps, "QPs share a port while ports are free"
    assert event_counts(steer, "steer_events") == {STEER_PLACED_NEW: n_qps,
                                                   STEER_HASH_SET: n_qps}


def test_a_dead_path_moves_only_its_qps_on_their_next_packet(steer):
    setup_vtep(steer, n_paths=4, n_ports=4)
    qps = [0x2000 + q for q in range(8)]
    for q in qps:
        send(steer, roce(q))
    before = {q: qp_state(steer, "10.0.1.1", "10.0.2.1", q) for q in qps}
    orphans = [q for q in qps if before[q]["path"] == 1]
    assert len(orphans) == 2

    set_alive(steer, VTEP, 1, False)
    for q in qps:
        send(steer, roce(q, psn=2))
    after = {q: qp_state(steer, "10.0.1.1", "10.0.2.1", q) for q in qps}

    for q in qps:
        b, a = before[q], after[q]
        if q in orphans:
            assert a["path"] != 1 and a["moves"] == 1, a
            assert a["placed_ns"] > b["placed_ns"]
            assert udp_flow_src_port(a["hash"], *PORT_RANGE) == a["port"]
        else:
            assert (a["path"], a["slot"], a["hash"], a["moves"], a["placed_ns"]) == \
                (b["path"], b["slot"], b["hash"], 0, b["placed_ns"]), q
        assert a["packets"] == 2
    # The two orphans went to two different live paths (least loaded).
    assert len({after[q]["path"] for q in orphans}) == 2
    assert path_qps(steer, VTEP, 1) == 0
    assert sorted(path_qps(steer, VTEP, p) for p in (0, 2, 3)) == [2, 3, 3]
    assert event_counts(steer, "steer_events") == {
        STEER_PLACED_NEW: 8, STEER_PLACED_DEAD: 2, STEER_HASH_SET: 16}


def test_ipv6_inner_qp_is_keyed_by_its_128_bit_addresses(steer):
    setup_vtep(steer, n_paths=2, n_ports=2)
    send(steer, roce(0xABCDEF, src="fd00:1::1", dst="fd00:2::1"))
    send(steer, roce(0xABCDEF, src="fd00:1::1", dst="fd00:2::2"))
    a = qp_state(steer, "fd00:1::1", "fd00:2::1", 0xABCDEF)
    b = qp_state(steer, "fd00:1::1", "fd00:2::2", 0xABCDEF)
    assert a and b, "IPv6 QPs not in qp_table"
    assert (a["path"], b["path"]) == (0, 1)
    assert parse_counts(steer, LOOPBACK, HOOK_QP_STEER) == {PARSE_ROCE: 2}


@pytest.mark.parametrize("frame", [udp(), udp(dport=4790), tcp(), udp(src="fd00::1", dst="fd00::2")],
                         ids=["udp", "udp-4790", "tcp", "udp6"])
def test_non_roce_is_left_untouched_and_counted(steer, frame):
    setup_vtep(steer, n_paths=2, n_ports=2)
    send(steer, frame)
    assert len(steer.table("qp_table")) == 0
    assert event_counts(steer, "steer_events") == {}
    assert parse_counts(steer, LOOPBACK, HOOK_QP_STEER) == {PARSE_NOT_ROCE: 1}


def test_unknown_vtep_is_left_to_the_kernel_and_counted(steer):
    set_vtep(steer, HOST_C_MAC, VTEP)        # another MAC only
    set_path(steer, VTEP, 0, 2, PORT_RANGE)
    send(steer, roce(0x42))
    assert len(steer.table("qp_table")) == 0
    assert event_counts(steer, "steer_events") == {STEER_NO_VTEP: 1}


def test_the_all_zero_mac_is_the_default_remote(steer):
    set_vtep(steer, None, 5)
    set_path(steer, 5, 0, 2, PORT_RANGE)
    send(steer, roce(0x42))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x42)
    assert (st["vtep"], st["path"]) == (5, 0)


def test_no_live_path_leaves_the_kernel_hash(steer):
    setup_vtep(steer, n_paths=2, n_ports=2)
    set_alive(steer, VTEP, 0, False)
    set_alive(steer, VTEP, 1, False)
    send(steer, roce(0x77))
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x77) is None
    assert event_counts(steer, "steer_events") == {STEER_NO_LIVE_PATH: 1}


def test_a_known_qp_follows_a_mac_move_once_mac_gen_is_bumped(steer):
    """The steady state does not look the MAC up: a MAC that moves to
    another VTEP is followed on the first packet after the agent bumps
    mac_gen, and the QP then leaves its old path's count."""
    setup_vtep(steer, n_paths=2, n_ports=2, vtep=1)
    setup_vtep(steer, n_paths=2, n_ports=2, vtep=2, mac=HOST_C_MAC)
    send(steer, roce(0x99))
    set_vtep(steer, HOST_B_MAC, 2)

    send(steer, roce(0x99, psn=2))        # no bump yet: the fast path holds
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x99)
    assert (st["vtep"], st["path"], st["moves"], st["packets"]) == (1, 0, 0, 2)

    gen = bump_mac_gen(steer)
    send(steer, roce(0x99, psn=3))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x99)
    assert (st["vtep"], st["moves"], st["mac_gen"], st["packets"]) == (2, 1, gen, 3)
    assert udp_flow_src_port(st["hash"], *PORT_RANGE) == st["port"]
    assert path_qps(steer, 1, 0) == 0
    assert path_qps(steer, 2, st["path"]) == 1
    assert event_counts(steer, "steer_events") == {
        STEER_PLACED_NEW: 1, STEER_PLACED_DEAD: 1, STEER_HASH_SET: 3}


def test_a_mac_gen_bump_without_a_move_keeps_the_placement(steer):
    setup_vtep(steer, n_paths=2, n_ports=2)
    send(steer, roce(0x55))
    before = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x55)
    gen = bump_mac_gen(steer)
    send(steer, roce(0x55, psn=2))
    send(steer, roce(0x55, psn=3))
    after = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x55)
    same = ("vtep", "path", "slot", "hash", "port", "moves", "placed_ns", "first_ns")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert (after["mac_gen"], after["packets"]) == (gen, 3)
    assert event_counts(steer, "steer_events") == {STEER_PLACED_NEW: 1, STEER_HASH_SET: 3}


def test_a_known_qp_whose_mac_is_gone_after_a_bump_is_left_to_the_kernel(steer):
    setup_vtep(steer, n_paths=2, n_ports=2)
    send(steer, roce(0x56))
    steer.table("mac_vtep").clear()
    bump_mac_gen(steer)
    send(steer, roce(0x56, psn=2))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x56)
    assert (st["packets"], st["moves"]) == (1, 0)
    assert event_counts(steer, "steer_events") == {
        STEER_PLACED_NEW: 1, STEER_HASH_SET: 1, STEER_NO_VTEP: 1}


def test_last_ns_follows_the_packets_to_one_tick(steer):
    """The steady state reads no clock: last_ns is this CPU's time at the
    start of the current jiffy, so it moves on, never back, and lags the
    true time by at most one tick."""
    setup_vtep(steer, n_paths=1, n_ports=2)
    send(steer, roce(0x57))
    placed = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x57)
    deadline = time.monotonic() + 2.0
    st = placed
    while st["last_ns"] == placed["last_ns"]:
        assert time.monotonic() < deadline, "last_ns never moved on"
        send(steer, roce(0x57))
        st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x57)
    assert st["last_ns"] > placed["last_ns"] and st["placed_ns"] == placed["placed_ns"]

    before = time.monotonic_ns()          # bpf_ktime_get_ns's clock
    send(steer, roce(0x57))
    after = time.monotonic_ns()
    last = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x57)["last_ns"]
    assert before - TICK_BOUND_NS <= last <= after, (before, last, after)


# ------------------------------------------------------------ path liveness

def test_a_path_past_its_liveness_deadline_sends_its_qps_elsewhere_on_their_next_packet(steer):
    setup_vtep(steer, n_paths=4, n_ports=4)
    now = time.monotonic_ns()
    for p in range(4):                       # armed, answered just now
        set_health(steer, VTEP, p, deadline_ns=10_000_000_000, last_reply_ns=now)
    qps = [0x3000 + q for q in range(8)]
    for q in qps:
        send(steer, roce(q))
    before = {q: qp_state(steer, "10.0.1.1", "10.0.2.1", q) for q in qps}
    orphans = [q for q in qps if before[q]["path"] == 2]
    assert len(orphans) == 2

    # Path 2 stays alive in path_table (routing and BFD see nothing), but
    # its last answer is older than its deadline.
    set_health(steer, VTEP, 2, deadline_ns=30_000_000, last_reply_ns=now - 1_000_000_000)
    for q in qps:
        send(steer, roce(q, psn=2))
    after = {q: qp_state(steer, "10.0.1.1", "10.0.2.1", q) for q in qps}
    for q in qps:
        b, a = before[q], after[q]
        if q in orphans:
            assert a["path"] != 2 and (a["moves"], a["repairs"], a["last_cause"]) == \
                (1, 1, REPAIR_LIVENESS), a
            assert a["repaired_ns"] == a["placed_ns"] > b["placed_ns"]
            assert udp_flow_src_port(a["hash"], *PORT_RANGE) == a["port"]
        else:
            same = ("path", "slot", "hash", "moves", "placed_ns", "repairs", "last_cause")
            assert {k: a[k] for k in same} == {k: b[k] for k in same}, q
    assert len({after[q]["path"] for q in orphans}) == 2       # least loaded: spread
    assert path_qps(steer, VTEP, 2) == 0
    assert event_counts(steer, "repair_events") == {REPAIR_LIVENESS: 2}
    assert event_counts(steer, "steer_events") == {
        STEER_PLACED_NEW: 8, STEER_PLACED_DEAD: 2, STEER_HASH_SET: 16}
    # A new QP is not placed on the silent path either.
    send(steer, roce(0x30FF))
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x30FF)["path"] != 2


def test_a_qp_leaving_a_dead_path_prefers_a_path_that_answers_probes(steer):
    """Only paths in use and their spares are probed: an unprobed path
    (deadline 0) may share the failure. The QPs leaving path 0 go to the
    least-loaded paths seen answering (2, then 3), not to the unprobed path
    1 that ties with them; a new QP still takes the least loaded of all."""
    setup_vtep(steer, n_paths=4, n_ports=4)
    now = time.monotonic_ns()
    qps = [0x3100 + q for q in range(5)]      # paths 0, 1, 2, 3, 0
    for q in qps:
        send(steer, roce(q))
    assert [qp_state(steer, "10.0.1.1", "10.0.2.1", q)["path"] for q in qps] == [0, 1, 2, 3, 0]
    set_health(steer, VTEP, 0, deadline_ns=30_000_000, last_reply_ns=now - 1_000_000_000)
    for p in (2, 3):
        set_health(steer, VTEP, p, deadline_ns=10_000_000_000, last_reply_ns=now)
    for q in (0x3100, 0x3104):
        send(steer, roce(q, psn=2))
    moved = [qp_state(steer, "10.0.1.1", "10.0.2.1", q) for q in (0x3100, 0x3104)]
    assert [(m["path"], m["last_cause"]) for m in moved] == [(2, REPAIR_LIVENESS),
                                                             (3, REPAIR_LIVENESS)]
    assert [path_qps(steer, VTEP, p) for p in range(4)] == [0, 1, 2, 2]
    send(steer, roce(0x31FF))
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x31FF)["path"] == 1


def test_a_path_answering_most_of_its_last_requests_counts_as_answering(steer):
    """A deadline can be shorter than the probe period (a short RTT, a 10 ms
    margin): a path whose last reply is older than its deadline, with one
    request out, still answers probes, and a QP leaving a dead path prefers
    it to an unprobed one."""
    setup_vtep(steer, n_paths=3, n_ports=4)
    now = time.monotonic_ns()
    qps = [0x3200 + q for q in range(4)]      # paths 0, 1, 2, 0: 1 and 2 tie
    for q in qps:
        send(steer, roce(q))
    assert [qp_state(steer, "10.0.1.1", "10.0.2.1", q)["path"] for q in qps] == [0, 1, 2, 0]
    set_health(steer, VTEP, 0, deadline_ns=10_000_000, last_reply_ns=now - 1_000_000_000)
    set_health(steer, VTEP, 2, deadline_ns=10_000_000, last_reply_ns=now)
    table = steer.table("path_health")
    key = table.Key(VTEP * MAX_PATHS + 2)
    leaf = table[key]
    leaf.last_reply_ns, leaf.unanswered = now - 15_000_000, 1   # 15 ms ago, one out
    table[key] = leaf
    send(steer, roce(0x3200, psn=2))
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x3200)["path"] == 2


def test_with_no_prober_running_a_silent_path_keeps_its_qps(steer):
    """The agent stopped (or was killed): nobody sends probes, so silence
    says nothing and no QP moves, as a hitless restart needs."""
    setup_vtep(steer, n_paths=2, n_ports=2)
    send(steer, roce(0x44))
    before = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x44)
    for p in range(2):
        set_health(steer, VTEP, p, deadline_ns=30_000_000, last_reply_ns=1,
                   prober_running=False)
    send(steer, roce(0x44, psn=2))
    after = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x44)
    assert (after["path"], after["port"], after["moves"]) == \
        (before["path"], before["port"], 0)
    assert event_counts(steer, "repair_events") == {}


def test_a_path_with_deadline_0_is_never_declared_dead(steer):
    """Unarmed (a remote VTEP that runs no agent never answers): routing and
    BFD alone decide, however old its last answer."""
    setup_vtep(steer, n_paths=2, n_ports=2)
    set_health(steer, VTEP, 0, deadline_ns=0, last_reply_ns=0)
    set_health(steer, VTEP, 1, deadline_ns=0, last_reply_ns=1)
    send(steer, roce(0x41))
    send(steer, roce(0x42))
    for psn in range(2, 10):
        send(steer, roce(0x41, psn=psn))
        send(steer, roce(0x42, psn=psn))
    a = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x41)
    b = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x42)
    assert ((a["path"], a["moves"]), (b["path"], b["moves"])) == ((0, 0), (1, 0))
    assert event_counts(steer, "repair_events") == {}


def test_when_every_path_is_silent_the_qp_is_left_to_the_kernel_hash(steer):
    setup_vtep(steer, n_paths=2, n_ports=2)
    send(steer, roce(0x43))
    for p in range(2):
        set_health(steer, VTEP, p, deadline_ns=30_000_000, last_reply_ns=1)
    send(steer, roce(0x43, psn=2))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x43)
    assert (st["path"], st["moves"], st["packets"]) == (0, 0, 2)
    assert event_counts(steer, "steer_events") == {
        STEER_PLACED_NEW: 1, STEER_HASH_SET: 1, STEER_NO_LIVE_PATH: 1}


# --------------------------------------------------- retransmission repair

def set_repair(steer, retransmit=True, holddown_ns=100_000_000):
    table = steer.table("repair_config")
    leaf = table[table.Key(0)]
    leaf.retransmit, leaf.holddown_ns = int(retransmit), holddown_ns
    table[table.Key(0)] = leaf


def age(steer, dqp, placed_by_ns=0, repaired_by_ns=0):
    """Move a QP's placement (and last repair) that far into the past, as if
    that much time had gone by: no sleeping through a hold-down."""
    table = steer.table("qp_table")
    key = qp_key(steer, "10.0.1.1", "10.0.2.1", dqp)
    leaf = table[key]
    leaf.placed_ns -= placed_by_ns
    leaf.repaired_ns -= min(repaired_by_ns, leaf.repaired_ns)
    table[key] = leaf


def placed_qp(steer, dqp, psns, n_paths=2):
    """A QP that sent `psns` in order, placed long enough ago to be moved."""
    setup_vtep(steer, n_paths=n_paths, n_ports=2)
    for psn in psns:
        send(steer, roce(dqp, psn=psn))
    age(steer, dqp, placed_by_ns=10_000_000_000)
    return qp_state(steer, "10.0.1.1", "10.0.2.1", dqp)


def test_a_retransmitted_psn_moves_the_qp_to_another_live_path(steer):
    set_repair(steer)
    before = placed_qp(steer, 0x51, range(1, 6))
    assert (before["path"], before["next_psn"]) == (0, 6)
    send(steer, roce(0x51, psn=3))                  # go-back-N from 3
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x51)
    assert (st["path"], st["moves"], st["repairs"], st["last_cause"]) == \
        (1, 1, 1, REPAIR_RETRANSMIT)
    assert st["repaired_ns"] == st["placed_ns"] > before["placed_ns"]
    assert udp_flow_src_port(st["hash"], *PORT_RANGE) == st["port"]
    assert st["next_psn"] == 6                      # a resend does not move it back
    assert (path_qps(steer, VTEP, 0), path_qps(steer, VTEP, 1)) == (0, 1)
    assert event_counts(steer, "repair_events") == {REPAIR_RETRANSMIT: 1}
    assert STEER_PLACED_DEAD not in event_counts(steer, "steer_events")
    # The resend of the highest PSN sent counts too ("at or below").
    age(steer, 0x51, placed_by_ns=10_000_000_000, repaired_by_ns=10_000_000_000)
    send(steer, roce(0x51, psn=5))
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x51)["path"] == 0


def test_steady_psn_progress_never_moves_the_qp(steer):
    set_repair(steer, holddown_ns=0)
    st = placed_qp(steer, 0x52, range(100, 400))
    assert (st["path"], st["moves"], st["next_psn"]) == (0, 0, 400)
    # Skipped PSNs (lost on the way in, not resent) are progress too.
    send(steer, roce(0x52, psn=1000))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x52)
    assert (st["path"], st["moves"], st["next_psn"]) == (0, 0, 1001)
    assert event_counts(steer, "repair_events") == {}


def test_a_psn_wrapping_at_2_pow_24_is_not_a_retransmission(steer):
    set_repair(steer, holddown_ns=0)
    st = placed_qp(steer, 0x53, [0xFFFFFD, 0xFFFFFE, 0xFFFFFF, 0, 1])
    assert (st["path"], st["moves"], st["next_psn"]) == (0, 0, 2)
    send(steer, roce(0x53, psn=0xFFFFFF))            # behind 0 and 1: a resend
    assert qp_state(steer, "10.0.1.1", "10.0.2.1", 0x53)["path"] == 1


def test_a_second_retransmission_within_the_holddown_does_not_move_it_again(steer):
    set_repair(steer, holddown_ns=60_000_000_000)
    placed_qp(steer, 0x54, range(1, 11), n_paths=3)
    age(steer, 0x54, placed_by_ns=120_000_000_000)
    send(steer, roce(0x54, psn=4))
    first = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x54)
    assert (first["moves"], first["repairs"]) == (1, 1)
    # Placed long ago again, but repaired just now: the hold-down holds.
    age(steer, 0x54, placed_by_ns=120_000_000_000)
    for psn in (4, 5, 6):
        send(steer, roce(0x54, psn=psn))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x54)
    assert (st["path"], st["moves"], st["repairs"]) == (first["path"], 1, 1)
    assert event_counts(steer, "repair_events") == {REPAIR_RETRANSMIT: 1}


def test_retransmit_0_turns_retransmission_repair_off(steer):
    set_repair(steer, retransmit=False, holddown_ns=0)
    placed_qp(steer, 0x55, range(1, 6))
    send(steer, roce(0x55, psn=2))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x55)
    assert (st["path"], st["moves"], st["repairs"], st["last_cause"]) == (0, 0, 0, REPAIR_CAUSES)
    assert event_counts(steer, "repair_events") == {}


def test_a_retransmission_with_no_other_live_path_stays(steer):
    set_repair(steer, holddown_ns=0)
    placed_qp(steer, 0x56, range(1, 6), n_paths=1)
    send(steer, roce(0x56, psn=2))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x56)
    assert (st["path"], st["moves"], st["packets"]) == (0, 0, 6)
    assert event_counts(steer, "repair_events") == {}
    assert event_counts(steer, "steer_events")[STEER_HASH_SET] == 6


def test_acknowledgements_repeating_a_psn_are_not_retransmissions(steer):
    """An ACK's PSN numbers the other side's stream: duplicate ACKs are not
    this QP resending."""
    set_repair(steer, holddown_ns=0)
    setup_vtep(steer, n_paths=2, n_ports=2)
    for psn in (5, 5, 5, 4):
        send(steer, roce(0x57, psn=psn, opcode=RC_ACK))
    age(steer, 0x57, placed_by_ns=10_000_000_000)
    send(steer, roce(0x57, psn=5, opcode=RC_ACK))
    st = qp_state(steer, "10.0.1.1", "10.0.2.1", 0x57)
    assert (st["path"], st["moves"], st["psn_valid"]) == (0, 0, 0)
