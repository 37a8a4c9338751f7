"""Path tracer costs: own_probe per captured packet (the pipeline's exclude hook), building one
probe, and parsing + matching one reply. Sends nothing.

    .venv/bin/python -m bench.bench_path
"""
from __future__ import annotations

import socket
import timeit

from scapy.layers.inet import ICMP, IP, TCP

from capture.parser import LINKTYPE_RAW, parse
from tracking.path import PathTracer
from tracking.path_probe import ProbeTemplate, classify_reply
from tracking.path_socket import ProbeSockets, TracerSocketError


def _no_sockets(family: int, port: int | None) -> ProbeSockets:
    raise TracerSocketError(1, "benchmark: no sockets")


def best(stmt, number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def main() -> None:
    tracer = PathTracer(socket_factory=_no_sockets)
    try:
        for i in range(5):
            tracer.request(f"198.51.100.{i + 1}")
        traffic = parse(bytes(IP(src="192.0.2.1", dst="203.0.113.9") / TCP(sport=50000, dport=443)),
                        LINKTYPE_RAW)
        t = best(lambda: tracer.own_probe(traffic), 200_000)
        print(f"own_probe, unrelated TCP packet, 5 destinations traced: {t * 1e9:.0f} ns")
        tpl = ProbeTemplate("udp", socket.AF_INET, "192.0.2.1", "198.51.100.1", 33434, tracer.ids)
        t = best(lambda: tpl.build(7, 1234), 50_000)
        print(f"build one UDP probe from its template: {t * 1e6:.2f} us")
        probe = tpl.build(7, 1234)
        reply = bytes(IP(src="203.0.113.5", dst="192.0.2.1") / ICMP(type=11) / probe[:28])
        t = best(lambda: classify_reply(parse(reply, LINKTYPE_RAW), tracer.ids), 50_000)
        print(f"parse + match one time-exceeded reply: {t * 1e6:.2f} us")
        t = best(lambda: bytes(IP(src="192.0.2.1", dst="198.51.100.1", ttl=7) / ICMP()), 500, 3)
        print(f"(for comparison) one scapy-built probe: {t * 1e6:.0f} us")
    finally:
        tracer.stop()


if __name__ == "__main__":
    main()
