"""qpagent's programs on the configured interfaces, pinned so they outlive the agent.

    qp_steer        tc clsact egress of each VXLAN device (before encapsulation)
    path_pin        tc clsact egress of each underlay uplink (after it)
    path_probe      tc clsact ingress of each underlay uplink (answers and
                    records liveness probes; qp_steer's object)
    probe_sent      tc clsact egress of each underlay uplink, before path_pin
                    (notes when each of our probes leaves; qp_steer's object)
    flow_stats_tc   tc clsact egress of each counted interface
    flow_stats_xdp  XDP of each counted interface (generic or native)

Only the objects the wanted hooks need are compiled: a host agent (no VXLAN
devices or uplinks, counted interfaces only) builds and attaches flow_stats
alone, so it neither compiles nor pins qp_steer and path_pin.

Programs and maps are pinned per node in bpffs (qpagent.pins), under a digest
of what was compiled. attach() then does one of three things:

    adopted    a pinned set with this digest, from this network namespace:
               open it, no compile; hooks already running it stay as they
               are (missing ones are attached). The maps keep every QP.
    replaced   a pinned set with another digest: compile, swap each hook's
               program in one step (tc filter replace, XDP replace), unpin
               the old set. Maps start empty.
    compiled   nothing pinned: compile, pin, attach.

release() only closes this process's descriptors: programs stay attached and
steering (what the agent does on exit, SIGTERM or SIGKILL). purge() removes
every hook, the clsact qdiscs it added, the pins and the record; detach() is
purge(). One agent per interface and per node: exclusive flocks taken before
anything is touched, dying with the process.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import asdict, dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from qpagent import bpfobj, bpfsys, hooks, netnsutil
from qpagent.contract import MAPS
from qpagent.maps import RawMap
from qpagent.adapters.statefile import StateFile
from qpagent.pins import PinError, PinStore, netns_cookie, source_digest, tidy_base

LOCK_DIR = "/run/qpagent/locks"
XDP_FLAGS = hooks.XDP_FLAGS

# tc priority per program: lower runs first. On an uplink probe_sent notes
# our probes first, path_pin decides where the packet leaves, and the
# counter sits behind it.
# A program that does not end the chain must return TC_ACT_UNSPEC (-1).
TC_PRIO = {"qp_steer": 0x7f01, "path_pin": 0x7f01, "flow_stats_tc": 0x7f02,
           "path_probe": 0x7f01, "probe_sent": 0x7f00}
# Programs on tc ingress; every other tc program sits on egress.
INGRESS_PROGRAMS = {"path_probe"}

# Which compiled object (by source) each program comes from.
_OBJECT_OF = {"qp_steer": "steer", "path_probe": "steer", "probe_sent": "steer",
              "path_pin": "pin",
              "flow_stats_tc": "flows", "flow_stats_xdp": "flows"}
_PROGRAMS_OF = {obj: sorted(p for p, o in _OBJECT_OF.items() if o == obj)
                for obj in set(_OBJECT_OF.values())}

ADOPTED, REPLACED, COMPILED = "adopted", "replaced", "compiled"


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
                 lock_dir: str = LOCK_DIR, cflags: tuple[str, ...] = (),
                 node: str | None = None, pin_base: str | None = None):
        if xdp_mode not in XDP_FLAGS:
            raise DataPlaneError(f"xdp_mode must be one of {sorted(XDP_FLAGS)}, not {xdp_mode!r}")
        self.netns = netns or None
        self.xdp_mode = xdp_mode
        self.lock_dir = lock_dir
        self.cflags = tuple(cflags)
        self.node = node or socket.gethostname()
        try:
            self.pins = PinStore(self.node, pin_base)
        except PinError as exc:
            raise DataPlaneError(str(exc)) from None
        # Wanted attachments, in attach order (which is also tc priority order).
        self._wanted: list[tuple[str, str]] = (
            [("qp_steer", dev) for dev in vxlan_devices]
            + [("probe_sent", dev) for dev in uplinks]
            + [("path_pin", dev) for dev in uplinks]
            + [("path_probe", dev) for dev in uplinks]
            + [("flow_stats_tc", dev) for dev in count_tc]
            + [("flow_stats_xdp", dev) for dev in count_xdp])
        self._vxlan_devices = set(vxlan_devices)
        self.origin: str | None = None     # ADOPTED, REPLACED or COMPILED once attached
        self.digest: str | None = None
        self._progs: dict[str, int] = {}   # program -> fd
        self._maps: dict[tuple[str, str], RawMap] = {}
        self._attached: list[Attachment] = []
        self._locks: dict[str, tuple[int, str]] = {}   # dev -> (fd, lock file)
        self._ipr = None

    # ---------------------------------------------------------------- public
    @property
    def interfaces(self) -> list[str]:
        return sorted({dev for _, dev in self._wanted})

    @property
    def adopted(self) -> bool:
        """The maps are the ones a previous agent left running (QPs, paths)."""
        return self.origin == ADOPTED

    @property
    def pin_dir(self) -> str:
        """Where this node's pinned set lives (as seen from the host)."""
        return self.pins.node_dir

    def table(self, obj: str, name: str) -> RawMap | None:
        """A map of one object ("steer", "pin", "flows") by its C name."""
        return self._maps.get((obj, name))

    def attach(self) -> str:
        """Lock, then adopt, replace or compile (see the module doc) and
        attach. Returns the origin; on failure nothing new is left behind."""
        if os.geteuid() != 0:
            raise DataPlaneError("the qpagent data plane needs root (BPF and tc): run it as root")
        if self._attached:
            raise DataPlaneError("already attached")
        fresh = False
        try:
            with netnsutil.enter(self.netns):
                self._ipr = IPRoute()
                self._lock_interfaces()
                indexes = {dev: self._require(dev) for dev in self.interfaces}
                self._check_vxlan_kinds()
                record = self._load(netns_cookie())
                fresh = self.origin == COMPILED
                old_ids = set(record.get("prog_ids", [])) if record else set()
                added = {(a["ifindex"]) for a in (record or {}).get("attachments", [])
                         if a.get("added_clsact")}
                for program, dev in self._wanted:
                    att = Attachment(program, self._hook_name(program), dev, indexes[dev],
                                     added_clsact=indexes[dev] in added)
                    self._hook_up(att, old_ids)
                    self._attached.append(att)
                self._drop_unwanted(record, old_ids)
                for digest in self.pins.digests():
                    if digest != self.digest:
                        self.pins.remove(digest)
                self._write_record()
        except BaseException:
            if fresh:
                self.purge()
            else:
                self.release()
            raise
        return self.origin

    def release(self) -> None:
        """Close what this process holds; hooks, pins and record stay."""
        for m in self._maps.values():
            m.close()
        for fd in self._progs.values():
            os.close(fd)
        self._maps, self._progs, self._attached = {}, {}, []
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        self._release_locks()
        self.pins.close()

    def purge(self) -> None:
        """Remove everything of this node: hooks (also those a previous agent
        attached, from the record), added clsact qdiscs, pins, the record.
        Works without attach(); refuses while another agent holds the locks."""
        errors = []
        with netnsutil.enter(self.netns):
            if self._ipr is None:
                self._ipr = IPRoute()
            if not self._locks:
                try:
                    self._lock_interfaces()
                except DataPlaneError:
                    self.release()
                    raise
        try:
            with netnsutil.enter(self.netns):
                errors = self._detach_all()
        finally:
            for digest in self.pins.digests():
                self.pins.remove(digest)
            self.pins.remove_record()
            saved = StateFile(self.node)   # where the agent keeps its path table
            saved.remove()
            self.release()
            self._remove_stale_locks()
            tidy_base(self.pins.base)
            for directory in (self.lock_dir, saved.path.parent):
                tidy_base(os.path.dirname(directory))   # when not under the pin base
            self.origin = None
        if errors:
            raise DataPlaneError("purge incomplete: " + "; ".join(errors))

    detach = purge

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
                        self._hook_up(att, set())
                    changes.append(f"{dev} re-attached (ifindex {before} -> {now})")
                except (NetlinkError, DataPlaneError, OSError) as exc:
                    changes.append(f"{dev} re-attach failed: {exc}")
            self._write_record()
        return changes

    def programs(self) -> list[dict]:
        rows = []
        for att in self._attached:
            fd = self._progs.get(att.program)
            info = _prog_info(fd) if fd is not None else {}
            rows.append({"name": att.program, "hook": att.hook, "interface": att.ifname,
                         "ifindex": att.ifindex, "prog_id": info.get("prog_id"),
                         "run_cnt": info.get("run_cnt"), "run_time_ns": info.get("run_time_ns")})
        return rows

    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc):
        self.purge()

    # --------------------------------------------------------------- locking
    def _lock_interfaces(self) -> None:
        try:
            os.makedirs(self.lock_dir, exist_ok=True)
        except OSError as exc:
            raise DataPlaneError(f"cannot create lock directory {self.lock_dir}: {exc.strerror}") from None
        inode = netnsutil.current_inode()
        # The node lock keeps two agents (any namespaces) off one pinned set.
        wanted = [(f"interface {dev}", f"{inode}-{dev}.lock") for dev in self.interfaces] + \
            [(f"node {self.node}", f"node-{self.node}.lock")]
        for what, name in wanted:
            path = os.path.join(self.lock_dir, name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = (os.pread(fd, 128, 0).decode(errors="replace").split() or ["unknown"])[0]
                os.close(fd)
                self._release_locks()
                raise DataPlaneError(
                    f"{what} is already managed by another qpagent "
                    f"(pid {holder}); stop it first") from None
            os.ftruncate(fd, 0)
            # The node's name lets purge find the files of an agent killed
            # with SIGKILL (its flocks die with it, the files stay).
            os.pwrite(fd, f"{os.getpid()} {self.node}\n".encode(), 0)
            self._locks[what] = (fd, path)

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

    def _remove_stale_locks(self) -> None:
        """Lock files of this node left by agents that died without cleaning
        up (SIGKILL), in any network namespace, even one gone since. A file
        a live agent holds is left alone: the flock says who is alive."""
        try:
            names = os.listdir(self.lock_dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.lock_dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                words = os.pread(fd, 128, 0).decode(errors="replace").split()
                if name == f"node-{self.node}.lock" or words[1:2] == [self.node]:
                    os.unlink(path)   # while holding it, as _release_locks does
            except (BlockingIOError, OSError):
                pass
            finally:
                os.close(fd)
        try:
            os.rmdir(self.lock_dir)
        except OSError:
            pass

    # ---------------------------------------------------------------- loading
    def _load(self, cookie: int) -> dict | None:
        """Open the pinned set or compile and pin a new one; sets origin and
        digest. Returns the previous record when its hooks are ours to
        replace (same network namespace), else None."""
        self.digest = source_digest(bpfobj.BPF_DIR, self.cflags)
        record = self.pins.read_record()
        same_ns = record is not None and record.get("netns_cookie") == cookie
        needed = sorted({_OBJECT_OF[p] for p, _ in self._wanted})
        if same_ns and record.get("digest") == self.digest:
            missing = [o for o in needed if not self._pinned_whole(o)]
            self._compile_and_pin(missing)
            self.origin = ADOPTED
        else:
            # Another digest, or a set left by a namespace that is gone (or
            # by another agent that used this node name): start afresh.
            self.pins.remove(self.digest)
            self._compile_and_pin(needed)
            self.origin = REPLACED if same_ns else COMPILED
        try:
            for obj in needed:
                for program in _PROGRAMS_OF[obj]:
                    self._progs[program] = self.pins.open(self.digest, obj, "prog", program)
                for name in self.pins.names(self.digest, obj, "map"):
                    if name in MAPS:
                        self._maps[(obj, name)] = RawMap.open_pinned(
                            self.pins.path(self.digest, obj, "map", name), name)
        except (PinError, OSError) as exc:
            raise DataPlaneError(f"opening the pinned data plane in {self.pin_dir}: {exc}") from None
        return record if same_ns else None

    def _pinned_whole(self, obj: str) -> bool:
        progs = set(self.pins.names(self.digest, obj, "prog"))
        return set(_PROGRAMS_OF[obj]) <= progs and bool(self.pins.names(self.digest, obj, "map"))

    def _compile_and_pin(self, objects: list[str]) -> None:
        sources = {_OBJECT_OF[p]: bpfobj.PROGRAMS[p].source for p in _OBJECT_OF}
        for obj in objects:
            bpf = bpfobj.compile_source(sources[obj], self.cflags)
            try:
                for program in _PROGRAMS_OF[obj]:
                    fn = bpfobj.load_function(bpf, bpfobj.PROGRAMS[program])
                    self.pins.pin(self.digest, obj, "prog", program, fn.fd)
                for name in MAPS:
                    try:
                        table = bpf[name.encode()]
                    except KeyError:
                        continue   # not in this object
                    self.pins.pin(self.digest, obj, "map", name, table.map_fd)
            except PinError as exc:
                raise DataPlaneError(str(exc)) from None
            finally:
                bpf.cleanup()   # the pins hold everything now

    def _write_record(self) -> None:
        self.pins.write_record({
            "node": self.node, "digest": self.digest, "netns_cookie": netns_cookie(),
            "pid": os.getpid(), "cflags": list(self.cflags),
            "prog_ids": sorted(_prog_id(fd) for fd in self._progs.values()),
            "attachments": [asdict(a) for a in self._attached],
        })

    # ---------------------------------------------------------------- attach
    def _hook_name(self, program: str) -> str:
        if program == "flow_stats_xdp":
            return f"xdp {self.xdp_mode}"
        return "tc ingress" if program in INGRESS_PROGRAMS else "tc egress"

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

    def _hook_up(self, att: Attachment, old_ids: set[int]) -> None:
        """Make the hook run our program: keep it if it already does, swap it
        in one step if an older qpagent program of ours is there, else add."""
        fd = self._progs[att.program]
        ours = _prog_id(fd)
        try:
            if att.program == "flow_stats_xdp":
                current = hooks.xdp_program(self._ipr, att.ifindex)
                if current == ours:
                    return
                if current is not None and current not in old_ids:
                    raise DataPlaneError(f"attaching {att.program} to {att.ifname} (XDP "
                                         f"{self.xdp_mode}) failed: another XDP program "
                                         f"(id {current}) is there")
                hooks.set_xdp(self._ipr, att.ifindex, fd, self.xdp_mode, replace=current is not None)
                return
            if not hooks.has_clsact(self._ipr, att.ifindex):
                hooks.add_clsact(self._ipr, att.ifindex)
                # Mark every attachment on this interface: whoever is removed
                # last removes the qdisc.
                att.added_clsact = True
            prio, parent = TC_PRIO[att.program], _tc_parent(att.program)
            current = hooks.egress_filters(self._ipr, att.ifindex, parent).get(prio)
            if current is not None and current[1] == ours:
                return
            if current is not None and current[1] not in old_ids:
                raise DataPlaneError(
                    f"{att.ifname}: a {att.hook} filter already sits at priority {prio:#x}; "
                    "remove it or stop the agent that put it there")
            hooks.set_egress_filter(self._ipr, att.ifindex, prio, fd,
                                    bpfobj.PROGRAMS[att.program].function,
                                    replace=current is not None, parent=parent)
        except hooks.HookError as exc:
            raise DataPlaneError(f"attaching {att.program} to {att.ifname} ({att.hook}) "
                                 f"failed: {exc}") from None

    # ---------------------------------------------------------------- detach
    def _detach_all(self) -> list[str]:
        """Remove our hooks (this process's, the record's, and any hook on a
        configured interface running a pinned program); then the clsact
        qdiscs added. Returns the errors."""
        record = self.pins.read_record() or {}
        ids = set(record.get("prog_ids", [])) | {_prog_id(fd) for fd in self._progs.values()}
        ids |= self._pinned_prog_ids()
        atts = list(self._attached)
        if record.get("netns_cookie") == netns_cookie():
            atts += [Attachment(**a) for a in record.get("attachments", [])]
        for program, dev in self._wanted:
            index = self._index_of(dev)
            if index is not None:
                atts.append(Attachment(program, self._hook_name(program), dev, index))
        errors = []
        done = set()
        for att in reversed(atts):
            key = (att.program, att.ifname, att.ifindex)
            if key in done or att.ifindex is None or self._index_of(att.ifname) != att.ifindex:
                continue   # seen, or the interface is gone and our hooks with it
            done.add(key)
            try:
                self._detach_one(att, ids)
            except Exception as exc:
                errors.append(f"{att.program} on {att.ifname}: {exc}")
        for index in {a.ifindex for a in atts if a.added_clsact and a.ifindex is not None}:
            name = next(a.ifname for a in atts if a.ifindex == index)
            if self._index_of(name) == index:
                try:
                    hooks.del_clsact(self._ipr, index)
                except NetlinkError as exc:
                    errors.append(f"clsact on {name}: {os.strerror(exc.code)}")
        return errors

    def _drop_unwanted(self, record: dict | None, ids: set[int]) -> None:
        """Hooks a previous agent attached that the configuration no longer
        names (an uplink taken out of it) lose our program and qdisc."""
        wanted = {(p, dev) for p, dev in self._wanted}
        stale = [Attachment(**a) for a in (record or {}).get("attachments", [])
                 if (a["program"], a["ifname"]) not in wanted]
        for att in stale:
            if att.ifindex is not None and self._index_of(att.ifname) == att.ifindex:
                self._detach_one(att, ids)
        ours = {a.ifindex for a in self._attached}
        for index in {a.ifindex for a in stale if a.added_clsact} - ours - {None}:
            name = next(a.ifname for a in stale if a.ifindex == index)
            if self._index_of(name) == index:
                hooks.del_clsact(self._ipr, index)

    def _detach_one(self, att: Attachment, ids: set[int]) -> None:
        if att.program == "flow_stats_xdp":
            current = hooks.xdp_program(self._ipr, att.ifindex)
            if current is not None and current in ids:
                hooks.del_xdp(self._ipr, att.ifindex, att.hook.split()[-1])
            return
        if not hooks.has_clsact(self._ipr, att.ifindex):
            return
        prio, parent = TC_PRIO[att.program], _tc_parent(att.program)
        current = hooks.egress_filters(self._ipr, att.ifindex, parent).get(prio)
        if current is not None and current[1] in ids:
            hooks.del_egress_filter(self._ipr, att.ifindex, prio, parent)

    def _pinned_prog_ids(self) -> set[int]:
        ids = set()
        for digest in self.pins.digests():
            for obj in self.pins.objects(digest):
                for program in self.pins.names(digest, obj, "prog"):
                    try:
                        fd = self.pins.open(digest, obj, "prog", program)
                    except PinError:
                        continue
                    try:
                        ids.add(_prog_id(fd))
                    finally:
                        os.close(fd)
        return ids


def _tc_parent(program: str) -> str:
    return hooks.INGRESS_PARENT if program in INGRESS_PROGRAMS else hooks.EGRESS_PARENT


def _prog_id(fd: int) -> int:
    return bpfsys.prog_info(fd).id


def _prog_info(fd: int) -> dict:
    """prog_id, run_cnt, run_time_ns of a loaded program (run_* stay 0 unless
    kernel.bpf_stats_enabled=1)."""
    try:
        info = bpfsys.prog_info(fd)
    except OSError:
        return {}
    return {"prog_id": info.id, "run_cnt": info.run_cnt, "run_time_ns": info.run_time_ns}
