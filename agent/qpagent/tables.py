"""Read and write the BPF maps through BCC's generated ctypes.

The layout is bpf/include/{consts,structs,maps}.h; the constants below
mirror consts.h and a test checks them against the compiled program.
"""

from __future__ import annotations

import ctypes
import socket
from typing import NamedTuple

MAX_PATHS = 16
PORTS_PER_PATH = 16

PARSE_OUTCOME_NAMES = ("roce", "not_roce", "not_ip", "truncated", "fragment",
                       "ipv6_ext", "bad_bth")
STEER_EVENT_NAMES = ("placed_new", "placed_dead", "hash_set", "no_vtep", "no_live_path")
PIN_EVENT_NAMES = ("on_fib_link", "redirected", "fib_failed", "not_vxlan")


class QpView(NamedTuple):
    vtep: int
    path: int
    slot: int
    port: int
    packets: int
    bytes: int
    moves: int
    last_ns: int


def _addr(family: int, words) -> str:
    raw = b"".join(int(w).to_bytes(4, "little") for w in words)
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _table(obj, name):
    try:
        return obj[name.encode()]   # BCC wants bytes names
    except (KeyError, TypeError):
        return None


def _percpu_sum(values) -> list[int]:
    """Sum a per-CPU struct parse_counters into one list."""
    total = None
    for v in values:
        row = list(v.outcome)
        total = row if total is None else [a + b for a, b in zip(total, row)]
    return total or [0] * len(PARSE_OUTCOME_NAMES)


class QpTables:
    """The agent's view of the maps of one DataPlane."""

    def __init__(self, dp):
        self.dp = dp
        self.qp_table = _table(dp.steer, "qp_table")
        self.mac_vtep = _table(dp.steer, "mac_vtep")
        self.mac_gen = _table(dp.steer, "mac_gen")
        self.path_table = _table(dp.steer, "path_table")
        self.steer_events = _table(dp.steer, "steer_events")
        self.pin_events = _table(dp.pin, "pin_events") if dp.pin is not None else None
        self.pin_uplinks = _table(dp.pin, "pin_uplinks") if dp.pin is not None else None
        self.flow_table = _table(dp.flows, "flow_table") if dp.flows is not None else None

    # ---------------------------------------------------------------- paths
    def write_path(self, vtep: int, path: int, ifindex: int, alive: bool,
                   ports: list[int], hashes: list[int], qps: int) -> None:
        entry = self.path_table.Leaf()
        entry.ifindex = ifindex
        entry.alive = 1 if alive else 0
        entry.n_ports = len(ports)
        entry.qps = qps
        for i, (port, value) in enumerate(zip(ports, hashes)):
            entry.port[i] = port
            entry.hash[i] = value
        self.path_table[self.path_table.Key(vtep * MAX_PATHS + path)] = entry

    def clear_path(self, vtep: int, path: int) -> None:
        key = self.path_table.Key(vtep * MAX_PATHS + path)
        if self.path_table[key].n_ports:
            self.path_table[key] = self.path_table.Leaf()

    def set_path_counts(self, vtep: int, counts: dict[int, int]) -> None:
        """Reconcile the data plane's per-path QP counts (LRU evictions and
        agent moves make the in-kernel counts drift)."""
        for path in range(MAX_PATHS):
            key = self.path_table.Key(vtep * MAX_PATHS + path)
            entry = self.path_table[key]
            if entry.n_ports and entry.qps != counts.get(path, 0):
                entry.qps = counts.get(path, 0)
                self.path_table[key] = entry

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

    # ---------------------------------------------------------------- QPs
    def all_qps(self) -> dict[bytes, QpView]:
        out = {}
        for key, s in self.qp_table.items():
            out[bytes(key)] = QpView(s.vtep, s.path, s.slot, s.port, s.packets,
                                     s.bytes, s.moves, s.last_ns)
        return out

    def qps_of_vtep(self, vtep: int) -> dict[bytes, QpView]:
        return {k: v for k, v in self.all_qps().items() if v.vtep == vtep}

    def qp_counts_by_path(self, vtep: int) -> dict[int, int]:
        counts: dict[int, int] = {}
        for view in self.all_qps().values():
            if view.vtep == vtep:
                counts[view.path] = counts.get(view.path, 0) + 1
        return counts

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
        table, names = ((self.steer_events, STEER_EVENT_NAMES) if which == "steer"
                        else (self.pin_events, PIN_EVENT_NAMES))
        if table is None:
            return {}
        return {name: int(sum(table.getvalue(table.Key(i))))
                for i, name in enumerate(names)}

    def parse_counters(self, hook_names: dict[int, str]) -> list[dict]:
        rows = {}
        for obj in (self.dp.steer, self.dp.pin, self.dp.flows):
            table = _table(obj, "parse_stats") if obj is not None else None
            if table is None:
                continue
            for key, values in table.items():
                totals = _percpu_sum(values if isinstance(values, (list, tuple))
                                     else table.getvalue(key))
                ident = (key.ifindex, key.hook)
                row = rows.setdefault(ident, [0] * len(PARSE_OUTCOME_NAMES))
                rows[ident] = [a + b for a, b in zip(row, totals)]
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
        rows = []
        for k, v in self.flow_table.items():
            rows.append({
                "interface": _ifname(k.ifindex), "hook": hook_names.get(k.hook, str(k.hook)),
                "family": k.family, "proto": k.proto,
                "src": _addr(k.family, k.saddr), "dst": _addr(k.family, k.daddr),
                "sport": k.sport, "dport": k.dport,
                "vni": k.vni if k.has & 1 else None, "dqp": k.dqp if k.has & 2 else None,
                "packets": v.packets, "bytes": v.bytes,
                "first_seen": round(boot + v.first_ns / 1e9, 6),
                "last_seen": round(boot + v.last_ns / 1e9, 6),
            })
        rows.sort(key=lambda r: -r["bytes"])
        return rows[:limit]


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def _boot_time() -> float:
    """Unix time of CLOCK_MONOTONIC zero (bpf_ktime_get_ns's clock)."""
    import time
    return time.time() - time.monotonic()
