"""WAN link emulation: a user-space delay line in a box, a tbf for the rate.

A WAN link is router A <-> WAN box <-> router B: two veth pairs meeting in a
small namespace. The box runs the user-space delay line (qplab.delayline),
which adds delay, jitter and loss and can blackhole the link (this kernel has
no netem); rate is a tbf on each router's egress into the box, in an htb
class beside a class that takes network control (DSCP CS6: BFD, and
qpagent's liveness probes) first, as WAN routers queue it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

from . import delayline, netns
from .context import LabContext
from .plan import WanPlan
from .state import WanState
from .topology import WAN_LIMITS

BOX_A, BOX_B = "a", "b"   # the WAN box's two ends


def box_lines(w: WanPlan, ctx: LabContext) -> list[str]:
    """`ip -batch` lines (root namespace) creating the two veth pairs of a WAN link."""
    box = ctx.ns(w.name)
    return [f"link add {w.a_if} netns {ctx.ns(w.a)} type veth peer name {BOX_A} netns {box}",
            f"link add {w.b_if} netns {ctx.ns(w.b)} type veth peer name {BOX_B} netns {box}"]


def configure_box(w: WanPlan, ctx: LabContext, mtu: int) -> None:
    box = ctx.ns(w.name)
    netns.ns_exec(box, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"])
    netns.ip_batch([f"link set dev {BOX_A} mtu {mtu} up", f"link set dev {BOX_B} mtu {mtu} up",
                    "link set dev lo up"], box)


def start_delay_line(w: WanPlan, ctx: LabContext):
    sock = ctx.wan_socket(w.name)
    sock.parent.mkdir(parents=True, exist_ok=True)
    p = w.props
    return netns.spawn(ctx.ns(w.name),
                       [sys.executable, "-m", "qplab.delayline", "--a", BOX_A, "--b", BOX_B,
                        "--control", str(sock), "--delay-ms", str(p.delay_ms),
                        "--jitter-ms", str(p.jitter_ms), "--loss-pct", str(p.loss_pct)],
                       str(ctx.run_dir / "logs" / f"{w.name}.log"))


def wait_delay_line(w: WanPlan, ctx: LabContext, proc, timeout=15.0) -> None:
    sock = ctx.wan_socket(w.name)
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None:
            log = (ctx.run_dir / "logs" / f"{w.name}.log").read_text()[-500:]
            raise RuntimeError(f"{w.name}: delay line exited: {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{w.name}: delay line did not start within {timeout}s")
        time.sleep(0.02)


DEFAULT_BUFFER_MS = 20.0


def tbf_args(rate_mbit: float, buffer_ms: float = DEFAULT_BUFFER_MS) -> list[str]:
    """tbf for a rate: burst of 1 ms at that rate (at least two jumbo frames),
    queueing at most `buffer_ms` before it drops."""
    burst = max(int(rate_mbit * 1e6 / 8 / 1000), 20_000)
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", f"{buffer_ms:g}ms"]


# DSCP CS6 (network control) in the IPv4 TOS byte, and the mask of its DSCP bits.
NETWORK_CONTROL_TOS, DSCP_MASK = 0xC0, 0xFC


def rate_qdisc_lines(dev: str, rate_mbit: float, buffer_ms: float = DEFAULT_BUFFER_MS) -> list[str]:
    """`tc -batch` lines for one egress, all within the link's rate: htb
    class 1:10 takes network control first (BFD would otherwise flap, and
    liveness probes look dead, behind buffer_ms of queued data), class
    1:20 everything else through the tbf and its buffer. (This kernel has
    neither prio nor ets.)"""
    kbit = max(int(rate_mbit * 1000), 1)
    control = max(kbit // 10, 100)
    return [f"qdisc add dev {dev} root handle 1: htb default 20",
            f"class add dev {dev} parent 1: classid 1:1 htb rate {kbit}kbit ceil {kbit}kbit",
            f"class add dev {dev} parent 1:1 classid 1:10 htb rate {control}kbit "
            f"ceil {kbit}kbit prio 0",
            f"class add dev {dev} parent 1:1 classid 1:20 htb rate {max(kbit - control, 1)}kbit "
            f"ceil {kbit}kbit prio 1",
            f"qdisc add dev {dev} parent 1:20 handle 20: {' '.join(tbf_args(rate_mbit, buffer_ms))}",
            f"filter add dev {dev} parent 1: protocol ip prio 1 u32 "
            f"match ip tos {NETWORK_CONTROL_TOS:#x} {DSCP_MASK:#x} flowid 1:10"]


def set_rate(w: WanState, ctx: LabContext, rate_mbit: float,
             buffer_ms: float = DEFAULT_BUFFER_MS) -> None:
    """Both routers' egress into the box; rate 0 removes the limit."""
    for node, dev in ((w.a, w.a_if), (w.b, w.b_if)):
        netns.run(["tc", "-n", ctx.ns(node), "qdisc", "del", "dev", dev, "root"], check=False)
        if rate_mbit and rate_mbit > 0:
            netns.run(["tc", "-n", ctx.ns(node), "-batch", "-"],
                      input="\n".join(rate_qdisc_lines(dev, rate_mbit, buffer_ms)) + "\n")


def parse_settings(pairs: list[str]) -> dict:
    """`delay=20 jitter=1 loss=0.5 rate=100` (units: ms, ms, %, Mbit/s)."""
    aliases = {"delay": "delay_ms", "jitter": "jitter_ms", "loss": "loss_pct", "rate": "rate_mbit"}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = aliases.get(key, key)
        if not sep or key not in WAN_LIMITS:
            raise ValueError(f"bad WAN setting {pair!r}: use delay=MS jitter=MS loss=PCT rate=MBIT")
        for unit in ("ms", "mbit", "%"):
            value = value.removesuffix(unit)
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"bad WAN setting {pair!r}: {value!r} is not a number") from None
        lo, hi = WAN_LIMITS[key]
        if not lo <= v <= hi:
            raise ValueError(f"bad WAN setting {pair!r}: out of range [{lo:g}, {hi:g}]")
        out[key] = v
    if not out:
        raise ValueError("no WAN setting given: use delay=MS jitter=MS loss=PCT rate=MBIT")
    return out


def apply(w: WanState, ctx: LabContext, settings: dict,
          buffer_ms: float = DEFAULT_BUFFER_MS) -> dict:
    """Change a running WAN link (and its state); returns the delay line's reply."""
    if "rate_mbit" in settings:
        set_rate(w, ctx, settings["rate_mbit"], buffer_ms)
    line = {k: v for k, v in settings.items() if k != "rate_mbit"}
    reply = delayline.control(w.control, {"set": line} if line else {"get": True})
    if not reply.get("ok"):
        raise RuntimeError(f"delay line refused: {reply.get('error')}")
    w.props = replace(w.props, **settings)
    return reply


def set_blackhole(w: WanState, on: bool) -> None:
    reply = delayline.control(w.control, {"set": {"blackhole": on}})
    if not reply.get("ok"):
        raise RuntimeError(f"delay line refused: {reply.get('error')}")
    w.blackhole = on
