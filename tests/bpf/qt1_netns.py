"""Throw-away network namespaces for the data-plane tests (prefix qt1-).

BPF_PROG_TEST_RUN runs in the calling thread's namespace (the device named
in the ctx and bpf_fib_lookup's FIB are looked up there), so run_in() calls a
function on a short-lived thread that has joined the namespace.
"""

import ctypes
import json
import os
import subprocess
import threading
import uuid

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetNs:
    def __init__(self):
        self.name = f"qt1-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)

    def ip(self, *args, check=True):
        return subprocess.run(["ip", "-n", self.name, *args], check=check,
                              capture_output=True, text=True)

    def ip_json(self, *args):
        return json.loads(self.ip("-j", *args).stdout or "[]")

    def sysctl(self, key, value):
        subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                        f"{key}={value}"], check=True)

    def ifindex(self, dev):
        return self.ip_json("link", "show", "dev", dev)[0]["ifindex"]

    def mac(self, dev):
        return self.ip_json("link", "show", "dev", dev)[0]["address"]

    def run_in(self, fn, *args, **kwargs):
        """fn(*args) on a thread inside this namespace; returns its result."""
        box = {}

        def body():
            try:
                fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:   # re-raised in the caller
                box["error"] = exc

        worker = threading.Thread(target=body)
        worker.start()
        worker.join()
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)
