"""Where a node's data plane is pinned, and what was pinned.

Layout (base = /run/qpagent, QPAGENT_PIN_BASE overrides it):

    base/bpffs/                        a bpffs mounted in the host's mount namespace
    base/bpffs/<node>/<digest>/<object>/prog_<function>
    base/bpffs/<node>/<digest>/<object>/map_<name>
    base/pinned/<node>.json            the record: digest, network namespace,
                                       attachments and the clsact qdiscs added

`ip netns exec` gives its command a mount namespace of its own with /sys
remounted, so /sys/fs/bpf there is not the host's and a bpffs mounted from
inside vanishes with the process. The bpffs is therefore mounted in the host's
mount namespace (PID 1's, or the outermost ancestor's we may look at), and
reached through /proc/<pid>/root by a process that does not share it; later
`ip netns exec` runs inherit it at its plain path. bpffs holds no
regular files, hence the record beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from qpagent import bpfsys

BASE = os.environ.get("QPAGENT_PIN_BASE", "/run/qpagent")
MNT_DETACH = 2
BPF_FS_MAGIC = 0xCAFE4A11
RECORD_FORMAT = 1
KERNEL_ITERATORS = {"maps.debug", "progs.debug"}   # what the kernel puts in a new bpffs
SO_NETNS_COOKIE = 71

_libc = ctypes.CDLL(None, use_errno=True)


class PinError(RuntimeError):
    """bpffs cannot be used or a pinned object cannot be opened."""


def _mount_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None   # gone, or not ours to look at (PID 1 may refuse even root)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def host_mount_pid() -> int | None:
    """A process in the host's mount namespace when ours is another one
    (`ip netns exec`), else None. PID 1 when it lets us look; otherwise the
    outermost ancestor we can see whose namespace differs from ours."""
    mine = _mount_ns("self")
    init = _mount_ns(1)
    if init is not None:
        return None if init == mine else 1
    outer, pid = None, os.getppid()
    while pid > 1:
        ns = _mount_ns(pid)
        if ns is None:
            break
        if ns != mine:
            outer = pid
        pid = _parent(pid)
    return outer


def host_path(path: str) -> str:
    """`path` as the host's mount namespace sees it, reachable from ours."""
    pid = host_mount_pid()
    return path if pid is None else f"/proc/{pid}/root{path}"


def is_bpffs(path: str) -> bool:
    buf = ctypes.create_string_buffer(256)     # struct statfs; f_type comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def ensure_bpffs(mountpoint: str) -> str:
    """Mount a bpffs at `mountpoint` in the host's mount namespace unless one
    is there; return the path through which this process reaches it."""
    if is_bpffs(mountpoint):      # mounted before our namespace was made
        return mountpoint
    with _mounting(mountpoint):
        return _ensure_bpffs(mountpoint)


@contextlib.contextmanager
def _mounting(mountpoint: str):
    """One process at a time looks for the bpffs and mounts it: agents
    starting side by side would each find none and mount one on the same
    directory, and each later mount hides the pins in the earlier ones. The
    lock is the parent directory itself, so it leaves no file behind."""
    parent = host_path(os.path.dirname(mountpoint.rstrip("/")) or "/")
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_bpffs(mountpoint: str) -> str:
    pid = host_mount_pid()
    reach = mountpoint if pid is None else f"/proc/{pid}/root{mountpoint}"
    if is_bpffs(reach):
        return reach
    os.makedirs(reach, mode=0o700, exist_ok=True)
    if pid is None:
        if _libc.mount(b"bpf", os.fsencode(mountpoint), b"bpf", 0, b"mode=0700") != 0:
            err = ctypes.get_errno()
            raise PinError(f"cannot mount bpffs at {mountpoint}: {os.strerror(err)}")
    else:
        done = subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", "mount", "-t", "bpf",
                               "-o", "mode=0700", "bpf", mountpoint],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise PinError(f"cannot mount bpffs at {mountpoint} in the host's mount "
                           f"namespace: {done.stderr.strip()}")
    if not is_bpffs(reach):
        raise PinError(f"{mountpoint} is not a bpffs after mounting one there")
    return reach


def _use_lock_path(mountpoint: str) -> str:
    return host_path(mountpoint.rstrip("/") + ".lock")


def hold_bpffs(mountpoint: str) -> int:
    """A shared lock on the bpffs at `mountpoint`, taken before it is
    mounted or used and held while pins are made or read: unmount_bpffs
    leaves a bpffs alone while anyone holds it (two agents, or an agent
    starting while another node's purge tidies up). Returns the fd."""
    path = _use_lock_path(mountpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:   # the file we locked is still the lock (an unmount may have removed it)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def unmount_bpffs(mountpoint: str) -> None:
    """Unmount our bpffs (host namespace) if it is empty and nobody holds it
    (hold_bpffs), and remove its lock file."""
    pid = host_mount_pid()
    reach = mountpoint if pid is None else f"/proc/{pid}/root{mountpoint}"
    lock_path = _use_lock_path(mountpoint)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return            # an agent is using it
        if not is_bpffs(reach) or set(os.listdir(reach)) - KERNEL_ITERATORS:
            return
        cmd = ["umount", mountpoint]
        if pid is not None:
            cmd = ["nsenter", f"--mount=/proc/{pid}/ns/mnt"] + cmd
        subprocess.run(cmd, capture_output=True, check=False)
        if pid is not None and is_bpffs(mountpoint):
            # Our own mount namespace (ip netns exec) holds a copy of the
            # mount that the host's umount does not reach when /run does not
            # propagate; while it stands, the directory is busy.
            _libc.umount2(os.fsencode(mountpoint), MNT_DETACH)
        try:
            os.rmdir(reach)
        except OSError:
            pass
        if fd is not None:
            os.unlink(lock_path)  # still held: a newcomer sees it gone and retries
    finally:
        if fd is not None:
            os.close(fd)


def tidy_base(base: str | None = None) -> None:
    """Leave nothing of qpagent under `base` once no node has anything
    there: unmount the bpffs when it holds no pinned set, then remove the
    directories left empty (never a file, never a set still pinned)."""
    base = base or BASE
    unmount_bpffs(os.path.join(base, "bpffs"))
    reach = host_path(base)
    for sub in ("pinned", "state", "locks", "bpffs", ""):
        try:
            os.rmdir(os.path.join(reach, sub))   # only when empty (and not mounted)
        except OSError:
            pass


def netns_cookie() -> int:
    """The current network namespace's cookie (never reused while up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def source_digest(bpf_dir: Path, cflags: tuple[str, ...]) -> str:
    """What a compile depends on: every source and header, the flags, the kernel."""
    h = hashlib.sha256()
    for path in sorted(list(Path(bpf_dir).glob("*.c")) + list(Path(bpf_dir).glob("include/*.h"))):
        h.update(str(path.relative_to(bpf_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(("\0".join(cflags)).encode() + b"\0")
    h.update(os.uname().release.encode())
    return h.hexdigest()[:16]


_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PinStore:
    """One node's pins and record."""

    def __init__(self, node: str, base: str | None = None):
        if not _NODE.fullmatch(node):
            raise PinError(f"node name {node!r} cannot name a pin directory "
                           "(letters, digits, '.', '_', '-')")
        self.node = node
        self.base = base or BASE
        self.mountpoint = os.path.join(self.base, "bpffs")
        self._root: str | None = None   # reachable path of the mountpoint
        self._held: int | None = None   # hold_bpffs() lock while we use it

    def close(self) -> None:
        """Stop using the bpffs (pins stay); the next use takes it again."""
        if self._held is not None:
            os.close(self._held)
            self._held = None
        self._root = None

    # ------------------------------------------------------------ places
    @property
    def node_dir(self) -> str:
        """Where the pins live, as the user sees it (host namespace)."""
        return os.path.join(self.mountpoint, self.node)

    def root(self, create: bool = True) -> str | None:
        if self._root is None:
            if create:
                if self._held is None:
                    self._held = hold_bpffs(self.mountpoint)
                self._root = ensure_bpffs(self.mountpoint)
            else:
                for reach in (self.mountpoint, host_path(self.mountpoint)):
                    if is_bpffs(reach):
                        self._root = reach
                        break
                else:
                    return None
        return self._root

    def _dir(self, digest: str, obj: str | None = None, create: bool = False) -> str:
        path = os.path.join(self.root(), self.node, digest, *([obj] if obj else []))
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    # ------------------------------------------------------------ pins
    def digests(self) -> list[str]:
        root = self.root(create=False)
        if root is None:
            return []
        try:
            return sorted(os.listdir(os.path.join(root, self.node)))
        except FileNotFoundError:
            return []

    def objects(self, digest: str) -> list[str]:
        try:
            return sorted(os.listdir(self._dir(digest)))
        except FileNotFoundError:
            return []

    def pin(self, digest: str, obj: str, kind: str, name: str, fd: int) -> None:
        path = os.path.join(self._dir(digest, obj, create=True), f"{kind}_{name}")
        try:
            bpfsys.obj_pin(fd, path)
        except bpfsys.BpfSyscallError as exc:
            if exc.errno != errno.EEXIST:
                raise PinError(f"pinning {kind} {name} of {obj}: {exc}") from None
            os.unlink(path)
            bpfsys.obj_pin(fd, path)

    def names(self, digest: str, obj: str, kind: str) -> list[str]:
        prefix = f"{kind}_"
        try:
            return sorted(n[len(prefix):] for n in os.listdir(self._dir(digest, obj))
                          if n.startswith(prefix))
        except FileNotFoundError:
            return []

    def path(self, digest: str, obj: str, kind: str, name: str) -> str:
        return os.path.join(self._dir(digest, obj), f"{kind}_{name}")

    def open(self, digest: str, obj: str, kind: str, name: str) -> int:
        """An fd on a pinned program or map (the caller closes it)."""
        try:
            return bpfsys.obj_get(self.path(digest, obj, kind, name))
        except bpfsys.BpfSyscallError as exc:
            raise PinError(f"opening pinned {kind} {name} of {obj}: {exc}") from None

    def remove(self, digest: str) -> None:
        """Unpin one set (running programs keep what they hold)."""
        root = self.root(create=False)
        if root is None:
            return
        shutil.rmtree(os.path.join(root, self.node, digest), ignore_errors=True)
        try:
            os.rmdir(os.path.join(root, self.node))
        except OSError:
            pass

    # ------------------------------------------------------------ record
    @property
    def record_path(self) -> str:
        return host_path(os.path.join(self.base, "pinned", f"{self.node}.json"))

    def read_record(self) -> dict | None:
        try:
            data = json.loads(Path(self.record_path).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == RECORD_FORMAT else None

    def write_record(self, record: dict) -> None:
        path = Path(self.record_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": RECORD_FORMAT, **record}, indent=1))
        os.replace(tmp, path)

    def remove_record(self) -> None:
        path = Path(self.record_path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        try:
            path.parent.rmdir()
        except OSError:
            pass


def remove_base(base: str) -> None:
    """Remove every node's pinned sets and records under `base`, then the
    base itself (a throw-away base, as tests and benchmarks use: a live
    agent's hooks are `qpagent purge`'s to remove, not this)."""
    root = PinStore("any", base).root(create=False)
    for node in (set(os.listdir(root)) - KERNEL_ITERATORS if root else ()):
        store = PinStore(node, base)
        for digest in store.digests():
            store.remove(digest)
        store.remove_record()
    tidy_base(base)
