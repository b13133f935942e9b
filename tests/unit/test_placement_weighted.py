"""Capacity-weighted placement: QPs in proportion to each path's bottleneck,
by largest remainder, with the fewest moves; equal weights exactly as before."""

import math

import pytest

from placement_moves import apply, counts_of
from qpagent.config import ConfigError, load_config
from qpagent.core.placement import imbalance, path_weights, place_new, quotas, rebalance


# weights, QPs already on each path, total QPs -> quota per path
QUOTAS = [
    pytest.param({0: 300, 1: 100}, {}, 8, {0: 6, 1: 2}, id="3:1 exact"),
    pytest.param({0: 300, 1: 100}, {}, 7, {0: 5, 1: 2}, id="3:1, 5.25 and 1.75"),
    pytest.param({0: 300, 1: 100}, {}, 1, {0: 1, 1: 0}, id="one QP to the biggest"),
    pytest.param({0: 3, 1: 1}, {}, 8, {0: 6, 1: 2}, id="only the ratio matters"),
    pytest.param({0: 100, 1: 100, 2: 200}, {}, 6, {0: 2, 1: 1, 2: 3},
                 id="1.5, 1.5, 3: the tie goes to the lower index"),
    pytest.param({0: 100, 1: 100, 2: 200}, {1: 2}, 6, {0: 1, 1: 2, 2: 3},
                 id="1.5, 1.5, 3: the tie goes to the path holding more"),
    pytest.param({0: 10, 1: 20, 2: 30}, {}, 5, {0: 1, 1: 2, 2: 2},
                 id="0.83, 1.67, 2.5: largest remainders"),
    pytest.param({0: 1000, 1: 1}, {}, 4, {0: 4, 1: 0}, id="a thin path gets none"),
    pytest.param({0: 40, 1: 40}, {0: 1, 1: 3}, 7, {0: 3, 1: 4}, id="equal: ceil to the fullest"),
    pytest.param({0: 300, 1: 100}, {}, 0, {0: 0, 1: 0}, id="no QPs"),
    pytest.param({0: 300, 1: None}, {}, 4, {0: 2, 1: 2}, id="no weight: the smallest given"),
]


@pytest.mark.parametrize("weights, counts, total, want", QUOTAS)
def test_quotas_by_largest_remainder(weights, counts, total, want):
    got = quotas(list(weights), counts, total, weights)
    assert got == want
    assert sum(got.values()) == total


@pytest.mark.parametrize("p", range(1, 17))
def test_equal_weights_give_exactly_the_unweighted_quotas_and_moves(p):
    paths = list(range(p))
    equal = {i: 250.0 for i in paths}
    for k in range(0, 40):
        counts = {i: (k * (i + 3)) % 5 for i in paths}
        assert quotas(paths, counts, k, equal) == quotas(paths, counts, k)
        start = {qp: qp % 2 for qp in range(k)}          # everything on paths 0 and 1
        assert rebalance(start, paths, weights=equal) == rebalance(start, paths)


# weights, QPs -> final count per path, from the worst start (all on path 0)
FINALS = [
    ({0: 300, 1: 100}, 8, {0: 6, 1: 2}),
    ({0: 100, 1: 300}, 8, {0: 2, 1: 6}),
    ({0: 100, 1: 100, 2: 200, 3: 400}, 16, {0: 2, 1: 2, 2: 4, 3: 8}),
    ({0: 100, 1: 200, 2: 300}, 7, {0: 1, 1: 2, 2: 4}),
]


@pytest.mark.parametrize("weights, k, want", FINALS)
def test_rebalance_reaches_the_weighted_quotas(weights, k, want):
    paths = list(weights)
    for start_path in paths:
        start = {qp: start_path for qp in range(k)}
        moves = rebalance(start, paths, weights=weights)
        assert counts_of(apply(start, moves), paths) == want
        assert len(moves) == k - want[start_path]       # only the surplus moves
        assert rebalance(apply(start, moves), paths, weights=weights) == []


def test_from_the_data_planes_even_spread_only_the_surplus_moves():
    # the data plane places 8 new QPs 4 : 4; at 3 : 1 two of path 1's move
    start = {qp: qp % 2 for qp in range(8)}
    moves = rebalance(start, [0, 1], weights={0: 300, 1: 100})
    assert [(m.old_path, m.new_path) for m in moves] == [(1, 0), (1, 0)]


def test_a_dead_path_moves_only_its_orphans_in_proportion():
    weights = {0: 300, 1: 100, 2: 100}
    start = {qp: p for qp, p in enumerate([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])}
    moves = rebalance(start, [0, 1], weights=weights)   # path 2 died
    assert {m.qp for m in moves} == {8, 9}
    # 7.5 : 2.5, equal remainders: the extra QP goes where more QPs already are
    assert counts_of(apply(start, moves), [0, 1]) == {0: 8, 1: 2}


def test_recently_moved_qps_stay_when_another_can_go():
    start = {"a": 1, "b": 1, "c": 1, "d": 1}
    moves = rebalance(start, [0, 1], recently_moved={"a"}, weights={0: 300, 1: 100})
    assert sorted(m.qp for m in moves) == ["b", "c", "d"]
    assert counts_of(apply(start, moves), [0, 1]) == {0: 3, 1: 1}


def test_place_new_fills_in_proportion():
    weights = {0: 300, 1: 100}
    counts = {0: 0, 1: 0}
    order = []
    for _ in range(8):
        path = place_new(counts, [0, 1], weights)
        order.append(path)
        counts[path] += 1
    assert counts == {0: 6, 1: 2}
    assert order == [0, 0, 1, 0, 0, 0, 1, 0]     # each QP where it leaves the least per unit
    assert place_new({0: 1, 1: 0}, [0, 1]) == 1          # unweighted as before


IMBALANCE = [
    ({0: 6, 1: 2}, {0: 300, 1: 100}, 1.0),
    ({0: 4, 1: 4}, {0: 300, 1: 100}, 2.0),     # path 1 holds 4 where 2 is its share
    ({0: 4, 1: 4}, None, 1.0),
    ({0: 5, 1: 2}, {0: 300, 1: 100}, 1.0),     # ceil(5.25) = 6, ceil(1.75) = 2
    ({}, {0: 300, 1: 100}, 0.0),
]


@pytest.mark.parametrize("counts, weights, want", IMBALANCE)
def test_imbalance_against_each_paths_share(counts, weights, want):
    assert imbalance(counts, [0, 1], weights) == want


PATHS = {
    0: ("eth1", "10.0.0.1", ("10.0.0.1", "10.0.0.2", "10.0.0.19", "10.0.0.9")),
    1: ("eth1", "10.0.0.1", ("10.0.0.1", "10.0.0.4", "10.0.0.21", "10.0.0.11")),
    2: ("eth2", "10.0.0.7", ()),
}

# configured capacities -> weight per path
WEIGHTS = [
    pytest.param({}, {0: 1.0, 1: 1.0, 2: 1.0}, id="nothing configured: equal"),
    pytest.param({"10.0.0.19": 300, "10.0.0.21": 100}, {0: 300.0, 1: 100.0, 2: 300.0},
                 id="hop addresses; a path naming none is not bounded by them"),
    pytest.param({"eth1": 200, "10.0.0.19": 300, "10.0.0.21": 100}, {0: 200.0, 1: 100.0, 2: 300.0},
                 id="the bottleneck is the smallest on the path"),
    pytest.param({"eth2": 50, "10.0.0.7": 40}, {0: 50.0, 1: 50.0, 2: 40.0},
                 id="uplink name and gateway"),
    pytest.param({"10.9.9.9": 10}, {0: 1.0, 1: 1.0, 2: 1.0}, id="an address on no path: equal"),
]


@pytest.mark.parametrize("capacities, want", WEIGHTS)
def test_path_weights_are_bottleneck_capacities(capacities, want):
    assert path_weights(PATHS, capacities) == want


def test_weights_and_quotas_together_from_a_path_table():
    weights = path_weights(PATHS, {"10.0.0.19": 300, "10.0.0.21": 100, "eth2": 100})
    assert quotas([0, 1, 2], {}, 10, weights) == {0: 6, 1: 2, 2: 2}
    assert math.isclose(sum(weights.values()), 500.0)


# ---------------------------------------------------------------- the config key

def write(tmp_path, text, name="qpagent.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


STEER = '[steer]\nvxlan_devices = ["vxlan100"]\nuplinks = ["eth1", "eth2"]\n'


def test_capacities_are_read_from_toml_and_yaml(tmp_path):
    toml = write(tmp_path, STEER + '\n[steer.capacities]\neth1 = 1000\n"10.0.0.19" = 300.5\n')
    assert load_config(toml).steer.capacities == {"eth1": 1000.0, "10.0.0.19": 300.5}
    yml = write(tmp_path, "steer:\n  vxlan_devices: [vxlan100]\n  uplinks: [eth1]\n"
                "  capacities:\n    10.0.0.19: 300\n", name="qpagent.yaml")
    assert load_config(yml).steer.capacities == {"10.0.0.19": 300.0}
    assert load_config(write(tmp_path, STEER)).steer.capacities == {}


BAD = [
    pytest.param(STEER + '\n[steer.capacities]\neth1 = 1000\n"10.0.0.19" = 0\n',
                 "qpagent.toml:7: steer.capacities.10.0.0.19: expected a capacity in Mbit/s "
                 "above 0 (at most 10000000), got integer 0", id="zero"),
    pytest.param(STEER + '\n[steer.capacities]\neth1 = "fast"\n',
                 "qpagent.toml:6: steer.capacities.eth1: expected a capacity in Mbit/s above 0 "
                 "(at most 10000000), got string 'fast'", id="not a number"),
    pytest.param(STEER + 'capacities = {"eth 1" = 10}\n',
                 "qpagent.toml:4: steer.capacities.eth 1: interface name 'eth 1' contains '/', "
                 "':' or whitespace; expected an uplink name or an IPv4 hop address",
                 id="inline table: the key's line"),
    pytest.param('[count]\nxdp = ["eth0"]\n\n[steer.capacities]\neth0 = 100\n',
                 "qpagent.toml:4: steer.capacities: host mode (no steer.vxlan_devices) places "
                 "no QPs, so there are no paths to weigh by capacity", id="host mode"),
    pytest.param(STEER + 'capacities = [100, 300]\n',
                 "qpagent.toml:4: steer.capacities: expected a table of uplink names or hop "
                 "addresses to Mbit/s, got a list", id="a list"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_capacities_name_the_key_and_the_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert str(exc.value).replace(str(tmp_path) + "/", "") == message
