"""IPFIX (RFC 7011) flow export over UDP, so the flow collectors a network already runs see ours.

One Observation Domain, two templates (IPv4: 256, IPv6: 257) of fixed-length fields. Each of our
bidirectional flows becomes up to two uniflow records per export, one per direction (the
initiator's packets with ``biflowDirection`` 1, the responder's with 2), carrying the deltas since
that flow's previous export:

* active timeout: a flow still sending is exported every ``active_timeout`` seconds of packet time;
* idle timeout: a flow quiet for ``idle_timeout`` seconds is exported (and again, with the new
  deltas, if it resumes);
* end: when the flow tracker retires a flow (TCP close, idle expiry, eviction, end of the run)
  whatever is left is exported, with ``flowEndReason`` saying why.

Templates go out in the first message and again every ``template_refresh`` seconds (RFC 7011
§8.4: over UDP they must be resent periodically). The header's sequence number counts the data
records sent before the message, modulo 2^32 (§3.1).

``octetDeltaCount`` carries the bytes our own exports count: frame (wire) lengths, as tshark's
``frame.len``, so a collector's totals equal the JSON export and the dashboard. Routers count
IP-layer octets instead; the difference is the link header of each packet.

Everything here runs on the pipeline thread (flow listener and periodic tick); a send that fails
(no collector, unreachable host) is counted and logged once, never raised into the pipeline.
"""
from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import time
from typing import Any, Callable

from capture.packet import PROTO_SCTP, PROTO_TCP, PROTO_UDP
from utils.logger import get_logger

log = get_logger(__name__)

IPFIX_VERSION = 10
SET_TEMPLATE = 2
TEMPLATE_V4 = 256
TEMPLATE_V6 = 257

#: (information element id, length) in record order; names from the IANA IPFIX registry
FIELDS_V4: tuple[tuple[int, int, str], ...] = (
    (8, 4, "sourceIPv4Address"), (12, 4, "destinationIPv4Address"),
    (7, 2, "sourceTransportPort"), (11, 2, "destinationTransportPort"),
    (4, 1, "protocolIdentifier"), (6, 2, "tcpControlBits"),
    (2, 8, "packetDeltaCount"), (1, 8, "octetDeltaCount"),
    (152, 8, "flowStartMilliseconds"), (153, 8, "flowEndMilliseconds"),
    (136, 1, "flowEndReason"), (239, 1, "biflowDirection"),
)
FIELDS_V6: tuple[tuple[int, int, str], ...] = (
    (27, 16, "sourceIPv6Address"), (28, 16, "destinationIPv6Address"),
) + FIELDS_V4[2:]
_REC_V4 = struct.Struct("!4s4sHHBHQQQQBB")
_REC_V6 = struct.Struct("!16s16sHHBHQQQQBB")
_MSG_HDR = struct.Struct("!HHIII")
_SET_HDR = struct.Struct("!HH")

#: flowEndReason values (IANA registry)
END_IDLE, END_ACTIVE, END_OF_FLOW, END_FORCED, END_RESOURCES = 1, 2, 3, 4, 5
_RETIRED_REASON = {"idle": END_IDLE, "closed": END_OF_FLOW, "reused": END_OF_FLOW,
                   "evicted": END_RESOURCES, "end": END_FORCED}
_PORTED = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)

#: defaults; config constants IPFIX_ACTIVE_TIMEOUT / IPFIX_IDLE_TIMEOUT /
#: IPFIX_TEMPLATE_REFRESH / IPFIX_MTU / IPFIX_DOMAIN_ID override them
DEFAULT_ACTIVE_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 15.0
DEFAULT_TEMPLATE_REFRESH = 60.0
DEFAULT_MTU = 1400
DEFAULT_DOMAIN_ID = 1


def _template_set() -> bytes:
    body = b""
    for tid, fields in ((TEMPLATE_V4, FIELDS_V4), (TEMPLATE_V6, FIELDS_V6)):
        body += struct.pack("!HH", tid, len(fields))
        body += b"".join(struct.pack("!HH", ie, ln) for ie, ln, _ in fields)
    return _SET_HDR.pack(SET_TEMPLATE, _SET_HDR.size + len(body)) + body


TEMPLATE_SET = _template_set()


def parse_collector(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); an argparse type (raises its error)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:4739), got {text!r}")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--ipfix HOST:PORT`` flag (main.py calls this while building its parser)."""
    g = parser.add_argument_group("flow export")
    g.add_argument("--ipfix", metavar="HOST:PORT", type=parse_collector,
                   help="send flow records (IPFIX, RFC 7011) over UDP to this collector, "
                        "e.g. nfcapd; port 4739 is IPFIX's own")


class IpfixExporter:
    """Turns flows into IPFIX data records and sends them to one collector over UDP.

    Args:
        collector: (host, port) of the collector.
        active_timeout: seconds (packet time) between exports of a flow that keeps sending.
        idle_timeout: seconds (packet time) of silence after which a flow's deltas are exported.
        template_refresh: seconds (wall clock) between template resends.
        mtu: largest IPFIX message, in bytes (kept under the path MTU: no IP fragmentation).
        domain_id: the Observation Domain ID in every message header.
        clock: wall clock for export times and template refresh (tests pass their own).
    """

    def __init__(self, collector: tuple[str, int], active_timeout: float = DEFAULT_ACTIVE_TIMEOUT,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 template_refresh: float = DEFAULT_TEMPLATE_REFRESH, mtu: int = DEFAULT_MTU,
                 domain_id: int = DEFAULT_DOMAIN_ID,
                 clock: Callable[[], float] = time.time) -> None:
        self.collector = collector
        self.active_timeout = float(active_timeout)
        self.idle_timeout = float(idle_timeout)
        self.template_refresh = float(template_refresh)
        self.mtu = max(256, int(mtu))
        self.domain_id = domain_id
        self.clock = clock
        host, port = collector
        try:
            family, stype, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise ValueError(f"IPFIX collector {host}:{port}: {exc.strerror}") from None
        self._sock: socket.socket | None = socket.socket(family, stype, proto)
        self._sock.setblocking(False)
        self._addr = addr
        #: flow -> [packets_sent, bytes_sent, packets_recv, bytes_recv, last export (packet time)]
        self._exported: dict[Any, list[float]] = {}
        self._v4: list[bytes] = []
        self._v6: list[bytes] = []
        self._templates_at = -1e18
        self.sequence = 0           # data records sent (the header's sequence number)
        self.messages = 0
        self.records = 0
        self.send_errors = 0
        self.last_error = ""

    # ---- pipeline hooks ----------------------------------------------------------------------
    def on_retire(self, flow: Any) -> None:
        """Flow listener: the flow left the table; export what is left of it."""
        self._export(flow, _RETIRED_REASON.get(flow.retired, END_FORCED))
        self._exported.pop(flow, None)

    def on_tick(self, now: float, flows: list[Any] | None = None) -> None:
        """Periodic chore (packet time): active and idle timeouts, then send what is queued."""
        if flows is not None:
            idle_before = now - self.idle_timeout
            active = self.active_timeout
            exported = self._exported
            for f in flows:
                prev = exported.get(f)
                if prev is None:
                    last = f.first_seen
                    if f.last_seen < idle_before:
                        self._export(f, END_IDLE)
                    elif now - last >= active:
                        self._export(f, END_ACTIVE)
                    continue
                if f.packets_sent + f.packets_recv == prev[0] + prev[2]:
                    continue
                if f.last_seen < idle_before:
                    self._export(f, END_IDLE)
                elif now - prev[4] >= active:
                    self._export(f, END_ACTIVE)
        self.flush()

    def close(self) -> None:
        """End of the run (after the tracker retired every flow): send the rest, close."""
        self.flush()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ---- records -----------------------------------------------------------------------------
    def _export(self, f: Any, reason: int) -> None:
        prev = self._exported.get(f)
        if prev is None:
            prev = [0, 0, 0, 0, f.first_seen]
            start = f.first_seen
        else:
            start = prev[4]
        dps = f.packets_sent - prev[0]
        dbs = f.bytes_sent - prev[1]
        dpr = f.packets_recv - prev[2]
        dbr = f.bytes_recv - prev[3]
        if dps <= 0 and dpr <= 0:
            return
        end = f.last_seen
        self._exported[f] = [f.packets_sent, f.bytes_sent, f.packets_recv, f.bytes_recv, end]
        v6 = f.ip_version == 6 or ":" in f.src_ip
        try:
            src = ipaddress.ip_address(f.src_ip).packed
            dst = ipaddress.ip_address(f.dst_ip).packed
        except ValueError:
            return
        ported = f.proto in _PORTED
        sp, dp = (f.src_port, f.dst_port) if ported else (0, 0)
        ms0 = int(round(start * 1000))
        ms1 = int(round(end * 1000))
        rec = _REC_V6 if v6 else _REC_V4
        out = self._v6 if v6 else self._v4
        if dps > 0:
            out.append(rec.pack(src, dst, sp, dp, f.proto, f.flags_sent & 0xFFFF, dps, dbs,
                                ms0, ms1, reason, 1))
        if dpr > 0:
            out.append(rec.pack(dst, src, dp, sp, f.proto, f.flags_recv & 0xFFFF, dpr, dbr,
                                ms0, ms1, reason, 2))

    # ---- messages ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Pack queued records into messages of at most ``mtu`` bytes and send them."""
        now = self.clock()
        if not (self._v4 or self._v6):
            if now - self._templates_at >= self.template_refresh and self.messages:
                self._send([], now, with_templates=True)
            return
        for tid, queue, size in ((TEMPLATE_V4, self._v4, _REC_V4.size),
                                 (TEMPLATE_V6, self._v6, _REC_V6.size)):
            while queue:
                with_t = now - self._templates_at >= self.template_refresh
                room = self.mtu - _MSG_HDR.size - _SET_HDR.size - (len(TEMPLATE_SET) if with_t else 0)
                n = max(1, room // size)
                chunk, queue[:n] = queue[:n], []
                self._send([(tid, chunk)], now, with_templates=with_t)

    def _send(self, sets: list[tuple[int, list[bytes]]], now: float, with_templates: bool) -> None:
        body = TEMPLATE_SET if with_templates else b""
        count = 0
        for tid, recs in sets:
            data = b"".join(recs)
            body += _SET_HDR.pack(tid, _SET_HDR.size + len(data)) + data
            count += len(recs)
        msg = _MSG_HDR.pack(IPFIX_VERSION, _MSG_HDR.size + len(body), int(now) & 0xFFFFFFFF,
                            self.sequence, self.domain_id) + body
        if with_templates:
            self._templates_at = now
        self.sequence = (self.sequence + count) & 0xFFFFFFFF
        self.messages += 1
        self.records += count
        if self._sock is None:
            return
        try:
            self._sock.sendto(msg, self._addr)
        except OSError as exc:       # no collector (ICMP unreachable), buffer full, no route
            self.send_errors += 1
            if self.send_errors == 1 or self.last_error != exc.strerror:
                log.warning("IPFIX to %s:%s: %s (records are dropped while this lasts)",
                            self.collector[0], self.collector[1], exc.strerror)
            self.last_error = exc.strerror or str(exc)

    def stats(self) -> dict[str, Any]:
        return {"collector": f"{self.collector[0]}:{self.collector[1]}", "messages": self.messages,
                "records": self.records, "sequence": self.sequence,
                "send_errors": self.send_errors, "last_error": self.last_error or None}


def attach_ipfix(components: Any, flows: Any, collector: tuple[str, int],
                 settings: Any = None) -> IpfixExporter:
    """Wire an exporter to a run: flow listener, periodic tick, and a final flush at the end."""
    get = settings.get if settings is not None and hasattr(settings, "get") else (lambda n, d: d)
    exp = IpfixExporter(collector,
                        active_timeout=get("IPFIX_ACTIVE_TIMEOUT", DEFAULT_ACTIVE_TIMEOUT),
                        idle_timeout=get("IPFIX_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT),
                        template_refresh=get("IPFIX_TEMPLATE_REFRESH", DEFAULT_TEMPLATE_REFRESH),
                        mtu=get("IPFIX_MTU", DEFAULT_MTU),
                        domain_id=get("IPFIX_DOMAIN_ID", DEFAULT_DOMAIN_ID))
    flows.listeners.append(exp.on_retire)
    def tick(now: float) -> None:
        # the pipeline thread owns the table and runs this tick: read it in place
        exp.on_tick(now, list(flows.active_flows()))

    components.periodic.append(tick)
    components.on_finish.append(exp.close)
    return exp
