"""Fixtures for the lab tests: the default two-DC lab with real FRR, built once.

Test labs use the `qt3-` prefix, their own run directory and management
subnet, so they never collide with a user's `qpl-` lab.
"""
import os
from pathlib import Path

import pytest

from qplab import lab, netns
from qplab.context import LabContext
from qplab.topology import load_topology

TEST_PREFIX = "qt3-"
TEST_RUN_DIR = Path("/run/qplab-qt3")
TEST_MGMT = "172.31.254.0/24"


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.root)


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, FRR)")


@pytest.fixture(scope="module")
def lab_ctx():
    need_root()
    return LabContext(TEST_PREFIX, TEST_RUN_DIR)


@pytest.fixture(scope="module")
def default_lab(lab_ctx):
    """The shipped topology, up without agents; torn down whatever happens."""
    lab.down(lab_ctx, progress=lambda m: None)   # leftovers of an aborted run
    topo = load_topology().with_management(TEST_MGMT)
    try:
        state = lab.up(topo, lab_ctx, progress=lambda m: None, start_agents=False)
        yield {"ctx": lab_ctx, "state": state, "topology": topo}
    finally:
        lab.down(lab_ctx, progress=lambda m: None)
        assert netns.list_namespaces(TEST_PREFIX) == []
