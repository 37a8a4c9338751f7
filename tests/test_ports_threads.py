"""Readers on another thread while the pipeline thread feeds packets (no shared lock held)."""
from __future__ import annotations

import threading

import msgspec

from capture.reader import iter_parsed
from tests.conftest import CAPTURES, require
from tracking.hops import HopAnalyzer
from tracking.packet_stats import PacketAnalyzer
from tracking.ports import PortTracker


def test_snapshots_while_packets_flow() -> None:
    path = CAPTURES / "mobile-android-mix.pcap"
    require(path.exists(), f"{path} missing")
    base = list(iter_parsed(path))
    span = base[-1].ts - base[0].ts + 1
    # 20 copies of the capture, one after the other in time, with fresh addresses each round
    pkts = [msgspec.structs.replace(p, ts=p.ts + r * span,
                                    src_ip=f"{p.src_ip}{r}" if p.src_ip else "")
            for r in range(20) for p in base]
    ports, hops, stats = PortTracker(), HopAnalyzer(), PacketAnalyzer()
    done = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for p in pkts:
                ports.process(p)
                hops.process(p)
                stats.process(p)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=feed)
    t.start()
    reads = 0
    while not done.is_set() or reads == 0:
        ports.snapshot("rate")
        ports.get_scan_activity()
        ports.history(443)
        hops.snapshot()
        stats.snapshot()
        reads += 1
    t.join()
    assert not errors
    assert stats.snapshot().packets == len(pkts)
    assert sum(r["packets"] for r in ports.rows()) == \
        sum(1 for p in pkts if p.proto in (6, 17) and (p.sport or p.dport)
            and not (p.is_fragment and p.frag_offset))
