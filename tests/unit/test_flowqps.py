"""A host agent's per-QP sums: a small flow table is read afresh for every
request; a slow one is summed in the background, at most a fifth of the time,
and requests get the last sum with its age."""
from qpagent import flowqps
from qpagent.flowqps import FlowQpSummary


def flow(dqp, packets, sport=50000):
    return {"interface": "eth0", "hook": "tc_egress", "src": "10.0.0.1", "dst": "10.0.0.2",
            "vni": None, "dqp": dqp, "sport": sport, "packets": packets, "bytes": 100 * packets,
            "last_seen": None}


class Table:
    """A flow table whose every read costs `cost_s` of the fake clock."""

    def __init__(self, flows, cost_s):
        self.flows, self.cost_s, self.now, self.reads = flows, cost_s, 0.0, 0

    def read(self):
        self.reads += 1
        self.now += self.cost_s
        return list(self.flows)


def test_a_small_table_is_read_for_every_request():
    table = Table([flow(7, 3), flow(7, 2, sport=50001), flow(9, 10)], cost_s=0.001)
    summary = FlowQpSummary(table.read, clock=lambda: table.now)
    rows, total, as_of = summary.view(top_n=1)
    assert [(r["dqp"], r["packets"]) for r in rows] == [(9, 10)] and total == 2
    assert as_of is not None
    table.flows.append(flow(11, 50))
    rows, total, _ = summary.view(top_n=5)
    assert [(r["dqp"], r["packets"]) for r in rows] == [(11, 50), (9, 10), (7, 5)] and total == 3
    assert table.reads == 2 and not summary.due()       # nothing for the loop to do


def test_a_slow_table_is_summed_in_the_background_at_most_a_fifth_of_the_time():
    table = Table([flow(7, 3)], cost_s=2.0)
    summary = FlowQpSummary(table.read, clock=lambda: table.now)
    summary.view(top_n=10)                               # the first request sums once
    table.flows.append(flow(9, 10))
    rows, total, _ = summary.view(top_n=10)              # the next ones get that sum
    assert total == 1 and table.reads == 1
    assert not summary.due()                             # 2 s read: next after 10 s
    table.now += 7.9
    assert not summary.due()
    table.now += 0.2
    assert summary.due()
    summary.refresh()                                    # the loop sums again
    rows, total, _ = summary.view(top_n=10)
    assert total == 2 and table.reads == 2


def test_a_sum_keeps_only_the_busiest_qps():
    table = Table([flow(q, q) for q in range(flowqps.KEEP_ROWS + 50)], cost_s=0.0)
    rows, total, _ = FlowQpSummary(table.read, clock=lambda: table.now).view(top_n=10 ** 6)
    assert total == flowqps.KEEP_ROWS + 50 and len(rows) == flowqps.KEEP_ROWS
    assert rows[0]["dqp"] == flowqps.KEEP_ROWS + 49


def test_status_says_how_old_a_background_sum_is():
    import time
    from qpagent.render import render_status
    row = {**flow(9, 10), "bytes": 1000}
    snap = {"mode": "host", "node": "h1", "flow_qps": [row], "flow_qp_total": 1}
    fresh = render_status({**snap, "flow_qps_as_of": time.time()})
    old = render_status({**snap, "flow_qps_as_of": time.time() - 30})
    assert "QPs counted (top 1 of 1 by bytes)\n" in fresh
    assert "QPs counted (top 1 of 1 by bytes, summed 30 s ago)\n" in old
