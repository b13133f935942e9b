"""Fail and repair links of a running lab.

down/up: the routers' interfaces go administratively down/up (a failure
both ends see at once). blackhole/restore: the link stays up and silently
drops everything, which only BFD notices; done in the WAN box's delay line
for a WAN link, by a drop filter on the end that runs no agent for a fabric
link (qplab.blackhole).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import blackhole, netns, wan
from .context import LabContext
from .state import LabState

ACTIONS = ("down", "up", "blackhole", "restore")


class LinkError(ValueError):
    pass


@dataclass(frozen=True)
class Link:
    kind: str                       # "wan", "fabric" or "host"
    ends: tuple[tuple[str, str], ...]   # (node, interface) at each end
    wan: str | None = None          # the WAN link's name


def find_link(state: LabState, a: str, b: str) -> Link:
    """The link between two nodes, whichever order they are named in."""
    for n in (a, b):
        if n not in state.routers and n not in state.hosts and n not in state.wans:
            raise LinkError(f"unknown node '{n}' (nodes: {', '.join(sorted(state.node_names))})")
    for name, w in state.wans.items():
        if {w.a, w.b} == {a, b}:
            return Link("wan", ((w.a, w.a_if), (w.b, w.b_if)), name)
    for n, other in ((a, b), (b, a)):
        if n in state.routers and other in state.routers:
            here = state.routers[n].interface_to(other)
            there = state.routers[other].interface_to(n)
            if here and there:
                return Link("fabric", ((n, here.name), (other, there.name)))
        host = state.hosts.get(n)
        if host and host.leaf == other:
            return Link("host", ((n, "eth0"), (other, host.leaf_port)))
    raise LinkError(f"no link between {a} and {b}")


def act(state: LabState, ctx: LabContext, a: str, b: str, action: str) -> str:
    """Do `action` to the link between a and b and record it in `state` (the caller saves)."""
    if action not in ACTIONS:
        raise LinkError(f"unknown action '{action}' (use one of: {', '.join(ACTIONS)})")
    link = find_link(state, a, b)
    if action in ("down", "up"):
        for node, ifname in link.ends:
            netns.run(["ip", "-n", ctx.ns(node), "link", "set", "dev", ifname, action])
        key = sorted([a, b])
        state.links_down = [l for l in state.links_down if l != key] + ([key] if action == "down" else [])
        return f"{a} <-> {b}: interfaces {action}"
    if link.kind == "fabric":
        node, ifname = drop_end(state, link)
        key = sorted([a, b])
        if action == "blackhole":
            blackhole.cut(ctx.ns(node), ifname)
        else:
            blackhole.restore(ctx.ns(node), ifname)
        state.links_blackholed = ([l for l in state.links_blackholed if l != key]
                                  + ([key] if action == "blackhole" else []))
        return (f"{a} <-> {b}: " + (f"blackholed at {node} {ifname} (link stays up, drops everything)"
                                    if action == "blackhole" else "restored"))
    if link.kind != "wan":
        raise LinkError(f"{a} <-> {b} is a host link: blackhole/restore work on WAN and fabric "
                        "links; use down/up here")
    w = state.wans[link.wan]
    wan.set_blackhole(w, action == "blackhole")
    return f"{a} <-> {b}: {'blackholed (link stays up, drops everything)' if w.blackhole else 'restored'}"


def drop_end(state: LabState, link: Link) -> tuple[str, str]:
    """The (node, interface) of a fabric link where a silent drop goes: the
    end that is not a leaf (a leaf's hooks belong to its agent)."""
    for node, ifname in link.ends:
        if state.routers[node].role != "leaf":
            return node, ifname
    return link.ends[0]
