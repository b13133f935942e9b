"""Communication schedules of the collectives, as pure data: a list of steps,
each a list of transfers (src, dst, bytes). A rank starts its sends of step s
once it has received everything addressed to it in steps before s, which is
the data dependency of a ring (a chunk is forwarded after it arrived) and of
a parameter server (weights go back after every gradient is in).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transfer:
    src: str
    dst: str
    nbytes: int


Schedule = list[list[Transfer]]


def split_even(total: int, parts: int) -> list[int]:
    """`total` bytes in `parts` chunks whose sizes differ by at most one."""
    if parts <= 0:
        raise ValueError("need at least one part")
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


def _check(ranks: list[str], size: int) -> None:
    if len(ranks) < 2:
        raise ValueError(f"a collective needs at least 2 ranks, got {len(ranks)}")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks repeat: {ranks}")
    if size <= 0:
        raise ValueError(f"tensor size must be positive, got {size}")


def ring_allreduce(ranks: list[str], size: int) -> Schedule:
    """Ring AllReduce: reduce-scatter then all-gather, 2(N-1) steps; in each
    step rank r sends one chunk (S/N bytes) to rank r+1."""
    _check(ranks, size)
    n = len(ranks)
    chunks = split_even(size, n)
    steps: Schedule = []
    for k in range(n - 1):                      # reduce-scatter
        steps.append([Transfer(ranks[r], ranks[(r + 1) % n], chunks[(r - k) % n])
                      for r in range(n)])
    for k in range(n - 1):                      # all-gather
        steps.append([Transfer(ranks[r], ranks[(r + 1) % n], chunks[(r + 1 - k) % n])
                      for r in range(n)])
    return steps


def hierarchical_allreduce(groups: list[list[str]], size: int) -> Schedule:
    """Hierarchical AllReduce over D groups (data centers) of M ranks each:
    ring reduce-scatter inside each group (M-1 steps of S/M), ring AllReduce
    of each S/M shard across groups among ranks of the same index (2(D-1)
    steps of S/(M*D)), ring all-gather inside each group (M-1 steps of S/M).
    Only the middle phase crosses the WAN, with S/M per rank instead of S."""
    if len(groups) < 2:
        raise ValueError("hierarchical AllReduce needs at least 2 groups")
    m = len(groups[0])
    if m < 1 or any(len(g) != m for g in groups):
        raise ValueError(f"groups must have equal, non-zero sizes: {[len(g) for g in groups]}")
    _check([r for g in groups for r in g], size)
    shard = split_even(size, m)
    intra_rs: Schedule = [[] for _ in range(m - 1)]
    intra_ag: Schedule = [[] for _ in range(m - 1)]
    if m > 1:
        for g in groups:
            rs = ring_allreduce(g, size)
            intra_rs = [a + b for a, b in zip(intra_rs, rs[:m - 1])]
            intra_ag = [a + b for a, b in zip(intra_ag, rs[m - 1:])]
    d = len(groups)
    inter: Schedule = [[] for _ in range(2 * (d - 1))]
    for i in range(m):
        # After the reduce-scatter rank i of a group holds shard (i + 1) mod M.
        across = ring_allreduce([g[i] for g in groups], shard[(i + 1) % m])
        inter = [a + b for a, b in zip(inter, across)]
    return intra_rs + inter + intra_ag


def parameter_server(workers: list[str], servers: list[str], size: int) -> Schedule:
    """Parameter server: the tensor is sharded over the servers; every worker
    pushes each shard's gradient to its server (step 0), then pulls the
    updated shard back (step 1). 2*W*S bytes when no worker is a server."""
    if not workers or not servers:
        raise ValueError("parameter server needs workers and servers")
    if len(set(workers)) != len(workers) or len(set(servers)) != len(servers):
        raise ValueError("workers and servers must each be distinct")
    if size <= 0:
        raise ValueError(f"tensor size must be positive, got {size}")
    shards = split_even(size, len(servers))
    push = [Transfer(w, s, b) for w in workers for s, b in zip(servers, shards) if w != s and b]
    pull = [Transfer(s, w, b) for w in workers for s, b in zip(servers, shards) if w != s and b]
    return [push, pull]


def bytes_per_rank(schedule: Schedule) -> dict[str, int]:
    sent: dict[str, int] = {}
    for step in schedule:
        for t in step:
            sent[t.src] = sent.get(t.src, 0) + t.nbytes
    return sent


def total_bytes(schedule: Schedule) -> int:
    return sum(t.nbytes for step in schedule for t in step)


def bus_factor(pattern: str, nranks: int) -> float:
    """nccl-tests' busbw = algbw x factor; AllReduce's factor is 2(N-1)/N.
    A parameter server has no bus convention: its factor is 1 (algbw)."""
    if pattern in ("ring", "hierarchical", "allreduce"):
        return 2 * (nranks - 1) / nranks
    return 1.0
