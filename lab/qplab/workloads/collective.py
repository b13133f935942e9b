"""A collective run: schedule from the pattern, iterations on an Engine,
per-iteration figures (completion time, goodput, algbw, busbw,
retransmissions), per-QP bytes, and the verification of every message.
A queue pair in error fails the job, as in a real collective library: the
run stops and QpInError carries the result with the QPs in error."""
from __future__ import annotations

import statistics
import time

from . import schedules as sch
from .driver import Engine, EngineError, Host, QpInError, verify

PATTERNS = ("ring", "hierarchical", "ps")


def build_schedule(pattern: str, hosts: list[Host], size: int, ps_servers: int = 0) -> sch.Schedule:
    names = [h.name for h in hosts]
    if pattern == "ring":
        return sch.ring_allreduce(names, size)
    if pattern == "hierarchical":
        dcs: dict[str, list[str]] = {}
        for h in hosts:
            dcs.setdefault(h.dc or "?", []).append(h.name)
        return sch.hierarchical_allreduce(list(dcs.values()), size)
    if pattern == "ps":
        # Servers spread over the DCs (one in each first, like sharded PS
        # deployments), workers are the rest.
        n = ps_servers or max(1, len(hosts) // 4)
        if n >= len(hosts):
            raise ValueError(f"{n} servers leave no workers among {len(hosts)} hosts")
        by_dc: dict[str, list[str]] = {}
        for h in hosts:
            by_dc.setdefault(h.dc, []).append(h.name)
        order = [g[i] for i in range(max(map(len, by_dc.values()))) for g in by_dc.values() if i < len(g)]
        servers = order[:n]
        workers = [x for x in names if x not in servers]
        return sch.parameter_server(workers, servers, size)
    raise ValueError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")


def _qp_totals(replies: dict[str, dict]) -> dict[tuple[str, int], dict]:
    out = {}
    for host, r in replies.items():
        for q in r["qps"]:
            out[(host, q["qpn"])] = q
    return out


def run_collective(engine: Engine, pattern: str, size: int, iterations: int, *,
                   msg_size: int = 1 << 16, ps_servers: int = 0, timeout: float = 120.0,
                   on_iteration=None) -> dict:
    """Run `iterations` of the pattern; returns the result record (JSON-able).
    on_iteration(i, record) is called after each iteration (for timelines)."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if size < 1 or msg_size < 1:
        raise ValueError("tensor and message sizes must be positive")
    schedule = build_schedule(pattern, engine.hosts, size, ps_servers)
    ranks = sorted({t.src for step in schedule for t in step} | {t.dst for step in schedule for t in step})
    factor = sch.bus_factor(pattern, len(ranks))
    wire_bytes = sch.total_bytes(schedule)
    prev: dict = {}
    iters = []
    problems_all: list[str] = []
    verified_total = 0
    failure: QpInError | None = None
    for i in range(iterations):
        wall = time.time()
        try:
            replies = engine.run_iteration(schedule, i, msg_size, timeout=timeout)
        except QpInError as e:
            failure = e
            break
        start = min(r["start"] for r in replies.values())
        end = max(r["end"] for r in replies.values())
        dur = max(end - start, 1e-9)
        verified, problems = verify(schedule, replies)
        verified_total += verified
        problems_all += [f"iteration {i}: {p}" for p in problems]
        totals = _qp_totals(replies)
        d = {"retransmitted": 0, "timeouts": 0, "naks": 0, "packets": 0}
        stalls = []
        for key, q in totals.items():
            before = prev.get(key, {}).get("tx", {})
            for f in d:
                d[f] += q["tx"][f] - before.get(f, 0)
            seen = len(prev.get(key, {}).get("stalls", []))
            for a, b in q["stalls"][seen:]:
                stalls.append({"host": key[0], "qpn": key[1], "peer": q["peer"],
                               "from": a - start, "to": b - start})
        prev = totals
        rec = {"iteration": i, "wall_start": wall, "t_start": start, "t_end": end,
               "duration_s": dur, "goodput_bps": wire_bytes * 8 / dur,
               "algbw_Bps": size / dur, "busbw_Bps": size / dur * factor,
               "retransmitted_packets": d["retransmitted"], "packets": d["packets"],
               "timeouts": d["timeouts"], "naks": d["naks"], "stalls": stalls,
               "verified_bytes": verified,
               "bad_packets": sum(r["bad_packets"] for r in replies.values())}
        iters.append(rec)
        if on_iteration:
            on_iteration(i, rec)
    qps = []
    for q in engine.qps:
        if {q.src, q.dst} <= set(ranks):
            a = prev.get((q.src, q.lqpn), {})
            b = prev.get((q.dst, q.rqpn), {})
            qps.append({"src": q.src, "dst": q.dst, "lqpn": q.lqpn, "rqpn": q.rqpn,
                        "sport": q.sport, "index": q.index,
                        "bytes_src_to_dst": a.get("tx", {}).get("payload_bytes", 0),
                        "bytes_dst_to_src": b.get("tx", {}).get("payload_bytes", 0),
                        "retransmitted": a.get("tx", {}).get("retransmitted", 0) + b.get("tx", {}).get("retransmitted", 0)})
    durs = [r["duration_s"] for r in iters]
    med = statistics.median(durs) if durs else None
    result = {
        "pattern": pattern, "size_bytes": size, "iterations": iterations, "msg_size": msg_size,
        "ranks": ranks, "qps_per_conn": engine.qps_per_conn, "sport_policy": engine.sport_policy,
        "retry": engine.config.retry_summary(),
        "bus_factor": factor, "schedule_bytes": wire_bytes,
        "clock_offset": time.time() - time.monotonic(),   # wall = monotonic + offset
        "per_iteration": iters, "qps": qps,
        "summary": {
            "median_duration_s": med, "max_duration_s": max(durs, default=None),
            "median_busbw_Bps": size / med * factor if med else None,
            "median_algbw_Bps": size / med if med else None,
            "retransmitted_packets": sum(r["retransmitted_packets"] for r in iters),
            "timeouts": sum(r["timeouts"] for r in iters),
            "verified_bytes": verified_total,
            "expected_bytes": wire_bytes * iterations,
            "all_verified": not problems_all and verified_total == wire_bytes * iterations,
            "problems": problems_all[:20],
            "job_failed": None if failure is None else str(failure),
            "failed_iteration": None if failure is None else len(iters),
            "qps_in_error": [] if failure is None else failure.qps,
        },
    }
    if failure is not None:
        failure.result = result
        raise failure
    return result


def time_lost(durations: list[float], baseline: float) -> float:
    """Seconds beyond the baseline iteration time, summed: what failures cost."""
    return sum(max(0.0, d - baseline) for d in durations)


__all__ = ["PATTERNS", "build_schedule", "run_collective", "time_lost", "EngineError", "QpInError"]
