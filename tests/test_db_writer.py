"""DatabaseWriter: batching, coalescing, bounded queue, isolation of bad ops, flush on close."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from db.connection import ConnectionPool
from db.repositories.alert_repo import AlertRepository
from db.repositories.dns_query_repo import DnsQueryRepository
from db.repositories.flow_repo import FlowRepository
from db.repositories.port_repo import PortRepository
from db.repositories.session_repo import SessionRepository
from db.writer import DatabaseWriter


def flow_row(i: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "flow_key": f"TCP|10.0.0.1|{10000 + i}|10.0.0.2|443", "protocol": "TCP",
        "src_ip": "10.0.0.1", "src_port": 10000 + i, "dst_ip": "10.0.0.2", "dst_port": 443,
        "packets_sent": 1, "packets_recv": 0, "bytes_sent": 60, "bytes_recv": 0,
        "first_seen": 1000.0 + i, "last_seen": 1000.0 + i, "state": "SYN_SENT",
        "encrypted": True,
    }
    row.update(over)
    return row


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ConnectionPool]:
    p = ConnectionPool(tmp_path / "d.db")
    yield p
    p.close()


@pytest.fixture
def session(pool: ConnectionPool) -> int:
    return SessionRepository(pool).start("live", "eth0", "tcp port 443")


def test_updates_to_one_flow_become_one_row_with_the_last_values(pool: ConnectionPool,
                                                                 session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=100, flush_ms=50)
    # queue everything before the thread starts, so all updates meet in the queue
    for n in range(1, 501):
        writer.upsert_flow(session, flow_row(0, packets_sent=n, bytes_sent=60 * n,
                                             last_seen=1000.0 + n, state="ESTABLISHED"))
    assert writer.stats()["queued"] == 1
    writer.start()
    assert writer.flush(10)
    flows = FlowRepository(pool)
    assert flows.count(session) == 1
    row = flows.get(session, flow_row(0)["flow_key"])
    assert row is not None
    assert (row["packets_sent"], row["bytes_sent"], row["last_seen"], row["state"]) == \
        (500, 30000, 1500.0, "ESTABLISHED")
    stats = writer.stats()
    assert stats["coalesced"] == 499 and stats["written_ops"] == 1 and stats["dropped"] == 0
    writer.close()


def test_updates_while_running_still_end_in_one_row(pool: ConnectionPool, session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=10, flush_ms=1).start()
    for n in range(1, 2001):
        writer.upsert_flow(session, flow_row(n % 7, packets_sent=n))
    writer.close()
    rows = FlowRepository(pool).list(session, sort="first_seen", descending=False, limit=100)
    assert len(rows) == 7
    # each flow holds its last update: the largest n with n % 7 == i
    assert [r["packets_sent"] for r in rows] == [max(n for n in range(1, 2001) if n % 7 == i)
                                                 for i in range(7)]


def test_batches_hold_up_to_batch_size_ops_in_one_transaction(pool: ConnectionPool,
                                                              session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=50, flush_ms=10_000)
    for i in range(1000):
        writer.upsert_flow(session, flow_row(i))
    writer.start()
    assert writer.flush(10)
    stats = writer.stats()
    assert stats["written_ops"] == 1000
    assert stats["batches"] == 20
    assert FlowRepository(pool).count(session) == 1000
    writer.close()


def test_flush_interval_writes_a_partial_batch_without_flush(pool: ConnectionPool,
                                                             session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=1000, flush_ms=20).start()
    writer.upsert_flow(session, flow_row(1))
    done = threading.Event()
    # poll: the single op must be committed once the flush interval passes
    for _ in range(500):
        if writer.stats()["written_ops"] == 1:
            done.set()
            break
        done.wait(0.01)
    assert done.is_set()
    assert FlowRepository(pool).count(session) == 1
    writer.close()


def test_bounded_queue_drops_and_counts_instead_of_blocking(pool: ConnectionPool,
                                                            session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=10, queue_size=25)  # not started: nothing drains
    for i in range(40):
        writer.upsert_flow(session, flow_row(i))
    # updates to queued flows still land, without taking a slot
    writer.upsert_flow(session, flow_row(3, packets_sent=99))
    writer.submit(lambda conn: None)
    stats = writer.stats()
    assert (stats["queued"], stats["dropped"]) == (25, 16)
    writer.start()
    writer.close()
    flows = FlowRepository(pool)
    assert flows.count(session) == 25
    row = flows.get(session, flow_row(3)["flow_key"])
    assert row is not None and row["packets_sent"] == 99


def test_close_flushes_everything(pool: ConnectionPool, session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=100, flush_ms=60_000).start()
    for i in range(250):
        writer.upsert_flow(session, flow_row(i))
    writer.upsert_ports(session, [{"port": 443, "protocol": "TCP", "service": "https",
                                   "packets": 250, "bytes": 15000, "hits": 1}])
    writer.add_dns(session, [{"ts": 1000.0, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.53",
                              "query": "example.com", "qtype": "A", "rcode": "NOERROR",
                              "answers": ["93.184.216.34"], "ttls": [300]}])
    writer.add_alert(session, {"id": 1, "ts": 1000.0, "severity": "high", "rule_id": "port_scan",
                               "src": "10.0.0.9", "dst": "10.0.0.1", "message": "scan",
                               "evidence": {"ports": 40}, "count": 1})
    writer.close()
    assert writer.stats()["state"] == "stopped: closed"
    assert FlowRepository(pool).count(session) == 250
    assert PortRepository(pool).list(session)[0]["bytes"] == 15000
    assert DnsQueryRepository(pool).list(session)[0]["answers"] == ["93.184.216.34"]
    assert AlertRepository(pool).list(session)[0]["evidence"] == {"ports": 40}
    # after close, producers are not refused loudly: the op is counted as dropped
    writer.upsert_flow(session, flow_row(999))
    assert writer.stats()["dropped"] == 1


def test_a_bad_operation_is_skipped_and_the_rest_of_its_batch_kept(pool: ConnectionPool,
                                                                   session: int) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO devices (ip) VALUES ('10.0.0.7')")
        raise RuntimeError("repository bug")

    writer = DatabaseWriter(pool, batch_size=100)
    writer.upsert_flow(session, flow_row(1))
    writer.submit(broken)
    writer.upsert_flow(session, {"flow_key": "missing-everything"})   # NOT NULL violations
    writer.upsert_flow(session, flow_row(2))
    writer.start()
    assert writer.flush(10)
    stats = writer.stats()
    assert (stats["errors"], stats["written_ops"], stats["state"]) == (2, 2, "ok")
    assert FlowRepository(pool).count(session) == 2
    with pool.reader() as conn:  # the failed op's own statements were rolled back
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0
    writer.close()


def test_unknown_keys_survive_and_none_does_not_erase(pool: ConnectionPool, session: int) -> None:
    writer = DatabaseWriter(pool).start()
    writer.upsert_flow(session, flow_row(1, dst_fqdn="www.example.com", dst_country="US",
                                         anomaly_reasons=["beacon", "rare port"],
                                         tcp_window_scale=7, quic_version="v1"))
    writer.flush(10)
    # a later counter-only update (enrichment unknown at this point) keeps the names
    writer.upsert_flow(session, flow_row(1, packets_sent=5, dst_fqdn=None))
    writer.close()
    row = FlowRepository(pool).get(session, flow_row(1)["flow_key"])
    assert row is not None
    assert (row["packets_sent"], row["dst_fqdn"], row["dst_country"]) == (5, "www.example.com", "US")
    assert row["anomaly_reasons"] == ["beacon", "rare port"]
    assert (row["tcp_window_scale"], row["quic_version"]) == (7, "v1")
    assert row["encrypted"] is True


def test_flows_of_different_sessions_do_not_coalesce(pool: ConnectionPool, session: int) -> None:
    other = SessionRepository(pool).start("file", "b.pcap")
    writer = DatabaseWriter(pool)
    writer.upsert_flow(session, flow_row(1, packets_sent=1))
    writer.upsert_flow(other, flow_row(1, packets_sent=2))
    writer.start()
    writer.close()
    flows = FlowRepository(pool)
    a, b = flows.get(session, flow_row(1)["flow_key"]), flows.get(other, flow_row(1)["flow_key"])
    assert a is not None and b is not None
    assert (a["packets_sent"], b["packets_sent"]) == (1, 2)


def test_many_producers(pool: ConnectionPool, session: int) -> None:
    writer = DatabaseWriter(pool, batch_size=64, flush_ms=5).start()

    def produce(base: int) -> None:
        for i in range(500):
            writer.upsert_flow(session, flow_row(base + i % 100, packets_sent=i))

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    rows = FlowRepository(pool).list(session, limit=1000)
    assert len(rows) == 400
    # each flow holds its producer's last update: i = j + 400 for flow j of that producer
    assert all(r["packets_sent"] == (r["src_port"] - 10000) % 1000 + 400 for r in rows)
    assert writer.stats()["dropped"] == 0


def test_enrichment_only_update_keeps_the_counters(pool: ConnectionPool, session: int) -> None:
    flows = FlowRepository(pool)
    key = flow_row(1)["flow_key"]
    flows.upsert(session, [flow_row(1, packets_sent=7, bytes_sent=700)])
    flows.upsert(session, [{"flow_key": key, "protocol": "TCP", "src_ip": "10.0.0.1",
                            "dst_ip": "10.0.0.2", "first_seen": 1001.0, "last_seen": 1001.0,
                            "dst_fqdn": "db.example.net"}])
    row = flows.get(session, key)
    assert row is not None
    assert (row["packets_sent"], row["bytes_sent"], row["dst_fqdn"]) == (7, 700, "db.example.net")


def _counters(i: int, **over: Any) -> dict[str, Any]:
    """A counters-only update, as the session recorder sends for a flow it stored before."""
    full = flow_row(i)
    row = {k: full[k] for k in ("flow_key", "protocol", "src_ip", "src_port", "dst_ip",
                                "dst_port", "first_seen", "last_seen")}
    row.update(packets_sent=0, packets_recv=0, bytes_sent=0, bytes_recv=0, state="ESTABLISHED")
    row.update(over)
    return row


def test_counters_only_update_keeps_what_it_does_not_carry(pool: ConnectionPool,
                                                          session: int) -> None:
    writer = DatabaseWriter(pool).start()
    writer.upsert_flow(session, flow_row(1, dst_fqdn="api.example.com", classification="web",
                                         ttl_sent=64, tcp_window_scale=7))
    assert writer.flush(10)
    writer.upsert_flow(session, _counters(1, packets_sent=9, bytes_recv=5000, last_seen=1009.0,
                                          first_seen=999.0))
    writer.close()
    row = FlowRepository(pool).get(session, flow_row(1)["flow_key"])
    assert row is not None
    assert (row["packets_sent"], row["bytes_recv"], row["last_seen"], row["state"]) == \
        (9, 5000, 1009.0, "ESTABLISHED")
    assert (row["dst_fqdn"], row["classification"], row["ttl_sent"], row["encrypted"]) == \
        ("api.example.com", "web", 64, True)
    assert row["tcp_window_scale"] == 7
    assert row["first_seen"] == 1001.0   # a flow's start is written once


def test_counters_only_update_of_an_unknown_flow_stores_it(pool: ConnectionPool,
                                                           session: int) -> None:
    # its whole row was lost (say, dropped by a full queue): the flow still gets its row
    writer = DatabaseWriter(pool).start()
    writer.upsert_flow(session, _counters(4, packets_sent=3))
    writer.close()
    row = FlowRepository(pool).get(session, flow_row(4)["flow_key"])
    assert row is not None
    assert (row["src_port"], row["dst_port"], row["packets_sent"], row["packets_recv"]) == \
        (10004, 443, 3, 0)


def test_counters_only_update_queued_on_a_whole_row_keeps_both(pool: ConnectionPool,
                                                               session: int) -> None:
    writer = DatabaseWriter(pool)   # not started: both meet in the queue
    writer.upsert_flow(session, flow_row(2, dst_fqdn="cdn.example.net", classification="web"))
    writer.upsert_flow(session, _counters(2, packets_sent=40, bytes_sent=None))
    assert writer.stats()["queued"] == 1
    writer.start()
    writer.close()
    row = FlowRepository(pool).get(session, flow_row(2)["flow_key"])
    assert row is not None
    assert (row["packets_sent"], row["bytes_sent"], row["dst_fqdn"], row["classification"]) == \
        (40, 60, "cdn.example.net", "web")


def _write_rounds(writer: DatabaseWriter, sid: int, wal: Path, rounds: int) -> int:
    largest = 0
    for rnd in range(rounds):
        for i in range(4000):
            writer.upsert_flow(sid, flow_row(i, packets_sent=rnd + 1, dst_fqdn=f"h{i}.example"))
        assert writer.flush(30)
        largest = max(largest, wal.stat().st_size)
    return largest


def test_checkpoints_run_beside_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    pool = ConnectionPool(path)
    sid = SessionRepository(pool).start("file", "big.pcap")
    writer = DatabaseWriter(pool, batch_size=200, flush_ms=5, checkpoint_interval=0.01).start()
    _write_rounds(writer, sid, Path(str(path) + "-wal"), 2)
    with pool.writer() as conn:   # SQLite's own checkpoints are off while the writer runs
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    # the rows reach the main file while the writer runs: only checkpoints put them there
    grown = threading.Event()
    for _ in range(500):
        if path.stat().st_size > 1_000_000:
            grown.set()
            break
        grown.wait(0.01)
    assert grown.is_set(), f"main file still {path.stat().st_size} bytes"
    stats = writer.stats()
    writer.close()
    assert stats["checkpoints"] > 0 and stats["dropped"] == 0
    with pool.writer() as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert FlowRepository(pool).totals(sid) == {"flows": 4000, "packets": 4000 * 2,
                                                "bytes": 4000 * 60}
    pool.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_wal_past_its_limit_is_checkpointed_by_the_writer(tmp_path: Path) -> None:
    # background checkpoints too rare to keep up: the writer rewinds the WAL itself
    path = tmp_path / "d.db"
    pool = ConnectionPool(path)
    sid = SessionRepository(pool).start("file", "big.pcap")
    writer = DatabaseWriter(pool, batch_size=200, flush_ms=5, checkpoint_interval=3600,
                            wal_limit_bytes=512 * 1024).start()
    largest = _write_rounds(writer, sid, Path(str(path) + "-wal"), 6)
    writer.close()
    assert largest < 2_000_000, f"WAL grew to {largest} bytes"
    assert FlowRepository(pool).totals(sid)["packets"] == 4000 * 6
    pool.close()
