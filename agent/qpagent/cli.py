"""The `qpagent` command: run the agent, ask it for status and flows, check a config."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from . import __version__
from .config import DEFAULT_SOCKET, ConfigError, load_config, to_toml
from .control import AgentNotRunning, ControlClient, ControlError
from .render import render_flows, render_status

EXIT_FAILURE = 1
EXIT_CONFIG = 2   # also keeps systemd from restarting a daemon that cannot start


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"qpagent: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qpagent")
def main() -> None:
    """QP-aware ECMP placement for RoCEv2 over EVPN-VXLAN."""


# ---------------------------------------------------------------- run

@main.command()
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Agent configuration (TOML, or YAML if it ends in .yaml/.yml).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def run(config_path: str, log_level: str) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if os.geteuid() != 0:
        fail("qpagent run needs root (BPF, tc, XDP)")
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from .daemon import Agent
        agent = Agent(config)
        agent.run()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - turn known failures into one line
        message = _user_message(exc)
        if message is None:
            raise
        fail(message)


def _user_message(exc: BaseException) -> str | None:
    """A one-line explanation for failures the user can act on; None for real bugs.

    qpagent's own exception classes (BpfUnavailable, datapath, control and
    metrics errors, ...) are raised on purpose with a message for the user;
    builtin exceptions are bugs and keep their traceback.
    """
    if getattr(exc, "user_message", None):
        return str(exc.user_message)
    if type(exc).__module__.startswith("qpagent."):
        return str(exc) or type(exc).__name__
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("qpagent"):
        return f"this installation is incomplete: module {exc.name} is missing"
    return None


# ---------------------------------------------------------------- status / flows

def socket_options(func):
    func = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON data.")(func)
    func = click.option("--node", metavar="NAME",
                        help="Talk to the agent of lab node NAME (socket /run/qpagent/NAME.sock).")(func)
    func = click.option("--socket", "socket_path", metavar="PATH",
                        help=f"Control socket (default: $QPAGENT_SOCKET or {DEFAULT_SOCKET}).")(func)
    return func


def resolve_socket(socket_path: str | None, node: str | None) -> str:
    if socket_path and node:
        raise click.UsageError("give either --socket or --node, not both")
    if node:
        if "/" in node or not node.strip() or node.startswith("."):
            raise click.BadParameter(f"{node!r} is not a node name", param_hint="--node")
        return f"/run/qpagent/{node}.sock"
    return socket_path or os.environ.get("QPAGENT_SOCKET") or DEFAULT_SOCKET


def ask(path: str, request: dict):
    try:
        return ControlClient(path).request(request, timeout=5)
    except AgentNotRunning:
        fail(f"no agent is running (socket {path})")
    except ControlError as exc:
        fail(str(exc))


def emit(data, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    try:
        text = render(data)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        fail(f"the agent sent data this qpagent cannot show ({type(exc).__name__}: {exc}); "
             "try --json")
    click.echo(text, nl=False)


@main.command()
@socket_options
@click.option("--top", default=20, show_default=True, type=click.IntRange(1, 1000),
              help="How many QPs to list, busiest first.")
def status(socket_path, node, as_json, top) -> None:
    """Programs, paths per VTEP, top QPs, BFD, recent events of a running agent."""
    path = resolve_socket(socket_path, node)
    emit(ask(path, {"cmd": "status", "top": top}), as_json, render_status)


@main.command()
@socket_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000),
              help="How many flows to list, busiest first.")
def flows(socket_path, node, as_json, limit) -> None:
    """Flows counted by the XDP and tc counters of a running agent."""
    path = resolve_socket(socket_path, node)
    emit(ask(path, {"cmd": "flows", "limit": limit}), as_json, render_flows)


# ---------------------------------------------------------------- purge

@main.command()
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The configuration the agent ran with (its node and interfaces).")
def purge(config_path: str) -> None:
    """Remove this node's data plane: programs from every hook, the clsact
    qdiscs qpagent added, the pinned programs and maps. Stopping the agent
    leaves them steering; this is how they go. Run it where the agent ran
    (the same network namespace); refused while an agent runs."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if os.geteuid() != 0:
        fail("qpagent purge needs root (BPF, tc, XDP)")
    try:
        from .daemon import node_name
        from .datapath import DataPlane
        dp = DataPlane(vxlan_devices=list(config.steer.vxlan_devices),
                       uplinks=list(config.steer.uplinks), count_xdp=list(config.count.xdp),
                       count_tc=list(config.count.tc_egress), xdp_mode=config.count.xdp_mode,
                       node=node_name(config))
        where = dp.pin_dir
        dp.purge()
        _forget_saved_paths(dp.node)
    except Exception as exc:  # noqa: BLE001 - known failures become one line
        message = _user_message(exc)
        if message is None:
            raise
        fail(message)
    click.echo(f"purged the data plane of node {dp.node} (pins under {where})")


def _forget_saved_paths(node: str) -> None:
    """The path table an agent saved for the data plane just purged."""
    try:
        from .adapters.statefile import StateFile
    except ImportError:
        return
    try:
        StateFile(node).path.unlink()
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- check-config

@main.command("check-config")
@click.argument("config_path", metavar="FILE", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate FILE and print the effective configuration."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    click.echo(f"# {config_path}: valid; effective configuration:")
    click.echo(to_toml(config), nl=False)


if __name__ == "__main__":
    main()
