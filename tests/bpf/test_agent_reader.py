"""The agent's readers (qpagent.tables) on the maps the compiled programs
really fill: parse counters per (interface, hook) summed over CPUs from every
program's parse_stats, and qp_table rows. Guards the map layout the agent
depends on."""

import socket
from types import SimpleNamespace

from conftest import TC_ACT_UNSPEC, XDP_PASS, expect
from qpagent.tables import QpTables
from qt1_maps import set_path, set_vtep
from qt1_packets import arp, roce, tcp, vxlan

HOOK_NAMES = {0: "xdp", 1: "tc", 2: "qp_steer", 3: "path_pin"}
LOOPBACK_NAME = socket.if_indextoname(1)


def counts(**nonzero):
    row = dict.fromkeys(("roce", "not_roce", "not_ip", "truncated", "fragment",
                         "ipv6_ext", "bad_bth"), 0)
    row.update(nonzero)
    return row


def test_parse_counters_are_read_per_interface_and_hook(steer, flows):
    tc, xdp = flows
    set_vtep(steer, None, 0)
    set_path(steer, 0, 0, 2, (32768, 60999))
    for frame in (roce(0x1), roce(0x1), tcp(), arp()):
        expect(steer, frame, TC_ACT_UNSPEC)
    for frame in (vxlan(roce(0x2)), tcp()):
        expect(tc, frame, TC_ACT_UNSPEC)
    expect(xdp, roce(0x3), XDP_PASS)

    dp = SimpleNamespace(steer=steer.bpf, pin=None, flows=tc.bpf)
    rows = QpTables(dp).parse_counters(HOOK_NAMES)
    assert rows == [
        {"interface": LOOPBACK_NAME, "hook": "xdp", **counts(roce=1)},
        {"interface": LOOPBACK_NAME, "hook": "tc", **counts(roce=1, not_roce=1)},
        {"interface": LOOPBACK_NAME, "hook": "qp_steer", **counts(roce=2, not_roce=1, not_ip=1)},
    ]


def test_qp_rows_carry_the_counters_the_agent_balances_by(steer):
    set_vtep(steer, None, 0)
    set_path(steer, 0, 0, 2, (32768, 60999))
    frame = roce(0x10)
    for _ in range(3):
        expect(steer, frame, TC_ACT_UNSPEC)
    dp = SimpleNamespace(steer=steer.bpf, pin=None, flows=None)
    [view] = QpTables(dp).all_qps().values()
    assert view._replace(last_ns=0) == (0, 0, 0, 32768, 3, 3 * len(frame), 0, 0)
    assert view.last_ns > 0
