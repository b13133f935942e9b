"""Filling and reading qp_steer's maps from Python, as the agent would."""

import ctypes
import ipaddress
import time

from qpagent.contract import ENUMS, MAX_PATHS
from qpagent.portmath import hash_for_port

# Every enum member of bpf/include (PARSE_ROCE, HOOK_QP_STEER, STEER_HASH_SET,
# PIN_REDIRECTED, ...) with the value the C gives it, read by qpagent.contract:
# a test importing a member the C no longer has fails at import.
globals().update({member: value for enum in ENUMS.values() for member, value in enum.members})


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def set_vtep(prog, mac, vtep):
    """Inner destination MAC (None = the default remote) -> VTEP index."""
    table = prog.table("mac_vtep")
    key = table.Key()
    key.mac = (ctypes.c_ubyte * 6)(*(mac_bytes(mac) if mac else bytes(6)))
    table[key] = table.Leaf(vtep)


def bump_mac_gen(prog):
    """What the agent does after changing mac_vtep: known QPs check their
    MAC again on their next packet."""
    table = prog.table("mac_gen")
    key = table.Key(0)
    table[key] = table.Leaf(table[key].value + 1)
    return table[key].value


def path_ports(path, n_ports, lo):
    """Distinct outer ports for each path: path p gets lo + p*n .. + n-1."""
    return [lo + path * n_ports + s for s in range(n_ports)]


def set_path(prog, vtep, path, n_ports, port_range, alive=True, ifindex=None, shares=0):
    table = prog.table("path_table")
    key = table.Key(vtep * MAX_PATHS + path)
    old = table[key]
    leaf = table.Leaf()
    leaf.ifindex = ifindex if ifindex is not None else 100 + path
    leaf.alive = 1 if alive else 0
    leaf.n_ports = n_ports
    leaf.qps = old.qps
    leaf.shares = shares
    lo, hi = port_range
    for slot, port in enumerate(path_ports(path, n_ports, lo)):
        leaf.port[slot] = port
        leaf.hash[slot] = hash_for_port(port, lo, hi)
    table[key] = leaf


def set_alive(prog, vtep, path, alive):
    table = prog.table("path_table")
    key = table.Key(vtep * MAX_PATHS + path)
    leaf = table[key]
    leaf.alive = 1 if alive else 0
    table[key] = leaf


MISSES = 3          # what the agent's prober writes by default (liveness.misses)


def set_health(prog, vtep, path, deadline_ns, last_reply_ns, prober_running=True):
    """path_health as the agent arms it (deadline) and the data plane fills
    it: a reply at last_reply_ns; if that is more than deadline_ns ago, as
    many requests gone unanswered since, the last of them leaving right
    after it, as make the path dead. The agent's prober runs (it renews
    believe_until_ns and probe_misses), or not."""
    table = prog.table("path_health")
    key = table.Key(vtep * MAX_PATHS + path)
    leaf = table[key]
    leaf.deadline_ns, leaf.last_reply_ns = deadline_ns, last_reply_ns
    leaf.replies = 1 if last_reply_ns else 0
    silent = time.monotonic_ns() - last_reply_ns > deadline_ns
    leaf.unanswered, leaf.silent_since_ns = (MISSES, last_reply_ns) if silent else (0, 0)
    table[key] = leaf
    config = prog.table("repair_config")
    entry = config[config.Key(0)]
    entry.believe_until_ns = 2**63 if prober_running else 0
    entry.probe_misses = MISSES
    config[config.Key(0)] = entry


def path_qps(prog, vtep, path):
    table = prog.table("path_table")
    return table[table.Key(vtep * MAX_PATHS + path)].qps


def addr_words(addr):
    """An address as the BPF program stores it: network-order bytes in
    little-endian u32 words, IPv4 in word 0."""
    packed = ipaddress.ip_address(addr).packed.ljust(16, b"\0")
    return [int.from_bytes(packed[i:i + 4], "little") for i in range(0, 16, 4)]


def qp_key(prog, src, dst, dqp):
    table = prog.table("qp_table")
    key = table.Key()
    for i, w in enumerate(addr_words(src)):
        key.saddr[i] = w
    for i, w in enumerate(addr_words(dst)):
        key.daddr[i] = w
    key.dqp = dqp
    key.family = 6 if ":" in src else 4
    return key


def qp_state(prog, src, dst, dqp):
    """qp_table entry as a dict, or None."""
    table = prog.table("qp_table")
    try:
        leaf = table[qp_key(prog, src, dst, dqp)]
    except KeyError:
        return None
    return {name: getattr(leaf, name) for name, _ in leaf._fields_ if name != "pad"}


def flow_entries(prog):
    """flow_table as {(readable key): (packets, bytes, first_ns, last_ns)}."""
    out = {}
    for key, val in prog.table("flow_table").items():
        size = 16 if key.family == 6 else 4
        src = bytes(key.saddr)[:size]
        dst = bytes(key.daddr)[:size]
        readable = (str(ipaddress.ip_address(src)), key.sport,
                    str(ipaddress.ip_address(dst)), key.dport, key.proto,
                    key.ifindex, key.hook, key.has, key.vni, key.dqp)
        out[readable] = (val.packets, val.bytes, val.first_ns, val.last_ns)
    return out
