"""What a running lab looks like, read from FRR's own JSON.

`collect` asks every router (in parallel) for its BGP sessions, BFD peers and
EVPN VNIs; `problems` compares that with what the lab's plan expects and
lists every gap, so "converged" means an empty list.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from . import frr
from .state import LabState, RouterState

AFI_KEYS = {"ipv4Unicast": "ipv4", "l2VpnEvpn": "evpn"}


def _router_status(router: RouterState) -> dict:
    ns = router.ns
    out: dict = {"bgp": [], "bfd": [], "vnis": [], "errors": []}
    try:
        summary = frr.vtysh_json(ns, "show bgp summary json")
        for afi_key, afi in AFI_KEYS.items():
            for peer, p in (summary.get(afi_key) or {}).get("peers", {}).items():
                out["bgp"].append({"peer": peer, "afi": afi, "state": p.get("state"),
                                   "description": p.get("desc", ""),
                                   "uptime": p.get("peerUptime", ""),
                                   "prefixes": p.get("pfxRcd", 0)})
    except (frr.FrrError, OSError) as e:
        out["errors"].append(str(e))
    try:
        for p in frr.vtysh_json(ns, "show bfd peers json") or []:
            out["bfd"].append({"peer": p.get("peer"), "interface": p.get("interface"),
                               "status": p.get("status"), "diagnostic": p.get("diagnostic"),
                               "interval_ms": p.get("transmit-interval"),
                               "multiplier": p.get("detect-multiplier")})
    except (frr.FrrError, OSError) as e:
        out["errors"].append(str(e))
    if router.role == "leaf":
        try:
            for v in frr.vtysh_json(ns, "show evpn vni detail json") or []:
                remote = v.get("numRemoteVteps")
                out["vnis"].append({"vni": v.get("vni"), "vtep": v.get("vtepIp"),
                                    "vxlan": v.get("vxlanInterface"),
                                    "remote_vteps": sorted(remote) if isinstance(remote, list) else [],
                                    "macs": v.get("numMacs", 0)})
        except (frr.FrrError, OSError) as e:
            out["errors"].append(str(e))
    return out


def collect(state: LabState) -> dict:
    """What FRR says on every router, with the lab's WAN links and agents (JSON-ready)."""
    with ThreadPoolExecutor(max_workers=6) as ex:
        results = dict(zip(state.routers, ex.map(_router_status, state.routers.values())))
    return {"name": state.name, "routers": results,
            "wans": {n: asdict(w) for n, w in state.wans.items()},
            "agents": {n: asdict(a) for n, a in state.agents.items()},
            "prometheus": asdict(state.monitor) if state.monitor else None,
            "links_down": state.links_down, "links_blackholed": state.links_blackholed}


def problems(state: LabState, status: dict) -> list[str]:
    """Every way the lab is not (yet) converged; empty when it is."""
    out = []
    for name, router in state.routers.items():
        got = status["routers"].get(name, {})
        out += [f"{name}: {e}" for e in got.get("errors", [])]
        bgp = {(s["peer"], s["afi"]): s["state"] for s in got.get("bgp", [])}
        bfd = {s["peer"]: s["status"] for s in got.get("bfd", [])}
        for i in router.interfaces:
            for afi in AFI_KEYS.values():
                st = bgp.get((i.peer_address, afi))
                if st != "Established":
                    out.append(f"{name}: BGP {afi} to {i.peer_node} ({i.peer_address}) is {st or 'absent'}")
            if bfd.get(i.peer_address) != "up":
                out.append(f"{name}: BFD to {i.peer_node} ({i.peer_address}) is "
                           f"{bfd.get(i.peer_address) or 'absent'}")
        vnis = {str(v["vni"]): v for v in got.get("vnis", [])}
        for vni, remote in router.vnis.items():
            if vni not in vnis:
                out.append(f"{name}: VNI {vni} unknown to EVPN")
                continue
            missing = sorted(set(remote) - set(vnis[vni]["remote_vteps"]))
            if missing:
                out.append(f"{name}: VNI {vni} lacks remote VTEPs {', '.join(missing)}")
    return out


def summary_counts(state: LabState, status: dict) -> dict:
    bgp = [s for r in status["routers"].values() for s in r["bgp"]]
    bfd = [s for r in status["routers"].values() for s in r["bfd"]]
    vteps = [(n, v) for n, r in status["routers"].items() for v in r["vnis"]]
    want_vteps = sum(len(rem) for r in state.routers.values() for rem in r.vnis.values())
    return {"bgp_established": sum(s["state"] == "Established" for s in bgp), "bgp_total": len(bgp),
            "bfd_up": sum(s["status"] == "up" for s in bfd), "bfd_total": len(bfd),
            "remote_vteps": sum(len(v["remote_vteps"]) for _, v in vteps),
            "remote_vteps_expected": want_vteps}


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header)] + ["  " + fmt.format(*map(str, r)) for r in rows]


def render(state: LabState, status: dict) -> str:
    c = summary_counts(state, status)
    lines = [f"lab {status.get('name')}: BGP {c['bgp_established']}/{c['bgp_total']} Established, "
             f"BFD {c['bfd_up']}/{c['bfd_total']} up, remote VTEPs {c['remote_vteps']}/"
             f"{c['remote_vteps_expected']}", "", "BGP sessions"]
    rows = [[n, s["peer"], s["description"], s["afi"], s["state"], s["uptime"], s["prefixes"]]
            for n, r in status["routers"].items() for s in r["bgp"]]
    lines += _table(rows, ["router", "peer", "description", "afi", "state", "uptime", "pfx rcvd"])
    lines += ["", "BFD peers"]
    rows = [[n, s["peer"], s["interface"], s["status"], s["diagnostic"],
             f"{s['interval_ms']} ms x {s['multiplier']}"]
            for n, r in status["routers"].items() for s in r["bfd"]]
    lines += _table(rows, ["router", "peer", "interface", "status", "diagnostic", "timers"])
    lines += ["", "EVPN VNIs"]
    rows = [[n, v["vni"], v["vtep"], v["vxlan"], " ".join(v["remote_vteps"]) or "-", v["macs"]]
            for n, r in status["routers"].items() for v in r["vnis"]]
    lines += _table(rows, ["leaf", "vni", "local vtep", "device", "remote vteps", "macs"])
    if status["wans"]:
        lines += ["", "WAN links"]
        rows = [[w, f"{v['a']} {v['a_if']}", f"{v['b']} {v['b_if']}", f"{v['props']['delay_ms']:g} ms",
                 f"{v['props']['jitter_ms']:g} ms", f"{v['props']['loss_pct']:g} %",
                 f"{v['props']['rate_mbit']:g} Mbit/s", "BLACKHOLE" if v.get("blackhole") else "ok"]
                for w, v in status["wans"].items()]
        lines += _table(rows, ["link", "a", "b", "delay", "jitter", "loss", "rate", "state"])
    if status["agents"]:
        lines += ["", "Agents"]
        rows = [[n, "running" if a.get("ok") else "failed", a.get("metrics", "-"),
                 a.get("error") or a.get("socket", "")] for n, a in status["agents"].items()]
        lines += _table(rows, ["node", "state", "metrics", "socket / error"])
    mon = status.get("prometheus")
    if mon:
        lines += ["", f"Prometheus  {mon['prometheus']}  (agents and one FRR exporter per router, "
                  f"{len(mon['exporters'])} routers; query it from this machine)"]
    errors = [f"{n}: {e}" for n, r in status["routers"].items() for e in r["errors"]]
    if errors:
        lines += ["", "Errors"] + [f"  {e}" for e in errors]
    return "\n".join(lines)
