"""A real Prometheus server run inside a test's network namespace, and the
Grafana-side work the dashboard tests need: expanding template variables the
way Grafana would before it sends a panel's query.

Everything talks HTTP from inside the namespace (the thread steps in with
setns for each request), so nothing listens outside the namespaces the test
made.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from processes import stop_group
from qpagent import netnsutil

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# What Grafana puts in place of its built-in variables (scrape interval 1 s).
GRAFANA_BUILTINS = {
    "__rate_interval": "10s",
    "__interval": "2s",
    "__interval_ms": "2000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

CONFIG = """\
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: qpagent
    static_configs:
      - targets: [{targets}]
"""

# No proxy from the environment: every request goes to the namespace's loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_ports(netns: str, count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 inside `netns`."""
    socks = []
    with netnsutil.enter(netns):
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()


def http_get(netns: str, url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET from inside `netns`; (status, body), also for HTTP error statuses."""
    with netnsutil.enter(netns):
        try:
            with _OPENER.open(url, timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class Prometheus:
    """`prometheus` scraping `targets` every `interval`, on 127.0.0.1 in `netns`."""

    def __init__(self, netns: str, targets: list[str], port: int, interval: str = "1s"):
        self.netns = netns
        self.port = port
        self.workdir = tempfile.mkdtemp(prefix="qt6-prometheus-")
        self.config = Path(self.workdir, "prometheus.yml")
        self.config.write_text(CONFIG.format(interval=interval,
                                             targets=", ".join(f'"{t}"' for t in targets)))
        self.log_path = Path(self.workdir, "prometheus.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, PROMETHEUS,
             f"--config.file={self.config}",
             f"--storage.tsdb.path={Path(self.workdir, 'data')}",
             f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-3000:]

    def api(self, path: str, **params) -> dict:
        """One Prometheus HTTP API call; the JSON answer (status "error" included)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(self.netns, f"{self.base}{path}?{query}")
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {status}, not JSON: {body[:200]!r}"}

    def query(self, expr: str) -> dict:
        return self.api("/api/v1/query", query=expr)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            return http_get(self.netns, f"{self.base}/-/ready", timeout_s=1)[0] == 200
        except OSError:
            return False

    def target_health(self) -> dict[str, str]:
        """Scrape URL -> health ("up", "down", "unknown") of every active target."""
        answer = self.api("/api/v1/targets", state="active")
        return {t["scrapeUrl"]: t["health"] for t in answer.get("data", {}).get("activeTargets", [])}

    def stop(self) -> None:
        try:
            stop_group(self.proc, 10)
        finally:
            self._log.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------- Grafana side

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboard_variables(dashboard: dict, chosen: dict[str, str]) -> dict[str, str]:
    """Values for every template variable: `chosen` first (query variables such
    as node), then each custom/interval/constant variable's current value."""
    values = dict(GRAFANA_BUILTINS)
    for var in dashboard.get("templating", {}).get("list", []):
        current = (var.get("current") or {}).get("value")
        if var.get("type") in ("custom", "interval", "constant", "textbox") and current:
            values[var["name"]] = current if isinstance(current, str) else current[0]
    values.update(chosen)
    return values


def expand(expr: str, values: dict[str, str]) -> str:
    """The query Grafana sends for `expr`; an unknown variable is an error."""
    def one(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"unknown template variable ${name} in {expr!r}")
        return values[name]
    return _VARIABLE.sub(one, expr)


def panel_targets(dashboard: dict):
    """(panel title, refId, target) for every query target, rows' panels included."""
    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))
    for panel in walk(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            yield panel["title"], target.get("refId", "?"), target
