"""The experiment report: markdown with PNG plots (matplotlib, Agg).

    python -m qplab.experiments.report results/quick [REPORT_DIR]   # re-render from results.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..workloads import gbn  # noqa: E402
from . import observe  # noqa: E402


def _short(link: str) -> str:
    """wan-dc1-border1-dc2-border2 -> b1-b2 (the two-DC lab's links); any
    other pair of DCs is named: wan-dc1-border1-dc3-border1 -> dc1b1-dc3b1."""
    parts = link.split("-")[1:]
    ends = [(parts[i], parts[i + 1].replace("border", "b")) for i in range(0, len(parts) - 1, 2)
            if parts[i + 1].startswith("border")]
    if len(ends) != 2:
        return link
    if {dc for dc, _ in ends} <= {"dc1", "dc2"}:
        return "-".join(b for _, b in ends)
    return "-".join(dc + b for dc, b in ends)


def _delay_text(delay) -> str:
    return "each link's own delay" if delay is None else f"WAN delay {delay:g} ms"


def capacity_section(runs: list[dict]) -> list[str]:
    """Where WAN links differ in rate: each link's share of the capacity
    beside its share of the bytes, per mode (no failure): balance then means
    load in proportion to capacity."""
    ok = [r for r in runs if not r["scenario"]["failure"] and r.get("wan_rates") and r.get("wan_bytes")]
    if not ok or len({v for r in ok for v in r["wan_rates"].values()}) <= 1:
        return []
    modes = sorted({r["scenario"]["mode"] for r in ok})
    md = ["", "## Load against capacity", "",
          "WAN links of unequal rate: per DC pair and direction, each link's share of the pair's "
          "capacity beside its share of the bytes (no failure).", "",
          "| WAN link | direction | Mbit/s | capacity share | " + " | ".join(f"{m} bytes share" for m in modes) + " |",
          "|---|---|--:|--:|" + "--:|" * len(modes)]
    rates = ok[0]["wan_rates"]
    by_mode = {m: next(r for r in ok if r["scenario"]["mode"] == m) for m in modes}

    def pair(link):
        parts = link.split("-")
        return frozenset((parts[1], parts[3])) if len(parts) >= 5 else link
    for link in sorted(rates):
        peers = [l for l in rates if pair(l) == pair(link)]
        cap = rates[link] / sum(rates[l] for l in peers)
        for d in sorted({d for r in ok for d in r["wan_bytes"].get(link, {})}):
            cells = []
            for m in modes:
                wb = by_mode[m]["wan_bytes"]
                total = sum(wb.get(l, {}).get(d, 0) for l in peers)
                cells.append("-" if not total else f"{wb.get(link, {}).get(d, 0) / total:.2f}")
            md.append(f"| {_short(link)} | {d} | {rates[link]:g} | {cap:.2f} | " + " | ".join(cells) + " |")
    return md


def _fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def retry_text(engine: dict) -> str:
    """The RC retransmission the QPs ran with (a timeout exponent, or a
    fixed timeout in seconds when one was given instead)."""
    exp, rto = engine.get("timeout_exp"), engine.get("rto")
    timeout = rto if rto is not None else gbn.local_ack_timeout(exp)
    what = "no local ACK timeout" if timeout is None else f"local ACK timeout {timeout * 1000:.3g} ms"
    if rto is None and exp:
        what += f" (timeout {exp})"
    return f"{what}, retry_cnt {engine.get('retry_cnt')}"


def qps_in_error_section(rows: list[dict]) -> list[str]:
    """Which QPs went to the error state, per failed job."""
    failed = [r for r in rows if r.get("job_failed")]
    if not failed:
        return []
    md = ["", "## QPs in error", "",
          "| scenario | host | QP | peer | source port | retries | timeouts | error |",
          "|---|---|--:|---|--:|--:|--:|---|"]
    for r in failed:
        for q in r["qps_in_error"]:
            md.append(f"| {r['name']} | {q['host']} | {q['qpn']} | {q['peer']} | {q['sport']} | "
                      f"{q['retries']} | {q['timeouts']} | {q['error']} |")
    return md


def _group_key(run: dict) -> tuple:
    sc = run["scenario"]
    return (sc["pattern"], sc["delay_ms"] if sc["delay_ms"] is not None else -1.0, sc["loss_pct"])


def plot_link_load(runs: list[dict], path: Path, title: str) -> None:
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.4 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        rs = observe.rates(run["wan_samples"], min_interval=0.25)
        if not rs:
            continue
        t0 = run["wan_samples"][0]["t"]
        links = sorted(k for k in rs[0] if k != "t")
        for link in links:
            for d in sorted(rs[0][link]):
                ax.plot([r["t"] - t0 for r in rs], [r[link][d] / 1e6 for r in rs],
                        label=f"{_short(link)} {d}", lw=1)
        f = run.get("failure")
        if f and "t_blackhole" in f:
            ax.axvline(f["t_blackhole"] - t0, color="red", ls="--", lw=1)
            ax.text(f["t_blackhole"] - t0, ax.get_ylim()[1] * 0.9, " blackhole", color="red", fontsize=8)
        ax.set_title(run["name"], fontsize=9)
        ax.set_ylabel("Mbit/s")
    axes[-1, 0].set_xlabel("seconds since run start")
    axes[0, 0].legend(fontsize=6, ncol=4, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_completion(runs: list[dict], path: Path) -> None:
    ok = [r for r in runs if r.get("result")]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(ok) + 1.5))
    data = [[it["duration_s"] for it in r["result"]["per_iteration"]] for r in ok]
    if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10):
        ax.boxplot(data, orientation="horizontal", showfliers=True)
    else:
        ax.boxplot(data, vert=False, showfliers=True)
    ax.set_yticks(range(1, len(ok) + 1))
    ax.set_yticklabels([r["name"] for r in ok])
    for i, d in enumerate(data, start=1):
        ax.scatter(d, [i] * len(d), s=10, alpha=0.6)
    ax.set_xlabel("iteration completion time (s)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_timeline(runs: list[dict], path: Path) -> None:
    fails = [r for r in runs if r.get("timeline")]
    fig, axes = plt.subplots(len(fails), 1, figsize=(9, 2.2 * len(fails)), squeeze=False)
    for ax, run in zip(axes[:, 0], fails):
        tl = run["timeline"]
        t0 = run["failure"]["t_blackhole"]
        rs = observe.rates(run["wan_samples"])
        ax.plot([r["t"] - t0 for r in rs],
                [sum(sum(v.values()) for k, v in r.items() if k != "t") / 1e6 for r in rs],
                color="grey", lw=1, label="all WAN links")
        marks = [("blackhole", 0.0, "red"), ("BFD down", tl.get("bfd_down_s"), "orange"),
                 ("agent re-placement", tl.get("agent_reaction_s"), "blue"),
                 ("QPs moving again", tl.get("qps_recovered_s"), "green"),
                 ("WAN rate back", tl.get("wan_rate_recovered_s"), "purple")]
        for label, t, color in marks:
            if t is not None:
                ax.axvline(t, color=color, ls="--", lw=1, label=f"{label} ({t * 1000:.0f} ms)")
        ax.set_xlim(-2, max([5.0] + [t + 1 for _, t, _ in marks if t is not None]))
        ax.set_title(f"{run['name']}: {_short(tl['link'])} blackholed", fontsize=9)
        ax.set_ylabel("Mbit/s")
        ax.legend(fontsize=6, loc="upper right")
    axes[-1, 0].set_xlabel("seconds after the blackhole")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_busbw(rows: list[dict], path: Path) -> None:
    ok = [r for r in rows if "median_busbw_gbps" in r]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(ok) + 1.5))
    y = range(len(ok))
    ax.barh([i + 0.2 for i in y], [r["median_busbw_gbps"] * 1000 for r in ok], 0.4, label="measured")
    ax.barh([i - 0.2 for i in y], [(r["ideal_busbw_gbps"] or 0) * 1000 for r in ok], 0.4,
            label="alpha-beta ideal", alpha=0.6)
    ax.set_yticks(list(y))
    ax.set_yticklabels([r["name"] for r in ok], fontsize=7)
    ax.set_xlabel("bus bandwidth (Mbit/s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _side_by_side(runs: list[dict]) -> list[str]:
    """Per-WAN-link QP counts and bytes, kernel hashing beside qpagent."""
    by = {(r["scenario"]["mode"], r["scenario"]["failure"]): r for r in runs}
    lines = []
    for failure in (False, True):
        k, q = by.get(("kernel", failure)), by.get(("qpagent", failure))
        if not (k or q):
            continue
        lines += [f"\n**{'with the failure (QPs: where they went after the cut)' if failure else 'no failure'}**\n",
                  "| WAN link | direction | kernel QPs | kernel MiB | qpagent QPs | qpagent MiB |",
                  "|---|---|--:|--:|--:|--:|"]
        links = sorted({l for r in (k, q) if r for l in r["wan_bytes"]})
        for link in links:
            dirs = sorted({d for r in (k, q) if r for d in r["wan_bytes"].get(link, {})})
            for d in dirs:
                cells = []
                for r in (k, q):
                    if not r:
                        cells += ["-", "-"]
                        continue
                    src_dc = d.split("->")[0]
                    where = "main_link_after" if failure else "main_link"
                    nq = sum(1 for x in r["qp_links"] if x.get(where) == link
                             and r["rank_dcs"].get(x["from"]) == src_dc)
                    cells += [str(nq), f"{r['wan_bytes'][link].get(d, 0) / 2**20:.1f}"]
                lines.append(f"| {_short(link)} | {d} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    rows = results["headline"]["rows"]
    st = results["settings"]
    md = ["# qpagent experiment report", "",
          f"Tensor {st['size'] / 2**20:g} MiB, {st['qps_per_conn']} QPs per connection, "
          f"messages of {st['msg_size'] // 1024} KiB, inner source port policy `{st['sport_policy']}`, "
          f"WAN links {st['wan_rate_mbit']:g} Mbit/s with {st['wan_buffer_ms']:g} ms of buffer, "
          f"engine MTU {st['engine']['mtu']}, window {st['engine']['window']} packets per QP, "
          f"{retry_text(st['engine'])}. Run took {results['elapsed_s']} s.", "",
          "## Headline", "",
          "| scenario | median iter (s) | busbw (Mbit/s) | ideal busbw (Mbit/s) | busiest-link ratio | "
          "retransmitted pkts | time lost (s) | every byte verified | QPs in error |",
          "|---|--:|--:|--:|---|--:|--:|---|--:|"]
    for r in rows:
        if r.get("job_failed"):
            md.append(f"| {r['name']} | job failed in iteration {_fmt(r['failed_iteration'], 'd')} "
                      f"| | | | | | | {len(r['qps_in_error'])} |")
            continue
        if "error" in r:
            md.append(f"| {r['name']} | failed: {r['error']} | | | | | | | |")
            continue
        ratio = ", ".join(f"{d} {v}" for d, v in r["busiest_link_ratio"].items())
        md.append(f"| {r['name']} | {r['median_iteration_s']:.3f} | {r['median_busbw_gbps'] * 1000:.1f} | "
                  f"{_fmt(r['ideal_busbw_gbps'] and r['ideal_busbw_gbps'] * 1000, '.1f')} | {ratio} | "
                  f"{r['retransmitted_packets']} | {_fmt(r['time_lost_s'])} | {r['all_verified']} | 0 |")
    md += ["", "Busiest-link ratio: bytes on the busiest WAN link over the mean of all WAN links, "
           "per direction (1.0 is perfect balance). Bus bandwidth follows nccl-tests: "
           "algbw x 2(N-1)/N. Time lost: iteration time beyond the no-failure median, summed. "
           "QPs in error: queue pairs that ran out of retries; one fails the job, as in a "
           "collective library."]
    md += qps_in_error_section(rows)
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    for gi, (key, grp) in enumerate(sorted(groups.items())):
        pattern, delay, loss = key
        delay = None if delay < 0 else delay      # each link's own (sorted first)
        tag = f"{pattern}-d{'topo' if delay is None else f'{delay:g}'}-l{loss:g}"
        md += ["", f"## {pattern}, {_delay_text(delay)}, loss {loss:g}%", "",
               "QPs and bytes per WAN link (QPs from a sample of the VXLAN frames in each WAN box, "
               "bytes from its interface counters):"]
        md += _side_by_side(grp)
        load = out / f"wan-load-{tag}.png"
        plot_link_load(grp, load, f"per-WAN-link load, {pattern}, {_delay_text(delay)}, {loss:g}% loss")
        md += ["", f"![per-WAN-link load]({load.name})"]
    md += capacity_section(runs)
    comp = out / "completion-times.png"
    plot_completion(runs, comp)
    md += ["", "## Completion-time distributions", "", f"![completion times]({comp.name})"]
    if any(r.get("timeline") for r in runs):
        tl = out / "failover-timeline.png"
        plot_timeline(runs, tl)
        md += ["", "## Failover timeline", "",
               "| scenario | link | BFD down | agent re-placement | QPs moving again | WAN rate back | time lost |",
               "|---|---|--:|--:|--:|--:|--:|"]
        for r in runs:
            t = r.get("timeline")
            if t:
                ms = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"   # noqa: E731
                md.append(f"| {r['name']} | {_short(t['link'])} | {ms(t['bfd_down_s'])} | "
                          f"{ms(t['agent_reaction_s'])} | {ms(t['qps_recovered_s'])} | "
                          f"{ms(t['wan_rate_recovered_s'])} | {_fmt(r.get('time_lost_s'))} s |")
        md += ["", f"![failover timeline]({tl.name})"]
    bw = out / "busbw-vs-model.png"
    plot_busbw(rows, bw)
    m = results["model"]
    md += ["", "## Bus bandwidth beside the alpha-beta model", "",
           f"Ideal: every step of S/N costs alpha + (S/N)/beta, with alpha the one-way WAN delay and "
           f"beta what a connection's {m['qps_per_conn']} QPs get from {m['wan_links']} WAN links of "
           f"{m['wan_rate_bps'] / 1e6:g} Mbit/s when perfectly placed, capped by the window "
           f"({m['window_pkts']} x {m['mtu']} B per round trip per QP) and the engine's own rate "
           f"({m['host_rate_bps'] / 1e9:g} Gbit/s).", "", f"![busbw vs model]({bw.name})"]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def render_main(module: str, write, argv=None) -> None:
    """`python -m qplab.experiments.MODULE RESULTS_DIR [REPORT_DIR]`: render a
    report again from RESULTS_DIR/results.json with `write(results, out)`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        sys.exit(f"usage: python -m qplab.experiments.{module} RESULTS_DIR [REPORT_DIR]")
    src = Path(argv[0])
    try:
        results = json.loads((src / "results.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read {src / 'results.json'}: {e}")
    print(write(results, Path(argv[1]) if len(argv) == 2 else src))


def main(argv=None) -> None:
    render_main("report", write_report, argv)


if __name__ == "__main__":
    main()
