"""Pins made from inside `ip netns exec` outlive the process.

`ip netns exec` gives its command a mount namespace of its own with /sys
remounted: a bpffs mounted there dies with the process. qpagent.pins mounts
its bpffs in the host's mount namespace instead; this checks it for real.
"""

import os
import subprocess
import sys
import uuid

import pytest

from qpagent import pins

PIN_ONE_MAP = """
import os, sys
from bcc import BPF
from qpagent import bpfsys, pins
root = pins.ensure_bpffs(sys.argv[1])
bpf = BPF(text=b"BPF_ARRAY(kept, u64, 1); int f(void *c) { return 0; }")
table = bpf[b"kept"]
table[table.Key(0)] = table.Leaf(4242)
bpfsys.obj_pin(table.map_fd, os.path.join(root, "kept"))
print(root)
"""

READ_IT_BACK = """
import ctypes, os, sys
from qpagent import bpfsys, pins
from qpagent.contract import MapSpec
from qpagent.maps import RawMap
spec = MapSpec("kept", "array", ctypes.c_uint32, ctypes.c_uint64, 1)
kept = RawMap(bpfsys.obj_get(os.path.join(sys.argv[1], "kept")), spec)
print(kept[0].value, pins.is_bpffs(sys.argv[1]))
"""


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"qt-pins-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_pin_made_inside_ip_netns_exec_outlives_it(netns):
    mountpoint = f"/run/{netns}/bpffs"
    try:
        made = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", PIN_ONE_MAP,
                               mountpoint], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip() != mountpoint   # reached through the host's namespace
        # The process is gone; the host sees the bpffs and the map in it ...
        assert pins.is_bpffs(mountpoint)
        assert os.path.exists(os.path.join(mountpoint, "kept"))
        # ... and so does a later `ip netns exec`, at the plain path, value intact.
        read = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", READ_IT_BACK,
                               mountpoint], capture_output=True, text=True, timeout=60)
        assert (read.returncode, read.stdout.split()) == (0, ["4242", "True"]), read.stderr
    finally:
        try:
            os.unlink(os.path.join(mountpoint, "kept"))
        except FileNotFoundError:
            pass
        pins.unmount_bpffs(mountpoint)
        for d in (mountpoint, os.path.dirname(mountpoint)):
            try:
                os.rmdir(d)
            except OSError:
                pass


MOUNT_AT_ONCE = """
import multiprocessing as mp, sys, time
from qpagent import pins
# Widen the window between finding no bpffs and mounting one, so that
# processes racing through it without the lock would all mount.
real_is_bpffs = pins.is_bpffs
def slow_is_bpffs(path):
    found = real_is_bpffs(path)
    time.sleep(0.2)
    return found
pins.is_bpffs = slow_is_bpffs
def one(barrier, mountpoint):
    barrier.wait()
    pins.ensure_bpffs(mountpoint)
if __name__ == "__main__":
    n, mountpoint = int(sys.argv[1]), sys.argv[2]
    barrier = mp.Barrier(n)
    procs = [mp.Process(target=one, args=(barrier, mountpoint)) for _ in range(n)]
    for p in procs: p.start()
    for p in procs: p.join()
    sys.exit(max(p.exitcode for p in procs))
"""


def bpf_mounts_at(path: str) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == path and " - bpf " in line)


def test_agents_starting_side_by_side_mount_one_bpffs(tmp_path):
    """Six processes that find no bpffs at the same moment mount one, not six
    stacked on the same directory (a later mount hides the earlier one's pins)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = f"/run/qt-mount-{uuid.uuid4().hex[:8]}"
    mountpoint = f"{base}/bpffs"
    try:
        ran = subprocess.run([sys.executable, "-c", MOUNT_AT_ONCE, "6", mountpoint],
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert pins.is_bpffs(mountpoint)
        assert bpf_mounts_at(mountpoint) == 1
    finally:
        while bpf_mounts_at(mountpoint):
            subprocess.run(["umount", mountpoint], check=False)
        subprocess.run(["rm", "-rf", base], check=False)
