#!/usr/bin/env python3
"""Relay benchmark: what one agent puts on the link, and whether one server keeps up with many.

    python bench/bench_relay.py [--packets 100000] [--flows 5000] [--agents 20] [--pps 10000]
                                

1. A real agent (``relay.cli --agent -r``) replays the benchmark capture to a relay server on
   127.0.0.1: messages/s and bytes/s on the link, and per 1k packets.
2. The flow updates an agent at ``--pps`` would send (the capture cut into 0.5 s ticks) are
   replayed by ``--agents`` simulated agents at that pace to one server process: server CPU per
   agent, ack latency, and whether everything was applied in time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench entry point: run from anywhere

import psutil  # noqa: E402

from capture.reader import iter_parsed  # noqa: E402
from relay.agent.buffer import OutboundBuffer  # noqa: E402
from relay.agent.collect import StateCollector  # noqa: E402
from relay.server import protocol as p  # noqa: E402
from tracking.flow import FlowTracker  # noqa: E402

TICK = 0.5


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
    out, _ = proc.communicate(timeout=60)
    return out


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
    line = [l for l in res.stdout.splitlines() if l.startswith("relay:")][0]
    msgs = int(line.split(": ")[2].split(" messages")[0])
    sent = int(line.split("messages, ")[1].split(" bytes")[0])
    pk = int([l for l in res.stdout.splitlines() if l.startswith("packets:")][0].split()[1])
    doc = json.loads((tmp / "one.json").read_text())
    print(f"agent replay of {capture.name}: {pk} packets, {doc['meta']['flows']} flows merged, "
          f"{wall:.1f} s wall (start-up included)")
    print(f"  link: {msgs} messages, {sent / 1e6:.2f} MB (msgpack + permessage-deflate off the "
          f"wire count: pre-compression) -> {msgs / wall:.1f} msg/s, {sent / wall / 1e6:.2f} MB/s; "
          f"per 1k packets: {msgs / pk * 1000:.2f} msgs, {sent / pk * 1000 / 1e3:.1f} kB")


def update_stream(capture: Path, pps: int) -> list[bytes]:
    """FlowBatch payloads an agent at ``pps`` would send: one collection per 0.5 s of packets."""
    flows = FlowTracker()
    rt = SimpleNamespace(flows=flows, components=SimpleNamespace(
        ports=None, dns=None, security=None, flow_enrichers=[]))
    col = StateCollector(rt)
    buf = OutboundBuffer(10**9, 10**12)
    per_tick = int(pps * TICK)
    n = 0
    out: list[bytes] = []
    for pkt in iter_parsed(capture):
        flows.process(pkt)
        n += 1
        if n % per_tick == 0:
            ch = col.collect()
            for i in range(0, len(ch.flows), 2000):
                rows = ch.flows[i:i + 2000]
                out.append(buf.add(lambda seq: p.FlowBatch(seq=seq, flows=rows)).data)
    return out


async def sim_agent(url: str, token: str, name: str, ticks: list[list[bytes]],
                    lat: list[float]) -> tuple[int, float]:
    """Send each tick's messages on schedule (no waiting for acks, like the agent's window);
    returns (messages acknowledged, seconds behind schedule at the end)."""
    from websockets.asyncio.client import connect
    async with connect(url, max_size=None) as ws:
        ch = p.decode_server(await ws.recv())
        session = secrets.token_hex(4)
        await ws.send(p.encode(p.Hello(agent=name, session=session,
                                       mac=p.hello_mac(token, ch.nonce, name, session))))
        assert isinstance(p.decode_server(await ws.recv()), p.Welcome)
        total = sum(map(len, ticks))
        sent_at: dict[int, float] = {}

        async def acks() -> int:
            n = 0
            while n < total:
                ack = p.decode_server(await ws.recv())
                n = ack.seq
                lat.append(time.perf_counter() - sent_at[n])
            return n

        reader = asyncio.create_task(acks())
        t0 = time.perf_counter()
        seq = 0
        for i, tick in enumerate(ticks):
            await asyncio.sleep(max(0.0, t0 + i * TICK - time.perf_counter()))
            for data in tick:
                seq += 1
                sent_at[seq] = time.perf_counter()
                await ws.send(data)
        n = await reader
        return n, time.perf_counter() - (t0 + len(ticks) * TICK)


def many_agents(capture: Path, token: Path, tmp: Path, agents: int, pps: int) -> None:
    stream = update_stream(capture, pps)
    # group messages back into ticks (a tick may hold several 2000-row batches)
    per_tick = max(1, len(stream) // max(1, int(sum(1 for _ in iter_parsed(capture)) / (pps * TICK))))
    ticks = [stream[i:i + per_tick] for i in range(0, len(stream), per_tick)]
    rows = [len(p.decode_agent(d).flows) for d in stream]
    print(f"simulated agent at {pps} pps: {len(ticks)} ticks of {TICK} s, "
          f"{sum(rows) / len(ticks):.0f} flow updates and {sum(map(len, stream)) / len(ticks) / TICK / 1e3:.0f} kB/s each")
    server, url = start_server(token, tmp / "many.json")
    proc = psutil.Process(server.pid)
    tok = token.read_text().strip()
    lat: list[float] = []

    async def run() -> list[tuple[int, float]]:
        return await asyncio.gather(*(sim_agent(url, tok, f"sim-{i}", ticks, lat)
                                      for i in range(agents)))

    c0 = proc.cpu_times()
    t0 = time.perf_counter()
    res = asyncio.run(run())
    wall = time.perf_counter() - t0
    c1 = proc.cpu_times()
    cpu = (c1.user + c1.system - c0.user - c0.system) / wall
    stop_server(server)
    lat.sort()
    behind = max(b for _, b in res)
    print(f"{agents} agents x {pps} pps for {len(ticks) * TICK:.0f} s: {sum(n for n, _ in res)} "
          f"messages ({sum(rows) * agents} flow updates) applied, server CPU {cpu * 100:.0f}% of one core "
          f"({cpu * 100 / agents:.1f}% per agent), ack latency p50 {lat[len(lat) // 2] * 1e3:.0f} ms, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.0f} ms, last ack {behind:.1f} s after the last tick: "
          f"{'keeps up' if behind < 2.0 else 'FALLS BEHIND'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--flows", type=int, default=5_000)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--pps", type=int, default=10_000)
    a = ap.parse_args()
    out = ROOT / "bench" / "out"
    capture = out / f"relay-{a.packets}.pcap"
    if not capture.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(capture),
                        "--packets", str(a.packets), "--flows", str(a.flows)], check=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        token = tmp / "token"
        token.write_text(secrets.token_urlsafe(24) + "\n")
        agent_link(capture, token, tmp)
        many_agents(capture, token, tmp, a.agents, a.pps)


if __name__ == "__main__":
    main()
