"""Frame time of the dashboard with 1k, 10k and 50k flows in the tracker, and its cost to capture.

    .venv/bin/python -m bench.bench_dashboard [--sizes 1000,10000,50000] [--frames 20]
                                              [--views traffic,stats] [--capture-rate]

Frames: builds a Runtime reading a real capture, adds synthetic flows through the real
FlowTracker.process, then for each view renders ``--frames`` frames (build state + render into an
offscreen Console) spaced at the refresh interval in real time, as the app does, so periodic work
(rate samples, aggregates, background threads) lands in the figures. One StateBuilder serves every
view of a size, as in the app. Per view: median and p95 frame time, the worst frame after the
first (a periodic stall shows here), and the first frame after switching to the view.

``--first-frame`` (always printed first, since it needs a fresh process): the first frame right
after the capture starts, while the bundled geo data is still loading.

``--capture-rate``: the pipeline on a generated capture (bench/gen_capture.py) with and without
the dashboard building and rendering frames at REFRESH_RATE on another thread; prints the
capture's packets/s both ways and their ratio.
"""
from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

import config
import main
from capture.packet import ACK, PROTO_TCP, PROTO_UDP, ParsedPacket
from dashboard import screen
from dashboard.state import StateBuilder
from dashboard.view_state import VIEW_ORDER, ViewState
from runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT.parent / "shared" / "captures" / "http-espn-browse.pcapng"
GENERATED = ROOT / "bench" / "data" / "bench-dash-300k.pcap"


def make_runtime(capture: Path = CAPTURE, *extra: str) -> Runtime:
    args = main.build_parser().parse_args(["-r", str(capture), "--no-db", "--offline",
                                           "--log-file", "/dev/null", *extra])
    settings = config.load_settings(main.cli_overrides(args), None)
    return Runtime(settings, args, threading.Event())


def add_flows(rt: Runtime, n: int, start: int = 0) -> None:
    with rt.flows.lock:
        for i in range(start, start + n):
            proto = PROTO_TCP if i % 3 else PROTO_UDP
            pkt = ParsedPacket(ts=1000.0 + i * 1e-3, wire_len=60 + i % 1400, ip_version=4,
                               src_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                               dst_ip=f"93.184.{i >> 8 & 255}.{i & 255}", ttl=64, proto=proto,
                               sport=1024 + i % 60000, dport=443 if proto == PROTO_TCP else 53,
                               tcp_flags=ACK if proto == PROTO_TCP else 0)
            rt.flows.process(pkt)


def frame(builder: StateBuilder, vs: ViewState, width: int, height: int) -> float:
    """One tick of the app: build the state, render it offscreen; returns seconds."""
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True,
                      color_system="truecolor")
    t0 = time.perf_counter()
    vs.page_rows = screen.page_rows(height)
    st = builder.build(vs)
    console.print(screen.frame(st, vs), height=height)
    return time.perf_counter() - t0


def time_view(builder: StateBuilder, view: str, width: int, height: int, frames: int,
              interval: float) -> list[float]:
    vs = ViewState(view=view)
    out = []
    next_at = time.monotonic()
    for i in range(frames):
        out.append(frame(builder, vs, width, height))
        if i == frames // 2 and view == "traffic":
            vs.sort = "rate"   # exercise another sort after the first rate sample
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return out


def p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def fmt(t: list[float]) -> str:
    rest = t[1:] or t
    return (f"median {statistics.median(rest) * 1e3:6.1f}  p95 {p95(rest) * 1e3:6.1f}  "
            f"worst {max(rest) * 1e3:6.1f}  first {t[0] * 1e3:6.1f} ms")


def first_frame() -> None:
    """The app's start: capture starts, the first frame is drawn while geo data still loads."""
    rt = make_runtime()
    builder = StateBuilder(rt)
    rt.start_capture()
    while not rt.flows.active_count and not rt.capture_done:
        time.sleep(0.001)   # the first flows are in: the table has rows to enrich
    t = frame(builder, ViewState(), 160, 48)
    print(f"first frame after start (geo data loading): {t * 1e3:.1f} ms")
    while not rt.capture_done:
        time.sleep(0.01)
    builder.close()
    rt.shutdown()
    rt.close()


def frames(sizes: list[int], views: list[str], n_frames: int) -> None:
    rt = make_runtime()
    rt.start_capture()
    while not rt.capture_done:
        time.sleep(0.01)
    interval = float(rt.settings.REFRESH_RATE)
    print(f"refresh interval: {interval * 1000:.0f} ms; {n_frames} frames per view, "
          "wall-clock ms per frame (build + render)")
    have = 0
    for n in sizes:
        add_flows(rt, n - have, have)
        have = n
        builder = StateBuilder(rt)
        for view in views:
            sizes_ = ((160, 48), (80, 24)) if view == "traffic" else ((160, 48),)
            for w, h in sizes_:
                t = time_view(builder, view, w, h, n_frames, interval)
                print(f"{n:>6} flows  {view:<9} {w:>3}x{h:<3} {fmt(t)}", flush=True)
        builder.close()
    rt.shutdown()
    rt.close()


# ---- capture rate with and without the dashboard ----------------------------------------------
def capture_rate(path: Path, with_dashboard: bool, view: str) -> tuple[float, int, list[float]]:
    """Packets/s of a full run over ``path``; with the dashboard rendering at REFRESH_RATE."""
    rt = make_runtime(path)
    interval = float(rt.settings.REFRESH_RATE)
    done = threading.Event()
    frame_times: list[float] = []

    def ui() -> None:
        builder = StateBuilder(rt)
        cycle = view == "cycle"
        vs = ViewState(view="traffic" if cycle else view)
        views = [v for v in VIEW_ORDER if v != "relay"]
        i = 0
        next_at = time.monotonic()
        while not done.is_set():
            frame_times.append(frame(builder, vs, 160, 48))
            i += 1
            if cycle:
                vs.switch(views[(i // 10) % len(views)])
            next_at += interval
            done.wait(max(0.0, next_at - time.monotonic()))
        builder.close()

    t0 = time.perf_counter()
    rt.start_capture()
    th = threading.Thread(target=ui, name="dashboard-bench") if with_dashboard else None
    if th is not None:
        th.start()
    while not rt.capture_done:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    done.set()
    if th is not None:
        th.join()
    packets = rt.pipeline.counters.packets
    rt.shutdown()
    rt.close()
    return packets / elapsed, packets, frame_times


def capture_rates(rounds: int, views: list[str]) -> None:
    if not GENERATED.exists():
        from bench.gen_capture import generate
        GENERATED.parent.mkdir(parents=True, exist_ok=True)
        generate(GENERATED, 300_000, 50_000)
    print(f"capture rate: {GENERATED.name}, best of {rounds} alternating runs each way")
    for view in views:
        without: list[float] = []
        with_: list[float] = []
        ft: list[float] = []
        for _ in range(rounds):
            pps, n, _ = capture_rate(GENERATED, False, view)
            without.append(pps)
            pps, n, times = capture_rate(GENERATED, True, view)
            with_.append(pps)
            ft += times
        a, b = max(without), max(with_)
        print(f"  view {view:<9} without dashboard {a:>9,.0f} pkt/s   with {b:>9,.0f} pkt/s   "
              f"ratio {b / a:.3f}   ({n} packets; frames during capture: {fmt(ft) if ft else '-'})",
              flush=True)


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--views", default=",".join(VIEW_ORDER))
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--capture-rate", action="store_true", help="also measure capture pkt/s")
    ap.add_argument("--capture-only", action="store_true", help="only measure capture pkt/s")
    ap.add_argument("--capture-views", default="traffic,cycle")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not a.capture_only:
        first_frame()
        frames([int(x) for x in a.sizes.split(",")], a.views.split(","), a.frames)
    if a.capture_rate or a.capture_only:
        capture_rates(a.rounds, a.capture_views.split(","))


if __name__ == "__main__":
    main_()
