"""The lab's topology file: load it, check it, and give back plain objects.

Every mistake found is reported with its own message (and all of them at
once), so that a user fixes a topology in one go instead of one traceback at
a time.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES_DIR = REPO_ROOT / "lab" / "topologies"
DEFAULT_TOPOLOGY = TOPOLOGIES_DIR / "default.yaml"

# (min, max) accepted for each WAN property; rate 0 means "unlimited".
WAN_LIMITS = {
    "delay_ms": (0.0, 10_000.0),
    "jitter_ms": (0.0, 10_000.0),
    "loss_pct": (0.0, 100.0),
    "rate_mbit": (0.0, 100_000.0),
}
WAN_DEFAULTS = {"delay_ms": 10.0, "jitter_ms": 0.0, "loss_pct": 0.0, "rate_mbit": 1000.0}
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class TopologyError(ValueError):
    """A topology that cannot be built; `problems` holds one line per mistake."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid topology:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class WanProps:
    delay_ms: float = 10.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 1000.0

    def as_dict(self) -> dict:
        return {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms,
                "loss_pct": self.loss_pct, "rate_mbit": self.rate_mbit}


@dataclass(frozen=True)
class WanLink:
    a: str
    b: str
    props: WanProps

    @property
    def name(self) -> str:
        return f"wan-{self.a}-{self.b}"


@dataclass(frozen=True)
class Host:
    name: str          # global name, e.g. dc1-h1
    dc: str
    leaf: str          # global leaf name
    vni: int
    address: ipaddress.IPv4Interface
    agent: bool = False    # qpagent in host mode: flow counters on its NIC, no steering


@dataclass(frozen=True)
class Leaf:
    name: str
    dc: str
    asn: int
    hosts: tuple[Host, ...]
    agent: bool = True


@dataclass(frozen=True)
class DataCenter:
    name: str
    spines: tuple[str, ...]
    borders: tuple[str, ...]
    leaves: tuple[Leaf, ...]
    spine_asn: int
    border_asn: int


@dataclass(frozen=True)
class Vni:
    vni: int
    subnet: ipaddress.IPv4Network
    route_target: str


@dataclass(frozen=True)
class Bfd:
    profile: str = "lab"
    interval_ms: int = 100
    multiplier: int = 3


@dataclass(frozen=True)
class Addressing:
    loopbacks: ipaddress.IPv4Network
    links: ipaddress.IPv4Network
    management: ipaddress.IPv4Network


@dataclass(frozen=True)
class Topology:
    name: str
    dcs: tuple[DataCenter, ...]
    vnis: tuple[Vni, ...]
    wan: tuple[WanLink, ...]
    bfd: Bfd
    addressing: Addressing
    source: str = ""

    @property
    def leaves(self) -> list[Leaf]:
        return [leaf for dc in self.dcs for leaf in dc.leaves]

    @property
    def hosts(self) -> list[Host]:
        return [h for leaf in self.leaves for h in leaf.hosts]

    def with_management(self, subnet: str) -> "Topology":
        """The same lab on another management subnet (two labs side by side)."""
        net = ipaddress.IPv4Network(subnet)
        return replace(self, addressing=replace(self.addressing, management=net))


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and check a topology file (or a ContainerLab file qplab exported);
    raise TopologyError with every problem."""
    path = resolve_topology(path)
    if path.name.endswith((".clab.yml", ".clab.yaml")):   # our own ContainerLab export
        from .clabload import load_containerlab
        return load_containerlab(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TopologyError([f"cannot read topology file {path}: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyError([f"{path}: not valid YAML: {e}"]) from None
    return parse_topology(data, source=str(path))


def shipped_topologies() -> list[str]:
    """Names of the topologies that ship with the lab (`qplab up NAME`)."""
    return sorted(p.stem for p in TOPOLOGIES_DIR.glob("*.yaml"))


def resolve_topology(path: str | Path | None) -> Path:
    """A topology file, or the name of a shipped one ("three-dc"); None is
    the default. A file that exists always wins over a shipped name."""
    if not path:
        return DEFAULT_TOPOLOGY
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and not path.suffix:
        shipped = TOPOLOGIES_DIR / f"{path.name}.yaml"
        if shipped.exists():
            return shipped
        raise TopologyError([f"no topology file '{path}' and no shipped topology of that "
                             f"name (shipped: {', '.join(shipped_topologies())})"])
    return path


def parse_topology(data, source: str = "<dict>") -> Topology:
    checker = _Checker()
    topo = checker.topology(data, source)
    if checker.problems:
        raise TopologyError(checker.problems)
    return topo


class _Checker:
    """Walks the raw YAML, collecting problems instead of stopping at the first."""

    def __init__(self):
        self.problems: list[str] = []

    def bad(self, msg: str) -> None:
        self.problems.append(msg)

    # -- small typed readers --------------------------------------------------
    def mapping(self, value, where: str, allowed: set[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(f"{where}: expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                self.bad(f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")
        return value

    def number(self, value, where: str, lo: float, hi: float, integer=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                integer and not isinstance(value, int)):
            kind = "an integer" if integer else "a number"
            self.bad(f"{where}: expected {kind}, got {value!r}")
            return None
        if not lo <= value <= hi:
            self.bad(f"{where}={value} out of range [{lo:g}, {hi:g}]")
            return None
        return value

    def network(self, value, where: str):
        try:
            return ipaddress.IPv4Network(str(value))
        except ValueError as e:
            self.bad(f"{where}: not an IPv4 network: {e}")
            return None

    def name(self, value, where: str) -> str | None:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.bad(f"{where}: bad name {value!r} (lower-case letters and digits, "
                     "starting with a letter, at most 12 characters)")
            # keep going with a usable string so one bad name is one message,
            # not a cascade of "unknown node" about everything it contains
            return value if isinstance(value, str) and value else None
        return value

    def names(self, value, where: str, stem: str) -> list[str]:
        """`spines: 2` means spine1, spine2; a list names them explicitly."""
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= 16:
                self.bad(f"{where}={value} out of range [1, 16]")
                return []
            return [f"{stem}{i}" for i in range(1, value + 1)]
        if isinstance(value, list) and value:
            return [n for i, v in enumerate(value) if (n := self.name(v, f"{where}[{i}]"))]
        self.bad(f"{where}: expected a count or a non-empty list of names")
        return []

    # -- sections -------------------------------------------------------------
    def topology(self, data, source: str) -> Topology | None:
        top = self.mapping(data, "topology", {"name", "bfd", "addressing", "vnis",
                                              "wan_defaults", "dcs", "wan"})
        if not top:
            if not self.problems:
                self.bad("topology: empty; it needs at least 'vnis' and 'dcs'")
            return None
        name = str(top.get("name", "lab"))
        bfd = self.bfd(top.get("bfd"))
        addressing = self.addressing(top.get("addressing"))
        vnis = self.vnis(top.get("vnis"))
        defaults = self.wan_props(top.get("wan_defaults"), "wan_defaults", WanProps(**WAN_DEFAULTS))
        dcs = self.dcs(top.get("dcs"), {v.vni: v for v in vnis})
        self.unique_nodes(dcs)
        # a repeated data center is reported once; its copies are dropped so
        # that its nodes and addresses do not each produce another message
        dcs = [dc for i, dc in enumerate(dcs) if dc.name not in {d.name for d in dcs[:i]}]
        self.unique_addresses(dcs, addressing)
        wan = self.wan(top.get("wan"), dcs, defaults)
        return Topology(name=name, dcs=tuple(dcs), vnis=tuple(vnis), wan=tuple(wan),
                        bfd=bfd, addressing=addressing, source=source)

    def bfd(self, raw) -> Bfd:
        m = self.mapping(raw, "bfd", {"profile", "interval_ms", "multiplier"})
        profile = m.get("profile", "lab")
        if not isinstance(profile, str) or not re.match(r"^[A-Za-z][\w-]{0,31}$", profile):
            self.bad(f"bfd.profile: bad profile name {profile!r}")
            profile = "lab"
        interval = self.number(m.get("interval_ms", 100), "bfd.interval_ms", 10, 60_000, True)
        mult = self.number(m.get("multiplier", 3), "bfd.multiplier", 2, 255, True)
        return Bfd(profile, interval or 100, mult or 3)

    def addressing(self, raw) -> Addressing:
        m = self.mapping(raw, "addressing", {"loopbacks", "links", "management"})
        nets = {}
        for key, default in (("loopbacks", "10.255.0.0/16"), ("links", "10.0.0.0/16"),
                             ("management", "172.31.255.0/24")):
            nets[key] = self.network(m.get(key, default), f"addressing.{key}") \
                or ipaddress.IPv4Network(default)
        keys = list(nets)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if nets[a].overlaps(nets[b]):
                    self.bad(f"addressing: {a} {nets[a]} overlaps {b} {nets[b]}")
        return Addressing(**nets)

    def vnis(self, raw) -> list[Vni]:
        if not isinstance(raw, list) or not raw:
            self.bad("vnis: expected a non-empty list of {vni, subnet}")
            return []
        out, seen = [], set()
        for i, item in enumerate(raw):
            m = self.mapping(item, f"vnis[{i}]", {"vni", "subnet", "route_target"})
            vni = self.number(m.get("vni"), f"vnis[{i}].vni", 1, 2**24 - 1, True)
            subnet = self.network(m.get("subnet"), f"vnis[{i}].subnet")
            if vni is None or subnet is None:
                continue
            if vni in seen:
                self.bad(f"vnis[{i}]: VNI {vni} listed twice")
                continue
            seen.add(vni)
            rt = str(m.get("route_target", f"65000:{vni}"))
            if not re.match(r"^\d+:\d+$", rt):
                self.bad(f"vnis[{i}].route_target: expected ASN:NN, got {rt!r}")
            out.append(Vni(vni, subnet, rt))
        return out

    def wan_props(self, raw, where: str, base: WanProps, check_keys=True) -> WanProps:
        m = self.mapping(raw, where, set(WAN_LIMITS)) if check_keys else (raw or {})
        values = base.as_dict()
        for key, (lo, hi) in WAN_LIMITS.items():
            if key in m:
                v = self.number(m[key], f"{where}: {key}", lo, hi)
                if v is not None:
                    values[key] = float(v)
        return WanProps(**values)

    def dcs(self, raw, vnis: dict[int, Vni]) -> list[DataCenter]:
        if not isinstance(raw, list) or not raw:
            self.bad("dcs: expected a non-empty list of data centers")
            return []
        out = []
        for i, item in enumerate(raw):
            m = self.mapping(item, f"dcs[{i}]", {"name", "asn", "spines", "borders", "leaves"})
            dc = self.name(m.get("name"), f"dcs[{i}].name")
            if dc is None:
                continue
            where = f"dc {dc}"
            asn = self.mapping(m.get("asn"), f"{where}.asn", {"spines", "borders", "leaves"})
            base = 65000 + 100 * (i + 1)
            spine_asn = self.number(asn.get("spines", base), f"{where}.asn.spines", 1, 4294967294, True)
            border_asn = self.number(asn.get("borders", base + 1), f"{where}.asn.borders", 1, 4294967294, True)
            leaf_asn = self.number(asn.get("leaves", base + 10), f"{where}.asn.leaves", 1, 4294967294, True)
            spines = [f"{dc}-{n}" for n in self.names(m.get("spines"), f"{where}.spines", "spine")]
            # borders are optional: a data center without WAN links needs none
            borders = [f"{dc}-{n}" for n in self.names(m["borders"], f"{where}.borders", "border")] \
                if m.get("borders") else []
            leaves = self.leaves(m.get("leaves"), dc, leaf_asn or base + 10, vnis)
            out.append(DataCenter(dc, tuple(spines), tuple(borders), tuple(leaves),
                                  spine_asn or base, border_asn or base + 1))
        return out

    def leaves(self, raw, dc: str, first_asn: int, vnis: dict[int, Vni]) -> list[Leaf]:
        if not isinstance(raw, list) or not raw:
            self.bad(f"dc {dc}.leaves: expected a non-empty list of leaves")
            return []
        out = []
        for i, item in enumerate(raw):
            m = self.mapping(item, f"dc {dc}.leaves[{i}]", {"name", "hosts", "agent"})
            local = self.name(m.get("name", f"leaf{i + 1}"), f"dc {dc}.leaves[{i}].name")
            if local is None:
                continue
            leaf = f"{dc}-{local}"
            hosts = self.hosts(m.get("hosts"), dc, leaf, vnis)
            out.append(Leaf(leaf, dc, first_asn + i, tuple(hosts), bool(m.get("agent", True))))
        return out

    def hosts(self, raw, dc: str, leaf: str, vnis: dict[int, Vni]) -> list[Host]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.bad(f"leaf {leaf}.hosts: expected a list")
            return []
        out = []
        for i, item in enumerate(raw):
            where = f"leaf {leaf}.hosts[{i}]"
            m = self.mapping(item, where, {"name", "vni", "address", "agent"})
            local = self.name(m.get("name"), f"{where}.name")
            agent = m.get("agent", False)
            if not isinstance(agent, bool):
                self.bad(f"{where}.agent: expected true or false, got {agent!r}")
            vni = m.get("vni")
            if vni not in vnis:
                self.bad(f"{where}: VNI {vni!r} is not declared in 'vnis' "
                         f"(declared: {', '.join(map(str, vnis)) or 'none'})")
                continue
            try:
                addr = ipaddress.IPv4Interface(str(m.get("address")))
            except ValueError:
                self.bad(f"{where}.address: not an IPv4 address with prefix: {m.get('address')!r}")
                continue
            if addr.ip not in vnis[vni].subnet:
                self.bad(f"{where}.address: {addr.ip} is outside VNI {vni}'s subnet {vnis[vni].subnet}")
                continue
            if addr.network != vnis[vni].subnet:
                addr = ipaddress.IPv4Interface(f"{addr.ip}/{vnis[vni].subnet.prefixlen}")
            if local:
                out.append(Host(f"{dc}-{local}", dc, leaf, vni, addr, agent is True))
        return out

    def unique_nodes(self, dcs: list[DataCenter]) -> None:
        seen: dict[str, str] = {}
        dc_names = [dc.name for dc in dcs]
        for dup in sorted({n for n in dc_names if dc_names.count(n) > 1}):
            self.bad(f"duplicate data center name '{dup}'")
        for dc in [d for i, d in enumerate(dcs) if d.name not in {x.name for x in dcs[:i]}]:
            names = list(dc.spines) + list(dc.borders) + [l.name for l in dc.leaves] + \
                [h.name for l in dc.leaves for h in l.hosts]
            for n in names:
                if n in seen:
                    self.bad(f"duplicate node name '{n}'")
                seen[n] = dc.name

    def unique_addresses(self, dcs: list[DataCenter], addressing: Addressing) -> None:
        seen: dict[ipaddress.IPv4Address, str] = {}
        for dc in dcs:
            for leaf in dc.leaves:
                for h in leaf.hosts:
                    if h.address.ip in seen:
                        self.bad(f"duplicate address {h.address.ip}: {seen[h.address.ip]} and {h.name}")
                    else:
                        seen[h.address.ip] = h.name
                    if h.address.ip in (h.address.network.network_address,
                                        h.address.network.broadcast_address):
                        self.bad(f"host {h.name}: {h.address.ip} is the network or broadcast address")
                    for key in ("loopbacks", "links", "management"):
                        if h.address.ip in getattr(addressing, key):
                            self.bad(f"host {h.name}: {h.address.ip} lies in the {key} pool "
                                     f"{getattr(addressing, key)}")

    def wan(self, raw, dcs: list[DataCenter], defaults: WanProps) -> list[WanLink]:
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            self.bad("wan: expected a list of {a, b, delay_ms, jitter_ms, loss_pct, rate_mbit}")
            return []
        borders = {b: dc.name for dc in dcs for b in dc.borders}
        others = {n: role for dc in dcs for role, ns in
                  (("spine", dc.spines), ("leaf", [l.name for l in dc.leaves]),
                   ("host", [h.name for l in dc.leaves for h in l.hosts])) for n in ns}
        out, pairs = [], set()
        for i, item in enumerate(raw):
            where = f"wan link {i + 1}"
            m = self.mapping(item, where, set(WAN_LIMITS) | {"a", "b"})
            a, b = m.get("a"), m.get("b")
            ok = True
            for end in (a, b):
                if end in borders:
                    continue
                ok = False
                if end in others:
                    self.bad(f"{where}: '{end}' is a {others[end]}; WAN links join border routers")
                else:
                    self.bad(f"{where}: unknown node '{end}' (border routers: "
                             f"{', '.join(sorted(borders)) or 'none'})")
            if ok and borders[a] == borders[b]:
                self.bad(f"{where}: {a} and {b} are in the same data center; "
                         "WAN links join different data centers")
                ok = False
            if ok and frozenset((a, b)) in pairs:
                self.bad(f"{where}: {a} <-> {b} listed twice")
                ok = False
            props = self.wan_props(m, f"wan link {a} <-> {b}" if ok else where, defaults,
                                   check_keys=False)
            if ok:
                pairs.add(frozenset((a, b)))
                out.append(WanLink(a, b, props))
        return out
