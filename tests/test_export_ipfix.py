"""IPFIX export received by nfdump's own collector (nfcapd) on loopback, listed by nfdump.

A real run reads a real capture with ``--ipfix 127.0.0.1:PORT``; nfcapd stores what arrives;
after nfcapd is stopped (SIGTERM flushes its file), ``nfdump -o json`` must list, per direction
of every flow, the packets and bytes our JSON export has. A second test reads the messages off a
UDP socket itself and checks the RFC 7011 framing: headers, template sets, sequence numbers.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import config
import main
from conftest import CAPTURES, require, require_tool
from export.ipfix import (
    FIELDS_V4, FIELDS_V6, TEMPLATE_V4, TEMPLATE_V6, IpfixExporter, add_arguments, parse_collector,
)
from runtime import Runtime

ESPN = CAPTURES / "http-espn-browse.pcapng"
DUAL = CAPTURES / "http-ipv4-and-ipv6.pcapng"
ANDROID = CAPTURES / "mobile-android-mix.pcap"


def parser() -> argparse.ArgumentParser:
    p = main.build_parser()
    try:
        add_arguments(p)
    except argparse.ArgumentError:     # main.py already adds --ipfix
        pass
    return p


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(capture: Path, *extra: str, before_start=None, **overrides) -> Runtime:
    require(capture.is_file(), f"capture {capture} missing")
    args = parser().parse_args(["-r", str(capture), "--no-db", "--offline", "--no-ui", *extra])
    settings = config.load_settings({**main.cli_overrides(args), **overrides}, None)
    rt = Runtime(settings, args, threading.Event())
    if before_start is not None:
        before_start(rt)
    rt.start_capture()
    rt.wait_capture()
    rt.shutdown()
    return rt


def udp_rx_queue(port: int) -> int | None:
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:port."""
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == want:
            return int(cols[4].split(":")[1], 16)
    return None


class Nfcapd:
    """nfcapd listening on 127.0.0.1 with a temporary flow directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_udp_port()
        self.proc = subprocess.Popen(
            ["nfcapd", "-b", "127.0.0.1", "-p", str(self.port), "-w", str(directory), "-t", "3600"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while udp_rx_queue(self.port) is None:
            assert self.proc.poll() is None, self.proc.stdout.read()
            assert time.monotonic() < deadline, "nfcapd did not start listening"
            time.sleep(0.02)

    def stop(self) -> str:
        """Wait until nfcapd has read every datagram, then SIGTERM it (it writes its file)."""
        deadline = time.monotonic() + 10
        while udp_rx_queue(self.port):
            assert time.monotonic() < deadline, "nfcapd does not read its socket"
            time.sleep(0.02)
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def records(self) -> list[dict]:
        files = sorted(p for p in self.dir.iterdir() if p.name.startswith("nfcapd.2"))
        assert files, f"nfcapd wrote no file: {list(self.dir.iterdir())}"
        out: list[dict] = []
        for f in files:
            r = subprocess.run(["nfdump", "-r", str(f), "-o", "json"], capture_output=True,
                               text=True, timeout=60, env={**os.environ, "TZ": "UTC"})
            assert r.returncode == 0, r.stderr
            out += json.loads(r.stdout or "[]")
        return out


@pytest.fixture
def nfcapd(tmp_path):
    require_tool("nfcapd", "nfdump")
    (tmp_path / "flows").mkdir()
    d = Nfcapd(tmp_path / "flows")
    yield d
    d.kill()


def direction_totals(flows: list[dict]) -> Counter:
    """(proto, src, sport, dst, dport) -> [packets, bytes] from our export's flows."""
    out: Counter = Counter()
    for f in flows:
        proto = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132}.get(f["protocol"])
        if proto is None:
            continue
        sp, dp = f["src_port"] or 0, f["dst_port"] or 0
        if f["packets_sent"]:
            out[(proto, f["src_ip"], sp, f["dst_ip"], dp, "p")] += f["packets_sent"]
            out[(proto, f["src_ip"], sp, f["dst_ip"], dp, "b")] += f["bytes_sent"]
        if f["packets_recv"]:
            out[(proto, f["dst_ip"], dp, f["src_ip"], sp, "p")] += f["packets_recv"]
            out[(proto, f["dst_ip"], dp, f["src_ip"], sp, "b")] += f["bytes_recv"]
    return out


def nfdump_totals(records: list[dict]) -> Counter:
    out: Counter = Counter()
    for r in records:
        src = r.get("src4_addr") or r.get("src6_addr")
        dst = r.get("dst4_addr") or r.get("dst6_addr")
        key = (r["proto"], str(ipaddress.ip_address(src)), r.get("src_port", 0),
               str(ipaddress.ip_address(dst)), r.get("dst_port", 0))
        out[key + ("p",)] += r["in_packets"]
        out[key + ("b",)] += r["in_bytes"]
    return out


@pytest.mark.parametrize("capture", [ESPN, DUAL], ids=lambda p: p.stem)
def test_nfdump_lists_the_flows_packets_and_bytes_of_our_json_export(nfcapd, tmp_path, capture):
    out = tmp_path / "export.json"
    rt = run(capture, "--ipfix", f"127.0.0.1:{nfcapd.port}", "--export-json", str(out))
    rt.close()
    log = nfcapd.stop()
    doc = json.loads(out.read_text())
    ours = direction_totals(doc["flows"])
    theirs = nfdump_totals(nfcapd.records())
    assert theirs == ours
    assert sum(v for k, v in ours.items() if k[-1] == "p") == doc["meta"]["packets"]
    # nfcapd's own tally on exit: every record arrived, in sequence
    assert "Sequence Errors: 0" in log, log
    assert f"Packets: {doc['meta']['packets']}," in log and f"Bytes: {doc['meta']['bytes']}," in log
    if capture == DUAL:
        assert any(r.get("src6_addr") for r in nfcapd.records())


def test_flow_times_reach_the_collector(nfcapd, tmp_path):
    out = tmp_path / "export.json"
    run(ESPN, "--ipfix", f"127.0.0.1:{nfcapd.port}", "--export-json", str(out)).close()
    nfcapd.stop()
    doc = json.loads(out.read_text())
    first = {}
    for r in nfcapd.records():
        key = (r.get("src4_addr"), r["src_port"], r.get("dst4_addr"), r["dst_port"])
        first[key] = r["first"]
    f = max(doc["flows"], key=lambda f: f["packets_sent"])
    want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(f["first_seen"]))
    want += f".{int(round(f['first_seen'] * 1000)) % 1000:03d}"
    assert first[(f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"])] == want


def test_active_and_idle_timeouts_split_long_flows_without_losing_counts(nfcapd, tmp_path):
    out = tmp_path / "export.json"
    exporters = []

    def short_timeouts(rt: Runtime) -> None:
        exp = IpfixExporter(("127.0.0.1", nfcapd.port), active_timeout=5, idle_timeout=2)
        rt.flows.listeners.append(exp.on_retire)
        rt.pipeline.periodic.append(lambda now: exp.on_tick(now, rt.flows.snapshot()))
        rt.components.on_finish.append(exp.close)
        exporters.append(exp)

    # small batches: the pipeline ticks (packet time) between batches, as in a live capture
    rt = run(ANDROID, "--export-json", str(out), before_start=short_timeouts,
             CAPTURE_BATCH_SIZE=4)
    rt.close()
    nfcapd.stop()
    doc = json.loads(out.read_text())
    records = nfcapd.records()
    directions = sum(1 for f in doc["flows"] if f["packets_sent"]) + \
        sum(1 for f in doc["flows"] if f["packets_recv"])
    # a 100 s capture with 5 s active / 2 s idle timeouts: flows are reported in pieces...
    assert len(records) > directions
    # ...whose deltas add up to the flows' totals
    assert nfdump_totals(records) == direction_totals(doc["flows"])
    assert exporters[0].records == len(records)


def test_messages_follow_rfc7011(tmp_path):
    """Read the datagrams ourselves: header, template set first, sequence = records before."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    clock = [1000.0]
    exp_holder = []

    def attach(rt: Runtime) -> None:
        # template_refresh 30 s on a clock we move: the refresh must come back
        exp = IpfixExporter(("127.0.0.1", port), mtu=512, template_refresh=30,
                            clock=lambda: clock[0])
        rt.flows.listeners.append(exp.on_retire)
        rt.components.on_finish.append(exp.flush)
        exp_holder.append(exp)

    rt = run(DUAL, before_start=attach)
    exp = exp_holder[0]
    msgs = []
    while len(msgs) < exp.messages:
        msgs.append(rx.recv(65535))
    clock[0] += 31
    exp.flush()                         # nothing queued: a template refresh on its own
    msgs.append(rx.recv(65535))
    exp.close()
    rx.close()
    rt.close()
    seq = 0
    templates_seen = []
    flows_v6 = 0
    for i, m in enumerate(msgs):
        version, length, export_time, sequence, domain = struct.unpack_from("!HHIII", m)
        assert version == 10 and length == len(m) <= 512 and domain == 1
        assert sequence == seq, f"message {i}: sequence {sequence}, expected {seq}"
        off = 16
        while off < length:
            set_id, set_len = struct.unpack_from("!HH", m, off)
            assert set_len >= 4 and off + set_len <= length
            if set_id == 2:
                templates_seen.append(i)
                t = off + 4
                found = {}
                while t < off + set_len:
                    tid, count = struct.unpack_from("!HH", m, t)
                    fields = [struct.unpack_from("!HH", m, t + 4 + 4 * k) for k in range(count)]
                    found[tid] = fields
                    t += 4 + 4 * count
                assert found[TEMPLATE_V4] == [(ie, ln) for ie, ln, _ in FIELDS_V4]
                assert found[TEMPLATE_V6] == [(ie, ln) for ie, ln, _ in FIELDS_V6]
            else:
                assert set_id in (TEMPLATE_V4, TEMPLATE_V6)
                size = sum(ln for _, ln, _ in (FIELDS_V4 if set_id == TEMPLATE_V4 else FIELDS_V6))
                n = (set_len - 4) // size
                assert n >= 1
                seq += n
                flows_v6 += n if set_id == TEMPLATE_V6 else 0
            off += set_len
    assert templates_seen[0] == 0 and templates_seen[-1] == len(msgs) - 1
    assert seq == exp.records and flows_v6 > 0


def test_collector_argument():
    assert parse_collector("127.0.0.1:4739") == ("127.0.0.1", 4739)
    assert parse_collector("[::1]:2055") == ("::1", 2055)
    for bad in ("127.0.0.1", "host:0", "host:70000", ":4739", "host:port"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_collector(bad)
    p = parser()
    with pytest.raises(SystemExit):
        p.parse_args(["--ipfix", "nohostport"])
