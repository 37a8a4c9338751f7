#!/usr/bin/env python3
"""Security throughput: per-packet cost of each detector and of the whole monitor, blocklist
load/lookup with millions of entries, and the alert engine's dedup path.

    python bench/bench_security.py [CAPTURE] [--packets N] [--entries N] [--rounds R]

Packets are parsed once up front, so the figures are the detection cost alone (the pipeline
budget is ~7.7 us/packet for 130k packets/s in total). The figure that matters is "in the
pipeline": a flow table alone against the same flow table with the monitor attached (its
packet stage and its flow stage), CPU time, best of R alternating runs; the detectors' own
``process`` rows are what each would cost if it were fed every packet without a flow table.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point

from capture.parser import parse  # noqa: E402
from capture.reader import CaptureFile, iter_parsed  # noqa: E402
from security.alerts import AlertEngine  # noqa: E402
from security.detectors import (ArpSpoofDetector, CleartextCredentialDetector,  # noqa: E402
                                DnsDetector, PortScanDetector, ReputationDetector,
                                SynFloodDetector)
from security.monitor import SecurityMonitor  # noqa: E402
from security.reputation import BlockList  # noqa: E402


def in_pipeline(packets, rounds: int) -> tuple[float, float, float]:
    """(flows alone, flows + monitor, snapshot seconds): CPU us/packet, best of ``rounds``."""
    from tracking.flow import FlowTracker
    from tracking.tcp_state import TcpConnection

    def run(with_monitor: bool) -> tuple[float, float]:
        flows = FlowTracker(tcp_factory=TcpConnection)
        fprocess = flows.process
        stage = fstage = None
        mon = None
        if with_monitor:
            mon = SecurityMonitor.from_settings({}, destinations=[])
            stage = mon.process
            if hasattr(mon, "attach"):  # older monitors were a packet stage only
                mon.attach(flows)
                fstage = mon.flow_stage
        t = time.process_time()
        for pkt in packets:
            if stage is not None:
                stage(pkt)
            p = pkt
            while p is not None:  # the pipeline tracks tunnelled packets too
                hit = fprocess(p)
                if hit is not None and fstage is not None:
                    fstage(p, hit[0], hit[1])
                p = p.inner
        el = time.process_time() - t
        snap = 0.0
        if mon is not None:
            t = time.process_time()
            mon.snapshot()
            snap = time.process_time() - t
        return el / len(packets) * 1e6, snap

    base, both, snap = [], [], 0.0
    for _ in range(rounds):
        base.append(run(False)[0])
        us, snap = run(True)
        both.append(us)
    return min(base), min(both), snap


def per_packet(fn, packets) -> float:
    t = time.perf_counter()
    for p in packets:
        fn(p)
    return (time.perf_counter() - t) / len(packets) * 1e6


def random_blocklist(n: int) -> list[str]:
    rnd = random.Random(5)
    out = []
    for _ in range(n):
        if rnd.random() < 0.7:
            out.append(f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}."
                       f"{rnd.randint(0, 255)}")
        else:
            out.append(f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.0/24")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture", nargs="?", type=Path, default=ROOT / "bench/data/bench-1m.pcap")
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--entries", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating in-pipeline runs")
    a = ap.parse_args()
    if not a.capture.exists():
        from bench.gen_capture import generate
        generate(a.capture, 1_000_000, 50_000)
    frames = list(itertools.islice(CaptureFile(a.capture), a.packets))
    t = time.perf_counter()
    packets = [parse(f.data, f.linktype, f.ts, f.wire_len, f.iface) for f in frames]
    parse_us = (time.perf_counter() - t) / len(frames) * 1e6
    del frames
    # In the pipeline packets are not kept; holding them all here would make every cyclic GC
    # pass walk 200k records and charge that to whichever detector allocates. Freeze them.
    gc.freeze()
    print(f"capture: {a.capture} ({len(packets)} packets parsed up front)")
    print(f"  {'parse (reference)':<24} {parse_us:6.2f} us/packet  (compare ratios: the machine's "
          f"load moves absolute figures)")

    lines = random_blocklist(a.entries)
    bl = BlockList()
    t = time.perf_counter()
    bl.load_lines(lines, "bench")
    load_s = time.perf_counter() - t
    probes = [f"{random.randint(1, 223)}.{random.randint(0, 255)}.{random.randint(0, 255)}."
              f"{random.randint(0, 255)}" for _ in range(200_000)]
    t = time.perf_counter()
    for ip in probes:
        bl.lookup(ip)
    lookup_us = (time.perf_counter() - t) / len(probes) * 1e6
    print(f"blocklist: {len(bl):,} prefixes loaded in {load_s:.2f} s, "
          f"lookup {lookup_us:.2f} us")

    eng = AlertEngine()
    rows = [
        ("portscan", PortScanDetector(eng).process),
        ("synflood", SynFloodDetector(eng).process),
        ("arp", ArpSpoofDetector(eng).process),
        ("dns", DnsDetector(eng).process),
        ("cleartext", CleartextCredentialDetector(eng).process),
        ("reputation(blocklist)", ReputationDetector(eng, blocklist=bl).process),
    ]
    for name, fn in rows:
        print(f"  {name:<24} {per_packet(fn, packets):6.2f} us/packet")
    mon = SecurityMonitor.from_settings({}, destinations=[])
    us = per_packet(mon.process, packets)
    print(f"  {'monitor, own flow table':<24} {us:6.2f} us/packet  (flows included)")
    print(f"  alerts raised on this capture: {len(mon.engine.alerts())}")
    flows_us, both_us, snap_s = in_pipeline(packets, a.rounds)
    print(f"  {'monitor in the pipeline':<24} {both_us - flows_us:6.2f} us/packet CPU over the "
          f"flow table's {flows_us:.2f} (best of {a.rounds}); snapshot with graph "
          f"{snap_s * 1e3:.1f} ms")

    # The synthetic capture opens a new connection every other packet (worst case for the
    # scan tables); real traffic is mostly established flows. Measure the real captures too.
    shared = ROOT.parent / "shared" / "captures"
    real = []
    for p in sorted(shared.glob("*.pcap*")):
        if "portscan" in p.name or "invalid" in p.name:
            continue
        try:
            real.extend(iter_parsed(p))
        except Exception:  # boundary: a damaged sample file only shortens the mix
            continue
    if real:
        real = real * max(1, 100_000 // len(real))
        gc.freeze()
        flows_us, both_us, _ = in_pipeline(real, a.rounds)
        print(f"  {'in the pipeline, real mix':<24} {both_us - flows_us:6.2f} us/packet CPU "
              f"({len(real)} packets from {shared.name})")

    eng = AlertEngine()
    n = 200_000
    t = time.perf_counter()
    for i in range(n):
        eng.raise_alert("port_scan", "high", f"10.0.0.{i % 50}", "", "m", {"ports": i},
                        ts=float(i) / 1000)
    print(f"alert engine: {n / (time.perf_counter() - t):,.0f} raise_alert/s "
          f"({len(eng.alerts())} distinct alerts kept)")


if __name__ == "__main__":
    main()
