"""The path tracer on a real multi-hop network made of network namespaces (removed after).

    A --- R1 --- R2 --- B          B's service address 10.231.9.9 / fd31:9::9 sits on its lo
           \\           /
            +--- R3 ---+           R1 can send B's traffic via R3 instead (route switch)

Every probe goes to addresses inside these namespaces: the tracer runs in namespace A in a child
process (``ip netns exec A python -c ...``) that imports the project and prints JSON.
Routers forward IPv4 and IPv6 and do not rate-limit ICMP errors (Linux's default of one per
second per peer would look like loss on every router hop).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT, require_root, require_tool

pytestmark = [pytest.mark.requires_root, pytest.mark.integration]

TAG = f"{os.getpid() % 10000}"
NS = {n: f"pt{n}{TAG}" for n in ("A", "R1", "R2", "R3", "B")}
B4, B6 = "10.231.9.9", "fd31:9::9"
R1_4, R2_4, R3_4 = "10.231.1.2", "10.231.2.2", "10.231.4.2"
R1_6, R2_6, R3_6 = "fd31:1::2", "fd31:2::2", "fd31:4::2"
#: (ns1, dev1, ns2, dev2, subnet number): addresses are .1/::1 on the first side, .2/::2 on the other
LINKS = (("A", "a0", "R1", "r1a", 1), ("R1", "r1b", "R2", "r2a", 2), ("R2", "r2b", "B", "bb", 3),
         ("R1", "r1c", "R3", "r3a", 4), ("R3", "r3b", "B", "bc", 5))


def sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", NS[ns]] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def _addr(link: int, side: int, v6: bool) -> str:
    return f"fd31:{link}::{side}" if v6 else f"10.231.{link}.{side}"


@contextmanager
def chain() -> Iterator[None]:
    try:
        for name in NS.values():
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        for n in NS:
            sh("ip", "link", "set", "lo", "up", ns=n)
            sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
               "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0", ns=n)
            if n.startswith("R"):
                sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=n)
        for n1, d1, n2, d2, k in LINKS:
            sh("ip", "link", "add", f"{d1}{TAG}", "netns", NS[n1], "type", "veth",
               "peer", "name", f"{d2}{TAG}", "netns", NS[n2])
            for n, d, side in ((n1, d1, 1), (n2, d2, 2)):
                dev = f"{d}{TAG}"
                sh("ip", "addr", "add", f"{_addr(k, side, False)}/24", "dev", dev, ns=n)
                sh("ip", "-6", "addr", "add", f"{_addr(k, side, True)}/64", "dev", dev, "nodad", ns=n)
                sh("ip", "link", "set", dev, "up", ns=n)
        sh("ip", "addr", "add", f"{B4}/32", "dev", "lo", ns="B")
        sh("ip", "-6", "addr", "add", f"{B6}/128", "dev", "lo", ns="B")
        for fam, v6 in (("-4", False), ("-6", True)):
            a = lambda k, s: _addr(k, s, v6)  # noqa: E731
            b = B6 if v6 else B4
            sh("ip", fam, "route", "add", "default", "via", a(1, 2), ns="A")
            sh("ip", fam, "route", "add", b, "via", a(2, 2), ns="R1")
            sh("ip", fam, "route", "add", b, "via", a(3, 2), ns="R2")
            sh("ip", fam, "route", "add", "default", "via", a(2, 1), ns="R2")
            sh("ip", fam, "route", "add", b, "via", a(5, 2), ns="R3")
            sh("ip", fam, "route", "add", "default", "via", a(4, 1), ns="R3")
            sh("ip", fam, "route", "add", "default", "via", a(3, 1), ns="B")
        yield
    finally:
        for name in NS.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def via(router: str) -> None:
    """Send R1's traffic for B through R2 or R3."""
    k = {"R2": 2, "R3": 4}[router]
    sh("ip", "-4", "route", "replace", B4, "via", _addr(k, 2, False), ns="R1")
    sh("ip", "-6", "route", "replace", B6, "via", _addr(k, 2, True), ns="R1")


TRACE = textwrap.dedent("""
    import json, sys
    from tracking.path_report import run_report
    args = json.loads(sys.argv[1])
    print(json.dumps(run_report(**args)))
""")


def trace(limit: float = 60, **kwargs: Any) -> dict[str, Any]:
    """run_report(**kwargs) inside namespace A; its JSON result."""
    proc = subprocess.run(["ip", "netns", "exec", NS["A"], sys.executable, "-c", TRACE,
                           json.dumps(kwargs)], cwd=ROOT, capture_output=True, text=True,
                          timeout=limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
