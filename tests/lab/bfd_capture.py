"""When BFD declared a link down, stamped by the kernel on the wire.

BFD's verdict is timed by the capture's stamp on the first "State Down"
control packet a router sends (vtysh polling on a busy machine would add its
own latency). Shared by the lab tests and the lab benchmark.
"""
import subprocess
from concurrent.futures import ThreadPoolExecutor


def bfd_down_watcher(ns: str, ifname: str):
    """Start capturing BFD on an interface; the returned call waits up to
    `timeout` seconds and gives the wall-clock stamp of the first control
    packet announcing State Down (TimeoutError if none came)."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-Z", "root", "--immediate-mode",
                             "-l", "-tt", "-n", "-i", ifname, "udp", "port", "3784"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = [proc.stderr.readline() for _ in range(2)]
    if not any("listening on" in line for line in banner):
        proc.kill()
        proc.wait()
        raise AssertionError(f"tcpdump did not start: {banner}")

    def first_down(timeout: float) -> float:
        ex = ThreadPoolExecutor(max_workers=1)
        try:
            fut = ex.submit(lambda: next(float(l.split()[0]) for l in proc.stdout if "State Down" in l))
            return fut.result(timeout=timeout)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            ex.shutdown(wait=True)
    return first_down
