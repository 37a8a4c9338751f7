"""Passive inventory of the hosts on the local segment.

Built only from what hosts announce anyway: ARP (MAC <-> IPv4), DHCP (hostname option 12,
vendor class option 60, the address handed out, the router option), mDNS / LLMNR / NetBIOS
name announcements and answers, and the OS fingerprint of their TCP SYNs. Vendors come from
the IEEE OUI registry that Debian ships in the ``ieee-data`` package (MA-L, MA-M and MA-S
blocks, read once, lazily); without it, the offline copy inside ``netaddr`` is used if that is
installed, else vendors stay unknown.

Roles: ``gateway`` (a MAC whose packets arrive with a TTL a hop has already lowered, that
sources or receives traffic for many IP addresses, or that the DHCP router option names), ``router hop`` (it sent an ICMP time-exceeded), else ``endpoint``.
The per-packet cost is a dict lookup and a couple of set checks; the name-service and DHCP
parsers run only for their ports.
"""
from __future__ import annotations

import csv
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.osfp import UNKNOWN as OS_UNKNOWN
from analysis.osfp import fingerprint
from capture.packet import ACK, PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, SYN, ParsedPacket, mac_str
from utils.logger import get_logger

log = get_logger(__name__)

IEEE_DATA_DIR = Path("/usr/share/ieee-data")
#: distinct source (or destination) IPs behind one MAC after which it is taken for a router
GATEWAY_IPS = 4
#: addresses and names kept per device
MAX_PER_DEVICE = 8

ROLE_GATEWAY, ROLE_HOP, ROLE_ENDPOINT = "gateway", "router hop", "endpoint"


class OuiDb:
    """MAC prefix -> organisation, from the IEEE registry files (36-, 28- then 24-bit blocks)."""

    def __init__(self, directory: Path | str | None = IEEE_DATA_DIR) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._tables: list[tuple[int, dict[str, str]]] | None = None
        self._source = ""

    @property
    def source(self) -> str:
        """Where vendors come from: "ieee-data (DIR)", "netaddr" or "" (none)."""
        if self._tables is None:
            self._tables = self._load()
        return self._source

    def _load(self) -> list[tuple[int, dict[str, str]]]:
        tables: list[tuple[int, dict[str, str]]] = []
        if self.directory is not None:
            # MA-S (36-bit) and MA-M (28-bit) blocks sit inside MA-L ranges: most specific first.
            for name, digits in (("oui36.csv", 9), ("mam.csv", 7), ("oui.csv", 6)):
                path = self.directory / name
                if not path.is_file():
                    continue
                table: dict[str, str] = {}
                with open(path, newline="", encoding="utf-8", errors="replace") as fh:
                    for row in csv.reader(fh):
                        if len(row) >= 3 and len(row[1]) == digits and row[0] != "Registry":
                            table[row[1].upper()] = row[2].strip()
                if table:
                    tables.append((digits, table))
        if tables:
            self._source = f"ieee-data ({self.directory})"
        else:
            self._source = "netaddr" if _netaddr_available() else ""
        if not self._source:
            log.info("no OUI registry found (install Debian's ieee-data); vendors unknown")
        return tables

    def vendor(self, mac: bytes) -> str | None:
        """Registered organisation for a 6-byte MAC, None if unknown."""
        if len(mac) != 6:
            return None
        if mac[0] & 0x02:
            return "(locally administered)"     # randomised/private MACs carry no OUI
        if self._tables is None:
            self._tables = self._load()
        hexmac = mac.hex().upper()
        for digits, table in self._tables:
            name = table.get(hexmac[:digits])
            if name:
                return name
        if self._source == "netaddr":
            return _netaddr_vendor(mac)
        return None


def _netaddr_available() -> bool:
    try:
        import netaddr  # noqa: F401  (optional fallback OUI source)
    except ImportError:
        return False
    return True


def _netaddr_vendor(mac: bytes) -> str | None:
    import netaddr
    try:
        return str(netaddr.EUI(mac.hex(":")).oui.registration().org)
    except (netaddr.NotRegisteredError, netaddr.AddrFormatError):
        return None


@dataclass(slots=True)
class Device:
    mac: str
    vendor: str | None = None
    ips: list[str] = field(default_factory=list)
    #: names with where they came from, e.g. ("gemini.local", "mdns")
    names: list[tuple[str, str]] = field(default_factory=list)
    dhcp_hostname: str | None = None
    dhcp_vendor_class: str | None = None
    os_guess: str | None = None
    role: str = ROLE_ENDPOINT
    first_seen: float = 0.0
    last_seen: float = 0.0
    packets: int = 0
    # --- evidence, bounded
    src_ips: set[str] = field(default_factory=set, repr=False)
    dst_ips: set[str] = field(default_factory=set, repr=False)
    os_by_ip: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def hostname(self) -> str | None:
        if self.dhcp_hostname:
            return self.dhcp_hostname
        return self.names[0][0] if self.names else None

    def add_ip(self, ip: str) -> None:
        if ip and ip not in self.ips and len(self.ips) < MAX_PER_DEVICE and \
                ip not in ("0.0.0.0", "::"):
            self.ips.append(ip)

    def add_name(self, name: str, source: str) -> None:
        name = name.rstrip(".")
        if name and all(n != name for n, _ in self.names) and len(self.names) < MAX_PER_DEVICE:
            self.names.append((name, source))

    def as_dict(self) -> dict[str, Any]:
        return {
            "mac": self.mac, "vendor": self.vendor, "ips": list(self.ips),
            "names": [n for n, _ in self.names], "name_sources": [s for _, s in self.names],
            "hostname": self.hostname, "dhcp_vendor_class": self.dhcp_vendor_class,
            "os": self.os_guess, "role": self.role, "first_seen": self.first_seen,
            "last_seen": self.last_seen, "packets": self.packets,
        }


class DeviceInventory:
    """The local segment's devices, keyed by MAC, fed every packet via :meth:`observe`."""

    def __init__(self, oui: OuiDb | None = None, max_devices: int = 4096) -> None:
        self.oui = oui if oui is not None else OuiDb()
        self.max_devices = max_devices
        self._by_mac: dict[bytes, Device] = {}
        self._hop_ips: set[str] = set()
        self._router_ips: set[str] = set()

    # ---- hot path ----------------------------------------------------------------------------
    def observe(self, pkt: ParsedPacket) -> None:
        mac = pkt.src_mac
        if len(mac) != 6 or mac[0] & 0x01:       # no link layer, or a group address
            return
        dev = self._by_mac.get(mac)
        if dev is None:
            dev = self._new(mac, pkt.ts)
        dev.packets += 1
        if pkt.ts > dev.last_seen:
            dev.last_seen = pkt.ts
        arp = pkt.arp
        if arp is not None:
            if arp.sender_mac == mac:
                dev.add_ip(arp.sender_ip)
            return
        src = pkt.src_ip
        if not src:
            return
        ttl = pkt.ttl
        if ttl > 32 and ttl not in _LOCAL_TTLS:
            # A hop already lowered the TTL: this MAC forwarded someone else's packet. (Low
            # TTLs are left alone: traceroute probes leave a host with TTL 1, 2, 3...)
            dev.role = ROLE_GATEWAY
            return
        if len(dev.src_ips) <= GATEWAY_IPS and src not in dev.src_ips:
            dev.src_ips.add(src)
            if len(dev.src_ips) > GATEWAY_IPS:
                dev.role = ROLE_GATEWAY
        dmac = pkt.dst_mac
        if len(dmac) == 6 and not dmac[0] & 0x01:
            peer = self._by_mac.get(dmac)
            if peer is not None and len(peer.dst_ips) <= GATEWAY_IPS and \
                    pkt.dst_ip not in peer.dst_ips:
                peer.dst_ips.add(pkt.dst_ip)
                if len(peer.dst_ips) > GATEWAY_IPS:
                    peer.role = ROLE_GATEWAY
        proto = pkt.proto
        if proto == PROTO_UDP:
            sport, dport = pkt.sport, pkt.dport
            if sport in _NAME_PORTS or dport in _NAME_PORTS:
                self._udp(dev, pkt, sport, dport)
        elif proto == 6:
            if pkt.tcp_flags & (SYN | ACK) == SYN or pkt.tcp_flags & (SYN | ACK) == SYN | ACK:
                guess = fingerprint(pkt)
                if guess is not None and guess.label != OS_UNKNOWN and \
                        len(dev.os_by_ip) < MAX_PER_DEVICE:
                    # Kept per source IP: a router's MAC also carries remote hosts' SYN/ACKs.
                    dev.os_by_ip[src] = guess.label
        elif (proto == PROTO_ICMP and pkt.icmp_type == 11) or \
                (proto == PROTO_ICMPV6 and pkt.icmp_type == 3):
            self._hop_ips.add(src)
            if dev.role == ROLE_ENDPOINT and src in dev.ips:
                dev.role = ROLE_HOP

    def _new(self, mac: bytes, ts: float) -> Device:
        if len(self._by_mac) >= self.max_devices:
            self._by_mac.pop(min(self._by_mac, key=lambda m: self._by_mac[m].last_seen))
        dev = Device(mac_str(mac), vendor=self.oui.vendor(mac), first_seen=ts, last_seen=ts)
        self._by_mac[mac] = dev
        return dev

    # ---- DHCP and name services --------------------------------------------------------------
    def _udp(self, dev: Device, pkt: ParsedPacket, sport: int, dport: int) -> None:
        data = bytes(pkt.payload)
        if sport in (67, 68) and dport in (67, 68):
            self._dhcp(dev, data)
        elif sport == 5353 or dport == 5353:
            self._dns_names(dev, pkt, data, "mdns")
        elif sport == 5355 or dport == 5355:
            self._dns_names(dev, pkt, data, "llmnr")
        elif sport == 137 or dport == 137:
            self._netbios(dev, pkt, data)

    def _dhcp(self, dev: Device, data: bytes) -> None:
        if len(data) < 240 or data[236:240] != b"\x63\x82\x53\x63":
            return
        op = data[0]
        chaddr = data[28:34]
        opts = _dhcp_options(data)
        if op == 1:                              # from the client: its own facts
            if 12 in opts:
                dev.dhcp_hostname = opts[12].decode("utf-8", errors="replace")
                dev.add_name(dev.dhcp_hostname, "dhcp")
            if 60 in opts:
                dev.dhcp_vendor_class = opts[60].decode("utf-8", errors="replace")
            return
        # From the server: the client (by chaddr) gets yiaddr on ACK; routers are named.
        client = self._by_mac.get(chaddr)
        msg_type = opts.get(53, b"\x00")[0]
        if client is not None and msg_type == 5 and data[16:20] != b"\x00\x00\x00\x00":
            client.add_ip(str(ipaddress.IPv4Address(data[16:20])))
        for i in range(0, len(opts.get(3, b"")) - 3, 4):
            router = str(ipaddress.IPv4Address(opts[3][i:i + 4]))
            self._router_ips.add(router)

    def _dns_names(self, dev: Device, pkt: ParsedPacket, data: bytes, source: str) -> None:
        """Names a host claims: A/AAAA answers for its own address (mDNS/LLMNR responses)."""
        if len(data) < 12 or not data[2] & 0x80:
            return
        qd = int.from_bytes(data[4:6], "big")
        an = int.from_bytes(data[6:8], "big") + int.from_bytes(data[8:10], "big") + \
            int.from_bytes(data[10:12], "big")
        try:
            pos = 12
            for _ in range(min(qd, 16)):
                _, pos = _read_name(data, pos)
                pos += 4
            for _ in range(min(an, 64)):
                name, pos = _read_name(data, pos)
                rtype = int.from_bytes(data[pos:pos + 2], "big")
                rdlen = int.from_bytes(data[pos + 8:pos + 10], "big")
                rdata = data[pos + 10:pos + 10 + rdlen]
                pos += 10 + rdlen
                if rtype == 1 and rdlen == 4:
                    addr = str(ipaddress.IPv4Address(rdata))
                elif rtype == 28 and rdlen == 16:
                    addr = str(ipaddress.IPv6Address(rdata))
                else:
                    continue
                if addr == pkt.src_ip or addr in dev.ips:
                    dev.add_name(name, source)
                    dev.add_ip(addr)
        except (IndexError, ValueError):
            return

    def _netbios(self, dev: Device, pkt: ParsedPacket, data: bytes) -> None:
        """NetBIOS name registrations (opcode 5/8/9) carry the sender's own name."""
        if len(data) < 12 + 34:
            return
        opcode = (data[2] >> 3) & 0x0F
        is_response = data[2] & 0x80
        if is_response or opcode not in (5, 8, 9):
            return
        name = _netbios_name(data[13:45]) if data[12] == 32 else None
        if name:
            dev.add_name(name, "netbios")

    # ---- results -----------------------------------------------------------------------------
    def devices(self) -> list[Device]:
        out = list(self._by_mac.values())
        for dev in out:
            if len(dev.src_ips) <= GATEWAY_IPS:
                # A few addresses sent with an unlowered TTL are the MAC's own (public LANs
                # included); forwarded packets never reach src_ips.
                for ip in sorted(dev.src_ips):
                    dev.add_ip(ip)
            for ip in dev.ips:
                if ip in dev.os_by_ip:
                    dev.os_guess = dev.os_by_ip[ip]
                    break
            if dev.role == ROLE_ENDPOINT:
                if any(ip in self._router_ips for ip in dev.ips):
                    dev.role = ROLE_GATEWAY
                elif any(ip in self._hop_ips for ip in dev.ips):
                    dev.role = ROLE_HOP
        return out

    def get(self, mac: str) -> Device | None:
        for dev in self.devices():
            if dev.mac == mac.lower():
                return dev
        return None

    def db_rows(self) -> list[dict[str, Any]]:
        """Rows for the ``devices`` table (one per IP; the rest goes to its ``extra`` JSON)."""
        rows = []
        for dev in self.devices():
            for ip in dev.ips or [""]:
                if not ip:
                    continue
                rows.append({
                    "ip": ip, "mac": dev.mac, "device_type": dev.role, "vendor": dev.vendor,
                    "hostname": dev.hostname, "os": dev.os_guess, "first_seen": dev.first_seen,
                    "last_seen": dev.last_seen, "names": [n for n, _ in dev.names],
                    "dhcp_vendor_class": dev.dhcp_vendor_class,
                })
        return rows


_NAME_PORTS = frozenset((67, 68, 137, 5353, 5355))
#: TTLs a sender on this segment starts from (1 = LLMNR/multicast-scoped, 255 = mDNS/ND)
_LOCAL_TTLS = frozenset((1, 30, 32, 60, 64, 128, 255))


def _is_local(ip: str) -> bool:
    """Addresses that belong on a LAN segment (private, link-local, ULA, CGNAT)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_private or addr.is_link_local or (
        addr.version == 4 and addr in _CGNAT)


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _dhcp_options(data: bytes) -> dict[int, bytes]:
    opts: dict[int, bytes] = {}
    pos = 240
    n = len(data)
    while pos < n:
        code = data[pos]
        if code == 255:
            break
        if code == 0:
            pos += 1
            continue
        if pos + 1 >= n:
            break
        ln = data[pos + 1]
        opts.setdefault(code, data[pos + 2:pos + 2 + ln])
        pos += 2 + ln
    return opts


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """A DNS name with compression pointers; returns (name, position after it)."""
    labels: list[str] = []
    end = -1
    for _ in range(128):
        ln = msg[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            pos = (ln & 0x3F) << 8 | msg[pos + 1]
            continue
        labels.append(msg[pos + 1:pos + 1 + ln].decode("utf-8", errors="replace"))
        pos += 1 + ln
    else:
        raise ValueError("name too long or looping")
    return ".".join(labels), end if end >= 0 else pos


def _netbios_name(encoded: bytes) -> str | None:
    """Undo NetBIOS first-level encoding (two 'A'-'P' letters per byte); drop the suffix."""
    if len(encoded) != 32:
        return None
    raw = bytearray()
    for i in range(0, 32, 2):
        hi, lo = encoded[i] - 0x41, encoded[i + 1] - 0x41
        if not (0 <= hi < 16 and 0 <= lo < 16):
            return None
        raw.append(hi << 4 | lo)
    name = raw[:15].decode("ascii", errors="replace").rstrip()
    return name or None
