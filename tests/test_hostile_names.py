"""Attacker-controlled names from a capture the test writes reach the screen harmlessly.

DNS answers, an HTTP Host header and a TLS SNI carry terminal escape sequences, Rich markup,
bidi overrides, over-long labels and invalid UTF-8. The real runtime reads the file; every
dashboard view is rendered on a terminal-like Console; nothing from the network may move the
cursor, change colours, reorder text or be interpreted as markup.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

import config
import main
from dashboard import screen
from dashboard.state import StateBuilder
from dashboard.view_state import VIEW_ORDER, ViewState
from runtime import Runtime

ESC_NAME = b"evil\x1b[2J\x1b]0;pwned\x07"
MARKUP_NAME = b"[bold red]owned[/bold red]"
BIDI_NAME = "safe\u202egnp.exe".encode()
BAD_UTF8 = b"\xff\xfe\xc3\x28bad"
LONG = b"a" * 63

NAMES = {  # answer address -> the hostile name it resolves from
    "203.0.113.10": ESC_NAME + b".example",
    "203.0.113.11": MARKUP_NAME + b".example",
    "203.0.113.12": BIDI_NAME + b".example",
    "203.0.113.13": BAD_UTF8 + b".example",
    "203.0.113.14": b".".join([LONG] * 7) + b".example",
}
CLIENT = "192.0.2.50"


def _tls_client_hello(sni: bytes) -> bytes:
    ext_sni = b"\x00\x00" + (len(sni) + 5).to_bytes(2, "big") + (len(sni) + 3).to_bytes(2, "big") \
        + b"\x00" + len(sni).to_bytes(2, "big") + sni
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" \
        + len(ext_sni).to_bytes(2, "big") + ext_sni
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def write_capture(path: Path) -> None:
    pkts = []
    t = 1_700_000_000.0
    for i, (ip, name) in enumerate(NAMES.items()):
        q = Ether() / IP(src=CLIENT, dst="192.0.2.53") / UDP(sport=40000 + i, dport=53) / \
            DNS(id=i, rd=1, qd=DNSQR(qname=name))
        r = Ether() / IP(src="192.0.2.53", dst=CLIENT) / UDP(sport=53, dport=40000 + i) / \
            DNS(id=i, qr=1, ra=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata=ip, ttl=60))
        q.time, r.time = t + i, t + i + 0.01
        pkts += [q, r]
        # then a connection to that address, so the name shows in the flow table
        syn = Ether() / IP(src=CLIENT, dst=ip) / TCP(sport=50000 + i, dport=443, flags="S", seq=1)
        syn.time = t + i + 0.02
        pkts.append(syn)
    http = Ether() / IP(src=CLIENT, dst="203.0.113.10") / TCP(sport=51000, dport=80, flags="PA", seq=1) / (
        b"GET / HTTP/1.1\r\nHost: " + ESC_NAME + b"\r\nUser-Agent: " + MARKUP_NAME + b"\r\n\r\n")
    tls = Ether() / IP(src=CLIENT, dst="203.0.113.11") / TCP(sport=51001, dport=443, flags="PA", seq=1) / \
        _tls_client_hello(MARKUP_NAME + b"\x1b[31m.example")
    http.time, tls.time = t + 10, t + 11
    wrpcap(str(path), pkts + [http, tls])


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    cap = tmp_path_factory.mktemp("hostile") / "hostile.pcap"
    write_capture(cap)
    args = main.build_parser().parse_args(["-r", str(cap), "--no-db", "--offline"])
    rt = Runtime(config.load_settings(main.cli_overrides(args), None), args, threading.Event())
    rt.start_capture()
    deadline = time.monotonic() + 30
    while not rt.capture_done:
        assert time.monotonic() < deadline
        rt.stop.wait(0.01)
    yield rt
    rt.shutdown()
    rt.close()


def render_ansi(rt: Runtime, view: str, width: int = 200, height: int = 60) -> str:
    vs = ViewState()
    vs.view = view
    vs.page_rows = screen.page_rows(height)
    state = StateBuilder(rt).build(vs)
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, force_terminal=True,
                      color_system="truecolor", legacy_windows=False)
    console.print(screen.frame(state, vs), height=height)
    return out.getvalue()


def test_the_names_were_really_seen(runtime: Runtime) -> None:
    # The hostile data is stored as received (the passive DNS map holds the raw names)
    names = runtime.components.dns.passive_names("203.0.113.11")
    assert names and "[bold red]owned[/bold red]" in names[0]


@pytest.mark.parametrize("view", VIEW_ORDER)
def test_no_view_lets_network_text_control_the_terminal(runtime: Runtime, view: str) -> None:
    text = render_ansi(runtime, view)
    # Rich emits its own SGR colour codes (ESC [ ... m); anything else from ESC is foreign.
    import re
    foreign = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "\x1b" not in foreign, repr(foreign[foreign.index("\x1b") - 40:][:80])
    assert "\x07" not in text and "\u202e" not in text
    assert "pwned\x07" not in text


def test_markup_is_shown_literally_not_interpreted(runtime: Runtime) -> None:
    # The flow table's FQDN column and the DPI view show the markup as typed characters.
    assert "[bold red]owned" in render_ansi(runtime, "traffic")
    dpi = render_ansi(runtime, "dpi")
    assert "[bold red]owned" in dpi and "evil" in dpi
