"""Check FRR configuration files with FRR's own parser (`vtysh --dryrun -f FILE`).

FRR 8.4 reads the whole file without touching any daemon, exits 2 when a line
is not a command it knows, and names each such line on stderr:
`line 3: % Unknown command[25]:  bogus command`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

VTYSH = "vtysh"


def available() -> bool:
    return shutil.which(VTYSH) is not None


def dryrun(path: str | Path) -> list[str]:
    """Every problem FRR's parser finds in the file; empty when it accepts it."""
    res = subprocess.run([VTYSH, "--dryrun", "-f", str(path)], capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    lines = [line.strip() for line in (res.stderr + res.stdout).splitlines()
             if line.strip().startswith("line ")]
    if res.returncode != 0 and not lines:
        lines = [f"vtysh --dryrun exited with {res.returncode}: {(res.stderr or res.stdout).strip()}"]
    return [f"{path}: {line}" for line in lines]


def check_files(paths) -> list[str]:
    return [problem for p in paths for problem in dryrun(p)]
