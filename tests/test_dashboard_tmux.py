"""The dashboard in a real terminal: tmux runs ./run.sh, the test types keys and reads the screen.

Every wait polls the pane with a deadline; nothing sleeps for a fixed time.
"""
from __future__ import annotations

import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import CAPTURES, ROOT, expected_for, require, require_root, require_tool

ESPN = CAPTURES / "http-espn-browse.pcapng"
DEADLINE = 20.0


def tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check).stdout


class Pane:
    def __init__(self, name: str) -> None:
        self.name = name

    def screen(self) -> str:
        return tmux("capture-pane", "-p", "-t", self.name, check=False)

    def keys(self, *keys: str, literal: bool = False) -> None:
        tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.screen()
            if cond(text):
                return text
            time.sleep(0.05)  # polling interval, not a wait for an event we could block on
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")

    def wait_for(self, needle: str, timeout: float = DEADLINE) -> str:
        return self.wait(lambda t: needle in t, repr(needle), timeout)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    require_tool("tmux")
    name = f"ptdash-{uuid.uuid4().hex[:8]}"
    tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "48", "bash --norc --noprofile")
    p = Pane(name)
    p.keys("export PS1='$ '", "Enter")
    try:
        yield p
    finally:
        tmux("kill-session", "-t", name, check=False)


def start(p: Pane, tmp: Path, args: str) -> tuple[Path, Path]:
    before, after = tmp / "stty_before", tmp / "stty_after"
    p.keys(f"stty -a > {before}; cd {shlex.quote(str(ROOT))} && ./run.sh {args}; "
           f"echo DASH_EXIT=$?; stty -a > {after}", "Enter")
    return before, after


def quit_and_check_terminal(p: Pane, before: Path, after: Path) -> None:
    p.keys("q")
    p.wait_for("DASH_EXIT=0")
    p.wait(lambda _: after.exists() and after.stat().st_size > 0, "stty -a after exit")
    assert before.read_text() == after.read_text()


def test_every_view_keys_filter_sort_selection_resize_and_quit(pane: Pane, tmp_path: Path):
    require(ESPN.is_file(), "espn capture missing")
    truth = expected_for(ESPN)
    convs = [c for c in truth["conversations"] if c["proto"] in ("tcp", "udp")]
    top = max(convs, key=lambda c: c["bytes"])
    before, after = start(pane, tmp_path, f"-r {shlex.quote(str(ESPN))} --realtime --no-db --offline")
    screen = pane.wait_for(top["addr_b"])
    assert "Source" in screen and "Destination" in screen
    # the file ends; the dashboard stays open with the final state
    screen = pane.wait_for("capture finished")
    assert f"pkts {truth['packets']}" in screen and f"flows {len(convs)}/" in screen

    # views: each reachable by its key, with the capture's real content
    qnames = {d["qname"] for d in truth["dns"] if d.get("qname")}
    hosts = {h["host"] for h in truth["http"] if h.get("host")}
    per_view = {
        "2": lambda t: "no traceroutes yet" in t and "Paths" in t,
        "3": lambda t: "Top destinations" in t and top["addr_b"] in t,
        "4": lambda t: "Encryption" in t and "Packet sizes" in t,
        "5": lambda t: "HTTP" in t and "Scan detection" in t,
        "6": lambda t: any(q in t for q in qnames),
        "7": lambda t: any(h in t for h in hosts),
        "8": lambda t: "Alerts" in t,
        "9": lambda t: "ESTABLISHED" in t,
        "0": lambda t: "packets/s" in t,
        "r": lambda t: "no relay is connected" in t,
        "1": lambda t: top["addr_b"] in t and "Source" in t,
    }
    for key, cond in per_view.items():
        pane.keys(key)
        pane.wait(cond, f"view {key}")
    # Tab / Shift+Tab cycle
    pane.keys("Tab")
    pane.wait(lambda t: "no traceroutes yet" in t, "Tab to Paths")
    pane.keys("BTab")
    pane.wait(lambda t: "Source" in t and "Destination" in t, "Shift+Tab back to Traffic")

    # "/" filter by a name only DNS answers provide
    pane.keys("/")
    pane.wait_for("filter (IP or name)/")
    pane.keys("masters", literal=True)
    pane.keys("Enter")
    screen = pane.wait_for("flows 1 ")
    assert "www.masters.com" in screen and top["addr_b"] not in screen
    pane.keys("c")
    pane.wait_for(f"flows {len(convs)} ")

    # "s" sort: packets order differs from bytes order in this capture's table
    pane.keys("s")
    screen = pane.wait_for("sort packets")

    def pkts_column(text: str) -> list[int]:
        # Read the column under the "Pkts" header: the cells after it vary in width.
        lines = text.splitlines()
        end = next(l for l in lines if "Pkts" in l).index("Pkts") + 4
        rows = [l for l in lines if "172.16.0.122:" in l]
        return [int(l[:end].split()[-1]) for l in rows]

    pkts = pkts_column(screen)
    assert len(pkts) > 5 and pkts == sorted(pkts, reverse=True)

    # select the 2nd row, switch to Stats (filtered) and back: still selected
    pane.keys("Down")
    pane.keys("Space")
    screen = pane.wait_for("selected 1")
    marked = [l for l in screen.splitlines() if l.lstrip().startswith("*")]
    assert len(marked) == 1
    flow = marked[0].split()[1]
    pane.keys("3")
    pane.wait_for("only the 1 selected flow")
    pane.keys("1")
    screen = pane.wait(lambda t: "sort packets" in t, "back in Traffic")
    marked = [l for l in screen.splitlines() if l.lstrip().startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == flow

    # help overlay
    pane.keys("?")
    screen = pane.wait_for("Esc or ? closes")
    assert "cycle sort bytes/packets/rate/time" in screen and "acknowledge alert" in screen
    pane.keys("Escape")
    pane.wait(lambda t: "Esc or ? closes" not in t, "help closed")

    # resize mid-run: the frame follows the new size
    tmux("resize-window", "-t", pane.name, "-x", "90", "-y", "26")
    def redrawn(t: str) -> bool:
        return (len(t.splitlines()) <= 26 and "Source" in t
                and all(len(l) <= 90 for l in t.splitlines()) and "Space select" in t)
    try:
        screen = pane.wait(redrawn, "redraw at 90x26")
    except AssertionError:
        # Seen twice in CI on a busy machine: the frame after SIGWINCH did not come within the
        # deadline. A key press forces the next frame; the size must then be right.
        pane.keys("1")
        screen = pane.wait(redrawn, "redraw at 90x26 after a key")
    tmux("resize-window", "-t", pane.name, "-x", "160", "-y", "48")
    pane.wait(lambda t: "Location" in t, "redraw at 160x48")

    quit_and_check_terminal(pane, before, after)


def test_live_capture_on_a_veth(pane: Pane, tmp_path: Path):
    require_root()
    require_tool("ip", "ping")
    from netns import sh, veth_pair
    with veth_pair() as n:
        before, after = tmp_path / "stty_before", tmp_path / "stty_after"
        pane.keys(f"stty -a > {before}; cd {shlex.quote(str(ROOT))} && "
                  f"ip netns exec {n['a']} ./run.sh -i {n['va']} --no-db --offline; "
                  f"echo DASH_EXIT=$?; stty -a > {after}", "Enter")
        pane.wait_for(f"iface {n['va']}")
        ping = subprocess.Popen(["ip", "netns", "exec", n["b"], "ping", "-i", "0.2", "-c", "50", n["a4"]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            screen = pane.wait(lambda t: n["b4"] in t and n["a4"] in t and "ICMP" in t,
                               "the ping flow on screen")
            assert "drops 0" in screen
        finally:
            ping.kill()
            ping.wait()
        quit_and_check_terminal(pane, before, after)
