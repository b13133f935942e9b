"""DataPlane attaches the real programs where the config says, detaches
without a trace, refuses a second agent and follows recreated interfaces."""

import os

import pytest

from qpagent.datapath import DataPlane, DataPlaneError
from twovtep import VXLAN_DEV, sh


def hooks_state(ns: str, devices) -> dict:
    """What tc and XDP show per interface, as iproute2 prints it."""
    state = {}
    for dev in devices:
        qdiscs = sh(f"tc -n {ns} qdisc show dev {dev}").stdout
        egress = sh(f"tc -n {ns} filter show dev {dev} egress", check=False).stdout
        link = sh(f"ip -n {ns} -d link show dev {dev}").stdout
        state[dev] = {
            "clsact": "clsact" in qdiscs,
            "egress": sorted(line.split(" name ")[1].split()[0]
                             for line in egress.splitlines() if " name " in line),
            "xdp": [w for w in link.split() if w.startswith("xdp")][:1],
        }
    return state


def dataplane(topo, **over):
    side = topo.a
    kw = dict(vxlan_devices=[VXLAN_DEV], uplinks=side.uplinks, count_xdp=side.uplinks,
              count_tc=side.uplinks, xdp_mode="generic", netns=side.vtep_ns)
    kw.update(over)
    return DataPlane(**kw)


def test_attach_then_detach_leaves_nothing(twovtep):
    ns, devices = twovtep.a.vtep_ns, [VXLAN_DEV, *twovtep.a.uplinks]
    before = hooks_state(ns, devices)
    dp = dataplane(twovtep)
    try:
        dp.attach()
        attached = hooks_state(ns, devices)
        expected = {VXLAN_DEV: {"clsact": True, "egress": ["qp_steer"], "xdp": []}}
        for up in twovtep.a.uplinks:
            expected[up] = {"clsact": True, "egress": ["flow_stats_tc", "path_pin"],
                            "xdp": ["xdpgeneric"]}
        assert attached == expected
        rows = {(r["name"], r["interface"]): r for r in dp.programs()}
        assert set(rows) == {("qp_steer", VXLAN_DEV)} | {
            (prog, up) for up in twovtep.a.uplinks
            for prog in ("path_pin", "flow_stats_tc", "flow_stats_xdp")}
        assert all(r["prog_id"] > 0 and r["ifindex"] > 0 for r in rows.values())
        # The tables the agent and the metrics read are reachable.
        for obj, names in ((dp.steer, ("qp_table", "mac_vtep", "path_table", "steer_events",
                                       "parse_stats")),
                           (dp.pin, ("pin_events", "pin_uplinks", "parse_stats")),
                           (dp.flows, ("flow_table", "parse_stats"))):
            for name in names:
                assert obj[name.encode()] is not None
    finally:
        dp.detach()
    assert hooks_state(ns, devices) == before


def test_preexisting_clsact_stays_our_filters_go(twovtep2):
    ns = twovtep2.a.vtep_ns
    sh(f"tc -n {ns} qdisc add dev up0 clsact")
    dp = dataplane(twovtep2, vxlan_devices=[], uplinks=["up0"], count_xdp=[], count_tc=[])
    with dp:
        assert hooks_state(ns, ["up0"])["up0"]["egress"] == ["path_pin"]
    assert hooks_state(ns, ["up0"]) == {"up0": {"clsact": True, "egress": [], "xdp": []}}


def test_second_agent_on_the_same_interfaces_is_refused(twovtep2):
    first = dataplane(twovtep2)
    second = dataplane(twovtep2, vxlan_devices=[], uplinks=["up1"], count_xdp=[], count_tc=[])
    with first:
        with pytest.raises(DataPlaneError, match=rf"interface up1 is already managed by "
                                                 rf"another qpagent \(pid {os.getpid()}\)"):
            second.attach()
        # The refused one touched nothing: the first is whole.
        assert hooks_state(twovtep2.a.vtep_ns, ["up1"])["up1"]["egress"] == \
            ["flow_stats_tc", "path_pin"]
    with second:  # free again once the first is gone
        assert hooks_state(twovtep2.a.vtep_ns, ["up1"])["up1"]["egress"] == ["path_pin"]


def test_missing_interface_is_named_and_nothing_is_left(twovtep2):
    ns = twovtep2.a.vtep_ns
    dp = dataplane(twovtep2, uplinks=["up0", "up7"])
    with pytest.raises(DataPlaneError, match=f"interface up7 not found in network namespace {ns}"):
        dp.attach()
    assert hooks_state(ns, [VXLAN_DEV, "up0"]) == {
        VXLAN_DEV: {"clsact": False, "egress": [], "xdp": []},
        "up0": {"clsact": False, "egress": [], "xdp": []}}
    with dataplane(twovtep2, uplinks=["up0"]):  # and the locks were released
        pass


def test_a_non_vxlan_device_is_refused(twovtep2):
    dp = dataplane(twovtep2, vxlan_devices=["up0"], uplinks=[], count_xdp=[], count_tc=[])
    with pytest.raises(DataPlaneError, match="up0 is not a VXLAN device"):
        dp.attach()


def test_recreated_uplink_is_reattached_and_a_missing_one_reported(twovtep2):
    a, b = twovtep2.a, twovtep2.b
    dp = dataplane(twovtep2)
    with dp:
        assert dp.reattach_changed() == []
        old_index = int(sh(f"ip netns exec {a.vtep_ns} cat /sys/class/net/up1/ifindex").stdout)
        sh(f"ip -n {a.vtep_ns} link del up1")
        assert dp.reattach_changed() == ["up1 missing"]
        assert dp.reattach_changed() == []   # reported once
        sh(f"ip -n {a.vtep_ns} link add up1 type veth peer name up1 netns {b.vtep_ns}")
        sh(f"ip -n {a.vtep_ns} link set up1 up")
        new_index = int(sh(f"ip netns exec {a.vtep_ns} cat /sys/class/net/up1/ifindex").stdout)
        assert new_index != old_index
        assert dp.reattach_changed() == [f"up1 re-attached (ifindex None -> {new_index})"]
        assert hooks_state(a.vtep_ns, ["up1"])["up1"] == {
            "clsact": True, "egress": ["flow_stats_tc", "path_pin"], "xdp": ["xdpgeneric"]}
        # Deleted and recreated between two checks: seen by the new ifindex.
        sh(f"ip -n {a.vtep_ns} link del up0")
        sh(f"ip -n {a.vtep_ns} link add up0 type veth peer name up0 netns {b.vtep_ns}")
        newer = int(sh(f"ip netns exec {a.vtep_ns} cat /sys/class/net/up0/ifindex").stdout)
        changes = dp.reattach_changed()
        assert len(changes) == 1 and changes[0].startswith("up0 re-attached (ifindex ")
        assert changes[0].endswith(f"-> {newer})")
        assert {r["ifindex"] for r in dp.programs() if r["interface"] == "up0"} == {newer}
    assert hooks_state(a.vtep_ns, ["up0", "up1", VXLAN_DEV]) == {
        dev: {"clsact": False, "egress": [], "xdp": []} for dev in ("up0", "up1", VXLAN_DEV)}


def test_bad_xdp_mode_is_a_clear_error():
    with pytest.raises(DataPlaneError, match="xdp_mode must be one of"):
        DataPlane(uplinks=["up0"], xdp_mode="turbo")
