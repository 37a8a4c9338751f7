"""Alert delivery to real local servers: syslog (UDP, TCP), webhook (HTTP), e-mail (aiosmtpd
with STARTTLS and AUTH); and what happens when a destination is down or slow."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from security.alert import Alert
from security.alerts import AlertEngine
from security.destinations import (SIGNATURE_HEADER, EmailDestination, SyslogDestination,
                                   WebhookDestination, build_destinations)

SECRET = "s3cr3t-hmac-key"
SMTP_PASSWORD = "smtp-pa55word"

# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
RFC5424 = re.compile(rb'^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) '
                     rb'(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>\[.*?[^\\]\]) (?P<msg>.*)$', re.S)
SD_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def make_alert(i: int = 1, **kw: Any) -> Alert:
    base = dict(ts=1764082800.25 + i, severity="high", rule_id="port_scan", src="10.0.0.66",
                dst="10.0.0.5", message='10.0.0.66 scanned 120 ports on 10.0.0.5 ("SYN")',
                evidence={"ports": 120}, id=i)
    base.update(kw)
    return Alert(**base)


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_5424(line: bytes) -> dict[str, Any]:
    m = RFC5424.match(line)
    assert m, line
    sd = m.group("sd").decode()
    assert sd.startswith("[packettracer@32473 ")
    params = {k: v.replace('\\"', '"').replace("\\]", "]").replace("\\\\", "\\")
              for k, v in SD_PARAM.findall(sd)}
    msg = m.group("msg")
    assert msg.startswith(b"\xef\xbb\xbf")
    return {"pri": int(m.group("pri")), "ts": m.group("ts").decode(),
            "app": m.group("app").decode(), "msgid": m.group("msgid").decode(),
            "params": params, "msg": msg[3:].decode("utf-8")}


# --- syslog -----------------------------------------------------------------------------------
def test_syslog_udp_rfc5424() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        dest = SyslogDestination("127.0.0.1", rx.getsockname()[1], "udp")
        try:
            alert = make_alert()
            assert dest.submit(alert)
            data, _ = rx.recvfrom(65535)
        finally:
            dest.close()
    rec = parse_5424(data)
    assert rec["pri"] == 16 * 8 + 3  # local0.err for "high"
    assert rec["app"] == "packettracer" and rec["msgid"] == "port_scan"
    assert dt.datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp() == \
        pytest.approx(alert.ts, abs=1e-6)
    assert rec["params"] == {"id": "1", "rule": "port_scan", "severity": "high",
                             "src": "10.0.0.66", "dst": "10.0.0.5", "count": "1"}
    assert rec["msg"] == alert.message
    assert dest.stats()["sent"] == 1 and dest.stats()["failed"] == 0


def test_syslog_tcp_octet_counting_several_messages() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    frames: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        buf = b""
        with conn:
            conn.settimeout(5)
            while len(frames) < 3:
                chunk = conn.recv(65535)
                if not chunk:
                    break
                buf += chunk
                while b" " in buf:
                    n, _, rest = buf.partition(b" ")
                    if len(rest) < int(n):
                        break
                    frames.append(rest[:int(n)])
                    buf = rest[int(n):]

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    dest = SyslogDestination("127.0.0.1", srv.getsockname()[1], "tcp")
    try:
        for i in range(3):
            dest.submit(make_alert(i + 1, message=f"alert ]\"number\" {i} é"))
        t.join(5)
    finally:
        dest.close()
        srv.close()
    assert [parse_5424(f)["msg"] for f in frames] == [f"alert ]\"number\" {i} é" for i in range(3)]
    assert [parse_5424(f)["params"]["id"] for f in frames] == ["1", "2", "3"]


def test_syslog_rfc3164_option_from_config() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        (dest,) = build_destinations(
            {"ALERT_SYSLOG": f"udp://127.0.0.1:{rx.getsockname()[1]}?format=3164"}, environ={})
        try:
            dest.submit(make_alert(severity="medium"))
            data, _ = rx.recvfrom(65535)
        finally:
            dest.close()
    m = re.match(rb"^<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) packettracer: (.*)$",
                 data)
    assert m, data
    assert int(m.group(1)) == 16 * 8 + 4
    assert b"port_scan" in m.group(4) and b"10.0.0.66 scanned 120 ports" in m.group(4)


# --- webhook ----------------------------------------------------------------------------------
class Hook:
    """A real HTTP server on 127.0.0.1 that records POSTs; can fail or hang on demand."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        self.hang = threading.Event()  # set = respond normally
        self.hang.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.hang.wait(10)
                hook.requests.append((dict(self.headers), body))
                if hook.fail_first > 0:
                    hook.fail_first -= 1
                    self.send_response(503)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pt"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def test_webhook_json_and_hmac_signature(hook: Hook) -> None:
    dest = WebhookDestination(hook.url, secret=SECRET)
    try:
        alert = make_alert()
        dest.submit(alert)
        assert dest.flush(10)
    finally:
        dest.close()
    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["alert"] == alert.to_dict()
    assert doc["source"] == "packettracer"
    # A receiver with the wrong key would reject it.
    wrong = "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(wrong, headers[SIGNATURE_HEADER])
    assert dest.stats()["sent"] == 1


def test_webhook_retries_with_backoff_then_succeeds(hook: Hook) -> None:
    hook.fail_first = 2
    dest = WebhookDestination(hook.url, retries=3, backoff=0.05)
    try:
        dest.submit(make_alert())
        assert dest.flush(10)
    finally:
        dest.close()
    assert len(hook.requests) == 3
    st = dest.stats()
    assert st["sent"] == 1 and st["failed"] == 0 and st["retried"] == 2


def test_webhook_without_secret_has_no_signature(hook: Hook) -> None:
    dest = WebhookDestination(hook.url)
    try:
        dest.submit(make_alert())
        assert dest.flush(10)
    finally:
        dest.close()
    assert SIGNATURE_HEADER not in hook.requests[0][0]


# --- e-mail -----------------------------------------------------------------------------------
def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.logins: list[tuple[bytes, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "data": envelope.content, "tls": session.ssl is not None,
                              "auth": session.authenticated})
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[Mailbox, int, Path]]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    box = Mailbox()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alerts" \
            and auth_data.password == SMTP_PASSWORD.encode()
        box.logins.append((auth_data.login, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: server sends 535

    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port, tls_context=ctx,
                     require_starttls=True, authenticator=authenticator, auth_required=True,
                     auth_require_tls=True)
    ctl.start()
    try:
        yield box, port, cert
    finally:
        ctl.stop()


def test_email_digest_over_starttls_with_auth(smtp_server: tuple[Mailbox, int, Path]) -> None:
    box, port, cert = smtp_server
    (dest,) = build_destinations(
        {"ALERT_SMTP": f"smtp://alerts@127.0.0.1:{port}?cafile={cert}",
         "ALERT_EMAIL_TO": "soc@example.org"},
        environ={"PACKETTRACER_SMTP_PASSWORD": SMTP_PASSWORD})
    assert isinstance(dest, EmailDestination)
    dest.batch_interval = 0.5
    try:
        for i in range(3):
            dest.submit(make_alert(i + 1, rule_id=["port_scan", "arp_spoof", "dns_tunnel"][i],
                                   severity=["medium", "critical", "high"][i]))
        assert dest.flush(15)
    finally:
        dest.close()
    assert len(box.messages) == 1, dest.stats()  # three alerts, one digest
    m = box.messages[0]
    assert m["tls"] and m["auth"] and m["to"] == ["soc@example.org"]
    text = m["data"].decode()
    assert "Subject: [PacketTracer] 3 alerts (highest: critical)" in text
    for rule in ("port_scan", "arp_spoof", "dns_tunnel"):
        assert rule in text
    assert SMTP_PASSWORD not in text
    assert box.logins == [(b"alerts", True)]
    assert dest.stats()["sent"] == 3 and dest.stats()["digests"] == 1


def test_email_wrong_password_is_a_counted_failure(smtp_server: tuple[Mailbox, int, Path],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    box, port, cert = smtp_server
    dest = EmailDestination("127.0.0.1", port, to=["soc@example.org"], username="alerts",
                            password="wrong-" + SMTP_PASSWORD, cafile=str(cert),
                            batch_interval=0.05)
    caplog.set_level("DEBUG", logger="packettracer")
    try:
        dest.submit(make_alert())
        assert dest.flush(15)
    finally:
        dest.close()
    assert box.messages == []
    st = dest.stats()
    assert st["failed"] == 1 and "Authentication" in st["last_error"]
    assert SMTP_PASSWORD not in caplog.text and SMTP_PASSWORD not in json.dumps(st)


def test_email_refuses_an_untrusted_certificate(smtp_server: tuple[Mailbox, int, Path]) -> None:
    box, port, _ = smtp_server
    dest = EmailDestination("127.0.0.1", port, to=["soc@example.org"], username="alerts",
                            password=SMTP_PASSWORD, batch_interval=0.05)
    try:
        dest.submit(make_alert())
        assert dest.flush(15)
    finally:
        dest.close()
    assert box.messages == [] and dest.stats()["failed"] == 1
    assert "SSL" in dest.stats()["last_error"] or "Certificate" in dest.stats()["last_error"]


# --- failure isolation --------------------------------------------------------------------------
def test_dead_destinations_never_block_the_caller_and_failures_are_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    dead = free_port()  # nothing listens there
    caplog.set_level("DEBUG", logger="packettracer")
    dests = build_destinations({
        "ALERT_SYSLOG": f"tcp://127.0.0.1:{dead}",
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{dead}/hook?token=url-token-xyz",
        "ALERT_WEBHOOK_SECRET": SECRET,
        "ALERT_SMTP": f"smtp://alerts@127.0.0.1:{dead}", "ALERT_EMAIL_TO": "soc@example.org",
    }, environ={"PACKETTRACER_SMTP_PASSWORD": SMTP_PASSWORD})
    for d in dests:
        if isinstance(d, WebhookDestination):
            d.backoff = 0.01
        if isinstance(d, EmailDestination):
            d.batch_interval = 0.05
    engine = AlertEngine(destinations=dests)
    t0 = time.perf_counter()
    for i in range(200):
        engine.raise_alert("port_scan", "high", f"10.0.{i // 250}.{i % 250}", "", "scan")
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, elapsed
    try:
        for d in dests:
            assert d.flush(30), d.name
    finally:
        for d in dests:
            d.close()
    for d in dests:
        st = d.stats()
        assert st["sent"] == 0 and st["failed"] + st["dropped"] == 200, (d.name, st)
        assert st["failed"] >= 1
        if isinstance(d, EmailDestination):
            assert st["digests"] == 0  # 200 alerts were a couple of digest attempts
        else:
            # After a few failures in a row the destination is marked down, not retried
            # for every queued alert.
            assert st["down"] and st["skipped_while_down"] > 0, (d.name, st)
    text = caplog.text + json.dumps([d.stats() for d in dests]) + " ".join(d.name for d in dests)
    for secret in (SECRET, SMTP_PASSWORD, "url-token-xyz"):
        assert secret not in text


def test_a_hung_webhook_does_not_delay_syslog(hook: Hook) -> None:
    hook.hang.clear()  # the receiver accepts and then says nothing
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        slow = WebhookDestination(hook.url, timeout=30, queue_size=5)
        fast = SyslogDestination("127.0.0.1", rx.getsockname()[1], "udp")
        engine = AlertEngine(destinations=[slow, fast])
        try:
            t0 = time.perf_counter()
            for i in range(50):
                engine.raise_alert("r", "low", f"h{i}", "", f"m{i}")
            assert time.perf_counter() - t0 < 0.5
            got = [rx.recvfrom(65535)[0] for _ in range(50)]
            assert [parse_5424(g)["msg"] for g in got] == [f"m{i}" for i in range(50)]
            # The stuck webhook holds 5 queued (+1 in flight if its worker took one before the
            # burst ended); everything else was dropped and counted.
            assert wait_for(lambda: slow.stats()["dropped"] >= 44)
            assert slow.stats()["dropped"] <= 45
        finally:
            hook.hang.set()
            slow.close()
            fast.close()


def test_bad_config_values_are_reported_without_secrets() -> None:
    with pytest.raises(ValueError, match="ALERT_SYSLOG"):
        build_destinations({"ALERT_SYSLOG": "http://x"}, environ={})
    with pytest.raises(ValueError, match="ALERT_EMAIL_TO"):
        build_destinations({"ALERT_SMTP": "smtp://a@b:25"}, environ={})
    with pytest.raises(ValueError, match="ALERT_WEBHOOK_URL") as exc:
        build_destinations({"ALERT_WEBHOOK_URL": "ftp://tok3n@host/x"}, environ={})
    assert "tok3n" not in str(exc.value)
    assert build_destinations({}, environ={}) == []
