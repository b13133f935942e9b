"""Human-readable tables for `qpagent status` and `qpagent flows`.

Pure functions from the daemon's JSON data to text; missing keys show as "-"
so an older or newer daemon still renders.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

from qpagent.contract import PARSE_OUTCOME_NAMES


def table(headers: Sequence[str], rows: Iterable[Sequence], right: Iterable[int] = ()) -> str:
    """Columns aligned with two spaces between them; `right` lists right-aligned columns."""
    right = set(right)
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def human_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def human_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def ms(value) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def port_list(ports: Sequence[int]) -> str:
    """Ports as compact ranges: [1, 2, 3, 7] -> "1-3,7"."""
    ports = sorted(ports or [])
    if not ports:
        return "-"
    spans, start, prev = [], ports[0], ports[0]
    for port in ports[1:] + [None]:
        if port is not None and port == prev + 1:
            prev = port
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if port is not None:
            start = prev = port
    return ",".join(spans)


def clock(unix_time) -> str:
    if unix_time is None:
        return "-"
    stamp = time.localtime(unix_time)
    return time.strftime("%H:%M:%S", stamp) + f".{int((unix_time % 1) * 1000):03d}"


PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def protocol(proto) -> str:
    return PROTOCOLS.get(proto, "-" if proto is None else str(proto))


def endpoint(address, port) -> str:
    if port is None:
        return str(address)
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


# ---------------------------------------------------------------- status

def render_status(snap: dict) -> str:
    if snap.get("mode") == "host":
        return _render_host(snap)
    sections = [_header(snap), _programs(snap), _paths(snap), _qps(snap), _bfd(snap),
                _liveness(snap), _reactions(snap), _events(snap), _datapath(snap),
                _warnings(snap)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _render_host(snap: dict) -> str:
    """A host agent steers nothing: its counters are the whole story."""
    header = (f"qpagent {snap.get('version', '?')} on {snap.get('node', '?')}  "
              f"pid {snap.get('pid', '?')}  up {human_duration(snap.get('uptime_s'))}  "
              f"host mode  QP flows {snap.get('flow_qp_total', 0)}")
    if snap.get("describe"):
        header += f"\n{snap['describe']}"
    sections = [header, _programs(snap), _flow_qps(snap), _events(snap), _datapath(snap),
                _warnings(snap)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _flow_qps(snap: dict) -> str:
    rows = snap.get("flow_qps") or []
    total = snap.get("flow_qp_total", len(rows))
    if not rows:
        return "QPs: no RoCE flow counted yet"
    now = time.time()
    table_rows = [[r.get("interface"), r.get("hook"), f"{r.get('src')} -> {r.get('dst')}",
                   r.get("vni"), r.get("dqp"), human_count(r.get("packets")),
                   human_bytes(r.get("bytes")),
                   "-" if r.get("last_seen") is None else f"{max(0.0, now - r['last_seen']):.1f}s"]
                  for r in rows]
    as_of = snap.get("flow_qps_as_of")
    # a big flow table is summed in the background: say how old the sum is
    age = f", summed {now - as_of:.0f} s ago" if as_of and now - as_of >= 2 else ""
    return (f"QPs counted (top {len(rows)} of {total} by bytes{age})\n"
            + table(["INTERFACE", "HOOK", "SRC -> DST", "VNI", "DQP", "PACKETS", "BYTES", "IDLE"],
                    table_rows, right=(3, 4, 5, 6, 7)))


def _header(snap: dict) -> str:
    return (f"qpagent {snap.get('version', '?')} on {snap.get('node', '?')}  "
            f"pid {snap.get('pid', '?')}  up {human_duration(snap.get('uptime_s'))}  "
            f"QPs {snap.get('qp_total', 0)}")


def _programs(snap: dict) -> str:
    progs = snap.get("programs") or []
    if not progs:
        return "Programs: none attached"
    rows = []
    for p in progs:
        runs = p.get("run_cnt") or 0
        avg = f"{p.get('run_time_ns', 0) / runs:.0f}" if runs else "-"
        rows.append([p.get("name"), p.get("hook"), p.get("interface"), p.get("prog_id"),
                     human_count(runs), avg])
    return "Programs\n" + table(["PROGRAM", "HOOK", "INTERFACE", "ID", "RUNS", "NS/RUN"],
                                rows, right=(3, 4, 5))


def _paths(snap: dict) -> str:
    vteps = snap.get("vteps") or []
    if not vteps:
        return "Paths: no remote VTEP known yet"
    imbalance = snap.get("imbalance") or {}
    # End-to-end mode: the hops beyond the gateway tell paths of one uplink apart.
    with_hops = any(p.get("hops") for v in vteps for p in v.get("paths") or [])
    rows = []
    for vtep in vteps:
        for path in vtep.get("paths") or []:
            row = [vtep.get("address"), path.get("index"), path.get("uplink"),
                   path.get("gateway"), "up" if path.get("alive") else "DOWN",
                   path.get("qps", 0), human_count(path.get("packets")),
                   human_bytes(path.get("bytes")), port_list(path.get("ports"))]
            if with_hops:
                row.insert(4, " > ".join((path.get("hops") or [])[1:]) or "-")
            rows.append(row)
    headers = ["VTEP", "PATH", "UPLINK", "GATEWAY", "STATE", "QPS", "PACKETS", "BYTES", "PORTS"]
    right = (1, 5, 6, 7)
    if with_hops:
        headers.insert(4, "THEN")
        right = (1, 6, 7, 8)
    text = "Paths\n" + table(headers, rows, right=right)
    if imbalance:
        ratios = "  ".join(f"{vtep} {ratio:.2f}" if ratio is not None else f"{vtep} -"
                           for vtep, ratio in sorted(imbalance.items()))
        text += f"\nImbalance (busiest/best possible, 1.00 = even): {ratios}"
    return text


def _qps(snap: dict) -> str:
    qps = snap.get("qps") or []
    total = snap.get("qp_total", len(qps))
    if not qps:
        return "QPs: none seen"
    rows = [[f"{q.get('src')} -> {q.get('dst')}", q.get("dqp"), q.get("vtep"), q.get("port"),
             q.get("path"), q.get("uplink"), human_count(q.get("packets")),
             human_bytes(q.get("bytes")), q.get("moves", 0)] for q in qps]
    return (f"QPs (top {len(qps)} of {total} by bytes)\n"
            + table(["SRC -> DST", "DQP", "VTEP", "PORT", "PATH", "UPLINK", "PACKETS", "BYTES",
                     "MOVES"], rows, right=(1, 3, 4, 6, 7, 8)))


def _bfd(snap: dict) -> str:
    bfd = snap.get("bfd") or {}
    if not bfd.get("available"):
        return f"BFD: unavailable ({bfd.get('reason') or 'no reason given'})"
    peers = bfd.get("peers") or []
    if not peers:
        return "BFD: no peers"
    rows = [[p.get("peer"), p.get("interface"), p.get("status"), p.get("diagnostic")]
            for p in peers]
    return "BFD peers\n" + table(["PEER", "INTERFACE", "STATUS", "DIAGNOSTIC"], rows)


def _reactions(snap: dict) -> str:
    reaction = snap.get("reaction_ms") or {}
    line = (f"Reaction (event -> maps): {reaction.get('count', 0)} samples  "
            f"p50 {ms(reaction.get('p50'))}  p99 {ms(reaction.get('p99'))}  "
            f"max {ms(reaction.get('max'))}")
    replacements = snap.get("replacements") or {}
    if replacements:
        line += "\nPlacements: " + "  ".join(f"{k} {v}" for k, v in sorted(replacements.items()))
    return line


def _liveness(snap: dict) -> str:
    """Per path: probe health, RTT, probes and replies, recent loss."""
    if "liveness" not in snap:
        return ""      # an agent from before liveness
    if not snap["liveness"].get("enabled"):
        return "Liveness: off"
    rows = []
    for vtep in snap.get("vteps") or []:
        for p in vtep.get("paths") or []:
            loss = p.get("loss_ratio")
            health = p.get("health", "unchecked") + (" suspect" if p.get("suspect") else "")
            rows.append([vtep.get("address"), p.get("index"), p.get("uplink"),
                         health, ms(p.get("rtt_ms")),
                         ms(p.get("deadline_ms")), human_count(p.get("probes_sent", 0)), human_count(p.get("replies", 0)),
                         "-" if loss is None else f"{loss * 100:.0f}%"])
    text = ("Liveness (unchecked: not probed, or the remote VTEP never answered; "
            "DEADLINE: silence that kills the path)\n") + table(
        ["VTEP", "PATH", "UPLINK", "HEALTH", "RTT", "DEADLINE", "PROBES", "REPLIES", "LOSS"],
        rows, right=(1, 4, 5, 6, 7, 8)) if rows else "Liveness: no paths probed"
    repairs = snap.get("repairs") or {}
    if repairs:
        parts = []
        for cause, row in sorted(repairs.items()):
            timing = (row.get("sign_to_move_ms") or {})
            when = f" (sign to move p50 {ms(timing.get('p50'))})" if timing.get("count") else ""
            parts.append(f"{cause} {row.get('total', 0)}{when}")
        text += "\nRepairs: " + "  ".join(parts)
    return text


def _events(snap: dict) -> str:
    events = snap.get("events") or []
    if not events:
        return "Events: none"
    rows = [[clock(e.get("time")), e.get("kind"), ms(e.get("reaction_ms")), e.get("detail")]
            for e in events]
    return (f"Last {len(events)} events\n"
            + table(["TIME", "KIND", "REACTION", "DETAIL"], rows, right=(2,)))


def _datapath(snap: dict) -> str:
    lines = []
    for title, key in (("Steer", "steer_events"), ("Pin", "pin_events"),
                       ("Replies", "reply_events"), ("Go-back NAKs", "go_back_naks")):
        counts = snap.get(key) or {}
        if counts:
            lines.append(f"{title}: " + "  ".join(f"{k} {human_count(v)}"
                                                   for k, v in counts.items()))
    parse = snap.get("parse") or []
    if parse:
        outcomes = PARSE_OUTCOME_NAMES
        rows = [[p.get("interface"), p.get("hook")] + [human_count(p.get(o, 0)) for o in outcomes]
                for p in parse]
        lines.append("\nParse outcomes\n" + table(
            ["INTERFACE", "HOOK"] + [o.upper() for o in outcomes], rows,
            right=range(2, 2 + len(outcomes))))
    return "\n".join(lines).strip("\n")


def _warnings(snap: dict) -> str:
    warnings = snap.get("warnings") or []
    return "\n".join(f"warning: {w}" for w in warnings)


# ---------------------------------------------------------------- flows

def render_flows(flows: list[dict], now: float | None = None) -> str:
    if not flows:
        return "No flows counted.\n"
    now = time.time() if now is None else now
    rows = []
    for f in flows:
        last = f.get("last_seen")
        rows.append([f.get("interface"), f.get("hook"), protocol(f.get("proto")),
                     endpoint(f.get("src"), f.get("sport")), endpoint(f.get("dst"), f.get("dport")),
                     f.get("vni"), f.get("dqp"), human_count(f.get("packets")),
                     human_bytes(f.get("bytes")),
                     "-" if last is None else f"{max(0.0, now - last):.1f}s"])
    return table(["INTERFACE", "HOOK", "PROTO", "SOURCE", "DESTINATION", "VNI", "DQP",
                  "PACKETS", "BYTES", "IDLE"], rows, right=(5, 6, 7, 8, 9)) + "\n"
