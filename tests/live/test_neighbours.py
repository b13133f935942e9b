"""qpagent.neighbours on a real link: managed neighbour entries for uplink
gateways are resolved by the kernel without traffic, static entries are left
alone, and forget() removes only what keep_resolved() made."""

import json
import subprocess
import time
import uuid

import pytest

from qpagent import neighbours

GATEWAY, STATIC_GW = "10.77.0.2", "10.77.0.9"
GATEWAY6 = "fd77::2"


def ip(ns, *args):
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


def entries(ns):
    """{address: (state list, flag list)} of uplink up1's neighbours (ip's
    JSON shows `managed` as a key of its own)."""
    rows = json.loads(ip(ns, "-j", "-d", "neigh", "show", "dev", "up1").stdout or "[]")
    return {r["dst"]: (r.get("state", []), [f for f in ("managed",) if f in r]) for r in rows}


def wait_for(what, fn, deadline_s=5.0):
    end = time.monotonic() + deadline_s
    while not (got := fn()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return got


@pytest.fixture
def link():
    """Namespace `vtep` with uplink up1 to namespace `peer` (which answers
    ARP and ND for the gateway), and no neighbour entries yet."""
    tag = uuid.uuid4().hex[:8]
    vtep, peer = f"qt2-nb-{tag}-v", f"qt2-nb-{tag}-p"
    try:
        for ns in (vtep, peer):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        ip(vtep, "link", "add", "up1", "type", "veth", "peer", "name", "down1", "netns", peer)
        ip(vtep, "addr", "add", "10.77.0.1/24", "dev", "up1")
        ip(vtep, "addr", "add", "fd77::1/64", "dev", "up1", "nodad")
        ip(peer, "addr", "add", f"{GATEWAY}/24", "dev", "down1")
        ip(peer, "addr", "add", f"{GATEWAY6}/64", "dev", "down1", "nodad")
        ip(vtep, "link", "set", "up1", "up")
        ip(peer, "link", "set", "down1", "up")
        ip(vtep, "neigh", "replace", STATIC_GW, "lladdr", "02:00:00:00:77:09", "dev", "up1",
           "nud", "permanent")
        yield vtep
    finally:
        for ns in (vtep, peer):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_gateways_are_resolved_without_traffic_and_stay_managed(link):
    got = neighbours.keep_resolved([("up1", GATEWAY), ("up1", GATEWAY6), ("up1", STATIC_GW),
                                    ("nosuch0", GATEWAY)], netns=link)
    assert [(g.uplink, g.address, g.outcome) for g in got] == [
        ("up1", GATEWAY, "managed"), ("up1", GATEWAY6, "managed"), ("up1", STATIC_GW, "static"),
        ("nosuch0", GATEWAY, "error: no such interface")]
    for gw in (GATEWAY, GATEWAY6):
        wait_for(f"{gw} REACHABLE", lambda gw=gw: "REACHABLE" in entries(link).get(gw, ([], []))[0])
        assert "managed" in entries(link)[gw][1]
    assert entries(link)[STATIC_GW][0] == ["PERMANENT"]
    # Idempotent: a second call keeps the resolved entry as it is.
    assert [g.outcome for g in neighbours.keep_resolved([("up1", GATEWAY)], netns=link)] == ["managed"]
    assert "REACHABLE" in entries(link)[GATEWAY][0]


def test_a_flushed_gateway_is_made_again(link):
    neighbours.keep_resolved([("up1", GATEWAY)], netns=link)
    wait_for("resolved", lambda: "REACHABLE" in entries(link).get(GATEWAY, ([], []))[0])
    ip(link, "neigh", "flush", "dev", "up1")
    assert GATEWAY not in entries(link)
    neighbours.keep_resolved([("up1", GATEWAY)], netns=link)
    wait_for("resolved again", lambda: "REACHABLE" in entries(link).get(GATEWAY, ([], []))[0])


def test_forget_removes_only_managed_entries(link):
    neighbours.keep_resolved([("up1", GATEWAY)], netns=link)
    neighbours.forget([("up1", GATEWAY), ("up1", STATIC_GW), ("up1", "10.77.0.50"),
                       ("nosuch0", GATEWAY)], netns=link)
    assert set(entries(link)) == {STATIC_GW}
