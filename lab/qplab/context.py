"""Where one lab lives: its namespace prefix and its run directory.

Two labs can coexist (the user's `qpl-` lab and a test's lab) as long as they
differ in prefix, run directory and management subnet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PREFIX = "qpl-"
DEFAULT_RUN_DIR = Path("/run/qplab")
AGENT_SOCKET_DIR = Path("/run/qpagent")


@dataclass(frozen=True)
class LabContext:
    prefix: str = DEFAULT_PREFIX
    run_dir: Path = DEFAULT_RUN_DIR

    @classmethod
    def from_env(cls) -> "LabContext":
        """QPLAB_PREFIX / QPLAB_RUN_DIR let a second lab run beside the default one."""
        prefix = os.environ.get("QPLAB_PREFIX", DEFAULT_PREFIX)
        run_dir = Path(os.environ.get("QPLAB_RUN_DIR", str(DEFAULT_RUN_DIR)))
        return cls(prefix, run_dir)

    def ns(self, node: str) -> str:
        """Namespace name of a node; also its FRR path-space name (-N)."""
        return self.prefix + node

    @property
    def mgmt_bridge(self) -> str:
        return self.prefix + "mgmt"

    def mgmt_veth(self, index: int) -> str:
        return f"{self.prefix}m{index}"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    def agent_socket(self, node: str) -> Path:
        return AGENT_SOCKET_DIR / f"{self.ns(node)}.sock"

    def wan_socket(self, wan: str) -> Path:
        return self.run_dir / "wan" / f"{wan}.sock"
