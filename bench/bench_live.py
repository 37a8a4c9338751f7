#!/usr/bin/env python3
"""Live capture side by side with tcpdump: tcpreplay in a namespace feeds a veth at fixed rates.

    sudo .venv/bin/python bench/bench_live.py [--rates 20000,50000,100000,200000] [--seconds 3]

For each rate it replays the benchmark capture from namespace A into a veth while, in namespace
B, tcpdump and PacketTracer capture the other end (one at a time, so they don't compete for the
two cores): PacketTracer as the full pipeline (`main.py --no-ui`) and as capture+parse only.
Prints received and dropped counts and the share received.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point

from tests.netns import sh, veth_pair  # noqa: E402

PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable

PARSE_ONLY = r'''
import sys, time, signal, threading
sys.path.insert(0, sys.argv[2])
from capture.sniffer import LiveSource
from capture.parser import parse
src = LiveSource(sys.argv[1])
stop = threading.Event()
signal.signal(signal.SIGINT, lambda *a: (stop.set(), src.stop()))
src.start()
print("ready", flush=True)
n = 0
for batch in src.batches():
    for f in batch:
        parse(f.data, f.linktype, f.ts, f.wire_len, f.iface)
        n += 1
st = src.refresh_stats()
print(f"received {n} dropped {st.dropped}", flush=True)
'''


def _wait(proc: subprocess.Popen, stream: str, text: str, timeout: float = 20) -> None:
    s = getattr(proc, stream)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = s.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise SystemExit(f"capturer exited early: {s.read()}")
    raise SystemExit(f"capturer did not start ({text})")


def replay(net: dict, pcap: Path, rate: int, count: int) -> str:
    r = sh("tcpreplay", "-i", net["va"], f"--pps={rate}", f"--limit={count}", str(pcap),
           ns=net["a"], check=False, timeout=600)
    return r.stdout + r.stderr


def run_tcpdump(net: dict, pcap: Path, rate: int, count: int) -> tuple[int, int]:
    p = subprocess.Popen(["ip", "netns", "exec", net["b"], "tcpdump", "-i", net["vb"], "-n", "-s", "0",
                          "-B", "65536", "-w", "/dev/null"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait(p, "stderr", "listening on")
    replay(net, pcap, rate, count)
    time.sleep(0.5)
    p.send_signal(2)
    _, err = p.communicate(timeout=30)
    got = int(re.search(r"(\d+) packets? captured", err).group(1))
    dropped = int(re.search(r"(\d+) packets? dropped by kernel", err).group(1))
    return got, dropped


def run_ours(net: dict, pcap: Path, rate: int, count: int, tmp: Path) -> tuple[int, int]:
    out = tmp / f"ours-{rate}.json"
    p = subprocess.Popen(["ip", "netns", "exec", net["b"], PY, str(ROOT / "main.py"), "-i", net["vb"],
                          "--no-ui", "--no-db", "--offline", "--log-file", str(tmp / "log"),
                          "--export-json", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait(p, "stderr", "capturing on")
    replay(net, pcap, rate, count)
    time.sleep(1.0)
    p.send_signal(2)
    p.communicate(timeout=300)
    meta = json.loads(out.read_text())["meta"]
    return meta["packets"], meta["dropped"]


def run_parse_only(net: dict, pcap: Path, rate: int, count: int) -> tuple[int, int]:
    p = subprocess.Popen(["ip", "netns", "exec", net["b"], PY, "-c", PARSE_ONLY, net["vb"], str(ROOT)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(p, "stdout", "ready")
    replay(net, pcap, rate, count)
    time.sleep(1.0)
    p.send_signal(2)
    out, _ = p.communicate(timeout=120)
    m = re.search(r"received (\d+) dropped (\d+)", out)
    return int(m.group(1)), int(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="20000,50000,100000,200000")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--capture", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        pcap = a.capture
        if pcap is None:
            from bench.gen_capture import generate
            pcap = tmp / "replay.pcap"
            generate(pcap, 600_000, 20_000)
        print(f"{'rate':>8} {'sent':>8} | {'tcpdump':>16} | {'ours: capture+parse':>22} | {'ours: full pipeline':>22}")
        with veth_pair() as net:
            for rate in (int(r) for r in a.rates.split(",")):
                count = int(rate * a.seconds)
                td_got, td_drop = run_tcpdump(net, pcap, rate, count)
                po_got, po_drop = run_parse_only(net, pcap, rate, count)
                fp_got, fp_drop = run_ours(net, pcap, rate, count, tmp)
                def cell(got: int, drop: int) -> str:
                    return f"{got:>8} {100 * got / count:5.1f}% d{drop}"
                print(f"{rate:>8} {count:>8} | {cell(td_got, td_drop):>16} | {cell(po_got, po_drop):>22} | "
                      f"{cell(fp_got, fp_drop):>22}", flush=True)


if __name__ == "__main__":
    main()
