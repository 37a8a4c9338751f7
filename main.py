#!/usr/bin/env python3
"""PacketTracer command line: live dashboard, capture files, headless summaries and exports.

Every error a user can cause is reported here as one line on stderr with a non-zero exit;
library code raises typed errors and never exits.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # entry point: make the project's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import config  # noqa: E402
from capture.errors import CaptureError  # noqa: E402
from utils.logger import get_logger, setup_logging  # noqa: E402

log = get_logger("main")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="packettracer",
        description="Live terminal network analyzer: flows, TCP, DNS, ports, paths, alerts.")
    src = p.add_argument_group("capture")
    src.add_argument("-i", "--interface", help="interface to capture on (default: the default-route interface)")
    src.add_argument("-f", "--filter", dest="bpf", help="BPF capture filter, e.g. 'tcp port 443'")
    src.add_argument("-r", "--read", metavar="FILE", help="read a pcap/pcapng (optionally gzip'd) file instead of capturing")
    src.add_argument("--realtime", action="store_true", help="with -r: replay at the original pace")
    src.add_argument("--jobs", type=int, choices=(1, 2), metavar="N",
                     help="with -r: processes reading the file (default: 2 for files of "
                          "16 MiB or more on a machine with two cores)")
    src.add_argument("-w", "--write", metavar="FILE", help="save captured packets to a pcapng file")
    src.add_argument("--write-max-mb", type=int, metavar="MB", help="rotate -w files at this size")
    src.add_argument("-c", "--count", type=int, default=0, metavar="N", help="stop after N packets")
    src.add_argument("--duration", type=float, default=0.0, metavar="SECONDS", help="stop after this many seconds")
    src.add_argument("--list", action="store_true", help="list interfaces and exit")
    ui = p.add_argument_group("output")
    ui.add_argument("--no-ui", action="store_true", help="no dashboard: print a summary at the end")
    ui.add_argument("--simple", action="store_true", help="Traffic view only, no keyboard (Ctrl+C exits)")
    ui.add_argument("--export-json", metavar="PATH", help="write the JSON export at the end")
    ui.add_argument("--export-csv", metavar="PATH", help="write the flows as CSV at the end")
    res = p.add_argument_group("resolution")
    res.add_argument("--no-geo", action="store_true", help="no geo/ASN lookups at all")
    res.add_argument("--offline", action="store_true", help="never send anything for resolution")
    res.add_argument("--online", action="store_true", help="also ask ip-api.com (rate-limited)")
    res.add_argument("--no-rdns", action="store_true", help="no reverse DNS (PTR) lookups")
    res.add_argument("--geoip-db", action="append", metavar="MMDB", help="MaxMind .mmdb file (repeatable)")
    res.add_argument("--no-dpi", action="store_true", help="no payload inspection (TLS/HTTP/OS facts)")
    db = p.add_argument_group("storage")
    db.add_argument("--db", metavar="PATH", help="database file (default ~/.packettracer/data.db)")
    db.add_argument("--no-db", action="store_true", help="keep everything in memory only")
    db.add_argument("--sessions", action="store_true", help="list stored sessions and exit")
    db.add_argument("--session", type=int, metavar="N", help="open or export stored session N")
    paths = p.add_argument_group("paths")
    paths.add_argument("-t", "--trace", metavar="HOST", action="append", help="traceroute to HOST at start")
    paths.add_argument("--rounds", type=int, default=0, help="with -t --no-ui: rounds of probes (like mtr --report)")
    paths.add_argument("--trace-method", choices=("icmp", "udp", "tcp"), help="probe type (default icmp)")
    paths.add_argument("--trace-port", type=int, metavar="PORT", help="destination port for udp/tcp probes")
    from export.ipfix import add_arguments as add_ipfix_arguments
    from relay.cli import add_arguments as add_relay_arguments
    add_ipfix_arguments(p)
    add_relay_arguments(p)
    misc = p.add_argument_group("misc")
    misc.add_argument("--config", metavar="PATH", help="TOML config file")
    misc.add_argument("--log-file", metavar="PATH", help="log file (default ~/.packettracer/packettracer.log)")
    misc.add_argument("-v", "--verbose", action="count", default=0, help="more log detail (-vv for debug)")
    misc.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    return p


class _Version(argparse.Action):
    """``--version``: the version and which parser runs (the compiled fast path, which run.sh
    builds where a C compiler is present, or pure Python)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        from capture.parser import PARSER_BUILD
        sys.stdout.write(f"PacketTracer {config.VERSION} (parser: {PARSER_BUILD})\n")
        parser.exit()


def cli_overrides(args: argparse.Namespace) -> dict:
    """CLI flags that map onto config settings (the top layer)."""
    o: dict = {}
    if args.interface:
        o["DEFAULT_INTERFACE"] = args.interface
    if args.bpf is not None:
        o["CAPTURE_FILTER"] = args.bpf
    if args.jobs is not None:
        o["FILE_READ_JOBS"] = args.jobs
    if args.write_max_mb is not None:
        o["WRITE_MAX_MB"] = args.write_max_mb
    if args.no_geo:
        o["GEO_ENABLED"] = False
    if args.online:
        o["GEO_ONLINE"] = True
    if args.offline:
        o["GEO_ONLINE"] = False
        o["DNS_RDNS_ENABLED"] = False
        o["WHOIS_ENABLED"] = False
    if args.no_rdns:
        o["DNS_RDNS_ENABLED"] = False
    if args.no_dpi:
        o["DPI_ENABLED"] = False
    if args.trace_method:
        o["TRACE_METHOD"] = args.trace_method
    if args.geoip_db:
        o["GEO_MMDB_PATHS"] = list(args.geoip_db)
    if args.db:
        o["DB_PATH"] = args.db
    if args.no_db:
        o["DB_ENABLED"] = False
    if args.log_file:
        o["LOG_FILE"] = args.log_file
    return o


def list_interfaces_cmd() -> int:
    from capture.interfaces import default_interface, list_interfaces
    default = default_interface()
    for i in list_interfaces():
        mark = "*" if i.name == default else " "
        state = "up" if i.up else "down"
        print(f"{mark} {i.name:<16} {state:<5} {', '.join(i.addresses) or '-'}")
    return EXIT_OK


def history_cmd(args: argparse.Namespace, settings: config.Settings) -> int:
    """--sessions and --session N: read the database, never capture."""
    import time as _time

    from db.errors import DatabaseError
    from export.csv_exporter import write_flows_csv
    from export.json_exporter import write_json
    from persistence import open_pool, stored_document
    from db.repositories.session_repo import SessionRepository
    if not settings.DB_ENABLED:
        print("packettracer: --sessions/--session need the database (drop --no-db)", file=sys.stderr)
        return EXIT_USAGE
    try:
        pool = open_pool(settings)
    except DatabaseError as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.sessions:
            rows = SessionRepository(pool).list()
            print(f"{'id':>4}  {'start':<19}  {'end':<19}  {'source':<6} {'interface/file':<32} "
                  f"{'filter':<12} {'packets':>9} {'bytes':>12} {'flows':>7}")
            for r in rows:
                def t(v: float | None) -> str:
                    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(v)) if v else "-"
                print(f"{r['id']:>4}  {t(r.get('started_at')):<19}  {t(r.get('ended_at')):<19}  "
                      f"{r.get('source') or '':<6} {str(r.get('interface') or '')[-32:]:<32} "
                      f"{(r.get('bpf_filter') or '-')[:12]:<12} {r.get('packets') or 0:>9} "
                      f"{r.get('bytes') or 0:>12} {r.get('flows') or 0:>7}")
            return EXIT_OK
        doc = stored_document(pool, args.session)
        if not (args.export_json or args.export_csv):
            from dashboard.stored import show_stored_session
            return show_stored_session(doc, settings)
        if args.export_json:
            write_json(doc, args.export_json)
        if args.export_csv:
            write_flows_csv(doc["flows"], args.export_csv)
        return EXIT_OK
    except (DatabaseError, CaptureError) as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()


def trace_report_cmd(args: argparse.Namespace) -> int:
    """-t HOST --no-ui [--rounds N]: a hop table like ``mtr --report``, no capture."""
    from export.json_exporter import write_json
    from tracking.path_report import format_report, run_report
    if os.geteuid() != 0:
        print("packettracer: traceroute needs root for raw sockets: run with sudo", file=sys.stderr)
        return EXIT_ERROR
    res = run_report(args.trace, rounds=args.rounds or 10, method=args.trace_method or "icmp",
                     port=args.trace_port)
    sys.stdout.write(format_report(res))
    if args.export_json:
        write_json({"meta": {"schema": 1, "version": config.VERSION, "source": "traceroute"},
                    "flows": [], "paths": res}, args.export_json)
    if res["errors"] and not res["destinations"]:
        print(f"packettracer: {res['errors'][0]}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = config.load_settings(cli_overrides(args), args.config)
    except config.ConfigError as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.LOG_FILE, args.verbose, settings.LOG_MAX_BYTES, settings.LOG_BACKUPS)
    from capture.parser import PARSER_BUILD
    log.info("PacketTracer %s, parser: %s", config.VERSION, PARSER_BUILD)
    if args.list:
        return list_interfaces_cmd()
    if args.sessions or args.session is not None:
        return history_cmd(args, settings)
    if args.trace and args.no_ui and not args.read and not args.interface:
        return trace_report_cmd(args)
    if args.realtime and not args.read:
        print("packettracer: --realtime needs -r FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.count < 0 or args.duration < 0:
        print("packettracer: --count and --duration must not be negative", file=sys.stderr)
        return EXIT_USAGE

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # First Ctrl+C/SIGTERM: stop capturing, flush and export. A second Ctrl+C aborts.
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from relay import cli as relay_cli
    from relay.errors import RelayError
    from runtime import Runtime, RuntimeError_
    embed_relay = bool(args.relay_server and not args.no_ui)
    if relay_cli.wants_relay(args) and not embed_relay:
        try:
            return relay_cli.run(args, settings, stop)
        except (RelayError, CaptureError, RuntimeError_) as exc:
            print(f"packettracer: {exc}", file=sys.stderr)
            return EXIT_ERROR
    try:
        rt = Runtime(settings, args, stop)
    except (CaptureError, RuntimeError_) as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if embed_relay:
        # The dashboard with a relay server inside: the Relay view shows the agents.
        try:
            server = relay_cli.build_server(args, settings)
            server.start()
        except RelayError as exc:
            rt.close()
            print(f"packettracer: {exc}", file=sys.stderr)
            return EXIT_ERROR
        rt.relay = server
        rt.components.on_close.append(server.close)
    try:
        return rt.main()
    except (CaptureError, RuntimeError_) as exc:
        print(f"packettracer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        stop.set()
        rt.shutdown()
        return EXIT_INTERRUPTED
    finally:
        rt.close()


def main() -> None:
    try:
        code = run()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.stdout.flush()
    # The run's objects (50k flows: millions) need no cycle collection at exit; frozen, the
    # interpreter's final collection skips them (bench-1m: 1.7 s of CPU -> 0.1 s at exit).
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    main()
