"""The few bpf(2) commands BCC 0.26 does not expose, through ctypes.

- prog_test_run: run a loaded program on a packet in the kernel
  (BPF_PROG_TEST_RUN), the base of the data-plane tests and benchmarks.
- prog_info: a program's id, name, tag and kernel run-time statistics
  (BPF_OBJ_GET_INFO_BY_FD).
- bpf_stats: keep the kernel's per-program run-time accounting on while a
  block runs (BPF_ENABLE_STATS, falling back to kernel.bpf_stats_enabled).
- map_lookup/update/delete/next_key, map_info: map access on a raw fd, so a
  map opened from bpffs needs no BCC object.
- obj_pin / obj_get: pin a program or map in bpffs and open it again.

Layouts follow include/uapi/linux/bpf.h; only x86_64 and aarch64 syscall
numbers are known.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from pathlib import Path

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

# struct __sk_buff and struct xdp_md sizes and the offsets tests use.
SK_BUFF_SIZE = 192
SK_BUFF_IFINDEX_OFFSET = 40
XDP_MD_SIZE = 24
XDP_MD_DATA_END_OFFSET = 4
XDP_MD_INGRESS_IFINDEX_OFFSET = 12

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfSyscallError(OSError):
    """A bpf(2) command failed; the message names the command and errno."""


class _TestAttr(ctypes.Structure):
    # union bpf_attr, the anonymous struct used by BPF_PROG_TEST_RUN.
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),    # next_key for BPF_MAP_GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
        ("_pad", ctypes.c_uint32),
    ]


class _MapInfo(ctypes.Structure):
    # struct bpf_map_info, the leading fields.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class _StatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info up to verified_insns (offsets checked against
    # the uapi header: id 4, tag 8, name 64, run_time_ns 192, run_cnt 200).
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


@dataclass(frozen=True)
class TestRunResult:
    __test__ = False     # not a pytest test class despite the name

    retval: int          # the program's return value (verdict)
    data_out: bytes      # the packet as the program left it
    duration_ns: int     # kernel-measured mean time per run
    ctx_out: bytes       # the context after the run (b"" when none given)


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    run_time_ns: int     # cumulative, counted only while stats are enabled
    run_cnt: int
    tag: str             # hex, as bpftool prints it


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise BpfSyscallError(errno.ENOSYS,
                              f"bpf(2) number unknown on {platform.machine()}")
    ret = _libc.syscall(nr, ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        name = errno.errorcode.get(err, str(err))
        raise BpfSyscallError(err, f"{what} failed: {name} ({os.strerror(err)})")
    return ret


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1,
                  ctx: bytes | None = None,
                  data_size_out: int | None = None) -> TestRunResult:
    """Run the program once (or `repeat` times) on `data` in the kernel.

    For tc programs `ctx` may be a struct __sk_buff (see skb_ctx); for XDP a
    struct xdp_md (see xdp_ctx). The packet comes back as the program left
    it, with the verdict and the mean duration per run.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be bytes")
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    size_out = data_size_out if data_size_out is not None else len(data) + 512
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    data_out = ctypes.create_string_buffer(size_out)
    ctx_in = ctx_out = None
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(bytes(ctx), len(ctx))
        ctx_out = ctypes.create_string_buffer(len(ctx))

    attr = _TestAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(data)
    attr.data_size_out = size_out
    attr.data_in = _addr(data_in)
    attr.data_out = _addr(data_out)
    attr.repeat = repeat
    if ctx is not None:
        attr.ctx_size_in = len(ctx)
        attr.ctx_size_out = len(ctx)
        attr.ctx_in = _addr(ctx_in)
        attr.ctx_out = _addr(ctx_out)
    _bpf(BPF_PROG_TEST_RUN, attr, f"BPF_PROG_TEST_RUN on fd {prog_fd}")
    return TestRunResult(
        retval=attr.retval,
        data_out=data_out.raw[:attr.data_size_out],
        duration_ns=attr.duration,
        ctx_out=ctx_out.raw[:attr.ctx_size_out] if ctx_out is not None else b"",
    )


def skb_ctx(ifindex: int = 0) -> bytes:
    """A struct __sk_buff for a tc test run.

    With ifindex set (the device must exist in the calling thread's network
    namespace) the kernel attaches the skb to that device, so skb->ifindex
    and helpers such as bpf_fib_lookup see it; 0 means the loopback device.
    """
    buf = bytearray(SK_BUFF_SIZE)
    buf[SK_BUFF_IFINDEX_OFFSET:SK_BUFF_IFINDEX_OFFSET + 4] = \
        int(ifindex).to_bytes(4, "little")
    return bytes(buf)


def xdp_ctx(ingress_ifindex: int, frame_len: int) -> bytes:
    """A struct xdp_md naming the receiving device (must exist in the netns).

    data_end must be the frame's length: the kernel takes the frame's end
    from it, and a 0 there hands the program an empty frame.
    """
    buf = bytearray(XDP_MD_SIZE)
    buf[XDP_MD_DATA_END_OFFSET:XDP_MD_DATA_END_OFFSET + 4] = \
        int(frame_len).to_bytes(4, "little")
    off = XDP_MD_INGRESS_IFINDEX_OFFSET
    buf[off:off + 4] = int(ingress_ifindex).to_bytes(4, "little")
    return bytes(buf)


def prog_info(prog_fd: int) -> ProgInfo:
    """Id, name, tag and run-time counters of a loaded program."""
    info = _ProgInfo()
    attr = _InfoAttr()
    attr.bpf_fd = prog_fd
    attr.info_len = ctypes.sizeof(info)
    attr.info = ctypes.addressof(info)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"BPF_OBJ_GET_INFO_BY_FD on fd {prog_fd}")
    return ProgInfo(
        id=info.id,
        name=info.name.decode(errors="replace"),
        run_time_ns=info.run_time_ns,
        run_cnt=info.run_cnt,
        tag=bytes(info.tag).hex(),
    )


def map_info(map_fd: int) -> MapInfo:
    """Type, id, key and value sizes, capacity and name of a map."""
    info = _MapInfo()
    attr = _InfoAttr(bpf_fd=map_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"BPF_OBJ_GET_INFO_BY_FD on map fd {map_fd}")
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.name.decode(errors="replace"))


def _elem(cmd: int, map_fd: int, key, value, flags: int, what: str) -> int:
    attr = _ElemAttr(map_fd=map_fd, key=_addr(key), value=_addr(value), flags=flags)
    return _bpf(cmd, attr, what)


def map_lookup(map_fd: int, key, value) -> bool:
    """Fill `value` (a ctypes buffer) with the entry for `key`; False if absent."""
    try:
        _elem(BPF_MAP_LOOKUP_ELEM, map_fd, key, value, 0, f"BPF_MAP_LOOKUP_ELEM on fd {map_fd}")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(map_fd: int, key, value, flags: int = 0) -> None:
    _elem(BPF_MAP_UPDATE_ELEM, map_fd, key, value, flags, f"BPF_MAP_UPDATE_ELEM on fd {map_fd}")


def map_delete(map_fd: int, key) -> bool:
    """Delete `key`; False if it was not there."""
    try:
        _elem(BPF_MAP_DELETE_ELEM, map_fd, key, None, 0, f"BPF_MAP_DELETE_ELEM on fd {map_fd}")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_next_key(map_fd: int, key, next_key) -> bool:
    """Fill `next_key` with the key after `key` (None: the first); False at the end."""
    try:
        _elem(BPF_MAP_GET_NEXT_KEY, map_fd, key, next_key, 0,
              f"BPF_MAP_GET_NEXT_KEY on fd {map_fd}")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def obj_pin(fd: int, path: str) -> None:
    """Pin a program or map at `path`, which must lie in a bpffs."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=_addr(name), bpf_fd=fd), f"BPF_OBJ_PIN at {path}")


def obj_get(path: str) -> int:
    """Open a pinned program or map; the caller owns the returned fd."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=_addr(name)), f"BPF_OBJ_GET of {path}")


def stats_enabled() -> bool:
    """Whether the kernel.bpf_stats_enabled sysctl is on. Stats kept on by a
    BPF_ENABLE_STATS holder (bpf_stats()) do not show here."""
    try:
        return STATS_SYSCTL.read_text().strip() == "1"
    except OSError:
        return False


def set_stats_enabled(on: bool) -> None:
    """Set kernel.bpf_stats_enabled. Prefer bpf_stats(), which cannot leak."""
    try:
        STATS_SYSCTL.write_text("1\n" if on else "0\n")
    except OSError as exc:
        raise BpfSyscallError(exc.errno or errno.EPERM,
                              f"cannot write {STATS_SYSCTL}: {exc.strerror}") from exc


@contextlib.contextmanager
def bpf_stats():
    """Keep per-program run-time accounting on inside the block.

    Uses BPF_ENABLE_STATS, whose file descriptor keeps the kernel counting
    until it is closed (so two users never switch each other off); kernels
    without it get the sysctl, restored afterwards.
    """
    attr = _StatsAttr(type=BPF_STATS_RUN_TIME)
    try:
        fd = _bpf(BPF_ENABLE_STATS, attr, "BPF_ENABLE_STATS")
    except BpfSyscallError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        fd = None
    if fd is not None:
        try:
            yield
        finally:
            os.close(fd)
        return
    was_on = stats_enabled()
    set_stats_enabled(True)
    try:
        yield
    finally:
        if not was_on:
            set_stats_enabled(False)
