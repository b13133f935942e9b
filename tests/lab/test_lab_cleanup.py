"""An `up` that fails half way, or is interrupted with Ctrl-C, leaves nothing behind."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qplab import lab, netns
from qplab.context import LabContext
from qplab.topology import load_topology

from conftest import free_management_subnet, need_root, unique_ctx


def leftovers(ctx: LabContext) -> dict:
    return {"namespaces": netns.list_namespaces(ctx.prefix),
            "root_links": netns.root_links(ctx.prefix),
            "frr_dirs": sorted(str(p) for base in ("/etc/frr", "/var/run/frr")
                               for p in Path(base).glob(f"{ctx.prefix}*")),
            "run_dir": ctx.run_dir.exists()}


NOTHING = {"namespaces": [], "root_links": [], "frr_dirs": [], "run_dir": False}


@pytest.fixture
def scratch_ctx():
    need_root()
    ctx = unique_ctx()
    try:
        yield ctx
    finally:
        lab.down(ctx, progress=lambda m: None)


def test_failed_up_cleans_up_after_itself(scratch_ctx):
    ctx = scratch_ctx
    # a real fault half way: the management bridge's name is already taken,
    # so `up` fails after the namespaces exist
    netns.run(["ip", "link", "add", ctx.mgmt_bridge, "type", "bridge"])
    topo = load_topology().with_management(free_management_subnet())
    seen = []
    with pytest.raises(netns.CommandError, match="File exists"):
        lab.up(topo, ctx, progress=seen.append, start_agents=False)
    assert seen[0].startswith("namespaces: 24 created")
    assert seen[-1] == "up failed: tearing down what was built"
    assert leftovers(ctx) == NOTHING


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it, even when this test runs in a
    background job (whose shell starts it with SIGINT ignored, and Python
    keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_up_cleans_up(scratch_ctx):
    ctx = scratch_ctx
    env = dict(os.environ, QPLAB_PREFIX=ctx.prefix, QPLAB_RUN_DIR=str(ctx.run_dir))
    proc = subprocess.Popen([sys.executable, "-m", "qplab.cli", "up", "--no-agent",
                             "--management", free_management_subnet()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        lines = []
        for line in proc.stdout:          # interrupt once FRR is being started
            lines.append(line)
            if "wan:" in line:
                break
        assert any("namespaces: 24 created" in l for l in lines), lines
        os.killpg(proc.pid, signal.SIGINT)   # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted: tearing down" in err
    assert leftovers(ctx) == NOTHING
