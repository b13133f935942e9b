"""The qpagent daemon: one loop between the sources and the core.

    sources (routes, BFD, probes, timers, FDB) --> one queue --> loop
    loop --> core (decisions) --> actions --> adapters (maps, state file)

The loop thread is the only one that decides and writes maps. The control
socket and the metrics exporter read under the same lock; the maps
themselves are read without it (the kernel keeps each entry consistent), so
a scrape never delays a reaction. Reactions are timed from the moment a
source saw a change to the moment the maps were written.

In host mode (a configuration that steers nothing, only counts) the loop
has no core work: no FDB, paths, probes or BFD. It keeps the counters
attached (an interface recreated gets them back) and serves status, flows
and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque

from qpagent import __version__, bpfsys, neighbours
from qpagent.adapters.goback_sender import GoBackSender
from qpagent.adapters.maps import MapWriter
from qpagent.adapters.statefile import StateFile
from qpagent.config import Config
from qpagent.contract import HOOK_NAMES
from qpagent.core.actions import DisarmAll, MoveQp
from qpagent.core.decisions import Core, Settings
from qpagent.core.inputs import BfdSeen, PathHealthChanged, PathRttSeen, PathsSeen, Tick
from qpagent.flowqps import FlowQpSummary
from qpagent.metrics import ReactionHistogram
from qpagent.sources.discovery import PathDiscovery, Prober, Target
from qpagent.sources.fdb import read_fdb
from qpagent.sources.signals import BfdChanged, ProbeRound, RouteChanged, Stop
from qpagent.status import core_view, liveness_view, repairs_view, summary_ms

log = logging.getLogger("qpagent")

RECONCILE_EVERY_S = 1.0
TOPOLOGY_EVERY_S = 5.0
# QPs watched for go-back NAKs are looked at this often until all they had
# sent is acknowledged (Core.recheck_go_backs): a few lookups each time.
GO_BACK_RECHECK_S = 0.01


class AgentError(RuntimeError):
    """A failure to report to the user as one clear line."""

    @property
    def user_message(self) -> str:
        return str(self)


def node_name(config: Config) -> str:
    """The node this agent speaks for: agent.node, else the hostname."""
    return config.agent.node or socket.gethostname()


class Agent:
    def __init__(self, config: Config):
        self.cfg = config
        self.node = node_name(config)
        self.started = time.time()
        live, repair = config.liveness, config.repair
        self.core = Core(Settings(rebalance=config.steer.rebalance,
                                  end_to_end=config.steer.end_to_end,
                                  probe_interval_ms=live.interval_ms, probe_misses=live.misses,
                                  probe_budget_pps=live.budget_pps,
                                  probe_rtt_margin_ms=live.rtt_margin_ms,
                                  repair_holddown_ms=repair.holddown_ms,
                                  repair_retransmit=repair.retransmit,
                                  repair_nak=repair.nak, repair_stall_ms=repair.stall_ms,
                                  go_back=repair.go_back,
                                  capacities=dict(config.steer.capacities)))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self.events: deque = deque(maxlen=20)
        self.reactions: deque = deque(maxlen=10000)   # recent seconds, for percentiles
        self.reaction_histogram = ReactionHistogram()  # running totals, for Prometheus
        self.warnings: list[str] = []
        self.dp = None
        self.tables = None
        self._writer: MapWriter | None = None
        self._go_back: GoBackSender | None = None
        self._discovery: PathDiscovery | None = None
        self._state = StateFile(self.node)
        self._saved_generation = -1
        self._stats = contextlib.ExitStack()
        self._services: list = []
        self._prober: Prober | None = None
        self._liveness = None                 # sources.liveness.LivenessSource
        self._flow_qps = FlowQpSummary(lambda: self.tables.flows(sys.maxsize, HOOK_NAMES))
        self._gateways: set = set()
        # Reactions by what triggered them (bfd, route, liveness), seconds.
        self.reactions_by_cause: dict[str, deque] = {}

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
        self._queue.put(Stop(time.monotonic()))

    def start(self) -> None:
        from qpagent.datapath import DataPlane
        from qpagent.tables import QpTables
        cfg = self.cfg
        self.dp = DataPlane(vxlan_devices=list(cfg.steer.vxlan_devices),
                            uplinks=list(cfg.steer.uplinks),
                            count_xdp=list(cfg.count.xdp), count_tc=list(cfg.count.tc_egress),
                            xdp_mode=cfg.count.xdp_mode, node=self.node)
        self.dp.attach()
        if cfg.agent.bpf_stats:
            try:   # program run time for the metrics: a few ns per run
                self._stats.enter_context(bpfsys.bpf_stats())
            except OSError as exc:
                self._warn(f"BPF run-time statistics unavailable: {exc}")
        self.tables = QpTables(self.dp)
        self._go_realtime(cfg.agent.realtime_priority)
        if not cfg.steers:
            self._start_services()
            self._note("start", f"attached {len(self.dp.programs())} programs; "
                                f"{cfg.describe()}")
            log.info("qpagent %s running on %s in host mode", __version__, self.node)
            return
        self.tables.set_pin_uplinks(self._uplink_indexes())
        if cfg.repair.go_back:
            self._go_back = GoBackSender(self.tables, cfg.steer.vxlan_devices)
        self._writer = MapWriter(self.tables, self._go_back)
        self._discovery = PathDiscovery(**self._discovery_args())
        if self.cfg.frr.enabled is False:
            self.core.bfd = BfdSeen(False, "FRR not asked: frr.enabled = false")
        self._check_sysctls()
        with self._lock:
            self._apply(self.core.startup())
            if self.dp.adopted:
                self._restore()
            self._topology("start", seen=None)
        self._start_services()
        self._note("start", f"attached {len(self.dp.programs())} programs; "
                            f"{len(self.core.vteps)} remote VTEPs")
        log.info("qpagent %s running on %s", __version__, self.node)

    def _go_realtime(self, priority: int) -> None:
        """After the compile (clang at real-time priority would starve the
        host), before any thread starts: they inherit it. Processes we run
        (vtysh, ip) do not."""
        if not priority:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(priority))
            self._note("start", f"running at SCHED_FIFO priority {priority}")
        except OSError as exc:
            self._warn(f"agent.realtime_priority {priority}: {exc}; normal scheduling")

    def close(self) -> None:
        for closer in (self._stop_services, self._release, self._stats.close):
            try:
                closer()
            except Exception as exc:  # keep tearing down whatever happens
                log.warning("shutdown: %s", exc)

    def _release(self) -> None:
        if self._writer is not None and self._liveness is not None:
            # Nobody probes any more: unchecked paths keep steering.
            self._writer.apply([DisarmAll()])
        if self._discovery is not None:
            self._discovery.close()
            self._discovery = None
        if self._go_back is not None:
            self._go_back.close()
        if self.dp is not None:
            # Programs stay attached and steering; `qpagent purge` removes them.
            self.dp.release()
            self.dp = None

    def _discovery_args(self) -> dict:
        steer = self.cfg.steer
        return {"uplinks": steer.uplinks, "source_ports": steer.source_ports,
                "ports_per_path": steer.ports_per_path, "end_to_end": steer.end_to_end}

    def _start_services(self) -> None:
        from qpagent.control import ControlServer, agent_handler
        from qpagent.sources.bfd import BfdPoller, BfdWatcher
        from qpagent.sources.routes import RouteMonitor
        control = ControlServer(self.cfg.agent.control_socket, agent_handler(self))
        self._services.append(control.start())
        if self.cfg.agent.metrics_address:
            from qpagent.metrics import start_metrics_server
            self._services.append(start_metrics_server(self.cfg.agent.metrics_address, self))
        self._services.append(RouteMonitor(self._queue).start())
        if not self.cfg.steers:
            return   # host mode: link events re-attach the counters; nothing else to watch
        if self.cfg.frr.enabled is not False:
            poller = BfdPoller(self.cfg.frr.namespace or None, vtysh=self.cfg.frr.vtysh)
            self._services.append(BfdWatcher(poller, set(self.cfg.steer.uplinks), self._queue,
                                             self.cfg.agent.poll_interval).start())
        if self.cfg.steer.end_to_end:
            self._prober = Prober(self._discovery_args(), self._queue)
            self._prober.set_targets([Target.of(v) for v in self.core.probe_targets()])
            self._services.append(self._prober.start())
        if self.cfg.liveness.enabled:
            from qpagent.sources.liveness import LivenessSource
            live = self.cfg.liveness
            self._liveness = LivenessSource(
                self._queue, self.tables.health, live.interval_ms, live.budget_pps,
                live.hold_down_ms, live.misses, believe_until=self.tables.believe_probes_until,
                answering_again=self._prober.soon if self._prober else lambda _keys: None,
                dscp=live.dscp)
            self._set_liveness_targets()
            self._services.append(self._liveness.start())

    def _stop_services(self) -> None:
        self._stop.set()
        for service in reversed(self._services):
            if service is not None:
                service.stop()
        self._services = []

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        next_topology = time.monotonic() + TOPOLOGY_EVERY_S
        while not self._stop.is_set():
            due = min(next_reconcile, next_topology)
            if self.core.go_back_watched():
                due = min(due, time.monotonic() + GO_BACK_RECHECK_S)
            timeout = max(0.0, due - time.monotonic())
            try:
                batch = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self._react(batch)
            if self.core.go_back_watched():
                with self._lock:
                    self._apply(self.core.recheck_go_backs(
                        self.tables.qps(self.core.go_back_watched()), time.monotonic()))
            now = time.monotonic()
            if now >= next_topology:
                with self._lock:
                    if self.cfg.steers:
                        self._topology("periodic", seen=None)
                    for line in self.dp.reattach_changed():
                        self._note("reattach", line)
                next_topology = now + TOPOLOGY_EVERY_S
            if now >= next_reconcile:
                if self.cfg.steers:
                    with self._lock:
                        qps = self.tables.all_qps()
                        self._apply(self.core.tick(Tick(time.monotonic_ns()), qps))
                        self._set_liveness_targets()   # the paths in use may have changed
                elif self.tables and self._flow_qps.due():
                    self._flow_qps.refresh()   # a big table: status and scrapes read this sum
                # Advanced in host mode too, or the loop would spin.
                next_reconcile = now + RECONCILE_EVERY_S

    def _react(self, batch: list) -> None:
        with self._lock:
            health = [e for e in batch if isinstance(e, PathHealthChanged)]
            if health:
                self._health_changed(health)
            for item in batch:
                if isinstance(item, ProbeRound):
                    for text in item.warnings:
                        self._warn(text)
                    moves = self._decide(self.core.paths_seen, item.paths)
                    self._set_probe_targets()      # the paths' depth and ports may have changed
                    if moves:
                        self._note("probe", f"end-to-end paths changed: {moves} QP moves")
                elif isinstance(item, PathRttSeen):
                    self._decide(self.core.path_rtt, item)
                    self._set_liveness_targets()
                elif isinstance(item, BfdChanged):
                    if not item.bfd.available and self.cfg.frr.enabled is True:
                        self._warn(f"FRR: {item.bfd.reason}")
                    changed = item.bfd.down_uplinks != self.core.bfd.down_uplinks
                    moves = self._decide(self.core.bfd_seen, item.bfd)
                    if changed:
                        self._timed(item.seen, "bfd", moves, kind="bfd")
            routes = [e for e in batch if isinstance(e, RouteChanged)]
            if not routes:
                return
            if not self.cfg.steers:
                if any(e.kind.startswith("link") for e in routes):
                    for line in self.dp.reattach_changed():
                        self._note("reattach", line)
                return
            kinds = Counter(e.kind for e in routes)
            cause = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.items())
            moves = self._topology(cause, seen=min(e.seen for e in routes), full=False)
            if self._prober is not None and self.cfg.steer.end_to_end:
                # Routing moved: the hops past the first may have too.
                self._prober.soon(self.core.present, f"routes changed ({cause})")
            # After the maps are right: a recreated interface needs its programs back.
            if any(k.startswith("link") for k in kinds):
                for line in self.dp.reattach_changed():
                    self._note("reattach", line)

    def _health_changed(self, events: list[PathHealthChanged]) -> None:
        """The prober's findings since the loop last looked, decided together
        (one read of the QPs, one move each): a cut often kills most of a
        VTEP's paths in one look, and one decision per path kept the agent
        busy at its real-time priority for tens of milliseconds."""
        before = [self.core.path_unhealthy(e.key, e.path_index) for e in events]
        moves = self._decide(self.core.paths_health, events)
        self._set_liveness_targets()
        died, back = [], []
        for event, was_down in zip(events, before):
            if was_down != self.core.path_unhealthy(event.key, event.path_index):
                (back if was_down else died).append(event.seen)
        if died:
            self._timed(min(died), "liveness", moves)
        if back:
            self._timed(min(back), "path_up", 0 if died else moves)

    def _topology(self, cause: str, seen: float | None, full: bool = True) -> int:
        """Look at the paths again and let the core decide. full: re-read
        the FDB too (slow: start and periodic). In end-to-end mode a route
        event only checks each path's first hop (probing is the prober's)."""
        fdb = None
        if full:
            fdb, warnings = read_fdb(self.cfg.steer.vxlan_devices)
            for text in warnings:
                self._warn(text)
        present = set(fdb.vteps) if fdb is not None else self.core.present
        paths = {}
        for key in present:
            vtep = self.core.vteps.get(key)
            if self.cfg.steer.end_to_end and vtep is not None and vtep.paths:
                paths[key] = self._discovery.first_hops_still(vtep)
            else:
                target = (Target.of(vtep) if vtep is not None else
                          Target(key, key[1], fdb.vteps[key].local, fdb.vteps[key].port_range))
                paths[key] = self._discovery.discover(target)
        for text in self._discovery.take_warnings():
            self._warn(text)
        moves = self._decide(self.core.paths_seen, PathsSeen(paths, cause, fdb))
        self._keep_gateways_resolved(force=full)
        self._set_probe_targets()
        self._set_liveness_targets()
        if seen is not None:
            self._timed(seen, cause, moves, kind="route")
        return moves

    def _set_probe_targets(self) -> None:
        if self._prober is not None:
            self._prober.set_targets([Target.of(v) for v in self.core.probe_targets()])

    def _set_liveness_targets(self) -> None:
        if self._liveness is not None:
            self._liveness.set_targets(self.core.liveness_targets(), self.core.health_deadlines())

    def _decide(self, step, event) -> int:
        """One core step on a fresh read of the QP table; apply what it
        decided. Returns the QP moves."""
        actions = step(event, self.tables.all_qps(), time.monotonic())
        self._apply(actions)
        return sum(1 for a in actions if isinstance(a, MoveQp) and a.reason != "port_remap")

    def _apply(self, actions: list) -> None:
        notes, warnings = self._writer.apply(actions)
        for note in notes:
            self._note(note.kind, note.detail)
        for text in warnings:
            self._warn(text)
        if self.core.generation != self._saved_generation:
            self._state.save(self.core.export_state())
            self._saved_generation = self.core.generation

    def _timed(self, seen: float, cause: str, moves: int, kind: str | None = None) -> None:
        """kind: what told the agent (bfd, route, liveness), for the time
        from the first sign to the move; path_up and the like have none."""
        elapsed = time.monotonic() - seen
        self.reactions.append(elapsed)
        self.reaction_histogram.observe(elapsed)
        if kind is None and cause == "liveness":
            kind = "liveness"
        if kind is not None and moves:
            self.reactions_by_cause.setdefault(kind, deque(maxlen=1000)).append(elapsed)
        self._note("reaction", f"{cause}: {moves} QP moves", reaction_ms=elapsed * 1e3)

    def _keep_gateways_resolved(self, force: bool) -> None:
        """Managed neighbour entries for the next hop of every live path, so
        path_pin finds each MAC resolved (a flush removes them too: the
        periodic refresh makes them again)."""
        gateways = {(p.uplink, p.gateway) for v in self.core.vteps.values()
                    for p in v.paths.values() if p.alive and p.gateway}
        if not force and gateways == self._gateways:
            return
        self._gateways = gateways
        for gw in neighbours.keep_resolved(sorted(gateways)):
            if gw.outcome.startswith("error"):
                self._warn(f"next hop {gw.address} on {gw.uplink}: {gw.outcome}")

    def _restore(self) -> None:
        saved = self._state.load()
        if saved is None:
            self._warn("adopted a pinned data plane without saved paths: placements start afresh")
            return
        self._apply(self.core.restore_state(saved, self.tables.used_paths()))

    # ------------------------------------------------------------ helpers
    def _uplink_indexes(self) -> list[int]:
        return [i for i in (_ifindex(n) for n in self.cfg.steer.uplinks) if i]

    def _note(self, kind: str, detail: str, reaction_ms: float | None = None) -> None:
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

    # ------------------------------------------------------------ what the control socket and metrics read
    def reaction_samples(self) -> list[float]:
        with self._lock:
            return list(self.reactions)

    def snapshot(self, top_n: int | None = None) -> dict:
        """Everything `qpagent status` shows (see control.py for the format)."""
        top_n = self.cfg.agent.top_qps if top_n is None else top_n
        if not self.cfg.steers:
            return self._host_snapshot(top_n)
        qps_all = self.tables.all_qps() if self.tables else {}
        kernel = {
            "programs": self.dp.programs() if self.dp else [],
            "parse": self.tables.parse_counters(HOOK_NAMES) if self.tables else [],
            "steer_events": self.tables.events("steer") if self.tables else {},
            "pin_events": self.tables.events("pin") if self.tables else {},
            "probe_events": self.tables.events("probe") if self.tables else {},
            "reply_events": self.tables.events("reply") if self.tables else {},
            # NAKs handed to requesters after a repair, by outcome (qpagent.goback)
            "go_back_naks": dict(self._go_back.counts) if self._go_back else {},
        }
        dp_repairs = self.tables.events("repair") if self.tables else {}
        health = self._liveness.snapshot() if self._liveness is not None else {}
        describe = self.tables.describe_qp if self.tables else None
        with self._lock:
            state = core_view(self.core, qps_all, describe, top_n)
            state.update({
                "node": self.node, "version": __version__, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3),
                "events": list(self.events),
                "reaction_ms": summary_ms(sorted(self.reactions)),
                "warnings": list(self.warnings),
            })
            listed = [(v["index"], p["index"]) for v in state.get("vteps", []) for p in v["paths"]]
            liveness_view(state, health, self.cfg.liveness.enabled,
                          self.tables.suspects(listed, time.monotonic_ns()) if self.tables else set())
            if self._liveness is not None:
                state["liveness"]["prober"] = self._liveness.timing.snapshot()
            state["repairs"] = repairs_view(dp_repairs, self.core.repairs,
                                            {k: sorted(v) for k, v in self.reactions_by_cause.items()})
        state.update(kernel)
        return state

    def _host_snapshot(self, top_n: int) -> dict:
        """Host mode: no paths, QPs placed or BFD; the flow table's RoCE QPs
        instead (what this host sent and received, per interface and hook)."""
        flow_qps, total, as_of = self._flow_qps.view(top_n) if self.tables else ([], 0, None)
        kernel = {
            "programs": self.dp.programs() if self.dp else [],
            "parse": self.tables.parse_counters(HOOK_NAMES) if self.tables else [],
        }
        with self._lock:
            state = {
                "mode": "host", "describe": self.cfg.describe(),
                "node": self.node, "version": __version__, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3),
                "flow_qps": flow_qps, "flow_qp_total": total, "flow_qps_as_of": as_of,
                "qp_total": 0,
                "events": list(self.events), "warnings": list(self.warnings),
            }
        state.update(kernel)
        return state

    def flows(self, limit: int = 100) -> list[dict]:
        return self.tables.flows(limit, HOOK_NAMES) if self.tables else []


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0
