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
from tracking.path_report import format_report

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
            # no duplicate address detection: link-local addresses (neighbour discovery) work at once
            sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
               "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0",
               "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=n)
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


MANY = textwrap.dedent("""
    import json, sys
    from tracking.path_report import run_report
    for args in json.loads(sys.argv[1]):
        print(json.dumps(run_report(**args)), flush=True)
""")


def traces(runs: list[dict[str, Any]], limit: float = 60) -> list[dict[str, Any]]:
    """Several run_report(**kwargs) in one child process in namespace A (one import of scapy)."""
    proc = subprocess.run(["ip", "netns", "exec", NS["A"], sys.executable, "-c", MANY,
                           json.dumps(runs)], cwd=ROOT, capture_output=True, text=True, timeout=limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


FAST = {"interval": 0.05, "timeout": 0.5, "max_hops": 8, "rate_limit_pps": 400}


@pytest.fixture(scope="module")
def net() -> Iterator[None]:
    require_root()
    require_tool("ip", "tc")
    with chain():
        yield


def only(result: dict[str, Any]) -> dict[str, Any]:
    assert not result["errors"], result["errors"]
    assert len(result["destinations"]) == 1
    return result["destinations"][0]


@pytest.mark.parametrize("version", [4, 6])
def test_every_method_shows_r1_r2_b_without_loss(net: None, version: int) -> None:
    target, hops = (B4, [R1_4, R2_4, B4]) if version == 4 else (B6, [R1_6, R2_6, B6])
    runs = [dict(targets=[target], rounds=3, method=m, probes_per_hop=2, **FAST)
            for m in ("icmp", "udp", "tcp")]
    for method, result in zip(("icmp", "udp", "tcp"), traces(runs)):
        d = only(result)
        assert d["method"] == method
        assert d["reached"] and d["hop_count"] == 3, (method, d)
        assert [h["addresses"] for h in d["hops"]] == [[a] for a in hops], method
        assert d["route"] == hops
        for h in d["hops"]:
            assert h["sent"] == 6 and h["received"] == 6 and h["loss_pct"] == 0.0, (method, h)
            assert 0 < h["best_ms"] <= h["avg_ms"] <= h["worst_ms"] < 50, (method, h)
            assert h["stddev_ms"] is not None
        assert d["hops"][-1]["is_destination"] and not d["hops"][0]["is_destination"]
        assert not d["changes"], method


#: A user-space link emulator for kernels built without netem (CONFIG_NET_SCH_NETEM): a
#: transparent L2 forwarder between two veths in namespace D that holds frames going from
#: the first to the second for ``delay`` seconds and drops a share ``loss`` of their IP packets.
EMULATOR = textwrap.dedent("""
    import heapq, random, select, socket, sys, time
    a, b, delay, loss = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    rnd = random.Random(7)
    def sock(dev):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.bind((dev, 0))
        return s
    sa, sb = sock(a), sock(b)
    held = []
    print("up", flush=True)
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
        for s in select.select([sa, sb], [], [], wait)[0]:
            frame, addr = s.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            if s is sb:
                sa.send(frame)
                continue
            etype = frame[12:14]
            nd = etype == b"\\x86\\xdd" and frame[20] == 58 and 133 <= frame[54] <= 137
            if etype in (b"\\x08\\x00", b"\\x86\\xdd") and not nd and rnd.random() < loss:
                continue
            heapq.heappush(held, (time.monotonic() + delay, id(frame), frame))
        now = time.monotonic()
        while held and held[0][0] <= now:
            sb.send(heapq.heappop(held)[2])
""")


@contextmanager
def impaired_r2_to_b(delay_ms: int, loss_pct: int) -> Iterator[str]:
    """Delay and loss on R2 -> B only: netem where the kernel has it, else the emulator."""
    dev = f"r2b{TAG}"
    netem = sh("tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay_ms}ms",
               "loss", f"{loss_pct}%", ns="R2", check=False)
    if netem.returncode == 0:
        try:
            yield "netem"
        finally:
            sh("tc", "qdisc", "del", "dev", dev, "root", ns="R2", check=False)
        return
    # R2 -- D -- B on link 6; D forwards frames in user space. R2 sends B's traffic that way.
    ns_d = f"ptD{TAG}"
    d1, d2, r2d, bd = (f"{x}{TAG}" for x in ("d1", "d2", "r2d", "bd"))
    subprocess.run(["ip", "netns", "add", ns_d], check=True, capture_output=True)
    proc = None
    try:
        subprocess.run(["ip", "netns", "exec", ns_d, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                       check=True, capture_output=True)
        sh("ip", "link", "add", r2d, "netns", NS["R2"], "type", "veth", "peer", "name", d1,
           "netns", ns_d)
        sh("ip", "link", "add", bd, "netns", NS["B"], "type", "veth", "peer", "name", d2,
           "netns", ns_d)
        for dev in (d1, d2):
            subprocess.run(["ip", "-n", ns_d, "link", "set", dev, "up", "promisc", "on"],
                           check=True, capture_output=True)
        for n, dev, side in (("R2", r2d, 1), ("B", bd, 2)):
            sh("ip", "addr", "add", f"{_addr(6, side, False)}/24", "dev", dev, ns=n)
            sh("ip", "-6", "addr", "add", f"{_addr(6, side, True)}/64", "dev", dev, "nodad", ns=n)
            sh("ip", "link", "set", dev, "up", ns=n)
        proc = subprocess.Popen(["ip", "netns", "exec", ns_d, sys.executable, "-c", EMULATOR,
                                 d1, d2, str(delay_ms / 1000), str(loss_pct / 100)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        sh("ip", "-4", "route", "replace", B4, "via", _addr(6, 2, False), ns="R2")
        sh("ip", "-6", "route", "replace", B6, "via", _addr(6, 2, True), ns="R2")
        yield "user-space emulator"
    finally:
        sh("ip", "-4", "route", "replace", B4, "via", _addr(3, 2, False), ns="R2", check=False)
        sh("ip", "-6", "route", "replace", B6, "via", _addr(3, 2, True), ns="R2", check=False)
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns_d], capture_output=True)


def test_delay_and_loss_on_one_link_show_at_the_hop_behind_it(net: None) -> None:
    with impaired_r2_to_b(50, 30):
        [r4, r6] = traces([dict(targets=[t], rounds=6, method="icmp", probes_per_hop=10,
                                interval=0.05, timeout=0.4, max_hops=6, rate_limit_pps=400)
                           for t in (B4, B6)])
    for d in (only(r4), only(r6)):
        r1, r2, b = d["hops"]
        assert r1["sent"] == r2["sent"] == b["sent"] == 60
        # the routers before the link: no loss, sub-millisecond RTTs
        for h in (r1, r2):
            assert h["loss_pct"] == 0.0 and h["avg_ms"] < 10, h
        # behind it: 30% of probes lost (60 probes: one standard deviation is 6%), 50 ms more
        assert 10.0 <= b["loss_pct"] <= 55.0, b
        assert 48.0 <= b["best_ms"] and 49.0 <= b["avg_ms"] <= 80.0, b
        assert b["addresses"] == [d["target"]] and b["is_destination"]


def test_router_dropping_time_exceeded_is_a_star_and_the_trace_completes(net: None) -> None:
    # R1 drops whatever R2 itself sends towards A: R2's time-exceeded messages never arrive,
    # while the packets R2 forwards (B's answers) still do.
    rules = [("-4", R2_4), ("-6", R2_6)]
    for fam, src in rules:
        sh("ip", fam, "rule", "add", "from", src, "iif", f"r1b{TAG}", "blackhole", ns="R1")
    try:
        results = traces([dict(targets=[t], rounds=3, method=m, probes_per_hop=1,
                               **{**FAST, "timeout": 0.25}) for t in (B4, B6) for m in ("icmp", "udp")])
    finally:
        for fam, src in rules:
            sh("ip", fam, "rule", "del", "from", src, "iif", f"r1b{TAG}", "blackhole", ns="R1", check=False)
    for r in results:
        d = only(r)
        r1, silent, b = d["hops"]
        assert d["reached"] and d["hop_count"] == 3
        assert r1["received"] == 3 and b["received"] == 3
        assert silent["addresses"] == [] and silent["sent"] == 3 and silent["received"] == 0
        assert silent["loss_pct"] == 100.0 and silent["avg_ms"] is None
        assert d["route"] == [r1["addresses"][0], None, d["target"]]
    text = format_report(results[0])
    assert "  2. ???" in text and "100.0%" in text


CONTINUOUS = textwrap.dedent("""
    import json, sys, time
    from db.connection import ConnectionPool
    from tracking.db_path import DBPathTracer
    db, method, targets = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    changes = []
    tracer = DBPathTracer(ConnectionPool(db), probes_per_hop=1, timeout=0.5, interval=0.05,
                          max_hops=6, rate_limit_pps=400, method=method,
                          on_route_change=changes.append)
    for t in targets:
        tracer.request(t)
    def wait(cond, limit=15.0):
        end = time.monotonic() + limit
        while not cond() and time.monotonic() < end:
            time.sleep(0.02)
    # the old route seen (and so stored) three times: a round whose reply was late completes
    # no route and stores none, so counting rounds is not enough
    wait(lambda: all(any(r.times_seen >= 3 for r in d.routes)
                     for d in tracer.snapshot().destinations), 90.0)
    print("READY", flush=True)
    sys.stdin.readline()                       # the test moves the route now
    wait(lambda: len(changes) >= len(targets))
    # two more rounds on the new route (a fixed sleep raced a round slowed by a late reply;
    # then stop() had no unsaved round to store)
    after = {d.target: d.rounds for d in tracer.snapshot().destinations}
    wait(lambda: all(d.rounds >= after[d.target] + 2 for d in tracer.snapshot().destinations))
    tracer.stop()
    print(json.dumps({"snapshot": tracer.snapshot().as_dict(),
                      "changes": [c.as_dict() for c in changes]}), flush=True)
""")


@pytest.mark.parametrize("method", ["icmp", "tcp"])
def test_route_switch_through_r3_is_a_stored_route_change(net: None, tmp_path: Path, method: str) -> None:
    db = tmp_path / "paths.db"
    proc = subprocess.Popen(["ip", "netns", "exec", NS["A"], sys.executable, "-c", CONTINUOUS,
                             str(db), method, f"{B4},{B6}"], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline()
        assert ready.strip() == "READY", ready + proc.stderr.read() if proc.stderr else ""
        via("R3")
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-3000:]
    finally:
        via("R2")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(out)
    old = {B4: [R1_4, R2_4, B4], B6: [R1_6, R2_6, B6]}
    new = {B4: [R1_4, R3_4, B4], B6: [R1_6, R3_6, B6]}
    seen = {c["target"]: c for c in result["changes"]}
    assert set(seen) == {B4, B6}
    for t in (B4, B6):
        assert seen[t]["old"] == old[t] and seen[t]["new"] == new[t]
        assert seen[t]["changed_hops"] == [2]
        d = next(x for x in result["snapshot"]["destinations"] if x["target"] == t)
        assert d["route"] == new[t]
        assert {tuple(r["hops"]) for r in d["routes"]} == {tuple(old[t]), tuple(new[t])}
        assert d["changes"][-1]["new"] == new[t]
        # the hop table shows both routers that answered at hop 2
        assert set(d["hops"][1]["addresses"]) == {old[t][1], new[t][1]}

    conn = sqlite3.connect(db)
    try:
        for t in (B4, B6):
            pats = {tuple(json.loads(h)): n for h, n in conn.execute(
                "SELECT hops, times_seen FROM route_patterns WHERE target_ip = ?", (t,))}
            assert set(pats) == {tuple(old[t]), tuple(new[t])}
            assert pats[tuple(old[t])] >= 3 and pats[tuple(new[t])] >= 1
            changes = conn.execute("SELECT old_hash, new_hash, changed_hops FROM route_changes "
                                   "WHERE target_ip = ?", (t,)).fetchall()
            assert len(changes) == 1 and json.loads(changes[0][2]) == [2]
            stored = {h: tuple(json.loads(x)) for h, x in conn.execute(
                "SELECT route_hash, hops FROM route_patterns WHERE target_ip = ?", (t,))}
            assert stored[changes[0][0]] == tuple(old[t]) and stored[changes[0][1]] == tuple(new[t])
            traces_ = conn.execute("SELECT id, protocol, reached FROM traceroutes WHERE target_ip = ? "
                                   "ORDER BY id", (t,)).fetchall()
            # first round, the change, and the final one at stop
            assert len(traces_) >= 3 and all(p == method.upper() and r == 1 for _, p, r in traces_)
            last_hops = [ip for (ip,) in conn.execute(
                "SELECT ip FROM hops WHERE traceroute_id = ? ORDER BY ttl", (traces_[-1][0],))]
            assert last_hops[0] == old[t][0] and last_hops[2] == t
            n, lost = conn.execute("SELECT COUNT(*), SUM(rtt_ms IS NULL) FROM latency_samples "
                                   "WHERE ip = ?", (t,)).fetchone()
            assert n >= 4 and lost == 0
    finally:
        conn.close()
