"""Generated configs: FRR per router, the agent's config, the ContainerLab export."""
import subprocess
import sys

import pytest
import yaml

from qplab.agents import agent_config, write_config
from qplab.context import LabContext
from qplab.export import containerlab
from qplab.frrconf import render_frr_conf
from qplab.plan import build_plan
from qplab.topology import load_topology


@pytest.fixture(scope="module")
def plan():
    return build_plan(load_topology())


def test_leaf_config_snapshot(plan):
    assert render_frr_conf(plan, plan.routers["dc1-leaf1"]) == """\
frr version 8.4
frr defaults datacenter
hostname dc1-leaf1
service integrated-vtysh-config
!
bfd
 profile lab
  transmit-interval 100
  receive-interval 100
  detect-multiplier 3
 exit
exit
!
router bgp 65110
 bgp router-id 10.255.0.3
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 bgp bestpath as-path multipath-relax
 neighbor fabric peer-group
 neighbor fabric bfd
 neighbor fabric bfd profile lab
 neighbor fabric timers connect 2
 neighbor 10.0.0.1 remote-as 65100
 neighbor 10.0.0.1 peer-group fabric
 neighbor 10.0.0.1 description dc1-spine1 via eth1
 neighbor 10.0.0.3 remote-as 65100
 neighbor 10.0.0.3 peer-group fabric
 neighbor 10.0.0.3 description dc1-spine2 via eth2
 !
 address-family ipv4 unicast
  network 10.255.0.3/32
  neighbor fabric activate
  maximum-paths 16
 exit-address-family
 !
 address-family l2vpn evpn
  neighbor fabric activate
  advertise-all-vni
  vni 100
   route-target import 65000:100
   route-target export 65000:100
  exit-vni
 exit-address-family
exit
!
end
"""


def test_border_peers_over_fabric_and_wan_without_vnis(plan):
    conf = render_frr_conf(plan, plan.routers["dc1-border1"])
    neighbors = [l for l in conf.splitlines() if l.startswith(" neighbor 10.") and "remote-as" in l]
    assert neighbors == [" neighbor 10.0.0.9 remote-as 65100", " neighbor 10.0.0.11 remote-as 65100",
                         " neighbor 10.0.0.33 remote-as 65201", " neighbor 10.0.0.35 remote-as 65201"]
    assert "router bgp 65101" in conf
    assert "advertise-all-vni" not in conf and "vni 100" not in conf
    assert "  neighbor fabric activate" in conf.split("address-family l2vpn evpn")[1]


def test_every_session_has_bfd_and_ecmp(plan):
    for r in plan.routers.values():
        conf = render_frr_conf(plan, r)
        peers = conf.count("peer-group fabric")
        assert peers == len(r.interfaces) > 0
        for needle in (" neighbor fabric bfd profile lab", "  maximum-paths 16",
                       " bgp bestpath as-path multipath-relax", " no bgp ebgp-requires-policy"):
            assert needle in conf, (r.name, needle)


def test_agent_config_is_accepted_by_qpagent(plan, tmp_path):
    config = agent_config(plan, "dc2-leaf2", LabContext())
    path = tmp_path / "agent.toml"
    # what the agent will read is what the lab meant
    assert write_config(config, path).to_dict() == {
        "agent": {"metrics_address": "172.31.255.5:9464",
                  "control_socket": "/run/qpagent/qpl-dc2-leaf2.sock", "top_qps": 20,
                  "poll_interval": 0.2, "bpf_stats": True, "node": "qpl-dc2-leaf2",
                  "realtime_priority": 10},
        "steer": {"vxlan_devices": ("vxlan100",), "uplinks": ("eth1", "eth2"),
                  "source_ports": (49152, 65535), "ports_per_path": 16, "rebalance": True,
                  "end_to_end": True,
                  # both ends of the four 1000 Mbit/s WAN links: equal weights
                  "capacities": {f"10.0.0.{i}": 1000.0 for i in range(32, 40)}},
        "count": {"xdp": ("eth1", "eth2"), "tc_egress": ("eth1", "eth2"), "xdp_mode": "generic"},
        "frr": {"enabled": True, "namespace": "qpl-dc2-leaf2", "vtysh": "vtysh"},
        "liveness": {"enabled": False, "interval_ms": 10, "misses": 3, "rtt_margin_ms": 10,
                     "budget_pps": 1000,
                     "hold_down_ms": 1000, "dscp": 48},
        "repair": {"retransmit": False, "nak": False, "stall_ms": 0, "holddown_ms": 100,
                   "go_back": True}}
    # and the agent's own command accepts the file
    res = subprocess.run([sys.executable, "-m", "qpagent.cli", "check-config", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_containerlab_export(tmp_path, plan):
    files = containerlab(load_topology(), tmp_path)
    doc = yaml.safe_load((tmp_path / files[0]).read_text())
    nodes = doc["topology"]["nodes"]
    assert len(nodes) == 20
    assert nodes["dc1-leaf1"]["binds"][0] == "configs/dc1-leaf1/frr.conf:/etc/frr/frr.conf"
    assert (tmp_path / "configs/dc1-leaf1/frr.conf").read_text() == \
        render_frr_conf(plan, plan.routers["dc1-leaf1"])
    assert any("vxlan100" in c and "srcport 49152 65535 nolearning" in c
               for c in nodes["dc1-leaf1"]["exec"])
    endpoints = {tuple(l["endpoints"]) for l in doc["topology"]["links"]}
    assert ("dc1-border1:wan1", "dc2-border1:wan1") in endpoints
    assert ("dc1-h1:eth0", "dc1-leaf1:h-h1") in endpoints
    assert len(endpoints) == 16 + 4 + 8
