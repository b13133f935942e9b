"""The agent's decisions, as plain code: no threads, sockets, netlink or BPF.

    model.py      what the agent knows: remote VTEPs, their paths, a discovered path
    inputs.py     the typed events the world sends in (topology seen, BFD, ticks)
    actions.py    what the core asks for: map writes, QP moves, log lines
    pathtable.py  keeping path indexes stable as paths come, go and change hops
    placement.py  balanced assignment of QPs to paths with the fewest moves
    decisions.py  Core: events and the QP table in, actions out

Everything that watches the world lives in qpagent.sources; what writes the
maps lives in qpagent.adapters; qpagent.daemon runs the one loop between them.
"""
