"""The parsed-packet record that crosses from capture/ into every other layer.

Nothing outside capture/ ever sees a scapy object or raw link-layer framing:
trackers, DPI and detections read these slotted records only.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgspec

# IP protocol numbers used across the code base.
PROTO_ICMP = 1
PROTO_IGMP = 2
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_GRE = 47
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_SCTP = 132

PROTO_NAMES: dict[int, str] = {
    PROTO_ICMP: "ICMP", PROTO_IGMP: "IGMP", PROTO_IPIP: "IPIP", PROTO_TCP: "TCP",
    PROTO_UDP: "UDP", PROTO_IPV6: "IPv6", PROTO_GRE: "GRE", PROTO_ESP: "ESP",
    PROTO_AH: "AH", PROTO_ICMPV6: "ICMPv6", PROTO_SCTP: "SCTP",
}

# TCP flag bits (low byte of the flags field plus ECE/CWR).
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_MPLS = 0x8847
ETH_MPLS_MC = 0x8848


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def tcp_flag_string(flags: int) -> str:
    """Flags as tcpdump prints them (S, F, R, P, U, ., E, W)."""
    out = []
    for bit, ch in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"),
                    (ECE, "E"), (CWR, "W"), (ACK, ".")):
        if flags & bit:
            out.append(ch)
    return "".join(out) or "-"


def mac_str(mac: bytes) -> str:
    return mac.hex(":") if mac else ""


class TcpOptions(msgspec.Struct, gc=False):
    """TCP options from the header, in the order the sender wrote them.

    A msgspec Struct, as :class:`ParsedPacket` is: real traffic carries options (timestamps) on
    most segments, and the compiled parser builds one per such packet in one C-level call."""

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    ts_val: int | None = None
    ts_ecr: int | None = None
    #: option kinds in wire order, p0f-style letters: M, W, S, T, N (NOP), E (EOL), ?<kind>
    order: str = ""


@dataclass(slots=True)
class ArpInfo:
    op: int
    sender_mac: bytes
    sender_ip: str
    target_mac: bytes
    target_ip: str


@dataclass(slots=True)
class QuotedHeader:
    """The original IP/transport header quoted inside an ICMP error."""

    src_ip: str
    dst_ip: str
    proto: int
    ttl: int
    ip_id: int
    sport: int | None = None
    dport: int | None = None
    #: TCP sequence number, or ICMP echo id/seq packed as (id << 16 | seq)
    seq: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None


class ParsedPacket(msgspec.Struct, gc=False):
    """One frame, decoded from raw bytes by :func:`capture.parser.parse`.

    Field order matters: the parser's fast path builds records positionally, so new fields
    go at the end (tests/test_parser_fastpath.py catches a mismatch).

    A msgspec Struct rather than a slotted dataclass: one is made and freed per packet, and
    msgspec builds it in C (45 fields: 232 ns against the dataclass ``__init__``'s 566 on this
    machine; bench-1m's read and parse ~10% faster), while reads stay slot reads that
    CPython 3.11 specialises as for a dataclass. ``gc=False``: packets hold no cycles (their
    fields are values, option records and the inner packet), so the collector need not track
    the millions made in a run. Writes cost more than a dataclass's (~40 ns against 16): only
    the general path writes, the fast path passes every field to the constructor.

    Fields that a frame does not carry keep their defaults (0, None, "").
    ``wire_len`` is the length on the wire (tshark's ``frame.len``), which is what
    byte counters use; ``cap_len`` is what was captured.
    """

    ts: float = 0.0
    wire_len: int = 0
    cap_len: int = 0
    linktype: int = 1
    iface: int = 0
    # --- link layer
    src_mac: bytes = b""
    dst_mac: bytes = b""
    vlan_ids: tuple[int, ...] = ()
    mpls_labels: tuple[int, ...] = ()
    ethertype: int = 0
    arp: ArpInfo | None = None
    # --- network layer
    ip_version: int = 0
    src_ip: str = ""
    dst_ip: str = ""
    ttl: int = 0
    ip_id: int = 0
    dscp: int = 0
    ecn: int = 0
    df: bool = False
    more_fragments: bool = False
    #: fragment offset in bytes (IPv4) or from the IPv6 Fragment header
    frag_offset: int = 0
    is_fragment: bool = False
    #: IPv6 extension header numbers walked, in order
    ext_headers: tuple[int, ...] = ()
    #: upper-layer protocol number (after IPv6 extension headers)
    proto: int = 0
    ip_len: int = 0
    # --- transport
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    seq: int = 0
    ack: int = 0
    window: int = 0
    tcp_options: TcpOptions | None = None
    icmp_type: int = -1
    icmp_code: int = -1
    icmp_id: int = -1
    icmp_seq: int = -1
    quoted: QuotedHeader | None = None
    # --- payload (transport payload; for non-TCP/UDP the IP payload)
    payload_offset: int = 0
    payload_len: int = 0
    data: bytes = b""
    # --- state
    #: empty when the frame decoded cleanly; otherwise why it did not
    malformed: str = ""
    #: the encapsulated packet for GRE/VXLAN/IP-in-IP/6in4, parsed too
    inner: "ParsedPacket | None" = None
    tunnel: str = ""

    @property
    def payload(self) -> memoryview:
        """Zero-copy view of the transport payload."""
        return memoryview(self.data)[self.payload_offset:self.payload_offset + self.payload_len]

    @property
    def has_ports(self) -> bool:
        return self.proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP) and not (
            self.is_fragment and self.frag_offset > 0)

    @property
    def protocol_name(self) -> str:
        if self.ip_version:
            return proto_name(self.proto)
        if self.arp is not None:
            return "ARP"
        return f"0x{self.ethertype:04x}" if self.ethertype else "other"

    def innermost(self) -> "ParsedPacket":
        p = self
        while p.inner is not None:
            p = p.inner
        return p
