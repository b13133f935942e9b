"""Read and write the BPF maps of one data plane.

The maps come from a DataPlane (or anything with the same `table(object,
name)`): raw-fd maps typed by the contract's mirrors of
bpf/include/structs.h, whether the programs were just compiled or adopted
from bpffs. Constants and names come from qpagent.contract.
"""

from __future__ import annotations

import ctypes
import heapq
import socket
from typing import NamedTuple

from qpagent.contract import (CONSTANTS, ENUMS, FLOW_HAS_QP, FLOW_HAS_VNI, MAX_PATHS,
                              PARSE_OUTCOME_NAMES, PIN_EVENT_NAMES, PORTS_PER_PATH,
                              STEER_EVENT_NAMES)
from qpagent.core.decisions import QpView
from qpagent.core.liveness import HealthReading

REPAIR_CAUSE_NAMES = ENUMS["repair_cause"].names   # ("liveness", "retransmit", "nak", "stall")
PROBE_EVENT_NAMES = ENUMS["probe_event"].names     # ("answered", "reply_seen", ...)
REPLY_EVENT_NAMES = ENUMS["reply_event"].names     # ("ack", "nak", "unpaired")

__all__ = ["MAX_PATHS", "PORTS_PER_PATH", "PARSE_OUTCOME_NAMES", "STEER_EVENT_NAMES",
           "PIN_EVENT_NAMES", "PathView", "QpView", "QpTables"]


class PathView(NamedTuple):
    ifindex: int
    alive: bool
    ports: tuple[int, ...]
    hashes: tuple[int, ...]
    qps: int


def _addr(family: int, words) -> str:
    raw = b"".join(int(w).to_bytes(4, "little") for w in words)
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _qp_view(s) -> QpView:
    return QpView(s.vtep, s.path, s.slot, s.port, s.packets, s.bytes, s.moves, s.last_ns,
                  s.repaired_ns, s.next_psn if s.psn_valid else -1,
                  s.acked_psn if s.ack_valid else -1, s.ack_wait_ns)


class QpTables:
    """The agent's view of the maps of one DataPlane."""

    def __init__(self, dp):
        self.dp = dp
        self.qp_table = dp.table("steer", "qp_table")
        self.mac_vtep = dp.table("steer", "mac_vtep")
        self.mac_gen = dp.table("steer", "mac_gen")
        self.path_table = dp.table("steer", "path_table")
        self.steer_events = dp.table("steer", "steer_events")
        self.pin_events = dp.table("pin", "pin_events")
        self.pin_uplinks = dp.table("pin", "pin_uplinks")
        self.flow_table = dp.table("flows", "flow_table")
        self.path_health = dp.table("steer", "path_health")
        self.repair_config = dp.table("steer", "repair_config")
        self.repair_events = dp.table("steer", "repair_events")
        self.probe_events = dp.table("steer", "probe_events")
        self.reply_events = dp.table("steer", "reply_events")
        self.qp_ack_frame = dp.table("steer", "qp_ack_frame")

    # ---------------------------------------------------------------- paths
    def write_path(self, vtep: int, path: int, ifindex: int, alive: bool,
                   ports: list[int], hashes: list[int], qps: int, shares: int = 0) -> None:
        entry = self.path_table.Leaf()
        entry.ifindex = ifindex
        entry.alive = 1 if alive else 0
        entry.n_ports = len(ports)
        entry.qps = qps
        entry.shares = shares
        for i, (port, value) in enumerate(zip(ports, hashes)):
            entry.port[i] = port
            entry.hash[i] = value
        self.path_table[self.path_table.Key(vtep * MAX_PATHS + path)] = entry

    def set_path_counts(self, vtep: int, counts: dict[int, int]) -> None:
        """Reconcile the data plane's per-path QP counts (LRU evictions and
        agent moves make the in-kernel counts drift)."""
        for path in range(MAX_PATHS):
            key = self.path_table.Key(vtep * MAX_PATHS + path)
            entry = self.path_table[key]
            if entry.n_ports and entry.qps != counts.get(path, 0):
                entry.qps = counts.get(path, 0)
                self.path_table[key] = entry

    def paths(self) -> dict[tuple[int, int], PathView]:
        """Every used path entry by (vtep, path): what an agent adopting a
        running data plane starts from."""
        out = {}
        for key, entry in self.path_table.items():
            if entry.n_ports:
                n = min(entry.n_ports, PORTS_PER_PATH)
                out[divmod(key.value, MAX_PATHS)] = PathView(
                    entry.ifindex, bool(entry.alive), tuple(entry.port[:n]),
                    tuple(entry.hash[:n]), entry.qps)
        return out

    def used_paths(self) -> dict[tuple[int, int], tuple[int, bool, tuple[int, ...]]]:
        """(vtep, path) -> (ifindex, alive, ports) of every used entry."""
        return {k: (v.ifindex, v.alive, v.ports) for k, v in self.paths().items()}

    def mac_vteps(self) -> dict[str, int]:
        """Inner MAC (aa:bb:..) -> VTEP index, as last written."""
        return {":".join(f"{b:02x}" for b in bytes(key.mac)): value.value
                for key, value in self.mac_vtep.items()}

    def set_mac_vteps(self, macs: dict[str, int]) -> None:
        wanted = {}
        for mac, vtep in macs.items():
            key = self.mac_vtep.Key()
            for i, byte in enumerate(bytes.fromhex(mac.replace(":", ""))):
                key.mac[i] = byte
            wanted[bytes(key)] = (key, vtep)
        changed = False
        for key in list(self.mac_vtep.keys()):
            if bytes(key) not in wanted:
                del self.mac_vtep[key]
                changed = True
        for key, vtep in wanted.values():
            current = self.mac_vtep.get(key)
            if current is None or current.value != vtep:
                self.mac_vtep[key] = ctypes.c_uint32(vtep)
                changed = True
        if changed and self.mac_gen is not None:
            # qp_steer skips the MAC lookup for known QPs until this moves.
            gen = self.mac_gen.Key(0)
            self.mac_gen[gen] = self.mac_gen.Leaf(self.mac_gen[gen].value + 1)

    def set_pin_uplinks(self, ifindexes: list[int]) -> None:
        if self.pin_uplinks is None:
            return
        for ifindex in ifindexes:
            self.pin_uplinks[self.pin_uplinks.Key(ifindex)] = self.pin_uplinks.Leaf(1)

    # ---------------------------------------------------------------- liveness
    def health(self, paths) -> dict[tuple[int, int], HealthReading]:
        """path_health of some (vtep, path) pairs: what probe replies the
        data plane recorded."""
        out = {}
        if self.path_health is None:
            return out
        for vtep, path in paths:
            entry = self.path_health[self.path_health.Key(vtep * MAX_PATHS + path)]
            out[(vtep, path)] = HealthReading(entry.replies, entry.last_reply_ns, entry.rtt_ns,
                                              entry.unanswered, entry.silent_since_ns,
                                              entry.acked_ns)
        return out

    def suspects(self, paths, now_ns: int) -> set[tuple[int, int]]:
        """Those of the (vtep, path) pairs qp_steer holds under suspicion
        now: several of their QPs left on their own signals and no probe
        cleared them. Only the pairs asked for are read (a scrape must not
        walk the whole table)."""
        if self.path_health is None:
            return set()
        hold = CONSTANTS["SUSPECT_HOLD_MS"] * 1_000_000
        out = set()
        for vtep, path in paths:
            entry = self.path_health[self.path_health.Key(vtep * MAX_PATHS + path)]
            if entry.suspect_ns and now_ns - entry.suspect_ns <= hold:
                out.add((vtep, path))
        return out

    def write_deadline(self, vtep: int, path: int, deadline_ns: int) -> None:
        """Only deadline_ns is ours; the rest is path_probe's, read just before."""
        if self.path_health is None:
            return
        key = self.path_health.Key(vtep * MAX_PATHS + path)
        entry = self.path_health[key]
        entry.deadline_ns = deadline_ns
        self.path_health[key] = entry

    def disarm_all(self) -> None:
        if self.path_health is None:
            return
        for key, entry in self.path_health.items():
            if entry.deadline_ns:
                self.write_deadline(*divmod(key.value, MAX_PATHS), 0)

    def set_repair_config(self, holddown_ns: int, retransmit: bool, nak: bool = False,
                          stall_ns: int = 0) -> None:
        if self.repair_config is None:
            return
        key = self.repair_config.Key(0)
        entry = self.repair_config[key]
        entry.holddown_ns = holddown_ns
        entry.retransmit = 1 if retransmit else 0
        entry.nak = 1 if nak else 0
        entry.stall_ns = stall_ns
        self.repair_config[key] = entry

    def believe_probes_until(self, until_ns: int, misses: int = 3) -> None:
        """The prober is running: until until_ns (CLOCK_MONOTONIC), a path
        with `misses` requests unanswered for its deadline is dead. Renewed
        every round; 0 says nobody probes."""
        if self.repair_config is None:
            return
        key = self.repair_config.Key(0)
        entry = self.repair_config[key]
        entry.believe_until_ns = until_ns
        entry.probe_misses = misses
        self.repair_config[key] = entry

    # ---------------------------------------------------------------- QPs
    def all_qps(self) -> dict[bytes, QpView]:
        return {bytes(key): _qp_view(s) for key, s in self.qp_table.items()}

    def qps(self, keys) -> dict[bytes, QpView]:
        """The QPs of `keys` that the table still holds."""
        out = {}
        for key in keys:
            try:
                out[key] = _qp_view(self.qp_table[self.qp_table.Key.from_buffer_copy(key)])
            except KeyError:
                pass
        return out

    def ack_frame(self, key: bytes) -> bytes | None:
        """The responder's latest ACK of a QP as path_probe kept it, or None."""
        if self.qp_ack_frame is None:
            return None
        try:
            return bytes(self.qp_ack_frame[self.qp_ack_frame.Key.from_buffer_copy(key)].bytes)
        except KeyError:
            return None

    def move_qp(self, key: bytes, vtep: int, path: int, slot: int, port: int,
                hash_value: int) -> None:
        k = self.qp_table.Key.from_buffer_copy(key)
        try:
            state = self.qp_table[k]
        except KeyError:
            return   # evicted meanwhile: the data plane places it afresh
        state.vtep, state.path, state.slot = vtep, path, slot
        state.port, state.hash = port, hash_value
        state.moves += 1
        self.qp_table[k] = state

    def forget_qp(self, key: bytes) -> None:
        try:
            del self.qp_table[self.qp_table.Key.from_buffer_copy(key)]
        except KeyError:
            pass

    def describe_qp(self, key: bytes) -> tuple[str, str, int]:
        k = self.qp_table.Key.from_buffer_copy(key)
        return _addr(k.family, k.saddr), _addr(k.family, k.daddr), int(k.dqp)

    # ---------------------------------------------------------------- counters
    def events(self, which: str) -> dict[str, int]:
        """Per-CPU event counters summed: "steer", "pin", "repair", "probe",
        "reply"."""
        table, names = {"steer": (self.steer_events, STEER_EVENT_NAMES),
                        "pin": (self.pin_events, PIN_EVENT_NAMES),
                        "repair": (self.repair_events, REPAIR_CAUSE_NAMES),
                        "probe": (self.probe_events, PROBE_EVENT_NAMES),
                        "reply": (self.reply_events, REPLY_EVENT_NAMES)}[which]
        if table is None:
            return {}
        return {name: int(sum(table.getvalue(table.Key(i))))
                for i, name in enumerate(names)}

    def parse_counters(self, hook_names: dict[int, str]) -> list[dict]:
        rows = {}
        # parse_stats is an array whose per-CPU slots name their owner
        # (ifindex 0: unused); parse_stats_spill holds slots taken twice.
        for obj in ("steer", "pin", "flows"):
            for name in ("parse_stats", "parse_stats_spill"):
                table = self.dp.table(obj, name)
                if table is None:
                    continue
                for _, per_cpu in table.items():
                    for leaf in per_cpu:
                        if not leaf.ifindex:
                            continue
                        ident = (leaf.ifindex, leaf.hook)
                        row = rows.setdefault(ident, [0] * len(PARSE_OUTCOME_NAMES))
                        rows[ident] = [a + int(b) for a, b in zip(row, leaf.outcome)]
        out = []
        for (ifindex, hook), totals in sorted(rows.items()):
            entry = {"interface": _ifname(ifindex), "hook": hook_names.get(hook, str(hook))}
            entry.update(dict(zip(PARSE_OUTCOME_NAMES, (int(x) for x in totals))))
            out.append(entry)
        return out

    def flows(self, limit: int, hook_names: dict[int, str]) -> list[dict]:
        if self.flow_table is None:
            return []
        boot = _boot_time()
        # Only the top `limit` are formatted: a table can hold a million flows.
        top = heapq.nlargest(limit, self.flow_table.items(), key=lambda kv: kv[1].bytes)
        names: dict[int, str] = {}
        rows = []
        for k, v in top:
            if k.ifindex not in names:
                names[k.ifindex] = _ifname(k.ifindex)
            rows.append({
                "interface": names[k.ifindex], "hook": hook_names.get(k.hook, str(k.hook)),
                "family": k.family, "proto": k.proto,
                "src": _addr(k.family, k.saddr), "dst": _addr(k.family, k.daddr),
                "sport": k.sport, "dport": k.dport,
                "vni": k.vni if k.has & FLOW_HAS_VNI else None,
                "dqp": k.dqp if k.has & FLOW_HAS_QP else None,
                "packets": v.packets, "bytes": v.bytes,
                "first_seen": round(boot + v.first_ns / 1e9, 6),
                "last_seen": round(boot + v.last_ns / 1e9, 6),
            })
        return rows


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def _boot_time() -> float:
    """Unix time of CLOCK_MONOTONIC zero (bpf_ktime_get_ns's clock)."""
    import time
    return time.time() - time.monotonic()
