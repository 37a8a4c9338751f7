"""Credentials sent in clear text: FTP and POP3 USER/PASS, IMAP LOGIN, HTTP Basic auth and
Telnet login prompts.

The alert says which protocol carried a login and between which endpoints; it never contains
the user name or the secret. Only the first bytes of a segment are looked at, and only on the
ports of those protocols (HTTP: any port, but only segments that start with a request method).

:class:`security.monitor.SecurityMonitor` applies those two tests itself (``LOGIN_PORTS``,
``HTTP_METHODS``) and calls :meth:`CleartextCredentialDetector.login_port` or
:meth:`CleartextCredentialDetector.http_request` only for the segments that pass, so the
bulk of TCP payload costs one slice and one set lookup.
"""
from __future__ import annotations

from capture.packet import PROTO_TCP, ParsedPacket
from security.alerts import AlertEngine
from utils.bounded import evict_oldest

#: the first four bytes of an HTTP request
HTTP_METHODS = frozenset({b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI"})
_BASIC = (b"\nAuthorization: Basic ", b"\nauthorization: basic ", b"\nAUTHORIZATION: BASIC ",
          b"\nAuthorization: basic ")
#: how far into an HTTP request we look for the header (request line + usual headers)
_HTTP_SCAN = 4096
#: destination ports of FTP, POP3 and IMAP logins, and Telnet (either side)
LOGIN_PORTS = frozenset({21, 110, 143, 23})


class CleartextCredentialDetector:
    """Raises ``cleartext_credentials`` once per (client, server, protocol) login seen."""

    #: IP protocols this detector looks at (the monitor routes only these to it)
    protocols = frozenset({PROTO_TCP})

    def __init__(self, engine: AlertEngine, max_sessions: int = 10000) -> None:
        self.engine = engine
        self.max_sessions = max_sessions
        #: (client, server, port) -> what we have seen: bit 1 user, bit 2 password, 4 prompt
        self._sessions: dict[tuple[str, str, int], int] = {}
        self.found = 0

    def process(self, pkt: ParsedPacket) -> None:
        """Examine one packet (any)."""
        if pkt.proto != PROTO_TCP or pkt.payload_len < 5:
            return
        if pkt.dport in LOGIN_PORTS or pkt.sport == 23:
            self.login_port(pkt)
        else:
            off = pkt.payload_offset
            if pkt.data[off:off + 4] in HTTP_METHODS:
                self.http_request(pkt)

    def login_port(self, pkt: ParsedPacket) -> None:
        """A TCP segment with data to a port in ``LOGIN_PORTS`` (or from Telnet's)."""
        dport = pkt.dport
        if dport == 21 or dport == 110:
            head = bytes(pkt.payload[:5]).upper()
            if head == b"PASS ":
                self._found(pkt, "FTP" if dport == 21 else "POP3", "USER/PASS login")
        elif dport == 143:
            line = bytes(pkt.payload[:64]).upper()
            sp = line.find(b" ")
            if sp > 0 and line[sp + 1:sp + 7] == b"LOGIN ":
                self._found(pkt, "IMAP", "LOGIN command")
        else:
            self._telnet(pkt)

    def http_request(self, pkt: ParsedPacket) -> None:
        """A TCP segment whose payload starts with one of ``HTTP_METHODS``."""
        data = bytes(pkt.payload[:_HTTP_SCAN])
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        for needle in _BASIC:
            if needle in head:
                self._found(pkt, "HTTP", "Basic authorization header")
                break

    def _telnet(self, pkt: ParsedPacket) -> None:
        # Server prompts "login:" then "Password:"; the client's answers follow in clear.
        if pkt.sport == 23:
            data = bytes(pkt.payload[:256]).lower()
            if b"password:" in data:
                key = (pkt.dst_ip, pkt.src_ip, 23)
                state = self._sessions.get(key, 0)
                self._sessions[key] = state | 4
        else:
            key = (pkt.src_ip, pkt.dst_ip, 23)
            state = self._sessions.get(key, 0)
            if state & 4 and not state & 2:
                self._sessions[key] = state | 2
                self._report(pkt.src_ip, pkt.dst_ip, 23, "Telnet", "password typed after a "
                             "login prompt", pkt.ts)

    def _found(self, pkt: ParsedPacket, proto: str, what: str) -> None:
        key = (pkt.src_ip, pkt.dst_ip, pkt.dport)
        state = self._sessions.get(key, 0)
        if state & 2:
            return
        self._sessions[key] = state | 2
        if len(self._sessions) > self.max_sessions:
            evict_oldest(self._sessions, self.max_sessions)
        self._report(pkt.src_ip, pkt.dst_ip, pkt.dport, proto, what, pkt.ts)

    def _report(self, client: str, server: str, port: int, proto: str, what: str,
                ts: float) -> None:
        self.found += 1
        self.engine.raise_alert(
            "cleartext_credentials", "medium", client, f"{server}:{port}",
            f"Cleartext {proto} credentials sent by {client} to {server}:{port} ({what}); "
            f"the secret is not recorded",
            {"protocol": proto, "port": port, "logins": self.found}, ts=ts)
