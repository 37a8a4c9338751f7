"""TLS ClientHello / ServerHello parsing and the JA3, JA3S and JA4 fingerprints.

Input is handshake bytes: either a TCP stream that starts with TLS records
(:func:`parse_tls_stream`) or bare handshake messages such as QUIC CRYPTO frames carry
(:func:`parse_handshake`). Only the hello messages are read; nothing secret is kept (no
randoms, session ids, key shares or tickets).

Fingerprints follow their references:

* JA3 / JA3S (salesforce/ja3) exactly as tshark 4.0 computes ``tls.handshake.ja3``: GREASE
  values (RFC 8701) are dropped from ciphers, extensions, groups; the version is the legacy
  ClientHello version; an absent point-formats extension leaves its field empty.
* JA4 (FoxIO technical_details/JA4.md): ``t``/``q`` + version + ``d``/``i`` + counts + ALPN
  ``_`` sha256(sorted ciphers)[:12] ``_`` sha256(sorted extensions minus SNI/ALPN ``_`` signature
  algorithms in wire order)[:12].
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_HELLO = 2

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B

#: the largest hello we wait for; real ones are < 2 KB (post-quantum key shares push ~1.8 KB)
MAX_HELLO = 16384

VERSION_NAMES: dict[int, str] = {
    0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
    0x0304: "TLS 1.3", 0xFEFF: "DTLS 1.0", 0xFEFD: "DTLS 1.2", 0xFEFC: "DTLS 1.3",
}
_JA4_VERSIONS: dict[int, str] = {
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
    0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3",
}


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE: 0x0A0A, 0x1A1A, ... 0xFAFA."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass(slots=True)
class ClientHello:
    """What a ClientHello offers (GREASE values kept here; fingerprints drop them)."""

    legacy_version: int
    ciphers: tuple[int, ...]
    #: extension types in wire order
    extensions: tuple[int, ...]
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    supported_versions: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()
    #: "t" for TLS over TCP, "q" when it came inside QUIC
    transport: str = "t"

    @property
    def max_version(self) -> int:
        """Highest version offered: supported_versions when present, else the legacy field."""
        offered = [v for v in self.supported_versions if not is_grease(v)]
        return max(offered) if offered else self.legacy_version

    def ja3_full(self) -> str:
        return ",".join((
            str(self.legacy_version),
            "-".join(str(c) for c in self.ciphers if not is_grease(c)),
            "-".join(str(e) for e in self.extensions if not is_grease(e)),
            "-".join(str(g) for g in self.groups if not is_grease(g)),
            "-".join(str(p) for p in self.point_formats),
        ))

    def ja3(self) -> str:
        return hashlib.md5(self.ja3_full().encode(), usedforsecurity=False).hexdigest()

    def ja4(self) -> str:
        ciphers = [c for c in self.ciphers if not is_grease(c)]
        exts = [e for e in self.extensions if not is_grease(e)]
        version = _JA4_VERSIONS.get(self.max_version, "00")
        sni = "d" if EXT_SERVER_NAME in exts else "i"
        head = (f"{self.transport}{version}{sni}{min(len(ciphers), 99):02d}"
                f"{min(len(exts), 99):02d}{_ja4_alpn(self.alpn)}")
        cipher_hash = _sha12(",".join(sorted(f"{c:04x}" for c in ciphers))) if ciphers \
            else "000000000000"
        ext_list = ",".join(sorted(f"{e:04x}" for e in exts
                                   if e not in (EXT_SERVER_NAME, EXT_ALPN)))
        sigs = ",".join(f"{s:04x}" for s in self.signature_algorithms if not is_grease(s))
        if not ext_list:
            ext_hash = "000000000000"
        else:
            ext_hash = _sha12(f"{ext_list}_{sigs}" if sigs else ext_list)
        return f"{head}_{cipher_hash}_{ext_hash}"


@dataclass(slots=True)
class ServerHello:
    """The server's choice: version, cipher, extensions, ALPN."""

    legacy_version: int
    cipher: int
    extensions: tuple[int, ...]
    #: supported_versions in a TLS 1.3 ServerHello, else 0
    selected_version: int = 0
    alpn: str | None = None

    @property
    def version(self) -> int:
        return self.selected_version or self.legacy_version

    def ja3s_full(self) -> str:
        return ",".join((str(self.legacy_version), str(self.cipher),
                         "-".join(str(e) for e in self.extensions if not is_grease(e))))

    def ja3s(self) -> str:
        return hashlib.md5(self.ja3s_full().encode(), usedforsecurity=False).hexdigest()


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"0x{version:04x}")


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _ja4_alpn(alpn: tuple[str, ...]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    raw = alpn[0].encode("utf-8", errors="surrogateescape")
    if _alnum(raw[0]) and _alnum(raw[-1]):
        return chr(raw[0]) + chr(raw[-1])
    # Non-alphanumeric ends (e.g. a GREASE ALPN): first and last characters of its hex form.
    hx = raw.hex()
    return hx[0] + hx[-1]


def _u16_list(buf: bytes, start: int, end: int) -> tuple[int, ...]:
    return tuple(int.from_bytes(buf[i:i + 2], "big") for i in range(start, end - 1, 2))


class _Truncated(Exception):
    """A length field points past the end of the message: not a well-formed hello."""


def _parse_extensions(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(type, body start, body end) per extension; raises _Truncated on a bad length."""
    out = []
    if pos + 2 > end:
        return out
    total = int.from_bytes(buf[pos:pos + 2], "big")
    pos += 2
    stop = pos + total
    if stop > end:
        raise _Truncated
    while pos + 4 <= stop:
        etype = int.from_bytes(buf[pos:pos + 2], "big")
        elen = int.from_bytes(buf[pos + 2:pos + 4], "big")
        pos += 4
        if pos + elen > stop:
            raise _Truncated
        out.append((etype, pos, pos + elen))
        pos += elen
    return out


def _parse_alpn(buf: bytes, start: int, end: int) -> tuple[str, ...]:
    if start + 2 > end:
        return ()
    pos = start + 2
    stop = min(end, pos + int.from_bytes(buf[start:start + 2], "big"))
    names = []
    while pos < stop:
        n = buf[pos]
        names.append(buf[pos + 1:pos + 1 + n].decode("utf-8", errors="surrogateescape"))
        pos += 1 + n
    return tuple(names)


def _parse_sni(buf: bytes, start: int, end: int) -> str | None:
    pos = start + 2
    while pos + 3 <= end:
        ntype = buf[pos]
        nlen = int.from_bytes(buf[pos + 1:pos + 3], "big")
        if ntype == 0:
            return buf[pos + 3:pos + 3 + nlen].decode("utf-8", errors="replace")
        pos += 3 + nlen
    return None


def _client_hello(buf: bytes, pos: int, end: int, transport: str) -> ClientHello:
    if pos + 35 > end:
        raise _Truncated
    legacy = int.from_bytes(buf[pos:pos + 2], "big")
    pos += 34                                   # version + 32-byte random
    pos += 1 + buf[pos]                         # session id
    if pos + 2 > end:
        raise _Truncated
    clen = int.from_bytes(buf[pos:pos + 2], "big")
    ciphers = _u16_list(buf, pos + 2, pos + 2 + clen)
    pos += 2 + clen
    if pos >= end:
        raise _Truncated
    pos += 1 + buf[pos]                         # compression methods
    if pos > end:
        raise _Truncated
    hello = ClientHello(legacy, ciphers, (), transport=transport)
    exts = _parse_extensions(buf, pos, end)
    hello.extensions = tuple(e[0] for e in exts)
    for etype, s, e in exts:
        if etype == EXT_SERVER_NAME:
            hello.sni = _parse_sni(buf, s, e)
        elif etype == EXT_ALPN:
            hello.alpn = _parse_alpn(buf, s, e)
        elif etype == EXT_SUPPORTED_VERSIONS and s < e:
            hello.supported_versions = _u16_list(buf, s + 1, min(e, s + 1 + buf[s]))
        elif etype == EXT_SUPPORTED_GROUPS and s + 2 <= e:
            hello.groups = _u16_list(buf, s + 2, min(e, s + 2 + int.from_bytes(buf[s:s + 2], "big")))
        elif etype == EXT_EC_POINT_FORMATS and s < e:
            hello.point_formats = tuple(buf[s + 1:min(e, s + 1 + buf[s])])
        elif etype == EXT_SIGNATURE_ALGORITHMS and s + 2 <= e:
            hello.signature_algorithms = _u16_list(
                buf, s + 2, min(e, s + 2 + int.from_bytes(buf[s:s + 2], "big")))
    return hello


def _server_hello(buf: bytes, pos: int, end: int) -> ServerHello:
    if pos + 35 > end:
        raise _Truncated
    legacy = int.from_bytes(buf[pos:pos + 2], "big")
    pos += 34
    pos += 1 + buf[pos]
    if pos + 3 > end:
        raise _Truncated
    cipher = int.from_bytes(buf[pos:pos + 2], "big")
    pos += 3                                    # cipher + compression method
    hello = ServerHello(legacy, cipher, ())
    exts = _parse_extensions(buf, pos, end)
    hello.extensions = tuple(e[0] for e in exts)
    for etype, s, e in exts:
        if etype == EXT_SUPPORTED_VERSIONS and e - s >= 2:
            hello.selected_version = int.from_bytes(buf[s:s + 2], "big")
        elif etype == EXT_ALPN:
            names = _parse_alpn(buf, s, e)
            hello.alpn = names[0] if names else None
    return hello


def parse_handshake(buf: bytes, transport: str = "t") -> ClientHello | ServerHello | None:
    """Parse one hello from handshake-message bytes (type, 24-bit length, body).

    Returns None when the bytes are not a complete, well-formed Client/ServerHello.
    """
    if len(buf) < 4 or buf[0] not in (CLIENT_HELLO, SERVER_HELLO):
        return None
    length = int.from_bytes(buf[1:4], "big")
    if len(buf) < 4 + length:
        return None
    try:
        if buf[0] == CLIENT_HELLO:
            return _client_hello(buf, 4, 4 + length, transport)
        return _server_hello(buf, 4, 4 + length)
    except (_Truncated, IndexError):
        return None


def handshake_length(buf: bytes) -> int | None:
    """Total bytes of the first handshake message in ``buf`` (None until 4 bytes are there)."""
    if len(buf) < 4:
        return None
    return 4 + int.from_bytes(buf[1:4], "big")


def looks_like_tls(buf: bytes) -> bool:
    """A TLS record header: handshake/alert/CCS/app-data with a 3.x version."""
    return len(buf) >= 3 and 20 <= buf[0] <= 23 and buf[1] == 3 and buf[2] <= 4


# Result states for parse_tls_stream.
NEED_MORE = "more"
NOT_HELLO = "no"


def parse_tls_stream(stream: bytes) -> ClientHello | ServerHello | str:
    """Parse the first hello from a TCP stream that begins with TLS records.

    The hello may be split over several records (and those over several segments): the
    handshake bytes of consecutive handshake records are joined. Returns the hello, or
    ``NEED_MORE`` while it is incomplete, or ``NOT_HELLO`` if the stream cannot hold one.
    """
    hs = bytearray()
    pos = 0
    n = len(stream)
    while True:
        if pos + 5 > n:
            return NEED_MORE if n < MAX_HELLO + 5 else NOT_HELLO
        if stream[pos] != HANDSHAKE or stream[pos + 1] != 3:
            return NOT_HELLO
        rlen = int.from_bytes(stream[pos + 3:pos + 5], "big")
        if rlen == 0 or rlen > 18432:
            return NOT_HELLO
        chunk = stream[pos + 5:pos + 5 + rlen]
        hs += chunk
        if len(hs) >= 1 and hs[0] not in (CLIENT_HELLO, SERVER_HELLO):
            return NOT_HELLO
        need = handshake_length(hs)
        if need is not None:
            if need > MAX_HELLO:
                return NOT_HELLO
            if len(hs) >= need:
                parsed = parse_handshake(bytes(hs[:need]))
                return parsed if parsed is not None else NOT_HELLO
        if len(chunk) < rlen:
            return NEED_MORE
        pos += 5 + rlen
