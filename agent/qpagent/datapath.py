"""Compile qpagent's BPF programs and attach them to the configured interfaces.

    qp_steer        tc clsact egress of each VXLAN device (before encapsulation)
    path_pin        tc clsact egress of each underlay uplink (after it)
    flow_stats_tc   tc clsact egress of each counted interface
    flow_stats_xdp  XDP of each counted interface (generic or native)

Everything attached is recorded, so detach() removes exactly that: our tc
filters, the clsact qdiscs we created (a clsact that was there before stays)
and our XDP programs. One agent per interface: an exclusive flock per
(network namespace, interface) is taken before touching anything and dies
with the process.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from qpagent import bpfobj, netnsutil

LOCK_DIR = "/run/qpagent/locks"
EGRESS_PARENT = "ffff:fff3"
CLSACT_HANDLE = "ffff:0"
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS = {"generic": 1 << 1, "native": 1 << 2}

# tc priority per program: lower runs first. On an uplink path_pin decides
# where the packet leaves, and the counter sits behind it.
# A program that does not end the chain must return TC_ACT_UNSPEC (-1).
TC_PRIO = {"qp_steer": 0x7f01, "path_pin": 0x7f01, "flow_stats_tc": 0x7f02}

# Which compiled object (by source) each program comes from.
_OBJECT_OF = {"qp_steer": "steer", "path_pin": "pin",
              "flow_stats_tc": "flows", "flow_stats_xdp": "flows"}


class DataPlaneError(RuntimeError):
    """Attaching or detaching failed; the message says what and where."""


@dataclass
class Attachment:
    program: str        # key of bpfobj.PROGRAMS
    hook: str           # "tc egress" or "xdp generic"/"xdp native"
    ifname: str
    ifindex: int | None  # None while the interface is missing
    added_clsact: bool = False


class DataPlane:
    def __init__(self, vxlan_devices=(), uplinks=(), count_xdp=(), count_tc=(),
                 xdp_mode: str = "generic", netns: str | None = None,
                 lock_dir: str = LOCK_DIR, cflags: tuple[str, ...] = ()):
        if xdp_mode not in XDP_FLAGS:
            raise DataPlaneError(f"xdp_mode must be one of {sorted(XDP_FLAGS)}, not {xdp_mode!r}")
        self.netns = netns or None
        self.xdp_mode = xdp_mode
        self.lock_dir = lock_dir
        self.cflags = tuple(cflags)
        # Wanted attachments, in attach order (which is also tc priority order).
        self._wanted: list[tuple[str, str]] = (
            [("qp_steer", dev) for dev in vxlan_devices]
            + [("path_pin", dev) for dev in uplinks]
            + [("flow_stats_tc", dev) for dev in count_tc]
            + [("flow_stats_xdp", dev) for dev in count_xdp])
        self._vxlan_devices = set(vxlan_devices)
        self.steer = self.pin = self.flows = None
        self._functions: dict[str, object] = {}
        self._attached: list[Attachment] = []
        self._locks: dict[str, tuple[int, str]] = {}   # dev -> (fd, lock file)
        self._ipr = None

    # ---------------------------------------------------------------- public
    @property
    def interfaces(self) -> list[str]:
        return sorted({dev for _, dev in self._wanted})

    def attach(self) -> None:
        """Lock, compile, attach everything; on any failure undo it all."""
        if os.geteuid() != 0:
            raise DataPlaneError("the qpagent data plane needs root (BPF and tc): run it as root")
        if self._attached:
            raise DataPlaneError("already attached")
        try:
            with netnsutil.enter(self.netns):
                self._ipr = IPRoute()
                self._lock_interfaces()
                indexes = {dev: self._require(dev) for dev in self.interfaces}
                self._check_vxlan_kinds()
                self._compile()
                for program, dev in self._wanted:
                    self._attach_one(program, dev, indexes[dev])
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove what attach() added, newest first; never raises for a gone
        interface (its filters and XDP went with it)."""
        errors = []
        try:
            with netnsutil.enter(self.netns):
                for att in reversed(self._attached):
                    try:
                        self._detach_one(att)
                    except Exception as exc:
                        errors.append(f"{att.program} on {att.ifname}: {exc}")
                self._remove_added_clsact(self._attached)
        finally:
            self._attached = []
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None
            self._release_locks()
        if errors:
            raise DataPlaneError("detach incomplete: " + "; ".join(errors))

    def reattach_changed(self) -> list[str]:
        """Re-attach on interfaces recreated (new ifindex) or back after
        going missing. Returns one line per change; missing ones are reported,
        not raised."""
        if self._ipr is None:
            return []
        changes = []
        with netnsutil.enter(self.netns):
            by_dev: dict[str, list[Attachment]] = {}
            for att in self._attached:
                by_dev.setdefault(att.ifname, []).append(att)
            for dev, atts in by_dev.items():
                now = self._index_of(dev)
                before = atts[0].ifindex
                if now == before:
                    continue
                if now is None:
                    for att in atts:
                        att.ifindex, att.added_clsact = None, False
                    changes.append(f"{dev} missing")
                    continue
                try:
                    for att in atts:
                        att.ifindex, att.added_clsact = now, False
                        self._hook_up(att)
                    changes.append(f"{dev} re-attached (ifindex {before} -> {now})")
                except (NetlinkError, DataPlaneError, OSError) as exc:
                    changes.append(f"{dev} re-attach failed: {exc}")
        return changes

    def programs(self) -> list[dict]:
        rows = []
        for att in self._attached:
            fn = self._functions.get(att.program)
            info = _prog_info(fn.fd) if fn is not None else {}
            rows.append({"name": att.program, "hook": att.hook, "interface": att.ifname,
                         "ifindex": att.ifindex, "prog_id": info.get("prog_id"),
                         "run_cnt": info.get("run_cnt"), "run_time_ns": info.get("run_time_ns")})
        return rows

    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc):
        self.detach()

    # --------------------------------------------------------------- locking
    def _lock_interfaces(self) -> None:
        try:
            os.makedirs(self.lock_dir, exist_ok=True)
        except OSError as exc:
            raise DataPlaneError(f"cannot create lock directory {self.lock_dir}: {exc.strerror}") from None
        inode = netnsutil.current_inode()
        for dev in self.interfaces:
            path = os.path.join(self.lock_dir, f"{inode}-{dev}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DataPlaneError(
                    f"interface {dev} is already managed by another qpagent "
                    f"(pid {holder}); stop it first") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._locks[dev] = (fd, path)

    def _release_locks(self) -> None:
        # Unlink while still holding the lock, so nothing is left under /run
        # (an agent that opened the file meanwhile was refused by the flock).
        for fd, path in self._locks.values():
            try:
                os.unlink(path)
            except OSError:
                pass
            os.close(fd)
        self._locks = {}
        for directory in (self.lock_dir, os.path.dirname(self.lock_dir)):
            try:
                os.rmdir(directory)   # only when empty
            except OSError:
                break

    # ---------------------------------------------------------------- attach
    def _require(self, dev: str) -> int:
        index = self._index_of(dev)
        if index is None:
            raise DataPlaneError(f"interface {dev} not found"
                                 + (f" in network namespace {self.netns}" if self.netns else ""))
        return index

    def _index_of(self, dev: str) -> int | None:
        found = self._ipr.link_lookup(ifname=dev)
        return found[0] if found else None

    def _check_vxlan_kinds(self) -> None:
        for dev in self._vxlan_devices:
            link = self._ipr.get_links(ifname=dev)[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if kind != "vxlan":
                raise DataPlaneError(f"{dev} is not a VXLAN device (kind {kind or 'none'})")

    def _compile(self) -> None:
        needed = {program for program, _ in self._wanted}
        objects = {}
        for program in sorted(needed):
            spec = bpfobj.PROGRAMS[program]
            attr = _OBJECT_OF[program]
            if attr not in objects:
                objects[attr] = bpfobj.compile_source(spec.source, self.cflags)
            self._functions[program] = bpfobj.load_function(objects[attr], spec)
        self.steer = objects.get("steer")
        self.pin = objects.get("pin")
        self.flows = objects.get("flows")

    def _attach_one(self, program: str, dev: str, index: int) -> None:
        hook = f"xdp {self.xdp_mode}" if program == "flow_stats_xdp" else "tc egress"
        att = Attachment(program, hook, dev, index)
        self._hook_up(att)
        self._attached.append(att)

    def _hook_up(self, att: Attachment) -> None:
        fn = self._functions[att.program]
        if att.program == "flow_stats_xdp":
            self._attach_xdp(att, fn)
            return
        if not self._has_clsact(att.ifindex):
            self._ipr.tc("add", "clsact", att.ifindex)
            # Mark every attachment on this interface: whoever is detached
            # last removes the qdisc.
            att.added_clsact = True
        prio = TC_PRIO[att.program]
        if self._filters_at(att.ifindex, prio):
            raise DataPlaneError(
                f"{att.ifname}: a tc egress filter already sits at priority {prio:#x}; "
                "remove it or stop the agent that put it there")
        try:
            self._ipr.tc("add-filter", "bpf", att.ifindex, ":1", fd=fn.fd, name=fn.name.decode()
                         if isinstance(fn.name, bytes) else fn.name,
                         parent=EGRESS_PARENT, classid=1, direct_action=True, prio=prio)
        except NetlinkError as exc:
            raise DataPlaneError(f"attaching {att.program} to {att.ifname} (tc egress) failed: "
                                 f"{os.strerror(exc.code)}") from None

    def _attach_xdp(self, att: Attachment, fn) -> None:
        from bcc import BPF
        flags = XDP_FLAGS[self.xdp_mode] | XDP_FLAGS_UPDATE_IF_NOEXIST
        try:
            BPF.attach_xdp(att.ifname.encode(), fn, flags)
        except Exception as exc:
            raise DataPlaneError(
                f"attaching {att.program} to {att.ifname} (XDP {self.xdp_mode}) failed: {exc} "
                "(another XDP program there? native mode unsupported by the driver?)") from None

    def _has_clsact(self, index: int) -> bool:
        return any(q.get_attr("TCA_KIND") == "clsact" for q in self._ipr.get_qdiscs(index=index))

    def _filters_at(self, index: int, prio: int) -> list:
        msgs = self._ipr.get_filters(index=index, parent=EGRESS_PARENT)
        return [m for m in msgs if (m["info"] >> 16) == prio]

    # ---------------------------------------------------------------- detach
    def _detach_one(self, att: Attachment) -> None:
        if att.ifindex is None or self._index_of(att.ifname) != att.ifindex:
            return  # the interface is gone, and our hooks with it
        if att.program == "flow_stats_xdp":
            from bcc import BPF
            BPF.remove_xdp(att.ifname.encode(), XDP_FLAGS[self.xdp_mode])
            return
        try:
            self._ipr.tc("del-filter", "bpf", att.ifindex, parent=EGRESS_PARENT,
                         prio=TC_PRIO[att.program])
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise

    def _remove_added_clsact(self, atts: list[Attachment]) -> None:
        for index in {a.ifindex for a in atts if a.added_clsact and a.ifindex is not None}:
            name = next(a.ifname for a in atts if a.ifindex == index)
            if self._index_of(name) != index:
                continue
            try:
                self._ipr.tc("del", "clsact", index)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                    raise


def _prog_info(fd: int) -> dict:
    """prog_id, run_cnt, run_time_ns of a loaded program (run_* stay 0 unless
    kernel.bpf_stats_enabled=1)."""
    try:
        from qpagent import bpfsys
        info = bpfsys.prog_info(fd)
        return {"prog_id": info.id, "run_cnt": info.run_cnt, "run_time_ns": info.run_time_ns}
    except Exception:  # bpfsys absent or refused: the kernel's fdinfo says the same
        pass
    out = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("prog_id", "run_cnt", "run_time_ns"):
                    out[key] = int(value.strip())
    except OSError:
        pass
    return out
