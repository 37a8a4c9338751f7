"""Differential test against tshark 4.0 on crafted captures.

The public captures never show fast or spurious retransmissions, keep-alives, zero-window
probes, full windows or a reused port pair, so this writes captures that do (scripted
scenarios plus seeded random connections with losses, duplicates, reordering, zero windows and
port reuse), runs the installed tshark on them with default preferences, and compares every
frame's labels, every frame's stream, and each stream's initial RTT.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from tests.conftest import require_tool
from tests.test_tcp_captures import CATEGORIES, RTT_TOLERANCE, analyse

_FIELDS = ["frame.number", "tcp.stream", "tcp.analysis.initial_rtt"] + [
    f"tcp.analysis.{name}" for name in CATEGORIES if name != "rst"] + ["tcp.flags.reset"]


class Writer:
    """Collects crafted TCP frames with explicit timestamps."""

    def __init__(self) -> None:
        self.frames: list = []
        self.t = 1_700_000_000.0

    def tcp(self, src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int = 0,
            length: int = 0, window: int = 65535, wscale: int | None = None,
            dt: float = 0.001) -> None:
        self.t += dt
        opts = [("MSS", 1460)] + ([("WScale", wscale)] if wscale is not None else [])
        seg = TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq & 0xFFFFFFFF,
                  ack=ack & 0xFFFFFFFF, window=window, options=opts if "S" in flags else [])
        pkt = Ether() / IP(src=src[0], dst=dst[0]) / seg
        if length:
            pkt = pkt / Raw(b"x" * length)
        pkt.time = self.t
        self.frames.append(pkt)


def scripted(w: Writer) -> None:
    c, s = ("10.1.0.1", 41000), ("10.1.0.2", 80)
    # fast retransmission after a loss and three duplicate ACKs, then a spurious one
    w.tcp(c, s, "S", 100, window=64240, wscale=7)
    w.tcp(s, c, "SA", 900, 101, window=65160, wscale=7, dt=0.02)
    w.tcp(c, s, "A", 101, 901, window=502, dt=0.02)
    w.tcp(c, s, "PA", 101, 901, 1000, window=502)
    w.tcp(c, s, "PA", 2101, 901, 1000, window=502)            # 1101-2100 lost
    w.tcp(s, c, "A", 901, 1101, window=509, dt=0.03)
    w.tcp(s, c, "A", 901, 1101, window=509)
    w.tcp(s, c, "A", 901, 1101, window=509)
    w.tcp(s, c, "A", 901, 1101, window=509)
    w.tcp(c, s, "PA", 1101, 901, 1000, window=502, dt=0.002)  # fast retransmission
    w.tcp(s, c, "A", 901, 3101, window=509, dt=0.03)
    w.tcp(c, s, "PA", 1101, 901, 1000, window=502, dt=0.3)    # spurious
    # zero window, probe, probe ACK, window update; keep-alive and its ACK
    w.tcp(s, c, "A", 901, 3101, window=0, dt=0.01)
    w.tcp(c, s, "A", 3101, 901, 1, window=502, dt=0.2)
    w.tcp(s, c, "A", 901, 3101, window=0, dt=0.01)
    w.tcp(s, c, "A", 901, 3101, window=300, dt=0.5)
    w.tcp(c, s, "A", 3100, 901, 0, window=502, dt=30)
    w.tcp(s, c, "A", 901, 3101, window=300, dt=0.01)
    # window full: 300 << 7 = 38400 bytes from 3101
    for i in range(4):
        w.tcp(c, s, "PA", 3101 + i * 9600, 901, 9600, window=502)
    w.tcp(c, s, "FA", 41501, 901, window=502)
    w.tcp(s, c, "FA", 901, 41502, window=300, dt=0.01)
    w.tcp(c, s, "A", 41502, 902, window=502, dt=0.01)
    # the same ports again: a retransmitted SYN, then a new ISN = a new stream
    w.tcp(c, s, "S", 100, window=64240, wscale=7, dt=1)
    w.tcp(c, s, "S", 777777, window=64240, wscale=7, dt=1)
    w.tcp(s, c, "SA", 5000, 777778, window=65160, dt=0.05)
    w.tcp(c, s, "A", 777778, 5001, window=502, dt=0.05)
    w.tcp(c, s, "RA", 777778, 5001, window=0, dt=0.05)
    # out-of-order within the handshake RTT, and a reused pair while still open
    c2 = ("10.1.0.3", 42000)
    w.tcp(c2, s, "S", 10, dt=0.1)
    w.tcp(s, c2, "SA", 20, 11, dt=0.05)
    w.tcp(c2, s, "A", 11, 21, dt=0.05)
    w.tcp(c2, s, "PA", 11, 21, 100)
    w.tcp(c2, s, "PA", 211, 21, 100, dt=0.001)
    w.tcp(c2, s, "PA", 111, 21, 100, dt=0.01)                 # 10 ms < 100 ms RTT
    w.tcp(c2, s, "S", 5555, dt=0.5)                            # new ISN, no FIN/RST before


def messy(w: Writer, rng: random.Random, n_conns: int) -> None:
    """Random but TCP-shaped conversations: every analysis branch gets exercised."""
    for i in range(n_conns):
        # few distinct client sockets, so pairs are reused (with and without a close before)
        c = (f"10.2.0.{rng.randrange(6) + 1}", 30000 + rng.randrange(3))
        s = ("10.9.9.9", rng.choice((80, 443)))
        cseq, sseq = rng.randrange(1 << 32), rng.randrange(1 << 32)
        scale = rng.choice((None, 0, 2, 7))
        if rng.random() < 0.8:
            w.tcp(c, s, "S", cseq, wscale=scale, dt=rng.choice((0.001, 0.5)))
            if rng.random() < 0.2:
                w.tcp(c, s, "S", cseq, wscale=scale, dt=1.0)
            w.tcp(s, c, "SA", sseq, cseq + 1, wscale=rng.choice((None, 3)),
                  dt=rng.choice((0.0005, 0.004, 0.05)))
            cseq += 1
            sseq += 1
            w.tcp(c, s, "A", cseq, sseq, dt=rng.choice((0.0005, 0.004, 0.05)))
        sent: list[tuple[int, int]] = []
        cwin = swin = rng.choice((200, 8192, 65535))
        acked = cseq
        for _ in range(rng.randrange(5, 40)):
            dt = rng.choice((0.0002, 0.001, 0.0025, 0.004, 0.015, 0.03, 0.2))
            r = rng.random()
            if r < 0.35:
                n = rng.choice((1, 2, 100, 1460))
                if rng.random() < 0.15:
                    cseq += n                                  # lost: never captured
                    continue
                sent.append((cseq, n))
                w.tcp(c, s, "PA", cseq, sseq, n, window=cwin, dt=dt)
                cseq += n
            elif r < 0.45 and sent:
                seq, n = rng.choice(sent)                      # (re)send something old
                w.tcp(c, s, "PA", seq, sseq, n, window=cwin, dt=dt)
            elif r < 0.65:
                acked = rng.choice((acked, cseq, sent[-1][0] if sent else acked))
                w.tcp(s, c, "A", sseq, acked, window=swin, dt=dt)
            elif r < 0.72:
                swin = rng.choice((0, swin, 300, 65535))
                w.tcp(s, c, "A", sseq, acked, window=swin, dt=dt)
            elif r < 0.78:
                w.tcp(c, s, "A", cseq, sseq, 1, window=cwin, dt=dt)   # probe
            elif r < 0.84:
                w.tcp(c, s, "A", cseq - 1, sseq, rng.choice((0, 1)), window=cwin, dt=dt)
            elif r < 0.92:
                n = rng.choice((10, 500))
                w.tcp(s, c, "PA", sseq, cseq, n, window=swin, dt=dt)
                sseq += n
            else:
                cwin = rng.choice((0, cwin, 1000))
                w.tcp(c, s, "A", cseq, sseq, window=cwin, dt=dt)
        end = rng.random()
        if end < 0.5:
            w.tcp(c, s, "FA", cseq, sseq, window=cwin)
            w.tcp(s, c, "FA", sseq, cseq + 1, window=swin, dt=0.01)
            w.tcp(c, s, "A", cseq + 1, sseq + 1, window=cwin, dt=0.01)
        elif end < 0.7:
            w.tcp(s, c, "R", sseq)


def tshark_view(path: Path, conf: Path) -> tuple[dict[str, list[int]], list[int], dict[int, float]]:
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(conf), LC_ALL="C")
    cmd = ["tshark", "-n", "-r", str(path), "-Y", "tcp", "-T", "fields", "-E", "separator=/t",
           "-E", "occurrence=f"]
    for f in _FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True,
                         timeout=120).stdout
    frames: dict[str, list[int]] = {name: [] for name in CATEGORIES}
    streams: list[int] = []
    rtts: dict[int, float] = {}
    for line in out.splitlines():
        cols = dict(zip(_FIELDS, line.split("\t")))
        num = int(cols["frame.number"])
        stream = int(cols["tcp.stream"])
        streams.append(stream)
        if cols.get("tcp.analysis.initial_rtt"):
            rtts.setdefault(stream, float(cols["tcp.analysis.initial_rtt"]))
        for name in CATEGORIES:
            key = "tcp.flags.reset" if name == "rst" else f"tcp.analysis.{name}"
            value = cols.get(key, "")
            if value and value not in ("0", "False"):
                frames[name].append(num)
    return frames, streams, rtts


def _compare(tmp_path: Path, w: Writer) -> None:
    pcap = tmp_path / "crafted.pcap"
    wrpcap(str(pcap), w.frames)
    conf = tmp_path / "wsconf"
    conf.mkdir()
    want_frames, want_streams, want_rtts = tshark_view(pcap, conf)
    got = analyse(pcap)
    assert len(got.streams) == len(want_streams) == len(w.frames)
    # the same split into streams (tcp.stream), frame by frame
    assert got.streams == want_streams
    for name in CATEGORIES:
        if name != "fast_retransmission":
            assert got.frames[name] == want_frames[name], f"tcp.analysis.{name}"
    # Documented difference (tracking/tcp_state.py): on rare sequences tshark 4.0 calls a few
    # more retransmissions "fast" than its published duplicate-ACK rule gives. Ours must be a
    # subset, and each extra one must still be in the (exactly equal) retransmission set.
    ours_fast, their_fast = set(got.frames["fast_retransmission"]), set(
        want_frames["fast_retransmission"])
    assert ours_fast <= their_fast
    assert their_fast - ours_fast <= set(got.frames["retransmission"])
    assert len(their_fast - ours_fast) <= max(1, len(their_fast) // 2)
    conns = got.conns
    got_rtts = {i: c.tcp.handshake_rtt for i, c in enumerate(conns)
                if c.tcp.handshake_rtt is not None}
    assert sorted(got_rtts) == sorted(want_rtts)
    for stream, rtt in want_rtts.items():
        assert abs(got_rtts[stream] - rtt) <= RTT_TOLERANCE, stream


def test_scripted_scenarios_match_tshark(tmp_path: Path) -> None:
    require_tool("tshark")
    w = Writer()
    scripted(w)
    _compare(tmp_path, w)


@pytest.mark.parametrize("seed", [1, 2, 3, 14, 21, 28])
def test_random_connections_match_tshark(tmp_path: Path, seed: int) -> None:
    require_tool("tshark")
    w = Writer()
    messy(w, random.Random(seed), 60)
    _compare(tmp_path, w)
