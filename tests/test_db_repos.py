"""Repositories against a real file: what the panels, exports and caches read back."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from db.connection import ConnectionPool
from db.repositories.alert_repo import AlertRepository
from db.repositories.device_repo import DeviceRepository
from db.repositories.dns_query_repo import DnsQueryRepository
from db.repositories.dns_repo import DnsRepository
from db.repositories.flow_repo import FlowRepository
from db.repositories.geo_repo import GeoRepository
from db.repositories.hop_repo import HopRepository
from db.repositories.port_repo import PortRepository
from db.repositories.relay_repo import RelayRepository
from db.repositories.route_repo import RouteRepository
from db.repositories.session_repo import SessionRepository


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ConnectionPool]:
    p = ConnectionPool(tmp_path / "d.db")
    yield p
    p.close()


def _flow(i: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"flow_key": f"UDP|192.168.1.{i}|5000|8.8.8.8|53", "protocol": "UDP",
                           "src_ip": f"192.168.1.{i}", "src_port": 5000, "dst_ip": "8.8.8.8",
                           "dst_port": 53, "packets_sent": i, "bytes_sent": 100 * i,
                           "bytes_recv": 7 * i, "first_seen": 50.0 - i, "last_seen": 60.0 + i}
    row.update(over)
    return row


def test_sessions_lifecycle(pool: ConnectionPool) -> None:
    repo = SessionRepository(pool)
    a = repo.start("live", "eth0", "tcp port 80", started_at=100.0)
    b = repo.start("file", "/captures/x.pcapng", started_at=200.0)
    repo.close(a, 160.0, packets=1000, bytes=64000, flows=12, dropped=3)
    assert [s["id"] for s in repo.list()] == [b, a]       # newest first
    got = repo.get(a)
    assert got is not None
    assert (got["source"], got["interface"], got["bpf_filter"], got["ended_at"], got["packets"],
            got["bytes"], got["flows"], got["dropped"]) == \
        ("live", "eth0", "tcp port 80", 160.0, 1000, 64000, 12, 3)
    assert repo.get(b)["ended_at"] is None                 # type: ignore[index]
    assert repo.get(999) is None
    assert len(repo.list(limit=1)) == 1


def test_flow_listing_sorts_filters_and_pages(pool: ConnectionPool) -> None:
    sid = SessionRepository(pool).start("live", "eth0")
    flows = FlowRepository(pool)
    flows.upsert(sid, [_flow(i) for i in range(1, 31)])
    flows.upsert(sid, [_flow(99, dst_ip="93.184.216.34", dst_port=443, protocol="TCP",
                             flow_key="TCP|192.168.1.99|5000|93.184.216.34|443",
                             dst_fqdn="www.example.com", bytes_sent=1)])
    top = flows.list(sid, sort="bytes", limit=5)
    assert [r["src_ip"] for r in top] == [f"192.168.1.{i}" for i in (30, 29, 28, 27, 26)]
    assert top[0]["bytes_sent"] + top[0]["bytes_recv"] == 3000 + 210
    assert [r["src_port"] for r in flows.list(sid, sort="bytes", limit=5, offset=5)][:1] == [5000]
    assert flows.list(sid, sort="bytes", limit=1, offset=5)[0]["src_ip"] == "192.168.1.25"
    oldest = flows.list(sid, sort="first_seen", descending=False, limit=1)[0]
    assert oldest["src_ip"] == "192.168.1.99"          # first_seen 50 - 99
    assert [r["flow_key"] for r in flows.list(sid, filter_text="example.com")] == \
        ["TCP|192.168.1.99|5000|93.184.216.34|443"]
    # LIKE wildcards in user text are literal, not patterns
    assert flows.list(sid, filter_text="%") == []
    assert flows.list(sid, filter_text="192.168.1._") == []
    with pytest.raises(ValueError):
        flows.list(sid, sort="bytes; DROP TABLE flows")
    assert flows.totals(sid) == {"flows": 31, "packets": sum(range(1, 31)) + 99,
                                 "bytes": sum(107 * i for i in range(1, 31)) + 1 + 7 * 99}


def test_iter_all_returns_every_flow_in_first_seen_order(pool: ConnectionPool) -> None:
    sid = SessionRepository(pool).start("file", "a.pcap")
    other = SessionRepository(pool).start("file", "b.pcap")
    flows = FlowRepository(pool)
    rows = [_flow(i % 250, flow_key=f"k{i}", first_seen=float(i // 3)) for i in range(2500)]
    flows.upsert(sid, rows)
    flows.upsert(other, [_flow(1)])
    out = list(flows.iter_all(sid, batch=100))
    assert len(out) == 2500
    assert {r["flow_key"] for r in out} == {f"k{i}" for i in range(2500)}
    assert [r["first_seen"] for r in out] == sorted(r["first_seen"] for r in out)


def test_geo_and_dns_caches_honour_their_ttl(pool: ConnectionPool) -> None:
    geo, dns = GeoRepository(pool, ttl_s=86400), DnsRepository(pool, ttl_s=3600)
    now = time.time()
    geo.save("1.1.1.1", {"country": "AU", "asn": 13335, "as_org": "Cloudflare"})
    geo.save("9.9.9.9", {"country": "CH"}, stored_at=now - 2 * 86400)
    dns.save("1.1.1.1", {"fqdn": "one.one.one.one", "hostname": "one", "domain": "one.one",
                         "source": "ptr"})
    dns.save("8.8.8.8", {"fqdn": "dns.google"}, stored_at=now - 7200)
    loaded = geo.load_all()
    assert [(k, v) for k, v, _ in loaded] == [("1.1.1.1", {"country": "AU", "asn": 13335,
                                                           "as_org": "Cloudflare"})]
    assert abs(loaded[0][2] - now) < 60
    assert {k for k, _, _ in geo.load_all(max_age_s=3 * 86400)} == {"1.1.1.1", "9.9.9.9"}
    (ip, value, _), = dns.load_all()
    assert ip == "1.1.1.1"
    assert value == {"fqdn": "one.one.one.one", "hostname": "one", "domain": "one.one",
                     "source": "ptr"}
    assert geo.purge_expired() == 1 and dns.purge_expired() == 1
    dns.save_nameservers("example.com", ["a.iana-servers.net", "b.iana-servers.net"])
    assert dns.load_nameservers() == {"example.com": ["a.iana-servers.net", "b.iana-servers.net"]}


def test_ports_and_scanners(pool: ConnectionPool) -> None:
    sid = SessionRepository(pool).start("live", "eth0")
    ports = PortRepository(pool)
    ports.upsert(sid, [{"port": 443, "protocol": "TCP", "service": "https", "packets": 10,
                        "bytes": 9000, "hits": 2, "unique_dsts": 1},
                       {"port": 53, "protocol": "UDP", "service": "dns", "packets": 40,
                        "bytes": 3000, "hits": 5}])
    ports.upsert(sid, [{"port": 443, "protocol": "TCP", "packets": 12, "bytes": 9900}])
    listed = ports.list(sid)
    assert [(p["port"], p["bytes"], p["hits"], p["service"]) for p in listed] == \
        [(443, 9900, 2, "https"), (53, 3000, 5, "dns")]
    assert listed[0]["unique_dsts"] == 1
    assert [p["port"] for p in ports.list(sid, sort="hits")] == [53, 443]
    with pool.transaction() as conn:
        from db.repositories.port_repo import upsert_scan_activity
        upsert_scan_activity(conn, sid, [{"src_ip": "10.9.9.9", "first_seen": 1.0,
                                          "last_seen": 11.0, "ports_hit": 40, "scan_rate": 4.0,
                                          "likely_scanner": True, "ports": {22, 80, 443}}])
    (scanner,) = ports.scanners(sid, likely_only=True)
    assert (scanner["src_ip"], scanner["ports"], scanner["likely_scanner"]) == \
        ("10.9.9.9", [22, 80, 443], True)


def test_dns_queries_and_alerts(pool: ConnectionPool) -> None:
    sid = SessionRepository(pool).start("live", "eth0")
    queries = DnsQueryRepository(pool)
    queries.add(sid, [{"ts": 10.0 + i, "src_ip": "10.0.0.5", "src_port": 40000 + i,
                       "dst_ip": "10.0.0.53", "dst_port": 53, "proto": "UDP", "trans_id": i,
                       "query": f"host{i}.example.org", "qtype": "A", "rcode": "NOERROR",
                       "answers": [f"192.0.2.{i}"], "ttls": [60], "rtt_ms": 1.5,
                       "AA": False} for i in range(5)])
    newest = queries.list(sid, limit=2)
    assert [q["query"] for q in newest] == ["host4.example.org", "host3.example.org"]
    assert newest[0]["answers"] == ["192.0.2.4"] and newest[0]["AA"] is False
    assert [q["trans_id"] for q in queries.list(sid, query_filter="host2")] == [2]
    assert [q["trans_id"] for q in queries.iter_all(sid, batch=2)] == [0, 1, 2, 3, 4]

    alerts = AlertRepository(pool)
    base = {"ts": 5.0, "rule_id": "port_scan", "src": "10.9.9.9", "dst": "10.0.0.5",
            "message": "10.9.9.9 probed 40 ports"}
    alerts.upsert(sid, [{**base, "id": 1, "severity": "high", "evidence": {"ports": 40}},
                        {**base, "id": 2, "severity": "low", "ts": 6.0}])
    alerts.upsert(sid, [{**base, "id": 1, "severity": "high", "count": 3, "last_ts": 9.0,
                         "acknowledged": True, "evidence": {"ports": 55}}])
    high = alerts.list(sid, min_severity="medium")
    assert len(high) == 1
    assert (high[0]["id"], high[0]["count"], high[0]["last_ts"], high[0]["acknowledged"],
            high[0]["evidence"]) == (1, 3, 9.0, True, {"ports": 55})
    assert alerts.counts(sid) == {"high": 1, "low": 1}


def test_traceroutes_routes_and_latency(pool: ConnectionPool) -> None:
    hops = HopRepository(pool)
    path = [{"ttl": 1, "ip": "192.168.1.1", "rtt_ms": 1.0, "fqdn": "router.lan"},
            {"ttl": 2, "ip": None},
            {"ttl": 3, "ip": "203.0.113.9", "rtt_ms": 20.0, "asn": 64500, "as_org": "Example"}]
    first = hops.save_traceroute("203.0.113.9", path, started_at=100.0, finished_at=101.0)
    second = hops.save_traceroute("203.0.113.9", path[:2], started_at=200.0, finished_at=201.0)
    latest = hops.latest("203.0.113.9")
    assert latest is not None and latest["started_at"] == 200.0 and not latest["reached"]
    assert len(latest["hops"]) == 2
    assert [t["id"] for t in hops.list()] == [second, first]
    (summary,) = hops.summary("203.0.113.9")
    assert summary["traces"] == 2 and summary["avg_rtt_ms"] == pytest.approx(10.5)
    hops.add_latency([{"ip": "203.0.113.9", "ts": 100.0 + i, "rtt_ms": None if i == 2 else 20.0 + i}
                      for i in range(4)])
    assert [s["rtt_ms"] for s in hops.latency_history("203.0.113.9", since=101.0)] == \
        [21.0, None, 23.0]

    routes = RouteRepository(pool)
    assert routes.record("203.0.113.9", ["192.168.1.1", None, "203.0.113.9"], ts=100.0) is None
    assert routes.record("203.0.113.9", ["192.168.1.1", None, "203.0.113.9"], ts=110.0) is None
    change = routes.record("203.0.113.9", ["192.168.1.1", "198.51.100.1", "203.0.113.9"], ts=120.0)
    assert change is not None and change["changed_hops"] == [2]
    patterns = routes.patterns("203.0.113.9")
    assert sorted(p["times_seen"] for p in patterns) == [1, 2]
    assert [c["changed_hops"] for c in routes.changes("203.0.113.9")] == [[2]]


def test_devices_ownership_and_relay_agents(pool: ConnectionPool) -> None:
    devices = DeviceRepository(pool)
    devices.upsert([{"ip": "192.168.1.1", "mac": "aa:bb:cc:00:11:22", "device_type": "router",
                     "first_seen": 10.0, "last_seen": 20.0}])
    devices.upsert([{"ip": "192.168.1.1", "vendor": "Example Networks", "first_seen": 5.0,
                     "last_seen": 15.0, "ttl_guess": 64}])
    (dev,) = devices.list("router")
    assert (dev["mac"], dev["vendor"], dev["first_seen"], dev["last_seen"], dev["ttl_guess"]) == \
        ("aa:bb:cc:00:11:22", "Example Networks", 5.0, 20.0, 64)
    devices.save_owner("203.0.113.9", {"asn": 64500, "as_name": "EXAMPLE-AS", "network":
                                       "203.0.113.0/24", "source": "whois"})
    ((ip, owner, _),) = devices.load_owners(max_age_s=60)
    assert (ip, owner["asn"], owner["network"]) == ("203.0.113.9", 64500, "203.0.113.0/24")

    sid = SessionRepository(pool).start("relay", "agents")
    relay = RelayRepository(pool)
    relay.upsert(sid, [{"agent": "edge-1", "hostname": "edge1", "address": "127.0.0.1:50000",
                        "status": "connected", "packets": 10, "os": "linux"}])
    relay.upsert(sid, [{"agent": "edge-1", "status": "lost", "packets": 25}])
    (agent,) = relay.list(sid)
    assert (agent["hostname"], agent["status"], agent["packets"], agent["os"]) == \
        ("edge1", "lost", 25, "linux")
