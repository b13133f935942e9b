"""Core: the agent's decisions. Events and the QP table go in, map writes,
QP moves and log lines come out. No threads, sockets, netlink or BPF, and
time is passed in, so every decision can be replayed in a unit test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from qpagent.core import liveness, pathtable
from qpagent.core.actions import (AGENT_REPAIR_CAUSES, REPLACEMENT_REASONS, DisarmAll,
                                  ForgetQp, GoBack, MoveQp, Note, SetMacVteps, SetPathCounts,
                                  SetRepairConfig, Warn, WriteDeadline, WritePath)
from qpagent.core.inputs import (BfdSeen, FdbSeen, PathHealthChanged, PathRttSeen, PathsSeen,
                                 Tick)
from qpagent.core.model import Found, PathState, VtepKey, VtepState
from qpagent.core.placement import bottleneck_links, path_links, path_weights, rebalance
from qpagent.portmath import hash_for_port
from qpagent.contract import CONSTANTS, MAX_PATHS, MAX_VTEPS

PSN_MASK, PSN_HALF = CONSTANTS["PSN_MASK"], CONSTANTS["PSN_HALF"]

HYSTERESIS_S = 10.0
# A QP silent this long leaves the table: it no longer counts towards the
# balance, and if it speaks again the data plane places it afresh (an idle
# QP has nothing in flight to reorder).
QP_IDLE_S = 10.0
# A QP silent this long does not weigh in the balance (nor count towards
# its path's load), though the table keeps it: a job that just ended must
# not push the next one's QPs onto each other. If it speaks again it counts
# again, and moving it is cheap (nothing was in flight).
QP_ACTIVE_S = 1.0


# Go-back NAKs per wait at most: each uses one of the QP's retry_cnt
# retries, and NCCL's default is 7.
GO_BACK_TRIES = 3


@dataclass
class GoBackWatch:
    """A QP watched for go-back NAKs: what it had sent when its path died
    (next_psn, 24-bit), when the last NAK went (0: none yet), how many."""
    until_psn: int
    at: float = 0.0
    tries: int = 0


class QpView(NamedTuple):
    """One QP as the maps hold it (qpagent.tables reads them)."""
    vtep: int
    path: int
    slot: int
    port: int
    packets: int
    bytes: int
    moves: int
    last_ns: int
    repaired_ns: int = 0   # the data plane's last repair of this QP (0: never)
    # Its stream as the data plane saw it (-1: not seen yet): the next PSN
    # to send, the oldest unacknowledged, and since when that one waits.
    next_psn: int = -1
    acked_psn: int = -1
    ack_wait_ns: int = 0


def outstanding(q: QpView) -> bool:
    """Data sent and not acknowledged yet."""
    if q.next_psn < 0 or q.acked_psn < 0:
        return False
    return 0 < (q.next_psn - q.acked_psn) & PSN_MASK <= PSN_HALF


def psn_reached(psn: int, target: int) -> bool:
    """psn is at or past target, in 24-bit serial arithmetic."""
    return (psn - target) & PSN_MASK < PSN_HALF


@dataclass(frozen=True)
class Settings:
    rebalance: bool = True          # restore exact balance, not only move orphans
    end_to_end: bool = False        # paths are whole paths (probe rounds refine them)
    hysteresis_s: float = HYSTERESIS_S
    qp_idle_s: float = QP_IDLE_S
    qp_active_s: float = QP_ACTIVE_S
    probe_interval_ms: int = 10     # liveness: see qpagent.core.liveness
    probe_misses: int = 3
    probe_budget_pps: int = 1000
    probe_rtt_margin_ms: int = 10   # a probe's deadline: at least smoothed RTT + this
    repair_holddown_ms: int = 100   # data-plane repair of one QP at most this often
    repair_retransmit: bool = True
    repair_nak: bool = False
    repair_stall_ms: int = 0
    # A QP that leaves a dead path with data in flight: its requester gets
    # a NAK naming the oldest unacknowledged PSN (actions.GoBack).
    go_back: bool = True
    # Mbit/s by uplink name or hop address: QPs go in proportion to each
    # path's bottleneck (qpagent.core.placement.path_weights)
    capacities: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeTarget:
    """A remote VTEP's paths to probe: (path index, outer source port) each."""
    key: VtepKey
    vtep: int
    local: str
    address: str
    paths: tuple[tuple[int, int], ...]


class Core:
    def __init__(self, settings: Settings = Settings()):
        self.settings = settings
        self.vteps: dict[VtepKey, VtepState] = {}
        self.present: set[VtepKey] = set()
        self.bfd = BfdSeen(False, "not polled yet")
        self.replacements: Counter = Counter({r: 0 for r in REPLACEMENT_REASONS})
        self.generation = 0          # bumped whenever the path table changes
        self._found: dict[VtepKey, list[Found]] = {}   # last discovery, before BFD
        self._moved_at: dict[bytes, float] = {}        # QP -> seconds (now_ns clock)
        self._qp_seen: dict[bytes, tuple[int, int]] = {}
        # Paths without probe replies, by identity: dead like a BFD-down uplink.
        self.unhealthy: set[tuple[VtepKey, tuple]] = set()
        # Of those, the ones answering again: end to end, a path that
        # answers again may answer across other links (routing moved under
        # its ports), so it is back only once a TTL round that began after
        # its death (_died_at) traces it over its own hops again.
        self._untraced: set[tuple[VtepKey, tuple]] = set()
        self._died_at: dict[tuple[VtepKey, tuple], float] = {}
        self._deadlines: dict[tuple[VtepKey, int], int] = {}   # armed paths
        # Per probed path: smoothed RTT and jitter margin, from the prober.
        self._rtt: dict[tuple[VtepKey, int], tuple[int, int]] = {}
        # QPs per path as last seen (tick, moves): which paths are in use.
        self._in_use: dict[VtepKey, Counter] = {}
        self.repairs: Counter = Counter({c: 0 for c in AGENT_REPAIR_CAUSES})
        self._go_back_watch: dict[bytes, GoBackWatch] = {}

    # ------------------------------------------------------------ inputs
    def paths_seen(self, event: PathsSeen, qps: Mapping[bytes, QpView], now: float) -> list:
        """New discovery results (with the FDB, when it was read too)."""
        out: list = []
        if event.fdb is not None:
            out += self._fdb_seen(event.fdb)
        touched = set()
        for key, vtep in self.vteps.items():
            if key not in self.present:
                found = []
            elif key in event.paths:
                found = list(event.paths[key])
                if event.cause == "probe":
                    if not pathtable.trustworthy(vtep, found):
                        continue
                    traced = {f.identity for f in found}
                    found = pathtable.carry_over(self._found.get(key, []), found)
                    out += self._traced_again(key, traced, {f.identity for f in found},
                                              event.started)
            else:
                continue
            self._found[key] = found
            touched.add(key)
        out += self._apply(touched, qps, event.cause, now, force_write=event.cause == "start")
        return out

    def _traced_again(self, key: VtepKey, traced: set, kept: set,
                      started: float | None) -> list:
        """A probe round's word on the dead paths of one VTEP: one that
        answers again and was traced over its own hops by a round begun
        after its death is back; one the round no longer keeps (a port of
        it was traced onto other hops) is gone, and so is its ill health."""
        out = []
        for ident in [i for i in self.unhealthy if i[0] == key]:
            if ident[1] not in kept:
                self.unhealthy.discard(ident)
                self._untraced.discard(ident)
                self._died_at.pop(ident, None)
            elif ident in self._untraced and ident[1] in traced and started is not None \
                    and started >= self._died_at.get(ident, 0.0):
                self.unhealthy.discard(ident)
                self._untraced.discard(ident)
                self._died_at.pop(ident, None)
                out.append(Note("liveness", f"a path of VTEP {self.vteps[key].address} "
                                            f"answers again over its own hops: back in use"))
        return out

    def bfd_seen(self, event: BfdSeen, qps: Mapping[bytes, QpView], now: float) -> list:
        """FRR's BFD may know of a dead uplink before the FIB does."""
        before = self.bfd.down_uplinks
        self.bfd = event
        if event.down_uplinks == before:
            return []
        return self._apply(set(self.vteps), qps, "bfd", now)

    def paths_health(self, events: list[PathHealthChanged], qps: Mapping[bytes, QpView],
                     now: float) -> list:
        """Probed paths went unhealthy (dead like a BFD-down uplink; the
        data plane has usually moved their QPs already) or healthy (armed on
        the first reply; back, with the fewest moves, after the hold-down).
        The changes of one look are decided together: the QPs of paths that
        died at once move once, each onto a path none of them killed (one
        look at a cut often finds most of a VTEP's paths dead)."""
        out: list = []
        changed: dict[str, set] = {"liveness": set(), "path_up": set()}
        for event in events:
            cause = self._path_health_changed(event, qps, now, out)
            if cause is not None:
                changed[cause].add(event.key)
        for cause in ("liveness", "path_up"):
            if changed[cause]:
                out += self._apply(changed[cause], qps, cause, now)
        return out

    def _path_health_changed(self, event: PathHealthChanged, qps: Mapping[bytes, QpView],
                             now: float, out: list) -> str | None:
        """Book one path's change (out gains its notes and deadline);
        returns "liveness" (it died) or "path_up" (it is back), or None when
        nothing is to move."""
        vtep = self.vteps.get(event.key)
        path = vtep.paths.get(event.path_index) if vtep else None
        if path is None:
            return None
        ident = (event.key, path.identity)
        self._see_in_use(vtep, qps, now)
        if event.healthy:
            if (event.key, path.index) not in self._deadlines and \
                    path.index in self.probed_paths(vtep):
                wanted = self._deadline(vtep, path.index)
                self._deadlines[(event.key, path.index)] = wanted
                out.append(WriteDeadline(vtep.index, path.index, wanted))
            if ident not in self.unhealthy:
                return None
            if self.settings.end_to_end and path.hops:
                if ident not in self._untraced:
                    self._untraced.add(ident)
                    out.append(Note("liveness", f"VTEP {vtep.address} path {path.index} "
                                                f"({path.uplink}) answers again: back in use "
                                                f"once a TTL round traces it over its own hops"))
                return None
            self.unhealthy.discard(ident)
            out.append(Note("liveness", f"VTEP {vtep.address} path {path.index} "
                                        f"({path.uplink}) answers again: back in use"))
            return "path_up"
        if ident in self.unhealthy:
            if ident in self._untraced:
                self._untraced.discard(ident)
                self._died_at[ident] = event.seen     # died again before a trace
            return None
        self.unhealthy.add(ident)
        self._died_at[ident] = event.seen
        silent = (f" for {event.silent_ns / 1e6:.0f} ms (deadline "
                  f"{event.deadline_ns / 1e6:.0f} ms)" if event.silent_ns else "")
        out.append(Note("liveness", f"VTEP {vtep.address} path {path.index} "
                                    f"({path.uplink}) stopped answering probes{silent}: dead"))
        # QPs the data plane moved off it already, on their next packet
        # (since its silence began): what they had in flight is lost too.
        since = int(event.seen * 1e9) - (event.silent_ns or event.deadline_ns)
        self._watch(qps, [k for k, q in qps.items()
                          if q.vtep == vtep.index and q.repaired_ns >= since], repaired=True)
        return "liveness"

    def path_rtt(self, event: PathRttSeen, qps: Mapping[bytes, QpView], now: float) -> list:
        """A probed path's RTT moved: its deadline follows (see
        liveness.reply_deadline_ns)."""
        vtep = self.vteps.get(event.key)
        if vtep is None or event.path_index not in vtep.paths:
            return []
        self._rtt[(event.key, event.path_index)] = (event.srtt_ns, event.margin_ns)
        self._see_in_use(vtep, qps, now)
        return self._rearm(vtep)

    def startup(self) -> list:
        """What the data plane needs before anything else: the repair
        settings, and no path checked until this agent has seen it answer
        (an earlier agent's deadlines would kill every path meanwhile)."""
        s = self.settings
        return [DisarmAll(), SetRepairConfig(s.repair_holddown_ms * 1_000_000,
                                             s.repair_retransmit, s.repair_nak,
                                             s.repair_stall_ms * 1_000_000)]

    def tick(self, event: Tick, qps: dict[bytes, QpView]) -> list:
        """Forget idle QPs, attribute traffic to paths, restore balance,
        and make the data plane's per-path counts true again (evictions
        and moves make them drift). `qps` loses the forgotten QPs."""
        out: list = []
        now = event.now_ns / 1e9
        idle_before = event.now_ns - int(self.settings.qp_idle_s * 1e9)
        idle = [k for k, q in qps.items() if q.last_ns < idle_before]
        for key in idle:
            out.append(ForgetQp(key))
            del qps[key]
        if idle:
            out.append(Note("expire", f"{len(idle)} QPs idle for "
                                      f"{self.settings.qp_idle_s:.0f} s forgotten"))
        self._attribute_traffic(qps)
        for vtep in self.vteps.values():
            mine = self._active(vtep, qps, now)
            if self.settings.rebalance and mine:
                moves = self._replace_qps(vtep, mine, "periodic", now)
                for m in moves:
                    if isinstance(m, MoveQp):
                        mine[m.qp] = qps[m.qp] = qps[m.qp]._replace(path=m.path, slot=m.slot,
                                                                    port=m.port)
                out += moves
            counts = Counter(q.path for q in mine.values())
            out.append(SetPathCounts(vtep.index, tuple(sorted(counts.items()))))
            self._in_use[vtep.key] = counts
            out += self._rearm(vtep)   # the paths in use changed: so do the probed ones
        cutoff = now - self.settings.hysteresis_s
        for key in [k for k, t in self._moved_at.items() if t < cutoff]:
            del self._moved_at[key]
        for key in [k for k in self._go_back_watch if k not in qps]:
            del self._go_back_watch[key]
        return out

    # ------------------------------------------------------------ queries
    def vtep_by_index(self, index: int) -> VtepState | None:
        for vtep in self.vteps.values():
            if vtep.index == index:
                return vtep
        return None

    def probe_targets(self) -> list[VtepState]:
        return [v for k, v in self.vteps.items() if k in self.present]

    def liveness_targets(self) -> list[ProbeTarget]:
        """Per present VTEP, the paths worth probing (probed_paths), each
        with the outer source port its probes carry."""
        out = []
        for vtep in sorted(self.probe_targets(), key=lambda v: v.index):
            paths = tuple((i, vtep.paths[i].ports[0]) for i in self.probed_paths(vtep))
            if paths:
                out.append(ProbeTarget(vtep.key, vtep.index, vtep.local, vtep.address, paths))
        return out

    def _see_in_use(self, vtep: VtepState, qps: Mapping[bytes, QpView], now: float) -> None:
        self._in_use[vtep.key] = Counter(q.path for q in self._active(vtep, qps, now).values())

    def _active(self, vtep: VtepState, qps: Mapping[bytes, QpView], now: float) -> dict:
        """The VTEP's QPs that sent within qp_active_s of `now` (seconds,
        the clock of QpView.last_ns): those that weigh in the balance."""
        since = int((now - self.settings.qp_active_s) * 1e9)
        return {k: q for k, q in qps.items() if q.vtep == vtep.index and q.last_ns >= since}

    def probed_paths(self, vtep: VtepState) -> tuple[int, ...]:
        """The paths in use (QPs on them), then the spares their QPs would
        fail over to (within the budget), then the paths dead only for want
        of replies (to see them come back). An idle path is not probed:
        nothing rides it, and a QP the data plane places there is covered
        from the next tick."""
        counts = self._in_use.get(vtep.key, Counter())
        live = sorted(vtep.live_paths())
        used = [i for i in live if counts.get(i, 0) > 0]
        elements = {i: path_elements(vtep.paths[i]) for i in live}
        spares = [i for i in failover_spares(live, counts, elements) if i not in used]
        # As many spares as the budget probes each interval beside the paths
        # in use (at least one): more would stretch every path's deadline.
        room = liveness.probes_per_round(self.settings.probe_interval_ms,
                                         self.settings.probe_budget_pps) - len(used)
        spares = spares[:max(1, room)]
        recovering = sorted(p.index for p in vtep.paths.values()
                            if p.ports and not p.alive and (vtep.key, p.identity) in self.unhealthy)
        return tuple(used + spares + recovering)

    def path_unhealthy(self, key: VtepKey, index: int) -> bool:
        vtep = self.vteps.get(key)
        path = vtep.paths.get(index) if vtep else None
        return path is not None and (key, path.identity) in self.unhealthy

    def health_deadlines(self) -> dict[tuple[VtepKey, int], int]:
        """(VTEP key, path index) -> deadline, for every probed path."""
        return {(t.key, i): self._deadline(self.vteps[t.key], i)
                for t in self.liveness_targets() for i, _ in t.paths}

    def _deadline(self, vtep: VtepState, index: int) -> int:
        """How long each probe of the path may go unanswered
        (liveness.reply_deadline_ns): its smoothed RTT plus margin, at least
        one probe period (with more paths than the budget probes each
        interval, each is probed less often)."""
        s = self.settings
        period = liveness.probe_period_ns(len(self.probed_paths(vtep)), s.probe_interval_ms,
                                          s.probe_budget_pps)
        srtt, margin = self._path_rtt(vtep, index)
        return liveness.reply_deadline_ns(period, s.probe_misses, srtt, margin)

    def _ack_wait(self, vtep: VtepState, index: int) -> int:
        """How long a QP on the path may see no ACK progress before it was
        surely cut off: max(probe period x misses, smoothed RTT + margin),
        as long as the path's probes may be silent before it is dead."""
        s = self.settings
        base = liveness.deadline_ns(len(self.probed_paths(vtep)), s.probe_interval_ms,
                                    s.probe_budget_pps, s.probe_misses)
        srtt, margin = self._path_rtt(vtep, index)
        return liveness.rtt_deadline_ns(base, srtt, margin)

    def _path_rtt(self, vtep: VtepState, index: int) -> tuple[int, int]:
        """(smoothed RTT, margin) of the path; the margin at least
        rtt_margin_ms. A path not sampled yet gets its VTEP's longest known
        RTT: its probes cross the same distance, and a few intervals can be
        shorter than one round trip on a WAN."""
        srtt, margin = self._rtt.get((vtep.key, index)) or max(
            (rtt for (key, _), rtt in self._rtt.items() if key == vtep.key),
            key=sum, default=(0, 0))
        return srtt, max(margin, self.settings.probe_rtt_margin_ms * 1_000_000)

    # ------------------------------------------------------------ restart
    def export_state(self) -> dict:
        """The path table, as plain data for adapters.statefile."""
        return {"vteps": [
            {"device": v.device, "address": v.address, "index": v.index, "local": v.local,
             "port_range": list(v.port_range),
             "paths": [{"index": p.index, "ifindex": p.ifindex, "uplink": p.uplink,
                        "gateway": p.gateway, "hops": list(p.hops), "ports": list(p.ports),
                        "alive": p.alive} for p in sorted(v.paths.values(), key=lambda p: p.index)]}
            for v in sorted(self.vteps.values(), key=lambda v: v.index)]}

    def restore_state(self, saved: dict, pinned_paths: Mapping[tuple[int, int], tuple]) -> list:
        """Take back the path table an earlier agent saved, when the adopted
        maps still hold exactly those paths (pinned_paths: (vtep, path) ->
        (ifindex, alive, ports) of every used path_table entry). Then the
        first discovery merges by identity, every index stays, and no QP
        moves. Anything that does not match is dropped whole."""
        try:
            vteps = {}
            for v in saved["vteps"]:
                vtep = VtepState(int(v["index"]), v["device"], v["address"], v["local"],
                                 tuple(v["port_range"]))
                for p in v["paths"]:
                    vtep.paths[int(p["index"])] = PathState(
                        int(p["index"]), int(p["ifindex"]), p["uplink"], p["gateway"],
                        [int(x) for x in p["ports"]], tuple(p["hops"]), bool(p["alive"]))
                vteps[vtep.key] = vtep
        except (KeyError, TypeError, ValueError) as exc:
            return [Warn(f"saved state unusable ({exc!r}): placements start afresh")]
        held = {(v.index, p.index): (p.ifindex, p.alive, tuple(p.ports))
                for v in vteps.values() for p in v.paths.values()}
        if held != dict(pinned_paths):
            return [Warn("saved state does not match the pinned path table: "
                         "placements start afresh")]
        self.vteps = vteps
        self.present = set(vteps)
        return [Note("restore", f"{len(vteps)} remote VTEPs and "
                                f"{len(held)} paths taken over from the pinned data plane")]

    # ------------------------------------------------------------ internals
    def _fdb_seen(self, fdb: FdbSeen) -> list:
        out: list = []
        for key, addr in fdb.vteps.items():
            if key not in self.vteps:
                index = self._free_vtep_index()
                if index is None:
                    out.append(Warn(f"more than {MAX_VTEPS} remote VTEPs: "
                                    f"{key[1]} on {key[0]} is not steered"))
                    continue
                self.vteps[key] = VtepState(index, key[0], key[1], addr.local, addr.port_range)
        self.present = {k for k in fdb.vteps if k in self.vteps}
        macs = tuple(sorted((mac, self.vteps[k].index) for mac, k in fdb.macs.items()
                            if k in self.vteps))
        out.append(SetMacVteps(macs))
        return out

    def _free_vtep_index(self) -> int | None:
        used = {v.index for v in self.vteps.values()}
        return next((i for i in range(MAX_VTEPS) if i not in used), None)

    def _apply(self, keys: set, qps: Mapping[bytes, QpView], cause: str, now: float,
               force_write: bool = False) -> list:
        """Merge each touched VTEP's discovery (less BFD-down uplinks) into
        its path table, write what changed, move the QPs that must move."""
        out: list = []
        warnings: list[str] = []
        down = self.bfd.down_uplinks
        for key in sorted(keys):
            vtep = self.vteps[key]
            found = [f for f in self._found.get(key, [])
                     if f.ifname not in down and (key, f.identity) not in self.unhealthy]
            changed = pathtable.merge_paths(vtep, found, warnings.append)
            if changed:
                self.generation += 1
            mine = self._active(vtep, qps, now)
            if changed or force_write:
                out += self._write_paths(vtep, mine)
            out += self._replace_qps(vtep, mine, cause, now)
            out += self._rearm(vtep)
        out += [Warn(w) for w in warnings]
        return out

    def _rearm(self, vtep: VtepState) -> list[WriteDeadline]:
        """Armed paths get the deadline they need now (_deadline); a path
        no longer probed (idle, or its index went away) is disarmed: silence
        there is ours, not the path's."""
        out = []
        probed = set(self.probed_paths(vtep))
        for (key, index), written in sorted(self._deadlines.items()):
            if key != vtep.key:
                continue
            path = vtep.paths.get(index)
            wanted = (self._deadline(vtep, index)
                      if path is not None and path.ports and index in probed else 0)
            if (wanted == 0) != (written == 0) or liveness.deadline_changed(written, wanted):
                out.append(WriteDeadline(vtep.index, index, wanted))
                if wanted:
                    self._deadlines[(key, index)] = wanted
                else:
                    del self._deadlines[(key, index)]
        return out

    def _write_paths(self, vtep: VtepState, qps: Mapping[bytes, QpView]) -> list[WritePath]:
        counts = Counter(q.path for q in qps.values())
        shares = shared_links(vtep.paths)
        out = []
        for i in range(MAX_PATHS):
            path = vtep.paths.get(i)
            if path is None:
                continue
            out.append(WritePath(
                vtep.index, i, path.ifindex, path.alive, tuple(path.ports),
                tuple(hash_for_port(p, *vtep.port_range) for p in path.ports),
                counts.get(i, 0), shares.get(i, 0)))
        return out

    def _replace_qps(self, vtep: VtepState, qps: Mapping[bytes, QpView], cause: str,
                     now: float) -> list:
        """Move orphans, re-slot QPs whose port now leads elsewhere and (when
        settings.rebalance) restore exact balance, with the fewest moves."""
        if not qps:
            self._in_use[vtep.key] = Counter()
            return []
        before, qps = qps, dict(qps)
        live = vtep.live_paths()
        suspect = self._suspect_paths(vtep, live)
        if suspect and set(live) - suspect:
            live = [i for i in live if i not in suspect]
        assignment = {k: (q.path if q.path in live else None) for k, q in qps.items()}
        orphans = [k for k, p in assignment.items() if p is None]
        recent = {k for k, t in self._moved_at.items() if now - t < self.settings.hysteresis_s}
        # QPs the data plane repaired lately stay where it put them if they can.
        recent |= {k for k, q in qps.items()
                   if q.repaired_ns and now - q.repaired_ns / 1e9 < self.settings.hysteresis_s}
        if not self.settings.rebalance:
            assignment = {k: p for k, p in assignment.items() if p is None}
        weights = path_weights({i: vtep.paths[i].identity for i in live},
                               self.settings.capacities)
        links = ({i: path_links(*vtep.paths[i].identity) for i in live}
                 if self.settings.end_to_end else None)
        moves = rebalance(assignment, live, {k: q.bytes for k, q in qps.items()}, recent,
                          weights=weights, links=links,
                          bottlenecks=bottleneck_links(links or {}, self.settings.capacities))
        moved = {m.qp for m in moves}
        # Ports in use per path, so a moved QP gets a port of its own.
        taken: dict[int, set[int]] = {}
        for k, q in qps.items():
            if k not in moved and q.path in live and q.port in vtep.paths[q.path].ports:
                taken.setdefault(q.path, set()).add(q.port)
        plan = [(m.qp, m.new_path, m.old_path) for m in moves]
        plan += [(k, q.path, q.path) for k, q in sorted(qps.items())
                 if k not in moved and q.path in live and q.port not in vtep.paths[q.path].ports]
        out: list = []
        for key, new_path, old_path in plan:
            path = vtep.paths[new_path]
            slot = _free_slot(path.ports, taken.setdefault(new_path, set()))
            port = path.ports[slot]
            taken[new_path].add(port)
            why = _reason(old_path, new_path, cause)
            if old_path is None:
                self.repairs[_repair_cause(cause)] += 1
            out.append(MoveQp(key, vtep.index, new_path, slot, port,
                              hash_for_port(port, *vtep.port_range), why))
            qps[key] = qps[key]._replace(path=new_path, slot=slot, port=port)
            self.replacements[why] += 1
            if why != "port_remap":
                self._moved_at[key] = now
        if plan:
            out += self._write_paths(vtep, qps)
        self._in_use[vtep.key] = Counter(q.path for q in qps.values())
        self._watch(before, [k for k in orphans if k in moved], repaired=False)
        return out

    # ------------------------------------------------------------ go-back NAKs
    def _watch(self, qps: Mapping[bytes, QpView], left: list[bytes], repaired: bool) -> None:
        """QPs that left a dead path (moved by the agent, or repaired by the
        data plane since the path fell silent) with data outstanding: until
        all they had sent is acknowledged, recheck_go_backs hands the
        requester a NAK whenever their ACKs stop moving for an ACK wait. A
        repair restarts the QP's wait (ack_wait_ns) and the QP keeps
        sending on the new path; one acknowledged since is left alone."""
        if not self.settings.go_back:
            return
        for key in left:
            q = qps[key]
            if not outstanding(q) or (repaired and q.ack_wait_ns > q.repaired_ns):
                continue
            watch = self._go_back_watch.get(key)
            if watch is not None and watch.tries and q.ack_wait_ns / 1e9 <= watch.at:
                continue       # the same wait: its NAKs so far count
            self._go_back_watch[key] = GoBackWatch(q.next_psn)

    def go_back_watched(self) -> list[bytes]:
        """QPs watched for go-back NAKs: recheck_go_backs wants them."""
        return list(self._go_back_watch)

    def recheck_go_backs(self, qps: Mapping[bytes, QpView], now: float) -> list:
        """GoBack for each watched QP whose ACKs have not moved for its
        path's ACK wait (_ack_wait; the first time less the margin by which
        ACKs and probe replies may part) since the last progress and the last NAK:
        its window went down with the path, and the responder's NAK too or
        it would have gone back. ACKs still coming for what crossed before
        the cut are progress, but not recovery: only ACKs for everything
        sent before the path died end the watch. Again while the resend is
        not acknowledged either (the new path died as well, or the
        responder's ACKs went back a way that died too, and it answers only
        what arrives), GO_BACK_TRIES in all; then the QP's own timer. A QP
        that sent nothing for qp_active_s is let go too (its job ended, or
        its timer is all that is left): a later QP with the same key starts
        afresh."""
        out = []
        margin_s = self.settings.probe_rtt_margin_ms / 1e3
        idle_before = int((now - self.settings.qp_active_s) * 1e9)
        for key, watch in list(self._go_back_watch.items()):
            q = qps.get(key)
            if q is None or not outstanding(q) or psn_reached(q.acked_psn, watch.until_psn) \
                    or q.last_ns < idle_before:
                del self._go_back_watch[key]       # recovered, gone, or given up
                continue
            vtep = self.vtep_by_index(q.vtep)
            wait_s = self._ack_wait(vtep, q.path) / 1e9 if vtep else margin_s
            quiet_since = max(q.ack_wait_ns / 1e9, watch.at)
            if now - quiet_since < (wait_s - margin_s if watch.tries == 0 else wait_s):
                continue
            if watch.tries >= GO_BACK_TRIES:
                del self._go_back_watch[key]
                continue
            watch.at, watch.tries = now, watch.tries + 1
            out.append(GoBack(key, q.acked_psn))
        return out

    def _suspect_paths(self, vtep: VtepState, live: list[int]) -> set[int]:
        """End to end, while paths of the VTEP are dead for want of probe
        replies: the live paths that cross a link only dead paths cross.
        A link on a path that answers its probes (armed) forwards, so it is
        cleared; what is left may be the failure, and a path across it
        that nobody probes would only look alive. QPs are not placed there
        while another path is left (the data plane's repairs avoid the
        same, path_entry.shares)."""
        dead = [p for p in vtep.paths.values() if (vtep.key, p.identity) in self.unhealthy]
        if not dead or not self.settings.end_to_end:
            return set()
        armed = {i for key, i in self._deadlines if key == vtep.key and i in vtep.paths
                 and vtep.paths[i].alive and (key, vtep.paths[i].identity) not in self.unhealthy}
        suspects = set().union(*(path_elements(p) for p in dead))
        for i in armed:
            suspects -= path_elements(vtep.paths[i])
        return {i for i in live
                if i not in armed and path_elements(vtep.paths[i]) & suspects}

    def _attribute_traffic(self, qps: Mapping[bytes, QpView]) -> None:
        for key, state in qps.items():
            prev = self._qp_seen.get(key, (0, 0))
            d_pk, d_by = state.packets - prev[0], state.bytes - prev[1]
            if d_pk < 0 or d_by < 0:   # evicted and re-created
                d_pk, d_by = state.packets, state.bytes
            self._qp_seen[key] = (state.packets, state.bytes)
            vtep = self.vtep_by_index(state.vtep)
            if vtep is not None and state.path in vtep.paths:
                vtep.paths[state.path].packets += d_pk
                vtep.paths[state.path].bytes += d_by
        for stale in set(self._qp_seen) - set(qps):
            del self._qp_seen[stale]


def path_elements(path: PathState) -> set:
    """What a path crosses: its first hop and every hop beyond."""
    return {("first", path.uplink, path.gateway)} | set(path.hops)


def shared_links(paths: Mapping[int, PathState]) -> dict[int, int]:
    """Per path, a bit for every other path that crosses one of its links
    (path_entry.shares): a QP that leaves a path on its own evidence does
    not know which link failed, so the data plane sends it, if it can, to a
    path that crosses none of them. Paths known only by their first hop
    share nothing: each is its own uplink."""
    elements = {i: path_elements(p) for i, p in paths.items() if p.hops}
    return {i: sum(1 << j for j, theirs in elements.items() if j != i and mine & theirs)
            for i, mine in elements.items()}


def failover_spares(live: list[int], counts: Mapping[int, int],
                    elements: Mapping[int, set] | None = None) -> list[int]:
    """A spare for each QP of each path in use: the path it would move to
    if that path died alone, sharing as little of it as possible (what kills
    a path often kills the paths through the same link), then the fewest
    QPs, then the lowest index. Probed, the spares answer, and qp_steer
    sends a repaired QP to the least-loaded path that answers."""
    elements = elements or {}
    spares: list[int] = []
    for dead in live:
        mine = elements.get(dead, set())
        load = {i: counts.get(i, 0) for i in live if i != dead}
        for _ in range(counts.get(dead, 0)):
            if not load:
                break
            target = min(load, key=lambda i: (len(mine & elements.get(i, set())), load[i], i))
            load[target] += 1
            if target not in spares:
                spares.append(target)
    return spares


def _reason(old_path: int | None, new_path: int, cause: str) -> str:
    if old_path == new_path:
        return "port_remap"
    if old_path is None:
        return "liveness" if cause == "liveness" else "dead_path"
    return "rebalance" if cause == "periodic" else "path_up"


def _repair_cause(cause: str) -> str:
    """What told the agent a path died: BFD, probes, or routing (route and
    link events, discovery)."""
    return cause if cause in ("bfd", "liveness") else "route"


def _free_slot(ports: list[int], taken: set[int]) -> int:
    """First slot whose port no other QP of the path uses (else wrap)."""
    for slot, port in enumerate(ports):
        if port not in taken:
            return slot
    return len(taken) % len(ports)


__all__ = ["Core", "Settings", "QpView", "ProbeTarget", "Found", "PathState"]
