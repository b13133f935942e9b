"""The unit tests' agent snapshots still look like what a real agent says today.

tests/unit/test_metrics.py and test_cli.py read `qpagent status --json` and
`qpagent flows --json` saved from a real agent (tests/unit/fixtures). This
runs the same scenario again on two fresh VTEPs and compares the shape of
both answers with the saved ones: every key at every level, and every name
a user filters on (hooks, programs, parse outcomes, placement reasons,
data-plane events, event kinds). A renamed hook or a new field fails here
until the fixtures are regenerated.
"""

import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures"
sys.path.insert(0, str(FIXTURES))

from capture_agent_status import FLOWS_FILE, STATUS_FILE, capture  # noqa: E402


def keys_of(rows) -> list:
    """The distinct key sets of a list of records, sorted."""
    return sorted({tuple(sorted(row)) for row in rows})


def status_shape(snap: dict) -> dict:
    paths = [p for v in snap["vteps"] for p in v["paths"]]
    return {
        "keys": sorted(snap),
        "vtep keys": keys_of(snap["vteps"]),
        "path keys": keys_of(paths),
        "qp keys": keys_of(snap["qps"]),
        "bfd keys": sorted(snap["bfd"]),
        "reaction keys": sorted(snap["reaction_ms"]),
        "event keys": keys_of(snap["events"]),
        "event kinds": sorted({e["kind"] for e in snap["events"]}),
        "program keys": keys_of(snap["programs"]),
        "programs": sorted({(p["name"], p["hook"]) for p in snap["programs"]}),
        "parse keys": keys_of(snap["parse"]),
        "parse hooks": sorted({row["hook"] for row in snap["parse"]}),
        "replacement reasons": sorted(snap["replacements"]),
        "steer events": sorted(snap["steer_events"]),
        "pin events": sorted(snap["pin_events"]),
    }


def flows_shape(flows: list) -> dict:
    return {"keys": keys_of(flows), "hooks": sorted({f["hook"] for f in flows})}


def test_saved_snapshots_match_a_real_agent(twovtep2):
    status, flows = capture(twovtep2)
    saved_status = json.loads(STATUS_FILE.read_text())
    saved_flows = json.loads(FLOWS_FILE.read_text())
    assert status_shape(status) == status_shape(saved_status)
    assert flows_shape(flows) == flows_shape(saved_flows)
    # The names users filter on, spelled out once more.
    assert status_shape(status)["parse hooks"] == ["path_pin", "path_probe", "qp_steer",
                                                   "tc_egress", "xdp_ingress"]
    assert "redirected_neigh" in status["pin_events"]
