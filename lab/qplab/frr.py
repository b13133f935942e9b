"""One FRR instance per router namespace: files, daemons, vtysh.

Each instance uses FRR's path space (`-N NAME`): config in /etc/frr/NAME/,
sockets and pid files in /var/run/frr/NAME/. The system's own FRR (no -N) is
never touched.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path


FRR_BIN = Path("/usr/lib/frr")
FRR_ETC = Path("/etc/frr")
FRR_RUN = Path("/var/run/frr")
DAEMONS = ("zebra", "bgpd", "bfdd", "staticd")


class FrrError(RuntimeError):
    pass


def etc_dir(name: str) -> Path:
    return FRR_ETC / name


def run_dir(name: str) -> Path:
    return FRR_RUN / name


def _frr_ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam("frr").pw_uid, grp.getgrnam("frr").gr_gid
    except KeyError:
        raise FrrError("user 'frr' not found: is Debian's frr package installed?") from None


def write_config(name: str, frr_conf: str) -> None:
    uid, gid = _frr_ids()
    for d in (etc_dir(name), run_dir(name)):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
        os.chmod(d, 0o755)
    for fname, text in (("frr.conf", frr_conf), ("vtysh.conf", "")):
        p = etc_dir(name) / fname
        p.write_text(text)
        os.chown(p, uid, gid)
        os.chmod(p, 0o640)


def start_daemons(ns: str, name: str) -> list[subprocess.Popen]:
    """Start zebra first (the others connect to it), then the rest; all daemonize."""
    procs = []
    for daemon in DAEMONS:
        cmd = ["ip", "netns", "exec", ns, str(FRR_BIN / daemon), "-N", name, "-d",
               "-i", str(run_dir(name) / f"{daemon}.pid")]
        if daemon == "zebra":
            cmd += ["-s", "16777216"]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True))
        if daemon == "zebra":
            _wait_for(lambda: (run_dir(name) / "zserv.api").exists(), 10, f"{name}: zebra did not start")
    return procs


def daemons_ready(name: str) -> bool:
    return all((run_dir(name) / f"{d}.vty").exists() for d in DAEMONS)


def apply_config(name: str) -> None:
    res = subprocess.run(["vtysh", "-N", name, "-b"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise FrrError(f"{name}: vtysh -b failed: {(res.stderr or res.stdout).strip()[-500:]}")


def vtysh(name: str, command: str, timeout: float = 10) -> str:
    res = subprocess.run(["vtysh", "-N", name, "-c", command], capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise FrrError(f"{name}: vtysh -c '{command}' failed: {(res.stderr or res.stdout).strip()}")
    return res.stdout


def vtysh_json(name: str, command: str, timeout: float = 10):
    out = vtysh(name, command, timeout)
    try:
        return json.loads(out) if out.strip() else {}
    except json.JSONDecodeError:
        raise FrrError(f"{name}: '{command}' did not return JSON: {out[:200]}") from None


def daemon_pids(name: str) -> list[int]:
    pids = []
    for d in DAEMONS:
        try:
            pids.append(int((run_dir(name) / f"{d}.pid").read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


def remove_files(prefix: str) -> None:
    """Drop every path-space directory of a lab (never the system's own files)."""
    for base in (FRR_ETC, FRR_RUN):
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if d.is_dir() and d.name.startswith(prefix):
                shutil.rmtree(d, ignore_errors=True)


def _wait_for(cond, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise FrrError(message)
        time.sleep(0.02)
