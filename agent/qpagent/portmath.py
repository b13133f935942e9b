"""The kernel's choice of VXLAN outer UDP source port, and its inverse.

The VXLAN driver picks the outer source port with `udp_flow_src_port()`
(include/net/udp.h):

    h = skb hash (u32); h ^= h << 16 (kept to 32 bits)
    port = lo + ((u64)h * (hi - lo)) >> 32

with [lo, hi) the device's `srcport LO HI` (IFLA_VXLAN_PORT_RANGE), or the
namespace's net.ipv4.ip_local_port_range when lo >= hi. The map h -> h ^ h<<16
is a bijection on 32-bit values, so for every port in [lo, hi) there are
hashes that produce it: qp_steer sets one with bpf_set_hash().
"""

from __future__ import annotations

from pathlib import Path

_U32 = 0xFFFFFFFF
LOCAL_PORT_RANGE_SYSCTL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _check_range(lo: int, hi: int) -> None:
    if not (0 <= lo < hi <= 65536):
        raise ValueError(f"port range [{lo}, {hi}) is empty or not within 0..65536")


def _mix(h: int) -> int:
    """The driver's obfuscation step: h ^= h << 16 on a u32."""
    return (h ^ (h << 16)) & _U32


def _unmix(m: int) -> int:
    """Inverse of _mix: the low 16 bits pass through, the high ones were
    XORed with them."""
    low = m & 0xFFFF
    high = ((m >> 16) ^ low) & 0xFFFF
    return (high << 16) | low


def udp_flow_src_port(hash_: int, lo: int, hi: int) -> int:
    """The port the kernel emits for skb hash `hash_` and range [lo, hi)."""
    _check_range(lo, hi)
    if not 0 <= hash_ <= _U32:
        raise ValueError(f"hash {hash_} is not a 32-bit value")
    return lo + ((_mix(hash_) * (hi - lo)) >> 32)


def hash_for_port(port: int, lo: int, hi: int) -> int:
    """A non-zero skb hash for which the kernel emits `port` (lo <= port < hi).

    The mixed values giving port p form the interval
    [ceil(k*2^32/n), ceil((k+1)*2^32/n)) with k = p - lo, n = hi - lo; the
    midpoint is taken, which is never 0 (a zero hash makes the driver fall
    back to hashing the Ethernet header).
    """
    _check_range(lo, hi)
    if not lo <= port < hi:
        raise ValueError(
            f"port {port} is outside the range [{lo}, {hi - 1}] the device can emit")
    n = hi - lo
    k = port - lo
    first = -((-k << 32) // n)            # ceil(k * 2^32 / n)
    end = -((-(k + 1) << 32) // n)        # ceil((k+1) * 2^32 / n)
    mixed = (first + end - 1) // 2
    return _unmix(mixed)


def effective_port_range(dev_lo: int, dev_hi: int,
                         local_range: tuple[int, int] | None = None) -> tuple[int, int]:
    """The [lo, hi) range the driver really uses for a VXLAN device.

    A device range with lo < hi is used as is; otherwise (the default 0 0)
    the driver falls back to ip_local_port_range (low, high), read from the
    current namespace when `local_range` is not given.
    """
    if dev_lo < dev_hi:
        _check_range(dev_lo, dev_hi)
        return dev_lo, dev_hi
    if local_range is None:
        local_range = read_local_port_range()
    lo, hi = local_range
    _check_range(lo, hi)
    return lo, hi


def read_local_port_range() -> tuple[int, int]:
    """net.ipv4.ip_local_port_range of the calling process's namespace."""
    try:
        text = LOCAL_PORT_RANGE_SYSCTL.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {LOCAL_PORT_RANGE_SYSCTL}: {exc.strerror}") from exc
    fields = text.split()
    if len(fields) != 2:
        raise ValueError(f"unexpected ip_local_port_range: {text!r}")
    return int(fields[0]), int(fields[1])
