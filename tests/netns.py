"""Network namespaces joined by veth, for live tests. Everything is removed on exit."""
from __future__ import annotations

import itertools
import os
import subprocess
from contextlib import contextmanager
from typing import Iterator

_counter = itertools.count()


def sh(*args: str, ns: str | None = None, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


@contextmanager
def veth_pair(v4: tuple[str, str] = ("10.200.1.1", "10.200.1.2"),
              v6: tuple[str, str] = ("fd00:200::1", "fd00:200::2")) -> Iterator[dict]:
    """Two namespaces A and B with one veth link; yields names and addresses."""
    tag = f"{os.getpid() % 10000}{next(_counter)}"
    a, b = f"ptA{tag}", f"ptB{tag}"
    va, vb = f"pta{tag}", f"ptb{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, ip4, ip6 in ((a, va, v4[0], v6[0]), (b, vb, v4[1], v6[1])):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", f"{ip4}/24", "dev", dev, ns=ns)
            sh("ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        yield {"a": a, "b": b, "va": va, "vb": vb, "a4": v4[0], "b4": v4[1], "a6": v6[0], "b6": v6[1]}
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
