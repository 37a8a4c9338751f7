"""Every default of PacketTracer, and the layering that overrides them.

Layers, lowest first: the constants below < a TOML file (``~/.config/packettracer/config.toml``
or ``--config PATH``) < ``PACKETTRACER_<NAME>`` environment variables < CLI flags.
:func:`load_settings` merges them once and validates; the rest of the program reads the
resulting :class:`Settings` (or, for plain defaults, the constants here).

In the TOML file each constant is written lowercase in its group's table, e.g.::

    [flows]
    flow_timeout = 120

    [alerts]
    alerts_port_scan_threshold = 20
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

VERSION = "0.4.0"

# --- capture -------------------------------------------------------------------------------
DEFAULT_INTERFACE = ""            # "" = the interface of the default route
CAPTURE_FILTER = ""               # BPF expression
SNAP_LENGTH = 262144
CAPTURE_BATCH_SIZE = 1024         # packets per libpcap next_batch call
CAPTURE_TIMEOUT_MS = 100          # libpcap read timeout (ms)
CAPTURE_BUFFER_MB = 64            # kernel ring size
CAPTURE_QUEUE_SIZE = 256          # batches queued between sniffer and pipeline
FILE_READ_JOBS = 0                # processes reading a file: 1, 2, or 0 = 2 for big files
PROMISCUOUS = True
WRITE_MAX_MB = 0                  # rotate -w files at this size (0 = never)

# --- geo -----------------------------------------------------------------------------------
GEO_ENABLED = True
GEO_ONLINE = False                # ip-api.com only when asked for
GEO_API_URL = "http://ip-api.com/json/{ip}?fields=status,message,country,countryCode,regionName,city,lat,lon,isp,org,as,query"
GEO_API_BATCH_URL = "http://ip-api.com/batch?fields=status,message,country,countryCode,regionName,city,lat,lon,isp,org,as,query"
GEO_API_RATE_LIMIT = 45           # requests per minute
GEO_CACHE_SIZE = 10000
GEO_CACHE_TTL = 3600
GEO_MMDB_PATHS: list[str] = []
WHOIS_ENABLED = False
WHOIS_SERVER = "whois.iana.org"
WHOIS_PORT = 43
WHOIS_TIMEOUT = 5.0

# --- DNS -----------------------------------------------------------------------------------
DNS_CACHE_SIZE = 5000
DNS_CACHE_TTL = 3600
DNS_TIMEOUT = 1.0
DNS_RDNS_ENABLED = True
DNS_RDNS_WORKERS = 4
DNS_MAX_RECORDS = 100000          # DNS transactions kept in memory

# --- flows ---------------------------------------------------------------------------------
FLOW_TIMEOUT = 300                # idle seconds
MAX_FLOWS = 50000
TCP_CLOSE_LINGER = 10.0           # seconds a closed TCP flow stays before it is retired
FLOW_HISTORY_LIMIT = 200000       # retired flows kept in memory for exports

# --- dashboard -----------------------------------------------------------------------------
REFRESH_RATE = 0.1
MAX_FLOWS_DISPLAY = 50

# --- database ------------------------------------------------------------------------------
DB_ENABLED = True
DB_PATH = "~/.packettracer/data.db"
DB_WAL_MODE = True
DB_READ_POOL_SIZE = 4
DB_WRITE_BATCH_SIZE = 100
DB_WRITE_FLUSH_MS = 100
DB_WRITE_QUEUE_SIZE = 100000
DB_BUSY_TIMEOUT_MS = 5000
DB_GEO_CACHE_TTL = 86400
DB_DNS_CACHE_TTL = 3600
DB_SESSION_RETENTION_DAYS = 30

# --- security ------------------------------------------------------------------------------
ALERTS_PORT_SCAN_THRESHOLD = 10
ALERTS_SCAN_RATE = 0.5            # ports/s above which a source is a likely scanner
ALERTS_DEDUP_WINDOW = 300         # seconds an alert for the same (rule, source) is suppressed
ALERTS_NEW_TALKER = False
REPUTATION_API_KEY = ""
REPUTATION_API_URL = "https://api.abuseipdb.com/api/v2/check"
BLOCKLIST_DIR = ""
ALERT_SYSLOG = ""                 # "udp://host:514" / "tcp://host:514"
ALERT_WEBHOOK_URL = ""
ALERT_WEBHOOK_SECRET = ""
ALERT_SMTP = ""                   # "smtp://user@host:587"
ALERT_EMAIL_TO = ""

# --- relay ---------------------------------------------------------------------------------
RELAY_SERVER_PORT = 8765
RELAY_HEARTBEAT_INTERVAL = 5.0
RELAY_METRICS_INTERVAL = 1.0
RELAY_BUFFER_MAX_MESSAGES = 100000
RELAY_BUFFER_MAX_BYTES = 64 * 1024 * 1024
RELAY_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# --- inspection ----------------------------------------------------------------------------
DPI_ENABLED = True                # payload inspection (TLS/HTTP/QUIC facts, OS fingerprints)

# --- paths ---------------------------------------------------------------------------------
TRACE_METHOD = "icmp"             # icmp | udp | tcp
TRACE_MAX_HOPS = 30
TRACE_PROBES_PER_HOP = 3
TRACE_TIMEOUT = 1.0
TRACE_INTERVAL = 1.0
TRACE_RATE_PPS = 100.0            # probes per second over all destinations

# --- export --------------------------------------------------------------------------------
EXPORT_DIR = ""                   # where the dashboard's e key writes ("" = current folder)
EXPORT_FORMAT = "csv"             # csv | json
PACKET_RING_FRAMES = 50000        # recent frames kept for "save the selected flows' packets"
PACKET_RING_MB = 64
IPFIX_ACTIVE_TIMEOUT = 60.0
IPFIX_IDLE_TIMEOUT = 15.0
IPFIX_TEMPLATE_REFRESH = 60.0
IPFIX_MTU = 1400
IPFIX_DOMAIN_ID = 1

# --- logging -------------------------------------------------------------------------------
LOG_FILE = "~/.packettracer/packettracer.log"
LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3

#: which TOML table each setting lives in
GROUPS: dict[str, tuple[str, ...]] = {
    "capture": ("DEFAULT_INTERFACE", "CAPTURE_FILTER", "SNAP_LENGTH", "CAPTURE_BATCH_SIZE",
                "CAPTURE_TIMEOUT_MS", "CAPTURE_BUFFER_MB", "CAPTURE_QUEUE_SIZE", "PROMISCUOUS",
                "FILE_READ_JOBS",
                "WRITE_MAX_MB"),
    "geo": ("GEO_ENABLED", "GEO_ONLINE", "GEO_API_URL", "GEO_API_BATCH_URL", "GEO_API_RATE_LIMIT",
            "GEO_CACHE_SIZE", "GEO_CACHE_TTL", "GEO_MMDB_PATHS", "WHOIS_ENABLED", "WHOIS_SERVER",
            "WHOIS_PORT", "WHOIS_TIMEOUT"),
    "dns": ("DNS_CACHE_SIZE", "DNS_CACHE_TTL", "DNS_TIMEOUT", "DNS_RDNS_ENABLED",
            "DNS_RDNS_WORKERS", "DNS_MAX_RECORDS"),
    "flows": ("FLOW_TIMEOUT", "MAX_FLOWS", "TCP_CLOSE_LINGER", "FLOW_HISTORY_LIMIT"),
    "dashboard": ("REFRESH_RATE", "MAX_FLOWS_DISPLAY"),
    "database": ("DB_ENABLED", "DB_PATH", "DB_WAL_MODE", "DB_READ_POOL_SIZE",
                 "DB_WRITE_BATCH_SIZE", "DB_WRITE_FLUSH_MS", "DB_WRITE_QUEUE_SIZE",
                 "DB_BUSY_TIMEOUT_MS", "DB_GEO_CACHE_TTL", "DB_DNS_CACHE_TTL",
                 "DB_SESSION_RETENTION_DAYS"),
    "alerts": ("ALERTS_PORT_SCAN_THRESHOLD", "ALERTS_SCAN_RATE", "ALERTS_DEDUP_WINDOW",
               "ALERTS_NEW_TALKER", "REPUTATION_API_KEY", "REPUTATION_API_URL", "BLOCKLIST_DIR",
               "ALERT_SYSLOG", "ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET", "ALERT_SMTP",
               "ALERT_EMAIL_TO"),
    "relay": ("RELAY_SERVER_PORT", "RELAY_HEARTBEAT_INTERVAL", "RELAY_METRICS_INTERVAL",
              "RELAY_BUFFER_MAX_MESSAGES", "RELAY_BUFFER_MAX_BYTES", "RELAY_MAX_MESSAGE_BYTES"),
    "dpi": ("DPI_ENABLED",),
    "paths": ("TRACE_METHOD", "TRACE_MAX_HOPS", "TRACE_PROBES_PER_HOP", "TRACE_TIMEOUT",
              "TRACE_INTERVAL", "TRACE_RATE_PPS"),
    "export": ("EXPORT_DIR", "EXPORT_FORMAT", "PACKET_RING_FRAMES", "PACKET_RING_MB",
               "IPFIX_ACTIVE_TIMEOUT", "IPFIX_IDLE_TIMEOUT", "IPFIX_TEMPLATE_REFRESH", "IPFIX_MTU",
               "IPFIX_DOMAIN_ID"),
    "logging": ("LOG_FILE", "LOG_MAX_BYTES", "LOG_BACKUPS"),
}

#: settings that hold secrets: never logged, never shown
SECRET_KEYS = frozenset({"REPUTATION_API_KEY", "ALERT_WEBHOOK_SECRET"})

DEFAULT_CONFIG_PATH = "~/.config/packettracer/config.toml"
ENV_PREFIX = "PACKETTRACER_"


class ConfigError(ValueError):
    """A configuration value or file is not acceptable; the message is one line for the user."""


def defaults() -> dict[str, Any]:
    g = globals()
    return {name: g[name] for names in GROUPS.values() for name in names}


@dataclass(frozen=True)
class Settings:
    """The merged configuration. Attribute access by constant name: ``s.FLOW_TIMEOUT``."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def redacted(self) -> dict[str, Any]:
        return {k: ("***" if k in SECRET_KEYS and v else v) for k, v in self.values.items()}


def _coerce(name: str, value: Any, default: Any, origin: str) -> Any:
    """Check ``value`` has the type of ``default``; strings from the environment are parsed."""
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            if isinstance(default, bool):
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if isinstance(default, int):
                return int(text)
            if isinstance(default, float):
                return float(text)
            if isinstance(default, list):
                return [p for p in text.split(",") if p]
        except ValueError:
            raise ConfigError(f"{origin}: {name} must be {type(default).__name__}, got {value!r}") from None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{origin}: {name} must be {type(default).__name__}, got {value!r}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the TOML file into {CONSTANT: value}; unknown tables/keys are errors."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for table, entries in raw.items():
        if table not in GROUPS:
            raise ConfigError(f"config file {path}: unknown section [{table}] "
                              f"(known: {', '.join(GROUPS)})")
        if not isinstance(entries, dict):
            raise ConfigError(f"config file {path}: {table} must be a table")
        allowed = {n.lower(): n for n in GROUPS[table]}
        for key, value in entries.items():
            name = allowed.get(key.lower())
            if name is None:
                raise ConfigError(f"config file {path}: unknown key '{key}' in [{table}]")
            out[name] = value
    return out


def load_settings(cli: Mapping[str, Any] | None = None, config_path: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults < file < environment < CLI and validate every value once."""
    base = defaults()
    values = dict(base)
    sources = {k: "default" for k in base}
    env = os.environ if environ is None else environ
    explicit = config_path is not None
    path = Path(os.path.expanduser(config_path or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_PATH))
    try:
        present = path.exists()
    except OSError:  # e.g. HOME of another user after dropping privileges
        present = False
    if present or explicit:
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        for name, value in read_config_file(path).items():
            values[name] = _coerce(name, value, base[name], f"config file {path}")
            sources[name] = str(path)
    for name in base:
        text = env.get(ENV_PREFIX + name)
        if text is not None:
            values[name] = _coerce(name, text, base[name], f"environment {ENV_PREFIX}{name}")
            sources[name] = "env"
    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in base:
            raise ConfigError(f"unknown setting {name}")
        values[name] = _coerce(name, value, base[name], "command line")
        sources[name] = "cli"
    _validate(values)
    return Settings(values, sources)


def _validate(v: dict[str, Any]) -> None:
    positive = ("SNAP_LENGTH", "CAPTURE_BATCH_SIZE", "CAPTURE_QUEUE_SIZE", "MAX_FLOWS",
                "FLOW_TIMEOUT", "GEO_CACHE_SIZE", "DNS_CACHE_SIZE", "DB_READ_POOL_SIZE",
                "DB_WRITE_BATCH_SIZE", "DB_WRITE_FLUSH_MS", "GEO_API_RATE_LIMIT")
    for name in positive:
        if v[name] <= 0:
            raise ConfigError(f"{name} must be greater than 0, got {v[name]}")
    if v["FILE_READ_JOBS"] not in (0, 1, 2):
        raise ConfigError(f"FILE_READ_JOBS must be 0 (automatic), 1 or 2, got {v['FILE_READ_JOBS']}")
    if v["REFRESH_RATE"] <= 0 or v["REFRESH_RATE"] > 10:
        raise ConfigError(f"REFRESH_RATE must be in (0, 10] seconds, got {v['REFRESH_RATE']}")
    if v["TRACE_METHOD"] not in ("icmp", "udp", "tcp"):
        raise ConfigError(f"TRACE_METHOD must be icmp, udp or tcp, got {v['TRACE_METHOD']!r}")
    if v["EXPORT_FORMAT"] not in ("csv", "json"):
        raise ConfigError(f"EXPORT_FORMAT must be csv or json, got {v['EXPORT_FORMAT']!r}")
    if not 0 < v["RELAY_SERVER_PORT"] < 65536:
        raise ConfigError(f"RELAY_SERVER_PORT must be a port number, got {v['RELAY_SERVER_PORT']}")
