"""Network interfaces: listing (name, addresses, up/down) and the default-route interface.

Linux-specific code lives behind these two functions (sysfs, /proc/net/route, getifaddrs via
the socket module), so nothing else needs to know where the facts come from.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

_SYS = Path("/sys/class/net")


@dataclass(slots=True)
class Interface:
    name: str
    up: bool
    mac: str = ""
    addresses: list[str] = field(default_factory=list)


def _addresses() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        import psutil
        for name, addrs in psutil.net_if_addrs().items():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    out.setdefault(name, []).append(a.address.split("%")[0])
    except ImportError:
        pass
    return out


def list_interfaces() -> list[Interface]:
    """Interfaces known to the kernel, sorted by name."""
    if not _SYS.is_dir():
        return []
    addrs = _addresses()
    out = []
    for d in sorted(_SYS.iterdir()):
        try:
            oper = (d / "operstate").read_text().strip()
            flags = int((d / "flags").read_text().strip(), 16)
            mac = (d / "address").read_text().strip()
        except (OSError, ValueError):
            continue
        up = oper == "up" or (oper == "unknown" and bool(flags & 1))
        out.append(Interface(d.name, up, mac, addrs.get(d.name, [])))
    return out


def default_interface() -> str:
    """The interface of the IPv4 default route, else the first up non-loopback one."""
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 2 and parts[1] == "00000000":
                return parts[0]
    except OSError:
        pass
    for i in list_interfaces():
        if i.up and i.name != "lo":
            return i.name
    return "lo"
