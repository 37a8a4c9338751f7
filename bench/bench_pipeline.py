#!/usr/bin/env python3
"""End-to-end pipeline cost per packet, with a per-stage breakdown.

    python bench/bench_pipeline.py [CAPTURE] [--packets N] [--repeat R]

CAPTURE defaults to bench/data/bench-100k.pcap (generated if missing). Frames are read into
memory first, so the figures are parse + every tracker, without file I/O or the UI. The
trackers come from the same composition root as a real run (runtime.Runtime, --no-db
--offline), so stages added there show up here by name.

All figures are CPU microseconds per packet (process time: a busy shared machine disturbs it
less than wall time; compare figures of one run, never across runs or machines):

* ``pipeline``: the real Pipeline.process_frames with the run's GC settings, best of R;
* ``parse``: capture.parser.parse alone;
* per packet stage: the stage alone, fed the already parsed packets (a batch stage: fed them
  in batches of 1024);
* ``FlowTracker.process``: the flow table with the TCP analysis, and without it (the
  difference is the TCP analysis);
* per flow stage: the flow table plus that stage, minus the flow table alone.

The parts leave out the loop itself and cache effects of running everything together, so
they add up to a little less than the pipeline figure.
"""
from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point

_clock = time.process_time


def _runtime(path: Path) -> Any:
    import config
    import main
    from runtime import Runtime
    args = main.build_parser().parse_args(["-r", str(path), "--no-ui", "--no-db", "--offline",
                                           "--log-file", "/dev/null"])
    settings = config.load_settings(main.cli_overrides(args))
    return Runtime(settings, args, threading.Event())


def _name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", repr(fn))
    return name.replace("build_components.<locals>.", "")


def _timed(body: Callable[[], None]) -> float:
    gc.collect()
    t = _clock()
    body()
    return _clock() - t


def pipeline_time(path: Path, frames: list[Any], batch: int = 1024) -> float:
    from pipeline import tune_gc
    rt = _runtime(path)
    p = rt.pipeline
    tune_gc()

    def body() -> None:
        for i in range(0, len(frames), batch):
            p.process_frames(frames[i:i + batch])
    try:
        return _timed(body)
    finally:
        rt.close()


def flows_time(path: Path, pkts: list[Any], stage_index: int | None = None,
               tcp: bool = True) -> tuple[str, float]:
    """The flow table (and one flow stage) over parsed packets, tunnels included."""
    rt = _runtime(path)
    if not tcp:
        rt.flows.tcp_factory = None
    fprocess = rt.flows.process
    stage = rt.pipeline.flow_stages[stage_index] if stage_index is not None else None

    def body() -> None:
        for pkt in pkts:
            p = pkt
            while p is not None:
                hit = fprocess(p)
                if hit is not None and stage is not None:
                    stage(p, hit[0], hit[1])
                p = p.inner
    try:
        return (_name(stage) if stage is not None else "FlowTracker.process"), _timed(body)
    finally:
        rt.close()


def stage_time(path: Path, pkts: list[Any], index: int) -> tuple[str, float]:
    rt = _runtime(path)
    stage = rt.pipeline.stages[index]

    def body() -> None:
        for pkt in pkts:
            stage(pkt)
    try:
        return _name(stage), _timed(body)
    finally:
        rt.close()


def batch_stage_time(path: Path, pkts: list[Any], index: int) -> tuple[str, float]:
    rt = _runtime(path)
    stage = rt.pipeline.batch_stages[index]
    batches = [pkts[i:i + 1024] for i in range(0, len(pkts), 1024)]

    def body() -> None:
        for b in batches:
            stage(b)
    try:
        return _name(stage), _timed(body)
    finally:
        rt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=ROOT / "bench/data/bench-100k.pcap")
    ap.add_argument("--packets", type=int, default=0, help="use only the first N frames")
    ap.add_argument("--repeat", type=int, default=3, help="pipeline runs (the best is shown)")
    a = ap.parse_args()
    if not a.capture.exists():
        from bench.gen_capture import generate
        generate(a.capture, 100_000, 5_000)

    from capture.parser import parse
    from capture.reader import CaptureFile
    frames = list(CaptureFile(a.capture))
    if a.packets:
        frames = frames[:a.packets]
    n = len(frames)
    us = 1e6 / n

    best = min(pipeline_time(a.capture, frames) for _ in range(a.repeat))
    pkts: list[Any] = []
    add = pkts.append

    def parse_all() -> None:
        for f in frames:
            add(parse(f.data, f.linktype, f.ts, f.wire_len, f.iface))
    parts: dict[str, float] = {"parse": _timed(parse_all)}
    probe = _runtime(a.capture)
    n_stages, n_flow_stages = len(probe.pipeline.stages), len(probe.pipeline.flow_stages)
    n_batch = len(probe.pipeline.batch_stages)
    probe.close()
    for i in range(n_stages):
        name, sec = stage_time(a.capture, pkts, i)
        parts[name] = sec
    for i in range(n_batch):
        name, sec = batch_stage_time(a.capture, pkts, i)
        parts[name] = sec
    _, flows_only = flows_time(a.capture, pkts, tcp=False)
    _, flows_tcp = flows_time(a.capture, pkts)
    parts["FlowTracker.process (incl. TCP)"] = flows_tcp
    parts["  of which TCP analysis"] = flows_tcp - flows_only
    for i in range(n_flow_stages):
        name, sec = flows_time(a.capture, pkts, i)
        parts[name] = sec - flows_tcp

    print(f"capture: {a.capture} ({n} packets; CPU us/packet)")
    print(f"  pipeline  {best * us:7.2f} us/pkt  {n / best:>10,.0f} pkt/s  (best of {a.repeat})")
    print(f"  parts     {sum(v for k, v in parts.items() if not k.startswith(' ')) * us:7.2f}"
          f" us/pkt  (sum of the parts below)")
    for name, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<36} {sec * us:6.2f}")


if __name__ == "__main__":
    main()
