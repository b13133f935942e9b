"""RouteMonitor sees kernel route/link changes; BfdPoller turns every FRR
failure into a clean 'not available' answer."""

import queue
import stat
import time

import pytest

from qpagent.sources import bfd, routes
from qpagent.sources.signals import BfdChanged, RouteChanged
from qt2_netns import needs_root, netns, sh


def _wait_for(q, predicate, deadline_s=5.0):
    """Events off the queue until one matches; fail with what was seen."""
    seen = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            event = q.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(event)
        if predicate(event):
            return event
    raise AssertionError(f"no matching event within {deadline_s}s; saw {seen}")


@needs_root
def test_route_monitor_sees_routes_and_links_in_a_namespace():
    with netns("ev") as ns:
        sh(f"ip -n {ns} link add up0 type veth peer name far0")
        sh(f"ip -n {ns} link set far0 up && ip -n {ns} link set up0 up")
        sh(f"ip -n {ns} addr add 10.9.0.1/24 dev up0")
        mon = routes.RouteMonitor(netns=ns).start()
        try:
            t0 = time.monotonic()
            sh(f"ip -n {ns} route add 10.7.0.0/24 via 10.9.0.2")
            added = _wait_for(mon.events, lambda e: e.kind == "route_add" and "10.7.0.0/24" in e.summary)
            index = int(sh(f"ip netns exec {ns} cat /sys/class/net/up0/ifindex").stdout)
            assert added.summary == f"10.7.0.0/24 via 10.9.0.2 oif {index}"
            assert added.seen >= t0
            sh(f"ip -n {ns} route del 10.7.0.0/24")
            _wait_for(mon.events, lambda e: e.kind == "route_del" and "10.7.0.0/24" in e.summary)
            sh(f"ip -n {ns} link set up0 down")
            _wait_for(mon.events, lambda e: e.kind == "link_down" and e.summary.startswith("up0 "))
            sh(f"ip -n {ns} link set up0 up")
            _wait_for(mon.events, lambda e: e.kind == "link_up" and e.summary.startswith("up0 "))
        finally:
            mon.stop()
        assert mon._thread is None


@needs_root
def test_route_monitor_shares_the_callers_queue():
    wake = queue.Queue()
    with netns("ev2") as ns:
        with routes.RouteMonitor(wake, netns=ns):
            sh(f"ip -n {ns} addr add 10.8.0.1/24 dev lo")
            sh(f"ip -n {ns} route add 10.6.0.0/16 dev lo")
            event = _wait_for(wake, lambda e: e.kind == "route_add" and "10.6.0.0/16" in e.summary)
    assert isinstance(event, RouteChanged) and isinstance(event.seen, float)


def test_route_monitor_bad_namespace_is_a_clear_error():
    with pytest.raises(Exception, match="no such network namespace: qt2-absent"):
        routes.RouteMonitor(netns="qt2-absent").start()


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH holding only what the test puts there."""
    def put(name, body):
        path = tmp_path / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)
    put.dir = str(tmp_path)
    return put


def _poll_with_path(monkeypatch, path_dir, **kw):
    monkeypatch.setenv("PATH", path_dir)
    return bfd.BfdPoller(**kw).poll()


def test_bfd_vtysh_absent(monkeypatch, fake_bin):
    got = _poll_with_path(monkeypatch, fake_bin.dir)
    assert got == bfd.BfdResult(False, "vtysh not found on PATH (is FRR installed?)", [])


def test_bfd_vtysh_failing(monkeypatch, fake_bin):
    fake_bin("vtysh", "echo 'Exiting: failed to connect to any daemons.' >&2\nexit 1\n")
    got = _poll_with_path(monkeypatch, fake_bin.dir, namespace="dc1")
    assert got == bfd.BfdResult(
        False, "vtysh exited with 1: Exiting: failed to connect to any daemons.", [])


def test_bfd_vtysh_garbage(monkeypatch, fake_bin):
    fake_bin("vtysh", "echo '% Unknown command: show bfd peers json'\n")
    got = _poll_with_path(monkeypatch, fake_bin.dir)
    assert not got.available and got.peers == []
    assert got.reason.startswith("vtysh did not answer JSON")


def test_bfd_vtysh_hangs(monkeypatch, fake_bin):
    fake_bin("vtysh", "exec /bin/sleep 30\n")
    t0 = time.monotonic()
    got = _poll_with_path(monkeypatch, fake_bin.dir, timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    assert got.available is False and "timed out after 0.5s" in got.reason


def test_bfd_peers_parsed_and_namespace_passed(monkeypatch, fake_bin, tmp_path):
    args_file = tmp_path / "args"
    fake_bin("vtysh", f'echo "$@" > {args_file}\n'
             "echo 'vtysh.conf missing' >&2\n"
             """echo '[{"multihop":false,"peer":"10.1.0.2","local":"10.1.0.1","""
             """"vrf":"default","interface":"up0","id":1,"remote-id":2,"status":"up","""
             """"uptime":12,"diagnostic":"ok","remote-diagnostic":"ok"},"""
             """{"multihop":false,"peer":"10.1.1.2","local":"10.1.1.1","vrf":"default","""
             """"interface":"up1","status":"down","downtime":3,"diagnostic":"control detection time expired","""
             """"remote-diagnostic":"ok"}]'\n""")
    got = _poll_with_path(monkeypatch, fake_bin.dir, namespace="leaf1")
    assert args_file.read_text().split() == ["-N", "leaf1", "-c", "show", "bfd", "peers", "json"]
    assert got.available and got.reason is None
    assert [(p["peer"], p["interface"], p["status"], p["diagnostic"]) for p in got.peers] == [
        ("10.1.0.2", "up0", "up", "ok"),
        ("10.1.1.2", "up1", "down", "control detection time expired"),
    ]
    assert got.peers[1]["uptime"] is None and got.peers[1]["downtime"] == 3


@needs_root
def test_an_attribute_change_is_not_a_link_event():
    with netns("ev3") as ns:
        sh(f"ip -n {ns} link add up0 type veth peer name far0")
        sh(f"ip -n {ns} link set far0 up && ip -n {ns} link set up0 up")
        with routes.RouteMonitor(netns=ns) as mon:
            sh(f"ip -n {ns} link set up0 mtu 1400")
            sh(f"ip -n {ns} route add 10.5.0.0/16 dev up0")
            seen = []
            _wait_for(mon.events, lambda e: seen.append(e) or e.kind == "route_add")
    assert [e.kind for e in seen] == ["route_add"], seen


def test_bfd_watcher_reports_the_first_poll_and_each_change_only(monkeypatch, fake_bin, tmp_path):
    state = tmp_path / "status"
    state.write_text("up")
    fake_bin("vtysh", f"""read s < {state}\n"""
             """echo "[{\\"peer\\":\\"10.1.1.2\\",\\"interface\\":\\"up1\\",\\"status\\":\\"$s\\"},"""
             """{\\"peer\\":\\"10.9.9.9\\",\\"interface\\":\\"other\\",\\"status\\":\\"down\\"}]"\n""")
    monkeypatch.setenv("PATH", fake_bin.dir)
    got = queue.Queue()
    watcher = bfd.BfdWatcher(bfd.BfdPoller(), {"up0", "up1"}, got, interval=0.02).start()
    try:
        first = _wait_for(got, lambda e: True)
        assert isinstance(first, BfdChanged) and first.bfd.available
        assert first.bfd.down_uplinks == frozenset()     # "other" is not a managed uplink
        state.write_text("down")
        second = _wait_for(got, lambda e: True)
        assert second.bfd.down_uplinks == frozenset({"up1"})
        state.write_text("down")
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)                        # no change, no event
    finally:
        watcher.stop()
