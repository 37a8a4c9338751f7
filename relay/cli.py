"""Command-line modes of the relay: ``--relay-server`` and ``--agent``.

main.py adds these options with :func:`add_arguments` and hands a run to :func:`run` when
:func:`wants_relay` says so. Tokens come from ``--token-file`` or PACKETTRACER_RELAY_TOKEN, never
from the command line (other users can read it in the process list).

    main.py --relay-server --listen ADDR:PORT --token-file F [--tls-cert C --tls-key K]
            --no-ui --duration N --export-json OUT
    main.py --agent --relay ws[s]://ADDR:PORT --token-file F -i IFACE [-r FILE] --duration N

Errors are raised as RelayError with a one-line message.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.errors import RelayError
from utils.logger import get_logger, invoking_user_home

log = get_logger(__name__)

#: seconds an ending agent waits for the server to acknowledge its last messages
FINISH_TIMEOUT = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the relay options (idempotent: a second call on the same parser does nothing)."""
    if "--relay-server" in parser._option_string_actions:  # noqa: SLF001 - argparse has no public check
        return
    g = parser.add_argument_group("relay (distributed capture)")
    g.add_argument("--relay-server", action="store_true",
                   help="run a relay server that merges agents' data")
    g.add_argument("--listen", metavar="ADDR:PORT",
                   help="relay server address (default 127.0.0.1:RELAY_SERVER_PORT)")
    g.add_argument("--agent", action="store_true",
                   help="run as a relay agent: capture here, stream to --relay")
    g.add_argument("--relay", metavar="URL", help="relay server URL, ws[s]://HOST:PORT")
    g.add_argument("--agent-id", metavar="NAME", help="this agent's name (default: host name)")
    g.add_argument("--token-file", metavar="FILE", action="append",
                   help="relay token file (default: $PACKETTRACER_RELAY_TOKEN); "
                        "the server may take several")
    g.add_argument("--tls-cert", metavar="CERT",
                   help="server: certificate (made on first run if missing); agent: certificate to trust")
    g.add_argument("--tls-key", metavar="KEY", help="server: private key (made with --tls-cert)")
    g.add_argument("--insecure-plain", action="store_true",
                   help="allow plain ws:// off loopback (traffic is not encrypted)")


def wants_relay(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "relay_server", False) or getattr(args, "agent", False))


def run(args: argparse.Namespace, settings: Any, stop: threading.Event | None = None) -> int:
    """Run the mode the arguments ask for; returns the exit code (raises RelayError)."""
    if args.relay_server and args.agent:
        raise RelayError("--relay-server and --agent are separate runs; pick one")
    stop = stop or threading.Event()
    if args.relay_server:
        return run_server(args, settings, stop)
    return run_agent(args, settings, stop)


# ---- addresses -----------------------------------------------------------------------------------
def parse_listen(text: str | None, default_port: int) -> tuple[str, int]:
    if not text:
        return "127.0.0.1", default_port
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)|(\d+)", text.strip())
    if m is None:
        raise RelayError(f"--listen {text}: expected ADDR:PORT, [IPv6]:PORT or PORT")
    host = m.group(1) or m.group(3) or "127.0.0.1"
    port = int(m.group(2) or m.group(4) or m.group(5))
    if not 0 <= port < 65536:
        raise RelayError(f"--listen {text}: port out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_cert_paths() -> tuple[Path, Path]:
    base = invoking_user_home() / ".packettracer" / "relay"
    return base / "relay-cert.pem", base / "relay-key.pem"


# ---- server ------------------------------------------------------------------------------------
def build_server(args: argparse.Namespace, settings: Any) -> Any:
    """A RelayServer from the options (not started); the dashboard can embed the same."""
    from relay.server.relay_server import RelayServer
    from relay.server.tls import ensure_certificate, local_names, server_context
    from relay.tokens import TokenStore

    host, port = parse_listen(args.listen, settings.RELAY_SERVER_PORT)
    tokens = TokenStore.load(args.token_file)
    ctx = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise RelayError("--tls-cert and --tls-key go together")
        cert, key = Path(args.tls_cert), Path(args.tls_key)
    elif is_loopback(host) or args.insecure_plain:
        cert = key = None
        if not is_loopback(host):
            log.warning("relay server: plain ws on %s (forced with --insecure-plain)", host)
    else:
        cert, key = default_cert_paths()
    if cert is not None and key is not None:
        names = local_names()
        if host not in ("", "0.0.0.0", "::") and host not in names:
            names.append(host)
        if ensure_certificate(cert, key, names):
            sys.stderr.write(f"packettracer: generated relay certificate {cert} "
                             "(give it to agents with --tls-cert)\n")
        ctx = server_context(cert, key)
    return RelayServer(tokens, host, port, ctx,
                       max_message_bytes=settings.RELAY_MAX_MESSAGE_BYTES)


def run_server(args: argparse.Namespace, settings: Any, stop: threading.Event) -> int:
    server = build_server(args, settings)
    server.start()
    sys.stderr.write(f"packettracer: relay server listening on {server.url}\n")
    sys.stderr.flush()
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            stop.wait(0.5 if left is None else min(0.5, left))
    finally:
        server.close()
    doc = server.document()
    if args.export_json:
        from export.json_exporter import write_json
        write_json(doc, args.export_json)
    snap = server.snapshot()
    out = sys.stdout
    out.write(f"relay:     {server.url}\n")
    out.write(f"agents:    {len(snap['agents'])} "
              f"({', '.join(a['agent'] + ' ' + a['state'] for a in snap['agents']) or '-'})\n")
    out.write(f"flows:     {snap['flows']}\n")
    out.write(f"packets:   {doc['meta']['packets']}\n")
    if snap["rejected"]:
        out.write("rejected:  " + ", ".join(f"{k} {v}" for k, v in sorted(snap["rejected"].items())) + "\n")
    if args.export_json:
        out.write(f"export:    {args.export_json}\n")
    return 0


# ---- agent -------------------------------------------------------------------------------------
def _agent_id(args: argparse.Namespace) -> str:
    name = args.agent_id or socket.gethostname()
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64].lstrip("._-")
    if not clean:
        raise RelayError(f"--agent-id {name!r}: use letters, digits, '.', '_' or '-'")
    if args.agent_id and clean != args.agent_id:
        raise RelayError(f"--agent-id {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return clean


def _check_url(args: argparse.Namespace) -> tuple[str, str, int]:
    if not args.relay:
        raise RelayError("--agent needs --relay ws[s]://HOST:PORT")
    u = urlsplit(args.relay)
    if u.scheme not in ("ws", "wss") or not u.hostname:
        raise RelayError(f"--relay {args.relay}: expected ws://HOST:PORT or wss://HOST:PORT")
    try:
        port = u.port or (443 if u.scheme == "wss" else 80)
    except ValueError:
        raise RelayError(f"--relay {args.relay}: bad port") from None
    if u.scheme == "ws" and not is_loopback(u.hostname) and not args.insecure_plain:
        raise RelayError(f"--relay {args.relay}: plain ws:// off loopback is not encrypted; "
                         "use wss:// (or force with --insecure-plain)")
    return u.scheme, u.hostname, port


def _exclude_relay_traffic(settings: Any, host: str, port: int) -> Any:
    """The agent must not capture its own link to the server (it would feed itself)."""
    try:
        addrs = sorted({ai[4][0] for ai in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
    except OSError:
        return settings
    hosts = " or ".join(f"host {a}" for a in addrs)
    own = f"not (tcp port {port} and ({hosts}))"
    user = settings.CAPTURE_FILTER
    bpf = f"({user}) and {own}" if user else own
    return dataclasses.replace(settings, values={**settings.values, "CAPTURE_FILTER": bpf})


def run_agent(args: argparse.Namespace, settings: Any, stop: threading.Event) -> int:
    from relay.agent.agent import RelayAgent
    from relay.server.tls import client_context
    from relay.tokens import agent_token
    from runtime import Runtime

    scheme, host, port = _check_url(args)
    agent_id = _agent_id(args)
    token = agent_token(agent_id, args.token_file[0] if args.token_file else None)
    ctx = client_context(args.tls_cert) if scheme == "wss" else None
    if not args.read:
        settings = _exclude_relay_traffic(settings, host, port)
    rt = Runtime(settings, args, stop)
    agent = RelayAgent(rt, args.relay, token, agent_id, ssl_context=ctx,
                       heartbeat_interval=settings.RELAY_HEARTBEAT_INTERVAL,
                       metrics_interval=settings.RELAY_METRICS_INTERVAL,
                       buffer_max_messages=settings.RELAY_BUFFER_MAX_MESSAGES,
                       buffer_max_bytes=settings.RELAY_BUFFER_MAX_BYTES,
                       max_message_bytes=settings.RELAY_MAX_MESSAGE_BYTES)
    try:
        agent.start()
        if rt.source_kind == "live":
            sys.stderr.write(f"packettracer: agent {agent_id} capturing on {rt.source.description}"
                             f" for {args.relay}\n")
            sys.stderr.flush()
        rt.start_capture()
        while not rt.capture_done:
            if agent.done:  # a fatal relay error (refused token): stop capturing
                stop.set()
            stop.wait(0.2)
        rt.wait_capture()
        rt.shutdown()
        complete = agent.finish(FINISH_TIMEOUT) if not agent.done else False
        rt.print_summary()
        st = agent.stats()
        sys.stdout.write(f"relay:     {args.relay} as {agent_id}: {st['messages_sent']} messages, "
                         f"{st['bytes_sent']} bytes sent, {st['connections']} connection(s), "
                         f"{st['resyncs']} resync(s), {st['buffer_dropped']} dropped\n")
    finally:
        agent.stop()
        rt.close()
    if st["error"] and not st["connections"]:
        raise RelayError(f"relay {args.relay}: {st['error']}")
    if not complete:
        raise RelayError(f"relay {args.relay}: the server did not acknowledge everything "
                         f"({st['buffered']} message(s) unsent)")
    return 0


def _main() -> int:
    """Development driver until main.py calls this module: ``python -m relay.cli ...``."""
    import signal

    import config
    import main as entry
    from utils.logger import setup_logging

    parser = entry.build_parser()
    add_arguments(parser)
    args = parser.parse_args()
    try:
        settings = config.load_settings(entry.cli_overrides(args), args.config)
    except config.ConfigError as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.LOG_FILE, args.verbose, settings.LOG_MAX_BYTES, settings.LOG_BACKUPS)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from capture.errors import CaptureError
    from runtime import RuntimeError_
    try:
        return run(args, settings, stop)
    except (RelayError, CaptureError, RuntimeError_) as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
