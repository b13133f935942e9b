"""The agent's configuration file: TOML (or YAML), validated into frozen dataclasses.

Every error names the file, the key path (``steer.source_ports``), the line the
key is written on and what was expected, so an operator can fix it without
reading code.

Two modes, told apart by the file alone:

    VTEP mode   [steer] names VXLAN devices and uplinks: RoCE QPs are steered
                onto paths, and [count] interfaces are counted too.
    host mode   no [steer] devices, only [count] interfaces: flow counters on
                a host's NICs (XDP ingress, tc egress), exported like a VTEP's;
                nothing is steered, so no paths, probes or BFD.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from qpagent.contract import PORTS_PER_PATH

IFNAMSIZ = 16            # kernel limit, including the terminating NUL
MAX_PORTS_PER_PATH = PORTS_PER_PATH   # the data plane's slots per path
DEFAULT_SOCKET = "/run/qpagent/qpagent.sock"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says why and where."""

    def __init__(self, file: str, problem: str, key: str | None = None,
                 line: int | None = None):
        self.file, self.problem, self.key, self.line = file, problem, key, line
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


@dataclass(frozen=True)
class AgentSettings:
    metrics_address: str = "127.0.0.1:9464"   # "" disables the exporter
    control_socket: str = DEFAULT_SOCKET
    top_qps: int = 20
    poll_interval: float = 0.2
    bpf_stats: bool = True                      # kernel run-time accounting of our programs
    node: str = ""                              # resolved to the hostname when empty
    # SCHED_FIFO priority of the agent's threads once its data plane is up
    # (0: normal scheduling). Moves after a path dies wait for the agent's
    # loop (QPs with nothing to send, go-back NAKs): on a busy host a normal
    # process runs them hundreds of ms late. The kernel's RT throttling
    # still leaves the other processes their time.
    realtime_priority: int = 0


@dataclass(frozen=True)
class SteerSettings:
    vxlan_devices: tuple[str, ...] = ()
    uplinks: tuple[str, ...] = ()
    source_ports: tuple[int, int] = (49152, 65535)
    ports_per_path: int = 16
    rebalance: bool = True
    end_to_end: bool = False    # group ports by every hop (TTL probes), not the first
    # Bottleneck capacities in Mbit/s, by uplink name or hop address (a first-hop
    # gateway or, end to end, a router's address on the path): placement puts
    # QPs on paths in proportion to the smallest capacity each path crosses,
    # and evens out the links named here before the others.
    capacities: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CountSettings:
    xdp: tuple[str, ...] = ()
    tc_egress: tuple[str, ...] = ()
    xdp_mode: str = "generic"


@dataclass(frozen=True)
class FrrSettings:
    enabled: bool | str = "auto"   # True, False or "auto"
    namespace: str = ""
    vtysh: str = "vtysh"


@dataclass(frozen=True)
class LivenessSettings:
    """End-to-end path liveness: probes answered by the remote VTEP's data plane,
    on the paths in use and their spares. Off by default: in the full lab
    it repairs before BFD and keeps the WAN links even, but on a two-core
    host its probing (a Python prober at 100 probes a second per path)
    takes the CPU a ring AllReduce needs (README, "Failures")."""
    enabled: bool = False
    interval_ms: int = 10          # each path in use (and its spare) probed this often
    misses: int = 3                # dead after this many requests in a row unanswered,
    rtt_margin_ms: int = 10        # each for its smoothed RTT plus this (at least an interval)
    budget_pps: int = 1000         # probes per second per remote VTEP, at most
    hold_down_ms: int = 1000       # a dead path is back after answering this long
    dscp: int = 48                 # probes marked CS6, network control (as BFD)


@dataclass(frozen=True)
class RepairSettings:
    """Per-QP repair in the data plane, from the QP's own packets and the
    acknowledgements coming back for it."""
    # A retransmitted PSN, or a NAK (PSN sequence error), moves the QP to
    # another path. Off by default: a congestion drop also makes a QP resend
    # and its responder NAK, and moving then only adds reordering. (Two QPs
    # leaving one path make it suspect: it takes no QP until a probe clears
    # it; the first QP still moves.)
    retransmit: bool = False
    nak: bool = False
    # Data outstanding with no ACK progress for this long (or the path's
    # liveness deadline, if longer) moves the QP on its next packet; 0: off.
    stall_ms: int = 0
    holddown_ms: int = 100         # a QP is repaired at most once per this long
    # A QP that leaves a dead path with data in flight: the VTEP hands its
    # requester a NAK naming the oldest unacknowledged PSN, made from the
    # responder's last ACK, so it resends at once over the new path instead
    # of waiting for a NAK that may be lost, or for its local ACK timer.
    go_back: bool = True


@dataclass(frozen=True)
class Config:
    steer: SteerSettings = field(default_factory=SteerSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    count: CountSettings = field(default_factory=CountSettings)
    frr: FrrSettings = field(default_factory=FrrSettings)
    liveness: LivenessSettings = field(default_factory=LivenessSettings)
    repair: RepairSettings = field(default_factory=RepairSettings)
    source: str = ""               # the file it came from

    def to_dict(self) -> dict:
        data = asdict(self)
        return {name: data[name] for name in SECTIONS}

    @property
    def steers(self) -> bool:
        """VTEP mode; False is host mode (counting only)."""
        return bool(self.steer.vxlan_devices)

    @property
    def mode(self) -> str:
        return "vtep" if self.steers else "host"

    def describe(self) -> str:
        """One line saying what an agent with this configuration does."""
        counted = sorted(set(self.count.xdp) | set(self.count.tc_egress))
        hooks = [f"XDP ingress ({', '.join(self.count.xdp)})" if self.count.xdp else "",
                 f"tc egress ({', '.join(self.count.tc_egress)})" if self.count.tc_egress else ""]
        counting = " and ".join(h for h in hooks if h)
        if not self.steers:
            return (f"host mode: counts flows on {', '.join(counted)} at {counting}; "
                    "steers nothing (no paths, probes or BFD)")
        line = (f"VTEP mode: steers RoCE QPs on {', '.join(self.steer.vxlan_devices)} "
                f"over uplinks {', '.join(self.steer.uplinks)}")
        return line + (f"; counts flows at {counting}" if counting else "")


# ---------------------------------------------------------------- addresses

def parse_address(text: str, allow_any_port: bool = False) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into (host, port); ValueError if malformed.

    Port 0 (any free port) only with allow_any_port: Prometheus needs a fixed one.
    """
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:9464 or [::1]:9464), got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not (0 if allow_any_port else 1) <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    return host, port


def valid_ifname(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name, or None if it can."""
    if not name:
        return "an interface name cannot be empty"
    if len(name) >= IFNAMSIZ:
        return f"interface name {name!r} is longer than {IFNAMSIZ - 1} characters"
    if "/" in name or any(ch.isspace() for ch in name) or ":" in name or name in (".", ".."):
        return f"interface name {name!r} contains '/', ':' or whitespace"
    return None


# ---------------------------------------------------------------- key lines

def toml_key_lines(text: str) -> dict[str, int]:
    """Map "section.key" (and "section") to the 1-based line where it is written.

    tomllib gives no positions, so this scans the text: table headers and
    ``key =`` lines, including dotted keys. Values spanning lines are fine
    because only the line starting the key matters.
    """
    lines: dict[str, int] = {}
    table: list[str] = []
    depth = 0  # brackets/braces open from a multi-line value: skip their lines
    key_re = re.compile(r'\s*((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
                        r'(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*=')
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_toml_comment(raw)
        if depth == 0:
            header = re.fullmatch(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*", line)
            if header:
                table = _split_dotted(header.group(1))
                lines.setdefault(".".join(table), number)
                continue
            key = key_re.match(line)
            if key:
                path = ".".join(table + _split_dotted(key.group(1)))
                lines.setdefault(path, number)
                line = line[key.end():]
        depth = max(0, depth + _bracket_balance(line))
    return lines


def _strip_toml_comment(line: str) -> str:
    quote = None
    for index, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:index]
    return line


def _bracket_balance(text: str) -> int:
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', "", text)
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return [a or b or c for a, b, c in parts]


def yaml_key_lines(text: str) -> dict[str, int]:
    """Map "section.key" to its 1-based line, from PyYAML's node tree."""
    import yaml
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines.setdefault(path, key_node.start_mark.line + 1)
                walk(value_node, path)

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return lines


# ---------------------------------------------------------------- loading

def load_config(path: str | Path) -> Config:
    """Read, parse and validate a configuration file; raise ConfigError on any problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, "the file is not UTF-8 text") from None
    if name.endswith((".yaml", ".yml")):
        data, lines = _parse_yaml(name, text)
    else:
        data, lines = _parse_toml(name, text)
    return _Validator(name, lines).config(data)


def _parse_toml(name: str, text: str) -> tuple[dict, dict[str, int]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line L, column C)".
        raise ConfigError(name, f"TOML syntax error: {exc}",
                          line=_line_from_message(str(exc))) from None
    return data, toml_key_lines(text)


def _parse_yaml(name: str, text: str) -> tuple[dict, dict[str, int]]:
    import yaml
    try:
        data = yaml.safe_load(text)
        lines = yaml_key_lines(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        what = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise ConfigError(name, f"YAML syntax error: {what}", line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, f"YAML syntax error: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"expected a mapping of sections at the top level, got {_kind(data)}",
                          line=1)
    return data, lines


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


# ---------------------------------------------------------------- validation

Check = Callable[[Any], Any]   # returns the cleaned value or raises ValueError


def _integer(low: int, high: int) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer {low}..{high}, got {_kind(value)}")
        if not low <= value <= high:
            raise ValueError(f"expected an integer {low}..{high}, got {value}")
        return value
    return check


def _number(low: float, high: float, unit: str) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number of {unit} {low}..{high}, got {_kind(value)}")
        if not low <= value <= high:
            raise ValueError(f"expected a number of {unit} {low}..{high}, got {value}")
        return float(value)
    return check


def _boolean(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def _string(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def _nonempty_string(value):
    if not _string(value).strip():
        raise ValueError("expected a non-empty string")
    return value


def _choice(*choices: str) -> Check:
    def check(value):
        if value not in choices:
            listed = " or ".join(repr(c) for c in choices)
            raise ValueError(f"expected {listed}, got {_kind(value)}")
        return value
    return check


def _address(value):
    if _string(value) == "":
        return value
    parse_address(value)
    return value


def _node_name(value):
    if _string(value) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise ValueError(f"expected a name of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _socket_path(value):
    _nonempty_string(value)
    if len(value.encode()) > 107:
        raise ValueError(f"a unix socket path may be at most 107 bytes, got {len(value.encode())}")
    return value


def _ifnames(required: bool) -> Check:
    def check(value):
        if not isinstance(value, list):
            raise ValueError(f"expected a list of interface names, got {_kind(value)}")
        if required and not value:
            raise ValueError("expected at least one interface name, got an empty list")
        seen = set()
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected interface names (strings), got {_kind(item)}")
            problem = valid_ifname(item)
            if problem:
                raise ValueError(problem)
            if item in seen:
                raise ValueError(f"interface {item!r} is listed twice")
            seen.add(item)
        return tuple(value)
    return check


def _port_range(value):
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(p, bool) or not isinstance(p, int) for p in value)):
        raise ValueError(f"expected [lo, hi], two integers, got {_kind(value) if not isinstance(value, list) else value}")
    low, high = value
    if not (1 <= low < high <= 65535):
        raise ValueError(f"expected [lo, hi] with 1 <= lo < hi <= 65535, got [{low}, {high}]")
    return (low, high)


class _EntryError(ValueError):
    """A problem with one entry of a table-valued key (named in the error)."""

    def __init__(self, entry: str, problem: str):
        self.entry = entry
        super().__init__(problem)


def _capacities(value):
    """{uplink name or IPv4 address = Mbit/s}, every capacity above 0."""
    if not isinstance(value, dict):
        raise ValueError("expected a table of uplink names or hop addresses to Mbit/s, "
                         f"got {_kind(value)}")
    out = {}
    for name, mbit in value.items():
        name = str(name)
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            problem = valid_ifname(name)
            if problem:
                raise _EntryError(name, f"{problem}; expected an uplink name or an IPv4 "
                                  "hop address") from None
        if isinstance(mbit, bool) or not isinstance(mbit, (int, float)) or not 0 < mbit <= 10_000_000:
            raise _EntryError(name, f"expected a capacity in Mbit/s above 0 (at most "
                              f"10000000), got {_kind(mbit)}")
        out[name] = float(mbit)
    return out


def _frr_enabled(value):
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"expected true, false or \"auto\", got {_kind(value)}")


SCHEMA: dict[str, dict[str, tuple[Check, bool]]] = {
    # section -> key -> (check, required)
    "agent": {
        "metrics_address": (_address, False),
        "control_socket": (_socket_path, False),
        "top_qps": (_integer(1, 1000), False),
        "poll_interval": (_number(0.01, 10, "seconds"), False),
        "bpf_stats": (_boolean, False),
        "node": (_node_name, False),
        "realtime_priority": (_integer(0, 99), False),
    },
    "steer": {
        # Both empty (or no [steer] at all) is host mode: see cross_checks.
        "vxlan_devices": (_ifnames(required=False), False),
        "uplinks": (_ifnames(required=False), False),
        "source_ports": (_port_range, False),
        "ports_per_path": (_integer(1, MAX_PORTS_PER_PATH), False),
        "rebalance": (_boolean, False),
        "end_to_end": (_boolean, False),
        "capacities": (_capacities, False),
    },
    "count": {
        "xdp": (_ifnames(required=False), False),
        "tc_egress": (_ifnames(required=False), False),
        "xdp_mode": (_choice("generic", "native"), False),
    },
    "frr": {
        "enabled": (_frr_enabled, False),
        "namespace": (_string, False),
        "vtysh": (_nonempty_string, False),
    },
    "liveness": {
        "enabled": (_boolean, False),
        "interval_ms": (_integer(1, 10_000), False),
        "misses": (_integer(1, 100), False),
        "rtt_margin_ms": (_integer(0, 60_000), False),
        "budget_pps": (_integer(1, 1_000_000), False),
        "hold_down_ms": (_integer(0, 3_600_000), False),
        "dscp": (_integer(0, 63), False),
    },
    "repair": {
        "retransmit": (_boolean, False),
        "nak": (_boolean, False),
        "stall_ms": (_integer(0, 60_000), False),
        "holddown_ms": (_integer(0, 3_600_000), False),
        "go_back": (_boolean, False),
    },
}

SETTINGS = {"agent": AgentSettings, "steer": SteerSettings, "count": CountSettings,
            "frr": FrrSettings, "liveness": LivenessSettings, "repair": RepairSettings}
SECTIONS = tuple(SETTINGS)


class _Validator:
    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines = file, lines

    def error(self, key: str, problem: str) -> ConfigError:
        line = self.lines.get(key)
        if line is None and "." in key:       # a missing key: point at its section
            line = self.lines.get(key.rsplit(".", 1)[0])
        return ConfigError(self.file, problem, key=key, line=line)

    def config(self, data: dict) -> Config:
        for section, body in data.items():
            section = str(section)   # YAML allows non-string keys
            if section not in SCHEMA:
                raise self.error(section, "unknown section" + _suggest(section, SCHEMA))
            if not isinstance(body, dict):
                raise self.error(section, f"expected a table of settings, got {_kind(body)}")
        sections = {name: self.section(name, data.get(name, {})) for name in SCHEMA}
        self.cross_checks(sections)
        return Config(source=self.file, **sections)

    def section(self, name: str, body: dict):
        schema = SCHEMA[name]
        values = {}
        for key, value in body.items():
            key = str(key)
            path = f"{name}.{key}"
            if key not in schema:
                raise self.error(path, "unknown key" + _suggest(key, schema, prefix=f"{name}."))
            check, _required = schema[key]
            try:
                values[key] = check(value)
            except _EntryError as exc:
                # an inline table's entries share its line: point there
                line = self.lines.get(f"{path}.{exc.entry}", self.lines.get(path))
                raise ConfigError(self.file, str(exc), key=f"{path}.{exc.entry}",
                                  line=line) from None
            except ValueError as exc:
                raise self.error(path, str(exc)) from None
        for key, (_check, required) in schema.items():
            if required and key not in body:
                raise self.error(f"{name}.{key}", "required but missing")
        if name == "agent" and not values.get("node"):
            values["node"] = socket.gethostname().split(".")[0]
        return SETTINGS[name](**values)

    def cross_checks(self, sections: dict) -> None:
        steer = sections["steer"]
        if not steer.vxlan_devices and not steer.uplinks:
            self.host_mode_checks(sections)
            return
        for key, other in (("vxlan_devices", "uplinks"), ("uplinks", "vxlan_devices")):
            if not getattr(steer, key):
                raise self.error(f"steer.{key}", f"required when steer.{other} is set (VTEP "
                                 "mode); for host mode (counting only) leave both out and "
                                 "list interfaces under [count]")
        low, high = steer.source_ports
        if high - low + 1 < steer.ports_per_path:
            raise self.error("steer.source_ports",
                             f"the range {low}..{high} holds fewer ports than "
                             f"steer.ports_per_path ({steer.ports_per_path})")
        both = set(steer.vxlan_devices) & set(steer.uplinks)
        if both:
            raise self.error("steer.uplinks",
                             f"{sorted(both)[0]!r} is also listed in steer.vxlan_devices: "
                             "uplinks carry the encapsulated traffic, VXLAN devices the inner")


    def host_mode_checks(self, sections: dict) -> None:
        """No steering: something must be counted, and settings that only
        make sense on a VTEP must not be asked for."""
        count = sections["count"]
        if not count.xdp and not count.tc_egress:
            raise self.error("count", "nothing to do: no [steer] VXLAN devices and no [count] "
                             "interfaces; a VTEP needs steer.vxlan_devices and steer.uplinks, "
                             "a host (counting only) count.xdp and/or count.tc_egress")
        if sections["steer"].end_to_end:
            raise self.error("steer.end_to_end", "host mode (no steer.vxlan_devices) steers "
                             "nothing, so there are no end-to-end paths to probe")
        if sections["steer"].capacities:
            raise self.error("steer.capacities", "host mode (no steer.vxlan_devices) places no "
                             "QPs, so there are no paths to weigh by capacity")
        if sections["frr"].enabled is True:
            raise self.error("frr.enabled", "host mode (no steer.vxlan_devices) has no uplinks "
                             "whose BFD sessions matter; leave it out or set false")


def _suggest(word: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"{hint}; known: {', '.join(sorted(known))}"


# ---------------------------------------------------------------- rendering

def to_toml(config: Config) -> str:
    """The effective configuration, written back as TOML (for check-config),
    headed by a comment that says what it does."""
    out = [f"# {config.describe()}"]
    for section, values in config.to_dict().items():
        out.append(f"[{section}]")
        for key, value in values.items():
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):   # an inline table, keys quoted (addresses hold dots)
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
