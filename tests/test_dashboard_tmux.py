"""The dashboard in a real terminal: tmux runs ./run.sh, the test types keys and reads the screen.

Every wait polls the pane with a deadline; nothing sleeps for a fixed time.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Callable

from conftest import CAPTURES, ROOT, expected_for, require, require_root, require_tool
from dashboard.screen import page_rows
from tmux_pane import DEADLINE, Pane, pane, tmux  # noqa: F401 (pane: the fixture)

ESPN = CAPTURES / "http-espn-browse.pcapng"
#: a resize must show within this (tmux applies it after up to 250 ms; the dashboard draws on
#: SIGWINCH); generous for a loaded 2-core machine, far below the general DEADLINE
RESIZE_DEADLINE = 5.0


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
    # A capture may hold parts of two frames (tmux shows a frame as its bytes arrive): every
    # check is part of the condition waited for, never asserted on the first partial match.
    pane.wait(lambda t: top["addr_b"] in t and "Source" in t and "Destination" in t,
              "the top flow in the Traffic table")
    # the file ends; the dashboard stays open with the final state
    pane.wait(lambda t: "capture finished" in t and f"pkts {truth['packets']}" in t
              and f"flows {len(convs)}/" in t, "the final counts")

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
    pane.wait(lambda t: "flows 1 " in t and "www.masters.com" in t and top["addr_b"] not in t,
              "only the masters.com flow")
    pane.keys("c")
    pane.wait_for(f"flows {len(convs)} ")

    # "s" sort: packets order differs from bytes order in this capture's table
    def pkts_column(text: str) -> list[int]:
        # Read the column under the "Pkts" header: the cells after it vary in width.
        lines = text.splitlines()
        head = next((l for l in lines if "Pkts" in l), None)
        if head is None:
            return []
        end = head.index("Pkts") + 4
        rows = [l for l in lines if "172.16.0.122:" in l]
        return [int(l[:end].split()[-1]) for l in rows]

    pane.wait(lambda t: "sort bytes" in t and len(p := pkts_column(t)) > 5
              and p != sorted(p, reverse=True), "rows in bytes order, not packets order")
    pane.keys("s")
    pane.wait(lambda t: "sort packets" in t and len(p := pkts_column(t)) > 5
              and p == sorted(p, reverse=True), "rows in packets order")

    # select the 2nd row, switch to Stats (filtered) and back: still selected
    pane.keys("Down")
    pane.keys("Space")
    def marked(text: str) -> list[str]:
        return [l.split()[1] for l in text.splitlines() if l.lstrip().startswith("*")]

    screen = pane.wait(lambda t: "selected 1" in t and len(marked(t)) == 1, "one marked row")
    flow = marked(screen)[0]
    pane.keys("3")
    pane.wait_for("only the 1 selected flow")
    pane.keys("1")
    pane.wait(lambda t: "sort packets" in t and marked(t) == [flow], "still marked in Traffic")

    # help overlay
    pane.keys("?")
    pane.wait(lambda t: "Esc or ? closes" in t and "cycle sort bytes/packets/rate/time" in t
              and "acknowledge alert" in t, "the help overlay")
    pane.keys("Escape")
    pane.wait(lambda t: "Esc or ? closes" not in t, "help closed")

    # resize mid-run: the resize alone (no key) redraws the whole frame at the new size: header
    # on the first line, footer on the last, as many flow rows as fit, columns chosen for the width
    def drawn_at(width: int, height: int, rows: int) -> Callable[[str], bool]:
        def cond(t: str) -> bool:
            lines = t.splitlines()
            return (len(lines) == height and all(len(l) <= width for l in lines)
                    and lines[0].startswith("PacketTracer") and lines[-1].startswith("Space select")
                    and "Source" in t and ("Location" in t) == (width >= 160)
                    and sum("172.16.0.122:" in l for l in lines) == rows)
        return cond

    tmux("resize-window", "-t", pane.name, "-x", "90", "-y", "26")
    pane.wait(drawn_at(90, 26, min(len(convs), page_rows(26))), "redraw at 90x26", RESIZE_DEADLINE)
    tmux("resize-window", "-t", pane.name, "-x", "160", "-y", "48")
    pane.wait(drawn_at(160, 48, min(len(convs), page_rows(48))), "redraw at 160x48", RESIZE_DEADLINE)

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
