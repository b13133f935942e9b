"""Topology validation (each bad input its own message) and the build plan."""
import copy
import ipaddress

import pytest
import yaml

from qplab.plan import build_plan
from qplab.topology import DEFAULT_TOPOLOGY, TopologyError, load_topology, parse_topology


@pytest.fixture
def raw():
    return yaml.safe_load(DEFAULT_TOPOLOGY.read_text())


def problems_of(data) -> list[str]:
    with pytest.raises(TopologyError) as exc:
        parse_topology(data)
    return exc.value.problems


def test_default_topology_shape():
    topo = load_topology()
    assert [dc.name for dc in topo.dcs] == ["dc1", "dc2"]
    for dc in topo.dcs:
        assert len(dc.spines) == 2 and len(dc.borders) == 2 and len(dc.leaves) == 2
        assert all(len(leaf.hosts) == 2 for leaf in dc.leaves)
    assert {(w.a, w.b) for w in topo.wan} == {
        ("dc1-border1", "dc2-border1"), ("dc1-border1", "dc2-border2"),
        ("dc1-border2", "dc2-border1"), ("dc1-border2", "dc2-border2")}
    assert {w.props.delay_ms for w in topo.wan} == {10.0}
    assert [v.vni for v in topo.vnis] == [100]
    assert {h.dc for h in topo.hosts} == {"dc1", "dc2"}   # the VNI is stretched
    assert (topo.bfd.interval_ms, topo.bfd.multiplier) == (100, 3)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t["wan"].append({"a": "dc1-border1", "b": "dc2-border9"}),
     "wan link 5: unknown node 'dc2-border9' (border routers: dc1-border1, dc1-border2, "
     "dc2-border1, dc2-border2)"),
    (lambda t: t["wan"].append({"a": "dc1-leaf1", "b": "dc2-border1"}),
     "wan link 5: 'dc1-leaf1' is a leaf; WAN links join border routers"),
    (lambda t: t["wan"].append({"a": "dc1-border1", "b": "dc1-border2"}),
     "wan link 5: dc1-border1 and dc1-border2 are in the same data center; "
     "WAN links join different data centers"),
    (lambda t: t["wan"].append({"a": "dc2-border1", "b": "dc1-border1"}),
     "wan link 5: dc2-border1 <-> dc1-border1 listed twice"),
    (lambda t: t["wan"][0].update(delay_ms=-5),
     "wan link dc1-border1 <-> dc2-border1: delay_ms=-5 out of range [0, 10000]"),
    (lambda t: t["wan"][1].update(loss_pct=150),
     "wan link dc1-border1 <-> dc2-border2: loss_pct=150 out of range [0, 100]"),
    (lambda t: t["wan"][2].update(rate_mbit="fast"),
     "wan link dc1-border2 <-> dc2-border1: rate_mbit: expected a number, got 'fast'"),
    (lambda t: t["wan"][0].update(dealy_ms=5),
     "wan link 1: unknown key 'dealy_ms' (allowed: a, b, delay_ms, jitter_ms, loss_pct, rate_mbit)"),
    (lambda t: t["wan_defaults"].update(jitter_ms=20000),
     "wan_defaults: jitter_ms=20000 out of range [0, 10000]"),
    (lambda t: t["dcs"][1]["leaves"][0]["hosts"][0].update(address="10.100.0.11/24"),
     "duplicate address 10.100.0.11: dc1-h1 and dc2-h1"),
    (lambda t: t["dcs"][0]["leaves"][0]["hosts"][0].update(vni=200),
     "leaf dc1-leaf1.hosts[0]: VNI 200 is not declared in 'vnis' (declared: 100)"),
    (lambda t: t["dcs"][0]["leaves"][0]["hosts"][0].update(address="10.1.0.11/24"),
     "leaf dc1-leaf1.hosts[0].address: 10.1.0.11 is outside VNI 100's subnet 10.100.0.0/24"),
    (lambda t: t["dcs"][0]["leaves"][1]["hosts"][0].update(name="h1"),
     "duplicate node name 'dc1-h1'"),
    (lambda t: t["dcs"].append(copy.deepcopy(t["dcs"][0])),
     "duplicate data center name 'dc1'"),
    (lambda t: t["bfd"].update(interval_ms=5),
     "bfd.interval_ms=5 out of range [10, 60000]"),
    (lambda t: t["vnis"].append({"vni": 100, "subnet": "10.101.0.0/24"}),
     "vnis[1]: VNI 100 listed twice"),
    (lambda t: t["addressing"].update(links="10.255.0.0/24"),
     "addressing: loopbacks 10.255.0.0/16 overlaps links 10.255.0.0/24"),
    (lambda t: t["dcs"][0].update(spines=0),
     "dc dc1.spines=0 out of range [1, 16]"),
    (lambda t: t["dcs"][0]["leaves"][0].update(name="Leaf_1"),
     "dc dc1.leaves[0].name: bad name 'Leaf_1' (lower-case letters and digits, starting with a letter, "
     "at most 12 characters)"),
])
def test_each_bad_input_has_its_own_message(raw, mutate, message):
    bad = copy.deepcopy(raw)
    mutate(bad)
    assert problems_of(bad) == [message]


def test_all_problems_are_reported_at_once(raw):
    bad = copy.deepcopy(raw)
    bad["wan"][0]["delay_ms"] = -1
    bad["wan"].append({"a": "nowhere", "b": "dc2-border1"})
    assert problems_of(bad) == [
        "wan link dc1-border1 <-> dc2-border1: delay_ms=-1 out of range [0, 10000]",
        "wan link 5: unknown node 'nowhere' (border routers: dc1-border1, dc1-border2, "
        "dc2-border1, dc2-border2)",
    ]


def test_unreadable_file_and_bad_yaml(tmp_path):
    with pytest.raises(TopologyError, match=r"cannot read topology file .*missing.yaml"):
        load_topology(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("dcs: [unclosed\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(p)
    p.write_text("")
    with pytest.raises(TopologyError, match="topology: empty"):
        load_topology(p)


def test_plan_addresses_are_unique_and_links_are_31s():
    plan = build_plan(load_topology())
    addrs = [i.address.ip for r in plan.routers.values() for i in r.interfaces]
    addrs += [r.loopback for r in plan.routers.values()]
    addrs += [h.address.ip for h in plan.hosts.values()]
    addrs += [r.mgmt.ip for r in plan.leaves()] + [h.mgmt.ip for h in plan.hosts.values()]
    assert len(addrs) == len(set(addrs))
    for r in plan.routers.values():
        for i in r.interfaces:
            peer = plan.routers[i.peer_node]
            back = [j for j in peer.interfaces if j.peer_address == i.address.ip]
            assert len(back) == 1 and back[0].address.ip == i.peer_address
            assert i.address.network.prefixlen == 31


def test_plan_counts_and_leaf_layout():
    plan = build_plan(load_topology())
    assert len(plan.routers) == 12 and len(plan.hosts) == 8 and len(plan.wans) == 4
    assert len(plan.nodes) == 24
    leaf = plan.routers["dc1-leaf1"]
    assert [(i.name, i.peer_node, i.kind) for i in leaf.interfaces] == [
        ("eth1", "dc1-spine1", "uplink"), ("eth2", "dc1-spine2", "uplink")]
    assert leaf.vnis == [100]
    assert leaf.host_ports == {"h-h1": "dc1-h1", "h-h2": "dc1-h2"}
    border = plan.routers["dc1-border1"]
    assert [(i.name, i.peer_node, i.kind) for i in border.interfaces] == [
        ("eth1", "dc1-spine1", "uplink"), ("eth2", "dc1-spine2", "uplink"),
        ("wan1", "dc2-border1", "wan"), ("wan2", "dc2-border2", "wan")]
    # every leaf learns every other leaf as a remote VTEP of the stretched VNI
    others = {str(r.loopback) for r in plan.leaves() if r.name != "dc1-leaf1"}
    assert set(plan.remote_vteps("dc1-leaf1", 100)) == others and len(others) == 3
    assert plan.hosts["dc2-h1"].mac == "02:00:0a:64:00:15"
    assert plan.hosts["dc2-h1"].address == ipaddress.IPv4Interface("10.100.0.21/24")


def test_plan_is_deterministic():
    a, b = build_plan(load_topology()), build_plan(load_topology())
    assert [(r.name, str(r.loopback), [str(i.address) for i in r.interfaces]) for r in a.routers.values()] == \
           [(r.name, str(r.loopback), [str(i.address) for i in r.interfaces]) for r in b.routers.values()]
