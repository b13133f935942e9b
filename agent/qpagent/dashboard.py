"""The Grafana dashboard, built with grafana-foundation-sdk (the Grafana
project's own builder) and written to dashboards/qpagent.json.

`python -m qpagent.dashboard` rewrites the file; `--check` only says whether
the committed file is what this module builds. Nobody edits the JSON by hand:
change a panel here. The lab's report renders its key panels from the same
queries (`key_panels`), so the dashboard and the report never disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common as cb, dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm, dashboard as dm

TITLE = "qpagent"
UID = "qpagent-overview"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${DS_PROMETHEUS}")
NODE = 'node=~"$node"'          # agents chosen in the node variable
ROUTER = 'node=~"$router"'      # routers chosen in the router variable (FRR exporters)
PATH_LEGEND = "{{node}} → {{vtep}} path {{path}} ({{uplink}})"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "dashboards" / "qpagent.json"

# Grafana's import wizard asks for the data source through these.
INPUTS = [{"name": "DS_PROMETHEUS", "label": "Prometheus",
           "description": "The Prometheus that scrapes the qpagent exporters (and FRR's)",
           "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
REQUIRES = [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}]


# ---------------------------------------------------------------- building blocks

def query(expr: str, legend: str, ref: str = "A", instant: bool = False) -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return q.instant() if instant else q.range()


def _green() -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=None, color="green")])


def _states(**texts: tuple[str, str]) -> list[dm.ValueMap]:
    """A value mapping: value -> (text, colour)."""
    return [dm.ValueMap(options={value: dm.ValueMappingResult(text=text, color=colour)
                                 for value, (text, colour) in texts.items()})]


def _legend_table() -> cb.VizLegendOptions:
    return (cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT).show_legend(True).calcs(["lastNotNull", "max"]))


def _lines(title: str, description: str, unit: str, width: int, height: int,
           *targets: prom.Dataquery, line_width: int = 1) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(width).height(height).thresholds(_green())
             .draw_style(cm.GraphDrawStyle.LINE).line_width(line_width).fill_opacity(0)
             .legend(_legend_table())
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.DESCENDING)))
    for target in targets:
        panel.with_target(target)
    return panel


def _bars(title: str, description: str, target: prom.Dataquery, width: int) -> timeseries.Panel:
    """Counts per interval, stacked bars (re-placements, repairs)."""
    return (_lines(title, description, "short", width, 8, target)
            .draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60)
            .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A")))


def _stat(title: str, description: str, *targets: prom.Dataquery, unit: str | None = None,
          text_mode=cm.BigValueTextMode.AUTO, color_mode=cm.BigValueColorMode.VALUE) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
             .span(6).height(4).thresholds(_green())
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
             .color_mode(color_mode).graph_mode(cm.BigValueGraphMode.NONE).text_mode(text_mode)
             .justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO))
    if unit:
        panel.unit(unit)
    for target in targets:
        panel.with_target(target)
    return panel


def _timeline(title: str, description: str, target: prom.Dataquery, mappings, width: int,
              height: int = 8) -> statetimeline.Panel:
    return (statetimeline.Panel().title(title).description(description).datasource(DATASOURCE)
            .span(width).height(height).thresholds(_green()).mappings(mappings)
            .show_value(cm.VisibilityMode.NEVER).merge_values(True).row_height(0.8)
            .legend(cb.VizLegendOptions().show_legend(False)
                    .display_mode(cm.LegendDisplayMode.LIST).placement(cm.LegendPlacement.BOTTOM))
            .with_target(target))


UP_DOWN = _states(**{"0": ("down", "red"), "1": ("up", "green")})


# ---------------------------------------------------------------- rows

def overview_row() -> list:
    return [
        db.Row("Overview"),
        _stat("Agents up", "qpagent_up per node: 1 when the agent answered the last scrape.",
              query(f'qpagent_up{{{NODE}}}', "{{node}}", instant=True))
        .mappings(UP_DOWN)
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
            [dm.Threshold(value=None, color="red"), dm.Threshold(value=1, color="green")])),
        _stat("RoCE QPs steered", "Queue pairs the agents place on paths now (qpagent_qps).",
              query(f'sum(qpagent_qps{{{NODE}}})', "QPs", instant=True), unit="short"),
        _stat("BFD peers up", "BFD sessions up, out of those FRR knows (qpagent_bfd_peer_up).",
              query(f'sum(qpagent_bfd_peer_up{{{NODE}}})', "up", instant=True),
              query(f'count(qpagent_bfd_peer_up{{{NODE}}})', "configured", "B", instant=True),
              unit="short"),
        _stat("Agent version", "qpagent_info: the version each agent runs.",
              query(f'qpagent_info{{{NODE}}}', "{{node}} {{version}}", instant=True),
              text_mode=cm.BigValueTextMode.NAME, color_mode=cm.BigValueColorMode.NONE),
    ]


def paths_row() -> list:
    return [
        db.Row("Paths"),
        _lines("Throughput per path",
               "Bits per second the agent steered onto each path (vtep = remote VTEP, "
               "path = path index, uplink = first hop).", "bps", 12, 9,
               query(f'sum by (node, vtep, path, uplink) (rate(qpagent_path_bytes_total{{{NODE}}}'
                     '[$__rate_interval])) * 8', PATH_LEGEND))
        .fill_opacity(10).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A")),
        _lines("QPs per path",
               "RoCE queue pairs placed on each path; a balanced placement keeps these within "
               "one of each other.", "short", 12, 9,
               query(f'qpagent_path_qps{{{NODE}}}', PATH_LEGEND), line_width=2)
        .line_interpolation(cm.LineInterpolation.STEP_AFTER).decimals(0),
        _lines("Imbalance ratio",
               "QPs on the busiest live path over ceil(QPs / live paths), the best possible, per "
               "remote VTEP. 1.0 (dashed line) is perfect balance.", "none", 12, 8,
               query(f'qpagent_imbalance_ratio{{{NODE}}}', "{{node}} → {{vtep}}"), line_width=2)
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
            [dm.Threshold(value=None, color="green"), dm.Threshold(value=1, color="text")]))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED))
        .axis_soft_min(0),
        _timeline("Path alive",
                  "1 (alive) while a path is usable; 0 (dead) after its link, route or BFD "
                  "session went away.",
                  query(f'qpagent_path_alive{{{NODE}}}', PATH_LEGEND),
                  _states(**{"0": ("dead", "red"), "1": ("alive", "green")}), 12),
    ]


def liveness_row() -> list:
    """End-to-end probes (liveness on): only paths whose remote VTEP answers have these."""
    return [
        db.Row("Path liveness (probes)"),
        _lines("Path RTT",
               "Round-trip time of each path's newest probe reply; the probe carries the path's "
               "own outer 5-tuple, so this is the RTT the path's QPs see.", "s", 8, 8,
               query(f'qpagent_path_rtt_seconds{{{NODE}}}', PATH_LEGEND), line_width=2),
        _lines("Path probe loss",
               "Share of the probes of the last second without a reply, per path: a grey "
               "failure shows here before anything else.", "percentunit", 8, 8,
               query(f'qpagent_path_probe_loss_ratio{{{NODE}}}', PATH_LEGEND), line_width=2)
        .axis_soft_min(0).axis_soft_max(1),
        _timeline("Path state (probes)",
                  "up while a path answers its probes, down once it missed them past the "
                  "liveness deadline (the data plane then moves its QPs).",
                  query(f'qpagent_path_healthy{{{NODE}}}', PATH_LEGEND), UP_DOWN, 8),
    ]


def failures_row() -> list:
    return [
        db.Row("Failures and reaction"),
        _bars("QP re-placements by reason",
              "QPs moved per interval (a reason's first burst included): dead_path (their path "
              "died), path_up / rebalance (balance restored), port_remap (the FIB sent their "
              "port elsewhere).",
              query(f'sum by (node, reason) (increase(qpagent_replacements_total{{{NODE}}}'
                    '[$__rate_interval]))', "{{node}} {{reason}}"), 8),
        _lines("Agent reaction time",
               "Time from a path event seen (link, route or BFD change) to the BPF maps updated; "
               "p50 and p99 over the sliding window $reaction_window.", "s", 8, 8,
               *(query(f'histogram_quantile({q}, sum by (node, le) (increase('
                       f'qpagent_reaction_seconds_bucket{{{NODE}}}[$reaction_window])))',
                       f"{{{{node}}}} {name}", ref)
                 for q, name, ref in ((0.5, "p50", "A"), (0.99, "p99", "B"))), line_width=2)
        .span_nulls(True),
        _timeline("BFD peers",
                  "State of every BFD session FRR reports on the agent's node "
                  "(qpagent_bfd_peer_up).",
                  query(f'qpagent_bfd_peer_up{{{NODE}}}', "{{node}} {{peer}} ({{interface}})"),
                  UP_DOWN, 8),
        _bars("QP repairs by cause",
              "QPs moved off a failing path per interval, by what told: liveness (its probes "
              "went unanswered), retransmit (the QP resent a PSN), nak (its peer asked for a "
              "resend), stall (data outstanding without ACK progress): all four moved by the "
              "data plane; bfd and route (the agent, after FRR or the kernel said so).",
              query(f'sum by (node, cause) (increase(qpagent_repairs_total{{{NODE}}}'
                    '[$__rate_interval]))', "{{node}} {{cause}}"), 12),
        _stat("QP repairs by cause, in the time range",
              "QPs repaired over the dashboard's time range, per cause.",
              query(f'sum by (cause) (increase(qpagent_repairs_total{{{NODE}}}[$__range]))',
                    "{{cause}}", instant=True),
              unit="short", text_mode=cm.BigValueTextMode.VALUE_AND_NAME)
        .span(12).height(8),
        _lines("QP acknowledgements",
               "ACKs and NAKs per second that the remote ends sent back for the QPs this node "
               "steers, as the data plane read them on the uplinks: the evidence behind the nak "
               "and stall repairs. unpaired: an acknowledgement for no QP known here.",
               "pps", 12, 8,
               query(f'sum by (node, event) (rate(qpagent_reply_events_total{{{NODE}}}'
                     '[$__rate_interval]))', "{{node}} {{event}}"), line_width=2),
        _bars("Go-back NAKs",
              "NAKs the agent handed to requesters whose QP was cut off with a dead path "
              "(data outstanding, no ACK progress for the path's deadline), so they resend at "
              "once instead of waiting for their ACK timer; by outcome: sent, no_ack_kept (no "
              "ACK of the QP seen to make it from), no_port (requester's MAC unknown to the "
              "bridge), not_an_ack, send_failed.",
              query(f'sum by (node, event) (increase(qpagent_go_back_naks_total{{{NODE}}}'
                    '[$__rate_interval]))', "{{node}} {{event}}"), 12),
    ]


def queue_pairs_row() -> list:
    return [
        db.Row("Queue pairs and data plane"),
        bargauge.Panel().title("Top QPs by throughput")
        .description("The busiest queue pairs (src → dst, destination QP) with their outer "
                     "source port and path; the agent exports only its top N QPs by bytes.")
        .datasource(DATASOURCE).span(12).height(9).unit("bps").thresholds(_green())
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .with_target(query(f'topk(10, sum by (node, src, dst, dqp, port, path) (rate('
                           f'qpagent_qp_bytes_total{{{NODE}}}[$__rate_interval])) * 8)',
                           "{{src}} → {{dst}} QP {{dqp}} port {{port}} path {{path}}",
                           instant=True)),
        _lines("Parse outcomes",
               "Packets per second by interface, hook and parse outcome (roce, not_roce, "
               "not_ip, truncated, fragment, ipv6_ext, bad_bth).", "pps", 12, 9,
               query(f'sum by (node, interface, hook, outcome) (rate('
                     f'qpagent_parse_packets_total{{{NODE}}}[$__rate_interval]))',
                     "{{node}} {{interface}} {{hook}}: {{outcome}}")),
        _lines("Steer and pin events",
               "Data-plane events per second: qp_steer (before encapsulation) and path_pin (on "
               "the uplinks).", "ops", 12, 8,
               query(f'sum by (node, event) (rate(qpagent_steer_events_total{{{NODE}}}'
                     '[$__rate_interval]))', "{{node}} steer {{event}}"),
               query(f'sum by (node, event) (rate(qpagent_pin_events_total{{{NODE}}}'
                     '[$__rate_interval]))', "{{node}} pin {{event}}", "B")),
        _lines("BPF program cost per run",
               "Nanoseconds each BPF program spends per run, from the kernel's own accounting; "
               "needs kernel.bpf_stats_enabled=1 (empty otherwise).", "ns", 12, 8,
               query(f'sum by (node, program, interface) (rate(qpagent_prog_run_time_seconds_total'
                     f'{{{NODE}}}[$__rate_interval])) / sum by (node, program, interface) (rate('
                     f'qpagent_prog_runs_total{{{NODE}}}[$__rate_interval])) * 1e9',
                     "{{node}} {{program}} on {{interface}}")),
    ]


def routing_row() -> list:
    """FRR's own view through prometheus-frr-exporter (one per router), beside the QP metrics."""
    return [
        db.Row("Routing (FRR)"),
        _lines("BGP sessions established",
               "Sessions in Established per router and address family "
               "(frr_bgp_peer_state: 1 established, 0 down, 2 administratively down).",
               "short", 12, 8,
               query(f'sum by (node, afi, safi) (frr_bgp_peer_state{{{ROUTER}}} == bool 1)',
                     "{{node}} {{afi}}/{{safi}}"), line_width=2)
        .line_interpolation(cm.LineInterpolation.STEP_AFTER).decimals(0),
        _lines("BGP prefixes received",
               "Prefixes each router accepts per address family: a withdrawn path shows as a "
               "step down.", "short", 12, 8,
               query(f'sum by (node, afi, safi) (frr_bgp_peer_prefixes_received_count_total'
                     f'{{{ROUTER}}})', "{{node}} {{afi}}/{{safi}}"), line_width=2)
        .line_interpolation(cm.LineInterpolation.STEP_AFTER).decimals(0),
        _timeline("BGP peers",
                  "State of every BGP session of every router, as FRR reports it.",
                  query(f'frr_bgp_peer_state{{{ROUTER},safi="unicast"}}',
                        "{{node}} {{peer}} {{afi}}"),
                  _states(**{"0": ("down", "red"), "1": ("established", "green"),
                             "2": ("admin down", "orange")}), 12, 10),
        _timeline("BFD peers (FRR)",
                  "State of every BFD session of every router, as FRR reports it "
                  "(frr_bfd_peer_state); a silent cut shows here first.",
                  query(f'frr_bfd_peer_state{{{ROUTER}}}', "{{node}} {{local}} → {{peer}}"),
                  UP_DOWN, 12, 10),
    ]


ROWS = (overview_row, paths_row, liveness_row, failures_row, queue_pairs_row, routing_row)


# ---------------------------------------------------------------- the dashboard

def variables() -> list:
    return [
        db.DatasourceVariable("DS_PROMETHEUS").label("Data source").type("prometheus")
        .regex("").multi(False).include_all(False),
        db.QueryVariable("node").label("Node").datasource(DATASOURCE)
        .query("label_values(qpagent_info, node)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*").regex(""),
        db.QueryVariable("router").label("Router").datasource(DATASOURCE)
        .query("label_values(frr_collector_up, node)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*").regex(""),
        db.CustomVariable("reaction_window").label("Reaction window").values("5m,15m,1h,6h,24h")
        .current(dm.VariableOption(selected=True, text="1h", value="1h")),
    ]


def build() -> dict:
    """The dashboard as Grafana's JSON model, ready for import or provisioning."""
    builder = (db.Dashboard(TITLE).uid(UID)
               .description("qpagent: RoCEv2 queue-pair placement over EVPN-VXLAN ECMP paths, "
                            "with FRR's BGP and BFD state beside it")
               .tags(["qpagent", "rdma", "roce", "vxlan", "ecmp", "frr"])
               .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR)
               .time("now-30m", "now").refresh("10s").timezone("").version(1))
    for row in ROWS:
        head, *panels = row()
        builder.with_row(head)
        for panel in panels:
            builder.with_panel(panel)
    for variable in variables():
        builder.with_variable(variable)
    model = json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))
    # The SDK leaves panel ids to the caller; Grafana wants them unique.
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
    types = sorted({p["type"] for p in model["panels"] if p["type"] != "row"})
    return {"__inputs": INPUTS,
            "__requires": REQUIRES + [{"type": "panel", "id": t, "name": t, "version": ""}
                                      for t in types],
            **model}


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- for the report

@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class KeyPanel:
    name: str          # file name stem of the rendered plot
    title: str
    unit: str
    targets: tuple[Target, ...]


# The panels the lab's report renders (WAN load is what the agents steer per path:
# Prometheus has no counter of its own on the WAN links).
KEY_PANELS = {"wan-load": "Throughput per path", "qps-per-path": "QPs per path",
              "repairs": "QP repairs by cause", "path-rtt": "Path RTT"}


def key_panels(model: dict | None = None) -> list[KeyPanel]:
    """The report's panels, with the very queries the dashboard sends."""
    by_title = {p["title"]: p for p in (model or build())["panels"]}
    out = []
    for name, title in KEY_PANELS.items():
        panel = by_title[title]
        out.append(KeyPanel(name, title, panel["fieldConfig"]["defaults"].get("unit", ""),
                            tuple(Target(t["expr"], t.get("legendFormat", ""))
                                  for t in panel["targets"])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qpagent.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from what this module builds")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = args.output.exists() and args.output.read_text() == text
        if not same:
            print(f"{args.output} is not what qpagent.dashboard builds: run `make dashboards`",
                  file=sys.stderr)
        return 0 if same else 1
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
