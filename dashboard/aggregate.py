"""Aggregates computed from a list of flows (for the views that filter to the selection).

One pass over the flows per call, on the dashboard's background worker for big tables; the
result is read by the UI thread and never changed after ``aggregate`` returns it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from capture.packet import ACK, FIN, PSH, RST, SYN, URG
from tracking.flow import Flow

TCP_FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (SYN, "SYN"), (ACK, "ACK"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (URG, "URG"))

#: entries kept in the sorted top lists (more than any screen shows)
TOP = 100

TCP_COUNTERS: tuple[str, ...] = ("retransmissions", "fast_retransmissions", "out_of_order",
                                 "dup_acks", "zero_windows", "resets", "lost_segments")


@dataclass(slots=True)
class FlowAggregate:
    flows: int = 0
    packets: int = 0
    bytes: int = 0
    proto_bytes: Counter = field(default_factory=Counter)
    proto_flows: Counter = field(default_factory=Counter)
    talkers: Counter = field(default_factory=Counter)       # source ip -> bytes
    destinations: Counter = field(default_factory=Counter)  # destination ip -> bytes
    classes: Counter = field(default_factory=Counter)       # classification -> bytes
    classified_flows: int = 0
    encrypted_bytes: int = 0
    encrypted_flows: int = 0
    tcp_flags: Counter = field(default_factory=Counter)     # flag -> flows that carried it
    ports: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (proto, port) -> [pk, by, conns]
    tcp_flows: int = 0
    tcp_analyzed: int = 0
    tcp_states: Counter = field(default_factory=Counter)
    tcp_counters: Counter = field(default_factory=Counter)
    rtts_ms: list[float] = field(default_factory=list)
    #: (score, flow_key, src, dst, counters) of the flows with the most TCP trouble
    tcp_worst: list[tuple[int, Flow, dict[str, Any]]] = field(default_factory=list)
    #: the busiest sources / destinations, sorted once here so a frame does not sort 50k entries
    top_talkers: list[tuple[str, int]] = field(default_factory=list)
    top_destinations: list[tuple[str, int]] = field(default_factory=list)


def aggregate(flows: Iterable[Flow], want_tcp: bool = False, want_ports: bool = False,
              worst: int = 10) -> FlowAggregate:
    a = FlowAggregate()
    for f in flows:
        b = f.bytes_sent + f.bytes_recv
        a.flows += 1
        a.packets += f.packets_sent + f.packets_recv
        a.bytes += b
        proto = f.protocol
        a.proto_bytes[proto] += b
        a.proto_flows[proto] += 1
        a.talkers[f.src_ip] += b
        a.destinations[f.dst_ip] += b
        if f.classification:
            a.classes[f.classification] += b
            a.classified_flows += 1
        if f.encrypted:
            a.encrypted_bytes += b
            a.encrypted_flows += 1
        flags = f.flags_sent | f.flags_recv
        if flags:
            for bit, name in TCP_FLAG_NAMES:
                if flags & bit:
                    a.tcp_flags[name] += 1
        if want_ports and f.has_ports:
            k = (proto, f.dst_port)
            acc = a.ports.get(k)
            if acc is None:
                a.ports[k] = [f.packets, b, 1]
            else:
                acc[0] += f.packets
                acc[1] += b
                acc[2] += 1
        if want_tcp and f.proto == 6:
            a.tcp_flows += 1
            if f.tcp is not None:
                a.tcp_analyzed += 1
                d = f.tcp.as_dict()
                a.tcp_states[str(d.get("state", "?"))] += 1
                score = 0
                for name in TCP_COUNTERS:
                    v = d.get(name) or 0
                    if v:
                        a.tcp_counters[name] += v
                        score += v
                rtt = d.get("handshake_rtt_ms")
                if rtt is not None:
                    a.rtts_ms.append(float(rtt))
                if score:
                    a.tcp_worst.append((score, f, d))
    if a.tcp_worst:
        a.tcp_worst.sort(key=lambda t: t[0], reverse=True)
        del a.tcp_worst[worst:]
    a.top_talkers = a.talkers.most_common(TOP)
    a.top_destinations = a.destinations.most_common(TOP)
    return a
