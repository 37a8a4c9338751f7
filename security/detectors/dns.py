"""DNS abuse: NXDOMAIN bursts per client (DGA malware, misconfigured scanners) and long,
high-entropy query names (tunnels such as dnscat2/iodine carry data in the labels).

Responses cost a two-byte flags read; only queries big enough to hold a suspect name are decoded
(analysis/dns_message.py, header and questions only), and the entropy is computed only for
names already longer than ``min_name_len``.
"""
from __future__ import annotations

import math
from collections import Counter

from analysis.dns_message import decode
from capture.packet import PROTO_TCP, PROTO_UDP, ParsedPacket
from security.alerts import AlertEngine
from utils.bounded import evict_oldest
from utils.sanitize import clean_text

DNS_PORT = 53


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``."""
    n = len(text)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def split_base(name: str) -> tuple[str, str]:
    """(subdomain part, base domain) using the last two labels (three under short SLDs such as
    co.uk): good enough to measure the part of a name a tunnel controls."""
    labels = name.rstrip(".").split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-2]) <= 3 and len(labels[-1]) == 2 else 2
    if len(labels) <= keep:
        return "", ".".join(labels)
    return ".".join(labels[:-keep]), ".".join(labels[-keep:])


class _Window:
    __slots__ = ("start", "count", "longest", "entropy", "base")

    def __init__(self, ts: float) -> None:
        self.start = ts
        self.count = 0
        self.longest = 0
        self.entropy = 0.0
        self.base = ""


class DnsDetector:
    """Raises ``dns_nxdomain_burst`` and ``dns_tunnel``.

    Args:
        nxdomain_threshold: NXDOMAIN answers to one client within ``window`` seconds.
        min_name_len: names shorter than this are never tunnel suspects.
        min_sub_len: characters left of the base domain needed for a suspect name.
        entropy_threshold: bits per character of that part (hex data is ~4, words ~3).
        tunnel_queries: suspect names from one client within ``window`` seconds.
    """

    #: IP protocols this detector looks at (the monitor routes only these to it)
    protocols = frozenset({PROTO_TCP, PROTO_UDP})

    def __init__(self, engine: AlertEngine, nxdomain_threshold: int = 20, window: float = 60.0,
                 min_name_len: int = 52, min_sub_len: int = 40, entropy_threshold: float = 3.3,
                 tunnel_queries: int = 5, max_clients: int = 10000) -> None:
        self.engine = engine
        self.nxdomain_threshold = nxdomain_threshold
        self.window = window
        self.min_name_len = min_name_len
        self.min_sub_len = min_sub_len
        self.entropy_threshold = entropy_threshold
        self.tunnel_queries = tunnel_queries
        self.max_clients = max_clients
        self._nx: dict[str, _Window] = {}
        self._tunnel: dict[str, _Window] = {}
        self.messages = 0

    def process(self, pkt: ParsedPacket) -> None:
        proto = pkt.proto
        if proto != PROTO_UDP and proto != PROTO_TCP:
            return
        sport, dport = pkt.sport, pkt.dport
        if sport != DNS_PORT and dport != DNS_PORT:
            return
        # The header is read from the frame in place; only the few queries that get decoded
        # are copied out.
        data = pkt.data
        start = pkt.payload_offset
        end = min(start + pkt.payload_len, len(data))
        if proto == PROTO_TCP:
            start += 2  # two-byte length prefix; only the first message of a segment
        if end - start < 12:
            return
        self.messages += 1
        flags = data[start + 2] << 8 | data[start + 3]
        if flags & 0x8000:
            if sport == DNS_PORT and flags & 0x000F == 3:
                self._nxdomain(pkt.dst_ip, pkt.ts)
        elif dport == DNS_PORT and end - start >= 16 + self.min_name_len and \
                (data[start + 4] or data[start + 5]):  # a question to decode at all
            # Only a message big enough to hold a suspect name is decoded at all.
            qname = decode(data[start:end], sections=0).qname or ""
            if len(qname) >= self.min_name_len:
                self._maybe_tunnel(pkt.src_ip, pkt.dst_ip, qname, pkt.ts)

    def _window(self, table: dict[str, _Window], client: str, ts: float) -> _Window:
        w = table.get(client)
        if w is None or ts - w.start > self.window:
            w = table[client] = _Window(ts)
            if len(table) > self.max_clients:
                evict_oldest(table, self.max_clients)
        return w

    def _nxdomain(self, client: str, ts: float) -> None:
        w = self._window(self._nx, client, ts)
        w.count += 1
        if w.count >= self.nxdomain_threshold and w.count % self.nxdomain_threshold == 0:
            self.engine.raise_alert(
                "dns_nxdomain_burst", "medium", client, "",
                f"{client} received {w.count} NXDOMAIN answers in {ts - w.start:.0f} s "
                f"(DGA-like lookups or a misbehaving resolver)",
                {"nxdomain": w.count, "window_s": self.window}, ts=ts)

    def _maybe_tunnel(self, client: str, server: str, qname: str, ts: float) -> None:
        if qname.endswith(".arpa"):
            return
        sub, base = split_base(qname)
        label_text = sub.replace(".", "")
        if len(label_text) < self.min_sub_len:
            return
        entropy = shannon_entropy(label_text)
        if entropy < self.entropy_threshold:
            return
        w = self._window(self._tunnel, client, ts)
        w.count += 1
        w.longest = max(w.longest, len(qname))
        w.entropy = max(w.entropy, entropy)
        w.base = base
        if w.count >= self.tunnel_queries and w.count % self.tunnel_queries == 0:
            # Name the domain only when it looks like one: labels may be the stolen data.
            tld = w.base.rpartition(".")[2]
            under = f" under '{clean_text(w.base, 64)}'" if tld.isalpha() and \
                len(w.base) <= 64 else ""
            self.engine.raise_alert(
                "dns_tunnel", "high", client, server,
                f"Possible DNS tunnel from {client} via {server}: {w.count} long random "
                f"query names (up to {w.longest} chars, {w.entropy:.1f} bits/char){under}",
                {"suspect_queries": w.count, "longest_name": w.longest,
                 "max_entropy": round(w.entropy, 2)}, ts=ts)
