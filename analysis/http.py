"""HTTP/1.x request and response heads: the few fields worth keeping.

Only the request line and a handful of headers are read (method, host, path, user agent;
status, server, content type). Cookies, authorization headers and bodies are never parsed
or kept.
"""
from __future__ import annotations

from dataclasses import dataclass

from analysis.apps import HTTP_METHODS

#: header block larger than this is not waited for (a request head is normally < 8 KB)
MAX_HEAD = 16384


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    version: str
    host: str | None = None
    user_agent: str | None = None
    #: body bytes that follow the head (Content-Length), -1 when chunked/unknown
    body_length: int = 0


@dataclass(slots=True)
class HttpResponse:
    version: str
    status: int
    reason: str
    server: str | None = None
    content_type: str | None = None


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").strip()


def _headers(lines: list[bytes], wanted: set[bytes]) -> dict[bytes, bytes]:
    """The first value of each wanted header (names compared case-insensitively)."""
    out: dict[bytes, bytes] = {}
    for line in lines:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().lower()
        if name in wanted and name not in out:
            out[name] = line[colon + 1:]
    return out


_REQ_HEADERS = {b"host", b"user-agent", b"content-length", b"transfer-encoding"}
_RESP_HEADERS = {b"server", b"content-type"}


def starts_request(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:10]).startswith(HTTP_METHODS)


def head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1 if it is not there yet."""
    i = buf.find(b"\r\n\r\n")
    if i >= 0:
        return i + 4
    i = buf.find(b"\n\n")
    return i + 2 if i >= 0 else -1


def parse_request(head: bytes) -> HttpRequest | None:
    """Parse a request head (request line + headers, without the body)."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) < 2 or not bytes(parts[0] + b" ").startswith(HTTP_METHODS):
        return None
    version = _text(parts[2]) if len(parts) > 2 else "HTTP/0.9"
    req = HttpRequest(_text(parts[0]), _text(parts[1]), version)
    hdr = _headers(lines[1:], _REQ_HEADERS)
    if b"host" in hdr:
        req.host = _text(hdr[b"host"])
    if b"user-agent" in hdr:
        req.user_agent = _text(hdr[b"user-agent"])
    if b"chunked" in hdr.get(b"transfer-encoding", b"").lower():
        req.body_length = -1
    elif b"content-length" in hdr:
        try:
            req.body_length = max(0, int(hdr[b"content-length"].strip()))
        except ValueError:
            req.body_length = -1
    return req


def parse_response(head: bytes) -> HttpResponse | None:
    """Parse a response head: status line plus Server and Content-Type."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    try:
        status = int(parts[1])
    except ValueError:
        return None
    resp = HttpResponse(_text(parts[0]), status, _text(parts[2]) if len(parts) > 2 else "")
    hdr = _headers(lines[1:], _RESP_HEADERS)
    if b"server" in hdr:
        resp.server = _text(hdr[b"server"])
    if b"content-type" in hdr:
        resp.content_type = _text(hdr[b"content-type"])
    return resp
