"""qpagent: QP-aware ECMP placement for RoCEv2 over EVPN-VXLAN."""

__version__ = "0.1.0"
