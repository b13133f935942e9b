"""The qpagent daemon: ties the data plane, the path table, placement,
events, the control socket and the metrics exporter together.

One thread (run()) owns every decision and every map write; the control
socket and the exporter only read, under the same lock. Route and BFD
events wake the decision thread through one queue, so the time from an
event seen to the maps updated is short and measured.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from qpagent import __version__
from qpagent import bpfsys
from qpagent.config import Config
from qpagent.metrics import ReactionHistogram
from qpagent.placement import diverse_order, imbalance, rebalance
from qpagent.portmath import hash_for_port
from qpagent.tables import MAX_PATHS, PORTS_PER_PATH, QpTables

log = logging.getLogger("qpagent")

HOOK_NAMES = {0: "xdp ingress", 1: "tc egress", 2: "qp_steer", 3: "path_pin"}
RECONCILE_EVERY_S = 1.0
TOPOLOGY_EVERY_S = 5.0
HYSTERESIS_S = 10.0
PROBE_EVERY_S = 2.0
# A QP silent this long leaves the table: it no longer counts towards the
# balance, and if it speaks again the data plane places it afresh (an idle
# QP has nothing in flight to reorder).
QP_IDLE_S = 10.0
REPLACEMENT_REASONS = ("dead_path", "path_up", "rebalance", "port_remap")


class AgentError(RuntimeError):
    """A failure to report to the user as one clear line."""

    @property
    def user_message(self) -> str:
        return str(self)


@dataclass
class Found:
    """A path as discovered: its first hop, the hops beyond (end-to-end
    mode; empty otherwise) and the ports that take it."""
    ifindex: int
    ifname: str
    gateway: str | None
    hops: tuple
    ports: list[int]

    @property
    def identity(self):
        return (self.ifname, self.gateway, self.hops)


@dataclass
class PathState:
    index: int
    ifindex: int
    uplink: str
    gateway: str | None
    ports: list[int]
    hops: tuple = ()
    alive: bool = True
    packets: int = 0   # attributed from per-QP deltas
    bytes: int = 0

    @property
    def identity(self):
        return (self.uplink, self.gateway, self.hops)


@dataclass
class VtepState:
    index: int
    device: str
    address: str
    local: str
    port_range: tuple[int, int]
    paths: dict[int, PathState] = field(default_factory=dict)

    def live_paths(self) -> list[int]:
        return [i for i, p in self.paths.items() if p.alive and p.ports]


class Agent:
    def __init__(self, config: Config):
        self.cfg = config
        self.node = config.agent.node or socket.gethostname()
        self.started = time.time()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake: queue.Queue = queue.Queue()
        self.vteps: dict[tuple[str, str], VtepState] = {}
        self.events: deque = deque(maxlen=20)
        self.reactions: deque = deque(maxlen=10000)   # recent seconds, for percentiles
        self.reaction_histogram = ReactionHistogram()  # running totals, for Prometheus
        # Every reason from the start, so the first failure shows as an increase.
        self.replacements: Counter = Counter({r: 0 for r in REPLACEMENT_REASONS})
        self._stats_fd = contextlib.ExitStack()
        self.warnings: list[str] = []
        self.bfd_state = {"available": False, "reason": "not polled yet", "peers": []}
        self._qp_seen: dict[bytes, tuple[int, int]] = {}   # QP -> (packets, bytes) last read
        self._present: set = set()                          # (device, remote) in the FDB now
        self._fib = None
        self._moved_at: dict[bytes, float] = {}
        self.dp = None
        self.tables: QpTables | None = None
        self._control = None
        self._metrics = None
        self._monitor = None
        self._bfd_thread = None

    # ------------------------------------------------------------ lifecycle
    def run(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        try:
            self.start()
            self._loop()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.put(("stop", time.monotonic(), ""))

    def start(self) -> None:
        from qpagent.datapath import DataPlane
        cfg = self.cfg
        self.dp = DataPlane(
            vxlan_devices=list(cfg.steer.vxlan_devices),
            uplinks=list(cfg.steer.uplinks),
            count_xdp=list(cfg.count.xdp),
            count_tc=list(cfg.count.tc_egress),
            xdp_mode=cfg.count.xdp_mode,
        )
        self.dp.attach()
        if self.cfg.agent.bpf_stats:
            try:   # program run time for the metrics: a few ns per run
                self._stats_fd.enter_context(bpfsys.bpf_stats())
            except OSError as exc:
                self._warn(f"BPF run-time statistics unavailable: {exc}")
        self.tables = QpTables(self.dp)
        self.tables.set_pin_uplinks(self._uplink_indexes())
        from qpagent.fib import Fib
        self._fib = Fib()
        self._check_sysctls()
        with self._lock:
            self._refresh_topology(reason="start", seen=time.monotonic())
        self._start_services()
        self._event("start", f"attached {len(self.dp.programs())} programs; "
                             f"{len(self.vteps)} remote VTEPs")
        log.info("qpagent %s running on %s", __version__, self.node)

    def close(self) -> None:
        for closer in (self._stop_services, self._detach, self._stats_fd.close):
            try:
                closer()
            except Exception as exc:  # keep tearing down whatever happens
                log.warning("shutdown: %s", exc)

    def _detach(self):
        if self._fib is not None:
            self._fib.close()
            self._fib = None
        if self.dp is not None:
            self.dp.detach()
            self.dp = None

    def _start_services(self) -> None:
        from qpagent.control import ControlServer
        from qpagent.events import RouteMonitor
        self._control = ControlServer(self.cfg.agent.control_socket, self._handle_request)
        self._control.start()
        if self.cfg.agent.metrics_address:
            from qpagent.metrics import start_metrics_server
            self._metrics = start_metrics_server(self.cfg.agent.metrics_address, self)
        self._monitor = RouteMonitor(self._wake)
        self._monitor.start()
        if self.cfg.frr.enabled is not False:
            self._bfd_thread = threading.Thread(target=self._bfd_loop, name="bfd", daemon=True)
            self._bfd_thread.start()
        if self.cfg.steer.end_to_end:
            threading.Thread(target=self._probe_loop, name="probe", daemon=True).start()

    def _stop_services(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.stop()
        if self._control is not None:
            self._control.stop()
        if self._metrics is not None and hasattr(self._metrics, "shutdown"):
            self._metrics.shutdown()

    # ------------------------------------------------------------ main loop
    def _loop(self) -> None:
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        next_topology = time.monotonic() + TOPOLOGY_EVERY_S
        while not self._stop.is_set():
            timeout = max(0.0, min(next_reconcile, next_topology) - time.monotonic())
            try:
                first = self._wake.get(timeout=timeout)
            except queue.Empty:
                first = None
            if first is not None:
                batch = [first] + self._drain()
                self._react(batch)
            now = time.monotonic()
            if now >= next_topology:
                with self._lock:
                    self._refresh_topology(reason="periodic", seen=None)
                    for line in self.dp.reattach_changed():
                        self._event("reattach", line)
                next_topology = now + TOPOLOGY_EVERY_S
            if now >= next_reconcile:
                with self._lock:
                    self._reconcile()
                next_reconcile = now + RECONCILE_EVERY_S

    def _drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self._wake.get_nowait())
            except queue.Empty:
                return items

    def _react(self, batch) -> None:
        probes = [e for e in batch if e[0] == "probe"]
        relevant = [e for e in batch if e[0] not in ("stop", "probe")]
        with self._lock:
            for _, _, traced in probes:
                moves = self._refresh_topology(reason="probe", seen=None, full=False,
                                               found=traced)
                if moves:
                    self._event("probe", f"end-to-end paths changed: {moves} QP moves")
        if not relevant:
            return
        seen = min(e[1] for e in relevant)
        kinds = Counter(e[0] for e in relevant)
        detail = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.items())
        with self._lock:
            self._refresh_topology(reason=detail, seen=seen, full=False)
            # After the maps are right: a recreated interface needs its programs back.
            if any(k.startswith("link") for k in kinds):
                for line in self.dp.reattach_changed():
                    self._event("reattach", line)

    # ------------------------------------------------------------ topology
    def _uplink_indexes(self) -> list[int]:
        return [i for i in (_ifindex(n) for n in self.cfg.steer.uplinks) if i]

    def _candidate_ports(self, port_range: tuple[int, int]) -> list[int]:
        lo = max(self.cfg.steer.source_ports[0], port_range[0])
        hi = min(self.cfg.steer.source_ports[1], port_range[1] - 1)
        if lo > hi:
            return []
        return list(range(lo, hi + 1))

    def _read_fdb(self) -> None:
        """Remote VTEPs and MAC -> VTEP from each VXLAN device's FDB. Slow
        (pyroute2), so done at start and periodically, not per route event."""
        from qpagent.vxlan import VxlanError, fdb_remotes, vxlan_info
        macs: dict[str, tuple[str, str]] = {}
        present = set()
        for dev in self.cfg.steer.vxlan_devices:
            try:
                info = vxlan_info(dev)
                remotes = fdb_remotes(dev)
            except VxlanError as exc:
                self._warn(str(exc))
                continue
            for mac, remote in remotes:
                key = (dev, remote)
                present.add(key)
                macs[mac] = key
                if key not in self.vteps:
                    self.vteps[key] = VtepState(self._free_vtep_index(), dev, remote,
                                                info.local, (info.port_min, info.port_max))
        self._present = present
        self.tables.set_mac_vteps({mac: self.vteps[k].index for mac, k in macs.items()})

    def _refresh_topology(self, reason: str, seen: float | None, full: bool = True,
                          found: dict | None = None) -> int:
        """Re-learn each remote VTEP's paths, write the maps, move QPs whose
        path died or whose port now leads elsewhere. Returns the moves.
        full: also re-read the FDB.
        found: paths the prober thread traced, per VTEP key (end-to-end mode);
        only those VTEPs are touched."""
        if full:
            self._read_fdb()
        bfd_down = self._bfd_down_uplinks()   # BFD may know before the FIB does
        qps_all = self.tables.all_qps()
        moves = 0
        for key, vtep in list(self.vteps.items()):
            if key not in self._present:
                discovered = []
            elif found is not None:
                if key not in found:
                    continue
                discovered = found[key]
            elif self.cfg.steer.end_to_end and vtep.paths:
                # Probing takes a round trip per hop: the prober thread does
                # it; here only what the FIB alone can tell.
                discovered = self._verify_first_hops(vtep)
            else:
                discovered = self._discover(vtep, self._fib)
            discovered = [p for p in discovered if p.ifname not in bfd_down]
            changed = self._merge_paths(vtep, discovered)
            qps = {k: q for k, q in qps_all.items() if q.vtep == vtep.index}
            if changed or reason == "start":
                self._write_paths(vtep, qps)
            moves += self._replace_qps(vtep, qps, reason)
        if seen is not None and reason not in ("start", "periodic"):
            elapsed = time.monotonic() - seen
            self.reactions.append(elapsed)
            self.reaction_histogram.observe(elapsed)
            self._event("reaction", f"{reason}: {moves} QP moves", reaction_ms=elapsed * 1e3)
        return moves

    def _discover(self, vtep: VtepState, fib) -> list[Found]:
        """Paths to one remote VTEP, numbered so that the first QPs of an
        idle VTEP take disjoint links (placement.diverse_order). Reads only
        the VTEP's fixed fields, so the prober thread may call it."""
        from qpagent.fib import FibError
        from qpagent.paths import discover_paths
        e2e = self.cfg.steer.end_to_end
        per_path = self.cfg.steer.ports_per_path
        try:
            first = discover_paths(vtep.local, vtep.address,
                                   self._candidate_ports(vtep.port_range),
                                   set(self.cfg.steer.uplinks),
                                   # beyond the first hop a path splits again
                                   ports_per_path=min(64, per_path * 4) if e2e else per_path,
                                   fib=fib)
        except FibError as exc:   # no route at all: every path is dead
            self._warn(f"VTEP {vtep.address}: {exc}")
            return []
        found = [Found(p.ifindex, p.ifname, p.gateway, (), p.ports[:per_path]) for p in first]
        if e2e:
            found = self._split_by_hops(vtep, first, per_path) or found
        order = diverse_order([(f.ifname, f.gateway) + f.hops for f in found])
        return [found[i] for i in order]

    def _split_by_hops(self, vtep: VtepState, first, per_path: int) -> list[Found]:
        """Group each first-hop path's ports by every hop they cross."""
        from qpagent.probe import SILENT_HOP, ProbeError, trace_ports
        ports = [port for p in first for port in p.ports]
        try:
            traces = trace_ports(vtep.local, vtep.address, ports)
        except ProbeError as exc:
            self._warn(f"end-to-end probes to {vtep.address}: {exc}")
            return []
        # A port with a hop unanswered would make a path of its own: keep
        # only ports traced as far as the longest trace.
        depth = max((len(h) for h in traces.values()), default=0)
        if depth == 0:
            self._warn(f"end-to-end probes to {vtep.address}: no router answered")
            return []
        groups: dict[tuple, list[int]] = {}
        for p in first:
            for port in p.ports:
                hops = tuple(traces.get(port, ()))
                if len(hops) == depth and SILENT_HOP not in hops:
                    groups.setdefault((p.ifindex, p.ifname, p.gateway, hops), []).append(port)
        return [Found(i, name, gw, hops, ports[:per_path])
                for (i, name, gw, hops), ports in groups.items()]

    def _verify_first_hops(self, vtep: VtepState) -> list[Found]:
        """Fast check after a route event in end-to-end mode (probing takes
        a round trip per hop): keep each live path's ports that the FIB still
        sends to its first hop; the periodic refresh re-probes the rest."""
        from qpagent.fib import FibError
        found = []
        for path in vtep.paths.values():
            if not path.alive:
                continue
            ok = []
            for port in path.ports:
                try:
                    route = self._fib.lookup(vtep.address, src=vtep.local, sport=port)
                except FibError:
                    break
                if (route.oif_name, route.gateway) == (path.uplink, path.gateway):
                    ok.append(port)
            if ok:
                found.append(Found(path.ifindex, path.uplink, path.gateway, path.hops, ok))
        return found

    def _free_vtep_index(self) -> int:
        used = {v.index for v in self.vteps.values()}
        for i in range(len(used) + 1):
            if i not in used:
                return i
        raise AgentError("too many remote VTEPs")

    def _merge_paths(self, vtep: VtepState, discovered: list[Found]) -> bool:
        """Keep path indexes stable by identity (uplink, gateway, hops)."""
        changed = False
        by_identity = {p.identity: p for p in vtep.paths.values()}
        seen = {found.identity for found in discovered}
        # Paths that are gone die first, so their indexes can be reused by
        # the paths that replace them (a full table must not block those).
        for ident, path in by_identity.items():
            if ident not in seen and path.alive:
                path.alive = False
                changed = True
        for found in discovered:
            ports = list(found.ports)[:PORTS_PER_PATH]
            old = by_identity.get(found.identity)
            if old is None:
                index = self._free_path_index(vtep, seen)
                if index is None:
                    self._warn(f"VTEP {vtep.address}: more than {MAX_PATHS} paths")
                    continue
                vtep.paths[index] = PathState(index, found.ifindex, found.ifname,
                                              found.gateway, ports, found.hops)
                changed = True
            elif old.ports != ports or not old.alive or old.ifindex != found.ifindex:
                old.ports, old.alive, old.ifindex = ports, True, found.ifindex
                changed = True
        return changed

    @staticmethod
    def _free_path_index(vtep: VtepState, keep: set) -> int | None:
        """A never-used index, else one of a dead path (its QPs were moved
        when it died), so hop changes do not exhaust the table."""
        for i in range(MAX_PATHS):
            if i not in vtep.paths:
                return i
        for i, path in sorted(vtep.paths.items()):
            if not path.alive and path.identity not in keep:
                del vtep.paths[i]
                return i
        return None

    def _write_paths(self, vtep: VtepState, qps: dict) -> None:
        counts = Counter(q.path for q in qps.values())
        for i in range(MAX_PATHS):
            path = vtep.paths.get(i)
            if path is None:
                continue
            hashes = [hash_for_port(p, *vtep.port_range) for p in path.ports]
            self.tables.write_path(vtep.index, i, path.ifindex, path.alive,
                                   path.ports, hashes, counts.get(i, 0))

    def _replace_qps(self, vtep: VtepState, qps: dict, reason: str) -> int:
        """Move orphans, re-slot QPs whose port now leads elsewhere, and
        (steer.rebalance) restore exact balance. Updates `qps` in place."""
        if not qps:
            return 0
        live = vtep.live_paths()
        assignment = {k: (q.path if q.path in live else None) for k, q in qps.items()}
        now = time.monotonic()
        recent = {k for k, t in self._moved_at.items() if now - t < HYSTERESIS_S}
        qp_bytes = {k: q.bytes for k, q in qps.items()}
        if not self.cfg.steer.rebalance:
            assignment = {k: p for k, p in assignment.items() if p is None}
        moves = rebalance(assignment, live, qp_bytes, recent)
        moved = {m.qp for m in moves}
        # Ports in use per path, so a moved QP gets a port of its own.
        taken: dict[int, set[int]] = {}
        for k, q in qps.items():
            if k not in moved and q.path in live and q.port in vtep.paths[q.path].ports:
                taken.setdefault(q.path, set()).add(q.port)
        plan = [(m.qp, m.new_path, m.old_path) for m in moves]
        plan += [(k, q.path, q.path) for k, q in qps.items()
                 if k not in moved and q.path in live and q.port not in vtep.paths[q.path].ports]
        for key, new_path, old_path in plan:
            path = vtep.paths[new_path]
            slot = _free_slot(path.ports, taken.setdefault(new_path, set()))
            port = path.ports[slot]
            taken[new_path].add(port)
            self.tables.move_qp(key, vtep.index, new_path, slot, port,
                                hash_for_port(port, *vtep.port_range))
            qps[key] = qps[key]._replace(path=new_path, slot=slot, port=port)
            if old_path == new_path:
                why = "port_remap"
            elif old_path is None:
                why = "dead_path"
            else:
                why = "rebalance" if reason == "periodic" else "path_up"
            self.replacements[why] += 1
            if why != "port_remap":
                self._moved_at[key] = now
        if plan:
            self._write_paths(vtep, qps)
        return len(moves)

    def _reconcile(self) -> None:
        """Per-path counts and bytes from the QP table; forget idle QPs;
        balance when asked."""
        qps_all = self.tables.all_qps()
        idle_before = time.monotonic_ns() - int(QP_IDLE_S * 1e9)   # bpf_ktime_get_ns's clock
        idle = [k for k, q in qps_all.items() if q.last_ns < idle_before]
        for key in idle:
            self.tables.forget_qp(key)
            del qps_all[key]
        if idle:
            self._event("expire", f"{len(idle)} QPs idle for {QP_IDLE_S:.0f} s forgotten")
        for key, state in qps_all.items():
            prev = self._qp_seen.get(key, (0, 0))
            d_pk, d_by = state.packets - prev[0], state.bytes - prev[1]
            if d_pk < 0 or d_by < 0:   # evicted and re-created
                d_pk, d_by = state.packets, state.bytes
            self._qp_seen[key] = (state.packets, state.bytes)
            vtep = self._vtep_by_index(state.vtep)
            if vtep is not None and state.path in vtep.paths:
                vtep.paths[state.path].packets += d_pk
                vtep.paths[state.path].bytes += d_by
        for stale in set(self._qp_seen) - set(qps_all):
            del self._qp_seen[stale]
        for vtep in self.vteps.values():
            qps = {k: q for k, q in qps_all.items() if q.vtep == vtep.index}
            if self.cfg.steer.rebalance and qps:
                self._replace_qps(vtep, qps, "periodic")
            self.tables.set_path_counts(vtep.index, Counter(q.path for q in qps.values()))
        cutoff = time.monotonic() - HYSTERESIS_S
        for k in [k for k, t in self._moved_at.items() if t < cutoff]:
            del self._moved_at[k]

    def _vtep_by_index(self, index: int) -> VtepState | None:
        for vtep in self.vteps.values():
            if vtep.index == index:
                return vtep
        return None

    # ------------------------------------------------------------ BFD
    def _bfd_loop(self) -> None:
        from qpagent.events import BfdPoller
        poller = BfdPoller(self.cfg.frr.namespace or None, vtysh=self.cfg.frr.vtysh)
        last = None
        while not self._stop.wait(self.cfg.agent.poll_interval):
            result = poller.poll()
            state = {"available": result.available, "reason": result.reason,
                     "peers": [dict(p) for p in result.peers]}
            down = {(p.get("peer"), p.get("interface")) for p in result.peers
                    if p.get("status") != "up"}
            with self._lock:
                self.bfd_state = state
            if last is not None and down != last:
                self._wake.put(("bfd", time.monotonic(), f"{len(down)} peers down"))
            last = down
            if not result.available and self.cfg.frr.enabled is True:
                self._warn(f"FRR: {result.reason}")

    # ------------------------------------------------------------ probes
    def _probe_loop(self) -> None:
        """Trace every remote VTEP's ports now and then, off the decision
        thread (a trace waits a round trip per hop), and hand the paths
        found to it through the wake-up queue."""
        from qpagent.fib import Fib
        fib = Fib()
        try:
            while not self._stop.wait(PROBE_EVERY_S):
                with self._lock:
                    targets = [(k, v) for k, v in self.vteps.items() if k in self._present]
                traced = {}
                for key, vtep in targets:
                    found = self._discover(vtep, fib)
                    if self._trustworthy(vtep, found):
                        traced[key] = found
                self._wake.put(("probe", time.monotonic(), traced))
        finally:
            fib.close()

    def _trustworthy(self, vtep: VtepState, found: list[Found]) -> bool:
        """A probe round that saw fewer hops than the live paths have (a
        router too busy to answer every TTL, a lost reply) says nothing about
        the paths: adopting it would kill them all. First-hop changes still
        reach the agent through route events and the FIB."""
        with self._lock:
            depth_now = max((len(p.hops) for p in vtep.paths.values() if p.alive), default=0)
        depth_new = max((len(f.hops) for f in found), default=0)
        return bool(found) and depth_new >= depth_now

    def _bfd_down_uplinks(self) -> set[str]:
        uplinks = set(self.cfg.steer.uplinks)
        return {p.get("interface") for p in self.bfd_state.get("peers", [])
                if p.get("status") not in ("up", None) and p.get("interface") in uplinks}

    # ------------------------------------------------------------ reporting
    def _event(self, kind: str, detail: str, reaction_ms: float | None = None) -> None:
        self.events.append({"time": time.time(), "kind": kind, "detail": detail,
                            "reaction_ms": reaction_ms})
        log.info("%s: %s%s", kind, detail,
                 f" ({reaction_ms:.2f} ms)" if reaction_ms is not None else "")

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            log.warning("%s", text)

    def _check_sysctls(self) -> None:
        try:
            with open("/proc/sys/net/ipv4/fib_multipath_hash_policy") as f:
                if f.read().strip() == "0":
                    self._warn("net.ipv4.fib_multipath_hash_policy is 0: ECMP ignores "
                               "UDP ports here, so every port takes one path; set it to 1")
        except OSError:
            pass

    def reaction_samples(self) -> list[float]:
        with self._lock:
            return list(self.reactions)

    def snapshot(self, top_n: int | None = None) -> dict:
        """Everything `qpagent status` shows. The maps are read without the
        decision lock (the kernel keeps them consistent per entry), so a
        scrape never delays a reaction."""
        top_n = self.cfg.agent.top_qps if top_n is None else top_n
        qps_all = self.tables.all_qps() if self.tables else {}
        kernel = {
            "programs": self.dp.programs() if self.dp else [],
            "parse": self.tables.parse_counters(HOOK_NAMES) if self.tables else [],
            "steer_events": self.tables.events("steer") if self.tables else {},
            "pin_events": self.tables.events("pin") if self.tables else {},
        }
        with self._lock:
            state = self._snapshot(top_n, qps_all)
        state.update(kernel)
        return state

    def _snapshot(self, top_n: int, qps_all: dict) -> dict:
        vteps = []
        imb = {}
        addr_of = {v.index: v for v in self.vteps.values()}
        for vtep in sorted(self.vteps.values(), key=lambda v: v.index):
            counts = Counter(s.path for s in qps_all.values() if s.vtep == vtep.index)
            vteps.append({
                "index": vtep.index, "address": vtep.address, "device": vtep.device,
                "paths": [{"index": p.index, "uplink": p.uplink, "gateway": p.gateway,
                       "hops": list(p.hops),
                           "alive": p.alive, "ports": list(p.ports), "qps": counts.get(p.index, 0),
                           "packets": p.packets, "bytes": p.bytes}
                          for p in sorted(vtep.paths.values(), key=lambda p: p.index)],
            })
            imb[vtep.address] = round(imbalance(counts, vtep.live_paths()), 4)
        top = sorted(qps_all.items(), key=lambda kv: -kv[1].bytes)[:top_n]
        qps = []
        for key, s in top:
            vtep = addr_of.get(s.vtep)
            path = vtep.paths.get(s.path) if vtep else None
            src, dst, dqp = self.tables.describe_qp(key)
            qps.append({"src": src, "dst": dst, "dqp": dqp,
                        "vtep": vtep.address if vtep else None, "path": s.path,
                        "uplink": path.uplink if path else None, "port": s.port,
                        "packets": s.packets, "bytes": s.bytes, "moves": s.moves})
        samples = sorted(self.reactions)
        return {
            "node": self.node, "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "vteps": vteps, "qp_total": len(qps_all), "qps": qps, "imbalance": imb,
            "bfd": dict(self.bfd_state), "events": list(self.events),
            "replacements": dict(self.replacements),
            "reaction_ms": _summary_ms(samples),
            "warnings": list(self.warnings),
        }

    def flows(self, limit: int = 100) -> list[dict]:
        with self._lock:
            return self.tables.flows(limit, HOOK_NAMES) if self.tables else []

    def _handle_request(self, request: dict):
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"node": self.node, "pid": os.getpid()}
        if cmd == "status":
            return self.snapshot(int(request.get("top", self.cfg.agent.top_qps)))
        if cmd == "flows":
            return self.flows(int(request.get("limit", 100)))
        raise ValueError(f"unknown command: {cmd!r}")


def _summary_ms(samples: list[float]) -> dict:
    """Nearest-rank percentiles of sorted samples (seconds), in ms."""
    if not samples:
        return {"count": 0, "p50": None, "p99": None, "max": None}

    def pct(q):
        return round(samples[max(0, math.ceil(q * len(samples)) - 1)] * 1e3, 3)
    return {"count": len(samples), "p50": pct(0.5), "p99": pct(0.99),
            "max": round(samples[-1] * 1e3, 3)}


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _free_slot(ports: list[int], taken: set[int]) -> int:
    """First slot whose port no other QP of the path uses (else wrap)."""
    for slot, port in enumerate(ports):
        if port not in taken:
            return slot
    return len(taken) % len(ports)

