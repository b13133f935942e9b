"""Topology validation (each bad input its own message) and the build plan."""
import copy
import ipaddress

import pytest
import yaml

from qplab.context import LabContext
from qplab.plan import build_plan
from qplab.state import LabState
from qplab.agents import agent_config, wan_capacities
from qplab.topology import (DEFAULT_TOPOLOGY, TOPOLOGIES_DIR, TopologyError, load_topology,
                            parse_topology)


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
    (lambda t: t["dcs"][0]["leaves"][0]["hosts"][0].update(agent="yes"),
     "leaf dc1-leaf1.hosts[0].agent: expected true or false, got 'yes'"),
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


def test_lab_state_from_the_plan_survives_a_save_and_load(tmp_path):
    ctx = LabContext("qpx-", tmp_path / "run")
    state = LabState.from_plan(build_plan(load_topology()), ctx)
    leaf = state.routers["dc1-leaf1"]
    assert (leaf.ns, leaf.role, leaf.loopback, leaf.vnis) == (
        "qpx-dc1-leaf1", "leaf", "10.255.0.3", {"100": ["10.255.0.4", "10.255.0.9", "10.255.0.10"]})
    assert [(i.name, i.peer_node, i.kind) for i in leaf.interfaces] == [
        ("eth1", "dc1-spine1", "uplink"), ("eth2", "dc1-spine2", "uplink")]
    host = state.hosts["dc2-h1"]
    assert (host.ip, host.leaf, host.leaf_port, host.dc) == ("10.100.0.21", "dc2-leaf1", "h-h1", "dc2")
    w = state.wans["wan-dc1-border1-dc2-border2"]
    assert (w.a_dc, w.b_dc, w.a_if, w.b_if, w.props.delay_ms) == ("dc1", "dc2", "wan2", "wan1", 10.0)
    assert LabState.load(ctx) is None
    state.with_wan_props(w.name, delay_ms=25.0)
    state.links_down.append(["dc1-leaf1", "dc1-spine1"])
    state.save(ctx)
    assert LabState.load(ctx) == state


def test_status_problems_name_each_gap_of_a_lab_state(tmp_path):
    from qplab import status
    from qplab.state import AgentState
    state = LabState.from_plan(build_plan(load_topology()), LabContext("qpx-", tmp_path))
    routers = {}
    for name, r in state.routers.items():
        routers[name] = {"errors": [], "bgp": [{"peer": i.peer_address, "afi": afi, "state": "Established",
                                                "description": "", "uptime": "", "prefixes": 1}
                                               for i in r.interfaces for afi in ("ipv4", "evpn")],
                         "bfd": [{"peer": i.peer_address, "interface": i.name, "status": "up",
                                  "diagnostic": "ok", "interval_ms": 100, "multiplier": 3}
                                 for i in r.interfaces],
                         "vnis": [{"vni": int(v), "vtep": r.loopback, "vxlan": f"vxlan{v}",
                                   "remote_vteps": remote, "macs": 0} for v, remote in r.vnis.items()]}
    st = {"name": state.name, "routers": routers, "wans": {}, "links_down": [],
          "agents": {"dc1-leaf1": vars(AgentState("dc1-leaf1", 1, "c", "/s.sock", "http://m", True))}}
    assert status.problems(state, st) == []
    routers["dc1-border1"]["bfd"][0]["status"] = "down"
    routers["dc2-leaf2"]["vnis"][0]["remote_vteps"] = routers["dc2-leaf2"]["vnis"][0]["remote_vteps"][1:]
    assert status.problems(state, st) == [
        "dc1-border1: BFD to dc1-spine1 (10.0.0.9) is down",
        "dc2-leaf2: VNI 100 lacks remote VTEPs 10.255.0.3"]
    assert "  dc1-leaf1  running  http://m  /s.sock" in status.render(state, st)


def test_prometheus_config_from_the_lab_state(tmp_path):
    """Every running agent and every router's FRR exporter is a target, named
    by its node; Prometheus listens on the top of the management subnet."""
    from qplab import monitor
    from qplab.state import AgentState
    ctx = LabContext("qpx-", tmp_path / "run")
    state = LabState.from_plan(build_plan(load_topology()), ctx)
    state.agents = {"dc1-leaf1": AgentState("dc1-leaf1", 1, "c", "s", "http://172.31.255.2:9464/metrics", True),
                    "dc1-leaf2": AgentState("dc1-leaf2", 2, "c", "s", "http://172.31.255.3:9464/metrics",
                                            False, "exited with 1")}
    mon = monitor.plan_monitor(state, ctx)
    assert (mon.ns, mon.address, mon.prometheus) == ("qpx-monitor", "172.31.255.254/24",
                                                     "http://172.31.255.254:9090")
    config = monitor.prometheus_config(state, mon)
    agents, frr = config["scrape_configs"]
    assert agents == {"job_name": "qpagent", "honor_labels": False, "static_configs": [
        {"targets": ["172.31.255.2:9464"], "labels": {"node": "dc1-leaf1", "role": "leaf", "dc": "dc1"}}]}
    assert frr["job_name"] == "frr"
    assert [(c["targets"], c["labels"]["node"]) for c in frr["static_configs"]][:2] == [
        (["127.0.0.1:9342"], "dc1-spine1"), (["127.0.0.1:9343"], "dc1-spine2")]
    assert len(frr["static_configs"]) == len(state.routers) == 12
    # the exporter reads that router's FRR path space, BFD through vtysh -N
    cmd = monitor.exporter_command("qpx-dc1-spine1", "127.0.0.1:9342")
    assert "--frr.socket.dir-path=/var/run/frr/qpx-dc1-spine1" in cmd
    assert "--frr.vtysh.options=--pathspace=qpx-dc1-spine1" in cmd
    # and the lab's state keeps it across a save and load
    state.monitor = mon
    state.save(ctx)
    assert LabState.load(ctx) == state


def test_hosts_with_agent_true_get_a_host_mode_agent(raw, tmp_path):
    """`agent: true` under a host: a host-mode qpagent counting on its NIC,
    metrics on its management address, scraped beside the leaves' agents."""
    from qpagent.config import load_config
    from qplab import agents, monitor
    from qplab.state import AgentState
    data = copy.deepcopy(raw)
    data["dcs"][0]["leaves"][0]["hosts"][0]["agent"] = True     # dc1-h1
    plan = build_plan(parse_topology(data))
    assert [h.name for h in plan.hosts.values() if h.agent] == ["dc1-h1"]
    nodes = agents.agent_nodes(plan)
    assert nodes[-1] == "dc1-h1" and nodes[:-1] == [r.name for r in plan.leaves()]

    ctx = LabContext("qpx-", tmp_path / "run")
    written = agents.write_config(agents.node_config(plan, "dc1-h1", ctx), tmp_path / "h1.toml")
    host = plan.hosts["dc1-h1"]
    assert (written.mode, written.steer.vxlan_devices, written.steer.uplinks) == ("host", (), ())
    assert (written.count.xdp, written.count.tc_egress) == (("eth0",), ("eth0",))
    assert (written.frr.enabled, written.liveness.enabled) == (False, False)
    assert written.agent.metrics_address == f"{host.mgmt.ip}:9464"
    # the data plane is keyed by the namespace name: unique across labs
    assert written.agent.node == "qpx-dc1-h1"
    assert load_config(tmp_path / "h1.toml").describe().startswith("host mode: counts flows on eth0")
    assert agents.node_config(plan, "dc1-leaf1", ctx).mode == "vtep"

    state = LabState.from_plan(plan, ctx)
    state.agents = {"dc1-h1": AgentState("dc1-h1", 1, "c", "s", f"http://{host.mgmt.ip}:9464/metrics",
                                         True)}
    scraped = monitor.prometheus_config(state, monitor.plan_monitor(state, ctx))["scrape_configs"][0]
    assert scraped["static_configs"] == [{"targets": [f"{host.mgmt.ip}:9464"],
                                          "labels": {"node": "dc1-h1", "role": "host", "dc": "dc1"}}]


def test_default_topology_runs_no_host_agents():
    assert not any(h.agent for h in build_plan(load_topology()).hosts.values())


# ---------------------------------------------------------------- three DCs

def test_shipped_topologies_load_by_name():
    assert load_topology("three-dc").source == str(TOPOLOGIES_DIR / "three-dc.yaml")
    assert load_topology("default").name == load_topology().name == "two-dc"
    with pytest.raises(TopologyError) as exc:
        load_topology("four-dc")
    assert exc.value.problems == ["no topology file 'four-dc' and no shipped topology of that "
                                  "name (shipped: default, three-dc)"]


def test_a_file_wins_over_a_shipped_name(tmp_path, monkeypatch, raw):
    raw["name"] = "mine"
    (tmp_path / "three-dc").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert load_topology("three-dc").name == "mine"


def test_three_dc_is_a_full_mesh_of_unequal_wan_links():
    topo = load_topology("three-dc")
    assert [dc.name for dc in topo.dcs] == ["dc1", "dc2", "dc3"]
    dc_of = {b: dc.name for dc in topo.dcs for b in dc.borders}
    pairs = {}
    for w in topo.wan:
        pairs.setdefault(frozenset((dc_of[w.a], dc_of[w.b])), []).append(
            (w.props.delay_ms, w.props.rate_mbit))
    assert pairs == {frozenset(("dc1", "dc2")): [(5.0, 300.0), (5.0, 100.0)],
                     frozenset(("dc1", "dc3")): [(20.0, 100.0), (20.0, 100.0)],
                     frozenset(("dc2", "dc3")): [(35.0, 100.0), (35.0, 100.0)]}
    plan = build_plan(topo)
    # small enough for two cores: 12 FRR routers, 6 delay lines
    assert (len(plan.routers), len(plan.hosts), len(plan.wans)) == (12, 6, 6)
    assert topo.addressing.management != load_topology().addressing.management


def test_the_lab_gives_agents_the_wan_capacities_by_hop_address():
    plan = build_plan(load_topology("three-dc"))
    caps = wan_capacities(plan)
    fast = next(w for w in plan.wans if w.name == "wan-dc1-border1-dc2-border1")
    # both ends: the far border of either direction names its inbound address
    assert caps[str(fast.a_address.ip)] == caps[str(fast.b_address.ip)] == 300.0
    assert sorted(caps.values()) == [100.0] * 10 + [300.0] * 2
    config = agent_config(plan, "dc1-leaf1", LabContext("qt-"))   # nothing is created
    assert config.steer.capacities == caps


def test_unlimited_wan_links_bound_nothing(raw):
    raw["wan"][0]["rate_mbit"] = 0
    plan = build_plan(parse_topology(raw))
    assert len(wan_capacities(plan)) == 2 * (len(plan.wans) - 1)
    assert str(plan.wans[0].a_address.ip) not in wan_capacities(plan)
