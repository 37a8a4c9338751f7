"""The session recorder over a real capture: what is stored at every tick matches the tracker."""
from __future__ import annotations

from pathlib import Path

import config
from capture.reader import CaptureFile
from conftest import CAPTURES, require
from db.connection import ConnectionPool
from db.repositories.flow_repo import FlowRepository
from persistence import SessionRecorder
from pipeline import Pipeline
from tracking.flow import FlowTracker
from tracking.tcp_state import TcpConnection

CAPTURE = CAPTURES / "http-espn-browse.pcapng"


def _counters(row: dict) -> tuple:
    return (row["packets_sent"], row["packets_recv"], row["bytes_sent"], row["bytes_recv"],
            row["last_seen"], row["state"], row.get("retransmissions"))


def test_every_tick_stores_the_flows_as_the_tracker_has_them(tmp_path: Path) -> None:
    require(CAPTURE.exists(), f"{CAPTURE} missing")
    settings = config.load_settings({})
    pool = ConnectionPool(tmp_path / "d.db")
    flows = FlowTracker(tcp_factory=TcpConnection)
    # the whole row carries a field only it has: it must survive the counters-only updates
    recorder = SessionRecorder(pool, settings, "file", CAPTURE.name, "", flows,
                               row_for=lambda f: {**f.as_dict(), "dst_country": "NL"})
    pipeline = Pipeline(flows)
    repo = FlowRepository(pool)
    checked = 0

    def tick(now: float) -> None:
        nonlocal checked
        recorder.on_tick(now)
        assert recorder.writer.flush(10)
        stored = {r["flow_key"]: r for r in repo.list(recorder.session_id, limit=100_000)}
        for f in flows.active_flows():
            assert _counters(stored[f.flow_key]) == _counters(f.as_dict()), f.flow_key
            checked += 1

    pipeline.periodic.append(tick)
    frames = list(CaptureFile(CAPTURE))
    for i in range(0, len(frames), 64):
        pipeline.process_frames(frames[i:i + 64])
    pipeline.finish()
    recorder.close(pipeline.counters.packets, pipeline.counters.bytes, flows.total_flows, 0)
    assert checked > 50   # several ticks, each with flows that were stored before
    stored = list(repo.iter_all(recorder.session_id))
    assert len(stored) == flows.total_flows
    by_key = {f.flow_key: f.as_dict() for f in flows.all_flows()}
    for row in stored:
        live = by_key[row["flow_key"]]
        assert _counters(row) == _counters(live)
        assert (row["src_port"], row["dst_port"], row["first_seen"], row["classification"]) == \
            (live["src_port"], live["dst_port"], live["first_seen"], live["classification"])
        assert row["dst_country"] == "NL"
    pool.close()


def test_every_dns_transaction_is_stored_once_whatever_the_ticks(tmp_path) -> None:
    """The database's DNS rows are the export's DNS records, each once: a query still waiting
    at a tick is not stored then and again when its answer comes. A long capture (its copies a
    minute apart, so ticks fall between queries and answers) checks it."""
    import json
    import sqlite3

    import main
    from conftest import repeat_capture

    long = repeat_capture(CAPTURES / "http-dns-wikipedia-browse.pcap", 20, tmp_path / "long.pcapng")
    db, out = tmp_path / "t.db", tmp_path / "t.json"
    rc = main.run(["-r", str(long), "--no-ui", "--offline", "--jobs", "1", "--db", str(db),
                   "--export-json", str(out), "--log-file", str(tmp_path / "log")])
    assert rc == 0
    exported = [(r["time"], r["client"], r["client_port"], r["id"], r["qname"])
                for r in json.loads(out.read_text())["dns"]]
    with sqlite3.connect(db) as conn:
        stored = conn.execute(
            "SELECT ts, src_ip, src_port, trans_id, query FROM dns_queries ORDER BY id").fetchall()
    assert len(exported) > 20
    assert sorted(stored) == sorted(exported)
    # and in the same order: completed transactions as they completed, then those still waiting
    assert stored == exported
