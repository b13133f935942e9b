"""FRR configuration for one router of the plan (integrated frr.conf text).

eBGP underlay on numbered /31 links, BFD on every session, ECMP over every
equal path; EVPN activated everywhere so that type-2/3 routes cross the data
centers with their originating VTEP as next hop. Interface addresses are set
by the lab itself (before FRR starts), so the config holds routing only.
"""
from __future__ import annotations

from .plan import Plan, Router


def render_frr_conf(plan: Plan, router: Router) -> str:
    topo = plan.topology
    bfd = topo.bfd
    lines = [
        "frr version 8.4",
        "frr defaults datacenter",
        f"hostname {router.name}",
        "service integrated-vtysh-config",
        "!",
        "bfd",
        f" profile {bfd.profile}",
        f"  transmit-interval {bfd.interval_ms}",
        f"  receive-interval {bfd.interval_ms}",
        f"  detect-multiplier {bfd.multiplier}",
        " exit",
        "exit",
        "!",
        f"router bgp {router.asn}",
        f" bgp router-id {router.loopback}",
        " no bgp ebgp-requires-policy",
        " no bgp default ipv4-unicast",
        " bgp bestpath as-path multipath-relax",
        " neighbor fabric peer-group",
        " neighbor fabric bfd",
        f" neighbor fabric bfd profile {bfd.profile}",
        " neighbor fabric timers connect 2",
    ]
    for i in router.interfaces:
        peer = plan.routers[i.peer_node]
        lines.append(f" neighbor {i.peer_address} remote-as {peer.asn}")
        lines.append(f" neighbor {i.peer_address} peer-group fabric")
        lines.append(f" neighbor {i.peer_address} description {peer.name} via {i.name}")
    lines += [
        " !",
        " address-family ipv4 unicast",
        f"  network {router.loopback}/32",
        "  neighbor fabric activate",
        "  maximum-paths 16",
        " exit-address-family",
        " !",
        " address-family l2vpn evpn",
        "  neighbor fabric activate",
    ]
    if router.role == "leaf":
        lines.append("  advertise-all-vni")
        vnis = {v.vni: v for v in topo.vnis}
        for vni in router.vnis:
            rt = vnis[vni].route_target
            lines += [f"  vni {vni}",
                      # every leaf has its own ASN, so the auto RT (ASN:VNI) would
                      # never match across leaves: one RT per VNI for the whole lab
                      f"   route-target import {rt}",
                      f"   route-target export {rt}",
                      "  exit-vni"]
    lines += [" exit-address-family", "exit", "!", "end", ""]
    return "\n".join(lines)
