"""Export the lab to ContainerLab: same nodes, links, addresses and FRR configs.

Routers are `linux` nodes running the frrouting/frr image with the generated
frr.conf mounted; leaves also get their bridge and VXLAN devices from `exec`
commands; hosts are plain alpine nodes. WAN links become direct links (add
netem with `containerlab tools netem` where the kernel has it).

The file also carries what the lab's own loader needs to rebuild the same
topology from it (`qplab up FILE.clab.yml`, see clabload): per node labels
(role, dc, asn, agent; a host's leaf, VNI and address; a WAN link's
properties on its first border) and the lab-wide settings as default labels.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .frrconf import render_frr_conf
from .plan import HOST_MTU, UNDERLAY_MTU, VXLAN_SOURCE_PORTS, build_plan
from .topology import Topology

FRR_IMAGE = "quay.io/frrouting/frr:8.4.1"
HOST_IMAGE = "alpine:3.19"
DAEMONS_FILE = "zebra=yes\nbgpd=yes\nbfdd=yes\nstaticd=yes\nvtysh_enable=yes\n" \
               "zebra_options=\" -A 127.0.0.1 -s 16777216\"\nbgpd_options=\" -A 127.0.0.1\"\n" \
               "bfdd_options=\" -A 127.0.0.1\"\nstaticd_options=\" -A 127.0.0.1\"\n"


CLAB_NAME_PREFIX = "qplab-"
WAN_LABEL = "wan."       # + the first border's WAN interface


def lab_labels(topo: Topology) -> dict[str, str]:
    """Lab-wide settings the plan depends on (addresses, BFD, VNIs)."""
    a, b = topo.addressing, topo.bfd
    labels = {"lab.addressing": f"loopbacks={a.loopbacks} links={a.links} management={a.management}",
              "lab.bfd": f"profile={b.profile} interval_ms={b.interval_ms} multiplier={b.multiplier}"}
    labels.update({f"lab.vni.{v.vni}": f"subnet={v.subnet} route_target={v.route_target}"
                   for v in topo.vnis})
    return labels


def _router_labels(plan, r) -> dict[str, str]:
    labels = {"role": r.role, "dc": r.dc, "asn": str(r.asn)}
    if r.role == "leaf":
        labels["agent"] = str(r.agent).lower()
    for w in plan.wans:
        if w.a == r.name:
            labels[WAN_LABEL + w.a_if] = " ".join(f"{k}={v}" for k, v in w.props.as_dict().items())
    return labels


def containerlab(topo: Topology, outdir: str | Path) -> list[str]:
    """Write <name>.clab.yml plus configs/<router>/{frr.conf,daemons}; return relative paths."""
    plan = build_plan(topo)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    nodes: dict = {}
    for r in plan.routers.values():
        cdir = out / "configs" / r.name
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "frr.conf").write_text(render_frr_conf(plan, r))
        (cdir / "daemons").write_text(DAEMONS_FILE)
        (cdir / "vtysh.conf").write_text("service integrated-vtysh-config\n")
        files += [f"configs/{r.name}/frr.conf", f"configs/{r.name}/daemons", f"configs/{r.name}/vtysh.conf"]
        exec_cmds = ["sysctl -w net.ipv4.ip_forward=1", "sysctl -w net.ipv4.fib_multipath_hash_policy=1",
                     "sysctl -w net.ipv4.icmp_ratelimit=0",
                     "sysctl -w net.ipv4.icmp_errors_use_inbound_ifaddr=1", f"ip addr add {r.loopback}/32 dev lo"]
        if r.role != "leaf":   # hash the outer 5-tuple, never the sender's skb hash (see lab.py)
            exec_cmds[1:2] = ["sysctl -w net.ipv4.fib_multipath_hash_policy=3",
                              "sysctl -w net.ipv4.fib_multipath_hash_fields=0x0037"]
        for i in r.interfaces:
            exec_cmds += [f"ip addr add {i.address} dev {i.name}", f"ip link set dev {i.name} mtu {UNDERLAY_MTU}"]
        for vni in r.vnis:
            exec_cmds += [
                f"ip link add br{vni} type bridge", f"ip link set dev br{vni} up",
                f"ip link add vxlan{vni} type vxlan id {vni} local {r.loopback} dstport 4789 "
                f"srcport {VXLAN_SOURCE_PORTS[0]} {VXLAN_SOURCE_PORTS[1]} nolearning",
                f"ip link set dev vxlan{vni} mtu {HOST_MTU} master br{vni} up",
                f"bridge link set dev vxlan{vni} neigh_suppress on learning off"]
        for port, host in r.host_ports.items():
            exec_cmds.append(f"ip link set dev {port} master br{plan.hosts[host].vni} up")
        nodes[r.name] = {
            "kind": "linux", "image": FRR_IMAGE,
            "binds": [f"configs/{r.name}/frr.conf:/etc/frr/frr.conf",
                      f"configs/{r.name}/daemons:/etc/frr/daemons",
                      f"configs/{r.name}/vtysh.conf:/etc/frr/vtysh.conf"],
            "exec": exec_cmds,
            "labels": _router_labels(plan, r),
        }
    for h in plan.hosts.values():
        nodes[h.name] = {"kind": "linux", "image": HOST_IMAGE,
                         "exec": [f"ip link set dev eth0 address {h.mac} mtu {HOST_MTU}",
                                  f"ip addr add {h.address} dev eth0"],
                         "labels": {"role": "host", "dc": h.dc, "leaf": h.leaf, "vni": str(h.vni),
                                    "address": str(h.address)}}
    links = [{"endpoints": [f"{l.a}:{l.a_if}", f"{l.b}:{l.b_if}"]} for l in plan.links]
    links += [{"endpoints": [f"{w.a}:{w.a_if}", f"{w.b}:{w.b_if}"]} for w in plan.wans]
    links += [{"endpoints": [f"{h.name}:eth0", f"{h.leaf}:{h.leaf_port}"]} for h in plan.hosts.values()]
    doc = {"name": f"{CLAB_NAME_PREFIX}{topo.name}",
           "topology": {"defaults": {"labels": lab_labels(topo)}, "nodes": nodes, "links": links}}
    clab = f"{topo.name}.clab.yml"
    header = "# ContainerLab topology generated by `qplab export containerlab`.\n"
    if plan.wans:
        header += "# WAN links (emulate with `containerlab tools netem set`):\n" + "".join(
            f"#   {w.a}:{w.a_if} <-> {w.b}:{w.b_if}: delay {w.props.delay_ms:g}ms "
            f"jitter {w.props.jitter_ms:g}ms loss {w.props.loss_pct:g}% rate {w.props.rate_mbit:g}mbit\n"
            for w in plan.wans)
    (out / clab).write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return [clab] + files
