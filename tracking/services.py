"""Port -> service name, per transport protocol.

A built-in table covers the ports people actually see on a LAN or a laptop, so names are the
same on every machine; ``/etc/services`` (when present) fills in the rest. Both are loaded once
and looked up with one dict access per call, keyed ``proto << 16 | port``.
"""
from __future__ import annotations

import threading
from pathlib import Path

from capture.packet import PROTO_SCTP, PROTO_TCP, PROTO_UDP

_T, _U = PROTO_TCP, PROTO_UDP
_BOTH = (_T, _U)

#: (port, protocols, name); names follow IANA/Wireshark spelling, upper case for acronyms
_BUILTIN: tuple[tuple[int, tuple[int, ...], str], ...] = (
    (7, _BOTH, "Echo"), (9, _BOTH, "Discard"), (13, _BOTH, "Daytime"),
    (20, (_T,), "FTP-Data"), (21, (_T,), "FTP"), (22, (_T,), "SSH"), (23, (_T,), "Telnet"),
    (25, (_T,), "SMTP"), (37, _BOTH, "Time"), (43, (_T,), "WHOIS"), (49, _BOTH, "TACACS"),
    (53, _BOTH, "DNS"), (67, (_U,), "DHCP"), (68, (_U,), "DHCP"), (69, (_U,), "TFTP"),
    (79, (_T,), "Finger"), (80, _BOTH, "HTTP"), (88, _BOTH, "Kerberos"), (110, (_T,), "POP3"),
    (111, _BOTH, "RPCbind"), (113, (_T,), "Ident"), (119, (_T,), "NNTP"), (123, (_U,), "NTP"),
    (135, _BOTH, "MS-RPC"), (137, (_U,), "NetBIOS-NS"), (138, (_U,), "NetBIOS-DGM"),
    (139, (_T,), "NetBIOS-SSN"), (143, (_T,), "IMAP"), (161, (_U,), "SNMP"),
    (162, (_U,), "SNMP-Trap"), (179, (_T,), "BGP"), (194, (_T,), "IRC"), (389, _BOTH, "LDAP"),
    (427, _BOTH, "SLP"), (443, _BOTH, "HTTPS"), (445, (_T,), "SMB"), (464, _BOTH, "Kpasswd"),
    (465, (_T,), "SMTPS"), (500, (_U,), "IKE"), (514, (_U,), "Syslog"), (515, (_T,), "LPD"),
    (520, (_U,), "RIP"), (546, (_U,), "DHCPv6"), (547, (_U,), "DHCPv6"), (548, (_T,), "AFP"),
    (554, _BOTH, "RTSP"), (563, (_T,), "NNTPS"), (587, (_T,), "Submission"),
    (631, _BOTH, "IPP"), (636, (_T,), "LDAPS"), (646, _BOTH, "LDP"), (853, _BOTH, "DNS-over-TLS"),
    (873, (_T,), "rsync"), (989, (_T,), "FTPS-Data"), (990, (_T,), "FTPS"), (993, (_T,), "IMAPS"),
    (995, (_T,), "POP3S"), (1080, (_T,), "SOCKS"), (1194, _BOTH, "OpenVPN"),
    (1433, (_T,), "MSSQL"), (1434, (_U,), "MSSQL-Browser"), (1521, (_T,), "Oracle"),
    (1701, (_U,), "L2TP"), (1723, (_T,), "PPTP"), (1812, (_U,), "RADIUS"),
    (1813, (_U,), "RADIUS-Acct"), (1883, (_T,), "MQTT"), (1900, (_U,), "SSDP"),
    (2049, _BOTH, "NFS"), (2082, (_T,), "cPanel"), (2083, (_T,), "cPanel-SSL"),
    (2181, (_T,), "ZooKeeper"), (2375, (_T,), "Docker"), (2376, (_T,), "Docker-TLS"),
    (3074, _BOTH, "Xbox-Live"), (3128, (_T,), "Squid"), (3268, (_T,), "LDAP-GC"),
    (3306, (_T,), "MySQL"), (3389, _BOTH, "RDP"), (3478, _BOTH, "STUN"), (3479, _BOTH, "STUN"),
    (3480, (_U,), "STUN"), (3481, (_U,), "STUN"), (3544, (_U,), "Teredo"), (3659, _BOTH, "EA-Games"),
    (3702, (_U,), "WS-Discovery"), (4500, (_U,), "IPsec-NAT-T"), (4789, (_U,), "VXLAN"),
    (5004, (_U,), "RTP"), (5005, (_U,), "RTCP"), (5060, _BOTH, "SIP"), (5061, (_T,), "SIPS"),
    (5222, (_T,), "XMPP"), (5223, (_T,), "XMPP-SSL"), (5228, (_T,), "Google-Play"),
    (5269, (_T,), "XMPP-Server"), (5353, (_U,), "mDNS"), (5355, _BOTH, "LLMNR"),
    (5432, (_T,), "PostgreSQL"), (5671, (_T,), "AMQPS"), (5672, (_T,), "AMQP"),
    (5683, (_U,), "CoAP"), (5900, (_T,), "VNC"), (5938, _BOTH, "TeamViewer"),
    (5984, (_T,), "CouchDB"), (6379, (_T,), "Redis"), (6443, (_T,), "Kubernetes-API"),
    (6660, (_T,), "IRC"), (6667, (_T,), "IRC"), (6697, (_T,), "IRCS"), (6881, _BOTH, "BitTorrent"),
    (6969, (_T,), "BitTorrent-Tracker"), (7000, (_T,), "Cassandra"), (8000, (_T,), "HTTP-Alt"),
    (8008, (_T,), "HTTP-Alt"), (8080, (_T,), "HTTP-Proxy"), (8088, (_T,), "HTTP-Alt"),
    (8291, (_T,), "Winbox"), (8443, (_T,), "HTTPS-Alt"), (8883, (_T,), "MQTTS"),
    (9000, (_T,), "HTTP-Alt"), (9042, (_T,), "Cassandra-CQL"), (9092, (_T,), "Kafka"),
    (9100, (_T,), "JetDirect"), (9200, (_T,), "Elasticsearch"), (9418, (_T,), "Git"),
    (10050, (_T,), "Zabbix-Agent"), (10051, (_T,), "Zabbix"), (11211, _BOTH, "Memcached"),
    (19302, (_U,), "STUN-Google"), (25565, (_T,), "Minecraft"), (27015, _BOTH, "Steam"),
    (27017, (_T,), "MongoDB"), (51413, _BOTH, "BitTorrent"), (51820, (_U,), "WireGuard"),
)

_table: dict[int, str] = {(p << 16) | port: name for port, protos, name in _BUILTIN for p in protos}
_system: dict[int, str] | None = None
_system_lock = threading.Lock()
_PROTO_BY_NAME = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP}


def parse_services(text: str) -> dict[int, str]:
    """Entries of an ``/etc/services`` file: ``name port/proto [aliases] [# comment]``."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        parts = line.split()
        if len(parts) < 2 or "/" not in parts[1]:
            continue
        port_s, _, proto_s = parts[1].partition("/")
        proto = _PROTO_BY_NAME.get(proto_s.lower())
        if proto is None or not port_s.isdigit():
            continue
        port = int(port_s)
        if 0 <= port <= 0xFFFF:
            out.setdefault((proto << 16) | port, parts[0])
    return out


def _load_system(path: Path = Path("/etc/services")) -> dict[int, str]:
    global _system
    with _system_lock:
        if _system is None:
            try:
                _system = parse_services(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:  # absent on minimal containers: the built-in table is enough
                _system = {}
        return _system


def service_name(port: int, proto: int = PROTO_TCP) -> str:
    """Name of the service on ``port`` for IP protocol ``proto``; "" when unknown."""
    key = (proto << 16) | port
    name = _table.get(key)
    if name is not None:
        return name
    system = _system if _system is not None else _load_system()
    return system.get(key, "")


def is_known_port(port: int, proto: int = PROTO_TCP) -> bool:
    """True when the built-in table names the port (cheap: the hot path uses it)."""
    return ((proto << 16) | port) in _table


def known_port_keys() -> frozenset[int]:
    """The built-in table's keys (``proto << 16 | port``), for callers that inline the check."""
    return frozenset(_table)


def port_range(port: int) -> str:
    """IANA range of a port: "well-known" (0-1023), "registered" (1024-49151) or "dynamic"."""
    if port < 1024:
        return "well-known"
    if port < 49152:
        return "registered"
    return "dynamic"
