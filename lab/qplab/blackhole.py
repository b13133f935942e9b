"""Silent failure of a fabric link (leaf-spine, spine-border).

The link stays up, its addresses and neighbour entries stay as they were,
and everything crossing it is dropped both ways, so only BFD (or an
end-to-end probe) can tell. This kernel has no tc drop action (act_gact), so
the drop is a one-instruction classic BPF filter in direct-action mode
(`ret #2`, TC_ACT_SHOT) on clsact ingress and egress of one end.

The filter goes on the end that runs no agent (a spine, a border): a leaf's
clsact belongs to its qpagent, and a drop there would also hide what the
agent's own hooks do with the packets.
"""
from __future__ import annotations

from . import netns

DROP_PREF = 7                          # our filters' priority, found again by it on restore
DROP_ALL = "1,6 0 0 2,"                # classic BPF: one instruction, return TC_ACT_SHOT
DIRECTIONS = ("ingress", "egress")


def _filters(ns: str, dev: str, direction: str) -> str:
    return netns.run(["tc", "-n", ns, "filter", "show", "dev", dev, direction],
                     check=False).stdout.strip()


def cut(ns: str, dev: str) -> None:
    """Drop everything entering and leaving `dev` in namespace `ns`."""
    netns.run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "clsact"])
    for direction in DIRECTIONS:
        netns.run(["tc", "-n", ns, "filter", "replace", "dev", dev, direction, "protocol", "all",
                   "pref", str(DROP_PREF), "bpf", "da", "bytecode", DROP_ALL])


def restore(ns: str, dev: str) -> None:
    """Remove the drop; the clsact qdisc too when nothing else uses it."""
    for direction in DIRECTIONS:
        netns.run(["tc", "-n", ns, "filter", "del", "dev", dev, direction,
                   "pref", str(DROP_PREF)], check=False)
    if not any(_filters(ns, dev, d) for d in DIRECTIONS):
        netns.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "clsact"], check=False)


def is_cut(ns: str, dev: str) -> bool:
    return all(f"pref {DROP_PREF} bpf" in _filters(ns, dev, d) for d in DIRECTIONS)
