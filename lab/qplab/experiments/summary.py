"""A sweep's runs folded into scenarios: medians with their spread across
runs (seeds). Pure functions of the records, tested on records alone.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .analysis import busiest_ratio


@dataclass(frozen=True)
class Spread:
    """The median of a scenario's runs, with the lowest and highest run."""
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values) -> "Spread | None":
        vals = sorted(v for v in values if v is not None)
        if not vals:
            return None
        return cls(statistics.median(vals), vals[0], vals[-1], len(vals))

    def text(self, spec: str = ".1f", scale: float = 1.0) -> str:
        m, lo, hi = (x * scale for x in (self.median, self.low, self.high))
        if self.n == 1:
            return format(m, spec)
        return f"{m:{spec}} [{lo:{spec}}-{hi:{spec}}]"


@dataclass
class Group:
    """One scenario (mode, pattern, delay, loss, failure) over its runs."""
    mode: str
    pattern: str
    delay_ms: float
    loss_pct: float
    failure: bool
    runs: list[dict] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.mode, self.pattern, self.delay_ms, self.loss_pct, self.failure)

    def completed(self) -> list[dict]:
        return [r for r in self.runs if r.get("result") and not r.get("job_failed")
                and r["result"]["summary"]["median_duration_s"] is not None]

    def busbw_mbit(self) -> Spread | None:
        return Spread.of(r["result"]["summary"]["median_busbw_Bps"] * 8 / 1e6 for r in self.completed())

    def iteration_s(self) -> Spread | None:
        return Spread.of(r["result"]["summary"]["median_duration_s"] for r in self.completed())

    def time_lost_s(self) -> Spread | None:
        return Spread.of(r.get("time_lost_s") for r in self.completed()) if self.failure else None

    def balance(self) -> Spread | None:
        """The busiest WAN link over the mean, worst direction, per run."""
        return Spread.of(max((v for v in busiest_ratio(r["wan_bytes"]).values() if v), default=None)
                         for r in self.completed() if r.get("wan_bytes"))

    def timeline(self, key: str) -> Spread | None:
        return Spread.of((r.get("timeline") or {}).get(key) for r in self.runs)

    def jobs_failed(self) -> int:
        return sum(1 for r in self.runs if r.get("job_failed"))

    def qps_in_error(self) -> int:
        return sum(len(r.get("qps_in_error") or ()) for r in self.runs)

    def errors(self) -> list[str]:
        return [r["error"] for r in self.runs if r.get("error") and not r.get("job_failed")]

    def durations(self) -> list[float]:
        """Every measured iteration of every run (the warm-up left out)."""
        return [it["duration_s"] for r in self.completed() for it in r["result"]["per_iteration"][1:]]


def groups(records: list[dict]) -> dict[tuple, Group]:
    out: dict[tuple, Group] = {}
    for r in records:
        sc = r["scenario"]
        g = Group(sc["mode"], sc["pattern"], sc["delay_ms"], sc["loss_pct"], sc["failure"])
        out.setdefault(g.key, g).runs.append(r)
    return out


def machine_check(records: list[dict]) -> dict:
    """What says the WAN, not this machine, was the bottleneck: CPU busy
    across runs, and how close the busiest WAN link came to its rate in
    the runs without a failure (median and range)."""
    ok = [r for r in records if not r["scenario"]["failure"]]
    return {"cpu_busy": Spread.of(r.get("cpu_busy") for r in records),
            "peak_wan_utilization": Spread.of(r.get("peak_wan_utilization") for r in ok),
            "by_mode_cpu": {m: Spread.of(r.get("cpu_busy") for r in records if r["scenario"]["mode"] == m)
                            for m in sorted({r["scenario"]["mode"] for r in records})}}


RUN_COLUMNS = ("name", "mode", "pattern", "delay_ms", "loss_pct", "failure", "run", "seed",
               "busbw_mbit", "median_iteration_s", "time_lost_s", "busiest_link_ratio",
               "retransmitted_packets", "job_failed", "qps_in_error", "cpu_busy",
               "peak_wan_utilization", "bfd_down_s", "agent_reaction_s", "elapsed_s")


def run_rows(records: list[dict]) -> list[dict]:
    """One row of key figures per run: what the report is made of, small
    enough to keep beside it (the full records hold every sample)."""
    rows = []
    for r in records:
        sc, res = r["scenario"], (r.get("result") or {}).get("summary") or {}
        bw = res.get("median_busbw_Bps")
        ratios = [v for v in busiest_ratio(r.get("wan_bytes") or {}).values() if v]
        tl = r.get("timeline") or {}
        rows.append({"name": r["name"], **{k: sc.get(k) for k in ("mode", "pattern", "delay_ms",
                                                                   "loss_pct", "failure", "run")},
                     "seed": r.get("seed"), "busbw_mbit": None if bw is None else round(bw * 8 / 1e6, 3),
                     "median_iteration_s": res.get("median_duration_s"),
                     "time_lost_s": r.get("time_lost_s"),
                     "busiest_link_ratio": max(ratios) if ratios else None,
                     "retransmitted_packets": res.get("retransmitted_packets"),
                     "job_failed": bool(r.get("job_failed")),
                     "qps_in_error": len(r.get("qps_in_error") or ()),
                     "cpu_busy": r.get("cpu_busy"), "peak_wan_utilization": r.get("peak_wan_utilization"),
                     "bfd_down_s": tl.get("bfd_down_s"), "agent_reaction_s": tl.get("agent_reaction_s"),
                     "elapsed_s": r.get("elapsed_s")})
    return rows


def balance_before_and_after_cuts(records: list[dict]) -> dict[str, tuple]:
    """Per mode, the busiest-link ratio of the runs without a failure (the
    parameter server left out: its incast is uneven by design) that ran
    before the mode's first cut, and of those after: placement that does
    not recover from a cut and its restore shows here, not in any one
    scenario."""
    out = {}
    for mode in sorted({r["scenario"]["mode"] for r in records}):
        cuts, before, after = 0, [], []
        for r in sorted((r for r in records if r["scenario"]["mode"] == mode),
                        key=lambda r: r.get("t_start") or 0):
            if r["scenario"]["failure"]:
                cuts += 1
                continue
            ratios = [v for v in busiest_ratio(r.get("wan_bytes") or {}).values() if v]
            if r["scenario"]["pattern"] != "ps" and ratios:
                (after if cuts else before).append(max(ratios))
        out[mode] = (Spread.of(before), Spread.of(after))
    return out
