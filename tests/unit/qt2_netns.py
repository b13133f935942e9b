"""Throw-away network namespaces for the kernel-facing unit tests.

Each namespace gets a unique `qt2-` name and is deleted on exit, also when
the test fails (deleting a namespace takes its veths, routes and qdiscs).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

import pytest

PREFIX = "qt2-"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"command failed ({done.returncode}): {cmd}\n{done.stderr}")
    return done


def unique_name(tag: str) -> str:
    return f"{PREFIX}{tag}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def netns(tag: str):
    name = unique_name(tag)
    sh(f"ip netns add {name}")
    try:
        sh(f"ip -n {name} link set lo up")
        yield name
    finally:
        sh(f"ip netns del {name}", check=False)


def ecmp_router(ns: str, ways: int, dst: str = "10.0.0.2", src: str = "10.0.0.1") -> list[str]:
    """`ways` uplinks (veth, peers kept in the same namespace) and one ECMP
    route to dst over all of them, L4 multipath hashing on. Returns uplink names."""
    sh(f"ip netns exec {ns} sysctl -qw net.ipv4.fib_multipath_hash_policy=1 net.ipv4.ip_forward=1")
    sh(f"ip -n {ns} addr add {src}/32 dev lo")
    names, hops = [], []
    for i in range(ways):
        up = f"up{i}"
        sh(f"ip -n {ns} link add {up} type veth peer name far{i}")
        sh(f"ip -n {ns} link set {up} up && ip -n {ns} link set far{i} up")
        sh(f"ip -n {ns} addr add 10.9.{i}.1/24 dev {up}")
        names.append(up)
        hops.append(f"nexthop via 10.9.{i}.2 dev {up}")
    sh(f"ip -n {ns} route add {dst}/32 {' '.join(hops)}")
    return names


def ip_route_get(ns: str, dst: str, src: str, sport: int, dport: int = 4789) -> tuple[str, str]:
    """(dev, via) per iproute2, the reference the agent must agree with."""
    out = sh(f"ip -n {ns} route get {dst} from {src} ipproto udp sport {sport} dport {dport}").stdout
    words = out.split()
    return words[words.index("dev") + 1], (words[words.index("via") + 1] if "via" in words else None)
