"""Agent configuration files for tests, made as the lab makes them: a
qpagent Config written by qpagent.config.to_toml, so qpagent's own loader
checks it when the agent starts and no test keeps a TOML copy of its own."""

from __future__ import annotations

from pathlib import Path

from qpagent.config import (AgentSettings, Config, CountSettings, FrrSettings,
                            LivenessSettings, SteerSettings, to_toml)


def write_agent_config(path: str | Path, *, node: str, socket: str, vxlan: str, uplinks,
                       metrics_address: str = "", top_qps: int = 100, count: bool = True,
                       frr_namespace: str | None = None, poll_interval: float = 0.2,
                       liveness: bool = False, count_xdp=None) -> None:
    """A steering agent on `vxlan` and `uplinks`; flows counted on the
    uplinks (count; XDP also on `count_xdp` when given); FRR asked in
    `frr_namespace`, or not at all."""
    uplinks = tuple(uplinks)
    xdp = tuple(count_xdp) if count_xdp is not None else uplinks
    config = Config(
        steer=SteerSettings(vxlan_devices=(vxlan,), uplinks=uplinks),
        agent=AgentSettings(node=node, control_socket=socket, metrics_address=metrics_address,
                            top_qps=top_qps, poll_interval=poll_interval),
        count=CountSettings(xdp=xdp, tc_egress=uplinks) if count else CountSettings(),
        frr=(FrrSettings(enabled=True, namespace=frr_namespace) if frr_namespace
             else FrrSettings(enabled=False)),
        liveness=LivenessSettings(enabled=liveness))
    Path(path).write_text(to_toml(config))
