"""PathTracer: mtr-style continuous traceroute to several destinations at once.

One background thread sends Paris-style probes (tracking/path_probe.py) through raw sockets
(tracking/path_socket.py) under one probe-rate limit shared by all destinations, and reads the
replies, which it parses with our own parser and matches to their probes by the quoted header,
never by arrival order. Capture never waits for it: the tracer has its own lock and thread.

A destination is traced in rounds. A round sends ``probes_per_hop`` passes over TTL 1..N
(N = the destination's hop once it has answered, else ``max_hops``); probes to TTLs past the
destination are cancelled as soon as it answers. A round ends when every probe is answered or
timed out; the next starts ``interval`` after the previous one started. Per hop the tracer keeps
mtr's columns (addresses, sent, received, loss, last/best/avg/worst RTT, deviation), and each
round's route (hop addresses in TTL order) goes to the route memory, which reports changes.

Threading: public methods may be called from any thread; ``own_probe`` is lock-free (the
capture pipeline calls it per packet) and reads an immutable set that is swapped on changes.
"""
from __future__ import annotations

import heapq
import ipaddress
import os
import random
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from capture.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, ParsedPacket
from capture.parser import LINKTYPE_RAW, parse
from tracking.path_probe import (
    DEFAULT_PROBE_SIZE, DEFAULT_TCP_PORT, DEFAULT_UDP_PORT, DEST, METHODS, UNREACH, FlowIds,
    ProbeTemplate, classify_reply,
)
from tracking.path_routes import RouteMemory
from tracking.path_socket import ProbeSockets, TracerSocketError, source_address
from tracking.path_stats import DestinationPath, HopRow, HopStats, PathsSnapshot, RouteChange
from utils.logger import get_logger

log = get_logger(__name__)

DEFAULT_MAX_HOPS = 30
DEFAULT_PROBES_PER_HOP = 3
DEFAULT_TIMEOUT = 1.0
DEFAULT_INTERVAL = 1.0
DEFAULT_RATE_PPS = 100.0
#: seconds a cancelled destination's late replies are still recognised as ours
LINGER = 5.0
_MAX_WAIT = 0.25
_READ_BATCH = 256


class TraceTargetError(ValueError):
    """A destination that cannot be traced (unknown host name, bad address)."""


def resolve_target(target: str, family: int | None = None) -> tuple[str, int]:
    """(address, 4 or 6) for an address or host name; names resolve via the system resolver."""
    try:
        ip = ipaddress.ip_address(target.split("%", 1)[0])
        return str(ip), ip.version
    except ValueError:
        pass
    af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family or 0, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(target, None, af, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TraceTargetError(f"cannot resolve {target!r}: {exc}") from None
    if not infos:
        raise TraceTargetError(f"cannot resolve {target!r}")
    addr = infos[0][4][0]
    return addr, 6 if infos[0][0] == socket.AF_INET6 else 4


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one finished round measured (handed to listeners on the tracer thread)."""

    target: str
    name: str
    method: str
    round_no: int
    started: float            # wall clock
    finished: float
    reached: bool
    #: this round's route (silent hops filled from the current route); empty when the round
    #: was not counted as a route (destination not reached)
    route: tuple[str | None, ...]
    #: cumulative hop table after this round
    hops: tuple[HopRow, ...]
    #: (ttl, responder or None, rtt_ms or None) per probe of this round
    samples: tuple[tuple[int, str | None, float | None], ...]
    change: RouteChange | None


@dataclass(slots=True, eq=False)
class _Probe:
    tag: int
    dest: "_Dest"
    ttl: int
    round_no: int
    sent_wall: float
    deadline: float


class _Dest:
    """One destination's tracing state (tracer thread, under the tracer's lock)."""

    def __init__(self, target: str, name: str, version: int, method: str, port: int | None,
                 rounds: int | None, started: float) -> None:
        self.target = target
        self.name = name
        self.version = version
        self.method = method
        self.port = port
        self.rounds_limit = rounds
        self.state = "starting"
        self.error = ""
        self.template: ProbeTemplate | None = None
        self.socks: ProbeSockets | None = None
        self.rounds_done = 0
        self.round_no = 0
        self.in_round = False
        self.round_started = 0.0
        self.round_wall = 0.0
        self.next_round_at = 0.0
        self.pending: deque[int] = deque()
        self.inflight = 0
        #: TTL where the destination (or an "unreachable") answered; None until it did
        self.terminal: int | None = None
        self.hops: dict[int, HopStats] = {}
        self.round_obs: dict[int, dict[str, int]] = {}
        self.round_terminal = False
        self.round_hop_at_terminal = False
        self.samples: list[tuple[int, str | None, float | None]] = []
        self.memory = RouteMemory(target)
        self.started = started
        self.last_round = 0.0

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    def freeze(self, passive: int | None) -> DestinationPath:
        last = self.terminal or max((t for t, h in self.hops.items() if h.received), default=0)
        rows = tuple(self.hops[t].freeze(t == self.terminal and DEST in self.hops[t].kinds)
                     if t in self.hops else HopStats(t).freeze(False) for t in range(1, last + 1))
        reached = bool(rows) and rows[-1].is_destination
        return DestinationPath(
            target=self.target, name=self.name, family=self.version, method=self.method,
            port=self.port, state=self.state, error=self.error, rounds=self.rounds_done,
            reached=reached, hop_count=last, hops=rows, route=self.memory.current or (),
            routes=self.memory.records(), changes=tuple(self.memory.changes),
            started=self.started, last_round=self.last_round, passive_hops=passive)


class PathTracer:
    """Continuous traceroute to any number of destinations under one probe-rate limit.

    Args:
        max_hops: highest TTL probed.
        probes_per_hop: probes per hop in each round.
        timeout: seconds after which an unanswered probe counts as lost.
        interval: seconds from the start of one round to the start of the next.
        rate_limit_pps: probes per second, all destinations together.
        method: default probe kind, "icmp", "udp" or "tcp" (per destination in :meth:`request`).
        port: default destination port (UDP: 33434, TCP: 80).
        probe_size: bytes of an ICMP/UDP probe including the IP header.
        clock: monotonic seconds, for timeouts, rounds and the rate limit.
        wall: wall-clock seconds, for timestamps in results (RTTs use kernel receive times).
        on_route_change: called with each :class:`RouteChange` (on the tracer thread).
        passive_hops: ``ip -> routers crossed`` (``HopAnalyzer.hops``), shown beside the
            measured hop count.
        socket_factory: ``(family, tcp_port | None) -> ProbeSockets``.
    """

    def __init__(self, max_hops: int = DEFAULT_MAX_HOPS,
                 probes_per_hop: int = DEFAULT_PROBES_PER_HOP,
                 timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
                 rate_limit_pps: float = DEFAULT_RATE_PPS, method: str = "icmp",
                 port: int | None = None, probe_size: int = DEFAULT_PROBE_SIZE,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 on_route_change: Callable[[RouteChange], None] | None = None,
                 passive_hops: Callable[[str], int | None] | None = None,
                 socket_factory: Callable[[int, int | None], ProbeSockets] = ProbeSockets) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown trace method {method!r} (one of {', '.join(METHODS)})")
        if not 1 <= max_hops <= 255:
            raise ValueError("max_hops must be 1..255")
        self.max_hops = max_hops
        self.probes_per_hop = max(1, probes_per_hop)
        self.timeout = timeout
        self.interval = interval
        self.rate = max(0.1, float(rate_limit_pps))
        self.method = method
        self.port = port
        self.probe_size = probe_size
        self.clock = clock
        self.wall = wall
        self.on_route_change = on_route_change
        self.passive_hops = passive_hops
        self.socket_factory = socket_factory
        #: called with each RoundResult on the tracer thread (DBPathTracer persists from here)
        self.listeners: list[Callable[[RoundResult], None]] = []
        rnd = random.SystemRandom()
        self.ids = FlowIds(icmp_id=rnd.randrange(1, 0xFFFF),
                           sport=rnd.randrange(33000, 60999),
                           seq_hi=rnd.randrange(1, 0xFFFF), flow_label=rnd.randrange(1, 0xFFFFF))
        self._lock = threading.RLock()
        self._done = threading.Condition(self._lock)
        self._dests: dict[str, _Dest] = {}
        self._socks: dict[int, ProbeSockets] = {}
        self._by_fd: dict[int, tuple[ProbeSockets, socket.socket]] = {}
        self._inflight: dict[int, _Probe] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._next_tag = rnd.randrange(1, 0xFFFE)
        self._tokens = 1.0
        self._tok_at = clock()
        self._rr = 0
        self._linger: dict[str, float] = {}
        #: destinations whose packets are ours (read without the lock by own_probe)
        self._targets: frozenset[str] = frozenset()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.probes_sent = 0
        self.replies = 0
        self.unmatched = 0
        self.errors: deque[str] = deque(maxlen=8)

    # ---- control (any thread) ----------------------------------------------------------------
    def open_sockets(self, versions: Iterable[int] = (4, 6)) -> list[str]:
        """Open raw sockets now (before dropping privileges); returns errors per family."""
        errs = []
        with self._lock:
            for v in versions:
                try:
                    self._sockets(v)
                except TracerSocketError as exc:
                    errs.append(f"IPv{v}: {exc.strerror}")
        return errs

    def request(self, target: str, method: str | None = None, port: int | None = None,
                rounds: int | None = None, name: str | None = None) -> str:
        """Trace ``target`` (address or host name): ``rounds`` rounds, or until cancelled.

        Asking again for a destination already traced keeps its statistics and resumes it.
        Returns the address traced. Raises TraceTargetError for a name that does not resolve.
        """
        method = method or self.method
        if method not in METHODS:
            raise ValueError(f"unknown trace method {method!r}")
        ip, version = resolve_target(target)
        if port is None:
            port = self.port if self.port is not None else (
                DEFAULT_UDP_PORT if method == "udp" else DEFAULT_TCP_PORT if method == "tcp" else None)
        if method == "icmp":
            port = None
        with self._lock:
            d = self._dests.get(ip)
            if d is not None and d.method == method and d.port == port:
                d.rounds_limit = None if rounds is None else d.rounds_done + rounds
                if not d.active:
                    d.state = "running" if d.template is not None else "starting"
                    d.error = ""
                    d.next_round_at = self.clock()
            else:
                if d is not None:
                    self._drop(d)
                d = _Dest(ip, name or target, version, method, port, rounds, self.wall())
                self._seed(d)
                self._dests[ip] = d
                self._prepare(d)
            self._update_targets()
        self._ensure_thread()
        self._wake()
        return ip

    def cancel(self, target: str) -> None:
        """Stop probing ``target``; its results stay in the snapshot."""
        with self._lock:
            d = self._dests.get(target) or self._by_name(target)
            if d is not None and d.active:
                d.state = "stopped"
                self._abort_round(d)

    def clear(self, target: str | None = None) -> None:
        """Forget one destination (or all): stop it and remove it from the snapshot."""
        with self._lock:
            for d in list(self._dests.values()):
                if target is None or target in (d.target, d.name):
                    self._drop(d)
            self._update_targets()

    def reset(self, target: str | None = None) -> None:
        """Zero the hop statistics (mtr's ``r``); route memory is kept."""
        with self._lock:
            for d in self._dests.values():
                if target is None or target in (d.target, d.name):
                    d.hops.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every destination with a round limit has finished; False on timeout."""
        end = None if timeout is None else self.clock() + timeout
        with self._done:
            while any(d.active for d in self._dests.values()):
                left = None if end is None else end - self.clock()
                if left is not None and left <= 0:
                    return False
                self._done.wait(0.2 if left is None else min(0.2, left))
        return True

    def stop(self) -> None:
        """Stop the thread and close the sockets (results stay readable)."""
        self._stop.set()
        self._wake()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(2.0)
        with self._lock:
            for d in self._dests.values():
                if d.active:
                    d.state = "stopped"
            for s in self._socks.values():
                s.close()
            self._socks.clear()
            self._by_fd.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    close = stop

    # ---- readers -----------------------------------------------------------------------------
    def snapshot(self) -> PathsSnapshot:
        with self._lock:
            dests = list(self._dests.values())
            passive = self.passive_hops
            out = []
            for d in dests:
                p = None
                if passive is not None:
                    try:
                        n = passive(d.target)
                    except (KeyError, ValueError):
                        n = None
                    p = None if n is None else n + 1  # routers crossed -> hop number
                out.append(d.freeze(p))
            return PathsSnapshot(tuple(out), self.probes_sent, self.replies, self.unmatched,
                                 self.rate, tuple(self.errors))

    @property
    def tracing(self) -> bool:
        """True while any target is being traced (its probes and replies are ours)."""
        return bool(self._targets)

    def own_probe(self, pkt: ParsedPacket) -> bool:
        """True for the tracer's probes and the replies to them (exclude them from statistics)."""
        t = self._targets
        if not t:
            return False
        q = pkt.quoted
        if q is None:
            if pkt.dst_ip in t:
                p = pkt.proto
                if p == PROTO_TCP or p == PROTO_UDP:
                    return pkt.sport == self.ids.sport
                return (p == PROTO_ICMP or p == PROTO_ICMPV6) and pkt.icmp_id == self.ids.icmp_id
            if pkt.src_ip in t:
                p = pkt.proto
                if p == PROTO_TCP:
                    return pkt.dport == self.ids.sport
                return (p == PROTO_ICMP or p == PROTO_ICMPV6) and pkt.icmp_id == self.ids.icmp_id
            return False
        if q.dst_ip not in t:
            return False
        if q.proto == PROTO_ICMP or q.proto == PROTO_ICMPV6:
            return q.icmp_id == self.ids.icmp_id
        return q.sport == self.ids.sport

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- internals (under the lock) ----------------------------------------------------------
    def _seed(self, d: _Dest) -> None:
        """Hook: load stored route history for a new destination (DBPathTracer)."""

    def _by_name(self, name: str) -> _Dest | None:
        return next((d for d in self._dests.values() if d.name == name), None)

    def _sockets(self, version: int) -> ProbeSockets:
        s = self._socks.get(version)
        if s is None:
            s = self.socket_factory(socket.AF_INET6 if version == 6 else socket.AF_INET, None)
            self._socks[version] = s
            self._index_fds()
        return s

    def _index_fds(self) -> None:
        self._by_fd = {sock.fileno(): (ps, sock) for ps in self._socks.values() for sock in ps.recv}

    def _prepare(self, d: _Dest) -> None:
        try:
            socks = self._sockets(d.version)
            if d.method == "tcp" and not socks.has_tcp:
                socks.add_tcp(self.ids.sport)
                self._index_fds()
            af = socket.AF_INET6 if d.version == 6 else socket.AF_INET
            src = source_address(af, d.target)
            d.template = ProbeTemplate(d.method, af, src, d.target, d.port or 0, self.ids,
                                       self.probe_size)
        except OSError as exc:
            d.state = "error"
            d.error = exc.strerror or str(exc)
            self.errors.append(f"{d.name}: {d.error}")
            log.warning("cannot trace %s: %s", d.name, d.error)
            return
        d.socks = socks
        d.state = "running"
        d.next_round_at = self.clock()

    def _drop(self, d: _Dest) -> None:
        self._abort_round(d)
        d.state = "stopped"
        self._dests.pop(d.target, None)
        self._linger[d.target] = self.clock() + LINGER

    def _abort_round(self, d: _Dest) -> None:
        d.pending.clear()
        for tag in [t for t, p in self._inflight.items() if p.dest is d]:
            del self._inflight[tag]
        d.inflight = 0
        d.in_round = False
        self._done.notify_all()

    def _update_targets(self) -> None:
        now = self.clock()
        self._linger = {t: e for t, e in self._linger.items() if e > now}
        self._targets = frozenset(self._dests) | frozenset(self._linger)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="path-tracer", daemon=True)
                self._thread.start()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # a wake-up is already pending

    def _alloc_tag(self) -> int:
        tag = self._next_tag
        inflight = self._inflight
        while True:
            tag = tag + 1 if tag < 0xFFFE else 1
            if tag not in inflight:
                self._next_tag = tag
                return tag

    # ---- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    now = self.clock()
                    self._expire(now)
                    self._start_rounds(now)
                    self._send(now)
                    wait = self._next_wakeup(self.clock())
                    fds = list(self._by_fd)
                try:
                    ready, _, _ = select.select(fds + [self._wake_r], [], [], wait)
                except (OSError, ValueError):
                    if self._stop.is_set():
                        break
                    raise
                for fd in ready:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                        continue
                    self._read(fd)
        except Exception as exc:  # boundary: show a dead tracer as state, never kill the run
            log.exception("path tracer stopped")
            with self._lock:
                self.errors.append(f"tracer stopped: {type(exc).__name__}: {exc}")
                for d in self._dests.values():
                    if d.active:
                        d.state = "error"
                        d.error = "tracer stopped"
                self._done.notify_all()

    def _read(self, fd: int) -> None:
        entry = self._by_fd.get(fd)
        if entry is None:
            return
        ps, sock = entry
        got = []
        for _ in range(_READ_BATCH):
            item = ps.read(sock)
            if item is None:
                break
            got.append(item)
        if not got:
            return
        with self._lock:
            for data, ts in got:
                self._reply(data, ts)

    def _reply(self, data: bytes, ts: float) -> None:
        pkt = parse(data, LINKTYPE_RAW, ts)
        m = classify_reply(pkt, self.ids)
        if m is None:
            self.unmatched += 1
            return
        target, tag, kind = m
        probe = self._inflight.get(tag)
        if probe is None or probe.dest.target != target:
            self.unmatched += 1  # late (after its timeout), or not ours after all
            return
        del self._inflight[tag]
        self.replies += 1
        rtt = max(0.0, (ts - probe.sent_wall) * 1000.0)
        self._answered(probe, pkt.src_ip, rtt, kind)

    def _answered(self, probe: _Probe, addr: str, rtt: float, kind: int) -> None:
        d = probe.dest
        d.inflight -= 1
        ttl = probe.ttl
        if kind == DEST or kind == UNREACH:
            if d.terminal is None or ttl < d.terminal:
                d.terminal = ttl
                for t in [t for t in d.hops if t > ttl]:
                    del d.hops[t]
                if d.pending:
                    d.pending = deque(t for t in d.pending if t <= ttl)
            if ttl == d.terminal:
                d.round_terminal = True
        elif d.terminal is not None and ttl == d.terminal:
            d.round_hop_at_terminal = True  # a router now sits where the destination was
        if d.terminal is None or ttl <= d.terminal:
            h = d.hops.get(ttl)
            if h is None:
                h = d.hops[ttl] = HopStats(ttl)
            h.answered(addr, rtt, kind)
            obs = d.round_obs.setdefault(ttl, {})
            obs[addr] = obs.get(addr, 0) + 1
            d.samples.append((ttl, addr, rtt))
        self._maybe_finish(d)

    def _expire(self, now: float) -> None:
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, tag = heapq.heappop(dl)
            probe = self._inflight.get(tag)
            if probe is None or probe.deadline > now:
                continue
            del self._inflight[tag]
            d = probe.dest
            d.inflight -= 1
            if d.terminal is None or probe.ttl <= d.terminal:
                h = d.hops.get(probe.ttl)
                if h is None:
                    h = d.hops[probe.ttl] = HopStats(probe.ttl)
                h.lost()
                d.samples.append((probe.ttl, None, None))
            self._maybe_finish(d)

    def _start_rounds(self, now: float) -> None:
        for d in self._dests.values():
            if d.state != "running" or d.in_round or now < d.next_round_at:
                continue
            if d.rounds_limit is not None and d.rounds_done >= d.rounds_limit:
                d.state = "done"
                self._done.notify_all()
                continue
            d.round_no += 1
            d.in_round = True
            d.round_started = now
            d.round_wall = self.wall()
            d.round_obs = {}
            d.samples = []
            d.round_terminal = False
            d.round_hop_at_terminal = False
            last = d.terminal or self.max_hops
            d.pending = deque(t for _ in range(self.probes_per_hop) for t in range(1, last + 1))

    def _send(self, now: float) -> None:
        self._tokens = min(max(1.0, self.rate / 20.0),
                           self._tokens + (now - self._tok_at) * self.rate)
        self._tok_at = now
        ready = [d for d in self._dests.values() if d.pending and d.state == "running"]
        while ready and self._tokens >= 1.0:
            self._rr = (self._rr + 1) % len(ready)
            d = ready[self._rr]
            ttl = d.pending.popleft()
            self._tokens -= 1.0
            self._send_one(d, ttl, now)
            if not d.pending:
                ready = [x for x in ready if x.pending]

    def _send_one(self, d: _Dest, ttl: int, now: float) -> None:
        assert d.template is not None and d.socks is not None
        tag = self._alloc_tag()
        data = d.template.build(ttl, tag)
        probe = _Probe(tag, d, ttl, d.round_no, 0.0, now + self.timeout)
        self._inflight[tag] = probe
        d.inflight += 1
        try:
            probe.sent_wall = self.wall()
            d.socks.send(d.target, data)
        except OSError as exc:
            # No route, a local firewall, a full buffer: the probe is lost, say why once.
            msg = f"{d.name}: send failed: {exc.strerror or exc}"
            if not self.errors or self.errors[-1] != msg:
                self.errors.append(msg)
            probe.deadline = now  # expires on the next pass
        self.probes_sent += 1
        heapq.heappush(self._deadlines, (probe.deadline, tag))

    def _maybe_finish(self, d: _Dest) -> None:
        if d.in_round and not d.pending and d.inflight <= 0:
            self._finish_round(d)

    def _finish_round(self, d: _Dest) -> None:
        now = self.clock()
        d.in_round = False
        d.rounds_done += 1
        d.last_round = self.wall()
        if d.terminal is not None and not d.round_terminal and d.round_hop_at_terminal:
            # the destination moved further away: search up to max_hops again next round
            d.terminal = None
        last = d.terminal or max(d.round_obs, default=0)
        observed = tuple(max(d.round_obs[t].items(), key=lambda kv: kv[1])[0]
                         if t in d.round_obs else None for t in range(1, last + 1))
        route, change = d.memory.observe(observed, d.last_round, d.round_terminal) \
            if d.round_obs else (None, None)
        if d.rounds_limit is not None and d.rounds_done >= d.rounds_limit:
            d.state = "done"
        d.next_round_at = max(now, d.round_started + self.interval)
        result = RoundResult(d.target, d.name, d.method, d.round_no, d.round_wall, d.last_round,
                             d.round_terminal, route or (),
                             d.freeze(None).hops, tuple(d.samples), change)
        self._done.notify_all()
        if change is not None:
            log.info("route to %s changed at hops %s", d.target, list(change.changed_hops))
            if self.on_route_change is not None:
                self._call(self.on_route_change, change)
        for listener in self.listeners:
            self._call(listener, result)

    def _call(self, fn: Callable[..., None], arg: object) -> None:
        try:
            fn(arg)
        except Exception as exc:  # boundary: a listener must not stop the tracer
            log.exception("path tracer listener failed")
            self.errors.append(f"listener: {type(exc).__name__}: {exc}")

    def _next_wakeup(self, now: float) -> float:
        wait = _MAX_WAIT
        if any(d.pending for d in self._dests.values()):
            wait = min(wait, max(0.0, (1.0 - self._tokens) / self.rate))
        if self._deadlines:
            wait = min(wait, max(0.0, self._deadlines[0][0] - now))
        for d in self._dests.values():
            if d.state == "running" and not d.in_round:
                wait = min(wait, max(0.0, d.next_round_at - now))
        return wait
