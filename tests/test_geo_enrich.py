"""The Enricher facade: export fields per endpoint, and "off" meaning nothing is sent."""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Iterator

import pytest

import config
from geo.dns_resolver import DNSResolver
from geo.enrich import ENDPOINT_FIELDS, Enricher, build_enricher
from geo.resolver import GeoResolver


@dataclass
class Flow:
    src_ip: str
    dst_ip: str


@pytest.fixture
def udp_sink() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback UDP port that records anything sent to it (a stand-in nameserver)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)
    got: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                got.append(s.recv(4096))
            except TimeoutError:
                continue

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield s.getsockname()[1], got
    stop.set()
    t.join(2)
    s.close()


def test_everything_off_returns_nones() -> None:
    e = Enricher(None, None, None)
    for ip in ("8.8.8.8", "10.0.0.1", "2a00:1450::1"):
        d = e.endpoint(ip)
        assert tuple(d) == ENDPOINT_FIELDS
        assert d["name_source"] == "none"
        assert all(d[k] is None for k in ENDPOINT_FIELDS if k != "name_source")
    assert e.own_traffic() == set() and e.stats() == []


def test_offline_endpoint_and_flow_fields() -> None:
    passive = {"140.82.112.3": ["lb-140-82-112-3-iad.github.com"]}
    e = Enricher(GeoResolver(online=False),
                 DNSResolver(passive_lookup=lambda ip: passive.get(ip, []), rdns=False), None)
    try:
        gh = e.endpoint("140.82.112.3")
        assert (gh["country"], gh["as_org"], gh["fqdn"], gh["domain"], gh["name_source"]) == (
            "US", "GITHUB", "lb-140-82-112-3-iad.github.com", "github.com", "passive")
        row = e.flow_fields(Flow("192.168.1.20", "8.8.8.8"))
        assert set(row) == {p + k for p in ("src_", "dst_") for k in ENDPOINT_FIELDS}
        assert row["src_country"] is None and row["src_as_org"] is None
        assert row["dst_country"] == "US" and row["dst_as_org"] == "GOOGLE"
        assert row["dst_name_source"] == "none" and row["dst_fqdn"] is None
        assert [s.name for s in e.stats()] == ["geo", "dns"]
    finally:
        e.close()


@pytest.mark.parametrize("cli", [
    {"GEO_ENABLED": False},                                                  # --no-geo
    {"GEO_ONLINE": False, "DNS_RDNS_ENABLED": False, "WHOIS_ENABLED": False},  # --offline
])
def test_no_geo_and_offline_send_nothing(cli: dict[str, object], udp_sink: tuple[int, list[bytes]]) -> None:
    port, got = udp_sink
    settings = config.load_settings(cli=cli, environ={})
    e = build_enricher(settings)
    try:
        # even if a nameserver were reachable, no resolver would use it
        if e.names is not None:
            e.names.nameserver, e.names.port = "127.0.0.1", port
        for ip in ("8.8.8.8", "1.1.1.1", "140.82.112.3", "2a00:1450:4001:80b::200e"):
            e.endpoint(ip)
        assert e.drain(1)
        assert got == [] and e.own_traffic() == set() and e.own_local_ports() == set()
        assert e.owner is None and (e.geo is None or not e.geo.online)
        if not settings.GEO_ENABLED:
            d = e.endpoint("8.8.8.8")
            assert d["country"] is None and d["as_org"] is None
    finally:
        e.close()


def test_online_settings_build_online_parts() -> None:
    settings = config.load_settings(cli={"GEO_ONLINE": True, "WHOIS_ENABLED": True,
                                         "GEO_API_URL": "http://127.0.0.1:9/json/{ip}",
                                         "GEO_API_BATCH_URL": "", "WHOIS_SERVER": "127.0.0.1",
                                         "WHOIS_PORT": 9, "DNS_RDNS_ENABLED": False}, environ={})
    e = build_enricher(settings)
    try:
        assert e.geo is not None and e.geo.online and e.owner is not None
        assert e.names is not None and not e.names.rdns
    finally:
        e.close()
