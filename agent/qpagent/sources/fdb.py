"""Remote VTEPs and MAC -> VTEP, read from each VXLAN device's FDB. Slow
(pyroute2 dumps), so read at start and periodically, not per route event."""

from __future__ import annotations

from qpagent.core.inputs import FdbSeen
from qpagent.core.model import VtepAddress
from qpagent.vxlan import VxlanError, fdb_remotes, vxlan_info


def read_fdb(devices) -> tuple[FdbSeen, list[str]]:
    """The FDB of every device, and one warning per device that could not
    be read (missing, not VXLAN)."""
    vteps: dict = {}
    macs: dict = {}
    warnings = []
    for dev in devices:
        try:
            info = vxlan_info(dev)
            remotes = fdb_remotes(dev)
        except VxlanError as exc:
            warnings.append(str(exc))
            continue
        address = VtepAddress(info.local, (info.port_min, info.port_max))
        for mac, remote in remotes:
            vteps[(dev, remote)] = address
            macs[mac] = (dev, remote)
    return FdbSeen(vteps, macs), warnings
