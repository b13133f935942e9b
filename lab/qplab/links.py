"""Fail and repair links of a running lab.

down/up: the routers' interfaces go administratively down/up (a failure
both ends see at once). blackhole/restore: the link stays up and silently
drops everything, which only BFD notices; done in the WAN box's delay line.
"""
from __future__ import annotations

from . import netns, wan
from .context import LabContext

ACTIONS = ("down", "up", "blackhole", "restore")


class LinkError(ValueError):
    pass


def find_link(state: dict, a: str, b: str) -> dict:
    """The link between two nodes: {"kind", "ends": [(node, ifname)], "wan": name|None}."""
    nodes = state["nodes"]
    for n in (a, b):
        if n not in nodes and n not in state["wans"]:
            raise LinkError(f"unknown node '{n}' (nodes: {', '.join(sorted(nodes))})")
    for name, w in state["wans"].items():
        if {w["a"], w["b"]} == {a, b}:
            return {"kind": "wan", "wan": name, "ends": [(w["a"], w["a_if"]), (w["b"], w["b_if"])]}
    for n, other in ((a, b), (b, a)):
        node = nodes[n]
        for i in node.get("interfaces", []):
            if i["peer_node"] == other and i["kind"] != "wan":
                peer_if = next(j["name"] for j in nodes[other]["interfaces"]
                               if j["peer_node"] == n and j["peer_address"] == i["address"].split("/")[0])
                return {"kind": "fabric", "wan": None, "ends": [(n, i["name"]), (other, peer_if)]}
        if node["role"] == "host" and node.get("leaf") == other:
            port = "h-" + n.split("-", 1)[1]
            return {"kind": "host", "wan": None, "ends": [(n, "eth0"), (other, port)]}
    raise LinkError(f"no link between {a} and {b}")


def act(state: dict, ctx: LabContext, a: str, b: str, action: str) -> str:
    if action not in ACTIONS:
        raise LinkError(f"unknown action '{action}' (use one of: {', '.join(ACTIONS)})")
    link = find_link(state, a, b)
    if action in ("down", "up"):
        for node, ifname in link["ends"]:
            netns.run(["ip", "-n", ctx.ns(node), "link", "set", "dev", ifname, action])
        key = sorted([a, b])
        down = [l for l in state["links_down"] if l != key]
        state["links_down"] = down + ([key] if action == "down" else [])
        return f"{a} <-> {b}: interfaces {action}"
    if link["kind"] != "wan":
        raise LinkError(f"{a} <-> {b} is not a WAN link: blackhole/restore work on WAN links "
                        "(their delay line drops everything); use down/up here")
    w = state["wans"][link["wan"]]
    wan.set_blackhole(w, action == "blackhole")
    w["blackhole"] = action == "blackhole"
    return f"{a} <-> {b}: {'blackholed (link stays up, drops everything)' if w['blackhole'] else 'restored'}"
