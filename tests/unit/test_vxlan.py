"""vxlan_info and fdb_remotes read a real VXLAN device."""

import pytest
from pyroute2 import NetNS

from qpagent import netnsutil, vxlan
from qt2_netns import needs_root, netns, sh

pytestmark = [needs_root]


@pytest.fixture
def vtep():
    with netns("vx") as ns:
        sh(f"ip -n {ns} addr add 10.0.0.1/32 dev lo")
        sh(f"ip -n {ns} link add vx100 type vxlan id 100 local 10.0.0.1 dstport 4789 "
           "srcport 49152 65535 nolearning")
        sh(f"ip -n {ns} link add vx200 type vxlan id 200 local 10.0.0.1 dstport 4789 nolearning")
        sh(f"ip -n {ns} link add plain type veth peer name plain2")
        sh(f"bridge -n {ns} fdb append 00:00:00:00:00:00 dev vx100 dst 10.0.0.2")
        sh(f"bridge -n {ns} fdb append 00:00:00:00:00:00 dev vx100 dst 10.0.0.3")
        sh(f"bridge -n {ns} fdb add 02:AA:00:00:00:05 dev vx100 dst 10.0.0.3")
        sh(f"bridge -n {ns} fdb add 02:bb:00:00:00:06 dev vx200 dst 10.0.0.4")
        yield ns


def test_vxlan_info_with_explicit_port_range(vtep):
    with NetNS(vtep) as ipr:
        info = vxlan.vxlan_info("vx100", ipr=ipr, local_range=(1, 2))
        index = ipr.link_lookup(ifname="vx100")[0]
    assert info == vxlan.VxlanInfo(ifindex=index, vni=100, local="10.0.0.1", dstport=4789,
                                   port_min=49152, port_max=65535)


def test_vxlan_without_srcport_uses_the_namespace_local_port_range(vtep):
    sh(f"ip netns exec {vtep} sysctl -qw net.ipv4.ip_local_port_range='40000 45000'")
    with netnsutil.enter(vtep):
        info = vxlan.vxlan_info("vx200")
    assert (info.vni, info.port_min, info.port_max) == (200, 40000, 45000)


def test_fdb_remotes_lists_default_and_per_mac_remotes(vtep):
    with NetNS(vtep) as ipr:
        assert vxlan.fdb_remotes("vx100", ipr=ipr) == [
            ("00:00:00:00:00:00", "10.0.0.2"),
            ("00:00:00:00:00:00", "10.0.0.3"),
            ("02:aa:00:00:00:05", "10.0.0.3"),
        ]
        assert vxlan.fdb_remotes("vx200", ipr=ipr) == [("02:bb:00:00:00:06", "10.0.0.4")]


def test_missing_or_wrong_device_is_a_clear_error(vtep):
    with NetNS(vtep) as ipr:
        with pytest.raises(vxlan.VxlanError, match="no such interface: nope"):
            vxlan.vxlan_info("nope", ipr=ipr)
        with pytest.raises(vxlan.VxlanError, match="plain is not a VXLAN device"):
            vxlan.vxlan_info("plain", ipr=ipr)
        with pytest.raises(vxlan.VxlanError, match="no such interface: nope"):
            vxlan.fdb_remotes("nope", ipr=ipr)
