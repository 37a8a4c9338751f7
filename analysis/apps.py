"""Which application protocol a flow speaks, judged from its first payload bytes.

Ports say what a service *should* be; the payload says what it is. :func:`identify` looks at
the first bytes of one direction (a banner, a request line, a record header, a magic number);
:func:`port_guess` gives the registered service for the responder's port, and
:func:`is_mismatch` flags a known protocol on a port registered for something else (SSH on 443,
HTTP on 53). Labels are short, stable strings used in exports and filters.
"""
from __future__ import annotations

from capture.packet import PROTO_TCP, PROTO_UDP

TLS, HTTP, HTTP2, SSH, DNS, MDNS, LLMNR, NBNS = "TLS", "HTTP", "HTTP2", "SSH", "DNS", "mDNS", \
    "LLMNR", "NetBIOS-NS"
QUIC, SMTP, POP3, IMAP, FTP, SMB, RDP, BITTORRENT = "QUIC", "SMTP", "POP3", "IMAP", "FTP", \
    "SMB", "RDP", "BitTorrent"
STUN, NTP, DHCP, SSDP, DTLS, WIREGUARD, MYSQL, POSTGRES, SIP = "STUN", "NTP", "DHCP", "SSDP", \
    "DTLS", "WireGuard", "MySQL", "PostgreSQL", "SIP"
DHCPV6, SPOTIFY = "DHCPv6", "Spotify"
UNKNOWN = "unknown"
#: identify() returns this while the bytes seen so far are too few to decide
UNDECIDED = ""

#: bytes after which a direction that matched nothing is called unknown
DECIDE_BYTES = 16

HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ",
                b"PATCH ", b"TRACE ", b"PROPFIND ", b"PROPPATCH ", b"MKCOL ", b"COPY ", b"MOVE ",
                b"LOCK ", b"UNLOCK ", b"SEARCH ", b"REPORT ")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SIP_STARTS = (b"INVITE sip:", b"REGISTER sip:", b"OPTIONS sip:", b"ACK sip:", b"BYE sip:",
               b"CANCEL sip:", b"SUBSCRIBE sip:", b"NOTIFY sip:", b"MESSAGE sip:", b"SIP/2.0 ")
_SMB_MAGIC = (b"\xffSMB", b"\xfeSMB", b"\xfdSMB")
_STUN_COOKIE = b"\x21\x12\xa4\x42"
_DHCP_COOKIE = b"\x63\x82\x53\x63"
_QUIC_VERSIONS = {0x00000001, 0x6B3343CF, 0x00000000}

#: first bytes of every text prefix :func:`_identify_tcp` looks for (lets binary payloads skip
#: those checks); "EHLO"/"HELO" are matched in any case
_TCP_TEXT_FIRST = frozenset(
    p[0] for p in (b"SSH-", b"HTTP/1.", b"HTTP/0.9", *HTTP_METHODS, b"PRI * HTTP/2",
                   b"\x13BitTorrent protocol", *_SIP_STARTS, b"+OK", b"-ERR", b"* OK",
                   b"* PREAUTH", b"220 ", b"220-", b"EHLO", b"HELO", b"ehlo", b"helo"))

# (proto, port) -> (registered service, payload labels that fit it)
_PORTS: dict[tuple[int, int], tuple[str, frozenset[str]]] = {}


def _reg(proto: int, ports: tuple[int, ...], service: str, *fits: str) -> None:
    for p in ports:
        _PORTS[(proto, p)] = (service, frozenset(fits or (service,)))


_reg(PROTO_TCP, (80, 8080, 8000, 8008, 3128), HTTP, HTTP, HTTP2)
_reg(PROTO_TCP, (443, 8443, 465, 993, 995, 853, 636, 5223, 5061), TLS, TLS)
_reg(PROTO_TCP, (22,), SSH)
_reg(PROTO_TCP, (25, 587, 2525), SMTP)
_reg(PROTO_TCP, (110,), POP3)
_reg(PROTO_TCP, (143,), IMAP)
_reg(PROTO_TCP, (21,), FTP)
_reg(PROTO_TCP, (139, 445), SMB)
_reg(PROTO_TCP, (3389,), RDP, RDP, TLS)
_reg(PROTO_TCP, tuple(range(6881, 6890)), BITTORRENT)
_reg(PROTO_TCP, (53,), DNS)
_reg(PROTO_TCP, (3306,), MYSQL)
_reg(PROTO_TCP, (5432,), POSTGRES)
_reg(PROTO_TCP, (5060,), SIP)
_reg(PROTO_UDP, (53,), DNS, DNS)
_reg(PROTO_UDP, (5353,), MDNS, MDNS, DNS)
_reg(PROTO_UDP, (5355,), LLMNR, LLMNR, DNS)
_reg(PROTO_UDP, (137,), NBNS)
_reg(PROTO_UDP, (443, 80), QUIC, QUIC, DTLS)
_reg(PROTO_UDP, (3478, 19302), STUN, STUN, DTLS)
_reg(PROTO_UDP, (123,), NTP)
_reg(PROTO_UDP, (67, 68), DHCP)
_reg(PROTO_UDP, (546, 547), DHCPV6)
_reg(PROTO_UDP, (1900,), SSDP)
_reg(PROTO_UDP, (51820,), WIREGUARD)
_reg(PROTO_UDP, (5060,), SIP)


def port_guess(proto: int, server_port: int, client_port: int = 0) -> str | None:
    """Registered service for the responder's port (the client's port if only it is known)."""
    hit = _PORTS.get((proto, server_port)) or _PORTS.get((proto, client_port))
    return hit[0] if hit else None


def is_mismatch(app: str | None, proto: int, server_port: int, client_port: int = 0) -> bool:
    """True when a positively identified protocol is not what the port is registered for."""
    if not app or app == UNKNOWN:
        return False
    hit = _PORTS.get((proto, server_port))
    if hit is None:
        hit = _PORTS.get((proto, client_port))
        if hit is None:
            return False
    return app not in hit[1]


def identify(data: bytes, proto: int, from_client: bool, sport: int = 0,
             dport: int = 0) -> str:
    """Label the protocol from the first payload bytes of one direction.

    ``data`` is the start of that direction's stream (TCP, reassembled) or one datagram
    (UDP). Ports only refine DNS-family names (mDNS, LLMNR) and the FTP/SMTP banner tie.
    Returns :data:`UNDECIDED` while too few bytes are there, :data:`UNKNOWN` if nothing fits.
    """
    if proto == PROTO_UDP:
        return _identify_udp(data, sport, dport)
    return _identify_tcp(data, from_client, sport, dport)


def _identify_tcp(data: bytes, from_client: bool, sport: int, dport: int) -> str:
    n = len(data)
    if n == 0:
        return UNDECIDED
    b0 = data[0]
    if b0 == 0x16 or 20 <= b0 <= 23:
        if n < 3:
            return UNDECIDED
        if data[1] == 3 and data[2] <= 4:
            return TLS
    if b0 in _TCP_TEXT_FIRST:
        # The banners and request lines below (only these start with such a byte; SMB and
        # RDP start with 0 and 3, so checking them apart keeps the order's outcome).
        if data.startswith(b"SSH-"):
            return SSH
        if data.startswith(b"HTTP/1.") or data.startswith(b"HTTP/0.9"):
            return HTTP
        if data.startswith(HTTP_METHODS):
            return HTTP
        if data.startswith(b"PRI * HTTP/2"):
            return HTTP2
        if data.startswith(b"\x13BitTorrent protocol"):
            return BITTORRENT
        if data.startswith(_SIP_STARTS):
            return SIP
        if data.startswith(b"+OK") or data.startswith(b"-ERR"):
            return POP3
        if data.startswith(b"* OK") or data.startswith(b"* PREAUTH"):
            return IMAP
        if data.startswith((b"220 ", b"220-")) and not from_client:
            line = data[:data.find(b"\n")] if b"\n" in data else data
            upper = line.upper()
            if b"FTP" in upper:
                return FTP
            if b"SMTP" in upper or b"MAIL" in upper or b"POSTFIX" in upper or b"EXIM" in upper:
                return SMTP
            if n < 8 and b"\n" not in data:
                return UNDECIDED
            return FTP if 21 in (sport, dport) else SMTP
        if from_client and data[:5].upper() in (b"EHLO ", b"HELO "):
            return SMTP
    elif b0 == 0:
        if n >= 8 and data[4:8] in _SMB_MAGIC:
            return SMB
    elif b0 == 3:
        if n >= 6 and data[1] == 0 and data[5] in (0xE0, 0xD0) and \
                int.from_bytes(data[2:4], "big") >= 11:
            return RDP
    if n >= 5 and not from_client and data[4] == 0x0A and data[3] == 0 and \
            int.from_bytes(data[0:3], "little") == n - 4 and n > 10:
        return MYSQL                             # server greeting, protocol 10
    if n >= 8 and from_client and data[4:8] in (b"\x00\x03\x00\x00", b"\x04\xd2\x16\x2f"):
        return POSTGRES                          # StartupMessage v3 / SSLRequest
    if n >= 14 and int.from_bytes(data[0:2], "big") == n - 2 and _looks_dns(data[2:]):
        return DNS                               # DNS over TCP: 2-byte length prefix
    if n < DECIDE_BYTES:
        return UNDECIDED
    return UNKNOWN


def _identify_udp(data: bytes, sport: int, dport: int) -> str:
    n = len(data)
    if n == 0:
        return UNDECIDED
    b0 = data[0]
    if b0 & 0x80 and n >= 7:
        version = int.from_bytes(data[1:5], "big")
        # v1, v2, version negotiation (0), IETF drafts (0xff0000xx)
        if version in _QUIC_VERSIONS or version >> 8 == 0xFF0000:
            return QUIC
    if n >= 20 and b0 < 2 and data[4:8] == _STUN_COOKIE and \
            int.from_bytes(data[2:4], "big") == n - 20:
        return STUN
    if n >= 13 and 20 <= b0 <= 23 and data[1] == 0xFE and data[2] in (0xFF, 0xFD, 0xFC):
        return DTLS
    if n >= 240 and b0 in (1, 2) and data[236:240] == _DHCP_COOKIE:
        return DHCP
    if data.startswith((b"M-SEARCH * HTTP/1.", b"NOTIFY * HTTP/1.", b"HTTP/1.1 200 OK")) and \
            1900 in (sport, dport) or data.startswith((b"M-SEARCH * ", b"NOTIFY * ")):
        return SSDP
    if data.startswith(_SIP_STARTS):
        return SIP
    if 123 in (sport, dport) and _looks_ntp(data, strict=False):
        return NTP
    if n >= 12 and _looks_dns(data):
        if 5353 in (sport, dport):
            return MDNS
        if 5355 in (sport, dport):
            return LLMNR
        if n >= 13 and data[12] == 32 and 137 in (sport, dport):
            return NBNS
        return DNS
    if _looks_ntp(data, strict=True):
        return NTP
    if n >= 4 and 1 <= b0 <= 13 and 547 in (sport, dport):
        return DHCPV6
    if data.startswith(b"SpotUdp0"):
        return SPOTIFY
    if b0 in (1, 2, 3, 4) and data[1:4] == b"\x00\x00\x00" and (
            (b0, n) in ((1, 148), (2, 92), (3, 64)) or (b0 == 4 and n >= 32 and n % 16 == 0)):
        return WIREGUARD
    if n >= 20 and data.startswith(b"d1:") and b"y1:q" in data:
        return BITTORRENT                        # DHT (bencoded KRPC query)
    return UNKNOWN


def _looks_ntp(msg: bytes, strict: bool) -> bool:
    """NTP v1-4 client/server/broadcast header (48 bytes plus key id / MAC / extensions).

    Strict (no port hint) accepts only the bare 48-byte header with a sane stratum and poll.
    """
    n = len(msg)
    if n < 48 or (n - 48) % 4 or n > 1024:
        return False
    b0 = msg[0]
    if not 1 <= (b0 >> 3) & 7 <= 4 or not 1 <= b0 & 7 <= 5:
        return False
    if strict:
        return n == 48 and msg[1] <= 16 and msg[2] <= 17
    return True


def _looks_dns(msg: bytes) -> bool:
    """A DNS header whose counts are plausible and whose first question name parses."""
    if len(msg) < 12:
        return False
    flags = msg[2]
    if (flags >> 3) & 0x0F > 6:                 # opcode
        return False
    qd = int.from_bytes(msg[4:6], "big")
    an = int.from_bytes(msg[6:8], "big")
    ns = int.from_bytes(msg[8:10], "big")
    if qd > 16 or an > 256 or ns > 256 or (qd == 0 and an == 0):
        return False
    if qd == 0:
        return flags & 0x80 != 0                 # responses without question (mDNS)
    pos = 12
    for _ in range(128):
        if pos >= len(msg):
            return False
        ln = msg[pos]
        if ln == 0:
            if pos + 5 > len(msg):
                return False
            qclass = int.from_bytes(msg[pos + 3:pos + 5], "big") & 0x7FFF  # mDNS QU bit
            return qclass in (1, 3, 4, 254, 255) and msg[pos + 1:pos + 3] != b"\x00\x00"
        if ln & 0xC0:
            return ln & 0xC0 == 0xC0
        pos += 1 + ln
    return False
