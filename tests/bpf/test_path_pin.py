"""path_pin in the kernel, inside a namespace with two uplinks and an ECMP
route to a remote VTEP: every outer VXLAN packet must leave on the uplink the
FIB's multipath hash names for its 5-tuple (`ip route get ... sport N`)."""

import json
import subprocess

import pytest
from scapy.all import Ether

from conftest import TC_ACT_UNSPEC, TC_ACT_REDIRECT, event_counts, expect, parse_counts
from qpagent import bpfsys, contract
from qt1_maps import (HOOK_PATH_PIN, PARSE_ROCE,
                      PIN_FIB_FAILED, PIN_NOT_VXLAN, PIN_ON_FIB_LINK,
                      PIN_REDIRECTED)
from qt1_netns import NetNs
from qt1_packets import roce, udp, vxlan

# Added to enum pin_event with the NO_NEIGH redirect; read from the one
# definition in bpf/include/consts.h.
PIN_REDIRECTED_NEIGH = contract.CONSTANTS["PIN_REDIRECTED_NEIGH"]

LOCAL_VTEP, REMOTE_VTEP = "10.255.0.1", "10.255.0.2"
LOCAL_VTEP6, REMOTE_VTEP6 = "fd00:ff::1", "fd00:ff::2"
UPLINKS = {  # uplink: (our address, next hop, next hop's MAC, v6 next hop)
    "up1": ("10.1.1.1/30", "10.1.1.2", "02:00:00:00:11:02", "fd00:11::2"),
    "up2": ("10.1.2.1/30", "10.1.2.2", "02:00:00:00:12:02", "fd00:12::2"),
}
SPORTS = range(49152, 49152 + 48)


def build_underlay(ns, resolved):
    """A VTEP's underlay in `ns`: two veth uplinks, an ECMP route to the
    remote VTEP (IPv4 and IPv6), forwarding on, L4 multipath hash, and
    permanent neighbour entries for the next hops of the `resolved` uplinks
    only (the others have none: the FIB answers NO_NEIGH for them)."""
    ns.ip("link", "set", "lo", "up")
    ns.ip("addr", "add", f"{LOCAL_VTEP}/32", "dev", "lo")
    ns.ip("addr", "add", f"{LOCAL_VTEP6}/128", "dev", "lo")
    ns.sysctl("net.ipv4.conf.all.forwarding", 1)
    ns.sysctl("net.ipv6.conf.all.forwarding", 1)
    ns.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
    ns.sysctl("net.ipv6.fib_multipath_hash_policy", 1)
    for i, (dev, (addr, nh, nh_mac, nh6)) in enumerate(UPLINKS.items(), 1):
        ns.ip("link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
        ns.ip("link", "set", dev, "address", f"02:00:00:00:1{i}:01")
        ns.ip("addr", "add", addr, "dev", dev)
        ns.ip("-6", "addr", "add", f"fd00:1{i}::1/64", "dev", dev, "nodad")
        ns.ip("link", "set", dev, "up")
        ns.ip("link", "set", f"{dev}p", "up")
        if dev in resolved:
            ns.ip("neigh", "replace", nh, "lladdr", nh_mac, "dev", dev, "nud", "permanent")
            ns.ip("-6", "neigh", "replace", nh6, "lladdr", nh_mac, "dev", dev, "nud", "permanent")
    hops = [a for dev, (_, nh, _, _) in UPLINKS.items() for a in ("nexthop", "via", nh, "dev", dev)]
    ns.ip("route", "add", f"{REMOTE_VTEP}/32", *hops)
    hops6 = [a for dev, (_, _, _, nh6) in UPLINKS.items() for a in ("nexthop", "via", nh6, "dev", dev)]
    ns.ip("-6", "route", "add", f"{REMOTE_VTEP6}/128", *hops6)
    ns.ifindexes = {dev: ns.ifindex(dev) for dev in UPLINKS}
    ns.macs = {dev: ns.mac(dev) for dev in UPLINKS}


@pytest.fixture(scope="module")
def vtep_ns():
    """Both uplinks' next hops resolved."""
    ns = NetNs()
    try:
        build_underlay(ns, resolved=UPLINKS)
        yield ns
    finally:
        ns.delete()


@pytest.fixture(scope="module")
def unresolved_ns():
    """up1's next hop resolved, up2's unknown (never used, or flushed)."""
    ns = NetNs()
    try:
        build_underlay(ns, resolved=("up1",))
        yield ns
    finally:
        ns.delete()


def fib_uplinks(ns, src, dst, sports):
    """The uplink `ip route get` names for each outer source port."""
    lines = "".join(f"route get {dst} from {src} ipproto udp sport {p} dport 4789\n"
                    for p in sports)
    out = subprocess.run(["ip", "-n", ns.name, "-j", "-batch", "-"], input=lines,
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line)[0]["dev"] for line in out.splitlines() if line.strip()]


def outer(sport, on, src=LOCAL_VTEP, dst=REMOTE_VTEP, ns=None):
    """An outer VXLAN frame as the driver hands it to uplink `on`."""
    nh_mac = UPLINKS[on][2]
    return vxlan(roce(0x1234), vni=10100, src=src, dst=dst, sport=sport,
                 smac=ns.macs[on], dmac=nh_mac)


def manage(pin, ns, devs):
    table = pin.table("pin_uplinks")
    for dev in devs:
        table[table.Key(ns.ifindexes[dev])] = table.Leaf(1)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_every_port_leaves_on_the_uplink_the_fib_names(pin, vtep_ns, family):
    ns = vtep_ns
    src, dst = (LOCAL_VTEP, REMOTE_VTEP) if family == "ipv4" else (LOCAL_VTEP6, REMOTE_VTEP6)
    manage(pin, ns, UPLINKS)
    wanted = fib_uplinks(ns, src, dst, SPORTS)
    assert set(wanted) == set(UPLINKS), f"the ECMP route does not spread: {wanted}"

    redirected = on_link = 0
    for sport, want_dev in zip(SPORTS, wanted):
        for sent_on in UPLINKS:
            frame = outer(sport, sent_on, src, dst, ns)
            ctx = bpfsys.skb_ctx(ns.ifindexes[sent_on])
            where = f"(sport {sport} sent on {sent_on}, FIB names {want_dev})"
            if want_dev == sent_on:
                ns.run_in(expect, pin, frame, TC_ACT_UNSPEC, ctx=ctx, context=where)
                on_link += 1
            else:
                moved = Ether(bytes(frame))
                moved.src, moved.dst = ns.macs[want_dev], UPLINKS[want_dev][2]
                ns.run_in(expect, pin, frame, TC_ACT_REDIRECT, moved, ctx=ctx, context=where)
                redirected += 1
    assert event_counts(pin, "pin_events") == {PIN_ON_FIB_LINK: on_link,
                                               PIN_REDIRECTED: redirected}
    assert redirected == on_link == len(SPORTS)
    up1 = ns.ifindexes["up1"]
    assert parse_counts(pin, up1, HOOK_PATH_PIN) == {PARSE_ROCE: len(SPORTS)}


def test_an_uplink_the_agent_does_not_manage_is_never_a_target(pin, vtep_ns):
    ns = vtep_ns
    manage(pin, ns, ["up1"])
    wanted = fib_uplinks(ns, LOCAL_VTEP, REMOTE_VTEP, SPORTS)
    sport = SPORTS[wanted.index("up2")]
    ctx = bpfsys.skb_ctx(ns.ifindexes["up1"])
    ns.run_in(expect, pin, outer(sport, "up1", ns=ns), TC_ACT_UNSPEC, ctx=ctx)
    assert event_counts(pin, "pin_events") == {PIN_FIB_FAILED: 1}


@pytest.mark.parametrize("frame", [udp(src=LOCAL_VTEP, dst=REMOTE_VTEP), roce(0x5),
                                   udp(dport=4790, src=LOCAL_VTEP, dst=REMOTE_VTEP)],
                         ids=["udp", "bare-roce", "udp-4790"])
def test_non_vxlan_is_left_alone(pin, vtep_ns, frame):
    ns = vtep_ns
    manage(pin, ns, UPLINKS)
    ctx = bpfsys.skb_ctx(ns.ifindexes["up1"])
    ns.run_in(expect, pin, frame, TC_ACT_UNSPEC, ctx=ctx)
    assert event_counts(pin, "pin_events") == {PIN_NOT_VXLAN: 1}


def test_without_forwarding_the_fib_refuses_and_the_packet_passes(pin):
    """The trap the design notes warn about: forwarding off -> FWD_DISABLED."""
    ns = NetNs()
    try:
        ns.ip("link", "add", "up1", "type", "veth", "peer", "name", "up1p")
        ns.ip("addr", "add", "10.1.1.1/30", "dev", "up1")
        ns.ip("link", "set", "up1", "up")
        ns.ip("link", "set", "up1p", "up")
        ns.ip("route", "add", f"{REMOTE_VTEP}/32", "via", "10.1.1.2")
        ns.sysctl("net.ipv4.conf.all.forwarding", 0)
        ns.macs = {"up1": ns.mac("up1")}
        table = pin.table("pin_uplinks")
        table[table.Key(ns.ifindex("up1"))] = table.Leaf(1)
        ctx = bpfsys.skb_ctx(ns.ifindex("up1"))
        ns.run_in(expect, pin, outer(50000, "up1", ns=ns), TC_ACT_UNSPEC, ctx=ctx)
        assert event_counts(pin, "pin_events") == {PIN_FIB_FAILED: 1}
    finally:
        ns.delete()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_an_uplink_without_a_resolved_next_hop_gets_the_packet_through_the_neighbour_layer(
        pin, unresolved_ns, family):
    """NO_NEIGH from the FIB: redirected to the uplink it names with the
    kernel resolving the next hop (bpf_redirect_neigh), never passed to the
    VXLAN driver's cached uplink. The MACs are the neighbour layer's to
    write, so the frame leaves the program unchanged."""
    ns = unresolved_ns
    src, dst = (LOCAL_VTEP, REMOTE_VTEP) if family == "ipv4" else (LOCAL_VTEP6, REMOTE_VTEP6)
    manage(pin, ns, UPLINKS)
    wanted = fib_uplinks(ns, src, dst, SPORTS)
    to_up2, to_up1 = SPORTS[wanted.index("up2")], SPORTS[wanted.index("up1")]
    ctx1, ctx2 = (bpfsys.skb_ctx(ns.ifindexes[d]) for d in ("up1", "up2"))
    ns.run_in(expect, pin, outer(to_up2, "up1", src, dst, ns), TC_ACT_REDIRECT, ctx=ctx1,
              context=f"(sport {to_up2}: FIB names up2, next hop unresolved)")
    # up1's next hop is resolved: the plain redirect, MACs rewritten.
    moved = Ether(bytes(outer(to_up1, "up2", src, dst, ns)))
    moved.src, moved.dst = ns.macs["up1"], UPLINKS["up1"][2]
    ns.run_in(expect, pin, outer(to_up1, "up2", src, dst, ns), TC_ACT_REDIRECT, moved, ctx=ctx2)
    # Already on the FIB's (unresolved) uplink: nothing to do.
    ns.run_in(expect, pin, outer(to_up2, "up2", src, dst, ns), TC_ACT_UNSPEC, ctx=ctx2)
    assert event_counts(pin, "pin_events") == {PIN_REDIRECTED_NEIGH: 1, PIN_REDIRECTED: 1,
                                               PIN_ON_FIB_LINK: 1}


def test_an_unresolved_uplink_the_agent_does_not_manage_is_never_a_target(pin, unresolved_ns):
    ns = unresolved_ns
    manage(pin, ns, ["up1"])
    wanted = fib_uplinks(ns, LOCAL_VTEP, REMOTE_VTEP, SPORTS)
    sport = SPORTS[wanted.index("up2")]
    ctx = bpfsys.skb_ctx(ns.ifindexes["up1"])
    ns.run_in(expect, pin, outer(sport, "up1", ns=ns), TC_ACT_UNSPEC, ctx=ctx)
    assert event_counts(pin, "pin_events") == {PIN_FIB_FAILED: 1}
