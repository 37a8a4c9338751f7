"""Keeping a run in the database: the session row, flows, ports, DNS and alerts.

This is wiring above the trackers (like pipeline.py): it reads tracker state on the pipeline's
periodic tick and hands rows to the background :class:`~db.writer.DatabaseWriter`, whose bounded,
coalescing queue keeps the capture path from ever waiting on SQLite.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable

from db.connection import ConnectionPool
from db.errors import DatabaseError
from db.repositories.alert_repo import AlertRepository
from db.repositories.dns_query_repo import DnsQueryRepository
from db.repositories.flow_repo import FlowRepository
from db.repositories.port_repo import PortRepository
from db.repositories.session_repo import SessionRepository
from db.writer import DatabaseWriter
from tracking.flow import Flow, FlowTracker
from utils.logger import chown_to_invoking_user, expand_user_path, get_logger

log = get_logger(__name__)


# Export field names -> database column names (the db layer follows Zeek's naming).
DNS_TO_DB = {"time": "ts", "client": "src_ip", "client_port": "src_port", "server": "dst_ip",
             "server_port": "dst_port", "id": "trans_id", "qname": "query", "latency_ms": "rtt_ms"}
PORT_TO_DB = {"proto": "protocol", "connections": "flows"}


def _rename(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in row.items()}


def _unrename(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    back = {v: k for k, v in names.items()}
    return {back.get(k, k): v for k, v in row.items()}


_TCP_COLUMNS = ("retransmissions", "fast_retransmissions", "out_of_order", "dup_acks",
                "zero_windows", "resets", "handshake_rtt_ms")


def counters_row(f: Flow) -> dict[str, Any]:
    """What changes in a stored flow, plus the columns a row cannot be created without.

    The identity is included so a row still comes into being should the flow's first, whole
    row have been dropped by a full queue (it is written only on insert: cheap otherwise).
    """
    ported = f.has_ports
    d: dict[str, Any] = {
        "flow_key": f.flow_key, "protocol": f.protocol, "ip_version": f.ip_version,
        "src_ip": f.src_ip, "src_port": f.src_port if ported else None,
        "dst_ip": f.dst_ip, "dst_port": f.dst_port if ported else None,
        "first_seen": f.first_seen, "last_seen": f.last_seen,
        "packets_sent": f.packets_sent, "packets_recv": f.packets_recv,
        "bytes_sent": f.bytes_sent, "bytes_recv": f.bytes_recv, "state": f.state,
    }
    if f.tcp is not None:
        td = f.tcp.as_dict()
        for name in _TCP_COLUMNS:
            d[name] = td.get(name)
    return d


def open_pool(settings: Any) -> ConnectionPool:
    """The run's database; raises a DatabaseError with a one-line message."""
    path = expand_user_path(settings.DB_PATH)
    pool = ConnectionPool(path, settings.DB_READ_POOL_SIZE, settings.DB_WAL_MODE,
                          settings.DB_BUSY_TIMEOUT_MS)
    chown_to_invoking_user(path)
    return pool


class SessionRecorder:
    """Persists one capture session while it runs, and closes it with its totals."""

    def __init__(self, pool: ConnectionPool, settings: Any, source_kind: str, source: str,
                 bpf: str, flows: FlowTracker,
                 row_for: Callable[[Flow], dict[str, Any]],
                 ports_rows: Callable[[], list[dict[str, Any]]] | None = None,
                 dns: Any = None,
                 alert_changes: Callable[[], list[Any]] | None = None) -> None:
        self.pool = pool
        self.sessions = SessionRepository(pool)
        purged = self.sessions.purge_older_than(settings.DB_SESSION_RETENTION_DAYS)
        if purged:
            log.info("retention: removed %d sessions older than %s days", purged,
                     settings.DB_SESSION_RETENTION_DAYS)
        self.session_id = self.sessions.start(source_kind, source, bpf)
        self.writer = DatabaseWriter(pool, settings.DB_WRITE_BATCH_SIZE, settings.DB_WRITE_FLUSH_MS,
                                     settings.DB_WRITE_QUEUE_SIZE).start()
        self.flows = flows
        self.row_for = row_for
        self.ports_rows = ports_rows
        #: the DNS tracker (``completed_since``, ``pending_records``), None without one
        self.dns = dns
        self.alert_changes = alert_changes
        #: completed DNS records stored so far (the tracker's ``records_total`` then)
        self._dns_done = 0
        self._last_flush = 0.0       # packet time of the last tick
        self._last_counters = 0.0    # ... of the last tick that sent updates of stored flows
        #: writer backlog (operations) past which a tick sends new flows only
        self._backlog_limit = 10 * settings.DB_WRITE_BATCH_SIZE
        self._last_ports = 0.0
        self._closed = False
        flows.listeners.append(self.on_retire)

    # ---- called on the pipeline thread -------------------------------------------------------
    def on_retire(self, flow: Flow) -> None:
        self.writer.upsert_flow(self.session_id, self.row_for(flow))

    def on_tick(self, now: float) -> None:
        """Once a second of packet time: flows that changed since the last tick.

        A flow new since the last tick is sent whole; one sent before only with what changes
        (:func:`counters_row`), a fraction of the work here and on the writer. While the writer
        is still busy with earlier rows, updates of stored flows wait for a later tick (whose
        row then covers both): the capture never queues work the writer would only coalesce.
        The retire row (``row_for``) brings everything, enrichment included, at the end.
        """
        since_new, since = self._last_flush, self._last_counters
        self._last_flush = now
        sid = self.session_id
        up = self.writer.upsert_flow
        active = self.flows.active_flows()
        if self.writer.backlog > self._backlog_limit:
            for f in active:
                if f.first_seen >= since_new:
                    up(sid, f.as_dict())
        else:
            self._last_counters = now
            for f in active:
                if f.last_seen >= since:
                    up(sid, f.as_dict() if f.first_seen >= since_new else counters_row(f))
        self._store_dns(closing=False)
        self._store_alerts()
        if self.ports_rows is not None and time.monotonic() - self._last_ports > 5.0:
            self._last_ports = time.monotonic()
            self.writer.upsert_ports(sid, [_rename(r, PORT_TO_DB) for r in self.ports_rows()])

    def _store_dns(self, closing: bool) -> None:
        """Each completed DNS transaction once, in the order it completed, whenever this is
        called; queries still waiting only at the end (they may yet be answered). So the rows
        do not depend on when the ticks came (a file read in two processes hands the DNS
        tracker over at the end; one process ticks every second of capture time)."""
        if self.dns is None:
            return
        total, rows = self.dns.completed_since(self._dns_done)
        if total - self._dns_done > len(rows):
            log.warning("%d DNS records were dropped from memory before they were stored",
                        total - self._dns_done - len(rows))
        self._dns_done = total
        if closing:
            rows += self.dns.pending_records()
        if rows:
            self.writer.add_dns(self.session_id, [_rename(r, DNS_TO_DB) for r in rows])

    def _store_alerts(self) -> None:
        # New, repeated and acknowledged alerts since the last tick: one upsert per alert.
        if self.alert_changes is not None:
            for alert in self.alert_changes():
                self.writer.add_alert(self.session_id, alert.to_dict())

    # ---- end of run --------------------------------------------------------------------------
    def close(self, packets: int, bytes_: int, flows: int, dropped: int) -> None:
        """Flush everything and close the session with its end time and totals."""
        if self._closed:
            return
        self._closed = True
        self._store_alerts()
        if self.ports_rows is not None:
            self.writer.upsert_ports(self.session_id,
                                     [_rename(r, PORT_TO_DB) for r in self.ports_rows()])
        self._store_dns(closing=True)
        self.writer.close(timeout=30)
        try:
            self.sessions.close(self.session_id, time.time(), packets, bytes_, flows, dropped)
        except (DatabaseError, sqlite3.Error) as exc:
            # e.g. the disk filled up: the session stays listed without an end time
            log.error("could not close session %s: %s", self.session_id, exc)

    @property
    def state(self) -> str:
        return self.writer.state

    def stats(self) -> dict[str, Any]:
        return self.writer.stats()


def stored_document(pool: ConnectionPool, session_id: int) -> dict[str, Any]:
    """The export document of a stored session (same layout as a live run's)."""
    from export.document import build_document
    sessions = SessionRepository(pool)
    s = sessions.get(session_id)
    if s is None:
        raise DatabaseError(f"no session {session_id} in {pool.path} (see --sessions)")
    flows = list(FlowRepository(pool).iter_all(session_id))
    dns = [_unrename(r, DNS_TO_DB) for r in DnsQueryRepository(pool).iter_all(session_id)]
    for r in dns:
        if isinstance(r.get("rcode"), str) and r["rcode"].isdigit():
            r["rcode"] = int(r["rcode"])
    ports = [_unrename(r, PORT_TO_DB) for r in PortRepository(pool).list(session_id, limit=1_000_000)]
    alerts = AlertRepository(pool).list(session_id)
    meta = {k: s.get(k) for k in s}
    meta["session"] = session_id
    return build_document(meta, flows, dns=dns, ports=ports, extra={"alerts": alerts})
