"""Open a stored session in the dashboard, read-only.

The stored flows are loaded into a flow table and shown by the same panels as a live run; the
views whose trackers were not stored (DNS details beyond the table, DPI buffers, TCP analysis
state) say so plainly.
"""
from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from typing import Any

from capture.sniffer import CaptureStats
from config import Settings
from pipeline import PipelineCounters
from tracking.flow import Flow, FlowTracker, RecordedFlow, verdict

_PROTO_NUMBERS = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMPv6": 58, "SCTP": 132, "GRE": 47}


@dataclass
class _StoredSource:
    description: str

    def refresh_stats(self) -> CaptureStats:
        return CaptureStats()


class _Pipeline:
    def __init__(self, meta: dict[str, Any], flows: list[Flow]) -> None:
        self.counters = PipelineCounters(packets=meta.get("packets") or 0,
                                         bytes=meta.get("bytes") or 0)
        if flows:
            self.counters.first_ts = min(f.first_seen for f in flows)
            self.counters.last_ts = max(f.last_seen for f in flows)
        self.paused = threading.Event()


def flow_from_row(row: dict[str, Any]) -> Flow:
    proto = _PROTO_NUMBERS.get(row.get("protocol") or "", 0)
    return RecordedFlow(
        proto, row["src_ip"], row.get("src_port") or 0, row["dst_ip"], row.get("dst_port") or 0,
        row.get("first_seen") or 0.0, row.get("last_seen") or 0.0,
        packets_sent=row.get("packets_sent") or 0, packets_recv=row.get("packets_recv") or 0,
        bytes_sent=row.get("bytes_sent") or 0, bytes_recv=row.get("bytes_recv") or 0,
        verdict=verdict(row.get("classification") or "", bool(row.get("encrypted"))),
        retired="stored", _key=row.get("flow_key") or "")


class StoredRuntime:
    """Just enough of runtime.Runtime for the dashboard to show a stored session."""

    source_kind = "stored"

    def __init__(self, doc: dict[str, Any], settings: Settings) -> None:
        from runtime import Components
        meta = doc.get("meta", {})
        self.settings = settings
        self.args = argparse.Namespace(read=f"session {meta.get('session')}", simple=False,
                                       no_ui=False)
        self.stop = threading.Event()
        self.started = time.time()
        self.session_id = meta.get("session")
        self.persistence_state = "stored session (read-only)"
        self.flows = FlowTracker()
        rows = {r.get("flow_key"): r for r in doc.get("flows", [])}
        self._rows = rows
        for r in rows.values():
            f = flow_from_row(r)
            self.flows.adopt(f)
        self.flows.total_flows = len(rows)
        self.source = _StoredSource(f"{meta.get('interface') or ''} (session {self.session_id})")
        self.pipeline = _Pipeline(meta, self.flows.snapshot())
        self.components = Components()
        self.components.flow_enrichers.append(self._stored_fields)
        self.capture_done = True
        self._doc = doc

    def _stored_fields(self, flow: Flow) -> dict[str, Any]:
        row = self._rows.get(flow.flow_key, {})
        return {k: v for k, v in row.items() if k.startswith(("src_", "dst_")) or k in (
            "app_protocol", "sni", "alpn", "tls_version", "ja3", "ja4", "ja3s", "http_host",
            "http_user_agent", "anomaly_score", "anomaly_reasons", "state")}

    def start_capture(self) -> None:
        """Nothing to capture: the session is already complete."""

    def shutdown(self) -> None:
        self.stop.set()

    def meta(self) -> dict[str, Any]:
        return dict(self._doc.get("meta", {}))

    def export_flows(self) -> list[dict[str, Any]]:
        return list(self._doc.get("flows", []))

    def document(self) -> dict[str, Any]:
        return self._doc


def show_stored_session(doc: dict[str, Any], settings: Settings) -> int:
    from dashboard.app import run_dashboard
    return run_dashboard(StoredRuntime(doc, settings))  # type: ignore[arg-type]
