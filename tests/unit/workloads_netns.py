"""Two network namespaces joined by a veth, for engine tests without the lab.
Everything made here is removed on exit, also when the test fails."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@contextlib.contextmanager
def veth_pair_namespaces(prefix="qt4-", addrs_a=("10.244.0.1",), addrs_b=("10.244.0.2",),
                         mtu=1500):
    """Yields (ns_a, ns_b); ns_a holds addrs_a, ns_b addrs_b, all in one /24."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"{prefix}{tag}a", f"{prefix}{tag}b"
    made = []
    try:
        for ns in (ns_a, ns_b):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns_a, "link", "add", "v0", "mtu", str(mtu), "type", "veth",
            "peer", "name", "v1", "netns", ns_b, "mtu", str(mtu))
        for ns, dev, addrs in ((ns_a, "v0", addrs_a), (ns_b, "v1", addrs_b)):
            for a in addrs:
                _ip("-n", ns, "addr", "add", f"{a}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        yield ns_a, ns_b
    finally:
        for ns in made:
            _ip("netns", "del", ns, check=False)


def can_make_namespaces() -> bool:
    return os.geteuid() == 0


def silent_cut(ns_a: str, ip_a: str, ns_b: str, ip_b: str, cut: bool = True) -> None:
    """Silently drop what ns_a sends to ip_b and what ns_b sends to ip_a
    while the link stays up (cut=False undoes it): each side's neighbour
    entry for the other address points at a MAC nobody has, so the frames
    arrive and are discarded as not ours. The other addresses still talk."""
    sides = ((ns_a, "v0", ns_b, "v1", ip_b), (ns_b, "v1", ns_a, "v0", ip_a))
    real = {(peer_ns, peer_dev): _mac(peer_ns, peer_dev) for _, _, peer_ns, peer_dev, _ in sides}
    for ns, dev, peer_ns, peer_dev, peer_ip in sides:
        mac = "02:00:5e:00:de:ad" if cut else real[(peer_ns, peer_dev)]
        _ip("-n", ns, "neigh", "replace", peer_ip, "lladdr", mac, "dev", dev, "nud", "permanent")


_macs: dict[tuple[str, str], str] = {}    # namespace names are unique per run


def _mac(ns: str, dev: str) -> str:
    mac = _macs.get((ns, dev))
    if mac is None:
        mac = _macs[(ns, dev)] = _ip("-n", ns, "-br", "link", "show", dev).stdout.split()[2]
    return mac


def rx_bytes(ns: str, dev: str) -> int:
    out = _ip("-n", ns, "-s", "-j", "link", "show", dev).stdout
    return json.loads(out)[0]["stats64"]["rx"]["bytes"]
