"""The ContainerLab export, checked as far as this machine allows: every FRR
config it writes passes FRR's own parser (`vtysh --dryrun`, real), and the
topology file round-trips through the lab's own loader to the same plan."""
import copy
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from qplab import frrcheck
from qplab.export import containerlab
from qplab.plan import build_plan
from qplab.topology import TopologyError, load_topology, parse_topology

needs_vtysh = pytest.mark.skipif(not shutil.which("vtysh"), reason="FRR's vtysh not installed")

# Another shape than the default: three DCs, unequal spines, a DC without
# borders' twin, a leaf without agent, two VNIs, WAN links each their own.
THREE_DC = {
    "name": "three-dc",
    "bfd": {"profile": "wan", "interval_ms": 50, "multiplier": 5},
    "addressing": {"loopbacks": "10.254.0.0/16", "links": "10.1.0.0/16", "management": "172.31.250.0/24"},
    "vnis": [{"vni": 100, "subnet": "10.100.0.0/24"},
             {"vni": 200, "subnet": "10.200.0.0/24", "route_target": "65000:2000"}],
    "dcs": [
        {"name": "east", "spines": 3, "borders": 1,
         "leaves": [{"name": "leaf1", "hosts": [{"name": "h1", "vni": 100, "address": "10.100.0.11/24"},
                                                {"name": "h2", "vni": 200, "address": "10.200.0.12/24"}]},
                    {"name": "leaf2", "agent": False,
                     "hosts": [{"name": "h3", "vni": 100, "address": "10.100.0.13/24"}]}]},
        {"name": "west", "asn": {"spines": 64600, "borders": 64601, "leaves": 64700},
         "spines": ["s1", "s2"], "borders": ["b1", "b2"],
         "leaves": [{"name": "leaf1", "hosts": [{"name": "h1", "vni": 100, "address": "10.100.0.21/24"}]}]},
        {"name": "south", "spines": 1, "borders": 1, "leaves": [{"name": "leaf1"}]},
    ],
    "wan": [{"a": "east-border1", "b": "west-b1", "delay_ms": 5, "rate_mbit": 100},
            {"a": "east-border1", "b": "west-b2", "delay_ms": 20.5, "loss_pct": 0.1, "jitter_ms": 1},
            {"a": "west-b2", "b": "south-border1", "delay_ms": 50, "rate_mbit": 0}],
}

TOPOLOGIES = {"default": load_topology(), "three-dc": parse_topology(THREE_DC)}


def plan_view(plan) -> dict:
    """Everything the lab builds from a plan (its topology's file name aside)."""
    return {"topology": replace(plan.topology, source=""), "routers": plan.routers,
            "hosts": plan.hosts, "links": plan.links, "wans": plan.wans,
            "gateway": plan.mgmt_gateway}


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(params=sorted(TOPOLOGIES))
def exported(request, tmp_path):
    topo = TOPOLOGIES[request.param]
    files = containerlab(topo, tmp_path / "out")
    return topo, tmp_path / "out", files


# ---------------------------------------------------------------- FRR's parser

@needs_vtysh
def test_every_exported_frr_config_passes_vtysh_dryrun(exported):
    topo, out, files = exported
    configs = [out / f for f in files if f.endswith("frr.conf")]
    assert len(configs) == len(build_plan(topo).routers)
    assert frrcheck.check_files(configs) == []


@needs_vtysh
def test_vtysh_dryrun_names_the_bad_line(tmp_path):
    """The check can fail: FRR's parser rejects a broken line and we name it."""
    good = containerlab(load_topology(), tmp_path / "out")
    conf = tmp_path / "out" / [f for f in good if f.endswith("dc1-leaf1/frr.conf")][0]
    lines = conf.read_text().splitlines()
    at = lines.index("  maximum-paths 16")
    lines[at] = "  maximum-paths sixteen"
    conf.write_text("\n".join(lines) + "\n")
    problems = frrcheck.dryrun(conf)
    # FRR's message is "line N: % Unknown command[<node id>]: <the line>"
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{conf}: line {at + 1}: % Unknown command")
    assert problems[0].endswith("maximum-paths sixteen")


@needs_vtysh
def test_qplab_export_checks_its_configs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qplab.cli", "export", "containerlab", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "checked 12 FRR configs with vtysh --dryrun: all accepted" in res.stdout


# ---------------------------------------------------------------- round trip

def test_export_round_trips_through_the_lab_loader(exported):
    topo, out, files = exported
    loaded = load_topology(out / files[0])
    assert loaded.source == str(out / files[0])
    assert plan_view(build_plan(loaded)) == plan_view(build_plan(topo))


def test_export_of_the_loaded_file_is_the_same_export(exported, tmp_path):
    """A fixed point: exporting what was loaded writes every file byte for byte."""
    topo, out, files = exported
    again = containerlab(load_topology(out / files[0]), tmp_path / "again")
    assert again == files
    assert tree(tmp_path / "again") == tree(out)


def _edit(out: Path, clab: str, change) -> Path:
    doc = yaml.safe_load((out / clab).read_text())
    change(doc)
    path = out / "edited.clab.yml"
    path.write_text(yaml.safe_dump(copy.deepcopy(doc), sort_keys=False))
    return path


def test_a_rewired_link_is_named(tmp_path):
    files = containerlab(load_topology(), tmp_path)

    def rewire(doc):
        doc["topology"]["links"][0]["endpoints"][1] = "dc1-spine2:eth9"
    with pytest.raises(TopologyError) as err:
        load_topology(_edit(tmp_path, files[0], rewire))
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "link dc1-leaf1:eth1 <-> dc1-spine2:eth9 is not one the topology makes",
        "link dc1-leaf1:eth1 <-> dc1-spine1:eth1 is missing"]


def test_edited_labels_go_through_the_topology_checks(tmp_path):
    files = containerlab(load_topology(), tmp_path)

    def bad_host(doc):
        doc["topology"]["nodes"]["dc2-h1"]["labels"]["address"] = "10.9.9.9/24"
        del doc["topology"]["defaults"]["labels"]["lab.bfd"]
    with pytest.raises(TopologyError) as err:
        load_topology(_edit(tmp_path, files[0], bad_host))
    assert [p.split(": ", 1)[1] for p in err.value.problems] == \
        ["topology.defaults.labels: 'lab.bfd' missing"]

    def outside_subnet(doc):
        doc["topology"]["nodes"]["dc2-h1"]["labels"]["address"] = "10.9.9.9/24"
    with pytest.raises(TopologyError) as err:
        load_topology(_edit(tmp_path, files[0], outside_subnet))
    assert err.value.problems == [
        "leaf dc2-leaf1.hosts[0].address: 10.9.9.9 is outside VNI 100's subnet 10.100.0.0/24"]


def test_a_file_not_written_by_qplab_is_refused(tmp_path):
    path = tmp_path / "other.clab.yml"
    path.write_text("name: srl01\ntopology:\n  nodes:\n    srl: {kind: nokia_srlinux}\n")
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    assert err.value.problems == [
        f"{path}: name 'srl01' does not start with 'qplab-': not written by `qplab export containerlab`",
        f"{path}: topology.defaults.labels: 'lab.addressing' missing",
        f"{path}: topology.defaults.labels: 'lab.bfd' missing"]
