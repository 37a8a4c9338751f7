"""QUIC Initial packets: remove the (public) protection and collect the ClientHello.

QUIC encrypts even its first packets, but with keys anyone can derive from the client's
Destination Connection ID (RFC 9001 §5.2), so an observer can read the TLS ClientHello the way
Wireshark does. Versions: QUIC v1 (RFC 9000) and v2 (RFC 9369). Nothing secret is involved: the
Initial keys are public by design, and only the hello is kept.

A ClientHello can span several Initial packets (Chrome splits and reorders its CRYPTO frames),
so :class:`CryptoAssembler` joins CRYPTO frame data by offset until the hello is whole.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from analysis.tls import MAX_HELLO, ClientHello, ServerHello, handshake_length, parse_handshake

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

# version -> (initial salt, label prefix, long-header type bits of an Initial packet)
_VERSIONS: dict[int, tuple[bytes, str, int]] = {
    QUIC_V1: (bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), "quic", 0),
    QUIC_V2: (bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), "quicv2", 1),
}

_FRAME_PADDING, _FRAME_PING, _FRAME_ACK, _FRAME_ACK_ECN, _FRAME_CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06
_FRAME_CLOSE, _FRAME_CLOSE_APP = 0x1C, 0x1D


def is_long_header(data: bytes) -> bool:
    """A QUIC long-header packet (RFC 8999 invariants): high bit set, non-zero version field."""
    return len(data) >= 7 and data[0] & 0x80 == 0x80 and data[1:5] != b"\x00\x00\x00\x00"


def quic_version(data: bytes) -> int:
    return int.from_bytes(data[1:5], "big")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, new position) of a QUIC variable-length integer; raises IndexError if cut."""
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        raise IndexError
    value = first & 0x3F
    for i in range(1, size):
        value = value << 8 | buf[pos + i]
    return value, pos + size


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, sha256).digest()


def _hkdf_expand_label(secret: bytes, label: str, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context; one block is enough (length <= 32)."""
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", sha256).digest()[:length]


@dataclass(slots=True, frozen=True)
class InitialKeys:
    key: bytes
    iv: bytes
    hp: bytes


def initial_keys(dcid: bytes, version: int = QUIC_V1, server: bool = False) -> InitialKeys:
    """The Initial packet protection keys for one direction (RFC 9001 §5.2)."""
    salt, prefix, _ = _VERSIONS[version]
    initial = _hkdf_extract(salt, dcid)
    secret = _hkdf_expand_label(initial, "server in" if server else "client in", 32)
    return InitialKeys(_hkdf_expand_label(secret, f"{prefix} key", 16),
                       _hkdf_expand_label(secret, f"{prefix} iv", 12),
                       _hkdf_expand_label(secret, f"{prefix} hp", 16))


@dataclass(slots=True)
class InitialPacket:
    version: int
    dcid: bytes
    scid: bytes
    #: decrypted frames
    payload: bytes


def decrypt_initials(datagram: bytes, dcid: bytes | None = None,
                     server: bool = False) -> list[InitialPacket]:
    """Decrypt every Initial packet coalesced in one UDP datagram.

    ``dcid`` is the client's original Destination Connection ID; the client's own packets carry
    it, but a server's Initial is keyed by it while addressed to the client's SCID, so it must
    be passed for ``server=True``. Packets that are not Initials or fail to decrypt are skipped.
    """
    out: list[InitialPacket] = []
    pos = 0
    n = len(datagram)
    while pos + 7 <= n and datagram[pos] & 0x80:
        start = pos
        try:
            version = int.from_bytes(datagram[pos + 1:pos + 5], "big")
            pos += 5
            dlen = datagram[pos]
            pkt_dcid = datagram[pos + 1:pos + 1 + dlen]
            pos += 1 + dlen
            slen = datagram[pos]
            scid = datagram[pos + 1:pos + 1 + slen]
            pos += 1 + slen
            spec = _VERSIONS.get(version)
            if spec is None:
                return out                      # unknown version: cannot even find the length
            is_initial = (datagram[start] >> 4) & 0x03 == spec[2]
            if is_initial:
                tlen, pos = _varint(datagram, pos)
                pos += tlen                     # token
            length, pos = _varint(datagram, pos)
        except IndexError:
            return out
        end = pos + length
        if end > n:
            return out
        if is_initial:
            keys = initial_keys(dcid if (server and dcid) else pkt_dcid, version, server)
            plain = _unprotect(datagram, start, pos, end, keys)
            if plain is not None:
                out.append(InitialPacket(version, bytes(pkt_dcid), bytes(scid), plain))
        pos = end
    return out


def _unprotect(buf: bytes, start: int, pn_off: int, end: int, keys: InitialKeys) -> bytes | None:
    if pn_off + 4 + 16 > end:
        return None
    sample = buf[pn_off + 4:pn_off + 20]
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    first = buf[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(buf[pn_off:pn_off + pn_len], mask[1:1 + pn_len]))
    header = bytes([first]) + bytes(buf[start + 1:pn_off]) + pn_bytes
    pn = int.from_bytes(pn_bytes, "big")
    nonce = bytes(a ^ b for a, b in zip(keys.iv, pn.to_bytes(12, "big")))
    try:
        return AESGCM(keys.key).decrypt(nonce, bytes(buf[pn_off + pn_len:end]), header)
    except InvalidTag:
        return None


def crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of each CRYPTO frame in a decrypted Initial payload."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(payload)
    try:
        while pos < n:
            ftype = payload[pos]
            pos += 1
            if ftype == _FRAME_PADDING or ftype == _FRAME_PING:
                continue
            if ftype == _FRAME_CRYPTO:
                off, pos = _varint(payload, pos)
                ln, pos = _varint(payload, pos)
                out.append((off, payload[pos:pos + ln]))
                pos += ln
            elif ftype in (_FRAME_ACK, _FRAME_ACK_ECN):
                _, pos = _varint(payload, pos)       # largest acknowledged
                _, pos = _varint(payload, pos)       # delay
                count, pos = _varint(payload, pos)
                _, pos = _varint(payload, pos)       # first range
                for _ in range(count * 2):
                    _, pos = _varint(payload, pos)
                if ftype == _FRAME_ACK_ECN:
                    for _ in range(3):
                        _, pos = _varint(payload, pos)
            elif ftype in (_FRAME_CLOSE, _FRAME_CLOSE_APP):
                break
            else:
                break                            # not allowed in Initials: stop reading
    except IndexError:
        pass
    return out


@dataclass(slots=True)
class CryptoAssembler:
    """Joins CRYPTO frame data by offset until the first handshake message is complete."""

    server: bool = False
    #: the client's original DCID (keys for both directions derive from it)
    dcid: bytes | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    held: int = 0
    done: bool = False

    def feed(self, datagram: bytes) -> ClientHello | ServerHello | None:
        """Add one UDP datagram; returns the hello once it is complete, else None."""
        if self.done:
            return None
        for pkt in decrypt_initials(datagram, self.dcid, self.server):
            if self.dcid is None and not self.server:
                self.dcid = pkt.dcid
            for off, data in crypto_frames(pkt.payload):
                if off >= MAX_HELLO or off in self.chunks:
                    continue
                self.chunks[off] = data
                self.held += len(data)
        if self.held > MAX_HELLO:
            self.done = True
            return None
        stream = self._contiguous()
        need = handshake_length(stream)
        if need is None or len(stream) < need:
            return None
        self.done = True
        hello = parse_handshake(stream[:need], transport="q")
        self.chunks.clear()
        return hello

    def _contiguous(self) -> bytes:
        out = bytearray()
        for off in sorted(self.chunks):
            data = self.chunks[off]
            if off > len(out):
                break
            if off + len(data) > len(out):
                out += data[len(out) - off:]
        return bytes(out)
