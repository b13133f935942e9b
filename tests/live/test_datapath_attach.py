"""DataPlane attaches the real programs where the config says, detaches
without a trace, refuses a second agent and follows recreated interfaces;
its programs and maps are pinned, so a release keeps them steering, a new
DataPlane adopts them without compiling, a changed program replaces them in
place, and purge leaves nothing (hooks, clsact, pins, record)."""

import json
import os
import time
import uuid

import pytest

from qpagent import pins
from qpagent.datapath import ADOPTED, COMPILED, REPLACED, DataPlane, DataPlaneError
from twovtep import VXLAN_DEV, sh


KERNEL_FILES = {"maps.debug", "progs.debug"}


@pytest.fixture
def pin_base():
    """A pin base of this test's own (bpffs mounted on first use), emptied
    and unmounted afterwards whatever happens."""
    base = f"/run/qt-pins-{uuid.uuid4().hex[:8]}"
    try:
        yield base
    finally:
        pins.remove_base(base)


def pinned_files(base: str) -> list[str]:
    """Everything under the bpffs of a pin base, relative paths (beside the
    kernel's own maps.debug and progs.debug at its top)."""
    root = pins.PinStore("any", base).root(create=False)
    if root is None:
        return []
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files
                  if d != root or f not in KERNEL_FILES) + \
        sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
               and not os.listdir(os.path.join(root, d)))


def hook_ids(ns: str, devices) -> dict:
    """Program ids at each hook, as iproute2 reports them (JSON)."""
    out = {}
    for dev in devices:
        filters = []
        for hook in ("egress", "ingress"):
            shown = sh(f"tc -n {ns} -j filter show dev {dev} {hook}", check=False).stdout.strip()
            filters += json.loads(shown or "[]")
        link = json.loads(sh(f"ip -n {ns} -j -d link show dev {dev}").stdout)[0]
        out[dev] = {
            "tc": sorted(f["options"]["prog"]["id"] for f in filters if "options" in f),
            "xdp": [link["xdp"]["prog"]["id"]] if "xdp" in link else [],
        }
    return out


def hooks_state(ns: str, devices) -> dict:
    """What tc and XDP show per interface, as iproute2 prints it."""
    state = {}
    for dev in devices:
        qdiscs = sh(f"tc -n {ns} qdisc show dev {dev}").stdout
        names = {}
        for hook in ("egress", "ingress"):
            shown = sh(f"tc -n {ns} filter show dev {dev} {hook}", check=False).stdout
            names[hook] = sorted(line.split(" name ")[1].split()[0]
                                 for line in shown.splitlines() if " name " in line)
        link = sh(f"ip -n {ns} -d link show dev {dev}").stdout
        state[dev] = {
            "clsact": "clsact" in qdiscs,
            "egress": names["egress"], "ingress": names["ingress"],
            "xdp": [w for w in link.split() if w.startswith("xdp")][:1],
        }
    return state


def dataplane(topo, pin_base, **over):
    side = topo.a
    kw = dict(vxlan_devices=[VXLAN_DEV], uplinks=side.uplinks, count_xdp=side.uplinks,
              count_tc=side.uplinks, xdp_mode="generic", netns=side.vtep_ns,
              node=side.vtep_ns, pin_base=pin_base)
    kw.update(over)
    return DataPlane(**kw)


def test_attach_then_detach_leaves_nothing(twovtep, pin_base):
    ns, devices = twovtep.a.vtep_ns, [VXLAN_DEV, *twovtep.a.uplinks]
    before = hooks_state(ns, devices)
    dp = dataplane(twovtep, pin_base)
    try:
        dp.attach()
        attached = hooks_state(ns, devices)
        expected = {VXLAN_DEV: {"clsact": True, "egress": ["qp_steer"], "ingress": [],
                                "xdp": []}}
        for up in twovtep.a.uplinks:
            expected[up] = {"clsact": True, "egress": ["flow_stats_tc", "path_pin", "probe_sent"],
                            "ingress": ["path_probe"],
                            "xdp": ["xdpgeneric"]}
        assert attached == expected
        rows = {(r["name"], r["interface"]): r for r in dp.programs()}
        assert set(rows) == {("qp_steer", VXLAN_DEV)} | {
            (prog, up) for up in twovtep.a.uplinks
            for prog in ("probe_sent", "path_pin", "path_probe", "flow_stats_tc", "flow_stats_xdp")}
        assert all(r["prog_id"] > 0 and r["ifindex"] > 0 for r in rows.values())
        # The tables the agent and the metrics read are reachable.
        for obj, names in (("steer", ("qp_table", "mac_vtep", "path_table", "steer_events",
                                      "parse_stats")),
                           ("pin", ("pin_events", "pin_uplinks", "parse_stats")),
                           ("flows", ("flow_table", "parse_stats"))):
            for name in names:
                assert dp.table(obj, name) is not None, (obj, name)
        assert pinned_files(pin_base)
    finally:
        dp.detach()
    assert hooks_state(ns, devices) == before
    assert pinned_files(pin_base) == []


def test_preexisting_clsact_stays_our_filters_go(twovtep2, pin_base):
    ns = twovtep2.a.vtep_ns
    sh(f"tc -n {ns} qdisc add dev up0 clsact")
    dp = dataplane(twovtep2, pin_base, vxlan_devices=[], uplinks=["up0"], count_xdp=[], count_tc=[])
    with dp:
        assert hooks_state(ns, ["up0"])["up0"]["egress"] == ["path_pin", "probe_sent"]
    assert hooks_state(ns, ["up0"]) == {"up0": {"clsact": True, "egress": [], "ingress": [], "xdp": []}}


def test_second_agent_on_the_same_interfaces_is_refused(twovtep2, pin_base):
    first = dataplane(twovtep2, pin_base)
    second = dataplane(twovtep2, pin_base, vxlan_devices=[], uplinks=["up1"], count_xdp=[], count_tc=[])
    with first:
        with pytest.raises(DataPlaneError, match=rf"interface up1 is already managed by "
                                                 rf"another qpagent \(pid {os.getpid()}\)"):
            second.attach()
        # The refused one touched nothing: the first is whole.
        assert hooks_state(twovtep2.a.vtep_ns, ["up1"])["up1"]["egress"] == \
            ["flow_stats_tc", "path_pin", "probe_sent"]
    with second:  # free again once the first is gone
        assert hooks_state(twovtep2.a.vtep_ns, ["up1"])["up1"]["egress"] == \
            ["path_pin", "probe_sent"]


def test_missing_interface_is_named_and_nothing_is_left(twovtep2, pin_base):
    ns = twovtep2.a.vtep_ns
    dp = dataplane(twovtep2, pin_base, uplinks=["up0", "up7"])
    with pytest.raises(DataPlaneError, match=f"interface up7 not found in network namespace {ns}"):
        dp.attach()
    assert hooks_state(ns, [VXLAN_DEV, "up0"]) == {
        VXLAN_DEV: {"clsact": False, "egress": [], "ingress": [], "xdp": []},
        "up0": {"clsact": False, "egress": [], "ingress": [], "xdp": []}}
    with dataplane(twovtep2, pin_base, uplinks=["up0"]):  # and the locks were released
        pass


def test_a_non_vxlan_device_is_refused(twovtep2, pin_base):
    dp = dataplane(twovtep2, pin_base, vxlan_devices=["up0"], uplinks=[], count_xdp=[], count_tc=[])
    with pytest.raises(DataPlaneError, match="up0 is not a VXLAN device"):
        dp.attach()


def test_recreated_uplink_is_reattached_and_a_missing_one_reported(twovtep2, pin_base):
    a, b = twovtep2.a, twovtep2.b
    dp = dataplane(twovtep2, pin_base)
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
            "clsact": True, "egress": ["flow_stats_tc", "path_pin", "probe_sent"],
            "ingress": ["path_probe"], "xdp": ["xdpgeneric"]}
        # Deleted and recreated between two checks: seen by the new ifindex.
        sh(f"ip -n {a.vtep_ns} link del up0")
        sh(f"ip -n {a.vtep_ns} link add up0 type veth peer name up0 netns {b.vtep_ns}")
        newer = int(sh(f"ip netns exec {a.vtep_ns} cat /sys/class/net/up0/ifindex").stdout)
        changes = dp.reattach_changed()
        assert len(changes) == 1 and changes[0].startswith("up0 re-attached (ifindex ")
        assert changes[0].endswith(f"-> {newer})")
        assert {r["ifindex"] for r in dp.programs() if r["interface"] == "up0"} == {newer}
    assert hooks_state(a.vtep_ns, ["up0", "up1", VXLAN_DEV]) == {
        dev: {"clsact": False, "egress": [], "ingress": [], "xdp": []} for dev in ("up0", "up1", VXLAN_DEV)}


def test_a_released_data_plane_keeps_steering_and_is_adopted_without_compiling(twovtep, pin_base):
    ns, devices = twovtep.a.vtep_ns, [VXLAN_DEV, *twovtep.a.uplinks]
    before = hooks_state(ns, devices)
    first = dataplane(twovtep, pin_base)
    second = dataplane(twovtep, pin_base)
    try:
        t0 = time.monotonic()
        assert first.attach() == COMPILED and not first.adopted
        compile_s = time.monotonic() - t0
        attached, ids = hooks_state(ns, devices), hook_ids(ns, devices)
        key = first.table("steer", "mac_gen").Key(0)
        first.table("steer", "mac_gen")[key] = first.table("steer", "mac_gen").Leaf(41)
        first.release()
        # Nothing of the data plane went with the process's descriptors.
        assert (hooks_state(ns, devices), hook_ids(ns, devices)) == (attached, ids)
        assert pinned_files(pin_base)

        t0 = time.monotonic()
        assert second.attach() == ADOPTED and second.adopted
        adopt_s = time.monotonic() - t0
        assert (hooks_state(ns, devices), hook_ids(ns, devices)) == (attached, ids)
        assert {r["prog_id"] for r in second.programs()} == \
            {i for dev in ids.values() for i in dev["tc"] + dev["xdp"]}
        assert second.table("steer", "mac_gen")[key].value == 41   # the same maps
        print(f"\nstart: compiling {compile_s:.2f} s, adopting {adopt_s:.3f} s")
    finally:
        first.release()
        second.release()
        dataplane(twovtep, pin_base).purge()   # as `qpagent purge` does, from scratch
    assert hooks_state(ns, devices) == before
    assert pinned_files(pin_base) == []


def test_adoption_reattaches_a_hook_that_went_missing(twovtep2, pin_base):
    ns = twovtep2.a.vtep_ns
    first = dataplane(twovtep2, pin_base)
    first.attach()
    ids = hook_ids(ns, ["up0"])
    first.release()
    sh(f"tc -n {ns} filter del dev up0 egress prio {0x7f02}")
    sh(f"ip -n {ns} link set dev up0 xdpgeneric off")
    second = dataplane(twovtep2, pin_base)
    try:
        assert second.attach() == ADOPTED
        assert hook_ids(ns, ["up0"]) == ids
    finally:
        second.purge()


def test_an_uplink_taken_out_of_the_config_loses_its_hooks_on_adoption(twovtep2, pin_base):
    ns = twovtep2.a.vtep_ns
    first = dataplane(twovtep2, pin_base)
    first.attach()
    first.release()
    second = dataplane(twovtep2, pin_base, uplinks=["up0"], count_xdp=["up0"], count_tc=["up0"])
    try:
        assert second.attach() == ADOPTED
        assert hooks_state(ns, ["up1"]) == {"up1": {"clsact": False, "egress": [], "ingress": [], "xdp": []}}
        assert hooks_state(ns, ["up0"])["up0"]["egress"] == \
            ["flow_stats_tc", "path_pin", "probe_sent"]
    finally:
        second.purge()


def test_a_changed_program_replaces_every_hook_in_place(twovtep2, pin_base):
    ns, devices = twovtep2.a.vtep_ns, [VXLAN_DEV, *twovtep2.a.uplinks]
    before = hooks_state(ns, devices)
    first = dataplane(twovtep2, pin_base)
    first.attach()
    old_digest, old_ids, attached = first.digest, hook_ids(ns, devices), hooks_state(ns, devices)
    first.release()
    second = dataplane(twovtep2, pin_base, cflags=("-DQPAGENT_UPGRADE_PROBE=1",))
    try:
        assert second.attach() == REPLACED and not second.adopted
        assert second.digest != old_digest
        new_ids = hook_ids(ns, devices)
        assert hooks_state(ns, devices) == attached   # same hooks, same priorities
        for dev in devices:   # every hook runs a new program, none runs an old one
            assert len(new_ids[dev]["tc"]) == len(old_ids[dev]["tc"])
            assert not set(new_ids[dev]["tc"] + new_ids[dev]["xdp"]) & \
                set(old_ids[dev]["tc"] + old_ids[dev]["xdp"])
        assert {f.split("/")[1] for f in pinned_files(pin_base)} == {second.digest}
    finally:
        second.purge()
    assert hooks_state(ns, devices) == before
    assert pinned_files(pin_base) == []


def test_purge_needs_no_running_agent_and_refuses_a_running_one(twovtep2, pin_base):
    ns, devices = twovtep2.a.vtep_ns, [VXLAN_DEV, *twovtep2.a.uplinks]
    before = hooks_state(ns, devices)
    running = dataplane(twovtep2, pin_base)
    running.attach()
    with pytest.raises(DataPlaneError, match="already managed by another qpagent"):
        dataplane(twovtep2, pin_base).purge()
    assert pinned_files(pin_base)            # the refused purge touched nothing
    running.release()
    dataplane(twovtep2, pin_base).purge()    # a fresh process, nothing attached
    assert hooks_state(ns, devices) == before
    assert pinned_files(pin_base) == []
    assert not os.path.exists(pins.PinStore(ns, pin_base).record_path)


def test_a_set_left_by_a_namespace_that_is_gone_is_not_adopted(twovtep2, pin_base):
    """Same node name, same programs, but another network namespace (a lab
    torn down and built again): its maps describe the old topology."""
    other = dataplane(twovtep2, pin_base, netns=twovtep2.b.vtep_ns, uplinks=twovtep2.b.uplinks,
                      count_xdp=[], count_tc=[], node=twovtep2.a.vtep_ns)
    other.attach()
    other.release()
    dp = dataplane(twovtep2, pin_base)
    try:
        assert dp.attach() == COMPILED
    finally:
        dp.purge()   # vtepB's hooks go with its namespace


def test_bad_xdp_mode_is_a_clear_error():
    with pytest.raises(DataPlaneError, match="xdp_mode must be one of"):
        DataPlane(uplinks=["up0"], xdp_mode="turbo")
