"""Schema: every table of the design exists, migrations keep data, panel queries use indexes."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from db.connection import ConnectionPool
from db.repositories.dns_repo import DnsRepository
from db.repositories.flow_repo import FlowRepository
from db.repositories.geo_repo import GeoRepository
from db.repositories.session_repo import SessionRepository
from db.schema import CURRENT_VERSION, MIGRATIONS, migrate, table_names, user_version

DESIGN_TABLES = {
    "sessions", "flows", "port_stats", "geo_cache", "dns_cache", "dns_queries", "traceroutes",
    "hops", "latency_samples", "path_summary", "devices", "node_ownership", "route_patterns",
    "route_changes", "scan_activity", "classifications", "alerts", "ns_lookup", "relay_agents",
    "schema_version",
}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def test_fresh_database_has_every_table_at_the_current_version(tmp_path: Path) -> None:
    with ConnectionPool(tmp_path / "d.db") as pool, pool.reader() as conn:
        assert set(table_names(conn)) == DESIGN_TABLES
        assert user_version(conn) == CURRENT_VERSION
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == list(range(1, CURRENT_VERSION + 1))
        assert {"src_fqdn", "dst_fqdn", "sni", "ja4", "extra"} <= _columns(conn, "flows")
        assert "fqdn" in _columns(conn, "dns_cache")


def _make_v1(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute("INSERT INTO sessions (id, started_at, ended_at, interface, packets, bytes, flows)"
                 " VALUES (7, 1700000000.0, 1700000600.0, 'eth0', 1234, 567890, 1)")
    conn.execute(
        "INSERT INTO flows (session_id, flow_key, protocol, src_ip, src_port, dst_ip, dst_port, "
        "packets_sent, packets_recv, bytes_sent, bytes_recv, first_seen, last_seen, state, "
        "dst_country, dst_domain) VALUES (7, 'TCP|10.0.0.2|40000|93.184.216.34|443', 'TCP', "
        "'10.0.0.2', 40000, '93.184.216.34', 443, 10, 8, 1500, 9000, 1700000001.0, "
        "1700000002.5, 'ESTABLISHED', 'US', 'example.com')")
    conn.execute("INSERT INTO geo_cache VALUES ('93.184.216.34', '{\"country\": \"US\"}', ?)",
                 (1e12,))
    conn.execute("INSERT INTO dns_cache (ip, hostname, domain, cached_at) "
                 "VALUES ('93.184.216.34', 'www', 'example.com', ?)", (1e12,))
    conn.close()


def test_version_1_database_migrates_with_data_kept(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _make_v1(path)
    conn = sqlite3.connect(path)
    assert user_version(conn) == 1
    assert "src_fqdn" not in _columns(conn, "flows")
    conn.close()

    pool = ConnectionPool(path)
    with pool.reader() as conn:
        assert user_version(conn) == CURRENT_VERSION
        assert set(table_names(conn)) == DESIGN_TABLES
    session = SessionRepository(pool).get(7)
    assert session is not None
    assert (session["interface"], session["packets"], session["bytes"]) == ("eth0", 1234, 567890)
    assert session["dropped"] == 0
    flows = FlowRepository(pool)
    old = flows.get(7, "TCP|10.0.0.2|40000|93.184.216.34|443")
    assert old is not None
    assert (old["bytes_sent"], old["bytes_recv"], old["dst_country"]) == (1500, 9000, "US")
    assert old["dst_fqdn"] is None and old["sni"] is None
    # the migrated row takes current-version updates in place
    flows.upsert(7, [{**{k: old[k] for k in ("flow_key", "protocol", "src_ip", "src_port",
                                             "dst_ip", "dst_port", "first_seen")},
                      "last_seen": 1700000009.0, "bytes_sent": 3000, "bytes_recv": 9000,
                      "packets_sent": 12, "packets_recv": 9, "sni": "example.com",
                      "dst_fqdn": "www.example.com"}])
    new = flows.get(7, old["flow_key"])
    assert new is not None
    assert (new["bytes_sent"], new["sni"], new["dst_fqdn"], new["dst_country"]) == \
        (3000, "example.com", "www.example.com", "US")
    assert flows.count(7) == 1
    assert GeoRepository(pool).load_all()[0][:2] == ("93.184.216.34", {"country": "US"})
    ip, value, _ = DnsRepository(pool).load_all()[0]
    assert (ip, value["hostname"], value["domain"], value["fqdn"]) == \
        ("93.184.216.34", "www", "example.com", None)
    pool.close()


def test_each_step_is_recorded_and_reopening_does_not_rerun(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    _make_v1(path)
    ConnectionPool(path).close()
    ConnectionPool(path).close()
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == \
        list(range(1, len(MIGRATIONS) + 1))
    conn.close()


def test_top_flows_query_uses_the_bytes_index(tmp_path: Path) -> None:
    with ConnectionPool(tmp_path / "d.db") as pool, pool.reader() as conn:
        plan = " ".join(str(r[3]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM flows WHERE session_id = ? "
            "ORDER BY bytes_sent + bytes_recv DESC, id LIMIT 50", (1,)))
        assert "idx_flows_session_bytes" in plan
        plan = " ".join(str(r[3]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM flows WHERE session_id = ? "
            "ORDER BY first_seen, id LIMIT 50", (1,)))
        assert "idx_flows_session_first" in plan
