"""A silent cut at one tier of the running lab under RC traffic, measured.

K RC queue pairs from one host to a host in the other DC (the traffic
engine, paced so that a QP's window outlasts routing's repair: the gap then
measures the network, not the window); once every QP is steady, the busiest
link of the tier in that direction is blackholed (it stays up, drops
everything: only BFD or end-to-end probes see it). Measured:

- per QP, the longest gap between two packets arriving at the receiving
  host around the cut (kernel timestamps on the host's interface);
- QPs hit: those whose gap stands out from their own gaps before the cut;
- after a cut, when every live WAN link first carried at most ceil(K / live
  links) of the QPs, and stayed so (from taps in the WAN boxes);
- correctness: the transfer completes with every byte verified and no QP in
  the error state;
- false alarms: QPs the sending leaf's agent moved off paths it declared
  dead for want of probe replies while nothing had failed yet (traffic
  start to the cut; with liveness on, a flap shows here).

Tiers: "wan" (border to border), "spine-border", "leaf-uplink" (the sending
leaf's). Used by tests/lab/test_failover_tiers.py and
tests/bench/bench_failover.py.
"""
from __future__ import annotations

import json
import math
import statistics
import threading
import time
from dataclasses import dataclass, field

from .. import frr, netns
from ..api import Lab
from ..waiting import Timeout, wait_until
from ..workloads import schedules as sch
from ..workloads.driver import Engine, Host, QpInError, verify
from ..workloads.worker import EngineConfig
from .observe import agent_status
from .taps import ReceiverTap, WanTap

TIERS = ("wan", "spine-border", "leaf-uplink")
K_QPS = 8
RATE_MBIT = 16.0            # the sending host's pace: 2 Mbit/s a QP, ~250 packets/s a QP
WINDOW = 512                # packets: 2 s of a QP's pace, longer than BFD + BGP take
MTU = 1024
MSG_SIZE = 1 << 16
STEADY_S = 1.5              # every QP arriving this long before the cut
AFTER_S = 4.0               # traffic planned past the cut (balance is checked within it)
BIN_S = 0.25                # balance is judged per window of this length


@dataclass(frozen=True)
class CutLink:
    tier: str
    a: str                  # the end towards the sender
    b: str
    node: str               # where its sending-direction bytes are counted
    ifname: str
    wan: str | None = None


@dataclass
class CutResult:
    tier: str
    link: str
    qps: int
    gaps_ms: dict[int, float]           # per QP, longest gap around the cut
    before_ms: dict[int, float]         # per QP, longest gap in the steady second before
    hit: list[int]
    balanced_after_ms: float | None     # None: never within the run
    wan_live: int
    wan_load_1s: dict[str, int]         # QPs per WAN link from 1 to 1.5 s after the cut
    carried_bytes: int                  # by the cut link in the half second before the cut
    engine: dict = field(default_factory=dict)   # completion, verification, QP states
    false_moves: dict | None = None     # data-plane moves before the cut, by cause (None: no agent)
    go_backs: int | None = None         # go-back NAKs the sender's agent handed out after the cut

    def summary(self) -> dict:
        hit_gaps = [self.gaps_ms[q] for q in self.hit]
        return {"tier": self.tier, "link": self.link, "qps": self.qps, "qps_hit": len(self.hit),
                "gap_median_ms": round(statistics.median(hit_gaps), 1) if hit_gaps else None,
                "gap_max_ms": round(max(hit_gaps), 1) if hit_gaps else None,
                "gap_max_all_ms": round(max(self.gaps_ms.values()), 1) if self.gaps_ms else None,
                "balanced_after_ms": None if self.balanced_after_ms is None
                else round(self.balanced_after_ms),
                "wan_live": self.wan_live, "wan_load_1s": self.wan_load_1s,
                "liveness_moves_before_cut": (None if self.false_moves is None
                                              else sum(self.false_moves.values())),
                "moves_before_cut_by_cause": self.false_moves, "go_back_naks": self.go_backs,
                **self.engine}


# ---------------------------------------------------------------- which link

def candidates(lab: Lab, tier: str, src_leaf: str) -> list[CutLink]:
    """The links of a tier on the way out of the sender's DC."""
    routers = lab.state.routers
    dc = routers[src_leaf].dc
    if tier == "leaf-uplink":
        return [CutLink(tier, src_leaf, i.peer_node, src_leaf, i.name)
                for i in routers[src_leaf].interfaces if i.kind == "uplink"]
    if tier == "spine-border":
        return [CutLink(tier, r.name, i.peer_node, r.name, i.name)
                for r in routers.values() if r.role == "spine" and r.dc == dc
                for i in r.interfaces if routers.get(i.peer_node) and
                routers[i.peer_node].role == "border" and i.kind != "wan"]
    if tier == "wan":
        out = []
        for w in lab.wan_links().values():
            if w.a_dc == dc:
                out.append(CutLink(tier, w.a, w.b, w.a, w.a_if, w.name))
            elif w.b_dc == dc:
                out.append(CutLink(tier, w.b, w.a, w.b, w.b_if, w.name))
        return out
    raise ValueError(f"unknown tier {tier!r} (tiers: {', '.join(TIERS)})")


def tx_bytes(lab: Lab, link: CutLink) -> int:
    out = netns.run(["ip", "-n", lab.ns(link.node), "-s", "-j", "link", "show", "dev", link.ifname])
    return json.loads(out.stdout)[0]["stats64"]["tx"]["bytes"]


CUT_MIN_BYTES = 100_000     # what the cut link must carry in the half second before the cut


def busiest(lab: Lab, links: list[CutLink], over_s: float = 0.5) -> tuple[CutLink, int]:
    """The link that carried the most bytes in the sending direction lately,
    and how many it carried."""
    before = {l: tx_bytes(lab, l) for l in links}
    time.sleep(over_s)      # a counting interval, not a wait for a condition
    carried = {l: tx_bytes(lab, l) - before[l] for l in links}
    link = max(links, key=carried.__getitem__)
    return link, carried[link]


# ---------------------------------------------------------------- proof of the cut

def bfd_down_on(lab: Lab, link: CutLink) -> bool:
    """BFD at the cut link's counted end reports its peer across it down: the
    blackhole drops for real (what a silent failure looks like to routing)."""
    r = lab.state.routers[link.node]
    iface = next(i for i in r.interfaces if i.name == link.ifname)
    for peer in frr.vtysh_json(lab.ns(link.node), "show bfd peers json") or []:
        if peer.get("peer") == iface.peer_address:
            return peer.get("status") == "down"
    return False


def link_up(lab: Lab, link: CutLink) -> bool:
    out = netns.run(["ip", "-n", lab.ns(link.node), "-br", "link", "show", "dev", link.ifname])
    return " UP " in f" {out.stdout} "


# ---------------------------------------------------------------- analysis

def longest_gaps(arrivals: dict[int, list[float]], qps: list[int], t0: float, t1: float,
                 until_last: bool = False) -> dict[int, float]:
    """Per QP, the longest time (ms) between two packets within [t0, t1],
    counting the edges too (a QP silent to the end shows its whole silence).
    until_last: the QP's own last packet closes its window instead of t1
    (the transfer completed: a QP that finished its share is not silent)."""
    out = {}
    for qp in qps:
        ts = [t0] + [t for t in arrivals.get(qp, []) if t0 <= t <= t1]
        if not until_last or len(ts) == 1:
            ts.append(t1)
        out[qp] = max(b - a for a, b in zip(ts, ts[1:])) * 1e3
    return out


def hit_qps(gaps: dict[int, float], before: dict[int, float]) -> list[int]:
    """QPs whose gap around the cut stands out: above twice their own longest
    gap in steady state and by at least 20 ms."""
    return sorted(q for q, g in gaps.items() if g > max(2 * before.get(q, 0.0), before.get(q, 0.0) + 20))


def balanced_after(wan_seen: list[tuple], qps: list[int], live: list[str], t_cut: float,
                   t_end: float) -> float | None:
    """Seconds from the cut until every QP sat on a live WAN link with no link
    over ceil(K / live), in every window from then to the end; None if never.
    A window judges only when it saw every QP (the taps sample); a QP sits
    on the link of its last frame in the window. The answer is the start of
    the first window balanced at its end, so it is good to one window."""
    cap = math.ceil(len(qps) / len(live))
    verdicts = []
    t = t_cut
    while t + BIN_S <= t_end:
        load = wan_load(wan_seen, qps, t, t + BIN_S, per_qp=True)
        if set(load) != set(qps):
            verdicts.append(None)
        else:
            links = list(load.values())
            verdicts.append(all(l in live for l in links)
                            and max(links.count(l) for l in set(links)) <= cap)
        t += BIN_S
    last_bad = max((i for i, v in enumerate(verdicts) if v is False), default=-1)
    if not any(v for v in verdicts[last_bad + 1:]):
        return None
    return (last_bad + 1) * BIN_S


def seconds_to_ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def wan_load(wan_seen: list[tuple], qps: list[int], t0: float, t1: float,
             per_qp: bool = False) -> dict:
    """QPs per WAN link in [t0, t1], each QP counted on the link of its last
    frame (per_qp: that link per QP instead)."""
    last: dict[int, tuple[float, str]] = {}
    for t, link, _src, _dst, qp in wan_seen:
        if t0 <= t <= t1 and qp in qps and t >= last.get(qp, (0.0, ""))[0]:
            last[qp] = (t, link)
    if per_qp:
        return {qp: link for qp, (_t, link) in last.items()}
    load: dict[str, int] = {}
    for _t, link in last.values():
        load[link] = load.get(link, 0) + 1
    return dict(sorted(load.items()))


# ---------------------------------------------------------------- one cut

class Traffic:
    """One host's K QPs to another host through the engine, one transfer
    in a thread; `result()` waits for it."""

    def __init__(self, src: Host, dst: Host, seconds: float, preset: str = "nccl", seed: int = 1,
                 log: str | None = None):
        cfg = EngineConfig.preset(preset, mtu=MTU, window=WINDOW, rate_mbit=RATE_MBIT)
        self.engine = Engine([src, dst], cfg, qps_per_conn=K_QPS, sport_policy="qpn", seed=seed,
                             stderr_path=log)
        self.schedule = [[sch.Transfer(src.name, dst.name, int(RATE_MBIT * 1e6 / 8 * seconds))]]
        self.src, self.dst = src, dst
        self._out: dict = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            replies = self.engine.run_iteration(self.schedule, 0, MSG_SIZE, timeout=90)
            verified, problems = verify(self.schedule, replies)
            qps = [q for r in replies.values() for q in r["qps"]]
            self._out = {"completed": True, "verified_bytes": verified, "problems": problems,
                         "qps_in_error": [q["qpn"] for q in qps if q["state"] == "error"],
                         "timeouts": sum(q["tx"]["timeouts"] for q in qps),
                         "retransmitted": sum(q["tx"].get("retransmitted", 0) for q in qps),
                         # A receiver NAKs a gap once; a NAK lost on the way
                         # back leaves the sender to its timer.
                         "naks_sent": sum(q["rx"].get("naks_sent", 0) for q in qps),
                         "naks_seen": sum(q["tx"].get("naks", 0) for q in qps),
                         "seconds": round(replies[self.src.name]["end"] - replies[self.src.name]["start"], 2)}
        except QpInError as e:
            self._out = {"completed": False, "qps_in_error": [q["qpn"] for q in e.qps],
                         "problems": [str(e)]}
        except Exception as e:     # noqa: BLE001 - reported in the result, the caller asserts
            self._out = {"completed": False, "qps_in_error": [], "problems": [f"{type(e).__name__}: {e}"]}

    def start(self) -> "Traffic":
        self.engine.start()
        self.engine.connect([(self.src.name, self.dst.name)])
        self._thread.start()
        return self

    @property
    def receiving_qps(self) -> list[int]:
        """Data packets carry the receiver's QP numbers."""
        return [q.rqpn for q in self.engine.qps]

    def result(self, timeout: float = 120.0) -> dict:
        self._thread.join(timeout)
        if self._thread.is_alive():
            return {"completed": False, "qps_in_error": [], "problems": ["transfer still running"]}
        return self._out

    def close(self) -> None:
        self.engine.close()
        self._thread.join(5)


def engine_host(lab: Lab, name: str) -> Host:
    h = lab.state.hosts[name]
    return Host(h.name, h.address.split("/")[0], h.ns, h.dc)


def measure_cut(lab: Lab, tier: str, src: str = "dc1-h1", dst: str = "dc2-h1",
                preset: str = "nccl", seed: int = 1, log=print) -> CutResult:
    """Traffic, a silent cut of the busiest link of `tier`, the figures; the
    link is restored and the lab converged again before returning."""
    src_h, dst_h = engine_host(lab, src), engine_host(lab, dst)
    src_leaf = lab.state.hosts[src].leaf
    wans = list(lab.wan_links().values())
    traffic = Traffic(src_h, dst_h, STEADY_S + 1.0 + AFTER_S, preset, seed,
                      log=str(lab.ctx.run_dir / "logs" / "failover-engine.log"))
    rx = ReceiverTap(lab.ns(dst)).start()
    wan_tap = WanTap(wans, lab.state.hosts[src].dc).start()
    link = None
    moves_at_start = liveness_moves(lab, src_leaf)
    try:
        traffic.start()
        qps = traffic.receiving_qps
        t_start = time.time()

        def steady():
            now = time.time()
            seen = rx.arrivals(now - STEADY_S, now)
            return now - t_start > STEADY_S and all(len(seen.get(q, ())) > 10 for q in qps)
        wait_until(steady, 20, 0.05, "every QP arriving steadily")
        link, carried = busiest(lab, candidates(lab, tier, src_leaf))
        # Cut a link while it carries the QPs: traffic can pause for a moment
        # (a path declared dead with nothing failed, a retransmission timer),
        # and a cut during a pause proves nothing.
        deadline = time.monotonic() + 10.0
        while carried < CUT_MIN_BYTES and time.monotonic() < deadline:
            link, carried = busiest(lab, candidates(lab, tier, src_leaf))
        moves_at_cut = liveness_moves(lab, src_leaf)
        go_backs_at_cut = go_backs_sent(lab, src_leaf)
        t_cut = time.time()
        lab.blackhole(link.a, link.b, True)
        engine = traffic.result(timeout=120)
        t_end = time.time()
        go_backs_at_end = go_backs_sent(lab, src_leaf)
        wait_until(lambda: bfd_down_on(lab, link), 10, 0.1, f"BFD down across {link.a}-{link.b}")
        assert link_up(lab, link), f"{link.node} {link.ifname} went down: the cut was not silent"
    finally:
        if link is not None:
            lab.blackhole(link.a, link.b, False)
        traffic.close()
        rx.stop()
        wan_tap.stop()
    arrivals = rx.arrivals()
    last_rx = max((t for t, _, _ in rx.seen), default=t_end)
    gaps = longest_gaps(arrivals, qps, t_cut, min(t_end, last_rx),
                        until_last=bool(engine.get("completed")))
    before = longest_gaps(arrivals, qps, t_cut - 1.0, t_cut)
    live = [w.name for w in wans if w.name != link.wan]
    t_last = min(t_end, last_rx)
    result = CutResult(tier, f"{link.a}-{link.b}", len(qps), gaps, before, hit_qps(gaps, before),
                       seconds_to_ms(balanced_after(wan_tap.seen, qps, live, t_cut, t_last)),
                       len(live),
                       wan_load(wan_tap.seen, qps, t_cut + 1.0, t_cut + 1.5), carried, engine,
                       None if moves_at_start is None or moves_at_cut is None
                       else {c: moves_at_cut[c] - moves_at_start[c] for c in moves_at_cut
                             if moves_at_cut[c] != moves_at_start[c]},
                       None if go_backs_at_cut is None or go_backs_at_end is None
                       else go_backs_at_end - go_backs_at_cut)
    log(f"  {tier:12s} cut {result.link}: {result.summary()}")
    settle(lab, src_leaf, log=log)
    return result


def settle(lab: Lab, leaf: str, timeout: float = 90.0, paths_timeout: float = 5.0,
           log=print) -> None:
    """Routing converged again and, with agents, every path of the leaf's
    agent alive (the hold-down over). Paths that never all come back are
    reported, not fatal: the cut that follows is measured either way."""
    lab.wait_converged(timeout)
    if not lab.agents_running():
        return
    try:
        wait_until(lambda: paths_not_alive(lab, leaf) == [], paths_timeout, 0.2,
                   f"every path of {leaf}'s agent alive again")
    except Timeout:
        log(f"  note: {leaf}'s agent still has paths not alive: {paths_not_alive(lab, leaf)}")


def paths_not_alive(lab: Lab, leaf: str) -> list[str]:
    status = agent_status(lab.agent_socket(leaf)) or {}
    return [f"{v['address']}#{p['index']} {p.get('health')}" for v in status.get("vteps", [])
            for p in v.get("paths", []) if not p.get("alive") or p.get("health") == "down"]


DATA_PLANE_CAUSES = ("liveness", "nak", "stall", "retransmit")


def go_backs_sent(lab: Lab, leaf: str) -> int | None:
    """Go-back NAKs the leaf's agent handed to its hosts so far (None: no agent)."""
    if not lab.agents_running():
        return None
    status = agent_status(lab.agent_socket(leaf))
    return int((status.get("go_back_naks") or {}).get("sent", 0)) if status else None


def liveness_moves(lab: Lab, leaf: str) -> dict[str, int] | None:
    """QPs the leaf's agent and data plane moved so far for want of probe
    replies or on the QPs' own signals (NAK, stall, resend), by cause: with
    nothing failed, each is a flap (None: no agent answering)."""
    if not lab.agents_running():
        return None
    status = agent_status(lab.agent_socket(leaf))
    if not status:
        return None
    repairs = status.get("repairs") or {}
    return {c: int(repairs.get(c, {}).get("total", 0)) for c in DATA_PLANE_CAUSES}
