"""trace_ports: Paris-traceroute probes name every hop a port's packets cross.

A chain with ECMP at two levels, built of real namespaces:

    vtepA ==(2 uplinks)==> r1, r2 ==(each 2 links)==> r3a, r3b --> vtepB

Every router hashes the outer 5-tuple (fib_multipath_hash_policy=1) and
answers from the address of the link the probe came in on. The expected
trace of a port is what each router's own FIB says for that flow
(`ip route get ... ipproto udp sport N dport 4789`, with `iif` on routers).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid

import pytest

from qpagent import netnsutil
from qpagent.probe import (SILENT_HOP, ProbeError, parse_icmp_error, ports_by_path, probe_payload,
                           trace_ports, udp_length)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")]

LOCAL, REMOTE = "10.0.0.1", "10.0.0.2"
PORTS = list(range(50000, 50064))
ROUTER_SYSCTLS = ("net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 "
                  "net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_errors_use_inbound_ifaddr=1")

# (namespace a, interface in a, address in a), (namespace b, interface, address), /30
LINKS = [
    (("a", "u1", "10.1.1.1"), ("r1", "d1", "10.1.1.2")),
    (("a", "u2", "10.1.2.1"), ("r2", "d1", "10.1.2.2")),
    (("r1", "ua", "10.2.11.1"), ("r3a", "d1", "10.2.11.2")),
    (("r1", "ub", "10.2.12.1"), ("r3b", "d1", "10.2.12.2")),
    (("r2", "ua", "10.2.21.1"), ("r3a", "d2", "10.2.21.2")),
    (("r2", "ub", "10.2.22.1"), ("r3b", "d2", "10.2.22.2")),
    (("r3a", "ub", "10.3.1.1"), ("b", "d1", "10.3.1.2")),
    (("r3b", "ub", "10.3.2.1"), ("b", "d2", "10.3.2.2")),
]
ROUTES = {
    "a": [f"{REMOTE}/32 nexthop via 10.1.1.2 nexthop via 10.1.2.2"],
    "r1": [f"{REMOTE}/32 nexthop via 10.2.11.2 nexthop via 10.2.12.2", f"{LOCAL}/32 via 10.1.1.1"],
    "r2": [f"{REMOTE}/32 nexthop via 10.2.21.2 nexthop via 10.2.22.2", f"{LOCAL}/32 via 10.1.2.1"],
    "r3a": [f"{REMOTE}/32 via 10.3.1.2", f"{LOCAL}/32 nexthop via 10.2.11.1 nexthop via 10.2.21.1"],
    "r3b": [f"{REMOTE}/32 via 10.3.2.2", f"{LOCAL}/32 nexthop via 10.2.12.1 nexthop via 10.2.22.1"],
    "b": [f"{LOCAL}/32 nexthop via 10.3.1.1 nexthop via 10.3.2.1"],
}
# Which router owns a hop address, and by which interface the probe came in.
HOP_OWNER = {b[2]: (b[0], b[1]) for _, b in LINKS}


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"command failed ({done.returncode}): {cmd}\n{done.stderr}")
    return done


@contextlib.contextmanager
def chain():
    """The namespaces above, as {role: namespace name}; all removed on exit."""
    tag = uuid.uuid4().hex[:6]
    ns = {role: f"qt8-{tag}-{role}" for role in ROUTES}
    try:
        for name in ns.values():
            sh(f"ip netns add {name} && ip -n {name} link set lo up")
        for (na, ia, aa), (nb, ib, ab) in LINKS:
            sh(f"ip -n {ns[na]} link add {ia} type veth peer name {ib} netns {ns[nb]}")
            sh(f"ip -n {ns[na]} addr add {aa}/30 dev {ia} && ip -n {ns[na]} link set {ia} up")
            sh(f"ip -n {ns[nb]} addr add {ab}/30 dev {ib} && ip -n {ns[nb]} link set {ib} up")
        sh(f"ip -n {ns['a']} addr add {LOCAL}/32 dev lo && ip -n {ns['b']} addr add {REMOTE}/32 dev lo")
        for seed, (role, name) in enumerate(ns.items(), start=1):
            # Own hash seed per router, as real fabrics do: with one shared seed
            # every tier makes the same choice and r1 only ever uses r3a (polarisation).
            sh(f"ip netns exec {name} sysctl -qw {ROUTER_SYSCTLS} "
               f"net.ipv4.fib_multipath_hash_seed={seed * 7919}")
            for route in ROUTES[role]:
                sh(f"ip -n {name} route add {route}")
        # The far VTEP listens on 4789 and drops the probes' unknown VNI silently.
        sh(f"ip -n {ns['b']} link add vx0 type vxlan id 100 local {REMOTE} dstport 4789 "
           f"&& ip -n {ns['b']} link set vx0 up")
        yield ns
    finally:
        for name in ns.values():
            sh(f"ip netns del {name}", check=False)


@pytest.fixture(scope="module")
def lab():
    with chain() as ns:
        yield ns


def _gateways(ns: str, queries: list[str]) -> list[str]:
    """`ip route get` for each query (one `ip -batch`), the `via` of each answer."""
    out = subprocess.run(["ip", "-n", ns, "-batch", "-"],
                         input="".join(f"route get {q}\n" for q in queries),
                         capture_output=True, text=True, check=True).stdout
    answers = [line.split() for line in out.splitlines() if line.strip() and not line[0].isspace()]
    assert len(answers) == len(queries), out
    return [words[words.index("via") + 1] for words in answers]


def fib_traces(ns: dict, ports: list[int]) -> dict[int, tuple[str, ...]]:
    """The hops each router's own FIB picks for each port: the expected traces."""
    flow = f"from {LOCAL} ipproto udp sport {{}} dport 4789"
    hop1 = dict(zip(ports, _gateways(ns["a"], [f"{REMOTE} {flow.format(p)}" for p in ports])))
    traces = {}
    for router, iif in {HOP_OWNER[h] for h in hop1.values()}:
        mine = [p for p in ports if HOP_OWNER[hop1[p]] == (router, iif)]
        queries = [f"{REMOTE} {flow.format(p)} iif {iif}" for p in mine]
        for port, hop2 in zip(mine, _gateways(ns[router], queries)):
            traces[port] = (hop1[port], hop2)
    return {port: traces[port] for port in ports}


def test_every_trace_is_the_path_each_routers_fib_picks(lab):
    traces = trace_ports(LOCAL, REMOTE, PORTS, max_ttl=6, netns=lab["a"])
    expected = fib_traces(lab, PORTS)
    assert dict(traces) == expected
    assert traces.skipped == {}
    # Both levels of ECMP really spread the ports: all four r1/r2 -> r3 links are used.
    assert {hops[1] for hops in traces.values()} == {"10.2.11.2", "10.2.12.2",
                                                     "10.2.21.2", "10.2.22.2"}
    assert sorted(ports_by_path(traces)) == sorted(set(expected.values()))


def test_traces_are_repeatable(lab):
    first = trace_ports(LOCAL, REMOTE, PORTS[:32], max_ttl=4, netns=lab["a"])
    again = trace_ports(LOCAL, REMOTE, PORTS[:32], max_ttl=4, netns=lab["a"])
    assert dict(again) == dict(first)
    assert all(len(hops) == 2 for hops in first.values())


def test_128_ports_by_6_ttls_finish_well_under_a_second(lab):
    ports = list(range(51000, 51128))
    traces = trace_ports(LOCAL, REMOTE, ports, max_ttl=6, netns=lab["a"])
    print(f"\n128 ports x 6 TTLs: {traces.elapsed_s * 1000:.0f} ms, "
          f"{traces.probes_sent} probes sent")
    # Routers answer only 50 time-exceeded in a burst: the retry rounds fill the rest.
    assert {p: len(h) for p, h in traces.items()} == {p: 2 for p in ports}
    assert SILENT_HOP not in {hop for hops in traces.values() for hop in hops}
    assert traces.elapsed_s < 1.0


def test_a_remote_that_answers_ends_the_trace_early(lab):
    # Without a VXLAN listener the remote sends port unreachable: the end is known.
    sh(f"ip -n {lab['b']} link set vx0 down")
    try:
        traces = trace_ports(LOCAL, REMOTE, PORTS[:16], max_ttl=4, timeout_s=2.0,
                             netns=lab["a"])
    finally:
        sh(f"ip -n {lab['b']} link set vx0 up")
    assert traces.reached == set(PORTS[:16])
    assert dict(traces) == fib_traces(lab, PORTS[:16])
    assert traces.elapsed_s < 1.0


def test_a_known_depth_ends_the_trace_once_every_hop_answered(lab):
    # The remote VTEP sends nothing (its VXLAN device takes the probe), so
    # without a known depth a round waits out timeout_s for silence past it.
    traces = trace_ports(LOCAL, REMOTE, PORTS[:32], timeout_s=5.0, expect_depth=2,
                         netns=lab["a"])
    assert dict(traces) == fib_traces(lab, PORTS[:32])
    assert traces.elapsed_s < 2.5, "the round waited for the timeout"


def test_silent_routers_give_short_then_empty_traces(lab):
    ports = PORTS[:16]
    # Take away the routers' way back: their time-exceeded can no longer reach us.
    back = {role: [r for r in ROUTES[role] if r.startswith(LOCAL)] for role in ("r3a", "r3b")}
    first = {role: [r for r in ROUTES[role] if r.startswith(LOCAL)] for role in ("r1", "r2")}
    try:
        for role, routes in back.items():
            sh(f"ip -n {lab[role]} route del {LOCAL}/32")
        short = trace_ports(LOCAL, REMOTE, ports, max_ttl=4, timeout_s=0.2, netns=lab["a"])
        for role in first:
            sh(f"ip -n {lab[role]} route del {LOCAL}/32")
        empty = trace_ports(LOCAL, REMOTE, ports, max_ttl=4, timeout_s=0.2, netns=lab["a"])
    finally:
        for role, routes in {**back, **first}.items():
            for route in routes:
                sh(f"ip -n {lab[role]} route replace {route}")
    assert dict(short) == {port: hops[:1] for port, hops in fib_traces(lab, ports).items()}
    assert dict(empty) == {port: () for port in ports}


def test_a_port_in_use_is_skipped_and_said_so(lab):
    with netnsutil.enter(lab["a"]):
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.bind((LOCAL, PORTS[0]))
        traces = trace_ports(LOCAL, REMOTE, PORTS[:2], max_ttl=3, netns=lab["a"])
    finally:
        holder.close()
    assert list(traces) == [PORTS[1]]
    assert list(traces.skipped) == [PORTS[0]]
    assert f"cannot bind {LOCAL}:{PORTS[0]}" in traces.skipped[PORTS[0]]


def _icmp_error(icmp_type: int, quoted) -> bytes:
    from scapy.layers.inet import ICMP, IP
    return bytes(IP(src="10.2.11.2", dst=LOCAL) / ICMP(type=icmp_type, code=0) / quoted)


def test_parse_icmp_error_reads_the_quoted_udp_header():
    from scapy.layers.inet import IP, TCP, UDP
    probe = IP(src=LOCAL, dst=REMOTE, ttl=1) / UDP(sport=50000, dport=4789) / probe_payload(3)
    # Only the first 8 bytes after the quoted IP header are promised (RFC 792).
    cases = {
        "time exceeded, whole probe quoted": _icmp_error(11, probe),
        "time exceeded, 8 bytes quoted": _icmp_error(11, bytes(probe)[:28]),
        "port unreachable": _icmp_error(3, probe),
        "quoted TCP": _icmp_error(11, IP(src=LOCAL, dst=REMOTE) / TCP(sport=50000, dport=4789)),
        "echo reply": _icmp_error(0, b"12345678"),
        "truncated quote": _icmp_error(11, bytes(probe)[:26]),
    }
    got = {name: parse_icmp_error(packet) for name, packet in cases.items()}
    assert got == {
        "time exceeded, whole probe quoted": ("10.2.11.2", 11, LOCAL, REMOTE, 50000, 4789, udp_length(3)),
        "time exceeded, 8 bytes quoted": ("10.2.11.2", 11, LOCAL, REMOTE, 50000, 4789, udp_length(3)),
        "port unreachable": ("10.2.11.2", 3, LOCAL, REMOTE, 50000, 4789, udp_length(3)),
        "quoted TCP": None,
        "echo reply": None,
        "truncated quote": None,
    }


def test_probe_payload_is_vxlan_with_an_unused_vni():
    from scapy.layers.vxlan import VXLAN
    header = VXLAN(probe_payload(5)[:8])
    assert (header.flags, header.vni, len(probe_payload(5))) == (0x08, 0xFFFFFF, 8 + 5)


@pytest.mark.parametrize("args, message", [
    (("10.0.0.x", REMOTE, PORTS), "local address is not an IP address: '10.0.0.x'"),
    ((LOCAL, "fe80::1", PORTS), "remote address must be IPv4"),
    ((LOCAL, REMOTE, [0]), "source port must be an integer in 1..65535: 0"),
    ((LOCAL, REMOTE, [70000]), "source port must be an integer in 1..65535: 70000"),
    ((LOCAL, REMOTE, ["x"]), "source port must be an integer in 1..65535: 'x'"),
    ((LOCAL, REMOTE, 50000), "ports must be a collection of integers: 50000"),
    (("10.7.7.7", REMOTE, PORTS), "10.7.7.7 is not an address of this host"),
    ((LOCAL, "10.99.0.1", PORTS), "cannot probe 10.99.0.1 from 10.0.0.1: no route"),
])
def test_bad_input_gets_a_clear_message(lab, args, message):
    with pytest.raises(ProbeError) as caught:
        trace_ports(*args, max_ttl=2, timeout_s=0.05, netns=lab["a"])
    assert message in str(caught.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"dport": "4789"}, "destination port must be an integer in 1..65535: '4789'"),
    ({"max_ttl": 0}, "max_ttl must be an integer in 1..64: 0"),
    ({"timeout_s": -1}, "timeout_s must be a positive number of seconds: -1"),
    ({"expect_depth": -1}, "expect_depth must be an integer in 0..63: -1"),
])
def test_bad_options_get_a_clear_message(kwargs, message):
    with pytest.raises(ProbeError) as caught:
        trace_ports(LOCAL, REMOTE, PORTS, **kwargs)
    assert str(caught.value) == message


def test_unknown_namespace_is_a_clear_message():
    with pytest.raises(ProbeError, match="no such network namespace: qt8-absent"):
        trace_ports(LOCAL, REMOTE, PORTS, netns="qt8-absent")


def test_without_cap_net_raw_says_what_is_needed(lab):
    code = ("from qpagent.probe import trace_ports, ProbeError\n"
            "try:\n"
            f"    trace_ports({LOCAL!r}, {REMOTE!r}, [50000])\n"
            "except ProbeError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run(
        ["ip", "netns", "exec", lab["a"], "setpriv", "--inh-caps=-net_raw",
         "--bounding-set=-net_raw", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30)
    assert (done.stdout.strip(), done.stderr) == \
        ("probing needs root or CAP_NET_RAW (raw ICMP socket)", "")
