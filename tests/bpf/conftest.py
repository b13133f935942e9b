"""Compiled data-plane programs and the helpers every BPF test uses."""

import difflib
import os

import pytest
from scapy.all import Ether, hexdump

from qpagent import bpfobj, bpfsys, contract

TC_ACT_OK = 0
TC_ACT_UNSPEC = 0xFFFFFFFF   # -1 as the u32 test_run returns: "next filter, then send"
TC_ACT_REDIRECT = 7
XDP_PASS = 2
TC_MIN_FRAME = 14     # the kernel refuses skb/XDP test runs below ETH_HLEN

# Every map of bpf/include/maps.h.
ALL_MAPS = ("parse_stats", "parse_stats_spill", "qp_table", "mac_vtep", "path_table", "steer_events", "mac_gen",
            "path_health", "repair_config", "repair_events", "probe_events", "qp_reply",
            "reply_events", "qp_ack_frame",
            "pin_events", "pin_uplinks", "flow_table", "clock_cache")

VERDICT_NAMES = {("tc", 0): "TC_ACT_OK", ("tc", TC_ACT_UNSPEC): "TC_ACT_UNSPEC", ("tc", 2): "TC_ACT_SHOT",
                 ("tc", 7): "TC_ACT_REDIRECT", ("xdp", 1): "XDP_DROP",
                 ("xdp", 2): "XDP_PASS"}


class Program:
    """One loaded program of a compiled object, run with BPF_PROG_TEST_RUN."""

    def __init__(self, bpf, name):
        self.bpf = bpf
        self.spec = bpfobj.PROGRAMS[name]
        self.fn = bpfobj.load_function(bpf, self.spec)
        self.kind = "xdp" if self.spec.kind == "xdp" else "tc"

    def run(self, frame, ctx=None):
        data = bytes(frame)
        return bpfsys.prog_test_run(self.fn.fd, data, ctx=ctx)

    def table(self, name):
        return self.bpf[name.encode()]

    def clear_maps(self):
        # BCC only lists the tables already opened, so name them all.
        for name in ALL_MAPS:
            try:
                table = self.bpf[name.encode()]
            except KeyError:
                continue
            table.clear()


def _describe(data):
    try:
        text = Ether(data).show2(dump=True)
    except Exception:       # a cut frame may not decode; bytes still show
        text = ""
    return (text + hexdump(data, dump=True)).splitlines()


def assert_frame(got, want, context=""):
    """Whole-frame comparison with a readable decoded/hex diff."""
    got, want = bytes(got), bytes(want)
    if got == want:
        return
    diff = "\n".join(difflib.unified_diff(_describe(want), _describe(got),
                                          "expected", "got", lineterm=""))
    pytest.fail(f"frame differs {context}\n{diff}")


def expect(prog, frame_in, verdict, frame_out=None, ctx=None, context=""):
    """Packet in; verdict and packet out (default: unchanged) expected."""
    data_in = bytes(frame_in)
    res = prog.run(data_in, ctx=ctx)
    want = VERDICT_NAMES.get((prog.kind, verdict), verdict)
    got = VERDICT_NAMES.get((prog.kind, res.retval), res.retval)
    assert got == want, f"verdict {got}, expected {want} {context}"
    assert_frame(res.data_out, data_in if frame_out is None else bytes(frame_out), context)
    return res


def percpu_sum(values):
    """Sum a BCC per-CPU value (list of ints or of ctypes structs)."""
    return sum(values)


def parse_counts(prog, ifindex, hook):
    """{outcome index: count} summed over CPUs for (ifindex, hook), from the
    parse_stats array slot and the spill hash (each CPU's copy of a slot
    names its owner)."""
    totals = {}
    for name in ("parse_stats", "parse_stats_spill"):
        table = prog.table(name)
        for key in table.keys():
            for leaf in table[key]:
                if (leaf.ifindex, leaf.hook) != (ifindex, hook):
                    continue
                for i, n in enumerate(leaf.outcome):
                    if n:
                        totals[i] = totals.get(i, 0) + n
    return totals


def event_counts(prog, table_name):
    """{event index: count} of a per-CPU event array."""
    table = prog.table(table_name)
    out = {}
    for key in table.keys():
        total = sum(table[key])
        if total:
            out[key.value] = total
    return out


@pytest.fixture(scope="session", autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("BPF test runs need root")


def _compile(source, *cflags):
    return bpfobj.compile_source(source, tuple(cflags))


@pytest.fixture(scope="session")
def steer_obj():
    bpf = _compile("qp_steer.c")
    try:
        yield Program(bpf, "qp_steer")
    finally:
        bpf.cleanup()


@pytest.fixture(scope="session")
def probe_obj(steer_obj):
    """path_probe, loaded from qp_steer's object: the two share its maps."""
    return Program(steer_obj.bpf, "path_probe")


@pytest.fixture(scope="session")
def sent_obj(steer_obj):
    """probe_sent, loaded from qp_steer's object: the two share its maps."""
    return Program(steer_obj.bpf, "probe_sent")


@pytest.fixture(scope="session")
def pin_obj():
    bpf = _compile("path_pin.c")
    try:
        yield Program(bpf, "path_pin")
    finally:
        bpf.cleanup()


@pytest.fixture(scope="session")
def flows_obj():
    bpf = _compile("flow_stats.c")
    try:
        yield Program(bpf, "flow_stats_tc"), Program(bpf, "flow_stats_xdp")
    finally:
        bpf.cleanup()


@pytest.fixture
def steer(steer_obj):
    steer_obj.clear_maps()
    yield steer_obj
    steer_obj.clear_maps()


@pytest.fixture
def probe(probe_obj, steer):
    """path_probe with qp_steer's maps cleared (the `steer` fixture)."""
    yield probe_obj


@pytest.fixture
def sent(sent_obj, steer):
    """probe_sent with qp_steer's maps cleared (the `steer` fixture)."""
    yield sent_obj


@pytest.fixture
def pin(pin_obj):
    pin_obj.clear_maps()
    yield pin_obj
    pin_obj.clear_maps()


@pytest.fixture(params=["qp_steer", "path_pin", "flow_stats_tc", "flow_stats_xdp"])
def program(request):
    """(program, pass verdict, parse hook id) for each of the four programs."""
    hooks = contract.ENUMS["hook_id"]
    hook_of = {name: value for name, value in hooks.members}
    if request.param == "qp_steer":
        return request.getfixturevalue("steer"), TC_ACT_UNSPEC, hook_of["HOOK_QP_STEER"]
    if request.param == "path_pin":
        return request.getfixturevalue("pin"), TC_ACT_UNSPEC, hook_of["HOOK_PATH_PIN"]
    tc, xdp = request.getfixturevalue("flows")
    if request.param == "flow_stats_tc":
        return tc, TC_ACT_UNSPEC, hook_of["HOOK_TC_EGRESS"]
    return xdp, XDP_PASS, hook_of["HOOK_XDP_INGRESS"]


@pytest.fixture
def flows(flows_obj):
    tc, xdp = flows_obj
    tc.clear_maps()
    yield tc, xdp
    tc.clear_maps()
