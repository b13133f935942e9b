"""The bpf(2) wrappers: test runs, program info, run-time statistics, map
access on raw fds, pinning, errors."""

import ctypes
import os
import uuid

import pytest

from conftest import TC_ACT_UNSPEC
from qpagent import bpfsys, pins
from qpagent.contract import STEER_EVENT_NAMES
from qpagent.maps import RawMap, possible_cpus
from qt1_packets import roce


def test_prog_info_names_the_program_and_counts_runs_while_stats_are_on(steer):
    info = bpfsys.prog_info(steer.fn.fd)
    assert info.name == "qp_steer" and info.id > 0 and len(info.tag) == 16
    with bpfsys.bpf_stats():
        before = bpfsys.prog_info(steer.fn.fd)
        res = bpfsys.prog_test_run(steer.fn.fd, bytes(roce(1)), repeat=1000)
        after = bpfsys.prog_info(steer.fn.fd)
    assert res.retval == TC_ACT_UNSPEC and res.duration_ns > 0
    assert after.run_cnt - before.run_cnt == 1000
    assert after.run_time_ns > before.run_time_ns


def test_errors_name_the_command_and_errno():
    with pytest.raises(bpfsys.BpfSyscallError, match=r"BPF_PROG_TEST_RUN on fd 9999 failed: EBADF"):
        bpfsys.prog_test_run(9999, bytes(64))
    with pytest.raises(bpfsys.BpfSyscallError, match="EBADF"):
        bpfsys.prog_info(9999)


def test_a_frame_shorter_than_ethernet_is_refused_by_the_kernel(steer):
    with pytest.raises(bpfsys.BpfSyscallError, match="EINVAL"):
        bpfsys.prog_test_run(steer.fn.fd, bytes(13))


def test_a_ctx_naming_a_missing_device_is_refused(steer):
    with pytest.raises(bpfsys.BpfSyscallError, match="ENODEV"):
        bpfsys.prog_test_run(steer.fn.fd, bytes(roce(1)), ctx=bpfsys.skb_ctx(999_999))


def test_map_access_on_a_raw_fd(steer):
    fd = steer.table("mac_vtep").map_fd
    info = bpfsys.map_info(fd)
    assert (info.name, info.key_size, info.value_size) == ("mac_vtep", 8, 4)
    key, value, out = (ctypes.c_uint8 * 8)(2, 0, 0, 0, 0, 9), ctypes.c_uint32(7), ctypes.c_uint32()
    assert not bpfsys.map_lookup(fd, key, out)
    bpfsys.map_update(fd, key, value)
    assert bpfsys.map_lookup(fd, key, out) and out.value == 7
    first = (ctypes.c_uint8 * 8)()
    assert bpfsys.map_next_key(fd, None, first) and bytes(first) == bytes(key)
    assert not bpfsys.map_next_key(fd, key, first)
    assert bpfsys.map_delete(fd, key) and not bpfsys.map_delete(fd, key)


def test_a_per_cpu_map_reads_one_value_per_possible_cpu(steer):
    steer.clear_maps()
    events = RawMap.from_fd(steer.table("steer_events").map_fd, "steer_events")
    try:
        bpfsys.prog_test_run(steer.fn.fd, bytes(roce(1)))   # no VTEP known
        values = {name: events[i] for i, name in enumerate(STEER_EVENT_NAMES)}
        assert all(len(v) == possible_cpus() for v in values.values())
        assert {name: sum(v) for name, v in values.items() if sum(v)} == {"no_vtep": 1}
    finally:
        events.close()


def test_pin_then_open_gives_the_same_map():
    from bcc import BPF
    base = f"/run/qt-pins-{uuid.uuid4().hex[:8]}"
    mountpoint = os.path.join(base, "bpffs")
    bpf = BPF(text=b"BPF_ARRAY(probe_map, u64, 1); int f(void *c) { return 0; }")
    try:
        root = pins.ensure_bpffs(mountpoint)
        path = os.path.join(root, "probe_map")
        bpfsys.obj_pin(bpf[b"probe_map"].map_fd, path)
        try:
            fd = bpfsys.obj_get(path)
            try:
                assert bpfsys.map_info(fd).id == bpfsys.map_info(bpf[b"probe_map"].map_fd).id
            finally:
                os.close(fd)
            with pytest.raises(bpfsys.BpfSyscallError, match="BPF_OBJ_PIN .* EEXIST"):
                bpfsys.obj_pin(bpf[b"probe_map"].map_fd, path)
        finally:
            os.unlink(path)
        with pytest.raises(bpfsys.BpfSyscallError, match="BPF_OBJ_GET .* ENOENT"):
            bpfsys.obj_get(path)
    finally:
        bpf.cleanup()
        pins.unmount_bpffs(mountpoint)
        for d in (mountpoint, base):
            try:
                os.rmdir(d)
            except OSError:
                pass
