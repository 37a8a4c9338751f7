"""TLS for the relay: a self-signed certificate made on first run, or the user's own.

The generated certificate names the host's addresses and names, so agents that are given the
certificate file (``--tls-cert``) verify the server by the address they dial.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Iterable

from relay.errors import RelayError
from utils.logger import get_logger

log = get_logger(__name__)

CERT_DAYS = 825


def local_names() -> list[str]:
    """Names and addresses this host answers to (for the certificate's subjectAltName)."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    try:
        import psutil
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(a.address.split("%", 1)[0])
    except (ImportError, OSError):
        pass
    return sorted(names)


def generate_certificate(cert_path: Path, key_path: Path, hosts: Iterable[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PacketTracer relay")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for p in (cert_path, key_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    # The key is created 0600 from the start, never world-readable for a moment.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated relay TLS certificate %s for %s", cert_path, ", ".join(hosts))


def ensure_certificate(cert: str | Path, key: str | Path, hosts: Iterable[str] | None = None) -> bool:
    """Use the pair if both exist; make a new pair if neither does. True if generated."""
    cert_path, key_path = Path(cert), Path(key)
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        return False
    if have_cert != have_key:
        missing = key_path if have_cert else cert_path
        raise RelayError(f"TLS: {missing} is missing (give both --tls-cert and --tls-key, or neither file)")
    try:
        generate_certificate(cert_path, key_path, list(hosts) if hosts else local_names())
    except OSError as exc:
        raise RelayError(f"TLS: cannot write certificate {cert_path}: {exc.strerror}") from None
    return True


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"TLS: cannot load {cert} / {key}: {exc}") from None
    return ctx


def client_context(cafile: str | Path | None = None) -> ssl.SSLContext:
    """Verifying context: the system's CAs, or the server's certificate file given to the agent."""
    try:
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"TLS: cannot load {cafile}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
