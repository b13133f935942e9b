"""Rendering the report's panels: the dashboard's own queries go out as range
queries, and what comes back is drawn. A tiny HTTP server stands in for
Prometheus here, for the drawing only; the live check against a real
Prometheus is in tests/live/test_dashboards.py."""

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qpagent import dashboard
from qplab.experiments import panels

T0, T1 = 1_700_000_000.0, 1_700_000_600.0


class FakePrometheus:
    """Answers /api/v1/query_range with two series for every query, or an
    error for queries containing `refuse`; remembers every query asked."""

    def __init__(self, refuse: str | None = None):
        self.asked: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                fake.asked.append({"path": url.path, **params})
                if refuse and refuse in params.get("query", ""):
                    body, code = {"status": "error", "errorType": "bad_data", "error": "parse error"}, 400
                else:
                    values = [[T0 + i * 60, str(i)] for i in range(11)]
                    body, code = {"status": "success", "data": {"resultType": "matrix", "result": [
                        {"metric": {"node": "leaf1", "vtep": "10.0.0.2", "path": str(p), "uplink": f"eth{p}",
                                    "cause": "route"}, "values": values} for p in (0, 1)]}}, 200
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakePrometheus()
    try:
        yield server
    finally:
        server.close()


def test_every_key_panel_is_drawn_from_the_dashboards_queries(fake, tmp_path):
    out = panels.render_panels(fake.url, T0, T1, tmp_path / "plots", scrape_interval="2s")
    assert [p.name for p in out] == ["panel-wan-load.png", "panel-qps-per-path.png",
                                     "panel-repairs.png", "panel-path-rtt.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out)
    # step 2 s (600 s / 300 points); $__rate_interval = max(2 + 2, 4 x 2) = 8 s
    values = {"node": ".*", "router": ".*", "reaction_window": "1h", "__interval": "2s",
              "__rate_interval": "8s", "__range": "600s"}
    wanted = [{"path": "/api/v1/query_range", "query": panels.expand(t.expr, values),
               "start": str(T0), "end": str(T1), "step": "2"}
              for k in dashboard.key_panels() for t in k.targets]
    assert fake.asked == wanted
    assert not any("$" in a["query"] for a in fake.asked)


def test_series_are_named_by_the_panels_legend(fake):
    got = panels.fetch_panels(fake.url, T0, T1, scrape_interval="2s")
    by_name = {k.name: [s.name for s in series] for k, series in got.items()}
    assert by_name["qps-per-path"] == ["leaf1 → 10.0.0.2 path 0 (eth0)", "leaf1 → 10.0.0.2 path 1 (eth1)"]
    assert by_name["repairs"] == ["leaf1 route", "leaf1 route"]


def test_a_refused_query_names_itself(tmp_path):
    server = FakePrometheus(refuse="qpagent_path_rtt_seconds")
    try:
        with pytest.raises(panels.PanelError, match="qpagent_path_rtt_seconds.*parse error"):
            panels.render_panels(server.url, T0, T1, tmp_path)
    finally:
        server.close()


def test_grafana_rate_interval():
    assert panels.grafana_values(0, 3600, panels.step_for(0, 3600), 2.0)["__rate_interval"] == "14s"
    assert panels.seconds("500ms") == 0.5 and panels.seconds("1m") == 60
