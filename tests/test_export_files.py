"""CSV and JSON exports of every kind, from a live run and from a stored session; the dashboard's e.

Real captures through the real runtime; files are read back the way a user's tools would (the
csv module as a spreadsheet would, json.load), and compared with the run's own JSON document.
"""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

import config
import main
from conftest import CAPTURES, ROOT, require
from dashboard import actions
from dashboard.state import StateBuilder
from dashboard.view_state import ViewState
from db.connection import ConnectionPool
from db.repositories.device_repo import DeviceRepository
from export.base import (
    KINDS, CsvExporter, DocumentSource, JsonExporter, RuntimeSource, export_rows, stored_source,
)
from export.csv_exporter import write_rows_csv
from runtime import Runtime
from tracking.flow import filter_flows

ESPN = CAPTURES / "http-espn-browse.pcapng"
ANDROID = CAPTURES / "mobile-android-mix.pcap"


def make_runtime(capture: Path, *extra: str) -> Runtime:
    require(capture.is_file(), f"capture {capture} missing")
    args = main.build_parser().parse_args(["-r", str(capture), "--offline", *extra])
    settings = config.load_settings(main.cli_overrides(args), None)
    rt = Runtime(settings, args, threading.Event())
    rt.start_capture()
    deadline = time.monotonic() + 30
    while not rt.capture_done:
        assert time.monotonic() < deadline, "capture did not finish"
        rt.stop.wait(0.01)
    return rt


@pytest.fixture(scope="module")
def android():
    rt = make_runtime(ANDROID, "--no-db")
    rt.shutdown()               # every flow retired: the document is final
    yield rt
    rt.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def counters(rows) -> dict[str, tuple[int, int, int, int]]:
    return {r["flow_key"]: (int(r["packets_sent"]), int(r["packets_recv"]), int(r["bytes_sent"]),
                            int(r["bytes_recv"])) for r in rows}


def test_csv_and_json_of_every_kind_match_the_runs_document(android, tmp_path):
    doc = android.document()
    src = RuntimeSource(android)
    assert doc["flows"] and doc["dns"] and doc["ports"] and doc["devices"]
    res = CsvExporter("flows").export(src, tmp_path / "flows.csv")
    rows = read_csv(res.path)
    assert res.rows == len(rows) == len(doc["flows"])
    assert counters(rows) == counters(doc["flows"])
    js = json.loads(JsonExporter("flows").export(src, tmp_path / "flows.json").path.read_text())
    # a flows export is a whole document (the contract), other sections empty
    assert set(doc) >= set(js) >= {"meta", "flows", "dns", "ports", "tcp", "stats"}
    assert js["meta"]["schema"] == doc["meta"]["schema"] and js["meta"]["export_kind"] == "flows"
    assert js["flows"] == json.loads(json.dumps(doc["flows"]))
    for kind in ("dns", "ports", "devices"):
        c = read_csv(export_rows(src, kind, tmp_path / f"{kind}.csv").path)
        j = json.loads(export_rows(src, kind, tmp_path / f"{kind}.json").path.read_text())
        assert len(c) == len(j[kind]) == len(doc[kind]), kind
    tcp = read_csv(export_rows(src, "tcp", tmp_path / "tcp.csv").path)
    assert {r["flow_key"] for r in tcp} == {f["flow_key"] for f in doc["flows"]
                                            if f["protocol"] == "TCP"}
    whole = JsonExporter("document").export(src, tmp_path / "all.json")
    assert json.loads(whole.path.read_text())["devices"] == json.loads(json.dumps(doc["devices"]))


def test_every_kind_exports_from_a_document(android, tmp_path):
    src = DocumentSource(json.loads(json.dumps(android.document(), default=str)))
    for kind in KINDS:
        res = export_rows(src, kind, tmp_path / f"{kind}.csv")
        assert res.path.is_file() and len(read_csv(res.path)) == res.rows


def test_stored_session_exports_like_the_live_run_with_its_devices(tmp_path):
    db = tmp_path / "data.db"
    live = tmp_path / "live.json"
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "-r", str(ANDROID), "--no-ui",
                        "--offline", "--db", str(db), "--export-json", str(live),
                        "--log-file", str(tmp_path / "log")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(live.read_text())
    pool = ConnectionPool(db)
    try:
        stored_devices = DeviceRepository(pool).list()
        src = stored_source(pool, doc["meta"]["session"])
        res = CsvExporter("flows").export(src, tmp_path / "stored.csv")
        devices = CsvExporter("devices").export(src, tmp_path / "devices.csv")
    finally:
        pool.close()
    assert counters(read_csv(res.path)) == counters(doc["flows"])
    # devices went to the database through the writer: one row per (device, address)
    live_pairs = {(d["mac"], ip) for d in doc["devices"] for ip in d["ips"]}
    assert live_pairs and {(d["mac"], d["ip"]) for d in stored_devices} == live_pairs
    assert {r["ip"] for r in read_csv(devices.path)} == {ip for _, ip in live_pairs}
    named = [d for d in doc["devices"] if d["hostname"]]
    assert named and all(any(s["hostname"] == d["hostname"] for s in stored_devices)
                         for d in named)


def test_progress_bar_on_a_terminal_only(android, tmp_path):
    rows = [dict(r, copy=i) for i in range(30) for r in android.document()["flows"]]
    term = io.StringIO()
    CsvExporter("flows", progress=True,
                console=Console(file=term, force_terminal=True, width=100)).export(
        DocumentSource({"flows": rows}), tmp_path / "big.csv", rows=rows)
    assert "exporting flows" in term.getvalue()
    assert len(read_csv(tmp_path / "big.csv")) == len(rows)
    # not a terminal (pytest captures stderr): no bar, same file
    plain = io.StringIO()
    CsvExporter("flows", console=Console(file=plain)).export(
        DocumentSource({"flows": rows}), tmp_path / "big2.csv", rows=rows)
    assert plain.getvalue() == ""
    assert (tmp_path / "big.csv").read_bytes() == (tmp_path / "big2.csv").read_bytes()


def test_csv_cells_a_spreadsheet_would_run_are_defused(tmp_path):
    rows = [{"http_host": '=HYPERLINK("http://x","y")', "names": ["@evil", "ok"],
             "note": "+1 call", "delta": "-3.5", "n": -2}]
    write_rows_csv(rows, tmp_path / "x.csv")
    got = read_csv(tmp_path / "x.csv")[0]
    assert got["http_host"].startswith("'=") and got["names"] == "'@evil;ok"
    assert got["note"] == "'+1 call" and got["delta"] == "-3.5" and got["n"] == "-2"


NAME = re.compile(r"packettracer-(s\d+-)?(\w+(-flows)?)-\d{8}-\d{6}(-\d+)?\.(csv|json)$")


def test_dashboard_e_exports_the_view_with_filters_and_selection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rt = make_runtime(ESPN, "--db", str(tmp_path / "db" / "data.db"))
    try:
        vs = ViewState()
        builder = StateBuilder(rt)

        def press(*keys: str) -> None:
            for k in keys:
                actions.handle_key(vs, actions.Context(rt, builder.build(vs)), k)

        press(":", "5", "3", "enter")                   # port filter 53
        press("e")
        path = Path(vs.last_export)
        m = NAME.search(path.name)
        assert m and m.group(1) == f"s{rt.session_id}-" and m.group(2) == "traffic"
        assert path.parent == tmp_path and str(path) in vs.message
        want = filter_flows(rt.flows.snapshot(), port=53)
        got = read_csv(path)
        assert want and {r["flow_key"] for r in got} == {f.flow_key for f in want}
        assert all("53" in (r["src_port"], r["dst_port"]) for r in got)

        press("c", "space", "space", "e")               # two flows selected, no filter
        sel = read_csv(Path(vs.last_export))
        assert {r["flow_key"] for r in sel} == vs.selected and len(sel) == 2
        assert "exported 2 flows" in vs.message

        press("6", "e")                                  # DNS view: lookups of those flows
        dns = read_csv(Path(vs.last_export))
        chosen = [f for f in rt.flows.all_flows() if f.flow_key in vs.selected]
        assert Path(vs.last_export).name.split("-")[2] == "dns"
        assert dns and all(set(r["answers"].split(";")) & {f.dst_ip for f in chosen}
                           for r in dns)

        press("9", "e")                                  # TCP view: their connections
        assert {r["flow_key"] for r in read_csv(Path(vs.last_export))} == vs.selected
        assert len(list(tmp_path.glob("packettracer-*"))) == 4
    finally:
        rt.shutdown()
        rt.close()


def test_export_error_is_shown_not_raised(monkeypatch):
    rt = make_runtime(ESPN, "--no-db")
    monkeypatch.chdir("/proc")          # no file can be created here, not even by root
    try:
        vs = ViewState()
        actions.handle_key(vs, actions.Context(rt, StateBuilder(rt).build(vs)), "e")
        assert vs.message.startswith("export failed: cannot write /proc/packettracer-")
        assert vs.last_export == ""
    finally:
        rt.shutdown()
        rt.close()


def test_dpi_panel_lists_devices_with_the_selection_first(android):
    from dashboard.panels.dpi import devices_table
    devs = android.document()["devices"]
    assert len(devs) >= 2
    quiet = min(devs, key=lambda d: d["packets"])
    console = Console(record=True, width=160, file=io.StringIO(), color_system=None)
    console.print(devices_table(devs, frozenset(quiet["ips"][:1]), limit=1))
    text = console.export_text()
    assert f"Devices ({len(devs)})" in text and quiet["mac"] in text
    assert (quiet["vendor"] or "")[:10] in text
