"""The qpagent daemon: ties the data plane, the path table, placement,
events, the control socket and the metrics exporter together.

One thread (run()) owns every decision and every map write; the control
socket and the exporter only read, under the same lock. Route and BFD
events wake the decision thread through one queue, so the time from an
event seen to the maps updated is short and measured.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from qpagent import __version__
from qpagent.config import Config
from qpagent.placement import imbalance, rebalance
from qpagent.portmath import hash_for_port
from qpagent.tables import MAX_PATHS, PORTS_PER_PATH, QpTables

log = logging.getLogger("qpagent")

HOOK_NAMES = {0: "xdp ingress", 1: "tc egress", 2: "qp_steer", 3: "path_pin"}
RECONCILE_EVERY_S = 1.0
TOPOLOGY_EVERY_S = 5.0
HYSTERESIS_S = 10.0


class AgentError(RuntimeError):
    """A failure to report to the user as one clear line."""

    @property
    def user_message(self) -> str:
        return str(self)


@dataclass
class PathState:
    index: int
    ifindex: int
    uplink: str
    gateway: str | None
    ports: list[int]
    alive: bool = True
    packets: int = 0   # attributed from per-QP deltas
    bytes: int = 0

    @property
    def identity(self):
        return (self.uplink, self.gateway)


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
        self.reactions: deque = deque(maxlen=10000)   # seconds
        self.replacements: Counter = Counter()
        self.warnings: list[str] = []
        self.bfd_state = {"available": False, "reason": "not polled yet", "peers": []}
        self._qp_seen: dict[bytes, tuple[int, int]] = {}   # key -> (packets, bytes)
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
        self.tables = QpTables(self.dp)
        self.tables.set_pin_uplinks(self._uplink_indexes())
        self._check_sysctls()
        with self._lock:
            self._refresh_topology(reason="start", seen=time.monotonic())
        self._start_services()
        self._event("start", f"attached {len(self.dp.programs())} programs; "
                             f"{len(self.vteps)} remote VTEPs")
        log.info("qpagent %s running on %s", __version__, self.node)

    def close(self) -> None:
        for closer in (self._stop_services, self._detach):
            try:
                closer()
            except Exception as exc:  # keep tearing down whatever happens
                log.warning("shutdown: %s", exc)

    def _detach(self):
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
                    missing = self.dp.reattach_changed()
                if missing:
                    self._event("reattach", ", ".join(missing))
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
        relevant = [e for e in batch if e[0] != "stop"]
        if not relevant:
            return
        seen = min(e[1] for e in relevant)
        kinds = Counter(e[0] for e in relevant)
        detail = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.items())
        with self._lock:
            if any(k.startswith("link") for k in kinds):
                self.dp.reattach_changed()
            self._refresh_topology(reason=detail, seen=seen,
                                   bfd_down=self._bfd_down_uplinks())

    # ------------------------------------------------------------ topology
    def _uplink_indexes(self) -> list[int]:
        return [i for i in (_ifindex(n) for n in self.cfg.steer.uplinks) if i]

    def _candidate_ports(self, port_range: tuple[int, int]) -> list[int]:
        lo = max(self.cfg.steer.source_ports[0], port_range[0])
        hi = min(self.cfg.steer.source_ports[1], port_range[1] - 1)
        if lo > hi:
            return []
        return list(range(lo, hi + 1))

    def _refresh_topology(self, reason: str, seen: float | None,
                          bfd_down: set[str] | None = None) -> int:
        """Re-read remote VTEPs and their paths; write the maps; move QPs
        whose path died or whose port now leads elsewhere. Returns moves."""
        from qpagent.paths import discover_paths
        from qpagent.vxlan import VxlanError, fdb_remotes, vxlan_info
        bfd_down = bfd_down or set()
        macs: dict[str, tuple[str, str]] = {}
        present = set()
        for dev in self.cfg.steer.vxlan_devices:
            try:
                info = vxlan_info(dev)
                remotes = fdb_remotes(dev)
            except VxlanError as exc:
                self._warn(str(exc))
                continue
            local = info.local
            for mac, remote in remotes:
                key = (dev, remote)
                present.add(key)
                macs[mac] = key
                if key not in self.vteps:
                    self.vteps[key] = VtepState(self._free_vtep_index(), dev, remote,
                                                local, (info.port_min, info.port_max))
        moves = 0
        for key, vtep in list(self.vteps.items()):
            gone = key not in present
            discovered = [] if gone else self._discover(vtep, discover_paths)
            discovered = [p for p in discovered if p.ifname not in bfd_down]
            changed = self._merge_paths(vtep, discovered)
            if changed or reason == "start":
                self._write_paths(vtep)
            moves += self._replace_qps(vtep, reason, changed)
        self.tables.set_mac_vteps({mac: self.vteps[k].index for mac, k in macs.items()
                                   if k in self.vteps})
        if seen is not None and reason not in ("start", "periodic"):
            elapsed = time.monotonic() - seen
            self.reactions.append(elapsed)
            self._event("reaction", f"{reason}: {moves} QP moves", reaction_ms=elapsed * 1e3)
        return moves

    def _discover(self, vtep: VtepState, discover_paths) -> list:
        from qpagent.fib import FibError
        try:
            return discover_paths(vtep.local, vtep.address,
                                  self._candidate_ports(vtep.port_range),
                                  set(self.cfg.steer.uplinks),
                                  ports_per_path=self.cfg.steer.ports_per_path)
        except FibError as exc:   # no route at all: every path is dead
            self._warn(f"VTEP {vtep.address}: {exc}")
            return []

    def _free_vtep_index(self) -> int:
        used = {v.index for v in self.vteps.values()}
        for i in range(len(used) + 1):
            if i not in used:
                return i
        raise AgentError("too many remote VTEPs")

    def _merge_paths(self, vtep: VtepState, discovered) -> bool:
        """Keep path indexes stable by identity (uplink, gateway)."""
        changed = False
        by_identity = {p.identity: p for p in vtep.paths.values()}
        seen = set()
        for found in discovered:
            ident = (found.ifname, found.gateway)
            seen.add(ident)
            ports = list(found.ports)[:PORTS_PER_PATH]
            old = by_identity.get(ident)
            if old is None:
                free = [i for i in range(MAX_PATHS) if i not in vtep.paths]
                if not free:
                    self._warn(f"VTEP {vtep.address}: more than {MAX_PATHS} paths")
                    continue
                vtep.paths[free[0]] = PathState(free[0], found.ifindex, found.ifname,
                                                found.gateway, ports)
                changed = True
            elif old.ports != ports or not old.alive or old.ifindex != found.ifindex:
                old.ports, old.alive, old.ifindex = ports, True, found.ifindex
                changed = True
        for ident, path in by_identity.items():
            if ident not in seen and path.alive:
                path.alive = False
                changed = True
        return changed

    def _write_paths(self, vtep: VtepState) -> None:
        counts = self.tables.qp_counts_by_path(vtep.index)
        for i in range(MAX_PATHS):
            path = vtep.paths.get(i)
            if path is None:
                self.tables.clear_path(vtep.index, i)
                continue
            hashes = [hash_for_port(p, *vtep.port_range) for p in path.ports]
            self.tables.write_path(vtep.index, i, path.ifindex, path.alive,
                                   path.ports, hashes, counts.get(i, 0))

    def _replace_qps(self, vtep: VtepState, reason: str, paths_changed: bool) -> int:
        """Move orphans (and, when asked, restore exact balance)."""
        if not paths_changed and reason in ("start",):
            return 0
        qps = self.tables.qps_of_vtep(vtep.index)
        if not qps:
            return 0
        live = vtep.live_paths()
        assignment = {k: (s.path if s.path in live else None) for k, s in qps.items()}
        now = time.monotonic()
        recent = {k for k, t in self._moved_at.items() if now - t < HYSTERESIS_S}
        qp_bytes = {k: s.bytes for k, s in qps.items()}
        if self.cfg.steer.rebalance:
            moves = rebalance(assignment, live, qp_bytes, recent)
        else:
            moves = rebalance({k: p for k, p in assignment.items() if p is None},
                              live, qp_bytes, recent)
        # QPs whose port the FIB now sends down another path get a new slot.
        moved = {m.qp for m in moves}
        reslot = [k for k, s in qps.items() if k not in moved and s.path in live
                  and s.port not in vtep.paths[s.path].ports]
        slots = Counter()
        for m in moves:
            path = vtep.paths[m.new_path]
            slot = self._next_slot(path, slots)
            self.tables.move_qp(m.qp, vtep.index, m.new_path, slot, path.ports[slot],
                                hash_for_port(path.ports[slot], *vtep.port_range))
            why = "dead_path" if m.old_path is None else (
                "path_up" if reason != "periodic" else "rebalance")
            self.replacements[why] += 1
            self._moved_at[m.qp] = now
        for k in reslot:
            s = qps[k]
            path = vtep.paths[s.path]
            slot = self._next_slot(path, slots)
            self.tables.move_qp(k, vtep.index, s.path, slot, path.ports[slot],
                                hash_for_port(path.ports[slot], *vtep.port_range))
            self.replacements["port_remap"] += 1
        if moves or reslot:
            self._write_paths(vtep)
        return len(moves)

    def _next_slot(self, path: PathState, used: Counter) -> int:
        key = (path.uplink, path.gateway)
        slot = used[key] % len(path.ports)
        used[key] += 1
        return slot

    def _reconcile(self) -> None:
        """Per-path counts and bytes from the QP table; balance when asked."""
        qps_all = self.tables.all_qps()
        by_vtep: dict[int, dict] = {}
        for key, state in qps_all.items():
            by_vtep.setdefault(state.vtep, {})[key] = state
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
            if self.cfg.steer.rebalance and by_vtep.get(vtep.index):
                self._replace_qps(vtep, "periodic", False)
            self.tables.set_path_counts(vtep.index, self.tables.qp_counts_by_path(vtep.index))
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
        top_n = self.cfg.agent.top_qps if top_n is None else top_n
        with self._lock:
            return self._snapshot(top_n)

    def _snapshot(self, top_n: int) -> dict:
        qps_all = self.tables.all_qps() if self.tables else {}
        vteps = []
        imb = {}
        addr_of = {v.index: v for v in self.vteps.values()}
        for vtep in sorted(self.vteps.values(), key=lambda v: v.index):
            counts = Counter(s.path for s in qps_all.values() if s.vtep == vtep.index)
            vteps.append({
                "index": vtep.index, "address": vtep.address, "device": vtep.device,
                "paths": [{"index": p.index, "uplink": p.uplink, "gateway": p.gateway,
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
            "programs": self.dp.programs() if self.dp else [],
            "vteps": vteps, "qp_total": len(qps_all), "qps": qps, "imbalance": imb,
            "bfd": dict(self.bfd_state), "events": list(self.events),
            "replacements": dict(self.replacements),
            "reaction_ms": _summary_ms(samples),
            "parse": self.tables.parse_counters(HOOK_NAMES) if self.tables else [],
            "steer_events": self.tables.events("steer") if self.tables else {},
            "pin_events": self.tables.events("pin") if self.tables else {},
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
    if not samples:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    def pct(q):
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1e3, 3)
    return {"count": len(samples), "p50": pct(0.5), "p99": pct(0.99),
            "max": round(samples[-1] * 1e3, 3)}


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0
