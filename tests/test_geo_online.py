"""ip-api.com client against a local server that speaks ip-api's JSON and enforces its limit.

The server answers like ip-api: ``X-Rl`` (requests left in the window) and ``X-Ttl``
(seconds until it resets) on every answer, 429 once the window is used up. Windows are
shortened from 60 s to 1 s so the tests run in seconds; the logic is the same.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from geo.resolver import GeoResolver, merge_ip_api, parse_as
from geo.records import GeoInfo

FIELDS = "status,message,country,countryCode,regionName,city,lat,lon,isp,org,as,query"

# What ip-api.com answers for these (captured answer shapes; values as ip-api gives them).
KNOWN: dict[str, dict[str, Any]] = {
    "8.8.8.8": {"status": "success", "country": "United States", "countryCode": "US",
                "regionName": "Virginia", "city": "Ashburn", "lat": 39.03, "lon": -77.5,
                "isp": "Google LLC", "org": "Google Public DNS", "as": "AS15169 Google LLC",
                "query": "8.8.8.8"},
    "1.1.1.1": {"status": "success", "country": "Australia", "countryCode": "AU",
                "regionName": "Queensland", "city": "South Brisbane", "lat": -27.4766,
                "lon": 153.0166, "isp": "Cloudflare, Inc", "org": "APNIC and Cloudflare DNS Resolver project",
                "as": "AS13335 Cloudflare, Inc.", "query": "1.1.1.1"},
}


def answer_for(ip: str) -> dict[str, Any]:
    if ip in KNOWN:
        return KNOWN[ip]
    if ip.startswith(("10.", "192.168.")):
        return {"status": "fail", "message": "private range", "query": ip}
    n = sum(int(p) for p in ip.split(".")) if "." in ip else len(ip)
    return {"status": "success", "country": "Testland", "countryCode": "TL",
            "regionName": f"Region {n % 7}", "city": f"City-{ip}", "lat": 10.0 + n % 50,
            "lon": 20.0 + n % 60, "isp": f"ISP {n % 5}", "org": "", "as": f"AS{64500 + n % 20} Net {n % 20}",
            "query": ip}


@dataclass
class Bucket:
    limit: int
    window: float
    start: float = 0.0
    count: int = 0

    def take(self, now: float) -> tuple[bool, int, int]:
        """(allowed, remaining, ttl seconds) for one request at ``now`` (fixed windows)."""
        if self.count == 0 or now - self.start >= self.window:
            self.start, self.count = now, 0
        self.count += 1
        ttl = max(1, math.ceil(self.start + self.window - now))
        return self.count <= self.limit, max(0, self.limit - self.count), ttl


@dataclass
class FakeIpApi:
    single: Bucket
    batch: Bucket
    rl_headers: bool = True              # False: only 429 + X-Ttl, never X-Rl
    gate: threading.Event = field(default_factory=threading.Event)
    log: list[tuple[float, str, int, int]] = field(default_factory=list)   # (t, kind, status, n)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def handle(self, kind: str, ips: list[str]) -> tuple[int, dict[str, str], bytes]:
        self.gate.wait(10)
        with self.lock:
            now = time.monotonic()
            ok, left, ttl = (self.single if kind == "single" else self.batch).take(now)
            status = 200 if ok else 429
            self.log.append((now, kind, status, len(ips)))
        headers = {"X-Ttl": str(ttl)}
        if self.rl_headers:
            headers["X-Rl"] = str(left)
        if not ok:
            return 429, headers, b""
        data = [answer_for(ip) for ip in ips]
        body = json.dumps(data if kind == "batch" else data[0]).encode()
        return 200, headers | {"Content-Type": "application/json; charset=utf-8"}, body

    def times(self, kind: str | None = None, status: int | None = None) -> list[float]:
        with self.lock:
            return [t for t, k, s, _ in self.log if (kind is None or k == kind)
                    and (status is None or s == status)]


def make_handler(api: FakeIpApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            assert parts.path.startswith("/json/") and "fields=" in parts.query
            self._reply(*api.handle("single", [parts.path[len("/json/"):]]))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ips = json.loads(body)
            assert urlsplit(self.path).path == "/batch" and isinstance(ips, list) and len(ips) <= 100
            self._reply(*api.handle("batch", ips))

    return Handler


@pytest.fixture
def ip_api(request: pytest.FixtureRequest) -> Iterator[FakeIpApi]:
    single, batch, rl = getattr(request, "param", (5, 2, True))
    api = FakeIpApi(Bucket(single, 1.0), Bucket(batch, 1.0), rl_headers=rl)
    api.gate.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(api))
    server.daemon_threads = True
    api.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield api
    api.gate.set()
    server.shutdown()
    server.server_close()


def resolver_for(api: FakeIpApi, rate: int, batch: bool = False, **kw: Any) -> GeoResolver:
    base = f"http://127.0.0.1:{api.port}"
    return GeoResolver(online=True, api_url=f"{base}/json/{{ip}}?fields={FIELDS}",
                       batch_url=f"{base}/batch?fields={FIELDS}" if batch else "",
                       rate_per_min=rate, rate_window=1.0, batch_wait=0.3, **kw)


PUBLIC_IPS = [f"{a}.{b}.7.9" for a in (45, 77, 91, 185) for b in range(20, 25)]


def max_in_window(times: list[float], window: float) -> int:
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


def test_stays_within_the_limit_and_merges_answers(ip_api: FakeIpApi) -> None:
    r = resolver_for(ip_api, rate=5)
    try:
        ips = ["8.8.8.8", "1.1.1.1"] + PUBLIC_IPS[:10]
        first = {ip: r.lookup(ip) for ip in ips}
        assert all(g.source == "offline" for g in first.values())   # instant, offline data
        assert r.drain(30)
        sent = ip_api.times("single")
        assert len(sent) == len(ips)
        assert ip_api.times(status=429) == []
        assert max_in_window(sent, 1.0) <= 5
        g = r.lookup("8.8.8.8")
        assert (g.source, g.city, g.region, g.isp, g.asn, g.as_org) == (
            "ip-api", "Ashburn", "Virginia", "Google LLC", 15169, "Google LLC")
        assert g.country_code == "US" and g.lat == pytest.approx(39.03)
        assert r.lookup(PUBLIC_IPS[3]).city == f"City-{PUBLIC_IPS[3]}"
        assert r.own_traffic() == {("127.0.0.1", ip_api.port)}
        assert r.own_local_ports()
    finally:
        r.close()


@pytest.mark.parametrize("ip_api", [(3, 2, True)], indirect=True)
def test_obeys_x_rl_when_configured_above_the_server_limit(ip_api: FakeIpApi) -> None:
    r = resolver_for(ip_api, rate=100)     # misconfigured: the server's headers must win
    try:
        for ip in PUBLIC_IPS[:9]:
            r.lookup(ip)
        assert r.drain(30)
        sent = ip_api.times("single")
        assert len(sent) == 9 and ip_api.times(status=429) == []
        assert max_in_window(sent, 1.0) <= 3
        assert r.counters()["server_pauses"] >= 2
    finally:
        r.close()


@pytest.mark.parametrize("ip_api", [(2, 2, False)], indirect=True)
def test_backs_off_after_429_for_x_ttl(ip_api: FakeIpApi) -> None:
    r = resolver_for(ip_api, rate=100)
    try:
        for ip in PUBLIC_IPS[:6]:
            r.lookup(ip)
        assert r.drain(30)
        refused = ip_api.times(status=429)
        assert 1 <= len(refused) <= 3        # one refusal per window, not a hammering loop
        all_sent = ip_api.times()
        for t in refused:                     # X-Ttl is 1 s: nothing goes out before it ends
            assert not [u for u in all_sent if t < u < t + 0.95]
        assert r.counters()["rate_limited"] == len(refused)
        assert all(r.lookup(ip).source == "ip-api" for ip in PUBLIC_IPS[:6])
    finally:
        r.close()


def test_batches_bursts_of_addresses(ip_api: FakeIpApi) -> None:
    r = resolver_for(ip_api, rate=5, batch=True)
    try:
        ips = [f"93.{b}.{c}.1" for b in (10, 20, 30) for c in range(40, 50)] + ["8.8.8.8"]
        for ip in ips:
            r.lookup(ip)
        assert r.drain(30)
        batches = [(t, n) for t, k, s, n in ip_api.log if k == "batch" and s == 200]
        assert batches and len(ip_api.log) < len(ips) // 3
        assert sum(n for _, n in batches) + len(ip_api.times("single")) == len(ips)
        assert r.lookup("8.8.8.8").city == "Ashburn"
        assert all(r.lookup(ip).source == "ip-api" for ip in ips)
    finally:
        r.close()


def test_lookup_never_waits_for_the_network(ip_api: FakeIpApi) -> None:
    ip_api.gate.clear()                      # the server hangs until released
    r = resolver_for(ip_api, rate=5, batch=True)
    try:
        t = time.perf_counter()
        got = [r.lookup(ip) for ip in PUBLIC_IPS]
        elapsed = time.perf_counter() - t
        assert elapsed < 0.5, f"lookups took {elapsed:.3f} s while the server hung"
        assert all(g.source == "offline" for g in got)
        ip_api.gate.set()
        assert r.drain(30)
        assert r.lookup(PUBLIC_IPS[0]).source == "ip-api"
    finally:
        r.close()


def test_special_addresses_are_never_sent(ip_api: FakeIpApi) -> None:
    r = resolver_for(ip_api, rate=5, batch=True)
    try:
        for ip in ("10.0.0.1", "192.168.1.10", "100.64.3.3", "127.0.0.1", "fe80::1",
                   "192.0.2.55", "224.0.0.251", "fd00::5", "255.255.255.255"):
            assert r.lookup(ip).source == "scope"
        assert r.drain(5)
        assert ip_api.log == []
    finally:
        r.close()


def test_unreachable_service_is_not_hammered() -> None:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                # nothing listens there now
    r = GeoResolver(online=True, api_url=f"http://127.0.0.1:{port}/json/{{ip}}", batch_url="",
                    rate_per_min=100, rate_window=1.0)
    try:
        t = time.perf_counter()
        for ip in PUBLIC_IPS[:5]:
            assert r.lookup(ip).source == "offline"
        assert time.perf_counter() - t < 0.5
        assert r.drain(10)
        took = time.perf_counter() - t
        c = r.counters()
        assert c["failures"] == c["requests"] == 5
        # after each failure the client waits a quarter window before trying again
        assert took >= 4 * 0.25 * 0.9
    finally:
        r.close()


def test_queue_overflow_drops_and_keeps_answering(ip_api: FakeIpApi) -> None:
    ip_api.gate.clear()
    r = resolver_for(ip_api, rate=5, queue_size=3)
    try:
        got = [r.lookup(ip) for ip in PUBLIC_IPS]
        assert all(g.country_code for g in got)
        assert r.counters()["dropped"] >= len(PUBLIC_IPS) - 5
    finally:
        ip_api.gate.set()
        r.close()


def test_parse_and_merge_rules() -> None:
    assert parse_as("AS15169 Google LLC") == (15169, "Google LLC")
    assert parse_as("") == (None, None) and parse_as(None) == (None, None)
    base = GeoInfo(ip="9.9.9.9", country="Switzerland", country_code="CH", as_org="QUAD9", source="offline")
    merged = merge_ip_api(base, {"status": "success", "city": "Zurich", "lat": 47.37, "lon": 8.54,
                                 "isp": "Quad9", "as": "AS19281 Quad9", "query": "9.9.9.9"})
    assert (merged.country_code, merged.city, merged.asn, merged.as_org, merged.source) == (
        "CH", "Zurich", 19281, "Quad9", "ip-api")
    hostile = merge_ip_api(base, {"city": 5, "lat": "x", "as": ["AS1"], "isp": None})
    assert (hostile.city, hostile.lat, hostile.asn, hostile.as_org) == (None, None, None, "QUAD9")
