"""Finished flows share one inspection state: the sharing saves memory and changes nothing.

A flow whose directions are both classified, with no facts record and both first TTLs known,
points at a state shared by every flow with the same labels and TTLs. These tests check that a
later anomaly or OS guess on one such flow never shows on another, and that on real captures
every fact, label, anomaly and host score is the same with and without the sharing.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from analysis import apps, inspector as inspector_module
from analysis.inspector import FlowInspector
from capture.packet import ParsedPacket
from capture.parser import parse
from capture.reader import iter_parsed
from tests.conftest import CAPTURES, require, traced_growth
from tracking.flow import Flow, FlowTracker

SYN, PSH_ACK, ACK = 0x02, 0x18, 0x10


def _frame(payload: bytes, flags: int, sport: int, dport: int = 22, reverse: bool = False,
           seq: int = 1000, ttl: int = 64) -> ParsedPacket:
    """One IPv4/TCP frame decoded by our parser (built by hand: thousands are needed)."""
    src, dst = bytes([10, 0, sport >> 8, sport & 0xFF]), bytes([192, 0, 2, 7])
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0x4000, ttl, 6, 0, src, dst)
    return parse(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + seg, 1)


def _ssh_flow(tracker: FlowTracker, ins: FlowInspector, port: int) -> Flow:
    """A mid-stream SSH conversation (no handshake seen: no OS guess), both sides classified."""
    flow = None
    for pkt in (_frame(b"SSH-2.0-OpenSSH_9.2\r\n", PSH_ACK, port, seq=1001),
                _frame(b"\x8f\x02\x99\x11random-binary-stuff", PSH_ACK, port, reverse=True,
                       seq=5001)):
        hit = tracker.process(pkt)
        assert hit is not None
        flow, forward = hit
        ins.flow_stage(pkt, flow, forward)
    assert flow is not None
    return flow


def _feed(tracker: FlowTracker, ins: FlowInspector, pkt: ParsedPacket) -> None:
    hit = tracker.process(pkt)
    assert hit is not None
    ins.flow_stage(pkt, *hit)


def test_an_anomaly_or_os_guess_on_one_finished_flow_never_shows_on_another() -> None:
    tracker, ins = FlowTracker(), FlowInspector()
    a, b = _ssh_flow(tracker, ins, 2001), _ssh_flow(tracker, ins, 2002)
    assert a.dpi is b.dpi                       # finished alike: one state for both
    before_b = ins.as_export(b)
    assert before_b["app_protocol"] == apps.SSH and before_b["anomaly_reasons"] is None

    # A's client now arrives with a very different TTL: an anomaly for A only.
    _feed(tracker, ins, _frame(b"", ACK, 2001, seq=1022, ttl=20))
    reasons = ins.as_export(a)["anomaly_reasons"]
    assert reasons and "64 -> 20" in reasons[0]
    assert ins.as_export(b) == before_b
    # A then sees a SYN (a reconnect on the same ports): its client OS is guessed, B's is not.
    _feed(tracker, ins, _frame(b"", SYN, 2001, seq=7000))
    assert ins.as_export(a)["src_os"] is not None
    assert ins.as_export(b) == before_b
    # Two more anomalies on A land in A's own record, not in a fresh copy of the shared one.
    _feed(tracker, ins, _frame(b"", 0x03, 2001, seq=7001, ttl=20))     # SYN+FIN
    reasons = ins.as_export(a)["anomaly_reasons"]
    assert len(reasons) >= 2 and any("64 -> 20" in r for r in reasons)

    # A flow finishing later the same way as B still starts clean.
    c = _ssh_flow(tracker, ins, 2003)
    assert c.dpi is b.dpi and ins.as_export(c) == before_b
    # One packet tripping a flag rule and an OS guess at once on a shared flow: both land in
    # C's one private copy.
    _feed(tracker, ins, _frame(b"", 0x03, 2003, seq=7001))     # SYN+FIN
    got = ins.as_export(c)
    assert got["anomaly_reasons"] and "SYN and FIN" in got["anomaly_reasons"][0]
    assert got["src_os"] is not None and got["app_protocol"] == apps.SSH
    assert ins.as_export(b) == before_b
    # Retiring a flow that shares its state keeps its facts and leaves the others alone.
    d = _ssh_flow(tracker, ins, 2004)
    ins.retire(b)
    assert ins.as_export(b) == before_b and ins.as_export(d) == before_b


def test_finished_flows_hold_no_state_of_their_own() -> None:
    n = 2000
    tracker = FlowTracker()
    fed = []
    for i in range(n):
        port = 1024 + i
        for pkt in (_frame(b"", SYN, port, seq=1000),
                    _frame(b"", 0x12, port, reverse=True, seq=5000),
                    _frame(b"SSH-2.0-OpenSSH_9.2\r\n", PSH_ACK, port, seq=1001),
                    _frame(b"\x8f\x02\x99\x11random-binary-stuff", PSH_ACK, port,
                           reverse=True, seq=5001)):
            hit = tracker.process(pkt)
            assert hit is not None
            fed.append((pkt, *hit))
    flows = {id(flow): flow for _, flow, _ in fed}.values()
    per_flow = {}
    for share in (False, True):
        for flow in flows:
            flow.dpi = None
        ins = FlowInspector()
        with pytest.MonkeyPatch.context() as mp:
            if not share:
                mp.setattr(inspector_module, "_finish", lambda st, flow: None)
            per_flow[share] = traced_growth(
                lambda: [ins.flow_stage(pkt, flow, fwd) for pkt, flow, fwd in fed]) / n
    # the 80-byte state per flow is gone (what is left is the beacon detector's own records)
    assert per_flow[False] - per_flow[True] > 70, per_flow


def _run(path: Path, share: bool) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any], int]:
    """Every flow's export fields and the per-host anomaly scores of one capture, fed as the
    pipeline does (flow stage, retired flows cut to their facts), with or without sharing; and
    how many flows were on a shared state at some point."""
    with pytest.MonkeyPatch.context() as mp:
        if not share:
            mp.setattr(inspector_module, "_finish", lambda st, flow: None)
        tracker, ins = FlowTracker(), FlowInspector()
        tracker.listeners.append(ins.retire)
        retired: list[Flow] = []
        tracker.listeners.append(retired.append)
        was_shared: set[str] = set()
        for pkt in iter_parsed(path):
            pkt = pkt.innermost()
            hit = tracker.process(pkt)
            if hit is not None:
                ins.flow_stage(pkt, *hit)
                if type(hit[0].dpi) is inspector_module._SharedState:
                    was_shared.add(hit[0].flow_key)
        flows = retired + tracker.all_flows()
        out = [(f.flow_key, ins.as_export(f)) for f in flows]
        hosts = {h: repr(v) for h, v in ins.hosts.scores().items()}
    return out, hosts, len(was_shared)


@pytest.mark.parametrize("name", ["http-dns-wikipedia-browse.pcap", "http-espn-browse.pcapng",
                                  "mobile-android-mix.pcap", "lan-mix-ssdp-dns-stp.pcap",
                                  "icmp-traceroute-windows.pcapng",
                                  "dns-dnscat-exfil-many-queries.pcap",
                                  "tcpreplay-small-mix.pcap"])
def test_real_captures_give_the_same_facts_with_and_without_sharing(name: str) -> None:
    path = CAPTURES / name
    require(path.exists(), f"capture {name} missing")
    plain, plain_hosts, _ = _run(path, share=False)
    shared, shared_hosts, n_shared = _run(path, share=True)
    assert n_shared                             # (else this compares nothing)
    assert plain and shared == plain
    assert shared_hosts == plain_hosts
