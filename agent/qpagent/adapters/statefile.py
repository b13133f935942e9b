"""The core's path table on disk (JSON, replaced atomically), so that an
agent restarted over a pinned data plane gives every remote VTEP and path
the index it had: the QPs in the maps keep their ports."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("qpagent")

STATE_DIR = "/run/qpagent/state"
FORMAT = 1


class StateFile:
    def __init__(self, node: str, directory: str = STATE_DIR):
        self.path = Path(directory) / f"{node}.json"

    def load(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state %s: %s", self.path, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.warning("ignoring state %s: unknown format", self.path)
            return None
        return data

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, **state}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        try:
            self.path.parent.rmdir()   # only when empty
        except OSError:
            pass
