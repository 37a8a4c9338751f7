# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The parser's fast path, compiled: :func:`capture.parser.parse_python`'s first part in C.

The same records as the Python parser (the tests hold it to the Python fast path and to the
general path on every capture, on damaged frames and on random TCP option areas) for what the
Python fast path takes -- plain Ethernet (at most one 802.1Q tag), IPv4 without options and
not a fragment or IPv6 without extension headers, TCP or UDP, all within the frame -- and
for ICMP and ICMPv6 messages that quote no header. Anything else goes to the general path,
which stays in Python.

Why compiled: in the interpreter the fast path is one struct unpack and one 45-argument
constructor call, and on this machine pushing 45 arguments alone costs ~350 ns; here the
header fields are read as C integers and the record is built by one C-level call (bench-1m's
frames: 1.2-2.1 us against 2.5-4.5; TCP options ~0.1 us against ~1.3). ``run.sh`` builds it
when a C compiler is present; without one :mod:`capture.parser` runs the Python fast path.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII

# Bound by capture.parser at import (bind): the record types, the general path, the Python fast
# path (for buffers that are not bytes) and the address helpers and caches, so both fast paths
# share one cache.
cdef object _PP = None
cdef object _general = None
cdef object _python = None
cdef object _TcpOptions = None
cdef object _v4 = None
cdef object _v6 = None
cdef dict _v4_cache = {}
cdef dict _v6_cache = {}
cdef tuple _EMPTY = ()
# ICMP (v4) types by what the general path reads after the first 4 bytes: echo, timestamp and
# their replies an id and a sequence number; errors (unreachable, source quench, redirect,
# time exceeded, parameter problem) the quoted header
cdef bint _ICMP_ECHO[256]
cdef bint _ICMP_ERROR[256]
for _t in range(256):
    _ICMP_ECHO[_t] = _t in (0, 8, 13, 14)
    _ICMP_ERROR[_t] = _t in (3, 4, 5, 11, 12)


def bind(pp, general, python, tcp_options, v4, v6, dict v4_cache, dict v6_cache):
    global _PP, _general, _python, _TcpOptions, _v4, _v6, _v4_cache, _v6_cache
    _PP, _general, _python, _TcpOptions = pp, general, python, tcp_options
    _v4, _v6, _v4_cache, _v6_cache = v4, v6, v4_cache, v6_cache


cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline unsigned int _u32(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline Py_ssize_t _put(char* order, Py_ssize_t n, char c) noexcept:
    """Append an option's letter to the comma-separated layout."""
    if n:
        order[n] = b','
        n += 1
    order[n] = c
    return n + 1


cdef object _tcp_opts(bytes data, Py_ssize_t off, Py_ssize_t end):
    """The TCP options between ``off`` and ``end``, decoded as ``capture.parser._tcp_opts``
    does (real Linux traffic has timestamps on every segment: ~1.3 us a packet in Python)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef char order[256]  # at most 40 option bytes: 40 entries of at most 5 characters
    cdef Py_ssize_t n = 0, b
    cdef unsigned int kind, olen
    cdef object mss = None, wscale = None, ts_val = None, ts_ecr = None
    cdef object blocks = _EMPTY
    cdef bint sack_permitted = False
    cdef list sack
    while off < end:
        kind = p[off]
        if kind == 0:
            n = _put(order, n, b'E')
            break
        if kind == 1:
            n = _put(order, n, b'N')
            off += 1
            continue
        if off + 1 >= end:
            break
        olen = p[off + 1]
        if olen < 2 or off + olen > end:
            n = _put(order, n, b'?')
            break
        if kind == 2 and olen == 4:
            mss = _u16(p + off + 2)
            n = _put(order, n, b'M')
        elif kind == 3 and olen == 3:
            wscale = p[off + 2]
            n = _put(order, n, b'W')
        elif kind == 4:
            sack_permitted = True
            n = _put(order, n, b'S')
        elif kind == 8 and olen == 10:
            ts_val = _u32(p + off + 2)
            ts_ecr = _u32(p + off + 6)
            n = _put(order, n, b'T')
        elif kind == 5:
            sack = []
            for b in range(off + 2, off + olen - 7, 8):
                sack.append((_u32(p + b), _u32(p + b + 4)))
            blocks = tuple(sack)
            n = _put(order, n, b'K')
        else:  # ?<kind>, the kind in decimal
            n = _put(order, n, b'?')
            if kind >= 100:
                order[n] = <char>(48 + kind // 100)
                n += 1
            if kind >= 10:
                order[n] = <char>(48 + kind // 10 % 10)
                n += 1
            order[n] = <char>(48 + kind % 10)
            n += 1
        off += olen
    return _TcpOptions(mss, wscale, sack_permitted, blocks, ts_val, ts_ecr,
                       PyUnicode_DecodeASCII(order, n, NULL) if n else "")


cdef inline object _addr4(unsigned int raw):
    cdef object a = _v4_cache.get(raw)
    return a if a is not None else _v4(raw)


cdef inline object _addr6(bytes raw):
    cdef object a = _v6_cache.get(raw)
    return a if a is not None else _v6(raw)


def parse(object data, int linktype=1, object ts=0.0, object wire_len=None, object iface=0):
    """Decode one frame. Never raises; see ``ParsedPacket.malformed``."""
    if type(data) is not bytes:
        return _python(data, linktype, ts, wire_len, iface)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t off, l4, end, avail, hlen, ulen, poff, plen
    cdef unsigned int etype, proto, tos, ttl, ident = 0, ip_len, version
    cdef unsigned int sport = 0, dport = 0, flags = 0, seq = 0, ack = 0, window = 0
    cdef int icmp_type = -1, icmp_code = -1, icmp_id = -1, icmp_seq = -1
    cdef bint df = False
    cdef object vlans = _EMPTY
    cdef object options = None
    if linktype != 1 or n < 54:
        return _general(data, linktype, ts, wire_len, iface)
    # --- link and network layer: the frames the Python fast path takes
    etype = _u16(p + 12)
    off = 14
    if etype == 0x8100:
        # the Python fast path reads 40 bytes from offset 14 (the tag's TCI onwards)
        etype = _u16(p + 16)
        vlans = (_u16(p + 14) & 0x0FFF,)
        off = 18
    if etype == 0x0800:
        # IPv4 without options, not a fragment, within the frame
        if p[off] != 0x45 or _u16(p + off + 6) & 0x3FFF:
            return _general(data, linktype, ts, wire_len, iface)
        ip_len = _u16(p + off + 2)
        l4 = off + 20
        end = off + ip_len
        if end > n or ip_len < 20:
            return _general(data, linktype, ts, wire_len, iface)
        version = 4
        proto = p[off + 9]
        tos = p[off + 1]
        ttl = p[off + 8]
        ident = _u16(p + off + 4)
        df = _u16(p + off + 6) & 0x4000 != 0
    elif etype == 0x86DD and n >= off + 56:
        # IPv6 without extension headers, the payload within the frame
        l4 = off + 40
        end = l4 + _u16(p + off + 4)
        if p[off] >> 4 != 6 or end == l4 or end > n:
            return _general(data, linktype, ts, wire_len, iface)
        version = 6
        proto = p[off + 6]
        tos = (_u32(p + off) >> 20) & 0xFF
        ttl = p[off + 7]
        ip_len = end - off
    else:
        return _general(data, linktype, ts, wire_len, iface)
    # --- transport: TCP, UDP (not VXLAN), ICMP that quotes no header; else the general path
    avail = end - l4
    if proto == 6:
        hlen = (p[l4 + 12] >> 4) * 4
        if hlen < 20 or hlen > avail:
            return _general(data, linktype, ts, wire_len, iface)
        sport = _u16(p + l4)
        dport = _u16(p + l4 + 2)
        seq = _u32(p + l4 + 4)
        ack = _u32(p + l4 + 8)
        flags = p[l4 + 13] | ((p[l4 + 12] & 1) << 8)
        window = _u16(p + l4 + 14)
        if hlen > 20:
            options = _tcp_opts(data, l4 + 20, l4 + hlen)
        poff = l4 + hlen
        plen = avail - hlen
    elif proto == 17 and avail >= 8:
        sport = _u16(p + l4)
        dport = _u16(p + l4 + 2)
        if sport == 4789 or dport == 4789:  # VXLAN: the general path walks the tunnel
            return _general(data, linktype, ts, wire_len, iface)
        ulen = _u16(p + l4 + 4)
        poff = l4 + 8
        plen = ulen - 8 if 8 <= ulen <= avail else avail - 8
    elif (proto == 1 and version == 4 or proto == 58 and version == 6) and avail >= 8:
        icmp_type = p[l4]
        if _ICMP_ERROR[icmp_type] if version == 4 else 1 <= icmp_type <= 4:
            return _general(data, linktype, ts, wire_len, iface)  # quotes a header
        icmp_code = p[l4 + 1]
        if _ICMP_ECHO[icmp_type] if version == 4 else icmp_type == 128 or icmp_type == 129:
            icmp_id = _u16(p + l4 + 4)
            icmp_seq = _u16(p + l4 + 6)
        poff = l4 + 8
        plen = avail - 8
    else:
        return _general(data, linktype, ts, wire_len, iface)
    if version == 4:
        src = _addr4(_u32(p + off + 12))
        dst = _addr4(_u32(p + off + 16))
    else:
        src = _addr6(data[off + 8:off + 24])
        dst = _addr6(data[off + 24:off + 40])
    return _PP(
        ts, n if wire_len is None else wire_len, n, 1, iface, data[6:12], data[0:6], vlans,
        _EMPTY, etype, None, version, src, dst, ttl, ident, tos >> 2, tos & 3, df, False, 0,
        False, _EMPTY, proto, ip_len, sport, dport, flags, seq, ack, window, options, icmp_type,
        icmp_code, icmp_id, icmp_seq, None, poff, plen, data)
