"""Passive OS fingerprinting from TCP SYN and SYN/ACK headers, p0f-style.

An operating system's TCP stack writes its opening segment in a recognisable way: the initial
TTL, the window size (often a multiple of the MSS), the window scale and above all the order
of the TCP options. :data:`SIGNATURES` is the table we match against, most specific rows first;
anything that fits no row is "unknown" rather than a guess. The table was written from p0f v3's
notes and checked against the public captures in ../shared/captures.
"""
from __future__ import annotations

from dataclasses import dataclass

from capture.packet import ACK, SYN, ParsedPacket

UNKNOWN = "unknown"


def initial_ttl(ttl: int) -> int:
    """The TTL the sender most likely started from (hops only ever lower it)."""
    if ttl <= 32:
        return 32
    if ttl <= 64:
        return 64
    if ttl <= 128:
        return 128
    return 255


@dataclass(slots=True, frozen=True)
class Signature:
    """One row of the table; ``None`` fields match anything.

    ``window`` is either a set of exact values or, as ``mss_mult``, multiples of the MSS
    (Linux sizes its first window as N x MSS).
    """

    label: str
    ittl: int
    layouts: frozenset[str]
    window: frozenset[int] | None = None
    mss_mult: frozenset[int] | None = None
    wscale: frozenset[int] | None = None
    #: "S" = SYN only, "A" = SYN/ACK only, "" = both
    kind: str = ""


def _sig(label: str, ittl: int, layouts: tuple[str, ...], window: tuple[int, ...] | None = None,
         mss_mult: tuple[int, ...] | None = None, wscale: tuple[int, ...] | None = None,
         kind: str = "") -> Signature:
    return Signature(label, ittl, frozenset(layouts),
                     frozenset(window) if window is not None else None,
                     frozenset(mss_mult) if mss_mult is not None else None,
                     frozenset(wscale) if wscale is not None else None, kind)


_LINUX = ("M,S,T,N,W",)
_LINUX_NO_TS = ("M,N,N,S,N,W", "M,S,N,W", "M,N,N,T,N,W")
_LINUX_WINDOWS = (5840, 5792, 14600, 14480, 29200, 28960, 64240, 65160, 42340, 43690, 65483)
_APPLE = ("M,N,W,N,N,T,S,E", "M,N,W,N,N,T,S,E,E")
_WINDOWS = ("M,N,W,N,N,S", "M,N,W,S,T", "M,N,W,N,N,T,N,N,S", "M,N,N,S", "M,N,W,N,N,S,N,N,T")

#: first match wins: specific rows before the catch-all rows of a family
SIGNATURES: tuple[Signature, ...] = (
    # Android sets a fixed 65535-byte first window over the Linux option layout.
    _sig("Android", 64, _LINUX, window=(65535,), wscale=(6, 7, 8, 9), kind="S"),
    _sig("Linux", 64, _LINUX + _LINUX_NO_TS, window=_LINUX_WINDOWS,
         mss_mult=(2, 3, 4, 10, 20, 22, 44, 45)),
    _sig("macOS/iOS", 64, _APPLE, window=(65535,), wscale=(3, 4, 5, 6, 7, 8, 9, 10, 11, 12)),
    _sig("FreeBSD", 64, ("M,N,W,S,T", "M,N,W,N,N,T", "M,N,W,S,T,E"), window=(65535, 65228),
         wscale=(0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14)),
    _sig("OpenBSD", 64, ("M,N,N,S,N,W,N,N,T",), window=(16384, 65535)),
    _sig("Windows", 128, _WINDOWS,
         window=(8192, 16384, 64240, 65535, 64512, 8760, 65392, 62240, 65160, 64000)),
    _sig("Windows", 128, _WINDOWS, mss_mult=(44, 45, 6, 11)),
    _sig("Windows", 128, ("M,S,T,N,W",), window=(64240, 65535, 8192), kind="S"),
    # Routers, switches, firewalls and load balancers answer with an initial TTL of 255.
    _sig("network device", 255, ("M",), window=(4128, 8192, 16384, 4096)),
    _sig("network device", 255, ("M,N,W,N,N,T", "M,N,W,N,N,T,S,E", "M,S,T,N,W", "M,N,N,S",
                                 "M,N,W,S,T", "M,N,W,N,N,S")),
    # nmap's raw SYN probes: MSS only, tiny windows, no DF.
    _sig("nmap scan", 64, ("M",), window=(1024, 2048, 3072, 4096), kind="S"),
)


def _window_fits(sig: Signature, win: int, mss: int) -> bool:
    if sig.window is None and sig.mss_mult is None:
        return True
    if sig.window is not None and win in sig.window:
        return True
    if sig.mss_mult is None or not mss:
        return False
    # With timestamps on, Linux counts the window in segments of MSS - 12.
    for seg in (mss, mss - 12):
        if seg > 0 and win % seg == 0 and win // seg in sig.mss_mult:
            return True
    return False


@dataclass(slots=True, frozen=True)
class OsGuess:
    label: str
    ittl: int
    #: "exact" when a row matched, "" for unknown
    match: str
    #: the observed signature, p0f-like: ittl:mss:window,scale:layout
    signature: str


_CACHE: dict[tuple[int, str, int, int, int | None, str], OsGuess] = {}
_CACHE_MAX = 4096


def fingerprint(pkt: ParsedPacket) -> OsGuess | None:
    """Guess the OS of the sender of a SYN or SYN/ACK; None for any other segment.

    Results are memoised by signature: a network shows few distinct stacks, so after the
    first SYN of each kind a guess costs one dict lookup.
    """
    flags = pkt.tcp_flags
    if not flags & SYN or pkt.proto != 6:
        return None
    opts = pkt.tcp_options
    layout = opts.order if opts is not None else ""
    mss = opts.mss if opts is not None and opts.mss else 0
    wscale = opts.wscale if opts is not None else None
    kind = "A" if flags & ACK else "S"
    ttl = pkt.ttl
    ittl = 32 if ttl <= 32 else 64 if ttl <= 64 else 128 if ttl <= 128 else 255
    key = (ittl, layout, pkt.window, mss, wscale, kind)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        hit = _CACHE[key] = _match(ittl, layout, pkt.window, mss, wscale, kind)
    return hit


def _match(ittl: int, layout: str, win: int, mss: int, wscale: int | None,
           kind: str) -> OsGuess:
    sig_text = f"{ittl}:{mss or '*'}:{win},{'' if wscale is None else wscale}:{layout}"
    for sig in SIGNATURES:
        if sig.ittl != ittl or layout not in sig.layouts or (sig.kind and sig.kind != kind):
            continue
        if sig.wscale is not None and wscale is not None and wscale not in sig.wscale:
            continue
        if not _window_fits(sig, win, mss):
            continue
        return OsGuess(sig.label, ittl, "exact", sig_text)
    return OsGuess(UNKNOWN, ittl, "", sig_text)
