"""Read a ContainerLab file written by `qplab export containerlab` back into a Topology.

The exported file names every node with its labels (role, dc, asn, agent; a
host's leaf, VNI and address; WAN properties on a WAN link's first border)
and the lab-wide settings as default labels. From them this builds the raw
topology document the lab's own topology loader checks, so every mistake in
an edited file is reported the same way as in a topology file. The file's
links must then be exactly the links that topology plans: a link added,
dropped or rewired by hand is named, not silently replaced.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .export import CLAB_NAME_PREFIX, WAN_LABEL
from .plan import build_plan
from .topology import Topology, TopologyError, parse_topology

ROUTER_ROLES = ("spine", "leaf", "border")


def load_containerlab(path: str | Path) -> Topology:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise TopologyError([f"cannot read ContainerLab file {path}: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise TopologyError([f"{path}: not valid YAML: {e}"]) from None
    raw, problems = _raw_topology(doc if isinstance(doc, dict) else {})
    if problems:
        raise TopologyError([f"{path}: {p}" for p in problems])
    topo = parse_topology(raw, source=str(path))
    problems = _link_differences(doc["topology"].get("links") or [], topo)
    if problems:
        raise TopologyError([f"{path}: {p}" for p in problems])
    return topo


def _settings(text: str) -> dict[str, str]:
    """'a=1 b=x' -> {'a': '1', 'b': 'x'}"""
    return dict(item.split("=", 1) for item in str(text).split() if "=" in item)


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _raw_topology(doc: dict) -> tuple[dict, list[str]]:
    problems: list[str] = []
    name = str(doc.get("name", ""))
    if not name.startswith(CLAB_NAME_PREFIX):
        problems.append(f"name {name!r} does not start with {CLAB_NAME_PREFIX!r}: "
                        "not written by `qplab export containerlab`")
    topology = doc.get("topology") or {}
    lab = (topology.get("defaults") or {}).get("labels") or {}
    nodes = topology.get("nodes") or {}
    for key in ("lab.addressing", "lab.bfd"):
        if key not in lab:
            problems.append(f"topology.defaults.labels: '{key}' missing")
    if not nodes:
        problems.append("topology.nodes: empty")
    if problems:
        return {}, problems

    bfd = {k: (v if k == "profile" else _number(v)) for k, v in _settings(lab["lab.bfd"]).items()}
    vnis = [{"vni": int(key.rsplit(".", 1)[1]), **_settings(value)}
            for key, value in lab.items() if key.startswith("lab.vni.")]
    dcs: dict[str, dict] = {}
    leaves: dict[str, dict] = {}
    wan_props: dict[tuple[str, str], dict] = {}
    for node, spec in nodes.items():
        labels = (spec or {}).get("labels") or {}
        role, dc = labels.get("role"), labels.get("dc")
        if role not in ROUTER_ROLES + ("host",) or not dc:
            problems.append(f"node {node}: labels 'role' and 'dc' missing or unknown ({labels})")
            continue
        d = dcs.setdefault(dc, {"name": dc, "asn": {}, "spines": [], "borders": [], "leaves": []})
        local = node[len(dc) + 1:] if node.startswith(f"{dc}-") else node
        if role == "host":
            leaf = leaves.get(labels.get("leaf", ""))
            if leaf is None:
                problems.append(f"node {node}: host of unknown leaf {labels.get('leaf')!r}")
                continue
            leaf["hosts"].append({"name": local, "vni": int(labels.get("vni", 0)),
                                  "address": labels.get("address")})
            continue
        asn = int(labels.get("asn", 0))
        if role == "leaf":
            leaves[node] = {"name": local, "agent": labels.get("agent", "true") == "true", "hosts": []}
            d["leaves"].append(leaves[node])
            d["asn"].setdefault("leaves", asn)   # the first leaf's; the others follow it
        else:
            d[role + "s"].append(local)
            d["asn"][role + "s"] = asn
        for key, value in labels.items():
            if key.startswith(WAN_LABEL):
                wan_props[(node, key[len(WAN_LABEL):])] = {k: _number(v) for k, v in _settings(value).items()}
    wan = []
    for link in topology.get("links") or []:
        ends = [e.split(":", 1) for e in link.get("endpoints", [])]
        if len(ends) == 2 and tuple(ends[0]) in wan_props:
            wan.append({"a": ends[0][0], "b": ends[1][0], **wan_props[tuple(ends[0])]})
    raw = {"name": name[len(CLAB_NAME_PREFIX):], "bfd": bfd,
           "addressing": _settings(lab["lab.addressing"]), "vnis": vnis,
           "dcs": [{k: v for k, v in d.items() if v or k == "leaves"} for d in dcs.values()],
           "wan": wan}
    return raw, problems


def _link_differences(links: list, topo: Topology) -> list[str]:
    plan = build_plan(topo)
    want = [(f"{l.a}:{l.a_if}", f"{l.b}:{l.b_if}") for l in plan.links]
    want += [(f"{w.a}:{w.a_if}", f"{w.b}:{w.b_if}") for w in plan.wans]
    want += [(f"{h.name}:eth0", f"{h.leaf}:{h.leaf_port}") for h in plan.hosts.values()]
    got = [tuple(l.get("endpoints", [])) for l in links]
    out = [f"link {a} <-> {b} is not one the topology makes" for a, b in got if (a, b) not in want]
    out += [f"link {a} <-> {b} is missing" for a, b in want if (a, b) not in got]
    if not out and got != want:
        out.append("links are in another order than the topology makes them "
                   "(interface numbering would differ)")
    return out
