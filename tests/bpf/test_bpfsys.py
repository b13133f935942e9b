"""The bpf(2) wrappers: test runs, program info, run-time statistics, errors."""

import pytest

from conftest import TC_ACT_UNSPEC
from qpagent import bpfsys
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
