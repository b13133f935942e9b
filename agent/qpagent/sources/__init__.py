"""Everything that watches the world and tells the agent's loop.

    signals.py    the typed events sources put on the loop's queue
    routes.py     kernel route and link changes (rtnetlink), timed at receipt
    bfd.py        FRR's BFD peers (vtysh), a watcher that reports changes
    fdb.py        remote VTEPs and MAC -> VTEP from each VXLAN device's FDB
    discovery.py  which ports take which path (FIB; TTL probes end to end),
                  and the prober thread that re-traces paths in the background

None of them calls back into the loop or the core: they return or queue
what they found.
"""
