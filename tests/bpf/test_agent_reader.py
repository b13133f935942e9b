"""The agent's readers (qpagent.tables) on the maps the compiled programs
really fill, read through raw-fd maps typed by the contract (as after an
adoption): parse counters per (interface, hook) summed over CPUs from every
program's parse_stats, qp_table rows, and the path and MAC tables the agent
rebuilds its state from. Guards the map layout the agent depends on."""

import socket

from conftest import TC_ACT_UNSPEC, XDP_PASS, expect
from qpagent.contract import HOOK_NAMES, PARSE_OUTCOME_NAMES
from qpagent.maps import BccTables
from qpagent.portmath import hash_for_port
from qpagent.tables import PathView, QpTables, QpView
from qt1_maps import path_ports, set_path, set_vtep
from qt1_packets import arp, roce, tcp, vxlan

LOOPBACK_NAME = socket.if_indextoname(1)


def counts(**nonzero):
    row = dict.fromkeys(PARSE_OUTCOME_NAMES, 0)
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

    rows = QpTables(BccTables(steer=steer.bpf, flows=tc.bpf)).parse_counters(HOOK_NAMES)
    assert rows == [
        {"interface": LOOPBACK_NAME, "hook": "xdp_ingress", **counts(roce=1)},
        {"interface": LOOPBACK_NAME, "hook": "tc_egress", **counts(roce=1, not_roce=1)},
        {"interface": LOOPBACK_NAME, "hook": "qp_steer", **counts(roce=2, not_roce=1, not_ip=1)},
    ]


def test_qp_rows_carry_the_counters_the_agent_balances_by(steer):
    set_vtep(steer, None, 0)
    set_path(steer, 0, 0, 2, (32768, 60999))
    frame = roce(0x10)
    for _ in range(3):
        expect(steer, frame, TC_ACT_UNSPEC)
    [view] = QpTables(BccTables(steer=steer.bpf)).all_qps().values()
    # PSN 1 sent three times: next PSN 2; no ACK seen, so none acknowledged
    assert view._replace(last_ns=0) == QpView(vtep=0, path=0, slot=0, port=32768, packets=3,
                                              bytes=3 * len(frame), moves=0, last_ns=0,
                                              repaired_ns=0, next_psn=2, acked_psn=-1,
                                              ack_wait_ns=0)
    assert view.last_ns > 0


def test_path_and_mac_tables_read_back_as_written(steer):
    tables = QpTables(BccTables(steer=steer.bpf))
    tables.set_mac_vteps({"02:00:00:00:10:02": 3, "00:00:00:00:00:00": 1})
    ports = [33000, 33001]
    hashes = [hash_for_port(p, 32768, 61000) for p in ports]
    tables.write_path(3, 2, ifindex=7, alive=False, ports=ports, hashes=hashes, qps=4)
    set_path(steer, 1, 0, 2, (32768, 60999))
    assert tables.mac_vteps() == {"02:00:00:00:10:02": 3, "00:00:00:00:00:00": 1}
    assert tables.paths() == {
        (3, 2): PathView(7, False, tuple(ports), tuple(hashes), 4),
        (1, 0): PathView(100, True, tuple(path_ports(0, 2, 32768)),
                         tuple(hash_for_port(p, 32768, 60999) for p in path_ports(0, 2, 32768)), 0)}
