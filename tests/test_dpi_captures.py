"""Deep inspection against tshark's ground truth on the real captures.

Every TLS ClientHello tshark reports (TCP and QUIC) must be found by the inspector on the flow
of the same frame with the same SNI, JA3 (and JA3 string), legacy version and supported
versions; every HTTP request with the same method, host, URI and user agent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis import apps
from analysis.inspector import EXPORT_FIELDS, FlowInspector
from capture.errors import CaptureFileError
from capture.reader import iter_parsed
from tests.conftest import CAPTURE_FILES, expected_for, require
from tracking.flow import FlowTracker

READABLE = [p for p in CAPTURE_FILES if expected_for(p).get("readable")]
WITH_TLS = [p for p in READABLE if expected_for(p).get("tls_sni")]
WITH_HTTP = [p for p in READABLE if expected_for(p).get("http")]


@dataclass
class Run:
    inspector: FlowInspector
    #: frame number (1-based) -> flow key of the (innermost) packet
    frame_flow: dict[int, str]


_RUNS: dict[Path, Run] = {}


def inspect_capture(path: Path) -> Run:
    """Feed a capture through the real flow tracker and the inspector, as the pipeline does."""
    if path in _RUNS:
        return _RUNS[path]
    tracker = FlowTracker()
    inspector = FlowInspector()
    frames: dict[int, str] = {}
    for n, pkt in enumerate(iter_parsed(path), 1):
        pkt = pkt.innermost()                    # VXLAN/GRE: the tunnelled conversation
        hit = tracker.process(pkt)
        if hit is None:
            continue
        flow, forward = hit
        inspector.inspect(pkt, flow.flow_key, forward)
        frames[n] = flow.flow_key
    _RUNS[path] = Run(inspector, frames)
    return _RUNS[path]


def _hexes(values: tuple[int, ...]) -> list[str]:
    return [f"0x{v:04x}" for v in values]


@pytest.mark.parametrize("path", WITH_TLS, ids=lambda p: p.name)
def test_every_tshark_client_hello_is_reproduced(path: Path) -> None:
    run = inspect_capture(path)
    for entry in expected_for(path)["tls_sni"]:
        if entry["transport"] not in ("tcp", "quic"):
            continue
        facts = run.inspector.facts(run.frame_flow[entry["frame"]])
        assert facts is not None and facts.client_hello is not None, entry
        hello = facts.client_hello
        got = {"sni": facts.sni, "ja3": facts.ja3, "ja3_full": facts.ja3_full,
               "handshake_version": f"0x{hello.legacy_version:04x}",
               "supported_versions": _hexes(hello.supported_versions)}
        want = {k: entry[k] for k in got}
        assert got == want, f"frame {entry['frame']}"
        assert facts.app_protocol == (apps.QUIC if entry["transport"] == "quic" else apps.TLS)
        assert facts.ja4 and facts.ja4[0] == ("q" if entry["transport"] == "quic" else "t")


@pytest.mark.parametrize("path", WITH_HTTP, ids=lambda p: p.name)
def test_every_tshark_http_request_is_reproduced(path: Path) -> None:
    run = inspect_capture(path)
    for entry in expected_for(path)["http"]:
        facts = run.inspector.facts(run.frame_flow[entry["frame"]])
        assert facts is not None, entry
        seen = [(r.method, r.host, r.path, r.version, r.user_agent) for r in facts.http_requests]
        want = (entry["method"], entry["host"], entry["uri"], entry["version"],
                entry["user_agent"])
        assert want in seen, f"frame {entry['frame']}: {want} not in {seen}"
        assert facts.app_protocol == apps.HTTP


@pytest.mark.parametrize("path", WITH_HTTP, ids=lambda p: p.name)
def test_http_flows_report_their_first_request_and_response(path: Path) -> None:
    run = inspect_capture(path)
    for key in set(run.frame_flow[e["frame"]] for e in expected_for(path)["http"]):
        facts = run.inspector.facts(key)
        assert facts is not None
        first = facts.http_requests[0]
        assert (facts.http_method, facts.http_host, facts.http_path, facts.http_user_agent) == \
            (first.method, first.host, first.path, first.user_agent)
        export = run.inspector.as_export(key)
        assert export["http_host"] == first.host and export["app_protocol"] == "HTTP"
    statuses = [run.inspector.facts(k).http_status for k in set(run.frame_flow.values())
                if run.inspector.facts(k) is not None]
    assert any(isinstance(s, int) and 100 <= s < 600 for s in statuses)


def test_dns_messages_tshark_decodes_are_labelled_dns_family() -> None:
    checked = 0
    for path in READABLE:
        entries = expected_for(path).get("dns") or []
        if not entries:
            continue
        run = inspect_capture(path)
        want_label = {"dns": apps.DNS, "mdns": apps.MDNS, "llmnr": apps.LLMNR}
        # tshark names a malformed message DNS by its port alone; payload inspection need not
        malformed = set(expected_for(path)["expert_malformed"]["frames_malformed"])
        for entry in entries:
            if entry["frame"] in malformed:
                continue
            key = run.frame_flow.get(entry["frame"])
            facts = run.inspector.facts(key) if key else None
            if facts is None or entry["transport"] != "udp":
                continue
            assert facts.app_protocol == want_label[entry["proto"]], (path.name, entry["frame"])
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("name,label", [
    ("ssh-single-connection.pcap", apps.SSH), ("smtp-session.pcap", apps.SMTP),
    ("ntp-client-server.pcap", apps.NTP), ("dhcp-dora.pcapng", apps.DHCP),
])
def test_protocols_named_by_the_capture_are_identified(name: str, label: str) -> None:
    path = next((p for p in READABLE if p.name == name), None)
    require(path is not None, f"{name} not in the captures folder")
    run = inspect_capture(path)
    found = {run.inspector.facts(k).app_protocol for k in set(run.frame_flow.values())}
    assert label in found
    for key in set(run.frame_flow.values()):
        assert not run.inspector.facts(key).mismatch, "a protocol on its own port is no mismatch"


def test_tls_server_hello_gives_ja3s_and_negotiated_version() -> None:
    path = next(p for p in WITH_TLS if p.name == "tls12-sni.pcap")
    run = inspect_capture(path)
    entry = expected_for(path)["tls_sni"][0]
    facts = run.inspector.facts(run.frame_flow[entry["frame"]])
    assert facts.server_hello is not None
    assert facts.tls_version == "TLS 1.2"
    assert facts.ja3s and len(facts.ja3s) == 32
    export = run.inspector.as_export(run.frame_flow[entry["frame"]])
    assert set(export) == set(EXPORT_FIELDS)
    assert export["sni"] == entry["sni"] and export["ja3"] == entry["ja3"]


def test_os_fingerprints_of_known_clients() -> None:
    """The Android phone's SYNs say Android; Chrome on a Mac says macOS; Linux Firefox, Linux."""
    want = {"mobile-android-mix.pcap": "Android", "tls13-chrome-browse.pcap": "macOS/iOS",
            "http-espn-browse.pcapng": "Linux"}
    for path in READABLE:
        if path.name not in want:
            continue
        run = inspect_capture(path)
        oses = {run.inspector.facts(k).client_os for k in set(run.frame_flow.values())}
        assert want[path.name] in oses, (path.name, oses)


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_every_capture_inspects_cleanly_and_frees_payload(path: Path) -> None:
    try:
        run = inspect_capture(path)
    except CaptureFileError:
        require(False, "capture damaged in a way the reader reports")
        return
    ins = run.inspector
    # Only directions still undecided hold bytes, never more than the budget.
    assert ins.buffered_bytes() <= len(ins) * 2 * ins.stream_bytes
    for key in set(run.frame_flow.values()):
        export = ins.as_export(key)
        assert set(export) == set(EXPORT_FIELDS)
        ins.forget(key)
    assert len(ins) == 0 and ins.buffered_bytes() == 0
    _RUNS.pop(path, None)


@pytest.mark.parametrize("path", sorted(set(WITH_TLS) | set(WITH_HTTP)), ids=lambda p: p.name)
def test_flow_stage_finds_what_keyed_inspection_finds(path: Path) -> None:
    """The pipeline's flow stage (state on the flow) reports the same facts for every flow as
    inspection by key, before and after the flows retire, and by key through all_flows."""
    tracker = FlowTracker()
    by_key, on_flow = FlowInspector(), FlowInspector(all_flows=tracker.all_flows)
    tracker.listeners.append(on_flow.retire)
    for pkt in iter_parsed(path):
        pkt = pkt.innermost()
        hit = tracker.process(pkt)
        if hit is not None:
            by_key.inspect(pkt, hit[0].flow_key, hit[1])
            on_flow.flow_stage(pkt, *hit)
    assert len(on_flow) == 0                     # nothing kept in the keyed table
    flows = tracker.all_flows()
    want = {f.flow_key: by_key.as_export(f.flow_key) for f in flows}
    assert any(w["ja3"] or w["http_host"] for w in want.values())
    assert {f.flow_key: on_flow.as_export(f) for f in flows} == want
    tracker.finish()
    assert all(f.dpi is None or type(f.dpi).__name__ == "DpiFacts" for f in tracker.all_flows())
    assert {f.flow_key: on_flow.as_export(f) for f in flows} == want
    assert {k: on_flow.as_export(k) for k in want} == want
