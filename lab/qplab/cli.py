"""The `qplab` command: build, inspect, break and export the multi-DC lab."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

from . import export, frrcheck, lab, links, status as lab_status, wan
from .context import LabContext
from .state import LabState
from .topology import TopologyError, load_topology
from .waiting import Timeout, wait_until


def fail(message: str, code: int = 1):
    click.echo(f"qplab: {message}", err=True)
    sys.exit(code)


def need_root():
    if os.geteuid() != 0:
        fail("this needs root (network namespaces, FRR)")


def running_state(ctx: LabContext) -> LabState:
    state = LabState.load(ctx)
    if not state:
        fail(f"no lab is up (no {ctx.state_file}); start one with `qplab up`")
    return state


def progress(message: str) -> None:
    click.echo(f"[{time.monotonic() - progress.t0:6.2f}s] {message}")


progress.t0 = time.monotonic()


def wait_converged(state: LabState, timeout: float) -> list[str]:
    return wait_until(lambda: lab_status.problems(state, lab_status.collect(state)),
                      timeout, 0.5, "lab convergence")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(cctx):
    """Multi-DC EVPN-VXLAN lab: namespaces, real FRR, WAN delay lines, qpagent on every leaf."""
    cctx.obj = LabContext.from_env()


@main.command()
@click.argument("topology", required=False, type=click.Path(dir_okay=False))
@click.option("--no-agent", is_flag=True, help="Do not start qpagent on the leaves.")
@click.option("--no-wait", is_flag=True, help="Return once built, without waiting for convergence.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for convergence.")
@click.option("--management", metavar="CIDR", help="Override the management subnet.")
@click.option("--prometheus", is_flag=True,
              help="Also run Prometheus scraping every agent and an FRR exporter per router.")
@click.pass_obj
def up(ctx: LabContext, topology, no_agent, no_wait, timeout, management, prometheus):
    """Build the lab from TOPOLOGY: a file or the name of a shipped topology
    (default, the two-DC lab; three-dc, three DCs with unequal WAN links)."""
    need_root()
    try:
        topo = load_topology(topology)
        if management:
            topo = topo.with_management(management)
    except (TopologyError, ValueError) as e:
        fail(str(e), 2)
    progress.t0 = time.monotonic()
    progress(f"up: topology '{topo.name}' from {topo.source}")
    try:
        state = lab.up(topo, ctx, progress, start_agents=not no_agent,
                       topology_path=str(topology or topo.source), prometheus=prometheus)
        if not no_wait:
            wait_converged(state, timeout)
            c = lab_status.summary_counts(state, lab_status.collect(state))
            progress(f"converged: BGP {c['bgp_established']}/{c['bgp_total']} Established, "
                     f"BFD {c['bfd_up']}/{c['bfd_total']} up, remote VTEPs "
                     f"{c['remote_vteps']}/{c['remote_vteps_expected']}")
    except KeyboardInterrupt:
        click.echo("\ninterrupted: tearing down", err=True)
        lab.down(ctx, progress=lambda m: None)
        sys.exit(130)
    except Timeout as e:
        fail(f"the lab is up but did not converge: {e}\n(see `qplab status`; `qplab down` removes it)")
    except (lab.LabError, RuntimeError, OSError) as e:
        fail(str(e))
    if state.monitor:
        progress(f"prometheus: {state.monitor.prometheus}")


@main.command()
@click.pass_obj
def down(ctx: LabContext):
    """Remove the lab and everything it made (safe to run twice)."""
    need_root()
    try:
        lab.down(ctx, progress=click.echo)
    except KeyboardInterrupt:
        fail("interrupted: run `qplab down` again to finish", 130)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wait", "wait_s", type=float, default=0, metavar="SECONDS",
              help="First wait up to SECONDS for convergence.")
@click.pass_obj
def status(ctx: LabContext, as_json, wait_s):
    """BGP sessions, BFD peers, EVPN VNIs and remote VTEPs of every router."""
    state = running_state(ctx)
    if wait_s:
        try:
            wait_converged(state, wait_s)
        except Timeout:
            pass
    st = lab_status.collect(state)
    st["problems"] = lab_status.problems(state, st)
    st["summary"] = lab_status.summary_counts(state, st)
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        click.echo(lab_status.render(state, st))
        click.echo("\nconverged" if not st["problems"] else
                   "\nnot converged:\n  " + "\n  ".join(st["problems"]))
    sys.exit(0 if not st["problems"] else 3)


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_(ctx: LabContext, node, command):
    """Run COMMAND inside NODE's namespace: qplab exec dc1-h1 -- ping 10.100.0.21"""
    state = running_state(ctx)
    if node not in state.node_names and node not in state.wans:
        fail(f"unknown node '{node}' (nodes: {', '.join(sorted(state.node_names))})")
    try:
        rc = subprocess.call(["ip", "netns", "exec", ctx.ns(node)] + list(command))
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc)


@main.command()
@click.argument("a")
@click.argument("b")
@click.argument("action", type=click.Choice(links.ACTIONS))
@click.pass_obj
def link(ctx: LabContext, a, b, action):
    """Fail or repair the link between A and B: down, up, blackhole, restore."""
    state = running_state(ctx)
    try:
        click.echo(links.act(state, ctx, a, b, action))
    except (links.LinkError, RuntimeError, OSError) as e:
        fail(str(e))
    state.save(ctx)


@main.command(name="wan")
@click.argument("a")
@click.argument("b")
@click.argument("settings", nargs=-1, required=True)
@click.pass_obj
def wan_cmd(ctx: LabContext, a, b, settings):
    """Change a WAN link at run time: qplab wan dc1-border1 dc2-border1 delay=20 loss=0.1"""
    state = running_state(ctx)
    try:
        changes = wan.parse_settings(list(settings))
        found = links.find_link(state, a, b)
        if found.kind != "wan":
            raise links.LinkError(f"{a} <-> {b} is not a WAN link")
        w = state.wans[found.wan]
        wan.apply(w, ctx, changes)
    except (ValueError, RuntimeError, OSError) as e:
        fail(str(e))
    state.save(ctx)
    p = w.props
    click.echo(f"{a} <-> {b}: delay {p.delay_ms:g} ms, jitter {p.jitter_ms:g} ms, "
               f"loss {p.loss_pct:g} %, rate {p.rate_mbit:g} Mbit/s")


@main.command(name="agent-status")
@click.argument("node")
@click.pass_obj
def agent_status(ctx: LabContext, node):
    """Show NODE's qpagent (runs `qpagent status --node <namespace>`)."""
    state = running_state(ctx)
    if node not in state.node_names:
        fail(f"unknown node '{node}'")
    sys.exit(subprocess.call([sys.executable, "-m", "qpagent.cli", "status", "--node", ctx.ns(node)]))


@main.group(name="export")
def export_group():
    """Write the lab in another tool's format."""


@export_group.command(name="containerlab")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--topology", type=click.Path(dir_okay=False),
              help="Topology file or shipped name (default: the two-DC lab).")
def export_containerlab(outdir, topology):
    """Write a ContainerLab topology and the FRR configs into OUTDIR."""
    try:
        topo = load_topology(topology)
    except TopologyError as e:
        fail(str(e), 2)
    try:
        files = export.containerlab(topo, outdir)
    except OSError as e:
        fail(f"cannot write {outdir}: {e}")
    if frrcheck.available():   # FRR's own parser on every config written
        configs = [os.path.join(outdir, f) for f in files if f.endswith("frr.conf")]
        problems = frrcheck.check_files(configs)
        if problems:
            fail("FRR rejects the exported configuration:\n  " + "\n  ".join(problems))
        click.echo(f"checked {len(configs)} FRR configs with vtysh --dryrun: all accepted")
    click.echo(f"wrote {len(files)} files to {outdir} (start with: containerlab deploy -t "
               f"{os.path.join(outdir, files[0])})")


@main.command(name="run", context_settings={"ignore_unknown_options": True,
                                            "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_workload(args):
    """Run a training collective on the lab's hosts (`qplab run --help`):
    ring AllReduce, hierarchical or Parameter Server over RoCEv2 framing."""
    from .experiments import run as one_collective
    one_collective.main(list(args))


@main.command(name="experiment", context_settings={"ignore_unknown_options": True,
                                                   "allow_extra_args": True,
                                                   "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_experiment(args):
    """Sweep scenarios (kernel hashing vs qpagent, delay, loss, failure) and
    write a report with plots (`qplab experiment --help`)."""
    from .experiments import runner
    sys.exit(runner.main(list(args)))


if __name__ == "__main__":
    main()
