"""What every live test needs: wait for a condition, stop a process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def wait_until(what: str, check, deadline_s: float = 10.0, every_s: float = 0.05):
    """Poll `check` until it returns something true, or fail naming `what`."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}; last: {last!r}")


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process group (the agent detaches on it), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
