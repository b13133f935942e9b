"""The dashboard's key panels as PNGs, drawn from Prometheus range queries.

The lab runs no Grafana server, so the report draws the panels itself: the very
queries the dashboard sends (`qpagent.dashboard.key_panels`, one source of
truth), with Grafana's variables filled in as Grafana would fill them, sent
to Prometheus as range queries; one line per series, named by the panel's
legend format.

    render_panels("http://172.31.255.254:9090", t0, t1, Path("report"))
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qpagent.dashboard import KeyPanel, key_panels  # noqa: E402

from .. import monitor  # noqa: E402
from ..monitor import SCRAPE_INTERVAL  # noqa: E402

POINTS = 300                 # about as many as a Grafana panel asks for
REACTION_WINDOW = "1h"       # the dashboard's default
# Plot units: Grafana unit -> (axis label, scale).
UNITS = {"bps": ("Mbit/s", 1e-6), "s": ("ms", 1e3), "percentunit": ("%", 100.0),
         "short": ("", 1.0), "none": ("", 1.0)}



class PanelError(RuntimeError):
    """Prometheus refused a panel's query; the message says which and why."""


@dataclass(frozen=True)
class Series:
    name: str                          # the legend, as Grafana would show it
    points: tuple[tuple[float, float], ...]   # (unix time, value)


def seconds(duration: str) -> float:
    """A Prometheus duration of one unit ("2s", "500ms", "1m") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration.strip())
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]


def step_for(t0: float, t1: float, points: int = POINTS) -> float:
    return max(1.0, math.ceil((t1 - t0) / points))


def grafana_values(t0: float, t1: float, step: float, scrape_s: float) -> dict[str, str]:
    """What Grafana puts in place of its variables for this range: every node
    and router, and $__rate_interval as max(interval + scrape, 4 x scrape)."""
    rate = max(step + scrape_s, 4 * scrape_s)
    return {"node": ".*", "router": ".*", "reaction_window": REACTION_WINDOW,
            "__interval": f"{int(step)}s", "__rate_interval": f"{int(math.ceil(rate))}s",
            "__range": f"{int(t1 - t0)}s"}


def expand(expr: str, values: dict[str, str]) -> str:
    def one(match):
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def legend(fmt: str, labels: dict[str, str]) -> str:
    name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return name or json.dumps(labels, sort_keys=True)


def query_range(prometheus_url: str, expr: str, t0: float, t1: float, step: float,
                timeout: float = 30) -> list[dict]:
    """The matrix Prometheus answers for one range query."""
    try:
        return monitor.api_query(prometheus_url, "query_range",
                                 {"query": expr, "start": t0, "end": t1, "step": step}, timeout)
    except monitor.MonitorError as exc:
        raise PanelError(str(exc)) from None


def fetch_panels(prometheus_url: str, t0: float, t1: float,
                 scrape_interval: str = SCRAPE_INTERVAL) -> dict[KeyPanel, list[Series]]:
    """Every key panel's series over [t0, t1], as the dashboard would draw them."""
    step = step_for(t0, t1)
    values = grafana_values(t0, t1, step, seconds(scrape_interval))
    out = {}
    for panel in key_panels():
        series = []
        for target in panel.targets:
            for row in query_range(prometheus_url, expand(target.expr, values), t0, t1, step):
                points = tuple((float(t), float(v)) for t, v in row["values"])
                series.append(Series(legend(target.legend, row["metric"]), points))
        out[panel] = sorted(series, key=lambda s: s.name)
    return out


def draw(panel: KeyPanel, series: list[Series], t0: float, path: Path) -> Path:
    label, scale = UNITS.get(panel.unit, (panel.unit, 1.0))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for s in series:
        xs = [t - t0 for t, _ in s.points]
        ys = [v * scale if math.isfinite(v) else float("nan") for _, v in s.points]
        ax.plot(xs, ys, label=s.name, linewidth=1.2, drawstyle="steps-post")
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(panel.title)
    ax.set_xlabel("seconds")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=1 if len(series) <= 16 else 2)
    # the legend sits outside the axes: save the whole of it, uncut
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def render_panels(prometheus_url: str, t0: float, t1: float, out_dir: Path,
                  scrape_interval: str = SCRAPE_INTERVAL) -> list[Path]:
    """One PNG per key panel (WAN load per path, QPs per path, repairs, path
    RTT) over [t0, t1] (unix seconds), written to out_dir/panel-<name>.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [draw(panel, series, t0, out_dir / f"panel-{panel.name}.png")
            for panel, series in fetch_panels(prometheus_url, t0, t1, scrape_interval).items()]
