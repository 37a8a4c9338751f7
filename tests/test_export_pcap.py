"""Saving the selected flows' packets from memory: tshark reads our pcapng back, same frames.

A real run reads a real capture; flows are picked the way a user would (the busiest ones, a DNS
lookup, the inner flow of a tunnel), written from the packet ring, and tshark lists the same
frames (time and length) as it finds for those conversations in the original file.
"""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

import config
import main
from conftest import CAPTURES, require, require_tool
from dashboard import actions
from dashboard.state import StateBuilder
from dashboard.view_state import ViewState
from export.packet_ring import PacketRing, write_flow_packets
from runtime import Runtime

ESPN = CAPTURES / "http-espn-browse.pcapng"
VXLAN = CAPTURES / "vxlan-encapsulated-http.pcap"


def run_capture(capture: Path, *extra: str, rings: tuple[PacketRing, ...] = ()) -> Runtime:
    """A real run over ``capture`` to its end; ``rings`` replace the run's packet ring."""
    require(capture.is_file(), f"capture {capture} missing")
    args = main.build_parser().parse_args(["-r", str(capture), "--no-db", "--offline", *extra])
    settings = config.load_settings(main.cli_overrides(args), None)
    rt = Runtime(settings, args, threading.Event())
    if rings:
        sinks = rt.pipeline.frame_sinks
        sinks.remove(rt.components.packet_ring.add_batch)
        sinks.extend(r.add_batch for r in rings)
        rt.components.packet_ring = rings[0]
    rt.start_capture()
    deadline = time.monotonic() + 30
    while not rt.capture_done:
        assert time.monotonic() < deadline, "capture did not finish"
        rt.stop.wait(0.01)
    return rt


def tshark_frames(path: Path, display_filter: str = "") -> list[tuple[str, str]]:
    """(epoch time, frame length) of every frame tshark shows, in file order."""
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len"]
    if display_filter:
        cmd += ["-Y", display_filter]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [tuple(line.split("\t")) for line in out.stdout.splitlines() if line]


def conv_filter(f) -> str:
    ip = "ipv6" if f.ip_version == 6 else "ip"
    t = f.protocol.lower()
    return (f"({ip}.addr=={f.src_ip} && {ip}.addr=={f.dst_ip} && {t}.port=={f.src_port} && "
            f"{t}.port=={f.dst_port})")


def times(frames: list[tuple[str, str]]) -> list[tuple[float, int]]:
    return [(round(float(t), 6), int(n)) for t, n in frames]


@pytest.fixture(scope="module")
def espn() -> Runtime:
    rt = run_capture(ESPN)
    yield rt
    rt.shutdown()
    rt.close()


def test_selected_flows_read_back_by_tshark_with_the_same_frames(espn, tmp_path):
    require_tool("tshark")
    flows = espn.flows.all_flows()
    tcp = sorted((f for f in flows if f.protocol == "TCP"), key=lambda f: f.packets)[-3:]
    dns = next(f for f in flows if f.protocol == "UDP" and f.dst_port == 53)
    chosen = tcp + [dns]
    out = tmp_path / "selected.pcapng"
    written = write_flow_packets(espn.components.packet_ring, {f.flow_key for f in chosen}, out)
    assert written == sum(f.packets for f in chosen)
    ours = tshark_frames(out)
    assert len(ours) == written
    original = tshark_frames(ESPN, " || ".join(conv_filter(f) for f in chosen))
    assert times(ours) == times(original)
    # A saved file is a capture like any other: we read it back ourselves too.
    again = run_capture(out)
    try:
        assert again.pipeline.counters.packets == written
        assert {f.flow_key for f in again.flows.all_flows()} == {f.flow_key for f in chosen}
    finally:
        again.shutdown()
        again.close()


def test_tunnel_frames_are_written_once(tmp_path):
    require_tool("tshark")
    rt = run_capture(VXLAN)
    try:
        flows = rt.flows.all_flows()
        inner = next(f for f in flows if f.protocol == "TCP")
        outer = next(f for f in flows if f.protocol == "UDP" and 4789 in (f.src_port, f.dst_port))
        ring = rt.components.packet_ring
        only_inner = write_flow_packets(ring, {inner.flow_key}, tmp_path / "inner.pcapng")
        both = write_flow_packets(ring, {inner.flow_key, outer.flow_key}, tmp_path / "both.pcapng")
        assert only_inner == inner.packets
        assert len(tshark_frames(tmp_path / "inner.pcapng", "tcp")) == inner.packets
        # the outer flow carries every inner frame: selecting both writes each frame once
        assert both == len(tshark_frames(tmp_path / "both.pcapng")) == outer.packets
    finally:
        rt.shutdown()
        rt.close()


def test_ring_keeps_the_newest_frames_within_its_bounds(tmp_path):
    require_tool("tshark")
    small = PacketRing(max_frames=100, max_bytes=10**9)
    tiny = PacketRing(max_frames=10**6, max_bytes=64 * 1024)
    rt = run_capture(ESPN, rings=(small, tiny))
    try:
        assert len(small) == 100
        assert 0 < tiny.bytes_held <= 64 * 1024 and len(tiny) < 100 and tiny.evicted > 0
        keys = {f.flow_key for f in rt.flows.all_flows()}
        n = write_flow_packets(small, keys, tmp_path / "last100.pcapng")
        frames = tshark_frames(tmp_path / "last100.pcapng")
        assert n == len(frames) == 100
        # the newest 100 frames that belong to flows (IP), in order
        assert times(frames) == times(tshark_frames(ESPN, "ip || ipv6"))[-100:]
    finally:
        rt.shutdown()
        rt.close()


def test_dashboard_w_saves_the_selection_and_says_where(espn, tmp_path, monkeypatch):
    require_tool("tshark")
    monkeypatch.chdir(tmp_path)
    vs = ViewState()
    builder = StateBuilder(espn)
    state = builder.build(vs)
    ctx = actions.Context(espn, state)
    actions.handle_key(vs, ctx, "space")           # select the busiest flow shown
    actions.handle_key(vs, ctx, "space")           # and the next one
    state = builder.build(vs)
    actions.handle_key(vs, actions.Context(espn, state), "w")
    saved = Path(vs.last_export)
    assert saved.parent == tmp_path and saved.name.startswith("packettracer-packets-")
    assert saved.suffix == ".pcapng" and str(saved) in vs.message
    chosen = [f for f in espn.flows.all_flows() if f.flow_key in vs.selected]
    assert len(chosen) == 2
    assert len(tshark_frames(saved)) == sum(f.packets for f in chosen)
