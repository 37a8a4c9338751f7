"""The resolvers' own sockets, so the capture can leave their packets out.

Remote endpoints are recorded *before* a connection or datagram goes out, so the first
packet is already known; local ports are recorded as soon as the socket is bound.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

_MAX_PORTS = 4096   # PTR queries use a fresh port each: keep the recent ones only


class OwnTraffic:
    """Thread-safe record of (remote ip, port) endpoints and local ports in use."""

    __slots__ = ("_remotes", "_ports", "_lock")

    def __init__(self) -> None:
        self._remotes: set[tuple[str, int]] = set()
        self._ports: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()

    def add_remote(self, ip: str, port: int) -> None:
        with self._lock:
            self._remotes.add((ip, int(port)))

    def add_local_port(self, port: int) -> None:
        with self._lock:
            self._ports[int(port)] = None
            self._ports.move_to_end(int(port))
            while len(self._ports) > _MAX_PORTS:
                self._ports.popitem(last=False)

    def remotes(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._remotes)

    def local_ports(self) -> set[int]:
        with self._lock:
            return set(self._ports)
