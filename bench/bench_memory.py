#!/usr/bin/env python3
"""Memory per live flow: the whole pipeline holding N concurrent flows (default 50k).

    python bench/bench_memory.py [--flows 50000]

Feeds a generated capture whose flows are all still active at the end (no expiry), and reports
the traced Python heap growth divided by the number of flows, for the flow table alone and for
the full set of trackers. Target: under 1 KiB per flow beyond the interpreter's baseline.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point


def measure(path: Path, full: bool) -> tuple[int, int]:
    import config
    import main
    from capture.reader import CaptureFile
    from runtime import Runtime
    args = main.build_parser().parse_args(["-r", str(path), "--no-ui", "--no-db", "--offline"])
    settings = config.load_settings(main.cli_overrides(args))
    rt = Runtime(settings, args, threading.Event())
    if not full:
        rt.pipeline.stages = []
        rt.pipeline.flow_stages = []
    frames = CaptureFile(path)
    gc.collect()
    tracemalloc.start()
    # The offline geo database loads in a background thread at start-up (once per process,
    # not per flow): leave its allocations out.
    skip = [tracemalloc.Filter(False, "*geoip2fast*"), tracemalloc.Filter(False, tracemalloc.__file__)]
    base = sum(t.size for t in tracemalloc.take_snapshot().filter_traces(skip).statistics("filename"))
    batch = []
    for f in frames:
        batch.append(f)
        if len(batch) == 1024:
            rt.pipeline.process_frames(batch)
            batch = []
    if batch:
        rt.pipeline.process_frames(batch)
    del batch, frames
    gc.collect()
    used = sum(t.size for t in tracemalloc.take_snapshot().filter_traces(skip).statistics("filename")) - base
    tracemalloc.stop()
    return used, rt.flows.active_count


def main_() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=50_000)
    a = ap.parse_args()
    from bench.gen_capture import generate
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "mem.pcap"
        # 4 packets per flow: handshake and data in both directions, all flows stay active
        generate(path, a.flows * 4, a.flows)
        for full in (False, True):
            used, n = measure(path, full)
            label = "all trackers" if full else "flow table + TCP"
            print(f"{label:<18} {n:>7} active flows  {used / 1024 / 1024:8.1f} MiB  "
                  f"{used / max(n, 1):8.0f} bytes/flow")


if __name__ == "__main__":
    main_()
