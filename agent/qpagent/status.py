"""The status reply: what `qpagent status --json` returns and what the
metrics exporter reads. Built from the core's path table and the maps."""

from __future__ import annotations

import math
from collections import Counter

from qpagent.core.placement import imbalance, path_weights


def core_view(core, qps_all: dict, describe_qp, top_n: int) -> dict:
    """The core's part: VTEPs, paths, top QPs, imbalance, BFD, re-placements."""
    vteps = []
    imb = {}
    by_index = {v.index: v for v in core.vteps.values()}
    for vtep in sorted(core.vteps.values(), key=lambda v: v.index):
        counts = Counter(s.path for s in qps_all.values() if s.vtep == vtep.index)
        vteps.append({
            "index": vtep.index, "address": vtep.address, "device": vtep.device,
            "paths": [{"index": p.index, "uplink": p.uplink, "gateway": p.gateway,
                       "hops": list(p.hops), "alive": p.alive, "ports": list(p.ports),
                       "qps": counts.get(p.index, 0), "packets": p.packets, "bytes": p.bytes}
                      for p in sorted(vtep.paths.values(), key=lambda p: p.index)],
        })
        # against each path's share by capacity (all equal without capacities)
        weights = path_weights({p.index: p.identity for p in vtep.paths.values()},
                               core.settings.capacities)
        imb[vtep.address] = round(imbalance(counts, vtep.live_paths(), weights), 4)
    qps = []
    for key, s in sorted(qps_all.items(), key=lambda kv: -kv[1].bytes)[:top_n]:
        vtep = by_index.get(s.vtep)
        path = vtep.paths.get(s.path) if vtep else None
        src, dst, dqp = describe_qp(key)
        qps.append({"src": src, "dst": dst, "dqp": dqp,
                    "vtep": vtep.address if vtep else None, "path": s.path,
                    "uplink": path.uplink if path else None, "port": s.port,
                    "packets": s.packets, "bytes": s.bytes, "moves": s.moves})
    bfd = core.bfd
    return {
        "vteps": vteps, "qp_total": len(qps_all), "qps": qps, "imbalance": imb,
        "bfd": {"available": bfd.available, "reason": bfd.reason,
                "peers": [dict(p) for p in bfd.peers]},
        "replacements": dict(core.replacements),
    }


def flow_qp_view(flows: list[dict], top_n: int) -> tuple[list[dict], int]:
    """Per-QP counters from the flow table: flows that carry a destination
    QP, summed by interface, hook, addresses, VNI and QP (one QP may use
    several UDP source ports). The top N by bytes, and how many QPs in all."""
    by_qp: dict[tuple, dict] = {}
    for f in flows:
        if f.get("dqp") is None:
            continue
        key = (f["interface"], f["hook"], f["src"], f["dst"], f.get("vni"), f["dqp"])
        row = by_qp.setdefault(key, {
            "interface": f["interface"], "hook": f["hook"], "src": f["src"], "dst": f["dst"],
            "vni": f.get("vni"), "dqp": f["dqp"], "packets": 0, "bytes": 0, "last_seen": None})
        row["packets"] += f.get("packets", 0)
        row["bytes"] += f.get("bytes", 0)
        row["last_seen"] = max(filter(None, (row["last_seen"], f.get("last_seen"))), default=None)
    rows = sorted(by_qp.values(), key=lambda r: (-r["bytes"], r["interface"], r["hook"], r["dqp"]))
    return rows[:top_n], len(rows)


def liveness_view(state: dict, health: dict, enabled: bool, suspects: set = frozenset()) -> None:
    """Each path of the status gains its liveness: health (up, down or
    unchecked: its VTEP never answered, or the path is not probed: idle),
    RTT (newest and smoothed), the deadline in force (none: not armed),
    probes sent, replies, those unanswered right now (sent since the newest
    reply's) and the loss ratio over the last second; and
    whether the data plane holds it under suspicion (several QPs left it
    on their own signals: it takes no QP until a probe clears it)."""
    state["liveness"] = {"enabled": enabled}
    for vtep in state.get("vteps", []):
        for path in vtep["paths"]:
            seen = health.get((vtep["index"], path["index"]), {})
            path.update({"health": seen.get("health", "unchecked"),
                         "rtt_ms": seen.get("rtt_ms"),
                         "srtt_ms": seen.get("srtt_ms"),
                         "deadline_ms": seen.get("deadline_ms"),
                         "probes_sent": seen.get("probes_sent", 0),
                         "replies": seen.get("replies", 0),
                         "unanswered": seen.get("unanswered", 0),
                         "loss_ratio": seen.get("loss_ratio"),
                         "suspect": (vtep["index"], path["index"]) in suspects})


def repairs_view(data_plane: dict, agent, sign_to_move: dict) -> dict:
    """QPs repaired, by cause: liveness, retransmit, nak and stall moved by
    the data plane on the QP's next packet; bfd, route and liveness by the agent
    (QPs the data plane had not moved yet). With the time from the first
    sign to the move where the agent knows it (its own reactions)."""
    out = {}
    for cause in sorted(set(data_plane) | set(agent)):
        row = {"data_plane": int(data_plane.get(cause, 0)), "agent": int(agent.get(cause, 0))}
        row["total"] = row["data_plane"] + row["agent"]
        row["sign_to_move_ms"] = summary_ms(sign_to_move.get(cause, []))
        out[cause] = row
    return out


def summary_ms(samples: list[float]) -> dict:
    """Nearest-rank percentiles of sorted samples (seconds), in ms."""
    if not samples:
        return {"count": 0, "p50": None, "p99": None, "max": None}

    def pct(q):
        return round(samples[max(0, math.ceil(q * len(samples)) - 1)] * 1e3, 3)
    return {"count": len(samples), "p50": pct(0.5), "p99": pct(0.99),
            "max": round(samples[-1] * 1e3, 3)}
