"""Compile qpagent's BPF programs with BCC.

Every program lives in bpf/<name>.c and shares the headers in bpf/include/.
BCC compiles at load time against the running kernel's headers (see
agent/scripts/install-deps.sh for the fallback when none ship).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BPF_DIR = Path(os.environ.get("QPAGENT_BPF_DIR", REPO_ROOT / "bpf"))


@dataclass(frozen=True)
class ProgramSpec:
    source: str      # file under bpf/
    function: str    # C function name
    kind: str        # "sched_cls" or "xdp"


# The programs the agent knows, by the name it reports them under.
PROGRAMS = {
    "qp_steer": ProgramSpec("qp_steer.c", "qp_steer", "sched_cls"),
    # In qp_steer's object: it writes path_health, which qp_steer reads, and
    # a BCC object is the unit that shares maps.
    "path_probe": ProgramSpec("qp_steer.c", "path_probe", "sched_cls"),
    # Also qp_steer's: it notes in path_health when each request leaves.
    "probe_sent": ProgramSpec("qp_steer.c", "probe_sent", "sched_cls"),
    "path_pin": ProgramSpec("path_pin.c", "path_pin", "sched_cls"),
    "flow_stats_tc": ProgramSpec("flow_stats.c", "flow_stats_tc", "sched_cls"),
    "flow_stats_xdp": ProgramSpec("flow_stats.c", "flow_stats_xdp", "xdp"),
}


class BpfUnavailable(RuntimeError):
    """BCC is missing or the program does not compile/load."""


def compile_source(source: str, cflags: tuple[str, ...] = ()):
    """Compile bpf/<source> with BCC and return the BPF object."""
    try:
        from bcc import BPF  # Debian's python3-bpfcc
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BpfUnavailable(
            "BCC is not importable: install Debian's python3-bpfcc and use a "
            "venv made with --system-site-packages") from exc
    path = BPF_DIR / source
    if not path.is_file():
        raise BpfUnavailable(f"BPF source not found: {path}")
    flags = [f"-I{BPF_DIR / 'include'}", "-Wno-unused-function", *cflags]
    try:
        return BPF(src_file=str(path).encode(), cflags=flags)
    except Exception as exc:
        raise BpfUnavailable(f"compiling {source} failed: {exc}") from exc


def load_function(bpf, spec: ProgramSpec):
    """Load one function of a compiled object as its program type."""
    from bcc import BPF
    kind = BPF.SCHED_CLS if spec.kind == "sched_cls" else BPF.XDP
    try:
        return bpf.load_func(spec.function.encode(), kind)
    except Exception as exc:
        raise BpfUnavailable(
            f"the kernel refused {spec.function} ({spec.source}): {exc}") from exc
