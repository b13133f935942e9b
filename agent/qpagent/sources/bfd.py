"""FRR's BFD peers, asked through vtysh. FRR missing or misbehaving is an
answer (available=False with the reason), not an error."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from qpagent.core.inputs import BfdSeen
from qpagent.sources.signals import BfdChanged


@dataclass
class BfdResult:
    available: bool
    reason: str | None = None
    peers: list[dict] = field(default_factory=list)


# Keys every peer dict carries, whatever FRR version answered.
_PEER_KEYS = ("peer", "local", "interface", "status", "diagnostic", "uptime",
              "downtime", "remote-diagnostic", "vrf", "multihop")


def _normalise_peer(raw: dict) -> dict:
    peer = {key: raw.get(key) for key in _PEER_KEYS}
    peer.update({k: v for k, v in raw.items() if k not in peer})
    return peer


class BfdPoller:
    """FRR's BFD peer table via `vtysh [-N ns] -c 'show bfd peers json'`."""

    def __init__(self, namespace: str | None = None, vtysh: str = "vtysh", timeout_s: float = 3.0):
        self.namespace = namespace or None
        self.vtysh = vtysh
        self.timeout_s = timeout_s

    def command(self) -> list[str]:
        cmd = [self.vtysh]
        if self.namespace:
            cmd += ["-N", self.namespace]
        return cmd + ["-c", "show bfd peers json"]

    def poll(self) -> BfdResult:
        exe = shutil.which(self.vtysh)
        if exe is None:
            return BfdResult(False, f"{self.vtysh} not found on PATH (is FRR installed?)")
        cmd = [exe, *self.command()[1:]]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return BfdResult(False, f"{' '.join(cmd)} timed out after {self.timeout_s:g}s")
        except OSError as exc:
            return BfdResult(False, f"cannot run {exe}: {exc.strerror or exc}")
        out, err = done.stdout.strip(), done.stderr.strip()
        if done.returncode != 0:
            detail = _first_line(err) or _first_line(out) or "no output"
            return BfdResult(False, f"vtysh exited with {done.returncode}: {detail}")
        try:
            data = json.loads(out) if out else None
        except json.JSONDecodeError:
            return BfdResult(False, f"vtysh did not answer JSON (is bfdd running?): {_first_line(out)!r}")
        if isinstance(data, dict):  # some versions wrap peers in an object
            data = data.get("peers", [data] if "peer" in data else [])
        if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
            return BfdResult(False, f"unexpected BFD JSON shape: {type(data).__name__}")
        return BfdResult(True, None, [_normalise_peer(p) for p in data])


def bfd_seen(result: BfdResult, uplinks: set[str]) -> BfdSeen:
    """The core's view of one poll: which managed uplinks have a peer not up."""
    down = frozenset(p.get("interface") for p in result.peers
                     if p.get("status") not in ("up", None) and p.get("interface") in uplinks)
    return BfdSeen(result.available, result.reason, tuple(dict(p) for p in result.peers), down)


class BfdWatcher:
    """Polls BFD every `interval` seconds in a thread; queues a BfdChanged
    for the first poll and whenever the peers' state changes."""

    def __init__(self, poller: BfdPoller, uplinks: set[str], events: queue.Queue,
                 interval: float):
        self.poller, self.uplinks, self.events, self.interval = poller, set(uplinks), events, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "BfdWatcher":
        self._thread = threading.Thread(target=self._run, name="qpagent-bfd", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            seen = bfd_seen(self.poller.poll(), self.uplinks)
            state = (seen.available, seen.reason,
                     tuple((p.get("peer"), p.get("interface"), p.get("status"), p.get("diagnostic"))
                           for p in seen.peers))
            if state != last:
                self.events.put(BfdChanged(seen, time.monotonic()))
                last = state
            self._stop.wait(self.interval)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""
