"""Session-wide checks shared by every test directory."""

import os

import pytest

RUN_BASE = "/run/qpagent"   # where the agent keeps pins, records, locks and state


def _bpffs_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)


def _under(base: str) -> set[str]:
    """Every path below `base` (and whether its bpffs is mounted), as a set."""
    found = set()
    for root, dirs, files in os.walk(base):
        found.update(os.path.join(root, n) for n in dirs + files)
    if os.path.isdir(base):
        found.add(base)
    if _bpffs_mounted(os.path.join(base, "bpffs")):
        found.add("bpffs mounted at " + os.path.join(base, "bpffs"))
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_under_run_qpagent():
    """The suite leaves the machine as it found it: no pinned set, record,
    lock file, state file or bpffs mount of qpagent that was not there before."""
    before = _under(RUN_BASE)
    yield
    left = sorted(_under(RUN_BASE) - before)
    assert not left, "left behind by the test session:\n  " + "\n  ".join(left)
