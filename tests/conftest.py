"""Shared fixtures: the real captures, their tshark ground truth, and prerequisite checks.

Under CI=true a missing prerequisite (root, tmux, a Debian tool) is a failure, never a skip.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # entry point: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

CAPTURES = Path(os.environ.get("PACKETTRACER_CAPTURES", ROOT.parent / "shared" / "captures"))
EXPECTED = CAPTURES / "expected"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def repeat_capture(src: Path, copies: int, out: Path, gap: float = 60.0) -> Path:
    """A long capture made from a real one: its frames again and again, each copy ``gap``
    seconds after the end of the one before (so idle timers and periodic chores run between)."""
    from capture.reader import CaptureFile, RawFrame
    from capture.writer import PcapngWriter
    frames = list(CaptureFile(src))
    span = frames[-1].ts - frames[0].ts + gap
    w = PcapngWriter(out, 0)
    for i in range(copies):
        w.write([RawFrame(f.ts + i * span, f.data, f.wire_len, f.linktype, f.iface)
                 for f in frames])
    w.close()
    return out


def traced_growth(run: Callable[[], object]) -> int:
    """Bytes of Python heap that ``run()`` leaves allocated (tracemalloc, garbage collected
    before and after): for tests that bound what a structure keeps per item."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def require(condition: bool, reason: str) -> None:
    """Skip outside CI; fail inside CI, where every prerequisite must be installed."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces / live capture)")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"needs '{name}' on PATH")


def all_captures() -> list[Path]:
    require(CAPTURES.is_dir(), f"captures folder {CAPTURES} not found")
    return sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))


def expected_for(capture: Path) -> dict:
    return json.loads((EXPECTED / (capture.stem + ".json")).read_text())


CAPTURE_FILES = sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng")) \
    if CAPTURES.is_dir() else []


@pytest.fixture
def captures_dir() -> Path:
    require(CAPTURES.is_dir(), f"captures folder {CAPTURES} not found")
    return CAPTURES
