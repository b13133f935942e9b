"""Two network namespaces joined by a veth, for engine tests without the lab.
Everything made here is removed on exit, also when the test fails."""
from __future__ import annotations

import contextlib
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
