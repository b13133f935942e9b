"""BPF maps on a raw file descriptor, typed by the contract's ctypes mirrors.

A map opened from bpffs (or taken from a freshly compiled object) is read and
written with bpf(2) directly, so an agent that adopts a pinned data plane
needs no BCC object. The interface is the subset of BCC's tables the agent
uses: Key/Leaf, [] get/set/del, get, keys, items, getvalue, clear; per-CPU
maps return one value per possible CPU (plain ints for integer values).
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

from qpagent import bpfsys
from qpagent.contract import MAPS, MapSpec

POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"


class MapLayoutError(RuntimeError):
    """The kernel's map does not have the layout the contract says."""


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key (the kernel's possible CPUs)."""
    with open(POSSIBLE_CPUS) as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class RawMap:
    """One map by fd; the fd is owned (closed by close())."""

    def __init__(self, fd: int, spec: MapSpec):
        self.fd = fd
        self.spec = spec
        self.Key = spec.key
        self.Leaf = spec.value
        self._scalar = issubclass(spec.value, ctypes._SimpleCData)
        self._ncpu = possible_cpus() if spec.percpu else 1
        # Per-CPU values are laid out with an 8-byte stride.
        self._stride = (ctypes.sizeof(spec.value) + 7) // 8 * 8 if spec.percpu else \
            ctypes.sizeof(spec.value)
        info = bpfsys.map_info(fd)
        if (info.key_size, info.value_size) != (ctypes.sizeof(spec.key), ctypes.sizeof(spec.value)):
            raise MapLayoutError(
                f"map {spec.name}: kernel key/value sizes {info.key_size}/{info.value_size}, "
                f"contract {ctypes.sizeof(spec.key)}/{ctypes.sizeof(spec.value)}")
        self.map_id = info.id

    @classmethod
    def open_pinned(cls, path: str, name: str) -> "RawMap":
        fd = bpfsys.obj_get(path)
        try:
            return cls(fd, MAPS[name])
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, name: str) -> "RawMap":
        """Wrap a duplicate of someone else's fd (e.g. a BCC table's)."""
        own = os.dup(fd)
        try:
            return cls(own, MAPS[name])
        except BaseException:
            os.close(own)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------ access
    def _key(self, key):
        if isinstance(key, int) and self._scalar_key():
            return self.Key(key)
        return key

    def _scalar_key(self) -> bool:
        return issubclass(self.Key, ctypes._SimpleCData)

    def _buffer(self):
        return ctypes.create_string_buffer(self._stride * self._ncpu)

    def _decode(self, buf):
        if not self.spec.percpu:
            return self.Leaf.from_buffer_copy(buf.raw[:ctypes.sizeof(self.Leaf)])
        size = ctypes.sizeof(self.Leaf)
        out = []
        for cpu in range(self._ncpu):
            leaf = self.Leaf.from_buffer_copy(buf.raw[cpu * self._stride:cpu * self._stride + size])
            out.append(leaf.value if self._scalar else leaf)
        return out

    def getvalue(self, key):
        buf = self._buffer()
        if not bpfsys.map_lookup(self.fd, self._key(key), buf):
            raise KeyError(key)
        return self._decode(buf)

    __getitem__ = getvalue

    def get(self, key, default=None):
        try:
            return self.getvalue(key)
        except KeyError:
            return default

    def __setitem__(self, key, value) -> None:
        if self.spec.percpu:
            buf = self._buffer()
            values = value if isinstance(value, (list, tuple)) else [value] * self._ncpu
            for cpu, v in enumerate(values):
                v = self.Leaf(v) if not isinstance(v, self.Leaf) else v
                ctypes.memmove(ctypes.addressof(buf) + cpu * self._stride, ctypes.addressof(v),
                               ctypes.sizeof(self.Leaf))
            bpfsys.map_update(self.fd, self._key(key), buf)
            return
        if not isinstance(value, self.Leaf):
            value = self.Leaf(value)
        bpfsys.map_update(self.fd, self._key(key), value)

    def __delitem__(self, key) -> None:
        if not bpfsys.map_delete(self.fd, self._key(key)):
            raise KeyError(key)

    def keys(self):
        """All keys, read before returning (safe to delete while iterating)."""
        out = []
        prev = None
        while True:
            nxt = self.Key()
            if not bpfsys.map_next_key(self.fd, prev, nxt):
                return out
            out.append(nxt)
            prev = nxt

    def items(self):
        out = []
        for key in self.keys():
            value = self.get(key)
            if value is not None:   # deleted meanwhile
                out.append((key, value))
        return out

    def values(self):
        return [v for _, v in self.items()]

    def clear(self) -> None:
        if self.spec.kind.endswith("array"):
            zero = self.Leaf()
            for key in self.keys():
                self[key] = [zero] * self._ncpu if self.spec.percpu else zero
            return
        for key in self.keys():
            try:
                del self[key]
            except KeyError:
                pass


class BccTables:
    """Raw-fd maps over compiled BCC objects, by object ("steer", "pin",
    "flows"): the same `table()` a DataPlane offers, for tests and tools
    that compile programs themselves."""

    def __init__(self, **objects):
        self._objects = objects
        self._open: dict[tuple[str, str], RawMap] = {}

    def table(self, obj: str, name: str) -> RawMap | None:
        if (obj, name) not in self._open:
            bpf = self._objects.get(obj)
            if bpf is None:
                return None
            try:
                bcc_table = bpf[name.encode()]
            except KeyError:
                return None
            self._open[(obj, name)] = RawMap.from_fd(bcc_table.map_fd, name)
        return self._open[(obj, name)]

    def close(self) -> None:
        for m in self._open.values():
            m.close()
        self._open = {}
