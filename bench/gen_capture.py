#!/usr/bin/env python3
"""Deterministic benchmark capture: ~1M packets in ~50k flows (TCP/UDP/ICMP, IPv4/IPv6, VLAN).

    python bench/gen_capture.py bench/data/bench-1m.pcap [--packets N] [--flows N]

Same arguments, same bytes: the seed is fixed so runs are comparable across machines.
"""
from __future__ import annotations

import argparse
import random
import struct
from pathlib import Path


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def eth(src: bytes, dst: bytes, etype: int, vlan: int | None) -> bytes:
    if vlan is None:
        return dst + src + struct.pack("!H", etype)
    return dst + src + struct.pack("!HHH", 0x8100, vlan, etype)


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int, ttl: int) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, ttl,
                    proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def ipv6(src: bytes, dst: bytes, proto: int, payload: bytes, hlim: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, hlim, src, dst) + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50,
                       flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def generate(path: Path, packets: int, flows: int, seed: int = 1, hosts: int = 0) -> int:
    """Writes the capture; returns its packet count.

    ``hosts`` > 0 spreads the flows over that many client and that many server addresses
    (flow i joins client i % hosts and server i % hosts, so host pairs repeat too); 0 gives
    every flow its own pair of hosts. The default stream of bytes does not change with it.
    """
    rnd = random.Random(seed)
    mac_a, mac_b = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    specs = []
    for i in range(flows):
        kind = rnd.random()
        v6 = rnd.random() < 0.2
        if v6:
            a = bytes.fromhex("20010db8000000000000000000000001")[:14] + struct.pack("!H", i % 65536)
            b = bytes.fromhex("20010db8ffff00000000000000000000")[:12] + struct.pack("!I", rnd.getrandbits(32))
        else:
            a = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF or 1])
            b = bytes([rnd.randint(1, 223), rnd.randint(0, 255), rnd.randint(0, 255), rnd.randint(1, 254)])
        if hosts:
            h = i % hosts
            if v6:
                a = a[:12] + struct.pack("!I", h)
                b = b[:12] + struct.pack("!I", 0x10000 + h)
            else:
                a = bytes([10, 200, h >> 8 & 0xFF, h & 0xFF])
                b = bytes([198, 18, h >> 8 & 0xFF, h & 0xFF])
        proto = "tcp" if kind < 0.7 else "udp" if kind < 0.95 else "icmp"
        dport = rnd.choice((80, 443, 443, 443, 53, 22, 25, 8080, 3306, 123)) if proto != "icmp" else 0
        vlan = 100 + (i % 4) if rnd.random() < 0.1 else None
        specs.append((a, b, proto, 1024 + (i * 7) % 60000, dport, v6, vlan, rnd.getrandbits(32)))
    per_flow = max(2, packets // flows)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    ts = 1_700_000_000.0
    written = 0
    # Interleave flows in rounds, as real traffic does, rather than one flow after another.
    state = [[0, s[7], rnd.getrandbits(32)] for s in specs]
    rounds = per_flow
    for r in range(rounds):
        for i, (a, b, proto, sport, dport, v6, vlan, _isn) in enumerate(specs):
            if written >= packets:
                break
            st = state[i]
            fwd = r % 2 == 0
            src, dst = (a, b) if fwd else (b, a)
            sp, dp = (sport, dport) if fwd else (dport, sport)
            size = rnd.choice((0, 0, 40, 200, 600, 1200, 1400)) if proto == "tcp" else rnd.randint(20, 500)
            payload = bytes(size)
            if proto == "tcp":
                if r == 0:
                    flags, payload = 0x02, b""
                elif r == 1:
                    flags, payload = 0x12, b""
                elif r == rounds - 1:
                    flags = 0x11
                else:
                    flags = 0x18 if payload else 0x10
                seq = st[1] if fwd else st[2]
                ack = st[2] if fwd else st[1]
                l4 = tcp(sp, dp, seq, ack if r else 0, flags, payload)
                adv = len(payload) + (1 if flags & 0x03 else 0)
                if fwd:
                    st[1] += adv
                else:
                    st[2] += adv
                pnum = 6
            elif proto == "udp":
                l4 = udp(sp, dp, payload)
                pnum = 17
            else:
                itype = (128 if fwd else 129) if v6 else (8 if fwd else 0)
                l4 = struct.pack("!BBHHH", itype, 0, 0, i & 0xFFFF, r) + payload[:56]
                pnum = 58 if v6 else 1
            if v6:
                frame = eth(mac_a, mac_b, 0x86DD, vlan) + ipv6(src, dst, pnum, l4, 64 if fwd else 57)
            else:
                frame = eth(mac_a, mac_b, 0x0800, vlan) + ipv4(src, dst, pnum, l4, written, 64 if fwd else 57)
            ts += 0.00001
            sec = int(ts)
            out += struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)) + frame
            written += 1
        if written >= packets:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--hosts", type=int, default=0,
                    help="client and server addresses the flows share (0: every flow its own)")
    a = ap.parse_args()
    n = generate(a.out, a.packets, a.flows, hosts=a.hosts)
    print(f"wrote {n} packets in {a.flows} flows to {a.out}")


if __name__ == "__main__":
    main()
