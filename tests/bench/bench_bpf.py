"""Data-plane cost per packet, measured in the kernel with BPF_PROG_TEST_RUN.

Each program runs `repeat` times per call on one frame (the kernel reports
the mean per run) in several calls, beside a program of the same type that
only returns its verdict, measured in the same run; the difference is what
the program adds. qp_steer runs in its steady state (a QP already placed,
its paths armed for liveness and answering, retransmission repair on: the
frame repeats its PSN, so every run takes the resend check and stays within
the hold-down, the dearest steady state); path_probe passes data arriving
on an uplink and answers a probe request; probe_sent passes data leaving
an uplink and notes a request;
path_pin runs in a throw-away namespace with two uplinks and an ECMP route,
on a port the FIB keeps on its uplink and on one it moves.

    python tests/bench/bench_bpf.py [--repeat N] [--runs N]
Prints JSON.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "agent"))
sys.path.insert(0, str(REPO / "tests" / "bpf"))

from qpagent import bpfobj, bpfsys  # noqa: E402
from qt1_maps import set_path, set_vtep  # noqa: E402
from qt1_packets import probe_frame, probe_msg, roce, vxlan  # noqa: E402
from qpagent.contract import CONSTANTS, MAX_PATHS  # noqa: E402

PASS_ONLY = b"""
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
int pass_tc(struct __sk_buff *skb) { return TC_ACT_OK; }
int pass_xdp(struct xdp_md *ctx) { return XDP_PASS; }
/* One helper call / one hash-map lookup and nothing else: the floor that
 * every call in a program adds on this kernel (mitigations included). */
BPF_TABLE("hash", __u32, __u64, one_entry, 1);
int clock_only(struct __sk_buff *skb) { return bpf_ktime_get_ns() == 1; }
int coarse_clock_only(struct __sk_buff *skb) { return bpf_ktime_get_coarse_ns() == 1; }
/* The clock the programs use per packet (bpf/include/clock.h): an inlined
 * jiffies load and per-CPU array lookup, a clock read once a tick. */
struct tick { __u64 jiffies, ns; };
BPF_TABLE("percpu_array", __u32, struct tick, tick_cache, 1);
int tick_clock_only(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct tick *t = tick_cache.lookup(&k);
	__u64 j = bpf_jiffies64();

	if (!t)
		return TC_ACT_OK;
	if (t->jiffies != j) {
		t->jiffies = j;
		t->ns = bpf_ktime_get_ns();
	}
	return t->ns == 1;
}
int lookup_only(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = one_entry.lookup(&k);
	return v ? TC_ACT_OK : TC_ACT_OK;
}
"""
CLONE_NEWNET = 0x40000000


def median_ns(fd, frame, repeat, runs, ctx=None):
    samples = [bpfsys.prog_test_run(fd, frame, repeat=repeat, ctx=ctx).duration_ns
               for _ in range(runs)]
    return statistics.median(samples)


def in_netns(name, fn):
    box = {}

    def body():
        try:
            fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["r"] = fn()
        except BaseException as exc:
            box["e"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


def make_underlay():
    """Namespace with uplinks up1/up2 and an ECMP route to 10.255.0.2."""
    ns = f"qt1-bench-{uuid.uuid4().hex[:6]}"
    cmds = [
        ["ip", "netns", "add", ns],
        ["ip", "-n", ns, "addr", "add", "10.255.0.1/32", "dev", "lo"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ]
    for i in (1, 2):
        cmds += [
            ["ip", "-n", ns, "link", "add", f"up{i}", "type", "veth", "peer", "name", f"up{i}p"],
            ["ip", "-n", ns, "addr", "add", f"10.1.{i}.1/30", "dev", f"up{i}"],
            ["ip", "-n", ns, "link", "set", f"up{i}", "up"],
            ["ip", "-n", ns, "link", "set", f"up{i}p", "up"],
            ["ip", "-n", ns, "neigh", "replace", f"10.1.{i}.2", "lladdr",
             f"02:00:00:00:1{i}:02", "dev", f"up{i}", "nud", "permanent"],
        ]
    cmds += [
        ["ip", "-n", ns, "route", "add", "10.255.0.2/32", "nexthop", "via", "10.1.1.2",
         "dev", "up1", "nexthop", "via", "10.1.2.2", "dev", "up2"],
        ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"],
        ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        raise
    return ns


def uplink_for(ns, sport):
    out = subprocess.run(["ip", "-n", ns, "-j", "route", "get", "10.255.0.2", "from",
                          "10.255.0.1", "ipproto", "udp", "sport", str(sport),
                          "dport", "4789"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)[0]["dev"]


def ifindex(ns, dev):
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)[0]["ifindex"]


class Loaded:
    def __init__(self, bpf, name):
        self.bpf = bpf
        self.fd = bpfobj.load_function(bpf, bpfobj.PROGRAMS[name]).fd

    def table(self, name):
        return self.bpf[name.encode()]


def arm_liveness_and_repair(steer):
    """Every path checked and answering; a resend would move a QP, but not
    within the (long) hold-down. Skipped for programs without these maps."""
    import time
    try:
        health, config = steer.table("path_health"), steer.table("repair_config")
    except KeyError:
        return
    for p in range(MAX_PATHS):
        key = health.Key(p)
        leaf = health[key]
        leaf.deadline_ns, leaf.last_reply_ns = 3_600_000_000_000, time.monotonic_ns()
        health[key] = leaf
    leaf = config.Leaf()
    leaf.retransmit, leaf.holddown_ns = 1, 3_600_000_000_000
    leaf.believe_until_ns = 2**63          # the prober running: health is checked
    config[config.Key(0)] = leaf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_bpf needs root (BPF_PROG_TEST_RUN)")
    if args.repeat < 1 or args.runs < 1:
        sys.exit("--repeat and --runs must be at least 1")

    from bcc import BPF
    base = BPF(text=PASS_ONLY)
    pass_tc = base.load_func(b"pass_tc", BPF.SCHED_CLS).fd
    pass_xdp = base.load_func(b"pass_xdp", BPF.XDP).fd
    clock_only = base.load_func(b"clock_only", BPF.SCHED_CLS).fd
    coarse_clock_only = base.load_func(b"coarse_clock_only", BPF.SCHED_CLS).fd
    tick_clock_only = base.load_func(b"tick_clock_only", BPF.SCHED_CLS).fd
    lookup_only = base.load_func(b"lookup_only", BPF.SCHED_CLS).fd
    base[b"one_entry"][base[b"one_entry"].Key(0)] = base[b"one_entry"].Leaf(1)
    steer_bpf = bpfobj.compile_source("qp_steer.c")
    flows_bpf = bpfobj.compile_source("flow_stats.c")
    pin_bpf = bpfobj.compile_source("path_pin.c")
    steer = Loaded(steer_bpf, "qp_steer")
    flows_tc = Loaded(flows_bpf, "flow_stats_tc")
    flows_xdp = Loaded(flows_bpf, "flow_stats_xdp")
    pin = Loaded(pin_bpf, "path_pin")

    inner = bytes(roce(0x123456, payload=1024))
    outer = vxlan(roce(0x123456, payload=1024), sport=50000)
    set_vtep(steer, None, 0)
    for p in range(4):
        set_path(steer, 0, p, 4, (32768, 60999))
    arm_liveness_and_repair(steer)
    bpfsys.prog_test_run(steer.fd, inner)          # place the QP: steady state after
    r, n = args.repeat, args.runs
    results = {}

    def measure(name, fd, base_fd, frame, ctx=None):
        # Interleave program and baseline so drift hits both alike.
        prog_ns, base_ns = [], []
        for _ in range(n):
            base_ns.append(median_ns(base_fd, frame, r, 1, ctx))
            prog_ns.append(median_ns(fd, frame, r, 1, ctx))
        p, b = statistics.median(prog_ns), statistics.median(base_ns)
        results[name] = {"ns_per_packet": p, "pass_only_ns": b,
                         "above_pass_only_ns": round(p - b, 1),
                         "samples_ns": prog_ns, "pass_only_samples_ns": base_ns}

    # What a single call costs here: qp_steer's steady state makes three
    # (parse counter, QP, set_hash), flow_stats two (parse counter, flow);
    # neither reads the clock per packet but once a tick (tick clock).
    measure("one_bpf_ktime_get_ns_call", clock_only, pass_tc, inner)
    measure("one_bpf_ktime_get_coarse_ns_call", coarse_clock_only, pass_tc, inner)
    measure("tick_clock", tick_clock_only, pass_tc, inner)
    measure("one_hash_lookup", lookup_only, pass_tc, inner)
    measure("qp_steer_known_qp", steer.fd, pass_tc, inner)
    if "PROBE_VNI" in CONSTANTS:
        try:
            probe = Loaded(steer_bpf, "path_probe")
        except Exception:       # an older qp_steer.c without path_probe
            probe = None
        if probe is not None:
            request = probe_frame(probe_msg(CONSTANTS["PROBE_REQUEST"]))
            measure("path_probe_vxlan_data", probe.fd, pass_tc, bytes(outer))
            measure("path_probe_answer_request", probe.fd, pass_tc, bytes(request))
        try:
            sent = Loaded(steer_bpf, "probe_sent")
        except Exception:       # an older qp_steer.c without probe_sent
            sent = None
        if sent is not None:
            # Every data packet leaving an uplink passes it; a request (the
            # same seq every run: noted once, then seen as a second pass).
            leaving = probe_frame(probe_msg(CONSTANTS["PROBE_REQUEST"]),
                                  src="10.255.0.1", dst="10.255.0.2")
            measure("probe_sent_vxlan_data", sent.fd, pass_tc, bytes(outer))
            measure("probe_sent_request", sent.fd, pass_tc, bytes(leaving))
    measure("flow_stats_tc_vxlan_roce", flows_tc.fd, pass_tc, bytes(outer))
    measure("flow_stats_xdp_vxlan_roce", flows_xdp.fd, pass_xdp, bytes(outer))

    ns = make_underlay()
    try:
        up1, up2 = ifindex(ns, "up1"), ifindex(ns, "up2")
        table = pin.table("pin_uplinks")
        for idx in (up1, up2):
            table[table.Key(idx)] = table.Leaf(1)
        ports = {uplink_for(ns, s): s for s in range(50000, 50064)}
        ctx = bpfsys.skb_ctx(up1)
        for label, dev in (("path_pin_on_fib_link", "up1"), ("path_pin_redirect", "up2")):
            if dev not in ports:
                continue
            frame = bytes(vxlan(roce(0x123456, payload=1024), sport=ports[dev]))
            in_netns(ns, lambda f=frame, lb=label: measure(lb, pin.fd, pass_tc, f, ctx))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    print(json.dumps({"repeat": r, "runs": n, "unit": "ns per packet, median of runs",
                      "programs": results}, indent=2))
    steer_bpf.cleanup()
    flows_bpf.cleanup()
    pin_bpf.cleanup()
    base.cleanup()


if __name__ == "__main__":
    main()
