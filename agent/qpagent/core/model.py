"""What the agent knows about remote VTEPs and the paths towards them."""

from __future__ import annotations

from dataclasses import dataclass, field

# (VXLAN device, remote VTEP address): one remote VTEP as seen through one device.
VtepKey = tuple[str, str]


@dataclass(frozen=True)
class Found:
    """A path as discovered: its first hop, the hops beyond (end-to-end
    mode; empty otherwise) and the ports that take it."""
    ifindex: int
    ifname: str
    gateway: str | None
    hops: tuple = ()
    ports: tuple[int, ...] = ()

    @property
    def identity(self) -> tuple:
        return (self.ifname, self.gateway, self.hops)


@dataclass
class PathState:
    index: int
    ifindex: int
    uplink: str
    gateway: str | None
    ports: list[int]
    hops: tuple = ()
    alive: bool = True
    packets: int = 0   # attributed from per-QP deltas
    bytes: int = 0

    @property
    def identity(self) -> tuple:
        return (self.uplink, self.gateway, self.hops)


@dataclass(frozen=True)
class VtepAddress:
    """How a remote VTEP is reached: the local source address and the
    device's outer source port range."""
    local: str
    port_range: tuple[int, int]


@dataclass
class VtepState:
    index: int
    device: str
    address: str
    local: str
    port_range: tuple[int, int]
    paths: dict[int, PathState] = field(default_factory=dict)

    @property
    def key(self) -> VtepKey:
        return (self.device, self.address)

    def live_paths(self) -> list[int]:
        return [i for i, p in self.paths.items() if p.alive and p.ports]
