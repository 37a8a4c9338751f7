"""Traceroute probes: crafted once per destination with scapy, stamped per probe in bytes.

Paris-traceroute style: everything a load balancer hashes stays the same for every probe to one
destination (addresses, protocol, ports, ICMP type/code/id and checksum, IPv6 flow label), so
ECMP routers keep all probes of a destination on one path. What tells probes apart lies outside
the flow hash:

* ICMP echo: the sequence number is the probe's tag, and a 16-bit payload word holds its
  ones'-complement negation, so the ICMP checksum never changes.
* UDP: the checksum itself is the tag (a payload word is chosen to make the checksum come out
  as the tag), as Paris traceroute does; ports never change.
* TCP SYN: the sequence number carries the tag (low 16 bits); ports never change.

IPv4 probes also carry the tag as IP id. A reply is matched to its probe by the header the
router quotes in its ICMP error (or by the echo reply's seq / the TCP reply's ack), never by
arrival order.

Building a scapy packet costs about a millisecond, so scapy builds one template per
destination and each probe is a copy of its bytes with TTL, tag and checksum words patched
(a few microseconds).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from capture.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, ParsedPacket

METHODS = ("icmp", "udp", "tcp")
#: Paris traceroute's usual UDP destination port; TCP's default is HTTP's
DEFAULT_UDP_PORT = 33434
DEFAULT_TCP_PORT = 80
#: IP + transport bytes of an ICMP/UDP probe (mtr's default size is 64)
DEFAULT_PROBE_SIZE = 64

#: reply kinds
HOP = 1        # ICMP time exceeded from a router on the way
DEST = 2       # the destination answered (echo reply, port unreachable, SYN-ACK/RST)
UNREACH = 3    # a router said the destination cannot be reached (!N, !H, !X ...)

_TIME_EXCEEDED = {PROTO_ICMP: 11, PROTO_ICMPV6: 3}
_UNREACH = {PROTO_ICMP: 3, PROTO_ICMPV6: 1}
_PORT_UNREACH_CODE = {PROTO_ICMP: 3, PROTO_ICMPV6: 4}
_ECHO_REPLY = {PROTO_ICMP: 0, PROTO_ICMPV6: 129}
_SYN, _RST, _ACK = 0x02, 0x04, 0x10

_u16 = struct.Struct("!H")
_u32 = struct.Struct("!I")


def ones_sum(data: bytes | bytearray, start: int = 0) -> int:
    """The 16-bit ones'-complement sum of ``data`` (odd length padded with a zero byte)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


@dataclass(frozen=True, slots=True)
class FlowIds:
    """The identifiers one tracer puts on all its flows (its own probes are told by them)."""

    icmp_id: int
    sport: int
    seq_hi: int
    flow_label: int


class ProbeTemplate:
    """One destination's probe bytes; :meth:`build` stamps TTL and tag into a copy."""

    __slots__ = ("family", "method", "dst", "dport", "_data", "_ttl_off", "_l4", "_base", "_hi")

    def __init__(self, method: str, family: int, src: str, dst: str, dport: int, ids: FlowIds,
                 size: int = DEFAULT_PROBE_SIZE) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown trace method {method!r} (one of {', '.join(METHODS)})")
        # scapy is only needed here, once per destination: keep it off import paths that
        # never trace.
        from scapy.layers.inet import ICMP, IP, TCP, UDP
        from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
        from scapy.packet import Raw

        self.family = family
        self.method = method
        self.dst = dst
        self.dport = dport
        self._hi = ids.seq_hi
        v6 = family == socket.AF_INET6
        ip = IPv6(src=src, dst=dst, hlim=1, fl=ids.flow_label) if v6 else \
            IP(src=src, dst=dst, ttl=1, id=0)
        hdr_len = 40 if v6 else 20
        pad = max(2, size - hdr_len - 8)
        if method == "icmp":
            l4 = (ICMPv6EchoRequest(id=ids.icmp_id, seq=0) if v6 else
                  ICMP(type=8, id=ids.icmp_id, seq=0)) / Raw(b"\0" * pad)
        elif method == "udp":
            l4 = UDP(sport=ids.sport, dport=dport) / Raw(b"\0" * pad)
        else:
            # SYN with an MSS option like a real client's, so firewalls treat it as one
            l4 = TCP(sport=ids.sport, dport=dport, flags="S", seq=ids.seq_hi << 16,
                     window=64240, options=[("MSS", 1460 if not v6 else 1440)])
        data = bytearray(bytes(ip / l4))
        self._ttl_off = 7 if v6 else 8
        self._l4 = hdr_len
        # Sum of everything the transport checksum covers, with checksum, tag and
        # compensation word all zero; each probe then costs two 16-bit additions.
        ck = hdr_len + (16 if method == "tcp" else 6 if method == "udp" else 2)
        data[ck:ck + 2] = b"\0\0"
        if method == "icmp":
            data[hdr_len + 6:hdr_len + 8] = b"\0\0"
        l4_len = len(data) - hdr_len
        pseudo = 0
        if v6:
            nh = {"icmp": PROTO_ICMPV6, "udp": PROTO_UDP, "tcp": PROTO_TCP}[method]
            pseudo = ones_sum(bytes(data[8:40]) + struct.pack("!IxxxB", l4_len, nh))
        elif method != "icmp":
            nh = PROTO_UDP if method == "udp" else PROTO_TCP
            pseudo = ones_sum(bytes(data[12:20]) + struct.pack("!xBH", nh, l4_len))
        self._base = ones_sum(bytes(data[hdr_len:]), pseudo)
        if method == "icmp":
            # checksum of the seq-0 probe; every probe keeps it (seq + ~seq adds nothing)
            _u16.pack_into(data, ck, ~self._base & 0xFFFF)
        self._data = bytes(data)

    def build(self, ttl: int, tag: int) -> bytes:
        """The probe for ``ttl`` carrying ``tag`` (1..0xfffe)."""
        b = bytearray(self._data)
        b[self._ttl_off] = ttl
        l4 = self._l4
        if self.family == socket.AF_INET:
            _u16.pack_into(b, 4, tag)  # IP id: the kernel fills the header checksum
        m = self.method
        if m == "icmp":
            _u16.pack_into(b, l4 + 6, tag)
            _u16.pack_into(b, l4 + 8, ~tag & 0xFFFF)
        elif m == "udp":
            # make the sum come out as ~tag, so the checksum field reads ``tag``
            w = _add(~tag & 0xFFFF, ~self._base & 0xFFFF)
            _u16.pack_into(b, l4 + 8, w)
            _u16.pack_into(b, l4 + 6, tag)
        else:
            _u32.pack_into(b, l4 + 4, (self._hi << 16) | tag)
            s = _add(self._base, tag)  # the template's seq already holds the high word
            _u16.pack_into(b, l4 + 16, ~s & 0xFFFF)
        return bytes(b)


def _quoted_udp_checksum(pkt: ParsedPacket) -> int | None:
    """The UDP checksum inside an ICMP error's quote (the parser stops at the ports)."""
    data = pkt.data
    off = pkt.payload_offset  # the quoted IP header starts right after the ICMP header
    if off >= len(data):
        return None
    l4 = off + ((data[off] & 0x0F) * 4 if pkt.ip_version == 4 else 40)
    if l4 + 8 > len(data):
        return None
    return _u16.unpack_from(data, l4 + 6)[0]


def classify_reply(pkt: ParsedPacket, ids: FlowIds) -> tuple[str, int, int] | None:
    """(destination the probe went to, probe tag, kind) for a reply to one of our probes.

    ``pkt`` must come from :func:`capture.parser.parse`. Anything that is not an answer to a
    probe carrying ``ids`` returns None.
    """
    proto = pkt.proto
    if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        t = pkt.icmp_type
        q = pkt.quoted
        if q is not None:
            if t == _TIME_EXCEEDED[proto]:
                kind = HOP
            elif t == _UNREACH[proto]:
                kind = UNREACH
                if pkt.src_ip == q.dst_ip or (q.proto == PROTO_UDP and
                                                pkt.icmp_code == _PORT_UNREACH_CODE[proto]):
                    kind = DEST
            else:
                return None
            qp = q.proto
            if qp == PROTO_ICMP or qp == PROTO_ICMPV6:
                if q.icmp_id != ids.icmp_id or q.icmp_seq is None:
                    return None
                return q.dst_ip, q.icmp_seq, kind
            if q.sport != ids.sport:
                return None
            if qp == PROTO_UDP:
                tag = _quoted_udp_checksum(pkt)
                return None if tag is None else (q.dst_ip, tag, kind)
            if qp == PROTO_TCP and q.seq is not None and q.seq >> 16 == ids.seq_hi:
                return q.dst_ip, q.seq & 0xFFFF, kind
            return None
        if t == _ECHO_REPLY[proto] and pkt.icmp_id == ids.icmp_id:
            return pkt.src_ip, pkt.icmp_seq, DEST
        return None
    if proto == PROTO_TCP and pkt.dport == ids.sport and pkt.tcp_flags & (_SYN | _RST):
        acked = (pkt.ack - 1) & 0xFFFFFFFF
        if pkt.tcp_flags & _ACK and acked >> 16 == ids.seq_hi:
            return pkt.src_ip, acked & 0xFFFF, DEST
    return None
