"""A keep-alive HTTP client that knows its own sockets.

http.client rather than requests: we resolve the host ourselves and record the server
address before the first packet, and read the local port off the socket, so the capture
can exclude the resolver's own traffic.
"""
from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

from geo.own_traffic import OwnTraffic

USER_AGENT = "PacketTracer"


class HttpError(OSError):
    """The HTTP exchange failed (connection, protocol or a bad URL)."""


class HttpClient:
    """One persistent connection per scheme/host/port, reconnecting after errors."""

    def __init__(self, own: OwnTraffic, timeout: float = 5.0) -> None:
        self._own = own
        self._timeout = timeout
        self._conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send one request; returns (status, headers with lower-case names, body)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"unsupported URL {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        for attempt in (1, 2):          # a kept-alive connection may have been closed by the server
            conn = None
            try:
                conn = self._conns.get(key) or self._connect(*key)
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                self._conns.pop(key, None)
                if attempt == 2:
                    raise HttpError(f"{method} {parts.hostname}:{port}: {exc}") from None
                continue
            if resp.will_close:
                conn.close()
                self._conns.pop(key, None)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise HttpError("unreachable")  # pragma: no cover - the loop returns or raises

    def _connect(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise HttpError(f"cannot resolve {host}: {exc}") from None
        family, _, _, _, sockaddr = infos[0]
        ip = str(sockaddr[0])
        self._own.add_remote(ip, port)
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._timeout)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        sock = socket.create_connection((ip, port), timeout=self._timeout)
        self._own.add_local_port(sock.getsockname()[1])
        if scheme == "https":
            import ssl
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn.sock = sock
        self._conns[(scheme, host, port)] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
