"""Network namespace helpers: which namespace we are in, and stepping into one.

`enter()` moves only the calling thread (setns on a thread is per-thread), so
sockets, BPF attachments and /proc/sys/net reads made inside the block act on
the named namespace, and the thread comes back afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def current_inode() -> int:
    """Inode of this thread's network namespace (unique while it lives)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def ns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"bad network namespace name: {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


@contextlib.contextmanager
def enter(name: str | None):
    """Run the block in network namespace `name` (None: stay where we are)."""
    if not name:
        yield
        return
    path = ns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"no such network namespace: {name}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
