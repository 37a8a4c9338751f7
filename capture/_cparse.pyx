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
    cdef Py_ssize_t off, total, l4, end, hlen, ulen, plen
    cdef unsigned int etype, frag, tos, proto, sport, dport, tclass, doff, icmp_type
    cdef bint echo
    cdef object vlans = _EMPTY
    if wire_len is None:
        wire_len = n
    if linktype == 1 and n >= 54:
        etype = _u16(p + 12)
        off = 14
        if etype == 0x8100:
            # the Python fast path reads 40 bytes from offset 14 (the tag's TCI onwards)
            etype = _u16(p + 16)
            vlans = (_u16(p + 14) & 0x0FFF,)
            off = 18
        if etype == 0x0800:
            frag = _u16(p + off + 6)
            if p[off] == 0x45 and not frag & 0x3FFF:
                total = _u16(p + off + 2)
                end = off + total
                l4 = off + 20
                if end <= n and total >= 20 and l4 + 16 <= n:
                    proto = p[off + 9]
                    tos = p[off + 1]
                    if proto == 6:
                        doff = p[l4 + 12]
                        hlen = (doff >> 4) * 4
                        if 20 <= hlen <= end - l4:
                            return _PP(
                                ts, wire_len, n, 1, iface, data[6:12], data[0:6], vlans, _EMPTY,
                                0x0800, None, 4, _addr4(_u32(p + off + 12)),
                                _addr4(_u32(p + off + 16)), p[off + 8], _u16(p + off + 4),
                                tos >> 2, tos & 3, frag & 0x4000 != 0, False, 0, False, _EMPTY, 6,
                                total, _u16(p + l4), _u16(p + l4 + 2),
                                p[l4 + 13] | ((doff & 1) << 8), _u32(p + l4 + 4),
                                _u32(p + l4 + 8), _u16(p + l4 + 14),
                                _tcp_opts(data, l4 + 20, l4 + hlen) if hlen > 20 else None,
                                -1, -1, -1, -1, None, l4 + hlen, end - l4 - hlen, data)
                    elif proto == 17 and end - l4 >= 8:
                        sport = _u16(p + l4)
                        dport = _u16(p + l4 + 2)
                        if sport != 4789 and dport != 4789:  # VXLAN: the general path
                            ulen = _u16(p + l4 + 4)
                            return _PP(
                                ts, wire_len, n, 1, iface, data[6:12], data[0:6], vlans, _EMPTY,
                                0x0800, None, 4, _addr4(_u32(p + off + 12)),
                                _addr4(_u32(p + off + 16)), p[off + 8], _u16(p + off + 4),
                                tos >> 2, tos & 3, frag & 0x4000 != 0, False, 0, False, _EMPTY,
                                17, total, sport, dport, 0, 0, 0, 0, None, -1, -1, -1, -1, None,
                                l4 + 8, ulen - 8 if 8 <= ulen <= end - l4 else end - l4 - 8,
                                data)
                    elif proto == 1 and end - l4 >= 8:
                        icmp_type = p[l4]
                        if not _ICMP_ERROR[icmp_type]:  # errors quote a header: the general path
                            echo = _ICMP_ECHO[icmp_type]
                            return _PP(
                                ts, wire_len, n, 1, iface, data[6:12], data[0:6], vlans, _EMPTY,
                                0x0800, None, 4, _addr4(_u32(p + off + 12)),
                                _addr4(_u32(p + off + 16)), p[off + 8], _u16(p + off + 4),
                                tos >> 2, tos & 3, frag & 0x4000 != 0, False, 0, False, _EMPTY,
                                1, total, 0, 0, 0, 0, 0, 0, None, icmp_type, p[l4 + 1],
                                _u16(p + l4 + 4) if echo else -1,
                                _u16(p + l4 + 6) if echo else -1, None, l4 + 8, end - l4 - 8,
                                data)
        elif etype == 0x86DD and n >= off + 56:
            plen = _u16(p + off + 4)
            l4 = off + 40
            end = l4 + plen
            if p[off] >> 4 == 6 and plen and end <= n:
                proto = p[off + 6]
                tclass = (_u32(p + off) >> 20) & 0xFF
                if proto == 6:
                    doff = p[l4 + 12]
                    hlen = (doff >> 4) * 4
                    if 20 <= hlen <= plen:
                        return _PP(
                            ts, wire_len, n, 1, iface, data[6:12], data[0:6], vlans, _EMPTY,
                            0x86DD, None, 6, _addr6(data[off + 8:off + 24]),
                            _addr6(data[off + 24:off + 40]), p[off + 7], 0, tclass >> 2,
                            tclass & 3, False, False, 0, False, _EMPTY, 6, plen + 40,
                            _u16(p + l4), _u16(p + l4 + 2), p[l4 + 13] | ((doff & 1) << 8),
                            _u32(p + l4 + 4), _u32(p + l4 + 8), _u16(p + l4 + 14),
                            _tcp_opts(data, l4 + 20, l4 + hlen) if hlen > 20 else None,
                            -1, -1, -1, -1, None, l4 + hlen, plen - hlen, data)
                elif proto == 17 and plen >= 8:
                    sport = _u16(p + l4)
                    dport = _u16(p + l4 + 2)
                    if sport != 4789 and dport != 4789:
                        ulen = _u16(p + l4 + 4)
                        return _PP(
                            ts, wire_len, n, 1, iface, data[6:12], data[0:6], vlans, _EMPTY,
                            0x86DD, None, 6, _addr6(data[off + 8:off + 24]),
                            _addr6(data[off + 24:off + 40]), p[off + 7], 0, tclass >> 2,
                            tclass & 3, False, False, 0, False, _EMPTY, 17, plen + 40, sport,
                            dport, 0, 0, 0, 0, None, -1, -1, -1, -1, None, l4 + 8,
                            ulen - 8 if 8 <= ulen <= plen else plen - 8, data)
                elif proto == 58 and plen >= 8:
                    icmp_type = p[l4]
                    if not 1 <= icmp_type <= 4:  # errors quote a header: the general path
                        echo = icmp_type == 128 or icmp_type == 129
                        return _PP(
                            ts, wire_len, n, 1, iface, data[6:12], data[0:6], vlans, _EMPTY,
                            0x86DD, None, 6, _addr6(data[off + 8:off + 24]),
                            _addr6(data[off + 24:off + 40]), p[off + 7], 0, tclass >> 2,
                            tclass & 3, False, False, 0, False, _EMPTY, 58, plen + 40, 0, 0, 0,
                            0, 0, 0, None, icmp_type, p[l4 + 1],
                            _u16(p + l4 + 4) if echo else -1,
                            _u16(p + l4 + 6) if echo else -1, None, l4 + 8, plen - 8, data)
    return _general(data, linktype, ts, wire_len, iface)
