"""portmath against an independent transcription of the kernel's
udp_flow_src_port(), evaluated with C's fixed-width arithmetic (numpy)."""

import numpy as np
import pytest

from qpagent.portmath import (effective_port_range, hash_for_port,
                              udp_flow_src_port)

DEFAULT_RANGE = (32768, 60999)          # Linux's ip_local_port_range default
ODD_RANGES = [(49152, 65535), (1, 2), (4000, 4001 + 16), (10000, 10007),
              (0, 65536 - 1), (60000, 60003)]


def kernel_src_port(hashes, lo, hi):
    """include/net/udp.h: hash ^= hash << 16 (u32);
    port = (((u64)hash * (max - min)) >> 32) + min."""
    h = np.asarray(hashes, dtype=np.uint32)
    h = h ^ (h << np.uint32(16))
    return ((h.astype(np.uint64) * np.uint64(hi - lo)) >> np.uint64(32)) + np.uint64(lo)


@pytest.mark.parametrize("lo,hi", [DEFAULT_RANGE, *ODD_RANGES])
def test_every_port_of_the_range_comes_back_from_its_hash(lo, hi):
    ports = np.arange(lo, hi)
    hashes = np.array([hash_for_port(int(p), lo, hi) for p in ports], dtype=np.uint64)
    assert (hashes > 0).all(), "a zero hash would make the driver use its own"
    assert (hashes <= 0xFFFFFFFF).all()
    emitted = kernel_src_port(hashes, lo, hi)
    wrong = np.nonzero(emitted != ports)[0]
    assert wrong.size == 0, (
        f"{wrong.size} ports wrong, first: port {ports[wrong[0]]} -> hash "
        f"{int(hashes[wrong[0]])} -> kernel emits {int(emitted[wrong[0]])}")


@pytest.mark.parametrize("lo,hi", [DEFAULT_RANGE, *ODD_RANGES])
def test_forward_formula_matches_the_kernel_for_random_and_edge_hashes(lo, hi):
    rng = np.random.default_rng(4791)
    edges = [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    hashes = np.concatenate([rng.integers(0, 2**32, 3000, dtype=np.uint64),
                             np.array(edges, dtype=np.uint64)])
    ours = np.array([udp_flow_src_port(int(h), lo, hi) for h in hashes])
    assert (ours == kernel_src_port(hashes, lo, hi)).all()


def test_a_port_outside_the_range_is_refused_with_the_range_named():
    with pytest.raises(ValueError, match=r"\[32768, 60998\]"):
        hash_for_port(60999, *DEFAULT_RANGE)   # hi itself is never emitted
    with pytest.raises(ValueError):
        hash_for_port(32767, *DEFAULT_RANGE)


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError):
        hash_for_port(5, 5, 5)
    with pytest.raises(ValueError):
        udp_flow_src_port(1, 10, 3)


def test_device_range_wins_unless_empty_then_local_range():
    assert effective_port_range(49152, 49168, (32768, 60999)) == (49152, 49168)
    # The driver falls back when min >= max, not only for 0 0.
    assert effective_port_range(0, 0, (32768, 60999)) == (32768, 60999)
    assert effective_port_range(5000, 5000, (1024, 2048)) == (1024, 2048)


def test_local_range_is_read_from_the_namespace_when_not_given():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    assert effective_port_range(0, 0) == (lo, hi)
