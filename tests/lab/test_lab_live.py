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

from qplab import frr, links, netns, status
from qplab.waiting import wait_json, wait_until

CONVERGE_S = 40


def converged(lab_state):
    wait_until(lambda: status.problems(lab_state, status.collect(lab_state)), CONVERGE_S, 0.5,
               "lab convergence")


def host_pairs(state, across_dcs_only=False):
    hosts = {n: v for n, v in state["nodes"].items() if v["role"] == "host"}
    return [(a, b, hosts[b]["address"].split("/")[0]) for a in hosts for b in hosts
            if a != b and (not across_dcs_only or hosts[a]["dc"] != hosts[b]["dc"])]


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


def bfd_down_watcher(ns, ifname):
    """Start capturing BFD on an interface; the returned call gives the (wall
    clock) kernel timestamp of the first control packet announcing State Down."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-Z", "root", "--immediate-mode",
                             "-l", "-tt", "-n", "-i", ifname, "udp", "port", "3784"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = [proc.stderr.readline() for _ in range(2)]
    if not any("listening on" in line for line in banner):
        proc.kill()
        proc.wait()
        raise AssertionError(f"tcpdump did not start: {banner}")

    def first_down(timeout):
        try:
            ex = ThreadPoolExecutor(max_workers=1)
            fut = ex.submit(lambda: next(float(l.split()[0]) for l in proc.stdout if "State Down" in l))
            return fut.result(timeout=timeout)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            ex.shutdown(wait=True)
    return first_down


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
    state, ctx = default_lab["state"], default_lab["ctx"]
    converged(state)
    st = status.collect(state)
    counts = status.summary_counts(state, st)
    # 12 routers, 20 links: 40 sessions x 2 address families, 40 BFD peers,
    # 4 leaves x 3 remote VTEPs
    assert counts == {"bgp_established": 80, "bgp_total": 80, "bfd_up": 40, "bfd_total": 40,
                      "remote_vteps": 12, "remote_vteps_expected": 12}
    # FRR's own JSON, subset-matched (topotest style): a leaf's sessions and VNI
    leaf = state["nodes"]["dc1-leaf1"]
    expected_bgp = {"ipv4Unicast": {"peers": {i["peer_address"]: {"state": "Established"}
                                              for i in leaf["interfaces"]}},
                    "l2VpnEvpn": {"peers": {i["peer_address"]: {"state": "Established"}
                                            for i in leaf["interfaces"]}}}
    wait_json(lambda: frr.vtysh_json(leaf["frr"], "show bgp summary json"), expected_bgp, 10)
    remote = sorted(leaf["vnis"]["100"])
    vni = wait_json(lambda: frr.vtysh_json(leaf["frr"], "show evpn vni detail json"),
                    [{"vni": 100, "vxlanInterface": "vxlan100", "vtepIp": leaf["loopback"]}], 10)
    assert sorted(vni[0]["numRemoteVteps"]) == remote
    # the underlay spreads over every equal path: a DC2 leaf's loopback is
    # reached from a DC1 border over both WAN links
    route = netns.run(["ip", "-n", ctx.ns("dc1-border1"), "route", "show",
                       state["nodes"]["dc2-leaf1"]["loopback"]]).stdout
    assert "dev wan1" in route and "dev wan2" in route


def test_router_sysctls(default_lab):
    """VTEPs hash L4 (policy 1); transit routers hash the outer 5-tuple
    fields (policy 3, 0x37) so a sender's skb hash cannot steer them."""
    ctx = default_lab["ctx"]
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
    converged(default_lab["state"])
    res = qplab_cli(default_lab["ctx"], "status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BGP 80/80 Established, BFD 40/40 up, remote VTEPs 12/12" in res.stdout
    assert res.stdout.rstrip().endswith("converged")


# ---------------------------------------------------------------- data plane

def test_every_host_pings_every_other(default_lab):
    converged(default_lab["state"])
    assert unreachable_pairs(default_lab["ctx"], default_lab["state"]) == []


def test_wan_captures_show_vxlan_with_the_vni(default_lab, tmp_path):
    state, ctx = default_lab["state"], default_lab["ctx"]
    converged(state)
    captures = []
    try:
        for name in state["wans"]:
            pcap = tmp_path / f"{name}.pcap"
            proc = subprocess.Popen(["ip", "netns", "exec", ctx.ns(name), "tcpdump", "-Z", "root", "--immediate-mode", "-i", "a", "-n",
                                     "-U", "-w", str(pcap), "udp", "port", "4789"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            captures.append((proc, pcap))
            assert "listening on" in proc.stderr.readline()
        src, dst = state["nodes"]["dc1-h1"], state["nodes"]["dc2-h1"]
        assert can_ping(ctx, "dc1-h1", dst["address"].split("/")[0], count=5)
    finally:
        for proc, _ in captures:
            proc.terminate()
            proc.wait(timeout=10)
    packets = [p for _, pcap in captures for p in rdpcap(str(pcap))]
    requests = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].haslayer(ICMP)
                and p[VXLAN][ICMP].type == 8 and p[VXLAN][IP].src == src["address"].split("/")[0]]
    assert requests, f"no VXLAN-encapsulated echo request in {len(packets)} captured packets"
    p = requests[0]
    seen = {"outer_src": p[IP].src, "outer_dst": p[IP].dst, "udp_dport": p[UDP].dport,
            "sport_in_vtep_range": 49152 <= p[UDP].sport <= 65535, "vni": p[VXLAN].vni,
            "inner_src_mac": p[VXLAN][Ether].src, "inner_dst_mac": p[VXLAN][Ether].dst,
            "inner_src": p[VXLAN][IP].src, "inner_dst": p[VXLAN][IP].dst}
    assert seen == {"outer_src": state["nodes"]["dc1-leaf1"]["loopback"],
                    "outer_dst": state["nodes"]["dc2-leaf1"]["loopback"], "udp_dport": 4789,
                    "sport_in_vtep_range": True, "vni": 100,
                    "inner_src_mac": src["mac"], "inner_dst_mac": dst["mac"],
                    "inner_src": src["address"].split("/")[0],
                    "inner_dst": dst["address"].split("/")[0]}


def test_wan_one_way_delay_is_the_configured_one(default_lab):
    state, ctx = default_lab["state"], default_lab["ctx"]
    w = state["wans"]["wan-dc1-border1-dc2-border1"]
    rtts = wan_rtts_ms(ctx, w["a"], w["b_address"])
    assert len(rtts) >= 15
    one_way = statistics.median(rtts) / 2
    assert abs(one_way - w["props"]["delay_ms"]) <= 1.0, rtts


def test_qplab_wan_changes_delay_at_run_time(default_lab):
    state, ctx = default_lab["state"], default_lab["ctx"]
    w = state["wans"]["wan-dc1-border2-dc2-border2"]
    try:
        res = qplab_cli(ctx, "wan", w["a"], w["b"], "delay=25")
        assert res.returncode == 0, res.stderr
        assert "delay 25 ms" in res.stdout
        one_way = statistics.median(wan_rtts_ms(ctx, w["a"], w["b_address"])) / 2
        assert abs(one_way - 25) <= 1.0
    finally:
        qplab_cli(ctx, "wan", w["a"], w["b"], "delay=10")
    bad = qplab_cli(ctx, "wan", w["a"], w["b"], "delay=-3")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "qplab: bad WAN setting 'delay=-3': out of range [0, 10000]"


# ---------------------------------------------------------------- failures

def test_blackhole_is_seen_by_bfd_and_traffic_survives(default_lab):
    state, ctx = default_lab["state"], default_lab["ctx"]
    converged(state)
    w = state["wans"]["wan-dc1-border1-dc2-border1"]
    a_frr, b_frr = ctx.ns(w["a"]), ctx.ns(w["b"])
    try:
        # BFD's verdict is timed by the kernel's stamp on the first "State
        # Down" control packet each side sends (vtysh polling on a busy
        # machine would add its own latency to the measurement)
        watchers = [bfd_down_watcher(ctx.ns(node), ifname) for node, ifname in
                    ((w["a"], w["a_if"]), (w["b"], w["b_if"]))]
        t0 = time.time()
        links.act(state, ctx, w["a"], w["b"], "blackhole")
        detected = [watch(timeout=5) - t0 for watch in watchers]
        assert max(detected) <= 0.4, f"BFD took {[round(d * 1000) for d in detected]} ms"
        wait_until(lambda: bfd_status(a_frr, w["b_address"]) == "down"
                   and bfd_status(b_frr, w["a_address"]) == "down", 5, 0.05, "BFD down in FRR")
        # silent: the interfaces stay up
        link = netns.run(["ip", "-n", a_frr, "-br", "link", "show", "dev", w["a_if"]]).stdout
        assert " UP " in link
        # the other three WAN links carry everything
        wait_until(lambda: "dev wan1" not in netns.run(
            ["ip", "-n", a_frr, "route", "show", state["nodes"]["dc2-leaf1"]["loopback"]]).stdout,
            5, 0.05, "route withdrawn from the blackholed link")
        assert unreachable_pairs(ctx, state, across_dcs_only=True) == []
    finally:
        links.act(state, ctx, w["a"], w["b"], "restore")
    wait_until(lambda: bfd_status(a_frr, w["b_address"]) == "up", 10, 0.05, "BFD back up")
    converged(state)


def test_link_down_and_up_through_cli(default_lab):
    state, ctx = default_lab["state"], default_lab["ctx"]
    converged(state)
    leaf = state["nodes"]["dc1-leaf1"]
    spine_ip = leaf["interfaces"][0]["peer_address"]
    res = qplab_cli(ctx, "link", "dc1-leaf1", "dc1-spine1", "down")
    assert res.returncode == 0, res.stderr
    try:
        wait_until(lambda: bfd_status(leaf["frr"], spine_ip) in (None, "down"), 5, 0.05)
        assert unreachable_pairs(ctx, state, across_dcs_only=True) == []
    finally:
        assert qplab_cli(ctx, "link", "dc1-leaf1", "dc1-spine1", "up").returncode == 0
    converged(state)
    bad = qplab_cli(ctx, "link", "dc1-leaf1", "dc2-spine1", "down")
    assert (bad.returncode, bad.stderr.strip()) == (1, "qplab: no link between dc1-leaf1 and dc2-spine1")


# ---------------------------------------------------------------- teardown (last)

def test_down_leaves_nothing(default_lab):
    ctx = default_lab["ctx"]
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
