"""The default two-DC lab, live: real namespaces, real FRR, real delay lines.

One lab for the whole module (built by the `default_lab` fixture). Every wait
is a retried JSON match or condition with a deadline, never a fixed sleep.
"""
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scapy.all import ICMP, IP, UDP, Ether, rdpcap
from scapy.layers.vxlan import VXLAN

from bfd_capture import bfd_down_watcher
from qplab import frr, netns, status
from qplab.state import LabState
from qplab.waiting import wait_json, wait_until

CONVERGE_S = 40


def converged(lab):
    lab.wait_converged(CONVERGE_S)


def host_pairs(state: LabState, across_dcs_only=False):
    hosts = state.hosts
    return [(a, b, hosts[b].ip) for a in hosts for b in hosts
            if a != b and (not across_dcs_only or hosts[a].dc != hosts[b].dc)]


def can_ping(ctx, src, dst_ip, count=3) -> bool:
    res = netns.run(["ip", "netns", "exec", ctx.ns(src), "ping", "-c", str(count), "-i", "0.2",
                     "-W", "1", "-w", "5", dst_ip], check=False, timeout=15)
    return " 0 received" not in res.stdout and res.returncode == 0


def unreachable_pairs(ctx, state, across_dcs_only=False) -> list[str]:
    pairs = host_pairs(state, across_dcs_only)
    with ThreadPoolExecutor(max_workers=8) as ex:
        ok = list(ex.map(lambda p: can_ping(ctx, p[0], p[2]), pairs))
    return [f"{a} -> {b} ({ip})" for (a, b, ip), good in zip(pairs, ok) if not good]


def bfd_status(frr_name, peer):
    for p in frr.vtysh_json(frr_name, "show bfd peers json"):
        if p["peer"] == peer:
            return p["status"]
    return None


def qplab_cli(ctx, *args):
    env = dict(os.environ, QPLAB_PREFIX=ctx.prefix, QPLAB_RUN_DIR=str(ctx.run_dir))
    return subprocess.run([sys.executable, "-m", "qplab.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def wan_rtts_ms(ctx, a, peer_ip, count=20) -> list[float]:
    res = netns.run(["ip", "netns", "exec", ctx.ns(a), "ping", "-c", str(count), "-i", "0.05",
                     "-W", "1", peer_ip], check=False, timeout=30)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", res.stdout)]


# ---------------------------------------------------------------- convergence

def test_default_lab_converges(default_lab):
    state, ctx = default_lab.state, default_lab.ctx
    converged(default_lab)
    st = status.collect(state)
    counts = status.summary_counts(state, st)
    # 12 routers, 20 links: 40 sessions x 2 address families, 40 BFD peers,
    # 4 leaves x 3 remote VTEPs
    assert counts == {"bgp_established": 80, "bgp_total": 80, "bfd_up": 40, "bfd_total": 40,
                      "remote_vteps": 12, "remote_vteps_expected": 12}
    # FRR's own JSON, subset-matched (topotest style): a leaf's sessions and VNI
    leaf = state.routers["dc1-leaf1"]
    expected_bgp = {"ipv4Unicast": {"peers": {i.peer_address: {"state": "Established"}
                                              for i in leaf.interfaces}},
                    "l2VpnEvpn": {"peers": {i.peer_address: {"state": "Established"}
                                            for i in leaf.interfaces}}}
    wait_json(lambda: frr.vtysh_json(leaf.ns, "show bgp summary json"), expected_bgp, 10)
    remote = sorted(leaf.vnis["100"])
    vni = wait_json(lambda: frr.vtysh_json(leaf.ns, "show evpn vni detail json"),
                    [{"vni": 100, "vxlanInterface": "vxlan100", "vtepIp": leaf.loopback}], 10)
    assert sorted(vni[0]["numRemoteVteps"]) == remote
    # the underlay spreads over every equal path: a DC2 leaf's loopback is
    # reached from a DC1 border over both WAN links
    route = netns.run(["ip", "-n", ctx.ns("dc1-border1"), "route", "show",
                       state.routers["dc2-leaf1"].loopback]).stdout
    assert "dev wan1" in route and "dev wan2" in route


def test_router_sysctls(default_lab):
    """VTEPs hash L4 (policy 1); transit routers hash the outer 5-tuple
    fields (policy 3, 0x37) so a sender's skb hash cannot steer them."""
    ctx = default_lab.ctx
    for node, policy in (("dc1-leaf1", "1"), ("dc2-spine2", "3"), ("dc1-border2", "3")):
        out = netns.ns_exec(ctx.ns(node), ["sysctl", "-n", "net.ipv4.fib_multipath_hash_policy",
                                           "net.ipv4.icmp_ratelimit", "net.ipv4.ip_forward"]).stdout
        assert out.split() == [policy, "0", "1"], node
    fields = netns.ns_exec(ctx.ns("dc2-spine2"), ["sysctl", "-n",
                                                  "net.ipv4.fib_multipath_hash_fields"]).stdout
    assert fields.strip() in ("0x0037", "55")
    seeds = {netns.ns_exec(ctx.ns(n), ["sysctl", "-n", "net.ipv4.fib_multipath_hash_seed"]).stdout
             for n in ("dc1-spine1", "dc1-spine2", "dc1-border1")}
    assert len(seeds) == 3, "every router hashes with a seed of its own"


def test_qplab_status_cli(default_lab):
    converged(default_lab)
    res = qplab_cli(default_lab.ctx, "status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BGP 80/80 Established, BFD 40/40 up, remote VTEPs 12/12" in res.stdout
    assert res.stdout.rstrip().endswith("converged")


# ---------------------------------------------------------------- data plane

def test_every_host_pings_every_other(default_lab):
    converged(default_lab)
    assert unreachable_pairs(default_lab.ctx, default_lab.state) == []


def test_wan_captures_show_vxlan_with_the_vni(default_lab, tmp_path):
    state, ctx = default_lab.state, default_lab.ctx
    converged(default_lab)
    captures = []
    try:
        for name in state.wans:
            pcap = tmp_path / f"{name}.pcap"
            proc = subprocess.Popen(["ip", "netns", "exec", ctx.ns(name), "tcpdump", "-Z", "root", "--immediate-mode", "-i", "a", "-n",
                                     "-U", "-w", str(pcap), "udp", "port", "4789"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            captures.append((proc, pcap))
            assert "listening on" in proc.stderr.readline()
        src, dst = state.hosts["dc1-h1"], state.hosts["dc2-h1"]
        assert can_ping(ctx, "dc1-h1", dst.ip, count=5)
    finally:
        for proc, _ in captures:
            proc.terminate()
            proc.wait(timeout=10)
    packets = [p for _, pcap in captures for p in rdpcap(str(pcap))]
    requests = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].haslayer(ICMP)
                and p[VXLAN][ICMP].type == 8 and p[VXLAN][IP].src == src.ip]
    assert requests, f"no VXLAN-encapsulated echo request in {len(packets)} captured packets"
    p = requests[0]
    seen = {"outer_src": p[IP].src, "outer_dst": p[IP].dst, "udp_dport": p[UDP].dport,
            "sport_in_vtep_range": 49152 <= p[UDP].sport <= 65535, "vni": p[VXLAN].vni,
            "inner_src_mac": p[VXLAN][Ether].src, "inner_dst_mac": p[VXLAN][Ether].dst,
            "inner_src": p[VXLAN][IP].src, "inner_dst": p[VXLAN][IP].dst}
    assert seen == {"outer_src": state.routers["dc1-leaf1"].loopback,
                    "outer_dst": state.routers["dc2-leaf1"].loopback, "udp_dport": 4789,
                    "sport_in_vtep_range": True, "vni": 100,
                    "inner_src_mac": src.mac, "inner_dst_mac": dst.mac,
                    "inner_src": src.ip, "inner_dst": dst.ip}


def one_way_ms(ctx, w) -> list[float]:
    rtts = wan_rtts_ms(ctx, w.a, w.b_address)
    assert len(rtts) >= 15, rtts
    return [r / 2 for r in rtts]


def assert_delay_is(one_way: list[float], delay_ms: float) -> None:
    """The delay line holds every frame its delay and never releases one
    early; a loaded machine only adds to it (the precision is a benchmark
    figure: `make bench-lab`, delay_error_p99_ms)."""
    assert min(one_way) >= delay_ms - 0.5, one_way
    assert statistics.median(one_way) < delay_ms * 1.5 + 2, one_way


def test_wan_one_way_delay_is_the_configured_one(default_lab):
    w = default_lab.state.wans["wan-dc1-border1-dc2-border1"]
    assert_delay_is(one_way_ms(default_lab.ctx, w), w.props.delay_ms)


def test_qplab_wan_changes_delay_at_run_time(default_lab):
    ctx = default_lab.ctx
    w = default_lab.state.wans["wan-dc1-border2-dc2-border2"]
    try:
        res = qplab_cli(ctx, "wan", w.a, w.b, "delay=25")
        assert res.returncode == 0, res.stderr
        assert "delay 25 ms" in res.stdout
        assert LabState.load(ctx).wans[w.name].props.delay_ms == 25.0
        assert_delay_is(one_way_ms(ctx, w), 25.0)
    finally:
        qplab_cli(ctx, "wan", w.a, w.b, "delay=10")
    bad = qplab_cli(ctx, "wan", w.a, w.b, "delay=-3")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "qplab: bad WAN setting 'delay=-3': out of range [0, 10000]"


# ---------------------------------------------------------------- failures

def route_via(ns: str, dst: str) -> str:
    return netns.run(["ip", "-n", ns, "route", "show", dst]).stdout


def test_blackhole_is_seen_by_bfd_and_traffic_survives(default_lab):
    """A silent cut: both ends' BFD declare it down (how fast is a benchmark
    figure, `make bench-lab`), BGP withdraws its routes, and the other WAN
    links carry every host pair across the DCs."""
    state, ctx = default_lab.state, default_lab.ctx
    converged(default_lab)
    w = state.wans["wan-dc1-border1-dc2-border1"]
    a_ns, b_ns = ctx.ns(w.a), ctx.ns(w.b)
    far_leaf = state.routers["dc2-leaf1"].loopback
    assert f"dev {w.a_if}" in route_via(a_ns, far_leaf)
    try:
        watchers = [bfd_down_watcher(ctx.ns(node), ifname) for node, ifname in
                    ((w.a, w.a_if), (w.b, w.b_if))]
        t0 = time.time()
        default_lab.cut(w.name)
        assert LabState.load(ctx).wans[w.name].blackhole
        # each end sends State Down, and only after the cut
        assert all(watch(timeout=10) > t0 for watch in watchers)
        wait_until(lambda: bfd_status(a_ns, w.b_address) == "down"
                   and bfd_status(b_ns, w.a_address) == "down", 10, 0.05, "BFD down in FRR")
        # silent: the interfaces stay up
        link = netns.run(["ip", "-n", a_ns, "-br", "link", "show", "dev", w.a_if]).stdout
        assert " UP " in link
        # the other three WAN links carry everything
        wait_until(lambda: f"dev {w.a_if}" not in route_via(a_ns, far_leaf), 10, 0.05,
                   "route withdrawn from the blackholed link")
        assert unreachable_pairs(ctx, state, across_dcs_only=True) == []
    finally:
        default_lab.restore(w.name)
    assert not LabState.load(ctx).wans[w.name].blackhole
    wait_until(lambda: bfd_status(a_ns, w.b_address) == "up", 20, 0.05, "BFD back up")
    converged(default_lab)


def test_link_down_and_up_through_cli(default_lab):
    state, ctx = default_lab.state, default_lab.ctx
    converged(default_lab)
    leaf = state.routers["dc1-leaf1"]
    spine_ip = leaf.interfaces[0].peer_address
    res = qplab_cli(ctx, "link", "dc1-leaf1", "dc1-spine1", "down")
    assert res.returncode == 0, res.stderr
    try:
        assert LabState.load(ctx).links_down == [["dc1-leaf1", "dc1-spine1"]]
        wait_until(lambda: bfd_status(leaf.ns, spine_ip) in (None, "down"), 5, 0.05)
        assert unreachable_pairs(ctx, state, across_dcs_only=True) == []
    finally:
        assert qplab_cli(ctx, "link", "dc1-leaf1", "dc1-spine1", "up").returncode == 0
    assert LabState.load(ctx).links_down == []
    converged(default_lab)
    bad = qplab_cli(ctx, "link", "dc1-leaf1", "dc2-spine1", "down")
    assert (bad.returncode, bad.stderr.strip()) == (1, "qplab: no link between dc1-leaf1 and dc2-spine1")


# ---------------------------------------------------------------- teardown (last)

def test_down_leaves_nothing(default_lab):
    ctx = default_lab.ctx
    pids = [p for ns in netns.list_namespaces(ctx.prefix) for p in netns.namespace_pids(ns)]
    assert pids, "the lab should be running before down"
    res = qplab_cli(ctx, "down")
    assert res.returncode == 0, res.stderr
    assert netns.list_namespaces(ctx.prefix) == []
    assert netns.root_links(ctx.prefix) == []
    assert [p for p in pids if Path(f"/proc/{p}").exists()
            and "Z" not in Path(f"/proc/{p}/stat").read_text().split(") ", 1)[1][:1]] == []
    assert sorted(Path("/etc/frr").glob(f"{ctx.prefix}*")) == []
    assert sorted(Path("/var/run/frr").glob(f"{ctx.prefix}*")) == []
    assert sorted(Path("/run/qpagent").glob(f"{ctx.prefix}*")) == []
    assert not ctx.run_dir.exists()
    again = qplab_cli(ctx, "down")
    assert again.returncode == 0
    assert "down: 0 namespaces, 0 processes, 0 root links" in again.stdout
