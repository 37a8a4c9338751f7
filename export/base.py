"""Exporters: one per file format, each writing the rows of one kind (flows, DNS, ports, ...).

Rows come from a :class:`RowSource`: the live run (:class:`RuntimeSource`) or a built export
document, such as a stored session's (:class:`DocumentSource`, :func:`stored_source`). The rows of
each kind are the ones the JSON document holds (export/document.py is the contract), so a CSV of
the flows and the ``flows`` of the JSON export always agree.

Long exports show a Rich progress bar on stderr when stderr is a terminal.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Protocol

from capture.errors import WriteError
from export.csv_exporter import columns_of, write_rows_csv
from export.document import build_document
from export.json_exporter import _default, write_json

#: the kinds of rows an exporter can write; "document" is the whole JSON document
KINDS: tuple[str, ...] = ("flows", "dns", "ports", "alerts", "tcp", "paths", "devices")
#: rows from which a progress bar is shown (on a terminal)
PROGRESS_MIN_ROWS = 5000
#: flow rows turned into dicts per hold of the flow table's lock (the pipeline waits meanwhile)
LOCK_CHUNK = 2000

#: columns of the ``tcp`` kind (plus every ``tcp_*`` field of the flow rows)
TCP_COLUMNS = ("flow_key", "src_ip", "src_port", "dst_ip", "dst_port", "state", "first_seen",
               "last_seen", "packets_sent", "packets_recv", "bytes_sent", "bytes_recv",
               "handshake_rtt_ms", "retransmissions", "fast_retransmissions", "out_of_order",
               "dup_acks", "zero_windows", "resets")


class ExportError(Exception):
    """An export that cannot be made (unknown kind or format); one line for the user."""


class RowSource(Protocol):
    def rows(self, kind: str) -> list[dict[str, Any]]: ...

    def meta(self) -> dict[str, Any]: ...

    def document(self) -> dict[str, Any]: ...


# ---- rows of each kind, from a document ---------------------------------------------------------
def tcp_rows(flow_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The TCP analysis of each TCP flow (the ``tcp`` kind): one row per connection."""
    out = []
    for r in flow_rows:
        if r.get("protocol") != "TCP":
            continue
        row = {c: r.get(c) for c in TCP_COLUMNS}
        for k, v in r.items():
            if k.startswith("tcp_"):
                row[k] = v
        out.append(row)
    return out


def _flatten_paths(paths: Any) -> list[dict[str, Any]]:
    """Paths as rows: a list of hop dicts as is, or {target: [hop, ...]} with the target added."""
    if isinstance(paths, list):
        return [p if isinstance(p, dict) else {"value": p} for p in paths]
    if isinstance(paths, dict):
        rows = []
        for target, hops in paths.items():
            if isinstance(hops, list):
                rows.extend({"target": target, **h} if isinstance(h, dict) else
                            {"target": target, "value": h} for h in hops)
            elif isinstance(hops, dict):
                rows.append({"target": target, **hops})
        return rows
    return []


def rows_from_document(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    if kind == "tcp":
        return tcp_rows(doc.get("flows") or [])
    if kind == "paths":
        return _flatten_paths(doc.get("paths"))
    if kind not in KINDS:
        raise ExportError(f"unknown export kind {kind!r} (known: {', '.join(KINDS)})")
    value = doc.get(kind) or []
    return list(value) if isinstance(value, list) else []


class DocumentSource:
    """Rows of a built export document (a stored session, or a live run's ``document()``)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return rows_from_document(self.doc, kind)

    def meta(self) -> dict[str, Any]:
        return dict(self.doc.get("meta") or {})

    def document(self) -> dict[str, Any]:
        return self.doc


class RuntimeSource:
    """Rows of a live run, read from its trackers; ``flows`` limits the flow-based kinds.

    Args:
        runtime: a runtime.Runtime (or anything with ``export_row``/``export_flows``,
            ``components``, ``meta()`` and ``document()``, like the stored-session runtime).
        flows: the Flow objects to export for ``flows``/``tcp`` (default: every flow of the run).
    """

    def __init__(self, runtime: Any, flows: list[Any] | None = None) -> None:
        self.rt = runtime
        self.flows = flows

    def _flow_rows(self) -> list[dict[str, Any]]:
        rt = self.rt
        row_for = getattr(rt, "export_row", None)
        if row_for is None:                      # stored session: rows are already made
            rows = rt.export_flows()
            if self.flows is None:
                return rows
            keys = {f.flow_key for f in self.flows}
            by_key = {r.get("flow_key"): r for r in rows}
            return [by_key[f.flow_key] for f in self.flows if f.flow_key in by_key] \
                if len(keys) == len(self.flows) else [r for r in rows if r.get("flow_key") in keys]
        flows = self.flows if self.flows is not None else rt.flows.all_flows()
        lock = rt.flows.lock
        out: list[dict[str, Any]] = []
        # Rows read tracker and inspector state the pipeline changes; hold its lock, in chunks.
        for i in range(0, len(flows), LOCK_CHUNK):
            with lock:
                out.extend(row_for(f) for f in flows[i:i + LOCK_CHUNK])
        return out

    def rows(self, kind: str) -> list[dict[str, Any]]:
        if kind == "flows":
            return self._flow_rows()
        if kind == "tcp":
            return tcp_rows(self._flow_rows())
        if kind not in KINDS:
            raise ExportError(f"unknown export kind {kind!r} (known: {', '.join(KINDS)})")
        if getattr(self.rt, "export_row", None) is None:     # stored session
            return rows_from_document(self.rt.document(), kind)
        comps = self.rt.components
        if kind == "dns":
            return comps.dns_records()
        if kind == "ports":
            return comps.port_rows()
        if kind == "devices":
            from export.devices import device_section
            return device_section(comps.devices, getattr(comps, "devices_lock", None))
        return rows_from_document(_sections(comps), kind)      # alerts, paths

    def meta(self) -> dict[str, Any]:
        return self.rt.meta()

    def document(self) -> dict[str, Any]:
        return self.rt.document()


def _sections(comps: Any) -> dict[str, Any]:
    doc = dict(comps.extra_sections())
    paths = getattr(comps, "paths", None)
    snap = getattr(paths, "export", None) or getattr(paths, "as_dict", None)
    if callable(snap):
        doc["paths"] = snap()
    return doc


def stored_source(pool: Any, session_id: int) -> DocumentSource:
    """A stored session: its document, plus the devices seen while it ran (the devices table
    outlives sessions, so those whose last sighting falls in the session's time span)."""
    from db.repositories.device_repo import DeviceRepository
    from persistence import stored_document
    doc = stored_document(pool, session_id)
    if "devices" not in doc:
        flows = doc.get("flows") or []
        t0 = min((f.get("first_seen") or 0 for f in flows), default=0)
        t1 = max((f.get("last_seen") or 0 for f in flows), default=0)
        doc["devices"] = [d for d in DeviceRepository(pool).list()
                          if flows and t0 <= (d.get("last_seen") or 0) <= t1 + 1]
    return DocumentSource(doc)


# ---- exporters ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    kind: str
    format: str
    rows: int


class _Progress:
    """A Rich progress bar on stderr for long exports, or nothing."""

    def __init__(self, label: str, total: int, enabled: bool | None, console: Any = None) -> None:
        self.bar: Any = None
        if enabled is None:
            enabled = total >= PROGRESS_MIN_ROWS and _stderr_is_terminal()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeRemainingColumn
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(),
                            console=console or Console(stderr=True), transient=True)
        self.task = self.bar.add_task(label, total=total)
        self.n = 0

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.n)
            self.bar.stop()

    def advance_fn(self) -> Callable[[], None] | None:
        if self.bar is None:
            return None
        bar, task = self.bar, self.task

        def advance() -> None:
            self.n += 1
            if self.n % 500 == 0:      # Rich redraws on its own timer; keep the call cheap
                bar.update(task, completed=self.n)
        return advance


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):
        return False


class Exporter:
    """Writes the rows of one kind to a file of one format.

    Args:
        kind: one of :data:`KINDS`, or ``"document"`` for the whole JSON document.
        progress: True/False forces the progress bar on/off; None shows it for long exports
            when stderr is a terminal.
        console: the Rich console for the progress bar (default: stderr).
    """

    format: ClassVar[str] = ""
    suffix: ClassVar[str] = ""

    def __init__(self, kind: str = "flows", progress: bool | None = None,
                 console: Any = None) -> None:
        if kind not in KINDS and kind != "document":
            raise ExportError(f"unknown export kind {kind!r} (known: {', '.join(KINDS)})")
        self.kind = kind
        self.progress = progress
        self.console = console

    def export(self, source: RowSource, path: str | Path,
               rows: list[dict[str, Any]] | None = None) -> ExportResult:
        """Write ``rows`` (default: the source's rows of this kind) to ``path``."""
        path = Path(path)
        if self.kind == "document":
            doc = source.document()
            self._write_document(doc, path)
            return ExportResult(path, self.kind, self.format, len(doc.get("flows") or []))
        if rows is None:
            rows = source.rows(self.kind)
        with _Progress(f"exporting {self.kind}", len(rows), self.progress, self.console) as bar:
            self._write(rows, source.meta(), path, bar.advance_fn())
        return ExportResult(path, self.kind, self.format, len(rows))

    def _write(self, rows: list[dict[str, Any]], meta: dict[str, Any], path: Path,
               advance: Callable[[], None] | None) -> None:
        raise NotImplementedError

    def _write_document(self, doc: dict[str, Any], path: Path) -> None:
        raise ExportError(f"the whole document is exported as JSON, not {self.format}")


class CsvExporter(Exporter):
    """A header row and one row per record; lists joined with ';'."""

    format = "csv"
    suffix = ".csv"

    def _write(self, rows: list[dict[str, Any]], meta: dict[str, Any], path: Path,
               advance: Callable[[], None] | None) -> None:
        first = TCP_COLUMNS if self.kind == "tcp" else ()
        write_rows_csv(rows, path, columns_of(rows, first), on_row=advance)


class JsonExporter(Exporter):
    """The export document (export/document.py) holding the rows of one kind, or all of it.

    A ``flows`` export is a complete document whose other sections are empty; other kinds are
    ``{"meta": ..., KIND: [rows]}``. Rows are streamed one by one so a progress bar can follow.
    """

    format = "json"
    suffix = ".json"

    def _write_document(self, doc: dict[str, Any], path: Path) -> None:
        write_json(doc, path)

    def _write(self, rows: list[dict[str, Any]], meta: dict[str, Any], path: Path,
               advance: Callable[[], None] | None) -> None:
        meta = {**meta, "export_kind": self.kind}
        if self.kind == "flows":
            head = build_document(meta, [])
            head.pop("flows")
        else:
            head = {"meta": {"schema": build_document({}, [])["meta"]["schema"], **meta}}
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write("{\n")
                for key, value in head.items():
                    fh.write(f" {json.dumps(key)}: {json.dumps(value, default=_default)},\n")
                fh.write(f" {json.dumps(self.kind)}: [")
                for i, r in enumerate(rows):
                    fh.write(",\n  " if i else "\n  ")
                    fh.write(json.dumps(r, default=_default))
                    if advance is not None:
                        advance()
                fh.write("\n ]\n}\n" if rows else "]\n}\n")
            os.replace(tmp, path)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise WriteError(f"cannot write {path}: {exc.strerror}") from None


EXPORTERS: dict[str, type[Exporter]] = {"csv": CsvExporter, "json": JsonExporter}


def exporter_for(fmt: str, kind: str = "flows", **kw: Any) -> Exporter:
    cls = EXPORTERS.get(fmt.lower())
    if cls is None:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(EXPORTERS)})")
    return cls(kind, **kw)


def export_rows(source: RowSource, kind: str, path: str | Path, fmt: str | None = None,
                progress: bool | None = None) -> ExportResult:
    """Export one kind to ``path``; the format follows the suffix unless ``fmt`` is given."""
    path = Path(path)
    fmt = fmt or (path.suffix.lstrip(".").lower() or "csv")
    return exporter_for(fmt, kind, progress=progress).export(source, path)

