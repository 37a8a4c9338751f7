#!/usr/bin/env python3
"""Relay benchmark: what one agent puts on the link, what one flow update costs the server, and
whether one server keeps up with 20 agents at 10k pps.

    python bench/bench_relay.py [--agents 20] [--pps 10000] [--procs 4] [--seconds 10]
                                [--skip-link] [--skip-e2e]

1. Link: a real agent (``relay.cli --agent -r``) replays the benchmark capture to a relay
   server on 127.0.0.1: messages/s and bytes/s, per 1k packets.
2. Streams: two traffic mixes are cut into the agent's 0.5 s collections at ``--pps`` through
   the real tracker, DPI/geo enrichers and StateCollector, and encoded as the agent does:
   * worst case -- gen_capture.py's mix (flows interleaved round-robin, so every packet of a
     tick touches a different flow: 5,000 flow updates per tick at 10k pps);
   * heavy-tailed -- flow sizes Pareto(alpha 1.2, min 2 packets, cap 20k), ~1k new flows/s,
     mice over in well under a second and elephants at 10-500 pps (the usual shape of real
     traffic: most flows tiny, most packets in few flows).
   For each: distinct flows changed per second, bytes/s on the link (msgpack, and after
   per-connection deflate), with protocol v2 (compact updates) and as v1 would have sent it
   (every changed flow as a full record).
3. Server cost, in-process and single-threaded (CPU time): inflate + decode + merge per flow
   update and per message, v1 vs v2 -> how many agents at 10k pps one core carries.
4. End to end: a relay server process and ``--agents`` simulated agents spread over
   ``--procs`` processes (permessage-deflate on, as real agents) sending the heavy-tailed
   and then the worst-case stream on schedule: server CPU per agent, ack latency, whether
   the last tick was applied in time. On a machine with fewer cores than procs + 1, the
   clients' compression competes with the server: read section 3 for the server's own cost.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import multiprocessing as mp
import random
import secrets
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench entry point: run from anywhere

import msgspec  # noqa: E402
import psutil  # noqa: E402

from bench.gen_capture import eth, ipv4, ipv6, tcp, udp  # noqa: E402
from relay.agent.agent import BATCH_ROWS  # noqa: E402
from relay.agent.collect import StateCollector  # noqa: E402
from relay.server import protocol as p  # noqa: E402
from relay.server.store import MergedStore  # noqa: E402

TICK = 0.5
#: "v1": every changed flow as a whole record (v1's shape, with v2's null-free facts);
#: "v2": records only for new flows, changed facts and retirements, compact updates otherwise
LABEL = {"v1": "records", "v2": "compact"}


# ---- traffic ----------------------------------------------------------------------------------
def heavy_tailed_capture(path: Path, seconds: float, pps: int, seed: int = 7) -> int:
    """A pcap of ``seconds`` at ~``pps`` with heavy-tailed flow sizes (see module doc)."""
    rnd = random.Random(seed)
    alpha, xm, cap = 1.2, 2.0, 20000
    mean = alpha * xm / (alpha - 1) * (1 - (xm / cap) ** (alpha - 1))
    rate = pps / mean                       # new flows per second
    warm = 20.0                             # elephants already running when the window opens
    heap: list[tuple[float, int, bytes]] = []
    mac_a, mac_b = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    t = -warm
    n = 0
    while t < seconds:
        t += rnd.expovariate(rate)
        n += 1
        size = min(cap, int(xm / (1 - rnd.random()) ** (1 / alpha)))
        flow_pps = rnd.uniform(20, 200) if size < 10 else rnd.uniform(10, 500)
        kind = rnd.random()
        proto = "tcp" if kind < 0.7 else "udp" if kind < 0.95 else "icmp"
        v6 = rnd.random() < 0.2
        if v6:
            a = bytes.fromhex("20010db8000000000000000000000001")[:12] + struct.pack("!I", n)
            b = bytes.fromhex("20010db8ffff00000000000000000000")[:12] + struct.pack("!I", rnd.getrandbits(32))
        else:
            a = bytes([10, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF or 1])
            b = bytes([rnd.randint(1, 223), rnd.randint(0, 255), rnd.randint(0, 255), rnd.randint(1, 254)])
        sport = 1024 + (n * 7) % 60000
        dport = rnd.choice((80, 443, 443, 443, 53, 22, 25, 8080, 3306, 123))
        seqs = [rnd.getrandbits(32), rnd.getrandbits(32)]
        for i in range(size):
            ts = t + i / flow_pps
            if ts < 0 or ts >= seconds:
                continue
            fwd = i % 2 == 0
            src, dst = (a, b) if fwd else (b, a)
            sp, dp = (sport, dport) if fwd else (dport, sport)
            if proto == "tcp":
                flags = 0x02 if i == 0 else 0x12 if i == 1 else 0x11 if i == size - 1 else 0x18
                payload = b"" if flags != 0x18 else bytes(rnd.choice((40, 200, 600, 1200, 1400)))
                d = 0 if fwd else 1
                l4 = tcp(sp, dp, seqs[d], seqs[1 - d], flags, payload)
                seqs[d] += len(payload) + (1 if flags & 0x03 else 0)
                pnum = 6
            elif proto == "udp":
                l4, pnum = udp(sp, dp, bytes(rnd.randint(20, 500))), 17
            else:
                itype = (128 if fwd else 129) if v6 else (8 if fwd else 0)
                l4 = struct.pack("!BBHHH", itype, 0, 0, n & 0xFFFF, i & 0xFFFF) + bytes(56)
                pnum = 58 if v6 else 1
            frame = (eth(mac_a, mac_b, 0x86DD, None) + ipv6(src, dst, pnum, l4, 64) if v6 else
                     eth(mac_a, mac_b, 0x0800, None) + ipv4(src, dst, pnum, l4, i, 64))
            heapq.heappush(heap, (ts, len(heap), frame))
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    base = 1_700_000_000.0
    count = 0
    while heap:
        ts, _, frame = heapq.heappop(heap)
        ts += base
        sec = int(ts)
        out += struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)) + frame
        count += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return count


def _components() -> tuple[Any, Any]:
    """The real tracker, DPI and geo enrichers of an offline headless run."""
    import config
    from pipeline import Pipeline
    from runtime import build_components
    from tracking.flow import FlowTracker
    s = config.load_settings({"GEO_ONLINE": False, "DNS_RDNS_ENABLED": False,
                              "WHOIS_ENABLED": False, "DB_ENABLED": False})
    flows = FlowTracker(s.MAX_FLOWS, s.FLOW_TIMEOUT, s.TCP_CLOSE_LINGER, s.FLOW_HISTORY_LIMIT)
    comp = build_components(s, flows)
    pipe = Pipeline(flows, stages=comp.stages, flow_stages=comp.flow_stages,
                    batch_stages=comp.batch_stages, other_stages=comp.other_stages,
                    periodic=comp.periodic)
    return SimpleNamespace(flows=flows, components=SimpleNamespace(
        ports=None, dns=None, security=None, flow_enrichers=comp.flow_enrichers)), pipe


def tick_streams(capture: Path, pps: int) -> dict[str, Any]:
    """v2 frames per tick (as the agent queues them) and what v1 would have sent instead."""
    from capture.reader import CaptureFile
    rt, pipe = _components()
    col = StateCollector(rt)
    shadow = MergedStore()
    shadow.connect(p.Hello(agent="b", session="s", mac="m"), "bench")
    per_tick = int(pps * TICK)
    v2: list[list[bytes]] = []
    v1: list[list[bytes]] = []
    changed: list[int] = []
    seq = 0
    batch: list[Any] = []
    n = 0

    def collect() -> None:
        nonlocal seq
        ch = col.collect()
        frames2, frames1 = [], []
        for i in range(0, max(len(ch.flows), 1), BATCH_ROWS):
            last = i + BATCH_ROWS >= len(ch.flows)
            seq += 1
            msg = p.FlowBatch(seq=seq, flows=ch.flows[i:i + BATCH_ROWS], updates=ch.updates if last else [])
            frames2.append(p.encode(msg))
            shadow.apply("b", msg, 0)
        ids = shadow.flow_ids["b"][1]
        full = ch.flows + [shadow.flows[("b", ids[u.id])][0] for u in ch.updates]
        for i in range(0, len(full), BATCH_ROWS):
            # v1 had no ids: every changed flow as a whole record
            rows = [msgspec.structs.replace(r, id=0) for r in full[i:i + BATCH_ROWS]]
            frames1.append(p.encode(p.FlowBatch(seq=1, flows=rows)))
        v2.append(frames2)
        v1.append(frames1)
        changed.append(len(full))

    for frame in CaptureFile(capture):
        batch.append(frame)
        n += 1
        if len(batch) == 256 or n % per_tick == 0:
            pipe.process_frames(batch)
            batch = []
        if n % per_tick == 0:
            collect()
    return {"v2": v2, "v1": v1, "changed": changed, "packets": n}


def link_figures(name: str, st: dict[str, Any]) -> None:
    ticks = len(st["v2"])
    secs = ticks * TICK
    changed = sum(st["changed"]) / secs
    for ver in ("v1", "v2"):
        frames = [f for t in st[ver] for f in t]
        raw = sum(map(len, frames))
        z = zlib.compressobj(6, zlib.DEFLATED, -15)   # one context per connection, like the link
        deflated = sum(len(z.compress(f) + z.flush(zlib.Z_SYNC_FLUSH)) for f in frames)
        print(f"  {name:<13} {LABEL[ver]:<8}: {changed:7.0f} flows changed/s, {len(frames) / secs:5.1f} msg/s, "
              f"{raw / secs / 1e3:7.0f} kB/s msgpack, {deflated / secs / 1e3:6.0f} kB/s deflated")


# ---- server cost ------------------------------------------------------------------------------
def server_cost(name: str, st: dict[str, Any]) -> dict[str, float]:
    """CPU seconds per flow update for inflate + decode + merge, v1 and v2."""
    out: dict[str, float] = {}
    for ver in ("v1", "v2"):
        frames = [f for t in st[ver] for f in t]
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        wire = [z.compress(f) + z.flush(zlib.Z_SYNC_FLUSH) for f in frames]
        store = MergedStore()
        store.connect(p.Hello(agent="a", session="s", mac="m"), "bench")
        rows = 0
        c0 = time.process_time()
        dz = zlib.decompressobj(-15)
        for seq, data in enumerate(wire, 1):
            msg = p.decode_agent(dz.decompress(data))
            msg.seq = seq
            store.apply("a", msg, len(data))
            p.encode(p.Ack(seq=seq))
            rows += len(msg.flows) + len(msg.updates)
        cpu = time.process_time() - c0
        per_s = sum(st["changed"]) / (len(st["v2"]) * TICK)
        core_share = cpu / (len(st["v2"]) * TICK)     # of one core, for one agent at this pps
        out[ver] = core_share
        print(f"  {name:<13} {LABEL[ver]:<8}: {cpu / rows * 1e6:5.2f} us per flow update, "
              f"{cpu / len(frames) * 1e3:6.2f} ms per message; one agent = {core_share * 100:5.1f}% "
              f"of a core -> {1 / core_share if core_share else math.inf:5.0f} agents per core "
              f"({per_s:.0f} updates/s each)")
    return out


# ---- end to end -------------------------------------------------------------------------------
async def _sim_agent(url: str, token: str, name: str, ticks: list[list[tuple[int, bytes]]], t0: float,
                     lat: list[float]) -> float:
    from websockets.asyncio.client import connect
    async with connect(url, max_size=None, compression="deflate") as ws:
        ch = p.decode_server(await ws.recv())
        session = secrets.token_hex(4)
        await ws.send(p.encode(p.Hello(agent=name, session=session,
                                       mac=p.hello_mac(token, ch.nonce, name, session))))
        assert isinstance(p.decode_server(await ws.recv()), p.Welcome)
        total = sum(map(len, ticks))
        sent_at: dict[int, float] = {}

        async def acks() -> None:
            n = 0
            while n < total:
                n = p.decode_server(await ws.recv()).seq
                lat.append(time.time() - sent_at[n])

        reader = asyncio.create_task(acks())
        for i, tick in enumerate(ticks):
            await asyncio.sleep(max(0.0, t0 + i * TICK - time.time()))
            for seq, data in tick:
                sent_at[seq] = time.time()
                await ws.send(data)
        await reader
        return time.time() - (t0 + len(ticks) * TICK)


def _client_proc(url: str, token: str, names: list[str], ticks: list[list[tuple[int, bytes]]], t0: float,
                 out: Any) -> None:
    lat: list[float] = []

    async def run() -> list[float]:
        return await asyncio.gather(*(_sim_agent(url, token, n, ticks, t0, lat) for n in names))

    behind = asyncio.run(run())
    out.put((max(behind), lat, time.process_time()))


def start_server(token: Path, export: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "--relay-server", "--listen",
                             "127.0.0.1:0", "--token-file", str(token), "--no-ui",
                             "--export-json", str(export), "--log-file", str(export.with_suffix(".log"))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    assert url.startswith("ws://"), line
    return proc, url


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    return out


def end_to_end(name: str, frames: list[list[bytes]], token: Path, tmp: Path, agents: int,
               procs: int, pps: int) -> None:
    ticks = [[(p.decode_agent(f).seq, f) for f in tick] for tick in frames]
    server, url = start_server(token, tmp / f"e2e-{name}.json")
    sp = psutil.Process(server.pid)
    tok = token.read_text().strip()
    q: Any = mp.get_context("fork").Queue()
    t0 = time.time() + 1.5                     # every client connected before the first tick
    groups = [[f"sim-{i}" for i in range(agents) if i % procs == k] for k in range(procs)]
    workers = [mp.get_context("fork").Process(target=_client_proc, args=(url, tok, g, ticks, t0, q))
               for g in groups if g]
    c0 = sp.cpu_times()
    w0 = time.time()
    for w in workers:
        w.start()
    res = [q.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    wall = time.time() - w0
    c1 = sp.cpu_times()
    stop_server(server)
    cpu = (c1.user + c1.system - c0.user - c0.system) / (len(ticks) * TICK)
    behind = max(r[0] for r in res)
    lat = sorted(x for r in res for x in r[1])
    clients = sum(r[2] for r in res) / wall
    doc = json.loads((tmp / f"e2e-{name}.json").read_text())
    print(f"  {name:<13}: {agents} agents x {pps} pps for {len(ticks) * TICK:.0f} s in {len(workers)} "
          f"processes: {doc['meta']['flows']} flows merged; server CPU {cpu * 100:.0f}% of one core "
          f"({cpu * 100 / agents:.1f}% per agent); clients {clients * 100:.0f}%; ack p50 "
          f"{lat[len(lat) // 2] * 1e3:.0f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.0f} ms; last ack "
          f"{behind:.1f} s after the last tick: {'keeps up' if behind < 2 * TICK + 0.5 else 'FALLS BEHIND'}")


# ---- link of a real agent ---------------------------------------------------------------------
def agent_link(capture: Path, token: Path, tmp: Path) -> None:
    server, url = start_server(token, tmp / "one.json")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "relay.cli", "--agent", "--relay", url,
                          "--token-file", str(token), "--agent-id", "bench", "-r", str(capture),
                          "--no-ui", "--offline", "--no-db", "--log-file", str(tmp / "agent.log")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    stop_server(server)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("relay:")][0]
    msgs = int(line.split(": ")[2].split(" messages")[0])
    sent = int(line.split("messages, ")[1].split(" bytes")[0])
    pk = int([ln for ln in res.stdout.splitlines() if ln.startswith("packets:")][0].split()[1])
    doc = json.loads((tmp / "one.json").read_text())
    print(f"agent replay of {capture.name} (as fast as it reads): {pk} packets, "
          f"{doc['meta']['flows']} flows merged, {wall:.1f} s wall; link {msgs} messages, "
          f"{sent / 1e6:.2f} MB msgpack: per 1k packets {msgs / pk * 1000:.2f} msgs, "
          f"{sent / pk * 1000 / 1e3:.1f} kB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--pps", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--skip-link", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args()
    out = ROOT / "bench" / "out"
    packets = int(a.pps * a.seconds)
    worst = out / f"relay-{packets}.pcap"
    if not worst.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(worst),
                        "--packets", str(packets), "--flows", str(int(a.pps * TICK))], check=True)
    heavy = out / f"relay-heavy-{a.pps}-{a.seconds:g}s.pcap"
    if not heavy.exists():
        heavy_tailed_capture(heavy, a.seconds, a.pps)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        token = tmp / "token"
        token.write_text(secrets.token_urlsafe(24) + "\n")
        if not a.skip_link:
            agent_link(worst, token, tmp)
        streams = {}
        print(f"link per agent at {a.pps} pps (0.5 s collections, real tracker + DPI/geo enrichers):")
        for name, cap in (("heavy-tailed", heavy), ("worst case", worst)):
            streams[name] = tick_streams(cap, a.pps)
            link_figures(name, streams[name])
        print("server cost per agent (inflate + decode + merge + ack, one thread, CPU time):")
        for name, st in streams.items():
            server_cost(name, st)
        if not a.skip_e2e:
            print(f"end to end on {psutil.cpu_count()} cores (load average "
                  f"{psutil.getloadavg()[0]:.1f} at start):")
            for name, st in streams.items():
                end_to_end(name, st["v2"], token, tmp, a.agents, a.procs, a.pps)


if __name__ == "__main__":
    main()
