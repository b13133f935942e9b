"""Full LRU tables (built with 64 entries through -DMAX_FLOWS / -DMAX_QPS so
that filling them is quick): new flows and QPs evict old ones, the newest are
counted right, and no packet is ever dropped."""

import pytest

from conftest import TC_ACT_UNSPEC, Program, expect, parse_counts
from qpagent import bpfobj
from qt1_maps import HOOK_TC_EGRESS, PARSE_ROCE, flow_entries, qp_state, set_path, set_vtep
from qt1_packets import roce

SMALL = 64
LOOPBACK = 1


@pytest.fixture(scope="module")
def small_flows():
    bpf = bpfobj.compile_source("flow_stats.c", (f"-DMAX_FLOWS={SMALL}",))
    try:
        yield Program(bpf, "flow_stats_tc")
    finally:
        bpf.cleanup()


@pytest.fixture(scope="module")
def small_steer():
    bpf = bpfobj.compile_source("qp_steer.c", (f"-DMAX_QPS={SMALL}",))
    try:
        yield Program(bpf, "qp_steer")
    finally:
        bpf.cleanup()


def test_a_full_flow_table_evicts_and_keeps_counting(small_flows):
    prog = small_flows
    n = 4 * SMALL
    for i in range(n):
        expect(prog, roce(0x100 + i, sport=20000 + i), TC_ACT_UNSPEC)
    flows = flow_entries(prog)
    assert 0 < len(flows) <= SMALL
    newest = ("10.0.1.1", 20000 + n - 1, "10.0.2.1", 4791, 17, LOOPBACK,
              HOOK_TC_EGRESS, 2, 0, 0x100 + n - 1)
    assert newest in flows, "the newest flow was not kept"
    assert flows[newest][0] == 1
    # An evicted flow that comes back starts again from one packet. The
    # kernel's LRU is approximate (per-CPU free lists), so take a flow it
    # did evict rather than assume which.
    def key(i):
        return ("10.0.1.1", 20000 + i, "10.0.2.1", 4791, 17, LOOPBACK, HOOK_TC_EGRESS,
                2, 0, 0x100 + i)
    evicted = next(i for i in range(n) if key(i) not in flows)
    expect(prog, roce(0x100 + evicted, sport=20000 + evicted), TC_ACT_UNSPEC)
    assert flow_entries(prog)[key(evicted)][0] == 1
    assert parse_counts(prog, LOOPBACK, HOOK_TC_EGRESS) == {PARSE_ROCE: n + 1}


def test_a_full_qp_table_still_places_every_new_qp(small_steer):
    prog = small_steer
    set_vtep(prog, None, 0)
    set_path(prog, 0, 0, 4, (32768, 60999))
    n = 4 * SMALL
    for i in range(n):
        expect(prog, roce(0x5000 + i), TC_ACT_UNSPEC)
    assert 0 < len(prog.table("qp_table")) <= SMALL
    newest = qp_state(prog, "10.0.1.1", "10.0.2.1", 0x5000 + n - 1)
    assert newest is not None and newest["packets"] == 1
