"""Whole-capture packet statistics: protocols, sizes, TCP flags, ICMP types, throughput.

What is counted, so the numbers can be compared with tshark:

* ``protocols``: every frame once, by its outermost network payload: the IP protocol name
  (TCP, UDP, ICMP, ICMPv6, IGMP, GRE, ESP, ...; IPv4 fragments count under their protocol),
  "ARP", "IPv6"/"IPv4" for an IP header whose payload could not be decoded, or the ethertype /
  "other" for non-IP frames. These sum to ``packets``. ``tunneled`` counts the protocols of
  packets carried inside GRE/VXLAN/IP-in-IP (a VXLAN frame is UDP in ``protocols`` and, say, TCP
  in ``tunneled``); tshark's ``tcp`` filter matches both.
* ``ip_versions``: IPv4 / IPv6 / non-IP frames (sum to ``packets``).
* ``sizes``: the frame length on the wire (``frame.len``) in tshark's ``plen`` buckets.
* ``tcp_flags``: frames with each flag set (first TCP header in the frame), plus ``SYN-only``
  (SYN without ACK) and ``SYN/ACK``, as tshark's ``tcp.flags.*`` filters count them.
* ``icmp_types`` / ``icmpv6_types``: "type/code" -> frames, from the first ICMP header in the
  frame (tshark's outermost-ICMP rule; a GRE-carried echo counts).
* ``arp_opcodes``: "1" request / "2" reply -> frames.
* throughput: packets and bytes per second for the last 60 s, and per minute for the session
  (bounded at ``max_minutes``), on packet time.

``process`` runs on the pipeline thread (which holds ``lock`` per batch); ``as_dict`` and
``snapshot`` copy under ``lock``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from capture.packet import (
    ACK, CWR, ECE, FIN, PROTO_ICMP, PROTO_ICMPV6, PROTO_NAMES, PROTO_TCP, PSH, RST, SYN, URG,
    ParsedPacket,
)

SIZE_BUCKETS: tuple[str, ...] = (
    "0-19", "20-39", "40-79", "80-159", "160-319", "320-639", "640-1279", "1280-2559",
    "2560-5119", "5120-",
)
HISTORY_SECONDS = 60
#: (bit, name) in the order tshark's flag fields are usually listed
TCP_FLAGS: tuple[tuple[int, str], ...] = (
    (FIN, "FIN"), (SYN, "SYN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"), (URG, "URG"),
    (ECE, "ECE"), (CWR, "CWR"), (0x100, "NS"),
)
_ETHER_NAMES = {0x88CC: "LLDP", 0x888E: "EAPOL", 0x8863: "PPPoE", 0x8864: "PPPoE",
                0x8899: "RRCP", 0x88E5: "MACsec", 0x8906: "FCoE", 0x88F7: "PTP"}


def size_bucket(wire_len: int) -> int:
    """Index into :data:`SIZE_BUCKETS`: 0-19, then doubling from 20 up to 5120+."""
    b = (wire_len // 20).bit_length()
    return b if b < 9 else 9


def protocol_label(pkt: ParsedPacket) -> str:
    """The name a frame is counted under in ``protocols``."""
    if pkt.ip_version:
        if pkt.proto and pkt.src_ip:
            return PROTO_NAMES.get(pkt.proto) or f"IP-{pkt.proto}"
        return "IPv6" if pkt.ip_version == 6 else "IPv4"  # header too short to name a payload
    if pkt.arp is not None:
        return "ARP"
    et = pkt.ethertype
    if et:
        return _ETHER_NAMES.get(et, f"0x{et:04x}")
    return "other"


@dataclass(frozen=True, slots=True)
class PacketStatsSnapshot:
    packets: int
    bytes: int
    malformed: int
    first_ts: float
    last_ts: float
    protocols: dict[str, int]
    tunneled: dict[str, int]
    ip_versions: dict[str, int]
    sizes: dict[str, int]
    tcp_flags: dict[str, int]
    icmp_types: dict[str, int]
    icmpv6_types: dict[str, int]
    arp_opcodes: dict[str, int]
    #: (second, packets, bytes) for the last 60 s of packet time, oldest first, zeros filled in
    per_second: tuple[tuple[int, int, int], ...]
    #: (minute start, packets, bytes) for each minute of the session that saw packets
    per_minute: tuple[tuple[int, int, int], ...]

    @property
    def pps(self) -> float:
        """Packets/s over the complete seconds of the 60 s window that the session covers."""
        return _avg(self.per_second, 1, int(self.first_ts))

    @property
    def bps(self) -> float:
        return _avg(self.per_second, 2, int(self.first_ts)) * 8


def _avg(rows: tuple[tuple[int, int, int], ...], col: int, first_sec: int) -> float:
    # The newest second is still filling up; seconds before the session began do not count.
    done = [r[col] for r in rows[:-1] if r[0] >= first_sec]
    return sum(done) / len(done) if done else 0.0


class PacketAnalyzer:
    def __init__(self, max_minutes: int = 7 * 24 * 60, lock: threading.RLock | None = None) -> None:
        self.max_minutes = max_minutes
        self.lock = lock if lock is not None else threading.RLock()
        self.malformed = 0
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.malformed_reasons: dict[str, int] = {}
        #: ip_version << 8 | IP protocol -> frames (a list: one index per packet, no hashing)
        self._ipproto = [0] * (7 << 8)
        self._other: dict[str, int] = {}         # non-IP and undecoded frames by label
        self._tunneled: dict[str, int] = {}
        self._sizes = [0] * len(SIZE_BUCKETS)
        self._flags = [0] * 0x200              # full flags value -> frames, decoded on read
        self._icmp: dict[int, int] = {}          # type << 8 | code -> frames
        self._icmp6: dict[int, int] = {}
        self._arp: dict[int, int] = {}
        # packets/bytes of the second being counted; finished seconds are added to the totals
        self._sec = -1
        self._sec_p = 0
        self._sec_b = 0
        self._done_p = 0
        self._done_b = 0
        self._seconds: dict[int, tuple[int, int]] = {}   # finished seconds in the last 60
        self._minutes: dict[int, list[int]] = {}

    @property
    def packets(self) -> int:
        return self._done_p + self._sec_p

    @property
    def bytes(self) -> int:
        return self._done_b + self._sec_b

    # ---- hot path ----------------------------------------------------------------------------
    def process(self, pkt: ParsedPacket) -> None:
        self.process_batch((pkt,))

    def process_batch(self, pkts: list[ParsedPacket] | tuple[ParsedPacket, ...]) -> None:
        """Count a batch of frames (the pipeline's batch stage: one call per batch, the
        tables in locals for the whole loop)."""
        sizes = self._sizes
        ipproto = self._ipproto
        flags = self._flags
        last_ts = self.last_ts
        sec = self._sec
        sec_p = self._sec_p
        sec_b = self._sec_b
        try:
            for pkt in pkts:
                wl = pkt.wire_len
                ts = pkt.ts
                if ts > last_ts:
                    last_ts = ts
                if int(ts) != sec:
                    self._sec_p, self._sec_b = sec_p, sec_b
                    self._roll(ts)
                    sec, sec_p, sec_b = self._sec, self._sec_p, self._sec_b
                sec_p += 1
                sec_b += wl
                sizes[(wl // 20).bit_length() if wl < 5120 else 9] += 1
                proto = pkt.proto
                if proto and pkt.ip_version and pkt.src_ip:
                    ipproto[pkt.ip_version << 8 | proto] += 1
                    if proto == PROTO_TCP:
                        flags[pkt.tcp_flags & 0x1FF] += 1
                    elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
                        self._icmp_count(pkt)
                    if pkt.inner is not None:
                        self._inner(pkt.inner)
                elif pkt.arp is not None:
                    self._label("ARP")
                    op = pkt.arp.op
                    self._arp[op] = self._arp.get(op, 0) + 1
                else:
                    self._label(protocol_label(pkt))
                if pkt.malformed:
                    self.malformed += 1
                    r = self.malformed_reasons
                    if len(r) < 256 or pkt.malformed in r:
                        r[pkt.malformed] = r.get(pkt.malformed, 0) + 1
        finally:
            self.last_ts = last_ts
            self._sec_p = sec_p
            self._sec_b = sec_b

    def _label(self, name: str) -> None:
        self._other[name] = self._other.get(name, 0) + 1

    def _icmp_count(self, pkt: ParsedPacket) -> None:
        if pkt.icmp_type < 0:
            return  # a later fragment: the header was in the first one
        d = self._icmp if pkt.proto == PROTO_ICMP else self._icmp6
        k = pkt.icmp_type << 8 | pkt.icmp_code
        d[k] = d.get(k, 0) + 1

    def _inner(self, inner: ParsedPacket) -> None:
        p: ParsedPacket | None = inner
        counted_icmp = counted_tcp = False
        while p is not None:
            name = protocol_label(p)
            self._tunneled[name] = self._tunneled.get(name, 0) + 1
            if p.arp is not None:
                self._arp[p.arp.op] = self._arp.get(p.arp.op, 0) + 1
            if p.ip_version and p.src_ip:
                if p.proto == PROTO_TCP and not counted_tcp:
                    self._flags[p.tcp_flags & 0x1FF] += 1
                    counted_tcp = True
                elif (p.proto == PROTO_ICMP or p.proto == PROTO_ICMPV6) and not counted_icmp:
                    self._icmp_count(p)
                    counted_icmp = True
            p = p.inner

    def _roll(self, ts: float) -> None:
        sec = int(ts)
        if sec < self._sec:
            return  # slightly out-of-order timestamp: counted in the current second
        if self._sec >= 0:
            p, b = self._sec_p, self._sec_b
            self._done_p += p
            self._done_b += b
            self._seconds[self._sec] = (p, b)
            m = self._sec // 60 * 60
            acc = self._minutes.get(m)
            if acc is None:
                self._minutes[m] = [p, b]
                if len(self._minutes) > self.max_minutes:
                    del self._minutes[next(iter(self._minutes))]
            else:
                acc[0] += p
                acc[1] += b
            old = sec - HISTORY_SECONDS
            for s in [s for s in self._seconds if s <= old]:
                del self._seconds[s]
        else:
            self.first_ts = ts
        self._sec = sec
        self._sec_p = 0
        self._sec_b = 0

    # ---- readers -----------------------------------------------------------------------------
    def snapshot(self) -> PacketStatsSnapshot:
        with self.lock:
            ipproto = list(self._ipproto)
            other = dict(self._other)
            tunneled = dict(self._tunneled)
            flags = list(self._flags)
            icmp, icmp6, arp = dict(self._icmp), dict(self._icmp6), dict(self._arp)
            sizes = list(self._sizes)
            seconds = dict(self._seconds)
            minutes = {m: (v[0], v[1]) for m, v in list(self._minutes.items())}
            sec, sec_p, sec_b = self._sec, self._sec_p, self._sec_b
            packets, nbytes, malformed = self.packets, self.bytes, self.malformed
            first, last = self.first_ts, self.last_ts
        names: dict[str, int] = {}
        v4 = v6 = 0
        for key, n in enumerate(ipproto):
            if n:
                proto = key & 0xFF
                name = PROTO_NAMES.get(proto) or f"IP-{proto}"
                names[name] = names.get(name, 0) + n
                if key >> 8 == 4:
                    v4 += n
                else:
                    v6 += n
        for name, n in other.items():
            names[name] = names.get(name, 0) + n
            if name == "IPv4":
                v4 += n
            elif name == "IPv6":
                v6 += n
        flag_counts = {name: 0 for _, name in TCP_FLAGS}
        syn_only = syn_ack = 0
        for value, n in enumerate(flags):
            if not n:
                continue
            for bit, name in TCP_FLAGS:
                if value & bit:
                    flag_counts[name] += n
            if value & (SYN | ACK) == SYN:
                syn_only += n
            elif value & (SYN | ACK) == SYN | ACK:
                syn_ack += n
        flag_counts["SYN-only"] = syn_only
        flag_counts["SYN/ACK"] = syn_ack
        per_second: list[tuple[int, int, int]] = []
        if sec >= 0:
            seconds[sec] = (sec_p, sec_b)
            for s in range(sec - HISTORY_SECONDS + 1, sec + 1):
                p, b = seconds.get(s, (0, 0))
                per_second.append((s, p, b))
            m = sec // 60 * 60
            cur = minutes.get(m, (0, 0))
            minutes[m] = (cur[0] + sec_p, cur[1] + sec_b)
        return PacketStatsSnapshot(
            packets, nbytes, malformed, first, last,
            dict(sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))),
            dict(sorted(tunneled.items(), key=lambda kv: (-kv[1], kv[0]))),
            {"IPv4": v4, "IPv6": v6, "non-IP": packets - v4 - v6},
            dict(zip(SIZE_BUCKETS, sizes)),
            flag_counts,
            {f"{k >> 8}/{k & 0xFF}": n for k, n in sorted(icmp.items())},
            {f"{k >> 8}/{k & 0xFF}": n for k, n in sorted(icmp6.items())},
            {str(k): n for k, n in sorted(arp.items())},
            tuple(per_second),
            tuple((m, p, b) for m, (p, b) in sorted(minutes.items())),
        )

    def as_dict(self) -> dict[str, Any]:
        """The export's ``stats`` section."""
        s = self.snapshot()
        return {
            "packets": s.packets,
            "bytes": s.bytes,
            "malformed": s.malformed,
            "malformed_reasons": dict(self.malformed_reasons),
            "first_ts": s.first_ts,
            "last_ts": s.last_ts,
            "protocols": s.protocols,
            "tunneled": s.tunneled,
            "ip_versions": s.ip_versions,
            "sizes": s.sizes,
            "tcp_flags": s.tcp_flags,
            "icmp_types": s.icmp_types,
            "icmpv6_types": s.icmpv6_types,
            "arp_opcodes": s.arp_opcodes,
            "pps": round(s.pps, 3),
            "bps": round(s.bps, 3),
            "per_second": [{"t": t, "packets": p, "bytes": b} for t, p, b in s.per_second],
            "per_minute": [{"t": t, "packets": p, "bytes": b} for t, p, b in s.per_minute],
        }
