"""Figures from one run's record: where each QP went, the failover
timeline, the busiest WAN link, the headline table. Pure functions of the
record (no lab, no engine), so they are tested on records alone.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict

from ..workloads import model
from ..workloads.driver import Host
from . import observe
from .scenarios import Settings


def qp_links(seen: dict, result: dict | None, hosts: list[Host]) -> list[dict]:
    """Which WAN link(s) each QP's data crossed, per direction that carried
    data, from the sniffer's sample (its ACKs may take another way back):
    main_link before a failure, main_link_after after it (None: no failure
    or not seen again)."""
    if not result:
        return []
    ip = {h.name: h.ip for h in hosts}
    out = []
    for q in result["qps"]:
        for frm, to, dqpn, nbytes in ((q["src"], q["dst"], q["rqpn"], q["bytes_src_to_dst"]),
                                      (q["dst"], q["src"], q["lqpn"], q["bytes_dst_to_src"])):
            if not nbytes:
                continue
            phases: list[dict] = [{}, {}]
            for (phase, link, src, dst, d), (pkts, first, last) in seen.items():
                if (src, dst, d) == (ip[frm], ip[to], dqpn):
                    phases[phase][link] = {"packets": pkts, "first": first, "last": last}
            if not phases[0] and not phases[1]:
                continue
            main = lambda links: max(links, key=lambda l: links[l]["packets"]) if links else None  # noqa: E731
            out.append({"from": frm, "to": to, "dqpn": dqpn, "sport": q["sport"],
                        "index": q["index"], "bytes": nbytes,
                        "links": phases[0], "links_after": phases[1],
                        "main_link": main(phases[0]) or main(phases[1]),
                        "main_link_after": main(phases[1])})
    return out


def agent_digest(status: dict | None, failure: dict) -> dict | None:
    if not status:
        return None
    events = status.get("events") or []
    t0 = (failure or {}).get("t_blackhole")
    return {"qp_total": status.get("qp_total"), "imbalance": status.get("imbalance"),
            "reaction_ms": status.get("reaction_ms"), "replacements": status.get("replacements"),
            "events_after_failure": [e for e in events if t0 and e.get("time", 0) >= t0 - 0.5],
            "qps": status.get("qps")}


def failover_timeline(rec: dict) -> dict | None:
    """Blackhole -> BFD down -> agent re-placement -> traffic recovered,
    in seconds after the blackhole."""
    f = rec.get("failure")
    if not f or "t_blackhole" not in f:
        return None
    t0 = f["t_blackhole"]
    downs = [t["t"] for t in rec["bfd"] if t["to"] == "down" and t["t"] >= t0]
    moves = [e["time"] for a in rec["agents"].values() if a
             for e in a["events_after_failure"] if e.get("kind") == "reaction" and e["time"] >= t0]
    # Traffic recovered: the WAN carries again at least half its pre-failure rate.
    rs = observe.rates(rec["wan_samples"])
    total = [(r["t"], sum(sum(v.values()) for k, v in r.items() if k != "t")) for r in rs]
    before = [v for t, v in total if t0 - 1.0 <= t < t0]
    ref = statistics.median(before) if before else 0.0
    recovered = None
    dip = False
    for t, v in total:
        if t <= t0:
            continue
        if v < 0.5 * ref:
            dip = True
        elif dip:
            recovered = t
            break
    # From the engine: the last QP stall that overlapped the cut ends when
    # every QP is moving again.
    res = rec.get("result") or {}
    off = res.get("clock_offset", 0.0)
    stall_ends = [it["t_start"] + s["to"] + off
                  for it in res.get("per_iteration", []) for s in it["stalls"]
                  if it["t_start"] + s["to"] + off >= t0]
    rel = lambda t: None if t is None else round(t - t0, 4)   # noqa: E731
    return {"link": f["link"], "bfd_down_s": rel(min(downs) if downs else None),
            "agent_reaction_s": rel(min(moves) if moves else None),
            "wan_rate_recovered_s": rel(recovered),
            "qps_recovered_s": rel(max(stall_ends) if stall_ends else None),
            "stalled_qps": len(stall_ends),
            "restored_s": rel(f.get("t_restore"))}


def busiest_ratio(wan_bytes: dict) -> dict:
    """Per direction, the busiest WAN link's bytes over the mean of all links."""
    out = {}
    dirs = {d for per in wan_bytes.values() for d in per}
    for d in sorted(dirs):
        vals = [per.get(d, 0) for per in wan_bytes.values()]
        mean = sum(vals) / len(vals) if vals else 0
        out[d] = round(max(vals) / mean, 3) if mean else None
    return out


def headline(records: list[dict], st: Settings, net: model.Net) -> dict:
    rows = []
    for r in records:
        res = r.get("result")
        sc = r["scenario"]
        if r.get("job_failed"):
            rows.append({"name": r["name"], "error": r["error"], "job_failed": True,
                         "failed_iteration": res["summary"]["failed_iteration"] if res else None,
                         "qps_in_error": r["qps_in_error"]})
            continue
        if not res:
            rows.append({"name": r["name"], "error": r["error"]})
            continue
        by_dc: dict[str, int] = {}
        for h in res["ranks"]:
            dc = r["rank_dcs"].get(h, "")
            by_dc[dc] = by_dc.get(dc, 0) + 1
        # The model is of two DCs joined by equal WAN links of one delay.
        ideal = None
        if len(by_dc) <= 2 and sc["delay_ms"] is not None and len(set(r.get("wan_rates", {}).values())) <= 1:
            net_sc = model.Net(**{**asdict(net), "wan_delay_s": sc["delay_ms"] / 1000})
            ideal = model.ideal(sc["pattern"], list(by_dc.values()), st.size_for(sc["pattern"]), net_sc)
        per_link_qps: dict[str, int] = {}
        for q in r["qp_links"]:
            key = f"{q['main_link']} {r['rank_dcs'].get(q['from'])}->{r['rank_dcs'].get(q['to'])}"
            per_link_qps[key] = per_link_qps.get(key, 0) + 1
        rows.append({
            "name": r["name"], **sc,
            "median_busbw_gbps": res["summary"]["median_busbw_Bps"] * 8 / 1e9,
            "ideal_busbw_gbps": ideal["busbw_Bps"] * 8 / 1e9 if ideal else None,
            "median_iteration_s": res["summary"]["median_duration_s"],
            "busiest_link_ratio": busiest_ratio(r["wan_bytes"]),
            "wan_bytes": r["wan_bytes"], "wan_qps": per_link_qps,
            "retransmitted_packets": res["summary"]["retransmitted_packets"],
            "all_verified": res["summary"]["all_verified"],
            "time_lost_s": r.get("time_lost_s"), "timeline": r.get("timeline"),
        })
    return {"rows": rows}
