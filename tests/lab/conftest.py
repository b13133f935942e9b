"""Fixtures for the lab tests: the default two-DC lab with real FRR, built once.

Every test lab gets a prefix of its own (a uuid tag), its own run directory
and a management subnet nobody on this machine uses, so parallel runs and a
user's `qpl-` lab never collide.
"""
import contextlib
import ipaddress
import json
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from qplab import lab, netns
from qplab.api import Lab
from qplab.context import LabContext
from qplab.topology import load_topology


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.root)


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, FRR)")


def unique_ctx() -> LabContext:
    """A lab context no other run uses: short prefix (interface names hold 15 characters)."""
    prefix = f"q{uuid.uuid4().hex[:5]}-"
    return LabContext(prefix, Path(f"/run/qplab-{prefix.rstrip('-')}"))


def free_management_subnet() -> str:
    """A /24 in 172.30.0.0/16 that no address of the root namespace is in."""
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    used = [ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
            for link in json.loads(out) for a in link.get("addr_info", []) if a.get("family") == "inet"]
    free = [n for n in ipaddress.IPv4Network("172.30.0.0/16").subnets(new_prefix=24)
            if not any(n.overlaps(u) for u in used)]
    return str(random.choice(free))


def topology_with_agents(source: Path, agents: set[str], out: Path) -> Path:
    """The topology file `source` with agents on exactly the leaves and hosts
    named in `agents` (dc1-leaf1, dc1-h1, ...), written to `out`."""
    data = yaml.safe_load(Path(source).read_text())
    for dc in data["dcs"]:
        for leaf in dc["leaves"]:
            leaf["agent"] = f"{dc['name']}-{leaf['name']}" in agents
            for host in leaf.get("hosts", []):
                host["agent"] = f"{dc['name']}-{host['name']}" in agents
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@contextlib.contextmanager
def scratch_lab(source: Path, agents: set[str], converge_s: float, **up):
    """A lab of its own (prefix, management subnet) from `source` with those
    agents, converged; taken down, and checked gone, whatever happens."""
    need_root()
    ctx = unique_ctx()
    workdir = Path(tempfile.mkdtemp(prefix="qt-lab-"))
    try:
        topo = load_topology(topology_with_agents(source, agents, workdir / "topology.yaml"))
        the_lab = Lab.up(topo.with_management(free_management_subnet()), ctx,
                         progress=lambda m: None, start_agents=True, **up)
        the_lab.wait_converged(converge_s)
        yield the_lab
    finally:
        lab.down(ctx, progress=lambda m: None)
        shutil.rmtree(workdir, ignore_errors=True)
        assert netns.list_namespaces(ctx.prefix) == []
        assert not ctx.run_dir.exists()


@pytest.fixture(scope="module")
def lab_ctx():
    need_root()
    return unique_ctx()


@pytest.fixture(scope="module")
def default_lab(lab_ctx):
    """The shipped topology, up without agents; torn down whatever happens."""
    topo = load_topology().with_management(free_management_subnet())
    try:
        yield Lab.up(topo, lab_ctx, progress=lambda m: None, start_agents=False)
    finally:
        lab.down(lab_ctx, progress=lambda m: None)
        assert netns.list_namespaces(lab_ctx.prefix) == []
