"""discover_paths: every ECMP next hop out of the configured uplinks, each
with ports that really lead there, in a stable order."""

import pytest

from qpagent import netnsutil, paths
from qpagent.core.model import PathState, VtepState
from qpagent.sources.discovery import PathDiscovery, Target
from qt2_netns import ecmp_router, ip_route_get, needs_root, netns, sh

pytestmark = [needs_root]


@pytest.fixture(params=[2, 4], ids=["2way", "4way"])
def router(request):
    with netns("paths") as ns:
        yield ns, ecmp_router(ns, request.param)


def _discover(ns, uplinks, **kw):
    with netnsutil.enter(ns):
        return paths.discover_paths("10.0.0.1", "10.0.0.2", range(49152, 65536),
                                    set(uplinks), **kw)


def test_paths_are_the_uplinks_with_ports_that_go_there(router):
    ns, uplinks = router
    found = _discover(ns, uplinks, ports_per_path=16)
    summary = [(p.index, p.ifname, p.gateway, len(p.ports)) for p in found]
    assert summary == [(i, up, f"10.9.{i}.2", 16) for i, up in enumerate(uplinks)]
    for path in found:
        for port in path.ports:
            assert ip_route_get(ns, "10.0.0.2", "10.0.0.1", port) == (path.ifname, path.gateway)
    all_ports = [p for path in found for p in path.ports]
    assert len(all_ports) == len(set(all_ports))


def test_uplinks_not_configured_are_ignored(router):
    ns, uplinks = router
    found = _discover(ns, uplinks[1:], ports_per_path=4)
    assert [p.ifname for p in found] == uplinks[1:]
    assert [p.index for p in found] == list(range(len(uplinks) - 1))


def test_index_is_stable_across_rediscovery_and_candidate_order(router):
    ns, uplinks = router
    first = _discover(ns, uplinks, ports_per_path=4)
    with netnsutil.enter(ns):
        again = paths.discover_paths("10.0.0.1", "10.0.0.2", reversed(range(49152, 65536)),
                                     set(uplinks), ports_per_path=4)
    assert [(p.index, p.ifname, p.gateway) for p in again] == \
           [(p.index, p.ifname, p.gateway) for p in first]


def test_candidates_running_out_gives_what_was_found(router):
    ns, uplinks = router
    found = _discover(ns, uplinks, ports_per_path=16, max_lookups=8)
    assert sum(len(p.ports) for p in found) == 8
    assert {p.ifname for p in found} <= set(uplinks)


def test_a_removed_nexthop_disappears(router):
    ns, uplinks = router
    hops = " ".join(f"nexthop via 10.9.{i}.2 dev {up}" for i, up in enumerate(uplinks) if i != 0)
    sh(f"ip -n {ns} route replace 10.0.0.2/32 {hops}")
    found = _discover(ns, uplinks, ports_per_path=4)
    assert [p.ifname for p in found] == uplinks[1:]


def _lose_carrier(ns, uplinks) -> None:
    """up0's far end goes down: up0 loses its carrier, but the kernel keeps
    routing through it (a linkdown next hop is still used unless
    ignore_routes_with_linkdown is set), as it does for a moment after any
    link goes down."""
    sh(f"ip -n {ns} link set far0 down")
    ports = range(49152, 49152 + 64)
    assert any(ip_route_get(ns, "10.0.0.2", "10.0.0.1", p)[0] == uplinks[0] for p in ports), \
        "the FIB no longer names up0: this test would prove nothing"


def test_an_uplink_without_carrier_is_not_a_path_even_while_the_fib_names_it(router):
    ns, uplinks = router
    _lose_carrier(ns, uplinks)
    found = _discover(ns, uplinks, ports_per_path=4)
    assert [p.ifname for p in found] == uplinks[1:]


def test_first_hop_check_drops_a_path_whose_uplink_lost_carrier(router):
    ns, uplinks = router
    with netnsutil.enter(ns):
        discovery = PathDiscovery(uplinks, (49152, 65535), 4, end_to_end=False)
    try:
        found = discovery.discover(Target(("vx", "10.0.0.2"), "10.0.0.2", "10.0.0.1", (49152, 65536)))
        assert sorted(f.ifname for f in found) == uplinks
        vtep = VtepState(0, "vx", "10.0.0.2", "10.0.0.1", (49152, 65536), {
            i: PathState(i, f.ifindex, f.ifname, f.gateway, list(f.ports)) for i, f in enumerate(found)})
        _lose_carrier(ns, uplinks)
        still = discovery.first_hops_still(vtep)
        assert sorted(f.ifname for f in still) == uplinks[1:]
    finally:
        discovery.close()
