#!/usr/bin/env python3
"""Database writer throughput while the Traffic panel's query runs, and size per 100k flows.

    python bench/bench_db.py [--flows 100000] [--updates 3] [--full-updates]
    python bench/bench_db.py --e2e bench/data/bench-1m.pcap

A producer thread upserts ``--flows`` distinct flows, each ``--updates`` times (the flow tracker
re-sends a flow as it grows), as fast as it can; meanwhile a reader thread runs "top 50 flows by
bytes for the session" in a loop. Like the session recorder, the first upsert of a flow is the
whole row and later ones carry only what changes (``--full-updates``: the whole row every time).
Prints (never asserts) the producer's call rate, the rows the writer committed per second,
coalesced/dropped counts, the reader's query latency, and the database size per 100k flows.

``--e2e CAPTURE`` instead runs the whole program's pipeline (as ``main.py -r CAPTURE --no-ui
--offline``) once with ``--no-db`` and once with a fresh database, and prints packets/s both
ways, the writer's queue (at most, and left when the capture ended), drops, the time the final
flush took, and the database size per million packets and per 100k flows.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point

from db.connection import ConnectionPool  # noqa: E402
from db.repositories.flow_repo import FlowRepository  # noqa: E402
from db.repositories.session_repo import SessionRepository  # noqa: E402
from db.writer import DatabaseWriter  # noqa: E402

COUNTRIES = ("US", "DE", "NL", "JP", "BR", "GB", "FR", "IE")
ORGS = ("Cloudflare, Inc.", "Google LLC", "Amazon.com, Inc.", "Akamai", "Fastly", "Hetzner")


def flow_row(i: int, step: int) -> dict[str, Any]:
    """A realistic enriched flow dict (TCP/443 mostly) at update ``step``."""
    n = step + 1
    a, b = divmod(i, 250)
    return {
        "flow_key": f"TCP|192.168.{a % 250}.{b + 1}|{40000 + i % 20000}|203.0.{i % 250}.{i % 199 + 1}|443",
        "protocol": "TCP", "ip_version": 4,
        "src_ip": f"192.168.{a % 250}.{b + 1}", "src_port": 40000 + i % 20000,
        "dst_ip": f"203.0.{i % 250}.{i % 199 + 1}", "dst_port": 443,
        "packets_sent": 10 * n, "packets_recv": 12 * n, "bytes_sent": 900 * n + i % 977,
        "bytes_recv": 14000 * n + i % 4093, "first_seen": 1.7e9 + i * 0.001,
        "last_seen": 1.7e9 + i * 0.001 + n, "duration": float(n), "state": "ESTABLISHED",
        "classification": "web", "encrypted": True, "ttl_sent": 64, "ttl_recv": 56,
        "retransmissions": i % 3, "fast_retransmissions": 0, "out_of_order": 0, "dup_acks": i % 2,
        "zero_windows": 0, "resets": 0, "handshake_rtt_ms": 12.5 + i % 40,
        "src_country": None, "src_city": None, "src_asn": None, "src_as_org": None,
        "src_fqdn": None, "src_domain": None, "src_name_source": None,
        "dst_country": COUNTRIES[i % len(COUNTRIES)], "dst_city": "Somewhere",
        "dst_asn": 13335 + i % 50, "dst_as_org": ORGS[i % len(ORGS)],
        "dst_fqdn": f"edge-{i % 5000}.cdn.example.net", "dst_domain": "example.net",
        "dst_name_source": "dns", "app_protocol": "TLS", "sni": f"edge-{i % 5000}.cdn.example.net",
        "alpn": "h2", "tls_version": "TLS 1.3", "ja3": "771,4865-4866-4867,0-23-65281,29-23-24,0",
        "ja4": "t13d1516h2_8daaf6152771_02713d6af862", "ja3s": None, "http_host": None,
        "http_user_agent": None, "src_os": "Linux", "dst_os": None, "anomaly_score": 0.0,
        "anomaly_reasons": [], "agent": "",
    }


def thread_cpu(name: str) -> float:
    """CPU seconds used so far by the live thread called ``name`` (the machine may be busy:
    CPU per row is the steadier figure)."""
    for t in threading.enumerate():
        if t.name == name and t.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return 0.0


def light_row(i: int, step: int) -> dict[str, Any]:
    """What the session recorder sends for a flow it stored before (persistence.counters_row)."""
    full = flow_row(i, step)
    keys = ("flow_key", "protocol", "ip_version", "src_ip", "src_port", "dst_ip", "dst_port",
            "first_seen", "last_seen", "packets_sent", "packets_recv", "bytes_sent", "bytes_recv",
            "state", "retransmissions", "fast_retransmissions", "out_of_order", "dup_acks",
            "zero_windows", "resets", "handshake_rtt_ms")
    return {k: full[k] for k in keys}


def end_to_end(capture: Path) -> None:
    """The real pipeline over ``capture`` without and with the database."""
    import gc
    import config
    import main as cli
    from runtime import Runtime

    def run(db: Path | None) -> dict[str, Any]:
        argv = ["-r", str(capture), "--no-ui", "--offline", "--log-file", "/dev/null"]
        argv += ["--db", str(db)] if db else ["--no-db"]
        args = cli.build_parser().parse_args(argv)
        rt = Runtime(config.load_settings(cli.cli_overrides(args)), args, threading.Event())
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        rt.start_capture()
        rt.wait_capture()
        out: dict[str, Any] = {"capture_s": time.perf_counter() - t0,
                               "cpu_s": time.process_time() - c0}
        if rt.recorder is not None:
            out["at_end"] = dict(rt.recorder.stats())
        t1 = time.perf_counter()
        rt.shutdown()
        out["shutdown_s"] = time.perf_counter() - t1
        m = rt.meta()
        out["packets"], out["flows"] = m["packets"], m["flows"]
        if rt.recorder is not None:
            out["final"] = dict(rt.recorder.stats())
        rt.close()
        return out

    tmp = tempfile.TemporaryDirectory()
    db = Path(tmp.name) / "e2e.db"
    runs = {"--no-db": run(None), "--db": run(db)}
    size = db.stat().st_size
    print(f"capture: {capture}")
    for label, r in runs.items():
        print(f"  {label:<8} {r['packets'] / r['capture_s']:>9,.0f} pkt/s wall "
              f"({r['capture_s']:.1f} s, {r['cpu_s'] / r['packets'] * 1e6:.1f} us CPU/pkt), "
              f"shutdown {r['shutdown_s']:.1f} s")
    r = runs["--db"]
    end, final = r["at_end"], r["final"]
    print(f"  writer: max queued {final['max_queued']}, queued when the capture ended "
          f"{end['queued']}, dropped {final['dropped']}, errors {final['errors']}, "
          f"rows written {final['written_ops']}, coalesced {final['coalesced']}, "
          f"batches {final['batches']}, checkpoints {final.get('checkpoints', '-')}")
    print(f"  size: {size / 1e6:.1f} MB for {r['packets']} packets / {r['flows']} flows -> "
          f"{size / 1e6 / (r['packets'] / 1e6):.1f} MB per 1M packets, "
          f"{size / 1e6 / (r['flows'] / 1e5):.1f} MB per 100k flows")
    tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=3, help="upserts per flow")
    ap.add_argument("--reader-interval", type=float, default=0.0,
                    help="seconds between reader queries (0 = back to back; 0.1 = dashboard)")
    ap.add_argument("--ticks", type=int, default=2,
                    help="then rounds updating every stored flow once, flushed each")
    ap.add_argument("--full-updates", action="store_true",
                    help="every upsert sends the whole row (no counters-only updates)")
    ap.add_argument("--db", type=Path, default=None, help="file to use (default: a temp dir)")
    ap.add_argument("--e2e", type=Path, default=None, metavar="CAPTURE",
                    help="end to end: the real pipeline over CAPTURE with and without --db")
    args = ap.parse_args()
    if args.e2e is not None:
        end_to_end(args.e2e)
        return

    tmp = tempfile.TemporaryDirectory()
    path = args.db or Path(tmp.name) / "bench.db"
    pool = ConnectionPool(path)
    sid = SessionRepository(pool).start("file", "bench")
    flows = FlowRepository(pool)
    writer = DatabaseWriter(pool).start()
    stop = threading.Event()
    latencies: list[float] = []

    def reader() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            flows.list(sid, sort="bytes", limit=50)
            latencies.append(time.perf_counter() - t)
            if args.reader_interval:
                stop.wait(args.reader_interval)

    rows = [[flow_row(i, s) if s == 0 or args.full_updates else light_row(i, s)
             for i in range(args.flows)] for s in range(args.updates)]
    rt = threading.Thread(target=reader, daemon=True)
    rt.start()
    t0 = time.perf_counter()
    w0 = thread_cpu("db-writer")
    calls = 0
    # update rounds interleave the way a tracker re-sends busy flows: a sliding window
    window = 5000
    for start in range(0, args.flows, window):
        for s in range(args.updates):
            for row in rows[s][start:start + window]:
                writer.upsert_flow(sid, row)
                calls += 1
    produced = time.perf_counter() - t0
    writer.flush()
    done = time.perf_counter() - t0
    stats = writer.stats()
    w1 = thread_cpu("db-writer")
    # then the recorder's steady state: every stored flow changed since the last tick
    tick_rates: list[float] = []
    tick_cpu = 0.0
    for r in range(args.ticks):
        step = args.updates + r
        tick_rows = [flow_row(i, step) if args.full_updates else light_row(i, step)
                     for i in range(args.flows)]
        t = time.perf_counter()
        for row in tick_rows:
            writer.upsert_flow(sid, row)
        c = thread_cpu("db-writer")
        writer.flush()
        tick_cpu += thread_cpu("db-writer") - c
        tick_rates.append(len(tick_rows) / (time.perf_counter() - t))
    stop.set()
    rt.join()
    tick_stats = writer.stats()
    writer.close()

    with pool.writer() as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, page_size = (conn.execute("PRAGMA page_count").fetchone()[0],
                            conn.execute("PRAGMA page_size").fetchone()[0])
    stored = flows.count(sid)
    pool.close()
    size = path.stat().st_size

    lat_ms = sorted(x * 1000 for x in latencies) or [0.0]
    print(f"reader interval {args.reader_interval} s; flows {args.flows}, upserts {calls} ({args.updates} per flow, "
          f"{'whole rows' if args.full_updates else 'then counters only'}), "
          f"batch {writer.batch_size}, flush {writer.flush_s * 1000:.0f} ms, queue {writer.queue_size}")
    print(f"producer: {calls / produced:,.0f} upsert calls/s ({produced * 1e6 / calls:.2f} us/call)")
    print(f"writer:   {stats['written_ops'] / done:,.0f} rows committed/s, "
          f"{calls / done:,.0f} upserts/s end to end ({done:.2f} s incl. final flush), "
          f"{(w1 - w0) * 1e6 / max(stats['written_ops'], 1):.1f} us writer CPU/row")
    print(f"          batches {stats['batches']}, coalesced {stats['coalesced']}, "
          f"dropped {stats['dropped']}, errors {stats['errors']}, max queued {stats['max_queued']}, "
          f"checkpoints {stats.get('checkpoints', '-')}, state {stats['state']}")
    if tick_rates:
        print(f"ticks:    {args.ticks} rounds updating all {args.flows} stored flows: "
              + ", ".join(f"{x:,.0f}" for x in tick_rates) + " rows committed/s, "
              f"{tick_cpu * 1e6 / (args.ticks * args.flows):.1f} us writer CPU/row "
              f"(max queued {tick_stats['max_queued']}, dropped {tick_stats['dropped']})")
    print(f"reader:   top-50-by-bytes x{len(latencies)}: p50 {statistics.median(lat_ms):.2f} ms, "
          f"p99 {lat_ms[int(len(lat_ms) * 0.99) - 1 if len(lat_ms) > 1 else 0]:.2f} ms, "
          f"max {lat_ms[-1]:.2f} ms")
    print(f"size:     {stored} flows stored, {size / 1e6:.1f} MB file "
          f"({pages * page_size / 1e6:.1f} MB in pages) -> "
          f"{size / max(stored, 1) * 100_000 / 1e6:.1f} MB per 100k flows")
    tmp.cleanup()


if __name__ == "__main__":
    main()
