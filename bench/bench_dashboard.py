"""Frame time of the dashboard with 1k, 10k and 50k flows in the tracker.

Builds a Runtime reading a real capture, then adds synthetic flows through the real
FlowTracker.process, and times build-state + render of the Traffic view (and the other views)
into an in-memory console. Run: .venv/bin/python -m bench.bench_dashboard
"""
from __future__ import annotations

import io
import statistics
import threading
import time
from pathlib import Path

from rich.console import Console

import config
import main
from capture.packet import ACK, PROTO_TCP, PROTO_UDP, ParsedPacket
from dashboard import screen
from dashboard.state import StateBuilder
from dashboard.view_state import VIEW_ORDER, ViewState
from runtime import Runtime

CAPTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "captures" / "http-espn-browse.pcapng"


def make_runtime() -> Runtime:
    args = main.build_parser().parse_args(["-r", str(CAPTURE), "--no-db", "--offline"])
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


def time_frames(rt: Runtime, view: str, width: int, height: int, frames: int = 15) -> list[float]:
    builder = StateBuilder(rt)
    vs = ViewState(view=view)
    out = []
    for i in range(frames):
        console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True,
                          color_system="truecolor")
        t0 = time.perf_counter()
        vs.page_rows = screen.page_rows(height)
        st = builder.build(vs)
        console.print(screen.frame(st, vs), height=height)
        out.append(time.perf_counter() - t0)
        if i == 2:
            vs.sort = "rate"   # exercise another sort after the first rate sample
    return out


def main_() -> None:
    rt = make_runtime()
    rt.start_capture()
    while not rt.capture_done:
        time.sleep(0.01)
    have = 0
    print(f"refresh interval: {rt.settings.REFRESH_RATE * 1000:.0f} ms")
    for n in (1000, 10000, 50000):
        add_flows(rt, n - have, have)
        have = n
        for w, h in ((160, 48), (80, 24)):
            t = time_frames(rt, "traffic", w, h)
            print(f"{n:>6} flows  traffic {w}x{h}: median {statistics.median(t) * 1000:6.1f} ms  "
                  f"max {max(t) * 1000:6.1f} ms")
        worst = max(((v, statistics.median(time_frames(rt, v, 160, 48, 5))) for v in VIEW_ORDER),
                    key=lambda kv: kv[1])
        print(f"{n:>6} flows  slowest other view: {worst[0]} median {worst[1] * 1000:.1f} ms")
    rt.shutdown()


if __name__ == "__main__":
    main_()
