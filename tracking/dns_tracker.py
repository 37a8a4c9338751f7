"""DNS, mDNS and LLMNR from the wire: transactions, latency, unanswered queries, passive DNS.

Which packets: UDP or TCP with port 53 (DNS), 5353 (mDNS) or 5355 (LLMNR) on either side; when
both ports are known the lower one decides, as tshark does. Tunnelled traffic (GRE, VXLAN,
IP-in-IP) is read from the innermost packet, so DNS carried in a tunnel counts once, with the
inner addresses. DNS quoted inside ICMP errors is not a message and is ignored (the innermost
packet is then ICMP). Non-first IPv4/IPv6 fragments carry no ports and are skipped; a first
fragment decodes as a truncated (malformed) message since the parser does not reassemble.

TCP: messages are framed by their 2-byte length prefix (RFC 1035 4.2.2); a segment may hold
several messages and a message (or even its prefix) may span segments. Each direction keeps a
small buffer keyed by the 4-tuple and the next expected sequence number: retransmitted bytes
are trimmed, a gap (lost segment) resynchronises on the next segment. At most
``tcp_max_streams`` buffers of at most one maximal message each are kept. A stream whose
framing cannot be DNS (a length prefix shorter than the 12-byte DNS header, as bulk data of
another protocol on port 53 gives) is given up until its connection starts again: otherwise a
run of zero bytes would be read as thousands of empty messages per segment.

Matching: a query waits under (client, client port, id, qname, qtype) — qname compared
case-insensitively because of 0x20 randomisation — and a response to that client/port with the
same id and question completes it if it came from the queried server (or from anyone when the
query went to a multicast group: LLMNR and mDNS one-shot queries). Time is the packets' own
clock, so files and live capture behave the same. A query still waiting ``query_timeout``
seconds later becomes an unanswered record (mDNS multicast queries too, but they are not
counted as unanswered: most of them expect no answer). A retransmitted query (same key while
waiting) counts as a retry of the first, and latency is measured from the first.
"""
from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable

from analysis.dns_message import (
    T_A, T_AAAA, T_CNAME, DnsMessage, decode, rcode_name, type_name,
)
from capture.packet import FIN, PROTO_TCP, PROTO_UDP, RST, SYN, ParsedPacket
from config import DNS_MAX_RECORDS

__all__ = ["DNSTracker", "DnsEvent", "DnsRecord", "DnsSnapshot", "ClientDnsStats",
           "DNS_PORTS"]

#: port -> protocol label used in records (tshark's dissector names)
DNS_PORTS: dict[int, str] = {53: "dns", 5353: "mdns", 5355: "llmnr"}

_SEQ_MASK = 0xFFFFFFFF
_MAX_TCP_BUFFER = 2 + 65535  # one maximal message with its length prefix
_DNS_HEADER = 12  # no DNS message is shorter: a smaller length prefix is not DNS framing


@dataclass(slots=True)
class DnsEvent:
    """One decoded DNS message as seen on the wire (what the ``on_message`` hook receives)."""

    ts: float
    proto: str          # dns | mdns | llmnr
    transport: str      # udp | tcp
    src: str
    dst: str
    sport: int
    dport: int
    msg: DnsMessage


@dataclass(slots=True, frozen=True)
class DnsRecord:
    """One transaction (query + response) or one unmatched message.

    ``time`` is the query's time (the response's for a response-only record); ``client`` sent
    the query, ``server`` answered (or was asked).
    """

    time: float
    client: str
    client_port: int
    server: str
    server_port: int
    transport: str
    proto: str
    id: int
    qname: str | None
    qtype: int | None
    rcode: int | None
    answers: tuple[str | None, ...]
    latency_ms: float | None
    query_only: bool = False
    response_only: bool = False
    #: a query nobody answered within the timeout (mDNS multicast queries excepted)
    unanswered: bool = False
    retries: int = 0
    malformed: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The export form (``dns`` list of the JSON export)."""
        return {
            "time": self.time, "client": self.client, "client_port": self.client_port,
            "server": self.server, "server_port": self.server_port,
            "transport": self.transport, "proto": self.proto, "id": self.id,
            "qname": self.qname,
            "qtype": type_name(self.qtype) if self.qtype is not None else None,
            "qtype_num": self.qtype, "rcode": self.rcode,
            "rcode_name": rcode_name(self.rcode) if self.rcode is not None else None,
            "answers": list(self.answers),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "query_only": self.query_only, "response_only": self.response_only,
            "unanswered": self.unanswered, "retries": self.retries,
            "malformed": self.malformed,
        }


@dataclass(slots=True, frozen=True)
class ClientDnsStats:
    client: str
    queries: int
    responses: int
    nxdomain: int

    @property
    def nxdomain_rate(self) -> float:
        """NXDOMAIN share of the responses this client received (0.0 without responses)."""
        return self.nxdomain / self.responses if self.responses else 0.0


@dataclass(slots=True, frozen=True)
class DnsSnapshot:
    """What the dashboard reads once per tick; never changes after it is built."""

    messages: int
    queries: int
    responses: int
    malformed: int
    pending: int
    unanswered_total: int
    records_total: int
    records_dropped: int
    #: queries per second over the last ``rate_window`` seconds of packet time
    qps: float
    top_domains: tuple[tuple[str, int], ...]
    clients: tuple[ClientDnsStats, ...]      # most queries first
    slowest: tuple[DnsRecord, ...]           # highest latency first
    unanswered: tuple[DnsRecord, ...]        # most recent first
    by_proto: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class _Pending:
    time: float
    client: str
    client_port: int
    server: str
    server_port: int
    transport: str
    proto: str
    id: int
    qname: str | None
    qtype: int | None
    multicast: bool
    malformed: str
    retries: int = 0


@dataclass(slots=True)
class _TcpStream:
    next_seq: int
    buf: bytearray
    #: the stream does not frame as DNS: its segments are ignored until a new SYN
    dead: bool = False


def _is_multicast(ip: str) -> bool:
    if ":" in ip:
        return ip[:2].lower() == "ff"
    head = ip.split(".", 1)[0]
    return head.isdigit() and 224 <= int(head) <= 239


class DNSTracker:
    """Follows DNS/mDNS/LLMNR traffic; feed it every packet with :meth:`process`.

    Args:
        max_records: completed records kept for export; the oldest are dropped (and counted).
        query_timeout: seconds (packet time) after which a waiting query is unanswered.
        max_pending: queries waiting for an answer at most; the oldest is given up first.
        max_domains: distinct query names counted for the top list (least counted pruned).
        max_clients: clients with per-client counters (least active pruned).
        passive_max_ips: addresses in the passive-DNS map (least recently answered dropped).
        passive_names_per_ip: names kept per address, most recent first.
        tcp_max_streams: TCP directions with a reassembly buffer (oldest dropped).
        rate_window: seconds over which queries per second are computed.
        keep_slowest / keep_unanswered: length of those lists in the snapshot.
        on_message: called with a :class:`DnsEvent` for every decoded message (tests, DPI).
    """

    def __init__(self, max_records: int = DNS_MAX_RECORDS, query_timeout: float = 5.0,
                 max_pending: int = 10000, max_domains: int = 10000, max_clients: int = 4096,
                 passive_max_ips: int = 20000, passive_names_per_ip: int = 8,
                 tcp_max_streams: int = 1024, rate_window: int = 60, keep_slowest: int = 20,
                 keep_unanswered: int = 50,
                 on_message: Callable[[DnsEvent], None] | None = None) -> None:
        self.max_records = max_records
        self.query_timeout = query_timeout
        self.max_pending = max_pending
        self.max_domains = max_domains
        self.max_clients = max_clients
        self.passive_max_ips = passive_max_ips
        self.passive_names_per_ip = passive_names_per_ip
        self.tcp_max_streams = tcp_max_streams
        self.rate_window = rate_window
        self.keep_slowest = keep_slowest
        self.on_message = on_message
        self.lock = threading.Lock()

        self.messages = 0
        self.queries = 0
        self.responses = 0
        self.malformed = 0
        self.unanswered_total = 0
        self.records_total = 0
        self.records_dropped = 0
        self.by_proto: dict[str, int] = {}
        self._records: deque[DnsRecord] = deque(maxlen=max_records)
        self._pending: dict[tuple, _Pending] = {}
        self._tcp: OrderedDict[tuple, _TcpStream] = OrderedDict()
        self._domains: dict[str, int] = {}
        self._clients: dict[str, list[int]] = {}       # client -> [queries, responses, nx]
        self._passive: OrderedDict[str, list[str]] = OrderedDict()
        self._slowest: list[tuple[float, int, DnsRecord]] = []   # min-heap on latency
        self._unanswered: deque[DnsRecord] = deque(maxlen=keep_unanswered)
        self._per_second: deque[list[int]] = deque()   # [second, queries]
        self._now = 0.0
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ per packet
    def process(self, pkt: ParsedPacket) -> None:
        """Look at one packet; anything that is not DNS/mDNS/LLMNR returns at once."""
        if pkt.inner is not None:
            pkt = pkt.innermost()
        proto = pkt.proto
        if proto != PROTO_UDP and proto != PROTO_TCP:
            return
        sport = pkt.sport
        dport = pkt.dport
        if sport in DNS_PORTS:
            label = DNS_PORTS[sport]
            if dport < sport and dport in DNS_PORTS:
                label = DNS_PORTS[dport]
        elif dport in DNS_PORTS:
            label = DNS_PORTS[dport]
        else:
            return
        if pkt.is_fragment and pkt.frag_offset > 0:
            return
        with self.lock:
            ts = pkt.ts
            if ts > self._now:
                self._now = ts
                if ts - self._last_sweep >= 1.0:
                    self._last_sweep = ts
                    self._expire(ts - self.query_timeout)
            if proto == PROTO_UDP:
                if pkt.payload_len:
                    self._message(decode(pkt.payload, 1), ts, label, "udp", pkt.src_ip,
                                  pkt.dst_ip, sport, dport)
            else:
                self._tcp_segment(pkt, label)

    def _tcp_segment(self, pkt: ParsedPacket, label: str) -> None:
        key = (pkt.src_ip, pkt.sport, pkt.dst_ip, pkt.dport)
        flags = pkt.tcp_flags
        streams = self._tcp
        if flags & SYN:
            streams[key] = _TcpStream((pkt.seq + 1) & _SEQ_MASK, bytearray())
            self._bound_streams()
        n = pkt.payload_len
        if n:
            seq = pkt.seq
            st = streams.get(key)
            if st is not None and st.dead:
                n = 0
        if n:
            data = bytes(pkt.payload)
            if st is None:
                # picked up mid-stream (or no SYN seen): assume the segment starts a message
                st = streams[key] = _TcpStream(seq, bytearray())
                self._bound_streams()
            elif seq != st.next_seq:
                ahead = (seq - st.next_seq) & _SEQ_MASK
                if ahead >= 0x80000000:         # starts before what we have: retransmission
                    overlap = (st.next_seq - seq) & _SEQ_MASK
                    if overlap >= n:
                        data = b""
                    else:
                        data = data[overlap:]
                        seq = st.next_seq
                else:                           # a gap: bytes were lost, resynchronise here
                    st.buf.clear()
            if data:
                st.next_seq = (seq + len(data)) & _SEQ_MASK
                buf = st.buf
                buf += data
                start = 0
                size = len(buf)
                while size - start >= 2:
                    ln = (buf[start] << 8) | buf[start + 1]
                    if ln < _DNS_HEADER:
                        st.dead = True
                        buf.clear()
                        start = 0
                        break
                    if size - start - 2 < ln:
                        break
                    self._message(decode(bytes(buf[start + 2:start + 2 + ln]), 1), pkt.ts,
                                  label, "tcp", pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport)
                    start += 2 + ln
                if start:
                    del buf[:start]
                if len(buf) > _MAX_TCP_BUFFER:  # cannot be a framing we understand
                    buf.clear()
        if flags & (FIN | RST):
            streams.pop(key, None)
            if flags & RST:
                streams.pop((pkt.dst_ip, pkt.dport, pkt.src_ip, pkt.sport), None)

    def _bound_streams(self) -> None:
        while len(self._tcp) > self.tcp_max_streams:
            self._tcp.popitem(last=False)

    # ------------------------------------------------------------------ per message
    def _message(self, msg: DnsMessage, ts: float, label: str, transport: str, src: str,
                 dst: str, sport: int, dport: int) -> None:
        self.messages += 1
        self.by_proto[label] = self.by_proto.get(label, 0) + 1
        if msg.malformed:
            self.malformed += 1
        if self.on_message is not None:
            self.on_message(DnsEvent(ts, label, transport, src, dst, sport, dport, msg))
        qname = msg.qname
        qtype = msg.qtype
        key = (None if qname is None else qname.lower())
        if not msg.is_response:
            self.queries += 1
            self._count_query(src, key, ts)
            pkey = (src, sport, msg.id, key, qtype, transport)
            waiting = self._pending.get(pkey)
            if waiting is not None:
                waiting.retries += 1
                return
            self._pending[pkey] = _Pending(ts, src, sport, dst, dport, transport, label,
                                           msg.id, qname, qtype, _is_multicast(dst),
                                           msg.malformed)
            if len(self._pending) > self.max_pending:
                oldest = next(iter(self._pending))
                self._give_up(self._pending.pop(oldest))
            return
        self.responses += 1
        rcode = msg.rcode
        c = self._clients.get(dst)
        if c is not None:
            c[1] += 1
            if rcode == 3:
                c[2] += 1
        answers = tuple(rr.data for rr in msg.answers)
        q = self._pending.pop((dst, dport, msg.id, key, qtype, transport), None)
        if q is not None and not (q.multicast or q.server == src):
            # same client/port/id/question but from another host: not the reply (spoof, or
            # a coincidence); put the query back and treat this as unmatched
            self._pending[(dst, dport, msg.id, key, qtype, transport)] = q
            q = None
        if q is not None:
            latency = (ts - q.time) * 1000.0
            rec = DnsRecord(q.time, q.client, q.client_port, src, sport, transport, label,
                            msg.id, q.qname, q.qtype, rcode, answers, latency,
                            retries=q.retries, malformed=msg.malformed or q.malformed)
            item = (latency, self.records_total, rec)
            if len(self._slowest) < self.keep_slowest:
                heapq.heappush(self._slowest, item)
            elif latency > self._slowest[0][0]:
                heapq.heapreplace(self._slowest, item)
        else:
            rec = DnsRecord(ts, dst, dport, src, sport, transport, label, msg.id, qname, qtype,
                            rcode, answers, None, response_only=True, malformed=msg.malformed)
        self._add_record(rec)
        if rcode == 0 and msg.answers and not msg.malformed:
            self._learn(msg, qname, label)

    def _count_query(self, client: str, key: str | None, ts: float) -> None:
        c = self._clients.get(client)
        if c is None:
            if len(self._clients) >= self.max_clients:
                self._clients = _prune(self._clients, lambda v: v[0] + v[1])
            c = self._clients[client] = [0, 0, 0]
        c[0] += 1
        if key is not None:
            domains = self._domains
            domains[key] = domains.get(key, 0) + 1
            if len(domains) > self.max_domains:
                self._domains = _prune(domains, int)
        sec = int(ts)
        per = self._per_second
        if per and per[-1][0] == sec:
            per[-1][1] += 1
        else:
            per.append([sec, 1])
            while per and per[0][0] <= sec - self.rate_window:
                per.popleft()

    def _add_record(self, rec: DnsRecord) -> None:
        if len(self._records) == self.max_records:
            self.records_dropped += 1
        self._records.append(rec)
        self.records_total += 1

    def _give_up(self, q: _Pending) -> None:
        unanswered = not (q.multicast and q.proto == "mdns")
        rec = DnsRecord(q.time, q.client, q.client_port, q.server, q.server_port, q.transport,
                        q.proto, q.id, q.qname, q.qtype, None, (), None, query_only=True,
                        unanswered=unanswered, retries=q.retries, malformed=q.malformed)
        if unanswered:
            self.unanswered_total += 1
            self._unanswered.append(rec)
        self._add_record(rec)

    def _expire(self, before: float) -> None:
        pending = self._pending
        while pending:
            key = next(iter(pending))
            q = pending[key]
            if q.time > before:
                break  # dict order is arrival order, so the rest are younger
            del pending[key]
            self._give_up(q)

    # ------------------------------------------------------------------ passive DNS
    def _learn(self, msg: DnsMessage, qname: str | None, label: str) -> None:
        """Remember which looked-up name each answered address belongs to.

        The name stored is the one the host asked for: an A/AAAA record reached through CNAMEs
        is traced back to the question. mDNS responses (usually without a question) teach the
        record's own name, which is the announcing host's name.
        """
        back: dict[str, str] | None = None
        qkey = qname.lower() if qname is not None else None
        for rr in msg.answers:
            if rr.rtype == T_CNAME and rr.data is not None:
                if back is None:
                    back = {}
                back[rr.data.lower()] = rr.name.lower()
        for rr in msg.answers:
            if (rr.rtype != T_A and rr.rtype != T_AAAA) or rr.data is None:
                continue
            name = rr.name
            if qkey is not None and name.lower() != qkey:
                cur = name.lower()
                for _ in range(16):           # bounded: CNAME chains can loop
                    if back is None or cur not in back:
                        break
                    cur = back[cur]
                    if cur == qkey:
                        name = qname
                        break
            elif qkey is not None:
                name = qname
            self._remember(rr.data, name)

    def _remember(self, ip: str, name: str) -> None:
        passive = self._passive
        names = passive.get(ip)
        if names is None:
            passive[ip] = [name]
            if len(passive) > self.passive_max_ips:
                passive.popitem(last=False)
            return
        passive.move_to_end(ip)
        if names[0] == name:
            return
        if name in names:
            names.remove(name)
        names.insert(0, name)
        del names[self.passive_names_per_ip:]

    # ------------------------------------------------------------------ readers
    def passive_names(self, ip: str) -> list[str]:
        """Names hosts looked up that resolved to ``ip``, most recent first ([] if none)."""
        with self.lock:
            return list(self._passive.get(ip, ()))

    def expire(self, now: float) -> None:
        """Give up on queries older than ``query_timeout`` at packet time ``now``."""
        with self.lock:
            self._expire(now - self.query_timeout)

    def finish(self) -> None:
        """End of input (file read to the end, capture stopped): every waiting query is
        reported as unanswered."""
        with self.lock:
            self._expire(float("inf"))
            self._tcp.clear()

    def records(self) -> list[dict[str, Any]]:
        """Export records, oldest first: completed ones, then queries still waiting
        (``query_only`` true, ``unanswered`` false)."""
        with self.lock:
            return [r.as_dict() for r in self._records] + self._pending_dicts()

    def pending_records(self) -> list[dict[str, Any]]:
        """The queries still waiting, as records (``query_only`` true, ``unanswered`` false)."""
        with self.lock:
            return self._pending_dicts()

    def _pending_dicts(self) -> list[dict[str, Any]]:
        return [DnsRecord(q.time, q.client, q.client_port, q.server, q.server_port, q.transport,
                          q.proto, q.id, q.qname, q.qtype, None, (), None, query_only=True,
                          retries=q.retries, malformed=q.malformed).as_dict()
                for q in self._pending.values()]

    def completed_since(self, done: int) -> tuple[int, list[dict[str, Any]]]:
        """Records completed after the first ``done`` of the run (``records_total`` counts
        them), oldest first, and the new total: each is handed out once, whenever asked.
        Those already dropped from the bounded list are gone (``records_dropped``)."""
        with self.lock:
            new = min(self.records_total - done, len(self._records))
            # the newest ``new`` from the right end: a tick does not copy the whole bounded list
            recs = list(islice(reversed(self._records), max(new, 0)))
            recs.reverse()
            return self.records_total, [r.as_dict() for r in recs]

    def top_domains(self, n: int = 10) -> list[tuple[str, int]]:
        with self.lock:
            return sorted(self._domains.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def snapshot(self, top: int = 10) -> DnsSnapshot:
        """A frozen view for the dashboard (cheap: sorts only the bounded tables)."""
        with self.lock:
            per = self._per_second
            if per:
                span = max(1, min(self.rate_window, per[-1][0] - per[0][0] + 1))
                qps = sum(c for _, c in per) / span
            else:
                qps = 0.0
            clients = sorted((ClientDnsStats(k, v[0], v[1], v[2])
                              for k, v in self._clients.items()),
                             key=lambda c: (-c.queries, c.client))[:top]
            return DnsSnapshot(
                messages=self.messages, queries=self.queries, responses=self.responses,
                malformed=self.malformed, pending=len(self._pending),
                unanswered_total=self.unanswered_total, records_total=self.records_total,
                records_dropped=self.records_dropped, qps=qps,
                top_domains=tuple(sorted(self._domains.items(),
                                         key=lambda kv: (-kv[1], kv[0]))[:top]),
                clients=tuple(clients),
                slowest=tuple(r for _, _, r in sorted(self._slowest, reverse=True)),
                unanswered=tuple(reversed(self._unanswered)),
                by_proto=tuple(sorted(self.by_proto.items())),
            )


def _prune(table: dict, weight: Callable[[Any], int]) -> dict:
    """Keep the heavier half of a bounded counter table (space-saving style pruning)."""
    keep = sorted(table.items(), key=lambda kv: weight(kv[1]), reverse=True)
    return dict(keep[:max(1, len(keep) // 2)])
