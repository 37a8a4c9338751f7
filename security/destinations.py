"""Alert delivery: syslog, webhook and e-mail, each behind its own bounded queue and thread.

:meth:`QueuedDestination.submit` never blocks: when a destination is slow or down its queue
fills and further alerts are dropped *for that destination only* and counted. Every failure is
counted too (``stats()``), and nothing secret (passwords, HMAC keys, webhook URLs' paths and
queries) is ever logged or put into stats.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import smtplib
import socket
import ssl
import sys
import threading
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit


from config import ALERT_EMAIL_TO, ALERT_SMTP, ALERT_SYSLOG, ALERT_WEBHOOK_SECRET, \
    ALERT_WEBHOOK_URL, VERSION
from security.alert import SEVERITY_RANK, Alert
from utils.logger import get_logger

if TYPE_CHECKING:
    import requests

log = get_logger(__name__)

#: environment variable holding the SMTP password (kept out of config files on purpose)
SMTP_PASSWORD_ENV = "PACKETTRACER_SMTP_PASSWORD"
SIGNATURE_HEADER = "X-PacketTracer-Signature"


class DeliveryError(RuntimeError):
    """A destination refused an alert (the message carries no secret)."""


#: what a failed delivery may raise; anything else is a bug and is logged as such (requests'
#: RequestException is an OSError)
_DELIVERY_ERRORS = (OSError, smtplib.SMTPException, DeliveryError)


class QueuedDestination:
    """Base class: a bounded queue drained by one daemon thread calling :meth:`deliver`.

    After ``breaker_failures`` failures in a row the destination is considered down for
    ``breaker_cooldown`` seconds: alerts reaching the worker meanwhile are failed at once (and
    counted) instead of each waiting out timeouts and retries, so the queue keeps moving and a
    recovered destination is used again after the cooldown.
    """

    name = "destination"
    breaker_failures = 5
    breaker_cooldown = 30.0

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue: queue.Queue[Alert | None] = queue.Queue(max(1, queue_size))
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error = ""
        self.skipped = 0
        self._consecutive = 0
        self._down_until = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> "QueuedDestination":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"alert-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def submit(self, alert: Alert) -> bool:
        """Queue an alert; False (and counted as dropped) when the queue is full or closed."""
        if self._stop.is_set():
            self.dropped += 1
            return False
        if self._thread is None:
            self.start()
        with self._idle:
            self._busy += 1
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._done(1)
            self.dropped += 1
            return False
        return True

    def _done(self, n: int) -> None:
        with self._idle:
            self._busy -= n
            if self._busy <= 0:
                self._idle.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted alert was delivered or failed (True) or time ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy <= 0, timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._attempt([alert])

    def _attempt(self, alerts: list[Alert]) -> None:
        try:
            if time.monotonic() < self._down_until:
                self.failed += len(alerts)
                self.skipped += len(alerts)
                return
            self.deliver(alerts)
            self.sent += len(alerts)
            self._consecutive = 0
        except _DELIVERY_ERRORS as exc:
            self.failed += len(alerts)
            self.last_error = _describe(exc)
            self._consecutive += 1
            if self._consecutive >= self.breaker_failures:
                self._consecutive = 0
                self._down_until = time.monotonic() + self.breaker_cooldown
                log.warning("alert destination %s is down (%s); pausing %.0f s", self.name,
                            self.last_error, self.breaker_cooldown)
            else:
                log.warning("alert destination %s failed: %s", self.name, self.last_error)
        finally:
            self._done(len(alerts))

    def deliver(self, alerts: list[Alert]) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "queued": self._queue.qsize(), "last_error": self.last_error,
                "skipped_while_down": self.skipped,
                "down": time.monotonic() < self._down_until}

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker; alerts still queued after ``timeout`` are abandoned."""
        self._stop.set()
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._disconnect()

    def _disconnect(self) -> None:
        pass


def _describe(exc: BaseException) -> str:
    # requests puts full URLs (with tokens) in messages: keep only the type for those (none
    # can be one while requests was never imported, so an SMTP error does not import it).
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(exc, requests.RequestException):
        return type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --- syslog -----------------------------------------------------------------------------------
#: RFC 5424 severities (0 emergency .. 7 debug)
_SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: RFC 5424 reserves enterprise number 32473 for documentation and examples
SD_ID = "packettracer@32473"


def _sd_escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _ascii_token(text: str, limit: int) -> str:
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return out or "-"


def format_rfc5424(alert: Alert, hostname: str, app_name: str = "packettracer",
                   facility: int = 16, procid: str = "-") -> bytes:
    """One RFC 5424 message: header, a structured-data element with the alert fields, then the
    human message (UTF-8 with BOM, as the RFC asks)."""
    pri = facility * 8 + _SYSLOG_SEVERITY.get(alert.severity, 4)
    ts = datetime.fromtimestamp(alert.ts, timezone.utc).isoformat(timespec="microseconds")
    ts = ts.replace("+00:00", "Z")
    params = {"id": alert.id, "rule": alert.rule_id, "severity": alert.severity,
              "src": alert.src, "dst": alert.dst, "count": alert.count}
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
    header = (f"<{pri}>1 {ts} {_ascii_token(hostname, 255)} {_ascii_token(app_name, 48)} "
              f"{_ascii_token(procid, 128)} {_ascii_token(alert.rule_id, 32)} {sd} ")
    return header.encode("ascii") + b"\xef\xbb\xbf" + alert.message.encode("utf-8")


def format_rfc3164(alert: Alert, hostname: str, app_name: str = "packettracer",
                   facility: int = 16) -> bytes:
    """The older BSD syslog line: ``<PRI>Mmm dd hh:mm:ss host tag: message``."""
    pri = facility * 8 + _SYSLOG_SEVERITY.get(alert.severity, 4)
    t = time.localtime(alert.ts)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    host = _ascii_token(hostname.split(".")[0], 64)
    text = f"[{alert.severity}] {alert.rule_id}: {alert.message}"
    return f"<{pri}>{stamp} {host} {_ascii_token(app_name, 32)}: {text}".encode("utf-8")[:1024]


class SyslogDestination(QueuedDestination):
    """Syslog over UDP (one datagram per alert) or TCP (RFC 6587 octet counting).

    Args:
        rfc: "5424" (default) or "3164".
        facility: syslog facility number (16 = local0).
    """

    def __init__(self, host: str, port: int = 514, transport: str = "udp", rfc: str = "5424",
                 facility: int = 16, app_name: str = "packettracer", hostname: str | None = None,
                 timeout: float = 5.0, queue_size: int = 1000) -> None:
        super().__init__(queue_size)
        if transport not in ("udp", "tcp"):
            raise ValueError(f"syslog transport must be udp or tcp, not {transport!r}")
        if rfc not in ("5424", "3164"):
            raise ValueError(f"syslog format must be 5424 or 3164, not {rfc!r}")
        self.host, self.port, self.transport, self.rfc = host, port, transport, rfc
        self.facility, self.app_name = facility, app_name
        self.hostname = hostname or socket.gethostname() or "-"
        self.timeout = timeout
        self.name = f"syslog {transport}://{host}:{port}"
        self._sock: socket.socket | None = None
        self._procid = str(os.getpid())

    def format(self, alert: Alert) -> bytes:
        if self.rfc == "3164":
            return format_rfc3164(alert, self.hostname, self.app_name, self.facility)
        return format_rfc5424(alert, self.hostname, self.app_name, self.facility, self._procid)

    def deliver(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            msg = self.format(alert)
            if self.transport == "udp":
                if self._sock is None:
                    self._sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
                self._sock.sendto(msg, (self.host, self.port))
            else:
                frame = str(len(msg)).encode("ascii") + b" " + msg
                try:
                    self._tcp().sendall(frame)
                except OSError:
                    # The collector may have restarted: reconnect once before giving up.
                    self._disconnect()
                    self._tcp().sendall(frame)

    def _tcp(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock = sock
        return self._sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# --- webhook ----------------------------------------------------------------------------------
def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookDestination(QueuedDestination):
    """JSON POST of each alert, retried with exponential backoff on network errors, 429 and 5xx.

    With a ``secret`` the body is signed (``X-PacketTracer-Signature: sha256=<hex>``) so the
    receiver can check it came from us and was not altered.
    """

    def __init__(self, url: str, secret: str = "", timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5, session: requests.Session | None = None,
                 queue_size: int = 1000) -> None:
        super().__init__(queue_size)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook URL must be http(s)://host/...")
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        if session is None:
            import requests  # (only a configured client needs it: ~55 ms of start-up)
            session = requests.Session()
        self._session = session
        self.name = f"webhook {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.retried = 0

    def body(self, alert: Alert) -> bytes:
        doc = {"source": "packettracer", "version": VERSION, "alert": alert.to_dict()}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def deliver(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self._post(self.body(alert))

    def _post(self, body: bytes) -> None:
        import requests
        headers = {"Content-Type": "application/json",
                   "User-Agent": f"PacketTracer/{VERSION}"}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        attempt = 0
        while True:
            try:
                resp = self._session.post(self.url, data=body, headers=headers,
                                          timeout=self.timeout)
                if 200 <= resp.status_code < 300:
                    return
                error: Exception = DeliveryError(f"webhook answered HTTP {resp.status_code}")
                if resp.status_code != 429 and resp.status_code < 500:
                    raise error  # the receiver rejects it; repeating will not help
            except requests.RequestException as exc:
                error = exc
            if attempt >= self.retries or self._stop.is_set():
                raise error
            # Backoff waits on the stop event so close() is never held up by a dead receiver.
            self._stop.wait(self.backoff * (2 ** attempt))
            attempt += 1
            self.retried += 1

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["retried"] = self.retried
        return out


# --- e-mail -----------------------------------------------------------------------------------
class EmailDestination(QueuedDestination):
    """Digest e-mails: alerts are collected for ``batch_interval`` seconds (or up to
    ``max_batch``) and sent as one message, over STARTTLS with login when configured.

    Args:
        starttls: upgrade the plain connection (port 587/25); ``implicit_tls`` for port 465.
        cafile: CA bundle to verify the server with (a private CA or a self-signed test cert).
    """

    def __init__(self, host: str, port: int = 587, to: tuple[str, ...] | list[str] = (),
                 username: str = "", password: str = "", sender: str = "",
                 starttls: bool = True, implicit_tls: bool = False, cafile: str | None = None,
                 batch_interval: float = 60.0, max_batch: int = 100, timeout: float = 10.0,
                 queue_size: int = 1000) -> None:
        super().__init__(queue_size)
        if not to:
            raise ValueError("e-mail destination needs at least one recipient")
        self.host, self.port = host, port
        self.to = list(to)
        self.username = username
        self._password = password
        self.sender = sender or (username if "@" in username
                                 else f"packettracer@{socket.gethostname() or 'localhost'}")
        self.starttls, self.implicit_tls = starttls, implicit_tls
        self.cafile = cafile
        self.batch_interval = batch_interval
        self.max_batch = max(1, max_batch)
        self.timeout = timeout
        self.name = f"email smtp://{host}:{port}"
        self.digests = 0

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_interval
            stop = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._attempt(batch)
            if stop:
                return

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def compose(self, alerts: list[Alert]) -> EmailMessage:
        worst = max(alerts, key=lambda a: SEVERITY_RANK.get(a.severity, 0)).severity
        msg = EmailMessage()
        noun = "alert" if len(alerts) == 1 else "alerts"
        msg["Subject"] = f"[PacketTracer] {len(alerts)} {noun} (highest: {worst})"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        lines = [f"PacketTracer raised {len(alerts)} {noun}:", ""]
        for a in alerts:
            when = datetime.fromtimestamp(a.ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            repeat = f" (x{a.count})" if a.count > 1 else ""
            lines.append(f"{when}  {a.severity.upper():8} {a.rule_id}{repeat}")
            lines.append(f"    {a.message}")
            lines.append(f"    source {a.src or '-'} -> {a.dst or '-'}")
            if a.evidence:
                lines.append("    evidence: " + ", ".join(f"{k}={v}" for k, v in a.evidence.items()))
            lines.append("")
        msg.set_content("\n".join(lines))
        return msg

    def deliver(self, alerts: list[Alert]) -> None:
        msg = self.compose(alerts)
        if self.implicit_tls:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                  context=self._context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            smtp.ehlo()
            if self.starttls and not self.implicit_tls:
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self._password)
            smtp.send_message(msg)
        self.digests += 1

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["digests"] = self.digests
        return out


# --- construction from configuration ----------------------------------------------------------
def _syslog_from_url(url: str) -> SyslogDestination:
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname:
        raise ValueError(f"ALERT_SYSLOG must look like udp://host:514 or tcp://host:514, "
                         f"got {url!r}")
    query = parse_qs(parts.query)
    rfc = (query.get("format") or query.get("rfc") or ["5424"])[0].lower().removeprefix("rfc")
    return SyslogDestination(parts.hostname, parts.port or 514, parts.scheme, rfc=rfc)


def _email_from_url(url: str, to: str, environ: Mapping[str, str]) -> EmailDestination:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("ALERT_SMTP must look like smtp://user@host:587")
    query = parse_qs(parts.query)
    starttls = (query.get("starttls") or ["1"])[0].lower() not in ("0", "false", "no", "off")
    implicit = parts.scheme == "smtps"
    cafile = (query.get("cafile") or [None])[0]
    recipients = [r.strip() for r in to.split(",") if r.strip()]
    user = unquote(parts.username or "")
    return EmailDestination(parts.hostname, parts.port or (465 if implicit else 587),
                            to=recipients, username=user,
                            password=environ.get(SMTP_PASSWORD_ENV, ""),
                            starttls=starttls, implicit_tls=implicit, cafile=cafile)


def build_destinations(settings: Mapping[str, Any] | Any,
                       environ: Mapping[str, str] | None = None) -> list[QueuedDestination]:
    """Destinations for the ALERT_* values of ``settings`` (config.Settings or a mapping).

    ALERT_SYSLOG ``udp://host:514`` / ``tcp://host:514`` (``?format=3164`` for BSD syslog),
    ALERT_WEBHOOK_URL (+ ALERT_WEBHOOK_SECRET for signatures), ALERT_SMTP
    ``smtp://user@host:587`` (``smtps://`` for implicit TLS, ``?starttls=0`` for a local relay,
    ``?cafile=/path/ca.pem`` to trust a private CA)
    with ALERT_EMAIL_TO and the password from the PACKETTRACER_SMTP_PASSWORD environment
    variable. A value that cannot be used raises ValueError naming the setting, never its
    secret.
    """
    env = os.environ if environ is None else environ
    get: Callable[[str, Any], Any] = settings.get
    out: list[QueuedDestination] = []
    syslog = get("ALERT_SYSLOG", ALERT_SYSLOG)
    if syslog:
        out.append(_syslog_from_url(syslog))
    url = get("ALERT_WEBHOOK_URL", ALERT_WEBHOOK_URL)
    if url:
        try:
            out.append(WebhookDestination(url, secret=get("ALERT_WEBHOOK_SECRET",
                                                          ALERT_WEBHOOK_SECRET) or ""))
        except ValueError:
            raise ValueError("ALERT_WEBHOOK_URL must be an http(s):// URL") from None
    smtp = get("ALERT_SMTP", ALERT_SMTP)
    if smtp:
        to = get("ALERT_EMAIL_TO", ALERT_EMAIL_TO) or ""
        if not to:
            raise ValueError("ALERT_SMTP is set but ALERT_EMAIL_TO is empty")
        out.append(_email_from_url(smtp, to, env))
    for d in out:
        log.info("alert destination %s enabled", d.name)
    return out
