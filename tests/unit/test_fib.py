"""fib.lookup must name the same next hop as `ip route get ... sport N` for
UDP flows over an L4-hashed ECMP route, and ports must really spread."""

from collections import Counter

import pytest

from qpagent import fib, netnsutil
from qt2_netns import ecmp_router, ip_route_get, needs_root, netns

pytestmark = [needs_root]

PORTS = range(49152, 49152 + 300)


@pytest.fixture(params=[2, 4], ids=["2way", "4way"])
def router(request):
    with netns("fib") as ns:
        uplinks = ecmp_router(ns, request.param)
        yield ns, uplinks


def _expected(ns):
    return {p: ip_route_get(ns, "10.0.0.2", "10.0.0.1", p) for p in PORTS}


def test_lookup_agrees_with_ip_route_get_and_ports_spread(router):
    ns, uplinks = router
    expected = _expected(ns)
    with netnsutil.enter(ns):
        f = fib.Fib()   # the agent's default: hand-packed RTM_GETROUTE
    try:
        got = {p: (r.oif_name, r.gateway) for p in PORTS
               for r in [f.lookup("10.0.0.2", src="10.0.0.1", sport=p)]}
    finally:
        f.close()
    assert got == expected
    spread = Counter(dev for dev, _ in got.values())
    assert set(spread) == set(uplinks), spread
    assert min(spread.values()) >= len(PORTS) / len(uplinks) / 3, spread


def test_module_lookup_in_namespace(router):
    ns, _ = router
    route = fib.lookup("10.0.0.2", src="10.0.0.1", sport=50000, netns=ns)
    assert (route.oif_name, route.gateway) == ip_route_get(ns, "10.0.0.2", "10.0.0.1", 50000)
    assert route.oif > 0


def test_bad_input_is_a_clear_error():
    with pytest.raises(fib.FibError, match="not an IP address: 'nonsense'"):
        fib.lookup("nonsense")
    with pytest.raises(fib.FibError, match="sport out of range"):
        fib.lookup("10.0.0.2", sport=70000)


def test_no_route_is_a_clear_error():
    with netns("fibnr") as ns:
        with pytest.raises(fib.FibError, match="no route to 10.99.0.1"):
            fib.lookup("10.99.0.1", netns=ns)
        with netnsutil.enter(ns):
            f = fib.Fib()
        try:
            with pytest.raises(fib.FibError, match="no route to 10.99.0.1"):
                f.lookup("10.99.0.1")
        finally:
            f.close()
