#!/usr/bin/env python3
"""Memory per live flow: the whole pipeline holding N concurrent flows (default 50k).

    python bench/bench_memory.py [--flows 50000] [--top 15] [--full-only]

Feeds generated captures whose flows are all still active at the end (no expiry), and reports
the traced Python heap growth divided by the number of flows, for the flow table alone and for
the full set of trackers. Target: under 1 KiB per flow beyond the interpreter's baseline.

Some state grows with hosts, not flows (hop estimates, address strings, scan and beacon tables
keyed by host or host pair). The full set of trackers is therefore measured three times: with
the flows shared by 2x1,000 and by 2x10,000 hosts, and the worst case where every flow has its
own two hosts. The two shared runs are solved for bytes per flow and bytes per host; the worst
case shows what a flow costs when it also brings two new hosts.

The packet ring (the last ``PACKET_RING_FRAMES`` frames kept for saving selected flows) is a
fixed budget, not a per-flow cost: its share is measured by emptying it at the end and is shown
on its own line, and left out of the per-flow figure. ``--top`` lists the source lines holding
the most memory (all trackers), to see where the bytes go.

These runs build the trackers as a dashboard run does (packet ring included) but draw nothing,
and have no database (``--no-db``). The dashboard and the database ask every live flow for its
key string, which the flow then keeps: the "+ flow keys" line shows what that adds.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point

# The offline geo database loads in a background thread at start-up (once per process, not
# per flow): leave its allocations out, and tracemalloc's own.
_SKIP = [tracemalloc.Filter(False, "*geoip2fast*"), tracemalloc.Filter(False, tracemalloc.__file__)]


def _traced() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(_SKIP)


def _total(snap: tracemalloc.Snapshot) -> int:
    return sum(t.size for t in snap.statistics("filename"))


def measure(path: Path, full: bool, top: int = 0) -> tuple[int, int, int, int, int, int]:
    """Returns (bytes held by the trackers, active flows, distinct hosts, bytes held by the
    ring, ring frames, bytes the flows' key strings add once made)."""
    import config
    import main
    from capture.reader import CaptureFile
    from runtime import Runtime
    # as the dashboard runs (a headless run keeps no packet ring): the ring is measured apart
    args = main.build_parser().parse_args(["-r", str(path), "--no-db", "--offline"])
    settings = config.load_settings(main.cli_overrides(args))
    rt = Runtime(settings, args, threading.Event())
    if not full:
        rt.pipeline.stages = []
        rt.pipeline.batch_stages = []
        rt.pipeline.flow_stages = []
        rt.pipeline.frame_sinks = []
    frames = CaptureFile(path)
    # Let the start-up loaders (offline geo data) finish first, so none of their allocations
    # land in the traced window (on a busy machine they would, by a varying amount).
    for t in threading.enumerate():
        if t.name.startswith("geo-offline"):
            t.join(60)
    gc.collect()
    tracemalloc.start()
    base = _total(_traced())
    batch = []
    for f in frames:
        batch.append(f)
        if len(batch) == 1024:
            rt.pipeline.process_frames(batch)
            batch = []
    if batch:
        rt.pipeline.process_frames(batch)
    del batch, frames
    snap = _traced()
    used = _total(snap) - base
    ring = rt.components.packet_ring if full else None
    ring_bytes = ring_frames = 0
    if ring is not None and len(ring):
        ring_frames = len(ring)
        ring.clear()
        ring_bytes = used - (_total(_traced()) - base)
    # A flow makes its key string on first use and keeps it; --no-db --no-ui runs never ask,
    # but the dashboard's per-second rates and the database writer ask for every live flow.
    before_keys = _total(_traced())
    for f in rt.flows.active_flows():
        f.flow_key
    key_bytes = _total(_traced()) - before_keys
    tracemalloc.stop()
    if top:
        for stat in snap.statistics("lineno")[:top]:
            fr = stat.traceback[0]
            name = fr.filename.replace(str(ROOT) + "/", "")
            print(f"    {stat.size / 1024 / 1024:7.1f} MiB {stat.count:>8} objs  {name}:{fr.lineno}")
    hosts = {f.src_ip for f in rt.flows.active_flows()} | {f.dst_ip for f in rt.flows.active_flows()}
    return used - ring_bytes, rt.flows.active_count, len(hosts), ring_bytes, ring_frames, key_bytes


def _measure_apart(path: Path, full: bool, top: int) -> tuple[int, int, int, int, int, int]:
    """:func:`measure` in a fresh interpreter: module-level caches (the parser's address
    strings) filled by an earlier run would otherwise not be counted in a later one."""
    cmd = [sys.executable, __file__, "--one", str(path), "--top", str(top)]
    if full:
        cmd.append("--full-only")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    *listing, last = out.splitlines()
    if listing:
        print("\n".join(listing))
    return tuple(json.loads(last))  # type: ignore[return-value]


def main_() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--top", type=int, default=0, help="list the N lines holding most memory")
    ap.add_argument("--full-only", action="store_true", help="skip the flow-table-only run")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.full_only, a.top)))
        return
    from bench.gen_capture import generate
    runs = [(False, 0)] if not a.full_only else []
    runs += [(True, 1000), (True, 10_000), (True, 0)]
    fit: list[tuple[int, int, int]] = []
    with tempfile.TemporaryDirectory() as td:
        for full, hosts in runs:
            path = Path(td) / f"mem-{hosts}.pcap"
            if not path.exists():
                # 4 packets per flow: handshake and data in both directions, all flows stay active
                generate(path, a.flows * 4, a.flows, hosts=hosts)
            used, n, nhosts, ring_bytes, ring_frames, key_bytes = _measure_apart(
                path, full, a.top if full and not hosts else 0)
            label = "all trackers" if full else "flow table + TCP"
            shape = f"{nhosts:>6} hosts" if hosts else "own hosts"
            print(f"{label:<18} {n:>7} flows {shape:>12}  {used / 1024 / 1024:8.1f} MiB  "
                  f"{used / max(n, 1):8.0f} bytes/flow", flush=True)
            if full and hosts:
                fit.append((used, n, nhosts))
            if full and hosts == 1000:
                print(f"{'  + flow keys':<18} {n:>7} flows (made once the dashboard or the "
                      f"database asks)  {key_bytes / max(n, 1):6.0f} bytes/flow more", flush=True)
            if ring_frames and not hosts:
                print(f"{'packet ring':<18} {ring_frames:>7} frames (fixed budget, not per flow)  "
                      f"{ring_bytes / 1024 / 1024:5.1f} MiB  {ring_bytes / ring_frames:6.0f} bytes/frame")
    if len(fit) == 2 and fit[0][1] == fit[1][1] and fit[0][2] != fit[1][2]:
        (u1, n, h1), (u2, _, h2) = fit
        per_host = (u2 - u1) / (h2 - h1)
        per_flow = (u1 - h1 * per_host) / n
        print(f"all trackers: {per_flow:.0f} bytes per flow + {per_host:.0f} bytes per host "
              f"(solved from the two shared-host runs)")


if __name__ == "__main__":
    main_()
