"""qplab: a multi-DC EVPN-VXLAN lab on network namespaces and real FRR."""
