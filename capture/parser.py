"""Raw frame bytes -> :class:`ParsedPacket`, with struct on the hot path.

Nothing here raises on bad input: a frame that is truncated or inconsistent comes back with
``malformed`` set to the reason and every field that could be read before the damage.
Tunnels (GRE, VXLAN, IP-in-IP, 6in4, MPLS) are walked and the inner packet is parsed into
``inner``, so both the outer and the inner flow can be tracked, as tshark and Zeek do.
"""
from __future__ import annotations

import socket
import struct
from typing import Callable

from capture.packet import (
    ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_MPLS, ETH_MPLS_MC, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_IPIP, PROTO_IPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ArpInfo, ParsedPacket,
    QuotedHeader, TcpOptions,
)

# Link types (LINKTYPE_* values as written in pcap/pcapng files).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_OPENBSD = 14  # DLT_RAW on OpenBSD; pcap files written there use 12/14
LINKTYPE_RAW_BSD = 12
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINKTYPE_NAMES: dict[int, str] = {
    LINKTYPE_NULL: "BSD loopback (NULL)", LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP", LINKTYPE_RAW_BSD: "raw IP", LINKTYPE_RAW_OPENBSD: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback", LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6", LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)

VXLAN_PORT = 4789
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_ICMP_ERRORS = (3, 4, 5, 11, 12)
_ICMP6_ERRORS = (1, 2, 3, 4)
_IPV6_EXT = (0, 43, 44, 60, 51, 135, 139, 140)
_MAX_DEPTH = 4  # nested tunnels walked before giving up (a crafted loop must not recurse forever)

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_eth = struct.Struct("!6s6sH").unpack_from
_ip4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_ip6 = struct.Struct("!IHBB16s16s").unpack_from
_tcp = struct.Struct("!HHIIBBH").unpack_from
_udp = struct.Struct("!HHH").unpack_from
_icmp_echo = struct.Struct("!HH").unpack_from
_arp = struct.Struct("!HHBBH").unpack_from
#: Ethernet + IPv4 (addresses as integers: cheap dict keys for the cache) + the first 16
#: bytes of TCP (or UDP and 8 bytes after it): the fast path's one unpack; 50 bytes (54 tagged)
_fast4 = struct.Struct("!6s6sHBBHHHBB2xIIHHIIBBH").unpack_from
#: the same after the 802.1Q tag's TCI, from offset 14
_fast4_vlan = struct.Struct("!HHBBHHHBB2xIIHHIIBBH").unpack_from
#: IPv6 + the first 16 bytes of TCP (or UDP), from the end of the link header; 56 bytes
_fast6 = struct.Struct("!IHBB16s16sHHIIBBH").unpack_from
_ntoa = socket.inet_ntoa
_ntop = socket.inet_ntop
_AF6 = socket.AF_INET6
_pack_u32 = struct.Struct("!I").pack

_v6_cache: dict[bytes, str] = {}
_v4_cache: dict[int, str] = {}


#: addresses remembered; the cache is emptied when full (a busy link's working set of
#: 50k flows is ~100k addresses: a smaller cache would be emptied again and again)
_V4_CACHE_SIZE = 1 << 17


def _v4(addr: int) -> str:
    """Dotted quad of an IPv4 address given as an integer, remembered (hosts repeat)."""
    if len(_v4_cache) >= _V4_CACHE_SIZE:
        _v4_cache.clear()
    s = _v4_cache[addr] = _ntoa(_pack_u32(addr))
    return s


def _v6(raw: bytes) -> str:
    s = _v6_cache.get(raw)
    if s is None:
        if len(_v6_cache) > 65536:
            _v6_cache.clear()
        s = _v6_cache[raw] = _ntop(_AF6, raw)
    return s


def parse_python(data: bytes, linktype: int = LINKTYPE_ETHERNET, ts: float = 0.0,
                 wire_len: int | None = None, iface: int = 0) -> ParsedPacket:
    """Decode one frame. Never raises; see ``ParsedPacket.malformed``.

    :func:`parse` is this function, or its fast path compiled (``capture/_cparse.pyx``) when
    that is built."""
    n = len(data)
    if wire_len is None:
        wire_len = n
    if linktype == LINKTYPE_ETHERNET and n >= 54:
        # Fast path for the bulk of traffic: Ethernet (at most one VLAN tag), an IPv4 header
        # without options that is not a fragment or an IPv6 header without extension headers,
        # TCP or UDP, all within the frame. One or two unpacks read the headers; the record is built in one constructor call with exactly
        # what the general path would fill in (tests compare the two on every capture).
        # Anything else takes the general path.
        (dst, src, etype, vihl, tos, total, ident, frag, ttl, proto, s4, d4, sport, dport, seq,
         ack, doff, flags, win) = _fast4(data, 0)
        off = 14
        vlans: tuple[int, ...] = ()
        if etype == 0x8100:
            (tci, etype, vihl, tos, total, ident, frag, ttl, proto, s4, d4, sport, dport, seq,
             ack, doff, flags, win) = _fast4_vlan(data, 14)
            vlans = (tci & 0x0FFF,)
            off = 18
        if etype == ETH_IPV4 and vihl == 0x45 and not frag & 0x3FFF:
            end = off + total
            l4 = off + 20
            if end <= n and total >= 20:
                if proto == PROTO_TCP:
                    hlen = (doff >> 4) * 4
                    if 20 <= hlen <= end - l4:
                        a = _v4_cache.get(s4)
                        b = _v4_cache.get(d4)
                        return ParsedPacket(
                            ts, wire_len, n, 1, iface, src, dst, vlans, (), ETH_IPV4, None, 4,
                            a if a is not None else _v4(s4), b if b is not None else _v4(d4),
                            ttl, ident, tos >> 2, tos & 3, frag & 0x4000 != 0, False, 0, False,
                            (), PROTO_TCP, total, sport, dport, flags | ((doff & 1) << 8), seq,
                            ack, win, _tcp_opts(data, l4 + 20, l4 + hlen) if hlen > 20 else None,
                            -1, -1, -1, -1, None, l4 + hlen, end - l4 - hlen, data)
                elif proto == PROTO_UDP and sport != VXLAN_PORT and dport != VXLAN_PORT and \
                        end - l4 >= 8:
                    ulen = seq >> 16  # the UDP length field sits where TCP's sequence begins
                    a = _v4_cache.get(s4)
                    b = _v4_cache.get(d4)
                    return ParsedPacket(
                        ts, wire_len, n, 1, iface, src, dst, vlans, (), ETH_IPV4, None, 4,
                        a if a is not None else _v4(s4), b if b is not None else _v4(d4),
                        ttl, ident, tos >> 2, tos & 3, frag & 0x4000 != 0, False, 0, False, (),
                        PROTO_UDP, total, sport, dport, 0, 0, 0, 0, None, -1, -1, -1, -1, None,
                        l4 + 8, ulen - 8 if 8 <= ulen <= end - l4 else end - l4 - 8, data)
        elif etype == ETH_IPV6 and n >= off + 56:
            # IPv6 without extension headers, the payload length within the frame
            vtcfl, plen, proto, hlim, s6, d6, sport, dport, seq, ack, doff, flags, win = \
                _fast6(data, off)
            l4 = off + 40
            end = l4 + plen
            if vtcfl >> 28 == 6 and plen and end <= n:
                tclass = (vtcfl >> 20) & 0xFF
                if proto == PROTO_TCP:
                    hlen = (doff >> 4) * 4
                    if 20 <= hlen <= plen:
                        a = _v6_cache.get(s6)
                        b = _v6_cache.get(d6)
                        return ParsedPacket(
                            ts, wire_len, n, 1, iface, src, dst, vlans, (), ETH_IPV6, None, 6,
                            a if a is not None else _v6(s6), b if b is not None else _v6(d6),
                            hlim, 0, tclass >> 2, tclass & 3, False, False, 0, False, (),
                            PROTO_TCP, plen + 40, sport, dport, flags | ((doff & 1) << 8), seq,
                            ack, win, _tcp_opts(data, l4 + 20, l4 + hlen) if hlen > 20 else None,
                            -1, -1, -1, -1, None, l4 + hlen, plen - hlen, data)
                elif proto == PROTO_UDP and sport != VXLAN_PORT and dport != VXLAN_PORT and \
                        plen >= 8:
                    ulen = seq >> 16
                    a = _v6_cache.get(s6)
                    b = _v6_cache.get(d6)
                    return ParsedPacket(
                        ts, wire_len, n, 1, iface, src, dst, vlans, (), ETH_IPV6, None, 6,
                        a if a is not None else _v6(s6), b if b is not None else _v6(d6),
                        hlim, 0, tclass >> 2, tclass & 3, False, False, 0, False, (),
                        PROTO_UDP, plen + 40, sport, dport, 0, 0, 0, 0, None, -1, -1, -1, -1,
                        None, l4 + 8, ulen - 8 if 8 <= ulen <= plen else plen - 8, data)
    return parse_general(data, linktype, ts, wire_len, iface)


def parse_general(data: bytes, linktype: int = LINKTYPE_ETHERNET, ts: float = 0.0,
                  wire_len: int | None = None, iface: int = 0) -> ParsedPacket:
    """:func:`parse` without its fast path: every link type, tunnel and damaged frame."""
    n = len(data)
    pkt = ParsedPacket(ts, n if wire_len is None else wire_len, n, linktype, iface)
    pkt.data = data
    try:
        if linktype == LINKTYPE_ETHERNET:
            _ethernet(pkt, data, 0, 0)
        elif linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                pkt.malformed = "truncated SLL header"
            else:
                _after_ethertype(pkt, data, 16, _u16(data, 14)[0], 0)
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                pkt.malformed = "truncated SLL2 header"
            else:
                _after_ethertype(pkt, data, 20, _u16(data, 0)[0], 0)
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW_BSD,
                          LINKTYPE_RAW_OPENBSD):
            _ip_by_version(pkt, data, 0, n, 0)
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                pkt.malformed = "truncated loopback header"
            else:
                _ip_by_version(pkt, data, 4, n, 0)
        else:
            pkt.malformed = f"unsupported link type {linktype}"
    except (struct.error, IndexError, ValueError, OSError) as exc:
        # A length check was missed somewhere: keep what was read, never crash the pipeline.
        if not pkt.malformed:
            pkt.malformed = f"truncated ({type(exc).__name__})"
    return pkt


def _ethernet(pkt: ParsedPacket, data: bytes, off: int, depth: int) -> None:
    if len(data) - off < 14:
        pkt.malformed = "truncated Ethernet header"
        return
    dst, src, etype = _eth(data, off)
    pkt.dst_mac = dst
    pkt.src_mac = src
    off += 14
    if etype <= 1500:
        # 802.3 length field: LLC/SNAP frames (STP and friends) carry no IP.
        pkt.ethertype = 0
        return
    _after_ethertype(pkt, data, off, etype, depth)


def _after_ethertype(pkt: ParsedPacket, data: bytes, off: int, etype: int, depth: int) -> None:
    n = len(data)
    if etype in _VLAN_TYPES:
        vlans = []
        while etype in _VLAN_TYPES:
            if n - off < 4:
                pkt.vlan_ids = tuple(vlans)
                pkt.malformed = "truncated VLAN tag"
                return
            tci, etype = struct.unpack_from("!HH", data, off)
            vlans.append(tci & 0x0FFF)
            off += 4
        pkt.vlan_ids = tuple(vlans)
    pkt.ethertype = etype
    if etype == ETH_IPV4:
        _ipv4(pkt, data, off, depth)
    elif etype == ETH_IPV6:
        _ipv6(pkt, data, off, depth)
    elif etype == ETH_ARP:
        _arp_body(pkt, data, off)
    elif etype in (ETH_MPLS, ETH_MPLS_MC):
        _mpls(pkt, data, off, depth)


def _mpls(pkt: ParsedPacket, data: bytes, off: int, depth: int) -> None:
    n = len(data)
    labels = []
    while True:
        if n - off < 4:
            pkt.mpls_labels = tuple(labels)
            pkt.malformed = "truncated MPLS label"
            return
        word = _u32(data, off)[0]
        labels.append(word >> 12)
        off += 4
        if word & 0x100 or len(labels) > 16:
            break
    pkt.mpls_labels = tuple(labels)
    if off >= n:
        return
    first = data[off] >> 4
    if first in (4, 6):
        _ip_by_version(pkt, data, off, n, depth)
    elif first == 0 and n - off >= 18:
        # Ethernet pseudowire with a control word (RFC 4385).
        _ethernet(pkt, data, off + 4, depth)


def _ip_by_version(pkt: ParsedPacket, data: bytes, off: int, end: int, depth: int) -> None:
    if off >= len(data):
        pkt.malformed = "no IP header"
        return
    version = data[off] >> 4
    if version == 4:
        pkt.ethertype = ETH_IPV4
        _ipv4(pkt, data, off, depth)
    elif version == 6:
        pkt.ethertype = ETH_IPV6
        _ipv6(pkt, data, off, depth)
    else:
        pkt.malformed = f"unknown IP version {version}"


def _ipv4(pkt: ParsedPacket, data: bytes, off: int, depth: int) -> None:
    n = len(data)
    pkt.ip_version = 4
    if n - off < 20:
        pkt.malformed = "truncated IPv4 header"
        return
    vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _ip4(data, off)
    ihl = (vihl & 0x0F) * 4
    pkt.src_ip = _ntoa(src)
    pkt.dst_ip = _ntoa(dst)
    pkt.ttl = ttl
    pkt.ip_id = ident
    pkt.dscp = tos >> 2
    pkt.ecn = tos & 3
    pkt.proto = proto
    pkt.ip_len = total
    if vihl >> 4 != 4:
        pkt.malformed = f"IP version {vihl >> 4} in an IPv4 header"
        return
    if ihl < 20:
        pkt.malformed = f"bad IPv4 header length {ihl}"
        return
    if total < ihl:
        pkt.malformed = f"bad IPv4 total length {total}"
        return
    if n - off < ihl:
        pkt.malformed = "truncated IPv4 options"
        return
    end = off + total
    if end > n:
        # Captured short (snaplen) is normal; a frame shorter on the wire than the IP header
        # says is a broken header.
        if pkt.wire_len <= n:
            pkt.malformed = f"IPv4 total length {total} exceeds frame"
        end = n
    pkt.df = bool(frag & 0x4000)
    mf = bool(frag & 0x2000)
    foff = (frag & 0x1FFF) * 8
    pkt.more_fragments = mf
    pkt.frag_offset = foff
    l4 = off + ihl
    if mf or foff:
        pkt.is_fragment = True
        if foff:
            pkt.payload_offset = l4
            pkt.payload_len = end - l4
            return
    _transport(pkt, data, l4, end, proto, depth)


def _ipv6(pkt: ParsedPacket, data: bytes, off: int, depth: int) -> None:
    n = len(data)
    pkt.ip_version = 6
    if n - off < 40:
        pkt.malformed = "truncated IPv6 header"
        return
    vtcfl, plen, nxt, hlim, src, dst = _ip6(data, off)
    pkt.src_ip = _v6(src)
    pkt.dst_ip = _v6(dst)
    pkt.ttl = hlim
    tclass = (vtcfl >> 20) & 0xFF
    pkt.dscp = tclass >> 2
    pkt.ecn = tclass & 3
    pkt.ip_len = plen + 40
    end = off + 40 + plen
    if end > n:
        if pkt.wire_len <= n and plen:
            pkt.malformed = f"IPv6 payload length {plen} exceeds frame"
        end = n
    elif plen == 0:
        end = n  # jumbogram or unset: take what was captured
    cur = off + 40
    exts: list[int] = []
    while nxt in _IPV6_EXT:
        if end - cur < 8:
            pkt.ext_headers = tuple(exts)
            pkt.proto = nxt
            pkt.malformed = "truncated IPv6 extension header"
            return
        exts.append(nxt)
        if nxt == 44:
            fo = _u16(data, cur + 2)[0]
            pkt.ip_id = _u32(data, cur + 4)[0]
            pkt.frag_offset = fo & 0xFFF8
            pkt.more_fragments = bool(fo & 1)
            pkt.is_fragment = True
            nxt = data[cur]
            cur += 8
            if pkt.frag_offset:
                pkt.ext_headers = tuple(exts)
                pkt.proto = nxt
                pkt.payload_offset = cur
                pkt.payload_len = end - cur
                return
            continue
        if nxt == 51:
            hlen = (data[cur + 1] + 2) * 4
        else:
            hlen = (data[cur + 1] + 1) * 8
        nxt = data[cur]
        cur += hlen
        if len(exts) > 16:
            break
    pkt.ext_headers = tuple(exts)
    pkt.proto = nxt
    if cur > end:
        pkt.malformed = "truncated IPv6 extension header"
        return
    _transport(pkt, data, cur, end, nxt, depth)


def _transport(pkt: ParsedPacket, data: bytes, off: int, end: int, proto: int, depth: int) -> None:
    avail = end - off
    if proto == PROTO_TCP:
        if avail < 20:
            pkt.malformed = "truncated TCP header"
            return
        sport, dport, seq, ack, doff, flags, win = _tcp(data, off)
        pkt.sport = sport
        pkt.dport = dport
        pkt.seq = seq
        pkt.ack = ack
        pkt.tcp_flags = flags | ((doff & 1) << 8)
        pkt.window = win
        hlen = (doff >> 4) * 4
        if hlen < 20:
            pkt.malformed = f"bad TCP header length {hlen}"
            return
        if hlen > avail:
            pkt.malformed = "truncated TCP options"
            return
        if hlen > 20:
            pkt.tcp_options = _tcp_opts(data, off + 20, off + hlen)
        pkt.payload_offset = off + hlen
        pkt.payload_len = end - off - hlen
    elif proto == PROTO_UDP:
        if avail < 8:
            pkt.malformed = "truncated UDP header"
            return
        sport, dport, ulen = _udp(data, off)
        pkt.sport = sport
        pkt.dport = dport
        pkt.payload_offset = off + 8
        if 8 <= ulen <= avail:
            pkt.payload_len = ulen - 8
        else:
            pkt.payload_len = avail - 8
        if (dport == VXLAN_PORT or sport == VXLAN_PORT) and depth < _MAX_DEPTH and \
                pkt.payload_len >= 8 + 14 and data[off + 8] & 0x08:
            inner = ParsedPacket(pkt.ts, pkt.wire_len, pkt.cap_len, pkt.linktype, pkt.iface)
            inner.data = data
            _ethernet(inner, data, off + 16, depth + 1)
            pkt.inner = inner
            pkt.tunnel = "vxlan"
    elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        if avail < 4:
            pkt.malformed = "truncated ICMP header"
            return
        t = data[off]
        pkt.icmp_type = t
        pkt.icmp_code = data[off + 1]
        pkt.payload_offset = off + 8 if avail >= 8 else off + avail
        pkt.payload_len = max(0, avail - 8)
        if avail >= 8:
            if proto == PROTO_ICMP:
                if t in (0, 8, 13, 14):
                    pkt.icmp_id, pkt.icmp_seq = _icmp_echo(data, off + 4)
                elif t in _ICMP_ERRORS:
                    pkt.quoted = _quoted(data, off + 8, end, 4)
            else:
                if t in (128, 129):
                    pkt.icmp_id, pkt.icmp_seq = _icmp_echo(data, off + 4)
                elif t in _ICMP6_ERRORS:
                    pkt.quoted = _quoted(data, off + 8, end, 6)
    elif proto == PROTO_SCTP:
        if avail < 12:
            pkt.malformed = "truncated SCTP header"
            return
        pkt.sport, pkt.dport = _icmp_echo(data, off)
        pkt.payload_offset = off + 12
        pkt.payload_len = avail - 12
    else:
        pkt.payload_offset = off
        pkt.payload_len = avail
        if depth >= _MAX_DEPTH:
            return
        if proto == PROTO_IPIP or proto == PROTO_IPV6:
            inner = ParsedPacket(pkt.ts, pkt.wire_len, pkt.cap_len, pkt.linktype, pkt.iface)
            inner.data = data
            _ip_by_version(inner, data, off, end, depth + 1)
            pkt.inner = inner
            pkt.tunnel = "ipip" if proto == PROTO_IPIP else "6in4"
        elif proto == PROTO_GRE:
            _gre(pkt, data, off, end, depth)


def _gre(pkt: ParsedPacket, data: bytes, off: int, end: int, depth: int) -> None:
    if end - off < 4:
        pkt.malformed = "truncated GRE header"
        return
    flags, ptype = struct.unpack_from("!HH", data, off)
    hlen = 4
    if flags & 0x8000:
        hlen += 4  # checksum + reserved
    if flags & 0x2000:
        hlen += 4  # key
    if flags & 0x1000:
        hlen += 4  # sequence
    if flags & 0x07 != 0:
        return  # GRE version 1 (PPTP) carries PPP, not walked
    cur = off + hlen
    if cur > end:
        pkt.malformed = "truncated GRE header"
        return
    inner = ParsedPacket(pkt.ts, pkt.wire_len, pkt.cap_len, pkt.linktype, pkt.iface)
    inner.data = data
    if ptype == 0x6558:
        _ethernet(inner, data, cur, depth + 1)
    elif ptype in (ETH_IPV4, ETH_IPV6, ETH_MPLS):
        _after_ethertype(inner, data, cur, ptype, depth + 1)
    else:
        return
    pkt.inner = inner
    pkt.tunnel = "gre"


def _tcp_opts(data: bytes, off: int, end: int) -> TcpOptions:
    o = TcpOptions()
    order = []
    while off < end:
        kind = data[off]
        if kind == 0:
            order.append("E")
            break
        if kind == 1:
            order.append("N")
            off += 1
            continue
        if off + 1 >= end:
            break
        olen = data[off + 1]
        if olen < 2 or off + olen > end:
            order.append("?")
            break
        if kind == 2 and olen == 4:
            o.mss = _u16(data, off + 2)[0]
            order.append("M")
        elif kind == 3 and olen == 3:
            o.wscale = data[off + 2]
            order.append("W")
        elif kind == 4:
            o.sack_permitted = True
            order.append("S")
        elif kind == 8 and olen == 10:
            o.ts_val, o.ts_ecr = struct.unpack_from("!II", data, off + 2)
            order.append("T")
        elif kind == 5:
            blocks = []
            for b in range(off + 2, off + olen - 7, 8):
                blocks.append(struct.unpack_from("!II", data, b))
            o.sack_blocks = tuple(blocks)
            order.append("K")
        else:
            order.append(f"?{kind}")
        off += olen
    o.order = ",".join(order)
    return o


def _quoted(data: bytes, off: int, end: int, version: int) -> QuotedHeader | None:
    """The original datagram's header inside an ICMP error (RFC 792: IP header + 8 bytes)."""
    avail = end - off
    if version == 4:
        if avail < 20 or data[off] >> 4 != 4:
            return None
        vihl, _tos, _total, ident, _frag, ttl, proto, _c, src, dst = _ip4(data, off)
        q = QuotedHeader(_ntoa(src), _ntoa(dst), proto, ttl, ident)
        l4 = off + (vihl & 0x0F) * 4
    else:
        if avail < 40 or data[off] >> 4 != 6:
            return None
        _v, _plen, proto, hlim, src, dst = _ip6(data, off)
        q = QuotedHeader(_v6(src), _v6(dst), proto, hlim, 0)
        l4 = off + 40
    if end - l4 >= 8:
        if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            q.sport, q.dport = _icmp_echo(data, l4)
            if proto == PROTO_TCP:
                q.seq = _u32(data, l4 + 4)[0]
        elif proto in (PROTO_ICMP, PROTO_ICMPV6):
            q.icmp_id, q.icmp_seq = _icmp_echo(data, l4 + 4)
    elif end - l4 >= 4 and proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        q.sport, q.dport = _icmp_echo(data, l4)
    return q


def _arp_body(pkt: ParsedPacket, data: bytes, off: int) -> None:
    if len(data) - off < 8:
        pkt.malformed = "truncated ARP header"
        return
    _htype, ptype, hlen, plen, op = _arp(data, off)
    body = off + 8
    if ptype != ETH_IPV4 or plen != 4 or len(data) - body < 2 * (hlen + plen):
        if len(data) - body < 2 * (hlen + plen):
            pkt.malformed = "truncated ARP body"
        return
    sha = data[body:body + hlen]
    spa = _ntoa(data[body + hlen:body + hlen + 4])
    tha = data[body + hlen + 4:body + 2 * hlen + 4]
    tpa = _ntoa(data[body + 2 * hlen + 4:body + 2 * hlen + 8])
    pkt.arp = ArpInfo(op, sha, spa, tha, tpa)


def _compiled() -> Callable[..., ParsedPacket] | None:
    """The compiled fast path bound to this module's helpers, or None when it is not built
    (``run.sh`` builds it where a C compiler is present)."""
    try:
        from capture import _cparse
    except ImportError:
        return None
    _cparse.bind(ParsedPacket, parse_general, parse_python, TcpOptions, _v4, _v6, _v4_cache,
                 _v6_cache)
    return _cparse.parse


#: the parse every caller uses: the compiled fast path when built (decoding exactly as
#: :func:`parse_python`, the tests compare the two), else :func:`parse_python`
parse: Callable[..., ParsedPacket] = _compiled() or parse_python
#: which of the two :func:`parse` is ("compiled" or "python"), for the log and ``--version``
PARSER_BUILD = "python" if parse is parse_python else "compiled"
