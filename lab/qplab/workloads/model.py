"""The alpha-beta model of the collectives over the lab: the ideal time with
perfect QP placement, to set beside what was measured.

A message of n bytes over a hop costs alpha + n / beta. A step of a ring
costs what its slowest hop costs, and the WAN hop is the slowest: its
beta is what the connection's K QPs get from L WAN links of capacity C
when placed perfectly (min(K, L) links), capped by each QP's window
(W packets of MTU bytes per round trip) and by the engine's own rate.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Net:
    wan_links: int            # L, per direction
    wan_rate_bps: float       # C, bit/s per link
    wan_delay_s: float        # one way
    host_rate_bps: float      # what one engine process moves (measured)
    lan_delay_s: float = 0.0002
    qps_per_conn: int = 4
    window_pkts: int = 128
    mtu: int = 1024


def _qp_window_bps(net: Net, rtt: float) -> float:
    return net.window_pkts * net.mtu * 8 / max(rtt, 1e-6)


def wan_conn_bps(net: Net, conns_sharing: int = 1) -> float:
    """Best rate of one connection across the WAN when `conns_sharing`
    connections (per direction) cross it at once."""
    k = net.qps_per_conn
    per_qp_window = _qp_window_bps(net, 2 * net.wan_delay_s + 2 * net.lan_delay_s)
    links = min(k * conns_sharing, net.wan_links)
    share = links * net.wan_rate_bps / conns_sharing
    return min(share, k * per_qp_window, net.host_rate_bps)


def ring_time(nranks: int, size: int, net: Net, wan_hops: int = 2) -> float:
    """2(N-1) steps of S/N; every step waits for the WAN hop (one connection
    per direction crosses)."""
    chunk = size / nranks
    beta = wan_conn_bps(net, 1) / 8 if wan_hops else net.host_rate_bps / 8
    alpha = net.wan_delay_s if wan_hops else net.lan_delay_s
    return 2 * (nranks - 1) * (alpha + chunk / beta)


def hierarchical_time(groups: int, per_group: int, size: int, net: Net) -> float:
    m, d = per_group, groups
    lan_beta = net.host_rate_bps / 8
    t = 2 * (m - 1) * (net.lan_delay_s + size / m / lan_beta) if m > 1 else 0.0
    wan_beta = wan_conn_bps(net, m) / 8        # M pairs cross at once, per direction
    t += 2 * (d - 1) * (net.wan_delay_s + size / (m * d) / wan_beta)
    return t


def ideal(pattern: str, ranks_by_dc: list[int], size: int, net: Net) -> dict | None:
    """Ideal completion time, algbw and busbw of one iteration, or None when
    the model has no closed form for the pattern."""
    n = sum(ranks_by_dc)
    if pattern == "ring":
        t = ring_time(n, size, net, wan_hops=2 if len(ranks_by_dc) > 1 else 0)
    elif pattern == "hierarchical" and len(set(ranks_by_dc)) == 1:
        t = hierarchical_time(len(ranks_by_dc), ranks_by_dc[0], size, net)
    else:
        return None
    algbw = size / t
    return {"time_s": t, "algbw_Bps": algbw, "busbw_Bps": algbw * 2 * (n - 1) / n}
