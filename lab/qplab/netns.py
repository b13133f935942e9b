"""Thin wrappers over `ip`, `tc` and `ip netns exec`: the only place that shells out."""
from __future__ import annotations

import os
import signal
import subprocess
import time


class CommandError(RuntimeError):
    pass


def run(cmd: list[str], input: str | None = None, check=True, timeout=30) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise CommandError(f"command not found: {cmd[0]}") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"timed out after {timeout}s: {' '.join(cmd)}") from None
    if check and res.returncode != 0:
        raise CommandError(f"{' '.join(cmd)} failed ({res.returncode}): "
                           f"{(res.stderr or res.stdout).strip()}")
    return res


def ip_batch(lines: list[str], ns: str | None = None) -> None:
    """Many `ip` commands in one process (much faster than one each)."""
    if not lines:
        return
    cmd = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    run(cmd, input="\n".join(lines) + "\n")


def ns_exec(ns: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return run(["ip", "netns", "exec", ns] + cmd, **kw)


def spawn(ns: str, cmd: list[str], log_path: str) -> subprocess.Popen:
    """Start a long-lived process inside a namespace, detached from our session
    (so a Ctrl-C on the terminal does not reach it before we tear down)."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(["ip", "netns", "exec", ns] + cmd, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


def list_namespaces(prefix: str) -> list[str]:
    res = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def namespace_pids(ns: str) -> list[int]:
    res = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def kill_pids(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    alive = set(pids)
    for pid in list(alive):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            alive.discard(pid)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            if not _running(pid):
                alive.discard(pid)
        if alive:
            time.sleep(0.02)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _running(p)}
        if alive:
            time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)   # reap our own children
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def root_links(prefix: str) -> list[str]:
    res = run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in res.stdout.splitlines():
        parts = line.split(": ")
        if len(parts) > 1:
            name = parts[1].split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    return names
