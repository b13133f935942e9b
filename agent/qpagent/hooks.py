"""tc egress filters and XDP programs by program fd and id, over netlink.

What a pinned data plane needs beyond "add": read which program sits at a
hook (by id, to tell ours from a stale one), and replace it in one step (tc
filter replace at the same priority and handle; XDP attach without
UPDATE_IF_NOEXIST), so that packets never pass a hook with no program.
"""

from __future__ import annotations

import errno
import os

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import sched_bpf

EGRESS_PARENT = "ffff:fff3"
INGRESS_PARENT = "ffff:fff2"
FILTER_HANDLE = ":1"
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS = {"generic": 1 << 1, "native": 1 << 2}

# pyroute2 0.9 decodes TCA_BPF_* only up to TCA_BPF_FLAGS (8); the program
# id (11) is what tells which program a filter runs.
_MISSING_TCA_BPF = (("TCA_BPF_FLAGS_GEN", "uint32"), ("TCA_BPF_TAG", "hex"),
                    ("TCA_BPF_ID", "uint32"))


def _teach_tc_bpf_ids() -> None:
    names = [entry[0] for entry in sched_bpf.options.nla_map]
    if "TCA_BPF_ID" in names:
        return
    if names[-1] != "TCA_BPF_FLAGS" or len(names) != 9:
        raise RuntimeError(f"unexpected pyroute2 TCA_BPF map: {names}")
    sched_bpf.options.nla_map = tuple(sched_bpf.options.nla_map) + _MISSING_TCA_BPF
    sched_bpf.options._nlmsg_base__compiled_nla = False


_teach_tc_bpf_ids()


class HookError(RuntimeError):
    """A hook could not be changed; the message names it."""


def has_clsact(ipr, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def add_clsact(ipr, index: int) -> None:
    ipr.tc("add", "clsact", index)


def del_clsact(ipr, index: int) -> None:
    try:
        ipr.tc("del", "clsact", index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def egress_filters(ipr, index: int, parent: str = EGRESS_PARENT
                   ) -> dict[int, tuple[str | None, int | None]]:
    """{priority: (program name, program id)} of the bpf filters on egress
    (or on ingress, with parent=INGRESS_PARENT)."""
    out = {}
    for msg in ipr.get_filters(index=index, parent=parent):
        opts = msg.get_attr("TCA_OPTIONS")
        if msg.get_attr("TCA_KIND") != "bpf" or opts is None:
            continue
        out[msg["info"] >> 16] = (opts.get_attr("TCA_BPF_NAME"), opts.get_attr("TCA_BPF_ID"))
    return out


def set_egress_filter(ipr, index: int, prio: int, fd: int, name: str, replace: bool,
                      parent: str = EGRESS_PARENT) -> None:
    """Add our filter at `prio`, or (replace) swap the program of the one
    there in a single netlink request."""
    try:
        ipr.tc("replace-filter" if replace else "add-filter", "bpf", index, FILTER_HANDLE,
               fd=fd, name=name, parent=parent, classid=1, direct_action=True, prio=prio)
    except NetlinkError as exc:
        raise HookError(f"tc filter at priority {prio:#x}: {os.strerror(exc.code)}") from None


def del_egress_filter(ipr, index: int, prio: int, parent: str = EGRESS_PARENT) -> None:
    try:
        ipr.tc("del-filter", "bpf", index, parent=parent, prio=prio)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def xdp_program(ipr, index: int) -> int | None:
    """Id of the interface's XDP program, None when there is none."""
    links = ipr.get_links(index)
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    return xdp.get_attr("IFLA_XDP_PROG_ID") if xdp is not None else None


def set_xdp(ipr, index: int, fd: int, mode: str, replace: bool) -> None:
    """Attach (refusing to displace another program) or replace atomically."""
    flags = XDP_FLAGS[mode] | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
    try:
        ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", fd),
                                                    ("IFLA_XDP_FLAGS", flags)]})
    except NetlinkError as exc:
        raise HookError(f"XDP {mode}: {os.strerror(exc.code)} (another XDP program there? "
                        "native mode unsupported by the driver?)") from None


def del_xdp(ipr, index: int, mode: str) -> None:
    try:
        ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", -1),
                                                    ("IFLA_XDP_FLAGS", XDP_FLAGS[mode])]})
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV):
            raise
