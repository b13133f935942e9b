"""The sweep's report: scenarios as medians with their spread across runs,
three modes side by side, with plots (matplotlib, Agg).

    python -m qplab.experiments.sweep_report RESULTS_DIR [REPORT_DIR]
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import (plot_link_load, plot_timeline, qps_in_error_section, render_main,  # noqa: E402
                     retry_text)
from .scenarios import MODES, PATTERNS  # noqa: E402
from .summary import (RUN_COLUMNS, Group, Spread, balance_before_and_after_cuts, groups,  # noqa: E402
                      machine_check, run_rows)

MODE_LABEL = {"kernel": "kernel hashing", "qpagent-firsthop": "qpagent first hop",
              "qpagent": "qpagent end-to-end + repair"}
MODE_COLOR = {"kernel": "tab:red", "qpagent-firsthop": "tab:orange", "qpagent": "tab:blue"}


def wall_minutes(runs: list[dict]) -> float:
    """Minutes from the first run's start to the last run's end."""
    spans = [(r["t_start"], r["t_start"] + (r.get("elapsed_s") or 0)) for r in runs if r.get("t_start")]
    return (max(e for _, e in spans) - min(s for s, _ in spans)) / 60 if spans else 0.0


def _t(s: Spread | None, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if s is None else s.text(spec, scale)


def ideal_by_scenario(rows: list[dict]) -> dict[tuple, float]:
    """The alpha-beta ideal bus bandwidth (Mbit/s) per (pattern, delay)."""
    return {(r["pattern"], r["delay_ms"]): r["ideal_busbw_gbps"] * 1000
            for r in rows if r.get("ideal_busbw_gbps")}


def _axes_values(gs: dict, modes, patterns, delays, loss, failure=False):
    for p in patterns:
        for m in modes:
            yield p, m, [gs.get((m, p, d, loss, failure)) for d in delays]


def plot_busbw_vs_model(gs: dict, ideal: dict, delays: list, losses: list, path: Path) -> None:
    fig, axes = plt.subplots(len(losses), len(PATTERNS), figsize=(12, 3.4 * len(losses)),
                             squeeze=False, sharex=True)
    for row, loss in enumerate(losses):
        for col, p in enumerate(PATTERNS):
            ax = axes[row][col]
            for m in MODES:
                pts = [(d, gs[(m, p, d, loss, False)].busbw_mbit()) for d in delays
                       if (m, p, d, loss, False) in gs]
                pts = [(d, s) for d, s in pts if s]
                if not pts:
                    continue
                ax.errorbar([d for d, _ in pts], [s.median for _, s in pts],
                            yerr=[[s.median - s.low for _, s in pts], [s.high - s.median for _, s in pts]],
                            marker="o", capsize=3, color=MODE_COLOR[m], label=MODE_LABEL[m])
            model = [(d, ideal.get((p, d))) for d in delays if ideal.get((p, d))]
            if model:
                ax.plot([d for d, _ in model], [v for _, v in model], "k--", lw=1, label="alpha-beta ideal")
            ax.set_title(f"{p}, loss {loss:g}%", fontsize=9)
            ax.set_xlabel("WAN one-way delay (ms)")
            ax.set_ylabel("bus bandwidth (Mbit/s)")
            ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("bus bandwidth, median of the runs (bars: lowest and highest run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_completion_distributions(gs: dict, delays: list, path: Path) -> None:
    fig, axes = plt.subplots(len(PATTERNS), len(delays), figsize=(12, 2.8 * len(PATTERNS)), squeeze=False)
    for i, p in enumerate(PATTERNS):
        for j, d in enumerate(delays):
            ax = axes[i][j]
            data, labels = [], []
            for m in MODES:
                g = gs.get((m, p, d, 0.0, False))
                if g and g.durations():
                    data.append(g.durations())
                    labels.append(MODE_LABEL[m].replace(" + repair", "").replace("qpagent ", "qpagent\n"))
            if data:
                ax.boxplot(data)
                ax.set_xticks(range(1, len(labels) + 1))
                ax.set_xticklabels(labels, fontsize=7)
            ax.set_title(f"{p}, {d:g} ms", fontsize=9)
            ax.set_ylabel("iteration (s)", fontsize=8)
    fig.suptitle("iteration completion times, every run's iterations (no failure, no loss)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_time_lost(gs: dict, delays: list, path: Path) -> None:
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(12, 3.4), squeeze=False)
    width = 0.8 / len(MODES)
    for col, p in enumerate(PATTERNS):
        ax = axes[0][col]
        for k, m in enumerate(MODES):
            xs, med, lo, hi = [], [], [], []
            for j, d in enumerate(delays):
                g = gs.get((m, p, d, 0.0, True))
                s = g.time_lost_s() if g else None
                if s:
                    xs.append(j + (k - 1) * width)
                    med.append(s.median)
                    lo.append(s.median - s.low)
                    hi.append(s.high - s.median)
            if xs:
                ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, color=MODE_COLOR[m], label=MODE_LABEL[m])
        ax.set_xticks(range(len(delays)))
        ax.set_xticklabels([f"{d:g} ms" for d in delays])
        ax.set_title(f"{p}: time lost to a silent WAN cut", fontsize=9)
        ax.set_ylabel("seconds")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _representative(runs: list[dict], pattern: str, delay: float, failure: bool) -> list[dict]:
    """Run 0 of one scenario in each mode, for the over-time plots."""
    out = []
    for m in MODES:
        for r in runs:
            sc = r["scenario"]
            if (sc["mode"], sc["pattern"], sc["delay_ms"], sc["loss_pct"], sc["failure"], sc.get("run", 0)) == \
                    (m, pattern, delay, 0.0, failure, 0) and r.get("wan_samples"):
                out.append(r)
    return out


def headline_table(gs: dict, ideal: dict, delays: list) -> list[str]:
    md = ["| pattern | WAN delay | " + " | ".join(MODE_LABEL[m] for m in MODES) + " | alpha-beta ideal |",
          "|---|--:|" + "--:|" * len(MODES) + "--:|"]
    for p in PATTERNS:
        for d in delays:
            cells = [_t(gs[(m, p, d, 0.0, False)].busbw_mbit()) if (m, p, d, 0.0, False) in gs else "-"
                     for m in MODES]
            model = ideal.get((p, d))
            md.append(f"| {p} | {d:g} ms | " + " | ".join(cells) + f" | {'-' if model is None else f'{model:.1f}'} |")
    return md


def failover_table(gs: dict, delays: list, losses: list) -> list[str]:
    md = ["| pattern | delay | loss | mode | time lost (s) | BFD down (ms) | agent re-placement (ms) | "
          "QPs moving again (ms) | jobs failed |",
          "|---|--:|--:|---|--:|--:|--:|--:|--:|"]
    for p in PATTERNS:
        for d in delays:
            for loss in losses:
                for m in MODES:
                    g = gs.get((m, p, d, loss, True))
                    if not g:
                        continue
                    md.append(f"| {p} | {d:g} | {loss:g}% | {MODE_LABEL[m]} | {_t(g.time_lost_s(), '.2f')} | "
                              f"{_t(g.timeline('bfd_down_s'), '.0f', 1000)} | "
                              f"{_t(g.timeline('agent_reaction_s'), '.0f', 1000)} | "
                              f"{_t(g.timeline('qps_recovered_s'), '.0f', 1000)} | "
                              f"{g.jobs_failed()}/{len(g.runs)} |")
    return md


def balance_table(gs: dict, delays: list) -> list[str]:
    md = ["| pattern | WAN delay | " + " | ".join(MODE_LABEL[m] for m in MODES) + " |",
          "|---|--:|" + "--:|" * len(MODES)]
    for p in PATTERNS:
        for d in delays:
            cells = [_t(gs[(m, p, d, 0.0, False)].balance(), ".2f") if (m, p, d, 0.0, False) in gs else "-"
                     for m in MODES]
            md.append(f"| {p} | {d:g} ms | " + " | ".join(cells) + " |")
    return md


def all_scenarios_table(gs: dict) -> list[str]:
    md = ["| scenario | runs | busbw (Mbit/s) | iteration (s) | busiest-link ratio | time lost (s) | "
          "jobs failed | QPs in error |",
          "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for key in sorted(gs, key=lambda k: (MODES.index(k[0]) if k[0] in MODES else 9,) + k[1:]):
        g = gs[key]
        name = (f"{g.mode} {g.pattern} {g.delay_ms:g} ms {g.loss_pct:g}% "
                f"{'cut' if g.failure else 'no failure'}")
        err = f" ({len(g.errors())} runs failed to run)" if g.errors() else ""
        md.append(f"| {name}{err} | {len(g.runs)} | {_t(g.busbw_mbit())} | {_t(g.iteration_s(), '.3f')} | "
                  f"{_t(g.balance(), '.2f')} | {_t(g.time_lost_s(), '.2f')} | {g.jobs_failed()} | "
                  f"{g.qps_in_error()} |")
    return md


def panels_section(out: Path) -> list[str]:
    """The dashboard's key panels, drawn from Prometheus during the sweep."""
    try:
        drawn = json.loads((out / "panels.json").read_text())
    except (OSError, ValueError):
        return []
    md = ["", f"## The dashboard's key panels over {drawn['run']}", "",
          "Drawn from the lab's Prometheus with the dashboard's own queries (range queries; "
          "no Grafana server runs here):", ""]
    md += [f"![{f}]({f})" for f in drawn["files"]]
    if drawn.get("empty"):
        md += ["", "No data in that run: " + ", ".join(drawn["empty"]) +
               " (path RTT comes from liveness probes, which were off)."]
    return md


def write_sweep_report(results: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    st = results["settings"]
    gs: dict[tuple, Group] = groups(runs)
    delays = sorted({k[2] for k in gs})
    losses = sorted({k[3] for k in gs})
    ideal = ideal_by_scenario(results["headline"]["rows"])
    check = machine_check(runs)
    per = len(runs) / max(len(gs), 1)
    md = ["# qpagent sweep report", "",
          f"{len(gs)} scenarios, {len(runs)} runs ({per:.3g} per scenario, each with its own seed: the "
          f"seed picks the QP numbers, so kernel hashing lands differently each run), "
          f"{wall_minutes(runs):.0f} minutes from the first run's start to the last run's end. Every figure is the median of a scenario's runs "
          f"with the lowest and highest run in brackets.", "",
          f"Tensor {st['size'] / 2**20:g} MiB"
          + "".join(f" ({p} {v / 2**20:g} MiB)" for p, v in (st.get("pattern_sizes") or {}).items())
          + f", {st['iterations']} iterations per run "
          f"({st['fail_iterations']} with a failure, the cut half-way through iteration {st['fail_at']}), "
          f"{st['qps_per_conn']} QPs per connection, messages of {st['msg_size'] // 1024} KiB, "
          f"inner source port policy `{st['sport_policy']}`, WAN links {st['wan_rate_mbit']:g} Mbit/s "
          f"with {st['wan_buffer_ms']:g} ms of buffer, engine MTU {st['engine']['mtu']}, window "
          f"{st['engine']['window']} packets per QP, {retry_text(st['engine'])}.", "",
          "Modes: **kernel hashing** (no agent: Linux hashes the outer source port), **qpagent first "
          "hop** (agents balance QPs over their own uplinks), **qpagent end-to-end + repair** (agents "
          "balance over whole paths learnt by TTL probes and re-place QPs on BFD and route events"
          + (", and on path liveness" if st.get("liveness") else
             "; path liveness off, as qpagent ships: in this lab it still declares paths dead with "
             "nothing failed, see the README's failover section") + ").", "",
          "## Was the WAN the bottleneck?", "",
          f"CPU busy over all runs (both cores): {_t(check['cpu_busy'], '.0%')}; per mode: " +
          ", ".join(f"{MODE_LABEL.get(m, m)} {_t(s, '.0%')}" for m, s in check["by_mode_cpu"].items()) + ". "
          f"The busiest WAN link direction's highest 1-second rate, as a fraction of its "
          f"{st['wan_rate_mbit']:g} Mbit/s, in the runs without a failure: "
          f"{_t(check['peak_wan_utilization'], '.2f')}. A link that reaches its rate while the CPUs "
          f"have room left is what makes the WAN, not the engine, the limit.", "",
          "## Bus bandwidth (Mbit/s), no failure, no loss", ""]
    md += headline_table(gs, ideal, delays)
    bw = out / "sweep-busbw-vs-model.png"
    plot_busbw_vs_model(gs, ideal, delays, losses, bw)
    md += ["", "Bus bandwidth follows nccl-tests (algbw x 2(N-1)/N). The alpha-beta ideal: every step "
           "of S/N costs alpha + (S/N)/beta, alpha the one-way WAN delay, beta what a connection's QPs "
           "get from the WAN links when perfectly placed, capped by the window.", "",
           f"![bus bandwidth beside the model]({bw.name})", "",
           "## Balance: busiest WAN link over the mean (1.00 = even), no failure, no loss", ""]
    md += balance_table(gs, delays)
    md += ["", "Ring and hierarchical runs without a failure, before each mode's first silent cut "
           "and after it (a cut's link is restored at the end of its run):", "",
           "| mode | before the first cut | after |", "|---|--:|--:|"]
    for mode, (before, after) in balance_before_and_after_cuts(runs).items():
        md.append(f"| {MODE_LABEL.get(mode, mode)} | {_t(before, '.2f')} | {_t(after, '.2f')} |")
    back = {m: Spread.of([r["paths_back_s"] for r in runs
                          if r["scenario"]["mode"] == m and r.get("paths_back_s") is not None])
            for m in MODES}
    if any(back.values()):
        md += ["", "A run after a cut starts once the agents have every path again (routing back, "
               "then, end to end, a TTL round finding the restored link). Seconds from routing back "
               "to every path back: " + "; ".join(f"{MODE_LABEL[m]} {_t(b, '.1f')}"
                                                  for m, b in back.items() if b) + "."]
    md += ["", "## A silent WAN cut", "",
           "The busiest WAN link is blackholed half-way through an iteration: it stays up and drops "
           "everything, so only BFD (100 ms x 3) or qpagent's probes notice. Time lost: iteration time "
           "beyond the run's own pre-cut median, summed over the iterations from the cut on.", ""]
    md += failover_table(gs, delays, losses)
    lost = out / "sweep-time-lost.png"
    plot_time_lost(gs, delays, lost)
    md += ["", f"![time lost]({lost.name})"]
    reps = _representative(runs, "ring", delays[0], True) if delays else []
    if any(r.get("timeline") for r in reps):
        tl = out / "sweep-failover-timeline.png"
        plot_timeline(reps, tl)
        md += ["", f"Failover timelines, ring AllReduce at {delays[0]:g} ms, run 0 of each mode:", "",
               f"![failover timelines]({tl.name})"]
    for failure in (False, True):
        reps = _representative(runs, "ring", delays[0], failure) if delays else []
        if reps:
            load = out / f"sweep-wan-load-ring-{'cut' if failure else 'ok'}.png"
            plot_link_load(reps, load, f"per-WAN-link load, ring, {delays[0]:g} ms, "
                           f"{'the busiest link cut' if failure else 'no failure'}")
            md += ["", f"## Per-WAN-link load over time: ring, {delays[0]:g} ms, "
                   f"{'with the cut' if failure else 'no failure'}", "", f"![WAN load]({load.name})"]
    md += panels_section(out)
    comp = out / "sweep-completion-times.png"
    plot_completion_distributions(gs, delays, comp)
    md += ["", "## Completion-time distributions", "", f"![completion times]({comp.name})"]
    md += ["", "## Every scenario", ""] + all_scenarios_table(gs)
    failed = qps_in_error_section(results["headline"]["rows"])
    md += failed or ["", "## QPs in error", "", "None: no QP ran out of retries in any run."]
    md += ["", "Every run's key figures: [runs.csv](runs.csv)."]
    write_runs_csv(runs, out / "runs.csv")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def write_runs_csv(runs: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        writer.writeheader()
        writer.writerows(run_rows(runs))


def main(argv=None) -> None:
    render_main("sweep_report", write_sweep_report, argv)


if __name__ == "__main__":
    main()
