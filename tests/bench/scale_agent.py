"""`qpagent run` for the scale benchmark: its own node name, pin base, data
plane sources (a copy of bpf/ whose flow table may be larger) and metrics
port inside the VTEP's namespace; stopped and purged, pins unmounted, on exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from agent_config import write_agent_config
from processes import stop_group, wait_until

from qpagent import netnsutil, pins

REPO = Path(__file__).resolve().parents[2]
QPAGENT = str(Path(sys.executable).parent / "qpagent")
METRICS_PORT = 9464

def bpf_sources(workdir: str, max_flows: int | None) -> str:
    """A copy of the data plane's sources, with the flow table's capacity
    fixed at compile time when asked (MAX_FLOWS is a compile-time size)."""
    dest = os.path.join(workdir, "bpf")
    shutil.copytree(REPO / "bpf", dest)
    if max_flows:
        consts = Path(dest, "include", "consts.h")
        consts.write_text(f"#define MAX_FLOWS {max_flows}\n" + consts.read_text())
    return dest


class ScaleAgent:
    def __init__(self, topo, workdir: str, vxlan: str, max_flows: int | None):
        self.topo = topo
        self.workdir = workdir
        self.node = f"qtscale-{uuid.uuid4().hex[:8]}"
        self.pin_base = f"/run/qtscale-pins-{uuid.uuid4().hex[:8]}"
        self.socket = os.path.join(workdir, "agent.sock")
        self.config = os.path.join(workdir, "agent.toml")
        # Liveness stays off (the default): the core namespace runs no agent to answer.
        write_agent_config(self.config, node=self.node, socket=self.socket, vxlan=vxlan,
                           uplinks=topo.uplinks, metrics_address=f"127.0.0.1:{METRICS_PORT}",
                           top_qps=1000, count_xdp=[*topo.uplinks, "hostlink"])
        self.bpf_dir = bpf_sources(workdir, max_flows)
        self.proc = None
        self.log = None

    def env(self) -> dict:
        return dict(os.environ, QPAGENT_PIN_BASE=self.pin_base, QPAGENT_BPF_DIR=self.bpf_dir)

    def start(self, deadline_s: float = 180) -> float:
        self.log = open(os.path.join(self.workdir, "agent.log"), "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.topo.vtep_ns, QPAGENT, "run", "--config", self.config],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env())
        wait_until("the agent's control socket", self.status, deadline_s=deadline_s, every_s=0.1)
        return time.monotonic() - t0

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        if self.proc.poll() is not None:
            raise AssertionError(f"qpagent exited with {self.proc.returncode}:\n{self.log_text()}")
        return subprocess.run([QPAGENT, *args, "--socket", self.socket], capture_output=True,
                              text=True, timeout=timeout)

    def status(self, top: int = 1000) -> dict | None:
        done = self.cli("status", "--json", "--top", str(top))
        return json.loads(done.stdout) if done.returncode == 0 else None

    def scrape(self) -> bytes:
        with netnsutil.enter(self.topo.vtep_ns):
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics",
                                        timeout=60) as reply:
                return reply.read()

    def memory_kib(self) -> dict:
        """The agent's resident set now and at its peak (kB, from /proc)."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0])
        return {"rss_kib": fields.get("VmRSS"), "peak_rss_kib": fields.get("VmHWM")}

    def pinned_map_path(self, obj: str, name: str) -> str:
        store = pins.PinStore(self.node, self.pin_base)
        digests = store.digests()
        if len(digests) != 1:
            raise AssertionError(f"expected one pinned set, found {digests}")
        return store.path(digests[0], obj, "map", name)

    def log_text(self) -> str:
        if self.log:
            self.log.flush()
        return Path(self.workdir, "agent.log").read_text()

    def stop(self) -> None:
        """Stop, purge the pinned data plane, remove the pin base: nothing left."""
        if self.proc is not None:
            stop_group(self.proc, 15)
        if self.log:
            self.log.close()
        subprocess.run(["ip", "netns", "exec", self.topo.vtep_ns, QPAGENT, "purge",
                        "--config", self.config], capture_output=True, timeout=60, env=self.env())
        store = pins.PinStore(self.node, self.pin_base)
        for digest in store.digests():
            store.remove(digest)
        store.remove_record()
        pins.unmount_bpffs(os.path.join(self.pin_base, "bpffs"))
        shutil.rmtree(self.pin_base, ignore_errors=True)


def workdir() -> str:
    return tempfile.mkdtemp(prefix="qtscale-")
