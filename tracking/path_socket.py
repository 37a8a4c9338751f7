"""The tracer's raw sockets (Linux): send whole IP packets, receive replies as whole IP packets.

All OS-specific socket work of the path tracer is here. Probes go out through
``IPPROTO_RAW`` sockets (the header is ours, so TTL/hop limit, IP id and flow label are exactly
what the template says). Replies come from raw ICMP/ICMPv6 sockets, with kernel filters letting
only the message types a traceroute needs through, and, for TCP probes, from raw TCP sockets
whose BPF filter passes only segments to the tracer's source port, so a busy host does not wake
the tracer for every TCP segment it receives.

IPv6 raw sockets hand over the payload without the IPv6 header; :class:`ProbeSockets` puts a
header back together from the sender's address and the packet info, so the receive path parses
every reply with :func:`capture.parser.parse` the same way for both families.
"""
from __future__ import annotations

import ctypes
import errno
import socket
import struct
import time

from capture.packet import PROTO_ICMPV6, PROTO_TCP

SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)

#: ICMP types a traceroute needs: echo reply, destination unreachable, time exceeded
ICMP4_TYPES = (0, 3, 11)
#: ICMPv6: destination unreachable, time exceeded, echo reply
ICMP6_TYPES = (1, 3, 129)
_ANC = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + 64
_timespec = struct.Struct("@qq")


class TracerSocketError(OSError):
    """A raw socket could not be opened (not root / no CAP_NET_RAW, no IPv6)."""


def source_address(family: int, dst: str) -> str:
    """The local address the kernel would send from to ``dst`` (connect() sends nothing)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((dst, 9))
        return s.getsockname()[0]
    finally:
        s.close()


def _bpf_dport(port: int, ip_header: bool) -> bytes:
    """Classic BPF: accept a TCP segment only when its destination port is ``port``.

    An IPv4 raw socket's filter sees the IP header first (its length read from IHL); an IPv6
    raw socket's sees the TCP header first.
    """
    ins = struct.Struct("=HBBI")
    prog = []
    if ip_header:
        prog.append(ins.pack(0xB1, 0, 0, 0))          # ldxb 4*([0]&0xf)
        prog.append(ins.pack(0x48, 0, 0, 2))          # ldh [x+2]
    else:
        prog.append(ins.pack(0x28, 0, 0, 2))          # ldh [2]
    prog.append(ins.pack(0x15, 0, 1, port))           # jeq #port, accept, drop
    prog.append(ins.pack(0x06, 0, 0, 0xFFFF))         # ret #65535
    prog.append(ins.pack(0x06, 0, 0, 0))              # ret #0
    return b"".join(prog)


def _attach_bpf(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _icmp6_filter(passed: tuple[int, ...]) -> bytes:
    """ICMP6_FILTER bitmap: a set bit blocks that type."""
    words = [0xFFFFFFFF] * 8
    for t in passed:
        words[t >> 5] &= ~(1 << (t & 31))
    return struct.pack("=8I", *words)


class ProbeSockets:
    """Raw send and receive sockets for one address family.

    Args:
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        tcp_port: when set, also receive TCP segments sent to this local port (TCP probes'
            SYN-ACK/RST answers).

    Raises:
        TracerSocketError: raw sockets are not allowed (needs root or CAP_NET_RAW) or the
            family is not available.
    """

    def __init__(self, family: int, tcp_port: int | None = None) -> None:
        self.family = family
        self.v6 = family == socket.AF_INET6
        self.recv: list[socket.socket] = []
        try:
            self.send_sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            if self.v6:
                icmp = socket.socket(family, socket.SOCK_RAW, PROTO_ICMPV6)
                icmp.setsockopt(PROTO_ICMPV6, ICMP6_FILTER, _icmp6_filter(ICMP6_TYPES))
            else:
                icmp = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                mask = 0xFFFFFFFF
                for t in ICMP4_TYPES:
                    mask &= ~(1 << t)
                icmp.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", mask))
            self._prepare(icmp)
            self.recv.append(icmp)
            if tcp_port is not None:
                self.add_tcp(tcp_port)
        except PermissionError as exc:
            self.close()
            raise TracerSocketError(exc.errno, "raw sockets need root or CAP_NET_RAW") from None
        except OSError as exc:
            self.close()
            raise TracerSocketError(exc.errno, f"cannot open raw sockets: {exc.strerror}") from None
        self.has_tcp = tcp_port is not None

    def add_tcp(self, port: int) -> None:
        """Start receiving TCP segments to ``port`` (idempotent)."""
        if getattr(self, "has_tcp", False):
            return
        tcp = socket.socket(self.family, socket.SOCK_RAW, PROTO_TCP)
        _attach_bpf(tcp, _bpf_dport(port, ip_header=not self.v6))
        self._prepare(tcp)
        # Segments queued before the filter was attached may be anyone's: drop them.
        while True:
            try:
                tcp.recv(65535)
            except BlockingIOError:
                break
        self.recv.append(tcp)
        self.has_tcp = True

    def _prepare(self, s: socket.socket) -> None:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if self.v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)

    def send(self, dst: str, packet: bytes) -> None:
        """Send one whole IP packet; errors (no route, buffer full) raise OSError."""
        self.send_sock.sendto(packet, (dst, 0))

    def read(self, sock: socket.socket) -> tuple[bytes, float] | None:
        """One received packet as IP bytes and its arrival time (wall clock), or None."""
        try:
            data, anc, _flags, addr = sock.recvmsg(65535, _ANC)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return None
            raise
        ts = 0.0
        dst = b"\0" * 16
        hlim = 64
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = _timespec.unpack_from(value)
                ts = sec + nsec * 1e-9
            elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(value) >= 16:
                dst = value[:16]
            elif level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT and len(value) >= 4:
                hlim = struct.unpack("@i", value[:4])[0]
        if not ts:
            ts = time.time()
        if self.v6:
            nh = sock.proto
            src = socket.inet_pton(socket.AF_INET6, addr[0].split("%", 1)[0])
            data = struct.pack("!IHBB16s16s", 0x60000000, len(data), nh, hlim & 0xFF, src, dst) + data
        return data, ts

    def close(self) -> None:
        for s in [getattr(self, "send_sock", None), *self.recv]:
            if s is not None:
                s.close()
        self.recv = []
