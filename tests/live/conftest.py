"""Fixtures for the live tests: real namespaces, real kernel datapaths."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from twovtep import two_vteps  # noqa: E402


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.live)
            item.add_marker(pytest.mark.root)


@pytest.fixture(params=[2, 4], ids=["2paths", "4paths"])
def twovtep(request):
    """Two VTEPs with 2 and then 4 parallel links; torn down whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF)")
    with two_vteps(request.param) as topo:
        yield topo


@pytest.fixture
def twovtep2():
    """Two VTEPs joined by 2 links."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF)")
    with two_vteps(2) as topo:
        yield topo
