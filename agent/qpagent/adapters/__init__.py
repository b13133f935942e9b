"""Where the core's decisions meet the kernel and the disk.

    maps.py       applies the core's actions to the BPF maps (qpagent.tables)
    statefile.py  keeps the core's path table on disk, so a restarted agent
                  that adopts a pinned data plane keeps every index and port
"""
