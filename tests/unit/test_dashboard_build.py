"""The committed dashboard is what qpagent.dashboard builds, and what the
builder builds is a dashboard Grafana can lay out and the report can read."""

import json
from pathlib import Path

from qpagent import dashboard

COMMITTED = Path(__file__).resolve().parents[2] / "dashboards" / "qpagent.json"


def test_committed_json_is_what_the_builder_writes():
    """Nobody edits the JSON by hand: `make dashboards` regenerates it."""
    assert COMMITTED.read_text() == dashboard.render(), \
        "dashboards/qpagent.json differs from qpagent.dashboard: run `make dashboards`"


def test_check_mode_tells_a_hand_edit(tmp_path):
    out = tmp_path / "qpagent.json"
    assert dashboard.main([str(out)]) == 0
    assert dashboard.main([str(out), "--check"]) == 0
    edited = json.loads(out.read_text())
    edited["panels"][1]["title"] = "edited by hand"
    out.write_text(json.dumps(edited))
    assert dashboard.main([str(out), "--check"]) == 1


def test_panels_tile_the_grid_row_by_row():
    """Every row's panels sit below it and fill whole lines of 24 columns."""
    panels = dashboard.build()["panels"]
    layout = []
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            layout.append((p["title"], g["y"], []))
        else:
            layout[-1][2].append((g["y"], g["x"], g["w"]))
    for title, row_y, cells in layout:
        assert cells, title
        assert min(y for y, _, _ in cells) == row_y + 1, title
        widths = {}
        for y, _, w in cells:
            widths[y] = widths.get(y, 0) + w
        assert set(widths.values()) == {24}, (title, widths)


def test_every_panel_family_is_present():
    titles = [p["title"] for p in dashboard.build()["panels"]]
    wanted = ["Agents up", "RoCE QPs steered", "BFD peers up", "Agent version",
              "Throughput per path", "QPs per path", "Imbalance ratio", "Path alive",
              "Path RTT", "Path probe loss", "Path state (probes)",
              "QP re-placements by reason", "Agent reaction time", "BFD peers",
              "QP repairs by cause", "Top QPs by throughput", "Parse outcomes",
              "Steer and pin events", "BPF program cost per run",
              "BGP sessions established", "BGP peers", "BFD peers (FRR)"]
    assert [t for t in wanted if t not in titles] == []
    assert len(titles) == len(set(titles))


def test_key_panels_carry_the_dashboards_own_queries():
    model = dashboard.build()
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in model["panels"]
             if p.get("targets")}
    got = {k.name: (k.title, [t.expr for t in k.targets], k.unit) for k in dashboard.key_panels(model)}
    assert got == {
        "wan-load": ("Throughput per path", exprs["Throughput per path"], "bps"),
        "qps-per-path": ("QPs per path", exprs["QPs per path"], "short"),
        "repairs": ("QP repairs by cause", exprs["QP repairs by cause"], "short"),
        "path-rtt": ("Path RTT", exprs["Path RTT"], "s"),
    }
