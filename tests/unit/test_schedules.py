"""The collective schedules move exactly the bytes the model says."""
import pytest

from qplab.workloads import schedules as sch
from qplab.workloads.schedules import Transfer


def ranks(n, prefix="h"):
    return [f"{prefix}{i}" for i in range(n)]


@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("size", [1 << 20, 1000003, 7])
def test_ring_moves_2_n_minus_1_chunks_per_rank(n, size):
    s = sch.ring_allreduce(ranks(n), size)
    assert len(s) == 2 * (n - 1)
    chunks = sch.split_even(size, n)
    for step in s:
        # every rank sends exactly once per step, to its ring successor,
        # and the chunks of one step are a partition of the tensor
        assert [(t.src, t.dst) for t in step] == [(f"h{r}", f"h{(r + 1) % n}") for r in range(n)]
        assert sorted(t.nbytes for t in step) == sorted(chunks)
    assert sch.total_bytes(s) == 2 * (n - 1) * size
    if size % n == 0:
        assert sch.bytes_per_rank(s) == {f"h{r}": 2 * (n - 1) * size // n for r in range(n)}


def test_ring_small_example_whole():
    assert sch.ring_allreduce(["a", "b", "c"], 300) == [
        [Transfer("a", "b", 100), Transfer("b", "c", 100), Transfer("c", "a", 100)],
    ] * 4


def test_ring_reduce_scatter_chunk_order():
    # rank r sends chunk (r - k) mod N at reduce-scatter step k and
    # chunk (r + 1 - k) mod N at all-gather step k: visible with uneven chunks
    s = sch.ring_allreduce(["a", "b", "c"], 4)      # chunks 2, 1, 1
    assert [[t.nbytes for t in step] for step in s] == [[2, 1, 1], [1, 2, 1], [1, 1, 2], [2, 1, 1]]


@pytest.mark.parametrize("d,m", [(2, 4), (2, 1), (3, 2), (2, 2)])
def test_hierarchical_bytes_follow_the_model(d, m):
    size = 12 * 1024 * 7
    groups = [ranks(m, f"dc{g}h") for g in range(d)]
    s = sch.hierarchical_allreduce(groups, size)
    assert len(s) == 2 * (m - 1) + 2 * (d - 1)
    member = {r: gi for gi, g in enumerate(groups) for r in g}
    wan = sum(t.nbytes for step in s for t in step if member[t.src] != member[t.dst])
    lan = sch.total_bytes(s) - wan
    # intra: each group does a reduce-scatter and an all-gather of S,
    # (M-1) steps of M chunks of S/M each
    assert lan == d * 2 * (m - 1) * size
    # inter: M rings of D ranks, each an AllReduce of S/M: 2(D-1) * S/M each
    assert wan == 2 * (d - 1) * size
    # every rank sends in every step it takes part in, once
    for step in s:
        assert len({t.src for t in step}) == len(step)


def test_hierarchical_crosses_wan_less_than_flat_ring_per_rank():
    groups = [ranks(4, "a"), ranks(4, "b")]
    size = 1 << 20
    flat = sch.ring_allreduce(groups[0] + groups[1], size)
    hier = sch.hierarchical_allreduce(groups, size)
    def wan_max_per_link(s):
        per = {}
        for step in s:
            for t in step:
                if t.src[0] != t.dst[0]:
                    per[(t.src, t.dst)] = per.get((t.src, t.dst), 0) + t.nbytes
        return max(per.values())
    # the flat ring pushes 2(N-1)S/N through each of its 2 WAN hops; the
    # hierarchical one spreads 2(D-1)S over M cross pairs per direction
    assert wan_max_per_link(flat) == 2 * 7 * size // 8
    assert wan_max_per_link(hier) == size // 4


@pytest.mark.parametrize("w,s_", [(1, 1), (4, 2), (6, 3), (3, 5)])
def test_parameter_server_pushes_and_pulls_2_w_s(w, s_):
    size = 1_000_001
    workers, servers = ranks(w, "w"), ranks(s_, "s")
    s = sch.parameter_server(workers, servers, size)
    push, pull = s
    assert sch.total_bytes(s) == 2 * w * size
    assert all(t.src in workers and t.dst in servers for t in push)
    assert all(t.src in servers and t.dst in workers for t in pull)
    for wk in workers:
        assert sum(t.nbytes for t in push if t.src == wk) == size
        assert sum(t.nbytes for t in pull if t.dst == wk) == size


def test_parameter_server_colocated_skips_self():
    s = sch.parameter_server(["a", "b"], ["a"], 100)
    assert s == [[Transfer("b", "a", 100)], [Transfer("a", "b", 100)]]


@pytest.mark.parametrize("call,msg", [
    (lambda: sch.ring_allreduce(["a"], 10), "at least 2 ranks"),
    (lambda: sch.ring_allreduce(["a", "a"], 10), "repeat"),
    (lambda: sch.ring_allreduce(["a", "b"], 0), "positive"),
    (lambda: sch.hierarchical_allreduce([["a", "b"], ["c"]], 10), "equal"),
    (lambda: sch.hierarchical_allreduce([["a", "b"]], 10), "2 groups"),
    (lambda: sch.parameter_server([], ["s"], 10), "needs workers"),
])
def test_bad_input_is_a_clear_error(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_bus_factor():
    assert sch.bus_factor("ring", 8) == pytest.approx(1.75)
    assert sch.bus_factor("ps", 8) == 1.0
