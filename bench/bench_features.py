#!/usr/bin/env python3
"""End-to-end packets/s with features switched on and off, side by side in one run.

    python bench/bench_features.py [CAPTURE] [--repeat 3]

Rows: everything on (offline resolution, DPI), resolution off (--no-geo), inspection off
(--no-dpi). Issue targets: resolution costs under 5% (it never runs on the capture thread),
DPI must not halve the pipeline. Best of --repeat runs each, interleaved.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # entry point
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable

MODES = {
    "all on (offline geo, names, DPI)": ["--offline"],
    "resolution off (--no-geo)": ["--no-geo"],
    "inspection off (--no-dpi)": ["--offline", "--no-dpi"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture", nargs="?", type=Path, default=Path("/tmp/bench-features-200k.pcap"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if not a.capture.exists():
        from bench.gen_capture import generate
        generate(a.capture, 200_000, 10_000)
    from capture.reader import CaptureFile
    n = sum(1 for _ in CaptureFile(a.capture))
    best: dict[str, float] = {}
    for _ in range(a.repeat):
        for label, flags in MODES.items():
            t = time.perf_counter()
            subprocess.run([PY, str(ROOT / "main.py"), "-r", str(a.capture), "--no-ui", "--no-db",
                            "--log-file", "/dev/null", *flags], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            best[label] = min(best.get(label, 1e9), time.perf_counter() - t)
    base = n / best["all on (offline geo, names, DPI)"]
    print(f"capture: {a.capture} ({n} packets), best of {a.repeat}, whole process incl. start-up")
    for label, el in best.items():
        pps = n / el
        print(f"  {label:<36} {pps:>10,.0f} pps   {pps / base:5.2f}x of all-on")


if __name__ == "__main__":
    main()
