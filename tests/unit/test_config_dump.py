"""A Config written with to_toml reads back as the same Config: what the lab
relies on when it writes each agent's configuration."""
from dataclasses import replace

from qpagent.config import (AgentSettings, Config, CountSettings, FrrSettings, SteerSettings,
                            load_config, to_toml)


def round_trip(config: Config, tmp_path) -> Config:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(config))
    return replace(load_config(path), source="")


def test_defaults_round_trip(tmp_path):
    config = Config(steer=SteerSettings(vxlan_devices=("vxlan100",), uplinks=("eth1",)),
                    agent=AgentSettings(node="leaf1"))
    assert round_trip(config, tmp_path) == config


def test_every_setting_away_from_its_default_round_trips(tmp_path):
    config = Config(
        agent=AgentSettings(metrics_address="[::1]:9500", control_socket='/run/q "x"\\y.sock',
                            top_qps=5, poll_interval=0.05, bpf_stats=False, node="leaf-1.dc2"),
        steer=SteerSettings(vxlan_devices=("vxlan100", "vxlan200"), uplinks=("eth1", "eth2"),
                            source_ports=(40000, 40100), ports_per_path=8, rebalance=False,
                            end_to_end=True),
        count=CountSettings(xdp=("eth1",), tc_egress=("eth1", "eth2"), xdp_mode="native"),
        frr=FrrSettings(enabled="auto", namespace="ns1", vtysh="/usr/bin/vtysh"))
    assert round_trip(config, tmp_path) == config
