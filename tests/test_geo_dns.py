"""Names for addresses: passive DNS first, PTR against a real DNS server on 127.0.0.1.

The server answers PTR queries with dnspython's message API, including hostile names
(terminal escapes, Rich markup, bidi overrides, invalid UTF-8, controls, the longest legal
name) and a malformed packet. Names are kept as received; only display_name reaches a screen.
"""
from __future__ import annotations

import io
import socket
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest
from dns.rdtypes.ANY.PTR import PTR
from rich.console import Console
from rich.text import Text

from geo.dns_resolver import DNSResolver
from geo.names import DISPLAY_MAX
from utils.sanitize import safe_markup

LONGEST = (b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)          # 253 characters, 255 on the wire
HOSTILE: dict[str, tuple[bytes, ...]] = {
    "198.51.0.1": (b"\x1b[31mred\x1b[0m\x1b]0;pwned\x07", b"evil", b"example"),
    "198.51.0.2": (b"[bold red]x[/]", b"example", b"com"),
    "198.51.0.3": ("\u202egnp".encode(), b"exe", b"example", b"com"),
    "198.51.0.4": (b"\xff\xfe\xc3(", b"example", b"com"),
    "198.51.0.5": (b"a\x00b\nc\rd\x7f", b"example", b"com"),
    "198.51.0.6": LONGEST,
}
NORMAL: dict[str, tuple[bytes, ...]] = {
    "140.82.112.3": (b"lb-140-82-112-3-iad", b"github", b"com"),
    "8.8.8.8": (b"dns", b"google"),
    "2a00:1450:4001:80b::200e": (b"fra16s56-in-x0e", b"1e100", b"net"),
}
NXDOMAIN = {"203.0.114.1", "9.9.9.9"}
SILENT = {"45.1.1.1"}                 # never answered: the query times out
MALFORMED = {"45.2.2.2"}              # a reply whose name has an illegal label length


@dataclass
class FakeDNS:
    sock: socket.socket
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[str, int]] = field(default_factory=list)   # (qname, client port)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def queries(self) -> list[str]:
        with self.lock:
            return [q for q, _ in self.seen]

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            msg = dns.message.from_wire(data)
            qname = msg.question[0].name
            with self.lock:
                self.seen.append((qname.to_text(), addr[1]))
            ip = dns.reversename.to_address(qname)
            if ip in SILENT:
                continue
            if ip in MALFORMED:
                # header: same id, QR+RD+RA, 1 question, 1 answer; then the question, then an
                # answer whose owner name starts with a label length of 0x41 (reserved/illegal)
                head = data[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
                question = data[12:]
                answer = b"\x41" + b"x" * 65 + b"\x00" + b"\x00\x0c\x00\x01\x00\x00\x0e\x10\x00\x02\xc0\x0c"
                self.sock.sendto(head + question + answer, addr)
                continue
            resp = dns.message.make_response(msg)
            labels = HOSTILE.get(ip) or NORMAL.get(ip)
            if labels is None:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            else:
                rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.PTR)
                rrset.add(PTR(dns.rdataclass.IN, dns.rdatatype.PTR, dns.name.Name(labels + (b"",))), 300)
                resp.answer.append(rrset)
            self.sock.sendto(resp.to_wire(), addr)


@pytest.fixture
def dns_server() -> Iterator[FakeDNS]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)                     # lets the loop notice the stop flag
    srv = FakeDNS(s, s.getsockname()[1])
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    yield srv
    srv.stop.set()
    t.join(2)
    s.close()


def make(srv: FakeDNS, **kw: object) -> DNSResolver:
    kw.setdefault("timeout", 0.3)
    return DNSResolver(nameserver="127.0.0.1", port=srv.port, **kw)  # type: ignore[arg-type]


def resolved(r: DNSResolver, ip: str):  # type: ignore[no-untyped-def]
    assert r.host_info(ip) is None          # nothing known yet: scheduled, not waited for
    assert r.drain(5)
    info = r.host_info(ip)
    assert info is not None
    return info


@pytest.mark.parametrize("ip,hostname,domain", [
    ("140.82.112.3", "lb-140-82-112-3-iad", "github.com"),
    ("8.8.8.8", "dns", "dns.google"),
    ("2a00:1450:4001:80b::200e", "fra16s56-in-x0e", "1e100.net"),
])
def test_ptr_names(dns_server: FakeDNS, ip: str, hostname: str, domain: str) -> None:
    r = make(dns_server)
    try:
        info = resolved(r, ip)
        assert info.source == "ptr" and info.hostname == hostname and info.domain == domain
        assert info.fqdn == b".".join(NORMAL[ip]).decode() == info.display_name
        assert dns_server.queries() == [dns.reversename.from_address(ip).to_text()]
        assert r.own_traffic() == {("127.0.0.1", dns_server.port)}
        assert {p for _, p in dns_server.seen} <= r.own_local_ports()
    finally:
        r.close()


def _safe_on_screen(text: str) -> None:
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in text), repr(text)


@pytest.mark.parametrize("ip", sorted(HOSTILE))
def test_hostile_ptr_answers_are_kept_raw_and_displayed_safely(dns_server: FakeDNS, ip: str) -> None:
    r = make(dns_server)
    try:
        info = resolved(r, ip)
        wire = b".".join(HOSTILE[ip])
        assert info.raw == wire                                       # stored as received
        assert info.fqdn == wire.decode("utf-8", errors="replace")
        _safe_on_screen(info.display_name)
        assert len(info.display_name) <= DISPLAY_MAX
        out = io.StringIO()
        console = Console(file=out, record=True, width=300, force_terminal=True,
                          color_system="truecolor", highlight=False)
        console.print(Text(info.display_name))
        console.print(f"host {safe_markup(info.fqdn, DISPLAY_MAX)} ok")
        screen = console.export_text()
        _safe_on_screen(screen.replace("\n", ""))
        # On a real terminal: no escape sequence at all reaches it (no colours from the name,
        # no OSC title change, no markup turned into styles).
        assert "\x1b" not in out.getvalue()
        if b"[bold red]" in wire:                                     # markup shown, not applied
            assert screen.count("[bold red]x[/].example.com") == 2
    finally:
        r.close()


def test_malformed_reply_and_timeouts_become_negative_answers(dns_server: FakeDNS) -> None:
    r = make(dns_server)
    try:
        for ip in ("45.2.2.2", "45.1.1.1", "9.9.9.9"):
            info = resolved(r, ip)
            assert (info.source, info.fqdn, info.display_name) == ("none", None, ip)
        n = len(dns_server.queries())
        for _ in range(3):                                            # negative cache: no re-ask
            assert r.host_info("9.9.9.9").source == "none"  # type: ignore[union-attr]
        assert len(dns_server.queries()) == n == 3
        assert r.failures == 2
    finally:
        r.close()


def test_passive_names_come_first_and_send_nothing(dns_server: FakeDNS) -> None:
    passive = {"140.82.112.3": ["github.com", "www.github.com"],
               "93.184.215.14": ["x" * 500 + ".example.com"],
               "198.51.0.9": ["\x1b[2J[blink]phish[/blink]\u202e.example.org"]}
    r = make(dns_server, passive_lookup=lambda ip: passive.get(ip, []))
    try:
        gh = r.host_info("140.82.112.3")
        assert gh is not None and (gh.source, gh.fqdn, gh.domain, gh.hostname) == (
            "passive", "github.com", "github.com", "github")
        long = r.host_info("93.184.215.14")
        assert long is not None and len(long.fqdn or "") == 512 and len(long.display_name) == DISPLAY_MAX
        assert long.display_name.endswith("…") and long.domain == "example.com"
        evil = r.host_info("198.51.0.9")
        assert evil is not None
        _safe_on_screen(evil.display_name)
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(Text(evil.display_name))
        assert "[blink]phish[/blink]" in console.export_text()
        assert r.drain(2) and dns_server.queries() == []
    finally:
        r.close()


def test_off_special_and_user_private_addresses_are_never_asked(dns_server: FakeDNS) -> None:
    off = make(dns_server, rdns=False)
    on = make(dns_server, private_nets=("140.82.0.0/16", "2a00:1450::/32"))
    try:
        assert off.host_info("8.8.8.8") is None and off.own_traffic() == set()
        for ip in ("10.0.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "fe80::1", "ff02::1",
                   "fd00::1", "192.0.2.1", "140.82.112.3", "2a00:1450:4001:80b::200e"):
            assert on.host_info(ip) is None
        assert off.drain(2) and on.drain(2)
        assert dns_server.queries() == []
    finally:
        off.close()
        on.close()


def test_ptr_answers_persist_through_the_dns_repository(dns_server: FakeDNS, tmp_path: Path) -> None:
    from db.connection import ConnectionPool
    from db.repositories.dns_repo import DnsRepository

    pool = ConnectionPool(tmp_path / "data.db")
    try:
        repo = DnsRepository(pool)
        r1 = make(dns_server, store=repo)
        try:
            first = resolved(r1, "140.82.112.3")
            resolved(r1, "198.51.0.4")                              # invalid UTF-8 on the wire
        finally:
            r1.close()
        asked = len(dns_server.queries())
        r2 = make(dns_server, store=repo)
        try:
            again = r2.host_info("140.82.112.3")
            assert again == first
            bad = r2.host_info("198.51.0.4")
            assert bad is not None and bad.raw == b".".join(HOSTILE["198.51.0.4"])
            assert len(dns_server.queries()) == asked                # answered from the database
        finally:
            r2.close()
    finally:
        pool.close()


def test_system_nameserver_is_read_but_not_contacted() -> None:
    r = DNSResolver(rdns=True, timeout=0.2)
    try:
        ns = r.nameserver
        assert ns is None or r.own_traffic() == {(ns, 53)}
        assert r.host_info("10.1.2.3") is None                       # private: never sent
        assert r.drain(1)
        assert r.queries == 0
    finally:
        r.close()
