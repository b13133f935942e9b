"""The configuration file: what a valid file yields, and one clear message per mistake."""

import socket
import tomllib

import pytest

from qpagent.config import (AgentSettings, Config, ConfigError, CountSettings, FrrSettings,
                            SteerSettings, load_config, parse_address, to_toml)

MINIMAL = """\
[steer]
vxlan_devices = ["vxlan100"]
uplinks = ["eth1", "eth2"]
"""

FULL = """\
# every key, none at its default
[agent]
metrics_address = "[::1]:9500"
control_socket = "/run/qpagent/leaf1.sock"
top_qps = 5
poll_interval = 0.05
node = "leaf1"

[steer]
vxlan_devices = ["vxlan100", "vxlan200"]
uplinks = [
    "eth1",   # to spine1
    "eth2",   # to spine2
]
source_ports = [40000, 40100]
ports_per_path = 8
rebalance = false

[count]
xdp = ["eth1"]
tc_egress = ["eth1", "eth2"]
xdp_mode = "native"

[frr]
enabled = true
namespace = "leaf1"
vtysh = "/usr/bin/vtysh"

[liveness]
enabled = false
interval_ms = 20
misses = 5
budget_pps = 400
hold_down_ms = 2500
dscp = 46

[repair]
retransmit = false
nak = true
stall_ms = 80
holddown_ms = 250
"""


HOST = """\
[count]
xdp = ["eth0"]
"""

NEEDS_BOTH = ("required when steer.{o} is set (VTEP mode); for host mode (counting only) "
              "leave both out and list interfaces under [count]")
NOTHING_TO_DO = ("nothing to do: no [steer] VXLAN devices and no [count] interfaces; a VTEP "
                 "needs steer.vxlan_devices and steer.uplinks, a host (counting only) "
                 "count.xdp and/or count.tc_egress")


def write(tmp_path, text, name="qpagent.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text, name="qpagent.toml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).replace(str(tmp_path) + "/", "")


def test_minimal_file_gets_every_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config == Config(
        agent=AgentSettings(node=socket.gethostname().split(".")[0]),
        steer=SteerSettings(vxlan_devices=("vxlan100",), uplinks=("eth1", "eth2")),
        count=CountSettings(), frr=FrrSettings(), source=str(tmp_path / "qpagent.toml"))
    assert config.agent.metrics_address == "127.0.0.1:9464"
    assert config.agent.control_socket == "/run/qpagent/qpagent.sock"
    assert config.steer.source_ports == (49152, 65535)
    assert config.frr.enabled == "auto"


def test_full_file_is_read_whole(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.to_dict() == {
        "agent": {"metrics_address": "[::1]:9500", "control_socket": "/run/qpagent/leaf1.sock",
                  "top_qps": 5, "poll_interval": 0.05, "bpf_stats": True, "node": "leaf1",
                  "realtime_priority": 0},
        "steer": {"vxlan_devices": ("vxlan100", "vxlan200"), "uplinks": ("eth1", "eth2"),
                  "source_ports": (40000, 40100), "ports_per_path": 8, "rebalance": False,
                  "end_to_end": False, "capacities": {}},
        "count": {"xdp": ("eth1",), "tc_egress": ("eth1", "eth2"), "xdp_mode": "native"},
        "frr": {"enabled": True, "namespace": "leaf1", "vtysh": "/usr/bin/vtysh"},
        "liveness": {"enabled": False, "interval_ms": 20, "misses": 5, "rtt_margin_ms": 10,
                     "budget_pps": 400,
                     "hold_down_ms": 2500, "dscp": 46},
        "repair": {"retransmit": False, "nak": True, "stall_ms": 80, "holddown_ms": 250,
                   "go_back": True},
    }


def test_host_mode_counts_only_and_says_so(tmp_path):
    config = load_config(write(tmp_path, "[count]\nxdp = [\"eth0\"]\ntc_egress = [\"eth0\"]\n"))
    assert config == Config(agent=AgentSettings(node=socket.gethostname().split(".")[0]),
                            count=CountSettings(xdp=("eth0",), tc_egress=("eth0",)),
                            source=str(tmp_path / "qpagent.toml"))
    assert (config.mode, config.steers) == ("host", False)
    assert config.describe() == ("host mode: counts flows on eth0 at XDP ingress (eth0) and "
                                 "tc egress (eth0); steers nothing (no paths, probes or BFD)")


def test_host_mode_with_empty_steer_lists_is_the_same(tmp_path):
    empty = load_config(write(tmp_path, HOST + "[steer]\nvxlan_devices = []\nuplinks = []\n"))
    assert (empty.mode, empty.steer.vxlan_devices, empty.steer.uplinks) == ("host", (), ())


def test_vtep_mode_says_what_it_steers(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + "[count]\ntc_egress = [\"eth1\"]\n"))
    assert config.mode == "vtep"
    assert config.describe() == ("VTEP mode: steers RoCE QPs on vxlan100 over uplinks eth1, eth2; "
                                 "counts flows at tc egress (eth1)")


def test_host_config_round_trips_through_toml_with_its_mode_on_top(tmp_path):
    config = load_config(write(tmp_path, HOST))
    text = to_toml(config)
    assert text.splitlines()[0] == ("# host mode: counts flows on eth0 at XDP ingress (eth0); "
                                    "steers nothing (no paths, probes or BFD)")
    again = load_config(write(tmp_path, text, "again.toml"))
    assert again.to_dict() == config.to_dict()


def test_liveness_and_repair_defaults():
    config = Config(steer=SteerSettings())
    assert (config.liveness.enabled, config.liveness.interval_ms, config.liveness.misses,
            config.liveness.budget_pps, config.liveness.hold_down_ms) == (False, 10, 3, 1000, 1000)
    assert (config.repair.retransmit, config.repair.holddown_ms) == (False, 100)


@pytest.mark.parametrize("section, key, value, problem", [
    ("liveness", "interval_ms", "0", "expected an integer 1..10000, got 0"),
    ("liveness", "interval_ms", "2.5", "expected an integer 1..10000, got number 2.5"),
    ("liveness", "misses", "0", "expected an integer 1..100, got 0"),
    ("liveness", "budget_pps", "-1", "expected an integer 1..1000000, got -1"),
    ("liveness", "hold_down_ms", '"1s"', "expected an integer 0..3600000, got string '1s'"),
    ("liveness", "dscp", "64", "expected an integer 0..63, got 64"),
    ("liveness", "enabled", '"yes"', "expected true or false, got string 'yes'"),
    ("repair", "retransmit", "1", "expected true or false, got integer 1"),
    ("repair", "holddown_ms", "-5", "expected an integer 0..3600000, got -5"),
])
def test_bad_liveness_and_repair_values_name_key_and_line(tmp_path, section, key, value, problem):
    text = MINIMAL + f"\n[{section}]\n{key} = {value}\n"
    assert error_of(tmp_path, text) == f"qpagent.toml:6: {section}.{key}: {problem}"


def test_unknown_liveness_key_is_named_with_a_suggestion(tmp_path):
    text = MINIMAL + "\n[liveness]\ninterval = 5\n"
    assert error_of(tmp_path, text).startswith(
        "qpagent.toml:6: liveness.interval: unknown key (did you mean liveness.interval_ms?)")


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        config.agent.top_qps = 3


def test_effective_config_round_trips_through_toml(tmp_path):
    config = load_config(write(tmp_path, FULL))
    again = load_config(write(tmp_path, to_toml(config), "again.toml"))
    assert again.to_dict() == config.to_dict()
    assert tomllib.loads(to_toml(config))["steer"]["source_ports"] == [40000, 40100]


def test_yaml_variant_reads_the_same(tmp_path):
    yaml_text = """\
agent:
  top_qps: 5
steer:
  vxlan_devices: [vxlan100]
  uplinks: [eth1, eth2]
frr:
  enabled: auto
"""
    config = load_config(write(tmp_path, yaml_text, "qpagent.yaml"))
    assert (config.agent.top_qps, config.steer.uplinks, config.frr.enabled) == (5, ("eth1", "eth2"), "auto")


def test_metrics_can_be_disabled(tmp_path):
    config = load_config(write(tmp_path, '[agent]\nmetrics_address = ""\n' + MINIMAL))
    assert config.agent.metrics_address == ""


BAD_TOML = [
    pytest.param(MINIMAL + "[agent]\ntop_qps = \"many\"\n",
                 "qpagent.toml:5: agent.top_qps: expected an integer 1..1000, got string 'many'",
                 id="wrong-type"),
    pytest.param(MINIMAL + "[agent]\ntop_qps = 1001\n",
                 "qpagent.toml:5: agent.top_qps: expected an integer 1..1000, got 1001",
                 id="out-of-range"),
    pytest.param(MINIMAL + "[agent]\ntop_qps = true\n",
                 "qpagent.toml:5: agent.top_qps: expected an integer 1..1000, got boolean true",
                 id="bool-is-not-int"),
    pytest.param(MINIMAL + "[agent]\npoll_interval = 0\n",
                 "qpagent.toml:5: agent.poll_interval: expected a number of seconds 0.01..10, got 0",
                 id="poll-interval"),
    pytest.param(MINIMAL + "[agent]\nmetrics_address = \"9464\"\n",
                 "qpagent.toml:5: agent.metrics_address: expected host:port (e.g. 127.0.0.1:9464 "
                 "or [::1]:9464), got '9464'",
                 id="metrics-address"),
    pytest.param(MINIMAL + "source_ports = [60000, 50000]\n",
                 "qpagent.toml:4: steer.source_ports: expected [lo, hi] with 1 <= lo < hi <= 65535, "
                 "got [60000, 50000]",
                 id="port-range-reversed"),
    pytest.param(MINIMAL + "source_ports = [1, 70000]\n",
                 "qpagent.toml:4: steer.source_ports: expected [lo, hi] with 1 <= lo < hi <= 65535, "
                 "got [1, 70000]",
                 id="port-range-too-high"),
    pytest.param(MINIMAL + "source_ports = [1, 2, 3]\n",
                 "qpagent.toml:4: steer.source_ports: expected [lo, hi], two integers, got [1, 2, 3]",
                 id="port-range-shape"),
    pytest.param(MINIMAL + "ports_per_path = 17\n",
                 "qpagent.toml:4: steer.ports_per_path: expected an integer 1..16, got 17",
                 id="ports-per-path"),
    pytest.param(MINIMAL + "source_ports = [50000, 50003]\n",
                 "qpagent.toml:4: steer.source_ports: the range 50000..50003 holds fewer ports "
                 "than steer.ports_per_path (16)",
                 id="range-smaller-than-ports-per-path"),
    pytest.param(MINIMAL + "uplink = [\"eth3\"]\n",
                 "qpagent.toml:4: steer.uplink: unknown key (did you mean steer.uplinks?); "
                 "known: capacities, end_to_end, ports_per_path, rebalance, source_ports, uplinks, vxlan_devices",
                 id="unknown-key-suggestion"),
    pytest.param("[stear]\nuplinks = [\"eth1\"]\n",
                 "qpagent.toml:1: stear: unknown section (did you mean steer?); "
                 "known: agent, count, frr, liveness, repair, steer",
                 id="unknown-section"),
    pytest.param("[agent]\ntop_qps = 3\n\n[steer]\nuplinks = [\"eth1\"]\n",
                 "qpagent.toml:4: steer.vxlan_devices: " + NEEDS_BOTH.format(o="uplinks"),
                 id="missing-required-points-at-section"),
    pytest.param("[agent]\ntop_qps = 3\n",
                 "qpagent.toml: count: " + NOTHING_TO_DO,
                 id="nothing-steered-nothing-counted"),
    pytest.param("[steer]\nvxlan_devices = []\nuplinks = [\"eth1\"]\n",
                 "qpagent.toml:2: steer.vxlan_devices: " + NEEDS_BOTH.format(o="uplinks"),
                 id="empty-vxlan-list-with-uplinks"),
    pytest.param("[steer]\nvxlan_devices = [\"vxlan100\"]\n",
                 "qpagent.toml:1: steer.uplinks: " + NEEDS_BOTH.format(o="vxlan_devices"),
                 id="vxlan-without-uplinks"),
    pytest.param(HOST + "[steer]\nend_to_end = true\n",
                 "qpagent.toml:4: steer.end_to_end: host mode (no steer.vxlan_devices) steers "
                 "nothing, so there are no end-to-end paths to probe",
                 id="host-mode-end-to-end"),
    pytest.param(HOST + "[frr]\nenabled = true\n",
                 "qpagent.toml:4: frr.enabled: host mode (no steer.vxlan_devices) has no uplinks "
                 "whose BFD sessions matter; leave it out or set false",
                 id="host-mode-frr"),
    pytest.param("[steer]\nvxlan_devices = \"vxlan100\"\nuplinks = [\"eth1\"]\n",
                 "qpagent.toml:2: steer.vxlan_devices: expected a list of interface names, "
                 "got string 'vxlan100'",
                 id="string-not-list"),
    pytest.param("[steer]\nvxlan_devices = [\"vxlan100\"]\nuplinks = [\"a-very-long-ifname\"]\n",
                 "qpagent.toml:3: steer.uplinks: interface name 'a-very-long-ifname' is longer "
                 "than 15 characters",
                 id="ifname-too-long"),
    pytest.param("[steer]\nvxlan_devices = [\"vxlan100\"]\nuplinks = [\"eth 1\"]\n",
                 "qpagent.toml:3: steer.uplinks: interface name 'eth 1' contains '/', ':' or whitespace",
                 id="ifname-whitespace"),
    pytest.param("[steer]\nvxlan_devices = [\"vxlan100\"]\nuplinks = [\"eth1\", \"eth1\"]\n",
                 "qpagent.toml:3: steer.uplinks: interface 'eth1' is listed twice",
                 id="ifname-duplicate"),
    pytest.param("[steer]\nvxlan_devices = [\"vxlan100\"]\nuplinks = [\"vxlan100\"]\n",
                 "qpagent.toml:3: steer.uplinks: 'vxlan100' is also listed in steer.vxlan_devices: "
                 "uplinks carry the encapsulated traffic, VXLAN devices the inner",
                 id="uplink-is-vxlan-device"),
    pytest.param(MINIMAL + "[count]\nxdp_mode = \"offload\"\n",
                 "qpagent.toml:5: count.xdp_mode: expected 'generic' or 'native', got string 'offload'",
                 id="xdp-mode"),
    pytest.param(MINIMAL + "[frr]\nenabled = \"yes\"\n",
                 "qpagent.toml:5: frr.enabled: expected true, false or \"auto\", got string 'yes'",
                 id="frr-enabled"),
    pytest.param(MINIMAL + "agent = 3\n",
                 "qpagent.toml:4: steer.agent: unknown key; "
                 "known: capacities, end_to_end, ports_per_path, rebalance, source_ports, uplinks, vxlan_devices",
                 id="unknown-key-no-suggestion"),
    pytest.param("agent = 3\n" + MINIMAL,
                 "qpagent.toml:1: agent: expected a table of settings, got integer 3",
                 id="section-not-a-table"),
    pytest.param("[steer]\nvxlan_devices = [\"vxlan100\"\nuplinks = [\"eth1\"]\n",
                 "qpagent.toml:3: TOML syntax error: Unclosed array (at line 3, column 1)",
                 id="toml-syntax"),
    pytest.param("[agent]\ntop_qps = = 3\n",
                 "qpagent.toml:2: TOML syntax error: Invalid value (at line 2, column 11)",
                 id="toml-syntax-value"),
]


@pytest.mark.parametrize("text, expected", BAD_TOML)
def test_bad_toml_gets_one_clear_message(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


def test_error_carries_key_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + "ports_per_path = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.key, caught.value.line) == ("steer.ports_per_path", 4)


def test_key_line_is_found_after_multiline_array_and_comments(tmp_path):
    text = FULL.replace("ports_per_path = 8", "ports_per_path = 99  # too many")
    assert error_of(tmp_path, text) == \
        "qpagent.toml:16: steer.ports_per_path: expected an integer 1..16, got 99"


def test_dotted_key_line_is_found(tmp_path):
    text = MINIMAL.replace("[steer]\n", "agent.top_qps = 0\n[steer]\n")
    assert error_of(tmp_path, text) == \
        "qpagent.toml:1: agent.top_qps: expected an integer 1..1000, got 0"


BAD_YAML = [
    pytest.param("steer:\n  vxlan_devices: [vxlan100]\n  uplinks: [eth1]\n  ports_per_path: 20\n",
                 "qpagent.yaml:4: steer.ports_per_path: expected an integer 1..16, got 20",
                 id="out-of-range"),
    pytest.param("steer:\n  vxlan_devices: [vxlan100]\n  uplinks: [eth1]\nagent:\n  topqps: 3\n",
                 "qpagent.yaml:5: agent.topqps: unknown key (did you mean agent.top_qps?); "
                 "known: bpf_stats, control_socket, metrics_address, node, poll_interval, realtime_priority, top_qps",
                 id="unknown-key"),
    pytest.param("steer:\n  vxlan_devices: [vxlan100\n  uplinks: [eth1]\n",
                 None, id="syntax"),
    pytest.param("- steer\n", "qpagent.yaml:1: expected a mapping of sections at the top level, "
                 "got a list", id="not-a-mapping"),
    pytest.param("agent:\n  top_qps: 3\n", "qpagent.yaml: count: " + NOTHING_TO_DO,
                 id="nothing-steered-nothing-counted"),
    pytest.param("1: x\n", "qpagent.yaml:1: 1: unknown section; known: agent, count, frr, liveness, repair, steer",
                 id="integer-key"),
    pytest.param("steer: {}\n---\nsteer: {}\n",
                 "qpagent.yaml:2: YAML syntax error: expected a single document in the stream; "
                 "but found another document", id="two-documents"),
]


@pytest.mark.parametrize("text, expected", BAD_YAML)
def test_bad_yaml_gets_one_clear_message(tmp_path, text, expected):
    message = error_of(tmp_path, text, "qpagent.yaml")
    if expected is None:   # PyYAML words its own syntax errors; check where and what kind
        assert message.startswith("qpagent.yaml:3: YAML syntax error:"), message
        assert "\n" not in message
    else:
        assert message == expected


def test_missing_file(tmp_path):
    assert error_of_missing(tmp_path) == "nope.toml: cannot read the file: No such file or directory"


def error_of_missing(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    return str(caught.value).replace(str(tmp_path) + "/", "")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9100", ("::1", 9100)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9464", "::1:9464", "host:", "host:0", "host:65536", "a b:1"])
def test_parse_address_refuses(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_shipped_example_is_valid_and_shows_the_defaults():
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "agent" / "examples" / "qpagent.toml"
    config = load_config(example)
    assert config.to_dict() == Config(
        agent=AgentSettings(node=socket.gethostname().split(".")[0]),
        steer=SteerSettings(vxlan_devices=("vxlan100",), uplinks=("eth1", "eth2"))).to_dict()
