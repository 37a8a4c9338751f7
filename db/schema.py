"""The database schema and its numbered migrations.

Naming follows Zeek's logs: ``ts`` is when an event happened (epoch seconds, float), a
connection is identified by its 4-tuple plus protocol, and each column is documented where it
is declared. Flows name the two sides ``src``/``dst`` (Zeek's ``orig``/``resp``): ``src`` is
the initiator, ``*_sent`` counts src->dst and ``*_recv`` dst->src. ``first_seen`` is Zeek's
``ts`` for a connection. JSON columns (``extra``, ``evidence``, ...) hold lists/dicts.

A fresh database is built by running every migration step from 0, so new installs and upgraded
ones take the same path and the upgrade steps are exercised on every start of a new file.

Versions:
  1. the original design: sessions, flows, port_stats, the caches, path tracing, devices,
     ownership, routes, scan activity, classifications, ns_lookup.
  2. ``src_fqdn``/``dst_fqdn`` on flows and ``fqdn`` on dns_cache.
  3. current: DPI facts, TCP health, names and OS on flows (+ an ``extra`` JSON column), capture
     drops and filters on sessions, dns_queries, alerts, relay_agents, and the panel indexes.
"""
from __future__ import annotations

import sqlite3
import time

# ---- version 1: the design's original subset ---------------------------------------------------
_V1: tuple[str, ...] = (
    """CREATE TABLE schema_version (
        version    INTEGER PRIMARY KEY,   -- migration step applied
        applied_at REAL NOT NULL          -- epoch seconds
    )""",
    """CREATE TABLE sessions (
        id         INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,         -- epoch seconds the capture began
        ended_at   REAL,                  -- NULL while running or if the process was killed
        interface  TEXT,                  -- interface name, or the capture file for -r
        packets    INTEGER NOT NULL DEFAULT 0,
        bytes      INTEGER NOT NULL DEFAULT 0,
        flows      INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE flows (
        id             INTEGER PRIMARY KEY,
        session_id     INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        flow_key       TEXT NOT NULL,     -- stable id: "PROTO|src_ip|src_port|dst_ip|dst_port[|gen]"
        protocol       TEXT NOT NULL,     -- "TCP", "UDP", "ICMP", ...
        src_ip         TEXT NOT NULL,     -- initiator (Zeek id.orig_h)
        src_port       INTEGER,           -- NULL for protocols without ports
        dst_ip         TEXT NOT NULL,     -- responder (Zeek id.resp_h)
        dst_port       INTEGER,
        packets_sent   INTEGER NOT NULL DEFAULT 0,   -- src -> dst
        packets_recv   INTEGER NOT NULL DEFAULT 0,   -- dst -> src
        bytes_sent     INTEGER NOT NULL DEFAULT 0,   -- wire bytes src -> dst
        bytes_recv     INTEGER NOT NULL DEFAULT 0,
        first_seen     REAL NOT NULL,     -- Zeek ts: first packet
        last_seen      REAL NOT NULL,
        state          TEXT,              -- TCP state, or ACTIVE/CLOSED
        classification TEXT,              -- purpose: web, dns, streaming, ...
        encrypted      INTEGER,           -- 0/1
        src_country    TEXT,
        src_city       TEXT,
        src_asn        INTEGER,
        src_as_org     TEXT,
        dst_country    TEXT,
        dst_city       TEXT,
        dst_asn        INTEGER,
        dst_as_org     TEXT,
        src_domain     TEXT,              -- registered domain of the source name
        dst_domain     TEXT,
        UNIQUE (session_id, flow_key)
    )""",
    """CREATE TABLE port_stats (
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        port       INTEGER NOT NULL,
        protocol   TEXT NOT NULL,         -- "TCP" / "UDP"
        service    TEXT,                  -- well-known service name
        packets    INTEGER NOT NULL DEFAULT 0,
        bytes      INTEGER NOT NULL DEFAULT 0,
        hits       INTEGER NOT NULL DEFAULT 0,   -- unique source IPs that hit the port
        first_seen REAL,
        last_seen  REAL,
        PRIMARY KEY (session_id, port, protocol)
    )""",
    """CREATE TABLE geo_cache (
        ip        TEXT PRIMARY KEY,
        data      TEXT NOT NULL,          -- JSON: country, city, lat, lon, asn, as_org, ...
        cached_at REAL NOT NULL
    )""",
    """CREATE TABLE dns_cache (
        ip        TEXT PRIMARY KEY,
        hostname  TEXT,                   -- first label of the name
        domain    TEXT,                   -- registered domain
        cached_at REAL NOT NULL
    )""",
    """CREATE TABLE traceroutes (
        id          INTEGER PRIMARY KEY,
        session_id  INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
        target_ip   TEXT NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL,
        hop_count   INTEGER,
        reached     INTEGER               -- 0/1: the target answered
    )""",
    """CREATE TABLE hops (
        id            INTEGER PRIMARY KEY,
        traceroute_id INTEGER NOT NULL REFERENCES traceroutes(id) ON DELETE CASCADE,
        ttl           INTEGER NOT NULL,   -- hop number
        ip            TEXT,               -- NULL for a silent hop ("*")
        rtt_ms        REAL,
        hostname      TEXT,
        asn           INTEGER,
        as_org        TEXT,
        country       TEXT,
        city          TEXT
    )""",
    """CREATE TABLE latency_samples (
        id            INTEGER PRIMARY KEY,
        traceroute_id INTEGER REFERENCES traceroutes(id) ON DELETE CASCADE,
        ip            TEXT NOT NULL,
        ttl           INTEGER,
        ts            REAL NOT NULL,
        rtt_ms        REAL                -- NULL for a lost probe
    )""",
    """CREATE TABLE path_summary (
        target_ip   TEXT PRIMARY KEY,
        hop_count   INTEGER,
        avg_rtt_ms  REAL,
        traces      INTEGER NOT NULL DEFAULT 0,
        last_traced REAL
    )""",
    """CREATE TABLE devices (
        ip          TEXT PRIMARY KEY,
        mac         TEXT,
        device_type TEXT,                 -- endpoint, router, switch, ...
        vendor      TEXT,
        hostname    TEXT,
        first_seen  REAL,
        last_seen   REAL
    )""",
    """CREATE TABLE node_ownership (
        ip         TEXT PRIMARY KEY,
        asn        INTEGER,
        as_name    TEXT,
        org        TEXT,
        isp        TEXT,
        network    TEXT,                  -- CIDR the registry answered for
        country    TEXT,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE route_patterns (
        id         INTEGER PRIMARY KEY,
        target_ip  TEXT NOT NULL,
        route_hash TEXT NOT NULL,         -- hash of the hop IP sequence
        hops       TEXT NOT NULL,         -- JSON list of hop IPs (null for silent hops)
        first_seen REAL NOT NULL,
        last_seen  REAL NOT NULL,
        times_seen INTEGER NOT NULL DEFAULT 1,
        UNIQUE (target_ip, route_hash)
    )""",
    """CREATE TABLE route_changes (
        id         INTEGER PRIMARY KEY,
        target_ip  TEXT NOT NULL,
        ts         REAL NOT NULL,
        old_hash   TEXT,
        new_hash   TEXT NOT NULL
    )""",
    """CREATE TABLE scan_activity (
        session_id     INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        src_ip         TEXT NOT NULL,
        first_seen     REAL,
        last_seen      REAL,
        ports_hit      INTEGER NOT NULL DEFAULT 0,
        scan_rate      REAL,              -- ports per second
        likely_scanner INTEGER,           -- 0/1
        PRIMARY KEY (session_id, src_ip)
    )""",
    """CREATE TABLE classifications (
        session_id     INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        flow_key       TEXT NOT NULL,
        classification TEXT NOT NULL,
        encrypted      INTEGER,
        ts             REAL,
        PRIMARY KEY (session_id, flow_key)
    )""",
    """CREATE TABLE ns_lookup (
        domain      TEXT PRIMARY KEY,
        nameservers TEXT NOT NULL,        -- JSON list
        cached_at   REAL NOT NULL
    )""",
    "CREATE INDEX idx_flows_session_last ON flows(session_id, last_seen)",
    "CREATE INDEX idx_hops_traceroute ON hops(traceroute_id, ttl)",
    "CREATE INDEX idx_traceroutes_target ON traceroutes(target_ip, started_at)",
)

# ---- version 2: full names ------------------------------------------------------------------------
_V2: tuple[str, ...] = (
    "ALTER TABLE flows ADD COLUMN src_fqdn TEXT",   # PTR / DNS-observed name of src_ip
    "ALTER TABLE flows ADD COLUMN dst_fqdn TEXT",
    "ALTER TABLE dns_cache ADD COLUMN fqdn TEXT",
)

# ---- version 3: current ---------------------------------------------------------------------------
_FLOW_V3_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ip_version", "INTEGER"),
    ("ttl_sent", "INTEGER"),              # IP TTL/hop limit last seen src -> dst
    ("ttl_recv", "INTEGER"),
    ("retransmissions", "INTEGER"),
    ("fast_retransmissions", "INTEGER"),
    ("out_of_order", "INTEGER"),
    ("dup_acks", "INTEGER"),
    ("zero_windows", "INTEGER"),
    ("resets", "INTEGER"),
    ("handshake_rtt_ms", "REAL"),
    ("src_name_source", "TEXT"),          # where src_fqdn came from: dns, ptr, sni, ...
    ("dst_name_source", "TEXT"),
    ("app_protocol", "TEXT"),             # DPI verdict: TLS, HTTP, DNS, SSH, ...
    ("sni", "TEXT"),
    ("alpn", "TEXT"),
    ("tls_version", "TEXT"),
    ("ja3", "TEXT"),
    ("ja4", "TEXT"),
    ("ja3s", "TEXT"),
    ("http_host", "TEXT"),
    ("http_user_agent", "TEXT"),
    ("src_os", "TEXT"),                   # passive OS guess
    ("dst_os", "TEXT"),
    ("anomaly_score", "REAL"),
    ("anomaly_reasons", "TEXT"),          # JSON list
    ("agent", "TEXT"),                    # relay agent that saw the flow ("" = local)
    ("extra", "TEXT"),                    # JSON object of row keys this schema has no column for
)

_V3: tuple[str, ...] = tuple(f"ALTER TABLE flows ADD COLUMN {name} {kind}"
                             for name, kind in _FLOW_V3_COLUMNS) + (
    "ALTER TABLE sessions ADD COLUMN source TEXT",        # "live", "file", "relay"
    "ALTER TABLE sessions ADD COLUMN bpf_filter TEXT",
    "ALTER TABLE sessions ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0",  # packets lost
    "ALTER TABLE port_stats ADD COLUMN flows INTEGER",
    "ALTER TABLE port_stats ADD COLUMN extra TEXT",
    "ALTER TABLE dns_cache ADD COLUMN data TEXT",         # JSON of other resolver facts
    "ALTER TABLE traceroutes ADD COLUMN protocol TEXT",   # probe kind: ICMP, UDP, TCP
    "ALTER TABLE traceroutes ADD COLUMN target_name TEXT",
    "ALTER TABLE hops ADD COLUMN fqdn TEXT",
    "ALTER TABLE hops ADD COLUMN loss REAL",              # fraction of probes unanswered
    "ALTER TABLE devices ADD COLUMN os TEXT",
    "ALTER TABLE devices ADD COLUMN extra TEXT",
    "ALTER TABLE node_ownership ADD COLUMN source TEXT",  # whois, mmdb, ip-api, ...
    "ALTER TABLE route_changes ADD COLUMN changed_hops TEXT",  # JSON list of changed ttl
    "ALTER TABLE scan_activity ADD COLUMN ports TEXT",    # JSON list of ports hit
    "ALTER TABLE classifications ADD COLUMN details TEXT",
    """CREATE TABLE dns_queries (
        id         INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        ts         REAL NOT NULL,         -- time of the query (response time if unanswered)
        src_ip     TEXT,                  -- client (Zeek id.orig_h)
        src_port   INTEGER,
        dst_ip     TEXT,                  -- server (Zeek id.resp_h)
        dst_port   INTEGER,
        proto      TEXT,                  -- "UDP" / "TCP"
        trans_id   INTEGER,
        query      TEXT,
        qtype      TEXT,                  -- "A", "AAAA", ...
        rcode      TEXT,                  -- "NOERROR", "NXDOMAIN", ... (NULL: no answer)
        answers    TEXT,                  -- JSON list
        ttls       TEXT,                  -- JSON list, parallel to answers
        rtt_ms     REAL,
        extra      TEXT
    )""",
    """CREATE TABLE alerts (
        id           INTEGER PRIMARY KEY,
        session_id   INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        alert_id     INTEGER NOT NULL,    -- engine sequence number within the session
        ts           REAL NOT NULL,       -- first firing
        last_ts      REAL,                -- newest repeat folded in
        severity     TEXT NOT NULL,       -- info, low, medium, high, critical
        rule_id      TEXT NOT NULL,
        src          TEXT,
        dst          TEXT,
        message      TEXT NOT NULL,
        evidence     TEXT,                -- JSON object
        count        INTEGER NOT NULL DEFAULT 1,
        acknowledged INTEGER NOT NULL DEFAULT 0,
        UNIQUE (session_id, alert_id)
    )""",
    """CREATE TABLE relay_agents (
        session_id   INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        agent        TEXT NOT NULL,       -- agent name as announced
        hostname     TEXT,
        address      TEXT,                -- peer address of the connection
        version      TEXT,
        connected_at REAL,
        last_seen    REAL,
        status       TEXT,                -- connected, lost, closed
        packets      INTEGER,
        bytes        INTEGER,
        extra        TEXT,
        PRIMARY KEY (session_id, agent)
    )""",
    # the Traffic panel's "top flows by bytes" and the exports' ordered scan
    "CREATE INDEX idx_flows_session_bytes ON flows(session_id, (bytes_sent + bytes_recv))",
    "CREATE INDEX idx_flows_session_first ON flows(session_id, first_seen)",
    "CREATE INDEX idx_flows_dst_ip ON flows(dst_ip)",
    "CREATE INDEX idx_sessions_started ON sessions(started_at)",
    "CREATE INDEX idx_dns_queries_session ON dns_queries(session_id, ts)",
    "CREATE INDEX idx_alerts_session ON alerts(session_id, ts)",
    "CREATE INDEX idx_latency_ip ON latency_samples(ip, ts)",
    "CREATE INDEX idx_route_changes_target ON route_changes(target_ip, ts)",
    "CREATE INDEX idx_geo_cached ON geo_cache(cached_at)",
    "CREATE INDEX idx_dns_cached ON dns_cache(cached_at)",
)

#: migration steps: MIGRATIONS[n - 1] brings a database from version n - 1 to n
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)
CURRENT_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the file (0 for an empty database)."""
    row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
    if row is None:
        return 0
    found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    return int(found or 0)


def migrate(conn: sqlite3.Connection, target: int = CURRENT_VERSION) -> tuple[int, int]:
    """Apply the missing steps up to ``target``, each in its own transaction.

    ``conn`` must be in autocommit mode (``isolation_level=None``). ``BEGIN IMMEDIATE`` takes the
    write lock before the version is read, so two processes opening the same new file do not
    both run a step. Returns (version found, version now). A version newer than ``target`` is
    returned unchanged; the caller decides whether that is an error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    version = found
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if user_version(conn) != version:   # another process migrated meanwhile
                conn.execute("ROLLBACK")
                version = user_version(conn)
                continue
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                         (version + 1, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version += 1
    return found, version


#: the tables of the current schema (for tests and `--sessions` diagnostics)
def table_names(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                        "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    return [r[0] for r in rows]
