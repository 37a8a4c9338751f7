"""Per-view data the trackers do not hand over ready-made, gathered once a second at most.

Each function reads the runtime's components (under their own locks) for a list of flows (all
flows, or the selection) and returns plain data for one panel.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from dashboard import sources
from dashboard.aggregate import FlowAggregate
from tracking.flow import Flow

#: destinations looked up for the Stats view's names, domains, countries and owners
STATS_LOOKUPS = 200


def stats_extras(components: Any, agg: FlowAggregate, names: sources.Names) -> dict[str, Any]:
    """Names of the top talkers, and bytes per domain / country / owner of the busiest destinations."""
    enricher = getattr(components, "enricher", None)
    out: dict[str, Any] = {"names": {}, "domains": Counter(), "countries": None, "owners": None}
    ips = [ip for ip, _ in agg.destinations.most_common(STATS_LOOKUPS)]
    ips += [ip for ip, _ in agg.talkers.most_common(10)]
    countries: Counter = Counter()
    owners: Counter = Counter()
    for ip in ips:
        e = sources.endpoint(enricher, ip)
        name = names(ip) or e.get("fqdn") or ""
        out["names"][ip] = name
        b = agg.destinations.get(ip, 0)
        if not b:
            continue
        dom = e.get("domain") or name
        if dom:
            out["domains"][dom] += b
        if e.get("country"):
            countries[e["country"]] += b
        owner = sources.owner_of(e, "")
        if owner:
            owners[owner] += b
    if enricher is not None:
        out["countries"] = countries
        out["owners"] = owners
        stats = getattr(enricher, "stats", None)
        out["caches"] = [s for s in stats()] if callable(stats) else None
    return out


def dpi_facts(inspector: Any, flows: list[Flow]) -> dict[str, Any] | None:
    """Tallies of what deep inspection found on these flows."""
    facts_of = getattr(inspector, "facts", None)
    if not callable(facts_of):
        return None
    sni: Counter = Counter()
    ja3: Counter = Counter()
    ja4: Counter = Counter()
    hosts: Counter = Counter()
    apps: Counter = Counter()
    oses: Counter = Counter()
    agents: Counter = Counter()
    anomalies: list[tuple[int, str, list[str]]] = []
    inspected = 0
    for f in flows:
        d = facts_of(f.flow_key)
        if d is None:
            continue
        inspected += 1
        if d.sni:
            sni[d.sni] += 1
        if d.ja3:
            ja3[d.ja3] += 1
        if d.ja4:
            ja4[d.ja4] += 1
        if d.http_host:
            hosts[d.http_host] += 1
        if d.http_user_agent:
            agents[d.http_user_agent] += 1
        if d.app_protocol:
            apps[d.app_protocol] += 1
        if d.client_os:
            oses[f"{f.src_ip} {d.client_os}"] += 1
        if d.server_os:
            oses[f"{f.dst_ip} {d.server_os}"] += 1
        if d.anomaly_reasons:
            anomalies.append((d.anomaly_score, f.flow_key, list(d.anomaly_reasons)))
    anomalies.sort(reverse=True)
    return {"inspected": inspected, "sni": sni, "ja3": ja3, "ja4": ja4, "http_hosts": hosts,
            "user_agents": agents, "apps": apps, "os": oses, "anomalies": anomalies[:20]}


def dns_rcodes(dns: Any) -> Counter | None:
    """Responses per rcode name, from the DNS tracker's bounded record list."""
    records = getattr(dns, "records", None)
    if not callable(records):
        return None
    c: Counter = Counter()
    for r in records():
        if r.get("rcode_name"):
            c[r["rcode_name"]] += 1
        elif r.get("unanswered"):
            c["(unanswered)"] += 1
    return c


# ---- Paths view (tracking/path.py) -----------------------------------------------------------
#: hop addresses looked up per tick at most (names, owners and locations of the hops)
PATH_LOOKUPS = 300


def path_endpoints(enricher: Any, snapshot: Any) -> dict[str, dict[str, Any]]:
    """Enrichment (fqdn, asn, as_org, country, city) of every hop address in a PathsSnapshot."""
    ips: dict[str, None] = {}
    for d in getattr(snapshot, "destinations", ()):
        ips[d.target] = None
        for h in d.hops:
            ips.update(dict.fromkeys(h.addresses))
    return {ip: sources.endpoint(enricher, ip) for ip in list(ips)[:PATH_LOOKUPS]}
