"""What a flow is for: 18 categories from ports, payload signatures and flow patterns.

:meth:`TrafficClassifier.classify` is stateless and cheap (a couple of dict lookups and, when a
payload is given, a few byte comparisons on its first bytes). The decision, in order:

1. an application protocol named by deeper inspection (``app_protocol``, e.g. "TLS", "DNS");
2. non-port protocols by number (ICMP/ICMPv6/IGMP -> icmp; ESP/AH/GRE/IP-in-IP -> vpn);
3. the port table, lower port first (the service side; an ephemeral port that happens to be in
   the table loses to the real service port);
4. payload signatures: *strong* ones (TLS records, QUIC long headers, SSH banners, BitTorrent,
   STUN, SIP, DHCP, SMB, RDP, WireGuard handshakes) win over the port, except that TLS/QUIC keep
   the port's category when it is not web (IMAPS stays mail, just encrypted); *weak* ones
   (HTTP, mail banners, database greetings) only name flows whose ports say nothing.

:meth:`refine` then looks at a finished or long-running flow's shape (streaming: long, big,
mostly one way; VoIP: small, steady UDP packets) for flows the ports could only call web or
unknown.
"""
from __future__ import annotations

import threading
from typing import Any

from utils.bounded import drop_oldest_share
from capture.packet import (
    PROTO_AH, PROTO_ESP, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IGMP, PROTO_IPIP, PROTO_IPV6,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, ParsedPacket,
)
from tracking.flow import verdict

WEB = "web"
SECURE_WEB = "secure_web"
DNS = "dns"
MAIL = "mail"
FILE_TRANSFER = "file_transfer"
REMOTE_ACCESS = "remote_access"
STREAMING = "streaming"
VOIP = "voip"
GAMING = "gaming"
VPN = "vpn"
DATABASE = "database"
MESSAGING = "messaging"
P2P = "p2p"
NETWORK_SERVICES = "network_services"
DISCOVERY = "discovery"
MANAGEMENT = "management"
ICMP = "icmp"
UNKNOWN = "unknown"

#: category id -> label for screens
CATEGORIES: dict[str, str] = {
    WEB: "Web", SECURE_WEB: "Secure Web", DNS: "DNS", MAIL: "Mail",
    FILE_TRANSFER: "File Transfer", REMOTE_ACCESS: "Remote Access", STREAMING: "Streaming",
    VOIP: "VoIP/Real-time", GAMING: "Gaming", VPN: "VPN/Tunnel", DATABASE: "Database",
    MESSAGING: "Messaging", P2P: "P2P", NETWORK_SERVICES: "Network Services",
    DISCOVERY: "Discovery", MANAGEMENT: "Management", ICMP: "ICMP/Control", UNKNOWN: "Unknown",
}

_T, _U = PROTO_TCP, PROTO_UDP
_TU = (_T, _U)

#: (category, encrypted, protocols, ports) -- ports as ints or inclusive (first, last) ranges
_PORT_RULES: tuple[tuple[str, bool, tuple[int, ...], tuple[int | tuple[int, int], ...]], ...] = (
    (WEB, False, (_T,), (80, 81, 591, 3128, 8000, 8008, 8080, 8081, 8088, 8888)),
    (SECURE_WEB, True, (_T,), (443, 4443, 8443, 9443)),
    (SECURE_WEB, True, (_U,), (443,)),  # QUIC / HTTP/3
    (DNS, False, _TU, (53, 5053)),
    (DNS, True, _TU, (853,)),
    (MAIL, False, (_T,), (25, 110, 143, 587, 2525)),
    (MAIL, True, (_T,), (465, 993, 995)),
    (FILE_TRANSFER, False, (_T,), (20, 21, 139, 445, 548, 873, 2049, 3260)),
    (FILE_TRANSFER, False, (_U,), (69, 2049)),
    (FILE_TRANSFER, True, (_T,), (989, 990)),
    (REMOTE_ACCESS, True, (_T,), (22, 2222, 3389, 5938)),
    (REMOTE_ACCESS, True, (_U,), (3389, 5938)),
    (REMOTE_ACCESS, False, (_T,), (23, 512, 513, 514, (5900, 5903))),
    (STREAMING, False, _TU, (554, 1755, 8554)),
    (STREAMING, False, (_T,), (1935,)),
    (VOIP, False, _TU, (5060,)),
    (VOIP, True, (_T,), (5061,)),
    (VOIP, False, (_U,), ((3478, 3481), 5004, 5005, 19302, (19305, 19309))),
    (GAMING, False, _TU, (3074, 3659, 3724, 6112, 25565, (27015, 27030))),
    (GAMING, False, (_U,), ((27031, 27036), 3075)),
    (VPN, True, (_U,), (500, 4500, 51820, 1194)),
    (VPN, True, (_T,), (1194, 1723)),
    (VPN, False, (_U,), (1701, 4789, 6081, 3544)),
    (DATABASE, False, (_T,), (1433, 1521, 3306, 5432, 5984, 6379, 7000, 8086, 9042, 9200,
                             11211, 27017, 28015)),
    (DATABASE, False, (_U,), (1434, 11211)),
    (MESSAGING, False, (_T,), (1883, 5222, 5269, 5672, 6660, 6665, 6666, 6667, 9092)),
    (MESSAGING, True, (_T,), (5223, 5228, 5671, 6697, 8883)),
    (P2P, False, _TU, ((6881, 6889), 6969, 51413, 4662)),
    (P2P, False, (_U,), (4672,)),
    (NETWORK_SERVICES, False, (_U,), (67, 68, 123, 161, 162, 514, 520, 546, 547, 1812, 1813)),
    (NETWORK_SERVICES, False, _TU, (49, 88, 389, 464)),
    (NETWORK_SERVICES, True, (_T,), (636, 3269)),
    (NETWORK_SERVICES, False, (_T,), (179, 646, 3268)),
    (DISCOVERY, False, (_U,), (137, 138, 427, 1900, 3702, 5353, 5355, 9875, 17500, 57621)),
    (DISCOVERY, False, (_T,), (5355,)),
    (MANAGEMENT, False, (_T,), (830, 2375, 4505, 4506, 5985, 8140, 8291, 9090, 10000, 10050,
                                10051)),
    (MANAGEMENT, True, (_T,), (2376, 5986, 6443)),
    (MANAGEMENT, False, (_U,), (623, 47808)),
)


def _build_ports() -> dict[int, tuple[str, bool]]:
    out: dict[int, tuple[str, bool]] = {}
    for cat, enc, protos, ports in _PORT_RULES:
        for spec in ports:
            lo, hi = spec if isinstance(spec, tuple) else (spec, spec)
            for port in range(lo, hi + 1):
                for proto in protos:
                    out.setdefault(proto << 16 | port, (cat, enc))
    return out


_PORTS = _build_ports()

_BY_PROTO: dict[int, tuple[str, bool]] = {
    PROTO_ICMP: (ICMP, False), PROTO_ICMPV6: (ICMP, False), PROTO_IGMP: (ICMP, False),
    PROTO_ESP: (VPN, True), PROTO_AH: (VPN, False), PROTO_GRE: (VPN, False),
    PROTO_IPIP: (VPN, False), PROTO_IPV6: (VPN, False),
}

#: application protocol names from DPI (lower case) -> result
_APP: dict[str, tuple[str, bool]] = {
    "http": (WEB, False), "tls": (SECURE_WEB, True), "https": (SECURE_WEB, True),
    "quic": (SECURE_WEB, True), "http3": (SECURE_WEB, True), "dns": (DNS, False),
    "dot": (DNS, True), "doh": (DNS, True), "mdns": (DISCOVERY, False),
    "llmnr": (DISCOVERY, False), "nbns": (DISCOVERY, False), "ssdp": (DISCOVERY, False),
    "ssh": (REMOTE_ACCESS, True), "rdp": (REMOTE_ACCESS, True), "telnet": (REMOTE_ACCESS, False),
    "smtp": (MAIL, False), "imap": (MAIL, False), "pop3": (MAIL, False), "ftp": (FILE_TRANSFER, False),
    "smb": (FILE_TRANSFER, False), "dhcp": (NETWORK_SERVICES, False),
    "dhcpv6": (NETWORK_SERVICES, False), "ntp": (NETWORK_SERVICES, False),
    "snmp": (NETWORK_SERVICES, False), "sip": (VOIP, False), "rtp": (VOIP, False),
    "stun": (VOIP, False), "bittorrent": (P2P, False), "wireguard": (VPN, True),
    "openvpn": (VPN, True), "ipsec": (VPN, True), "rtsp": (STREAMING, False),
    "mysql": (DATABASE, False), "postgresql": (DATABASE, False), "redis": (DATABASE, False),
    "mqtt": (MESSAGING, False), "xmpp": (MESSAGING, False), "icmp": (ICMP, False),
}

_HTTP_STARTS = frozenset((b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC",
                          b"CONN", b"TRAC", b"HTTP"))
_SIP_STARTS = (b"INVITE sip:", b"REGISTER sip:", b"SIP/2.0 ", b"OPTIONS sip:", b"ACK sip:",
               b"BYE sip:", b"NOTIFY sip:", b"SUBSCRIBE sip:")
_QUIC_VERSIONS = frozenset((b"\x00\x00\x00\x01", b"\x6b\x33\x43\xcf", b"\x00\x00\x00\x00"))
_GENERIC = frozenset((WEB, SECURE_WEB, UNKNOWN))
_MAIL_STARTS = (b"220 ", b"220-", b"EHLO", b"HELO", b"+OK ", b"* OK")
#: first bytes of the TCP text prefixes :func:`_signature` looks for (SSH, BitTorrent, HTTP,
#: SIP, mail): binary payloads skip those checks (RDP's 3 is not among them)
_TCP_TEXT_FIRST = frozenset(p[0] for p in (b"SSH-", b"\x13BitTorrent protocol", *_HTTP_STARTS,
                                           *_SIP_STARTS, *_MAIL_STARTS))


def _signature(proto: int, head: bytes, n: int) -> tuple[str, bool, bool] | None:
    """(category, encrypted, strong) from the first payload bytes ``head`` (``n`` = full length)."""
    if n < 4:
        return None
    b0 = head[0]
    if proto == _T:
        if 0x14 <= b0 <= 0x17 and head[1] == 3 and head[2] <= 4:
            return SECURE_WEB, True, True              # TLS record (the port may say otherwise)
        if b0 in _TCP_TEXT_FIRST:
            first4 = head[:4]
            if first4 == b"SSH-":
                return REMOTE_ACCESS, True, True
            if head.startswith(b"\x13BitTorrent protocol"):
                return P2P, False, True
            if n >= 8 and head[4:8] in (b"\xffSMB", b"\xfeSMB"):
                return FILE_TRANSFER, False, True
            if first4 in _HTTP_STARTS:
                return WEB, False, False
            if head.startswith(_SIP_STARTS):
                return VOIP, False, True
            if first4 in _MAIL_STARTS:
                return MAIL, False, False
        else:                                          # binary: none of the text prefixes
            if n >= 8 and head[4:8] in (b"\xffSMB", b"\xfeSMB"):
                return FILE_TRANSFER, False, True
            if b0 == 3 and head[1] == 0 and n >= 7 and head[5] == 0xE0:
                return REMOTE_ACCESS, True, True       # TPKT + X.224 connection request (RDP)
        if n >= 8 and head[4:8] == b"\x00\x03\x00\x00":
            return DATABASE, False, False              # PostgreSQL startup message
        if n >= 5 and head[3] == 0 and head[4] == 0x0A:
            return DATABASE, False, False              # MySQL server greeting (protocol 10)
        return None
    if proto == _U:
        if b0 & 0xC0 == 0xC0 and n >= 5 and head[1:5] in _QUIC_VERSIONS:
            return SECURE_WEB, True, True              # QUIC long header
        if n >= 20 and head[4:8] == b"\x21\x12\xa4\x42":
            return VOIP, False, True                   # STUN (RFC 5389 magic cookie)
        if n >= 240 and head[236:240] == b"\x63\x82\x53\x63":
            return NETWORK_SERVICES, False, True       # BOOTP/DHCP magic cookie
        if head.startswith(b"d1:") and (b"d1:ad2:id20:" in head or b"d1:rd2:id20:" in head):
            return P2P, False, True                    # BitTorrent DHT (bencoded KRPC)
        if b0 in (1, 2, 3) and head[1:4] == b"\x00\x00\x00" and n in (148, 92, 64):
            return VPN, True, True                     # WireGuard handshake / cookie
        if head.startswith(_SIP_STARTS):
            return VOIP, False, True
        if head[:8] in (b"M-SEARCH", b"NOTIFY *"):
            return DISCOVERY, False, False
        return None
    return None


def _classify(proto: int, sport: int, dport: int, payload: bytes | memoryview,
              app_protocol: str | None) -> tuple[str, bool, bool]:
    """(category, encrypted, strong); strong = named by a signature or DPI, not just ports."""
    n = len(payload)
    return _classify_head(proto, sport, dport, bytes(payload[:260]) if n else b"", n,
                          app_protocol)


def _classify_head(proto: int, sport: int, dport: int, head: bytes, n: int,
                   app_protocol: str | None) -> tuple[str, bool, bool]:
    """:func:`_classify` given the payload's first 260 bytes ``head`` and its length ``n``."""
    if app_protocol:
        hit = _APP.get(app_protocol.lower())
        if hit is not None:
            return hit[0], hit[1], True
    if proto != _T and proto != _U and proto != PROTO_SCTP:
        hit = _BY_PROTO.get(proto)
        return (hit[0], hit[1], True) if hit is not None else (UNKNOWN, False, False)
    if sport <= dport:
        lo, hi = sport, dport
    else:
        lo, hi = dport, sport
    base = proto << 16
    pc = _PORTS.get(base | lo) or _PORTS.get(base | hi)
    if n:
        sig = _signature(proto, head, n)
        if sig is not None:
            cat, enc, strong = sig
            if cat == SECURE_WEB:                      # TLS / QUIC: encrypted whatever the port
                if pc is not None and pc[0] not in _GENERIC:
                    return pc[0], True, True
                return SECURE_WEB, True, True
            if strong or pc is None:
                return cat, enc, strong
            if cat == WEB and pc[0] == SECURE_WEB:
                return WEB, False, True                # plain HTTP on an HTTPS port
    if pc is not None:
        return pc[0], pc[1], False
    return UNKNOWN, False, False


class TrafficClassifier:
    """Stateless :meth:`classify`, plus a bounded store of per-flow results."""

    def __init__(self, max_flows: int = 200000, inspect_packets: int = 8,
                 lock: threading.RLock | None = None) -> None:
        self.max_flows = max_flows
        #: payload-bearing packets of a flow looked at before its classification is final
        self.inspect_packets = inspect_packets
        self.lock = lock if lock is not None else threading.RLock()
        #: flow key -> (category, encrypted, strong)
        self._flows: dict[str, tuple[str, bool, bool]] = {}

    @staticmethod
    def classify(proto: int, sport: int, dport: int, payload: bytes | memoryview = b"",
                 app_protocol: str | None = None) -> tuple[str, bool]:
        """(category, encrypted) for one packet's view of a flow. Stateless and cheap."""
        cat, enc, _ = _classify(proto, sport, dport, payload, app_protocol)
        return cat, enc

    def classify_flow(self, flow_key: str, proto: int, sport: int, dport: int,
                      payload: bytes | memoryview = b"", app_protocol: str | None = None
                      ) -> tuple[str, bool]:
        """Classify and remember; a signature-based result is kept over later port-only ones."""
        old = self._flows.get(flow_key)
        if old is not None and old[2]:
            return old[0], old[1]
        res = _classify(proto, sport, dport, payload, app_protocol)
        if old is None or res[2] or old[0] == UNKNOWN:
            self._flows[flow_key] = res
            if old is None and len(self._flows) > self.max_flows:
                drop_oldest_share(self._flows)  # in a batch: one-at-a-time front deletes are quadratic
        else:
            res = old
        return res[0], res[1]

    def get_classification(self, flow: Any) -> tuple[str, bool] | None:
        """Stored (category, encrypted) for a flow key or an object with ``flow_key``."""
        key = flow if isinstance(flow, str) else getattr(flow, "flow_key", None)
        res = self._flows.get(key) if key is not None else None
        return (res[0], res[1]) if res is not None else None

    def forget(self, flow_key: str) -> None:
        self._flows.pop(flow_key, None)

    def flow_stage(self, pkt: ParsedPacket, flow: Any, forward: bool) -> None:
        """Pipeline flow stage: sets ``flow.verdict`` (category, encrypted, final) in place.

        Looks at a flow's first ``inspect_packets`` packets; after that (or once a signature
        named the flow) it returns after one test (``flow.verdict.final``).
        """
        v = flow.verdict
        if v.final:
            return
        cls = v.category
        n = pkt.payload_len
        if cls:
            if flow.packets_sent + flow.packets_recv > self.inspect_packets:
                flow.verdict = verdict(cls, v.encrypted, True)
                return
            if not n:
                return
            off = pkt.payload_offset
            head = pkt.data[off:off + (n if n < 260 else 260)]
            # Only a strong result replaces the one made; it needs a strong signature, or
            # plain HTTP (strong on an HTTPS port): anything else leaves the flow as it is.
            sig = _signature(pkt.proto, head, n)
            if sig is None or not (sig[2] or sig[0] == WEB):
                return
        elif n:
            off = pkt.payload_offset
            head = pkt.data[off:off + (n if n < 260 else 260)]
        else:
            head = b""
        proto, _, sport, _, dport = flow.key  # (the endpoints are properties over it)
        cat, enc, strong = _classify_head(proto, sport, dport, head, n, None)
        if strong or not cls:
            flow.verdict = verdict(cat, enc, strong)

    @staticmethod
    def refine(category: str, packets: int, bytes: int, duration: float, mean_size: float,
               *, proto: int = 0, bytes_up: int | None = None) -> str:
        """A better category from the flow's shape, for flows the ports left generic.

        ``bytes_up`` (bytes sent by the initiator), when given, lets streaming require a
        mostly one-way flow (at least 10x more bytes down than up).
        """
        if category not in _GENERIC and category != VOIP:
            return category
        if duration <= 0 or packets <= 0:
            return category
        pps = packets / duration
        if category != VOIP and duration >= 30 and bytes >= 5_000_000 and mean_size >= 900:
            one_way = bytes_up is None or bytes_up * 10 <= bytes - bytes_up
            if one_way:
                return STREAMING
        if category in (UNKNOWN, VOIP) and proto in (0, PROTO_UDP) and 60 <= mean_size <= 400 \
                and packets >= 50 and duration >= 5 and 15 <= pps <= 120:
            return VOIP
        return category

    def __len__(self) -> int:
        return len(self._flows)
