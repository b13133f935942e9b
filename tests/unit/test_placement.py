"""Placement: exact balance, minimal movement, hysteresis."""

import math
import random

import pytest

from placement_moves import apply, counts_of, fill_by_data_plane
from qpagent.core.placement import Move, diverse_order, imbalance, place_new, quotas, rebalance


@pytest.mark.parametrize("p", range(1, 65))
def test_every_k_up_to_64_is_exactly_balanced(p):
    paths = list(range(p))
    for k in range(0, 65):
        # Start from the worst case: every QP on path 0.
        start = {qp: 0 for qp in range(k)}
        final = apply(start, rebalance(start, paths))
        busiest = max(counts_of(final, paths).values())
        assert busiest == math.ceil(k / p), (k, p, counts_of(final, paths))
        # The data plane's own rule gives the same bound with no moves needed.
        dp = fill_by_data_plane(k, paths)
        assert max(counts_of(dp, paths).values()) == math.ceil(k / p)
        assert rebalance(dp, paths) == []


@pytest.mark.parametrize("k,p", [(8, 4), (16, 4), (7, 3), (64, 16), (5, 2), (33, 8)])
def test_path_death_moves_only_its_orphans(k, p):
    paths = list(range(p))
    before = fill_by_data_plane(k, paths)
    dead = p - 1
    survivors = paths[:-1]
    moves = rebalance(before, survivors)
    orphans = {qp for qp, path in before.items() if path == dead}
    assert {m.qp for m in moves} == orphans
    after = apply(before, moves)
    assert dead not in after.values()
    assert max(counts_of(after, survivors).values()) == math.ceil(k / len(survivors))


@pytest.mark.parametrize("k,p", [(8, 4), (16, 4), (7, 3), (64, 16), (33, 8)])
def test_path_return_restores_balance_with_fewest_moves(k, p):
    paths = list(range(p))
    survivors = paths[:-1]
    degraded = apply(fill_by_data_plane(k, paths),
                     rebalance(fill_by_data_plane(k, paths), survivors))
    moves = rebalance(degraded, paths)
    after = apply(degraded, moves)
    assert max(counts_of(after, paths).values()) == math.ceil(k / p)
    # The returning path must receive floor or ceil of k/p, and nothing else moves.
    assert len(moves) == counts_of(after, paths)[p - 1]
    assert all(m.new_path == p - 1 for m in moves)


def test_orphans_go_heaviest_first_to_the_lightest_path():
    assignment = {"a": 0, "b": 0, "c": 1, "d": 2, "e": 2}
    qp_bytes = {"a": 10, "b": 10, "c": 10, "d": 1000, "e": 5}
    moves = rebalance(assignment, [0, 1], qp_bytes)
    assert sorted(moves, key=lambda m: m.qp) == [Move("d", 2, 1), Move("e", 2, 0)]


def test_surplus_prefers_qps_not_recently_moved():
    assignment = {"x": 0, "y": 0, "z": 0}
    moves = rebalance(assignment, [0, 1], recently_moved={"x"}, qp_bytes={"x": 0, "y": 5, "z": 9})
    assert [m.qp for m in moves] == ["y"]


def test_quotas_favour_fullest_paths():
    assert quotas([0, 1, 2], {0: 1, 1: 3, 2: 3}, 7) == {1: 3, 2: 2, 0: 2}


def test_no_live_path_means_no_moves_and_no_placement():
    assert rebalance({"a": 0}, []) == []
    assert place_new({}, []) is None


def test_imbalance_is_busiest_over_the_best_possible():
    assert imbalance({0: 2, 1: 2}, [0, 1]) == 1.0
    assert imbalance({0: 4, 1: 0}, [0, 1]) == 2.0
    assert imbalance({0: 2, 1: 1}, [0, 1]) == 1.0          # 3 QPs on 2 paths: 2 is the best
    assert imbalance({i: 1 for i in range(4)}, range(16)) == 1.0   # 4 QPs on 16 paths
    assert imbalance({0: 4}, range(16)) == 4.0
    assert imbalance({}, [0, 1]) == 0.0


def test_random_histories_stay_balanced():
    rng = random.Random(7)
    for _ in range(300):
        p = rng.randint(1, 12)
        paths = list(range(p))
        assignment = {qp: rng.choice(paths + [None, 99]) for qp in range(rng.randint(0, 60))}
        live = [x for x in paths if rng.random() < 0.8] or [0]
        after = apply(assignment, rebalance(assignment, live))
        c = counts_of(after, live)
        assert sum(c.values()) == len(assignment)
        if assignment:
            assert max(c.values()) == math.ceil(len(assignment) / len(live))


def test_diverse_order_spreads_every_prefix_over_links():
    # 2 uplinks x 2 borders x 2 WAN links per border = 8 end-to-end paths.
    paths = [(f"up{u}", f"border{b}", f"wan{b}{w}")
             for u in range(2) for b in range(2) for w in range(2)]
    order = diverse_order(paths)
    assert sorted(order) == list(range(8))
    first4 = [paths[i] for i in order[:4]]
    assert sorted(p[0] for p in first4) == ["up0", "up0", "up1", "up1"]
    assert len({p[2] for p in first4}) == 4          # one QP per WAN link
    first2 = [paths[i] for i in order[:2]]
    assert len({p[0] for p in first2}) == 2 and len({p[1] for p in first2}) == 2


def test_diverse_order_of_disjoint_or_empty_paths_is_index_order():
    assert diverse_order([("a",), ("b",), ("c",)]) == [0, 1, 2]
    assert diverse_order([(), ()]) == [0, 1]
    assert diverse_order([]) == []
