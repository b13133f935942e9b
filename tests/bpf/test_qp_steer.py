"""qp_steer in the kernel (BPF_PROG_TEST_RUN): placement of RoCE QPs on
paths, the hash that yields each path's port, balance, moves off dead paths.
qp_steer never rewrites a frame, so every frame must come out as it went in."""

import math
import time

import pytest

from conftest import TC_ACT_UNSPEC, event_counts, expect, parse_counts
from qpagent.portmath import hash_for_port, udp_flow_src_port
from qt1_maps import (HOOK_QP_STEER, PARSE_NOT_ROCE, PARSE_ROCE,
                      STEER_HASH_SET, STEER_NO_LIVE_PATH, STEER_NO_VTEP,
                      STEER_PLACED_DEAD, STEER_PLACED_NEW, bump_mac_gen,
                      path_qps, qp_state, set_alive, set_path, set_vtep)
from qt1_packets import HOST_B_MAC, HOST_C_MAC, roce, tcp, udp

PORT_RANGE = (32768, 60999)     # the driver's default: ip_local_port_range
TICK_BOUND_NS = 20_000_000      # last_ns lags by at most one tick: 10 ms at HZ=100
LOOPBACK = 1                    # test runs without a ctx see the loopback device
VTEP = 3


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
                   "moves": 0, "mac_gen": 0, "packets": 1, "bytes": len(frame)}
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
