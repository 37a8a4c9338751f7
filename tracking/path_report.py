"""Headless traceroute report, like ``mtr --report``: trace for N rounds, then one hop table."""
from __future__ import annotations

import time
from typing import Any, Callable

from tracking.path import DEFAULT_MAX_HOPS, DEFAULT_RATE_PPS, DEFAULT_TIMEOUT, PathTracer, TraceTargetError
from tracking.path_stats import DestinationPath


def run_report(targets: list[str], rounds: int = 10, method: str = "icmp",
               port: int | None = None, max_hops: int = DEFAULT_MAX_HOPS,
               probes_per_hop: int = 1, timeout: float = DEFAULT_TIMEOUT,
               interval: float = 1.0, rate_limit_pps: float = DEFAULT_RATE_PPS,
               passive_hops: Callable[[str], int | None] | None = None,
               tracer: PathTracer | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Trace every target for ``rounds`` rounds (concurrently) and return the results.

    Like ``mtr --report`` the defaults send one probe per hop per round, one round a second.
    ``tracer`` may be a running (e.g. database-backed) tracer; otherwise one is made and stopped
    here. ``deadline`` bounds the wait in seconds (default: generous for ``rounds``).

    Returns ``{"method", "rounds", "started", "finished", "destinations": [...],
    "errors": [...]}``; each destination is ``DestinationPath.as_dict()`` (hops with
    addresses, loss and RTTs, route, route history and changes, passive hop estimate).
    """
    own = tracer is None
    if tracer is None:
        tracer = PathTracer(max_hops=max_hops, probes_per_hop=probes_per_hop, timeout=timeout,
                            interval=interval, rate_limit_pps=rate_limit_pps, method=method,
                            port=port, passive_hops=passive_hops)
    started = time.time()
    errors: list[str] = []
    wanted: list[str] = []
    try:
        for t in targets:
            try:
                wanted.append(tracer.request(t, method=method, port=port, rounds=rounds, name=t))
            except TraceTargetError as exc:
                errors.append(str(exc))
        if deadline is None:
            per_round = max(tracer.interval, tracer.timeout) + tracer.timeout
            probes = len(wanted) * tracer.max_hops * tracer.probes_per_hop
            deadline = rounds * per_round + probes / tracer.rate + 10.0
        if not tracer.wait(deadline):
            errors.append(f"gave up waiting after {deadline:.0f} s")
        snap = tracer.snapshot()
    finally:
        if own:
            tracer.stop()
    dests = [d for d in snap.destinations if d.target in wanted]
    errors.extend(f"{d.name}: {d.error}" for d in dests if d.error)
    return {"method": method, "rounds": rounds, "started": started, "finished": time.time(),
            "destinations": [d.as_dict() for d in dests],
            "errors": errors + [e for e in snap.errors if e not in errors]}


def _ms(v: float | None) -> str:
    return f"{v:7.1f}" if v is not None else "      -"


def format_destination(d: dict[str, Any]) -> list[str]:
    head = f"HOST: {d['name']}"
    if d["name"] != d["target"]:
        head += f" ({d['target']})"
    port = f" port {d['port']}" if d.get("port") else ""
    passive = d.get("passive_hops")
    hops = f"{d['hop_count']} hops" + ("" if d["reached"] else " (destination not reached)")
    if passive is not None:
        hops += f", passive estimate {passive}"
    lines = [f"{head}  {d['method'].upper()}{port}  {d['rounds']} rounds  {hops}",
             f"{'':4} {'Host':<40} {'Loss%':>6} {'Snt':>5} {'Last':>7} {'Avg':>7} {'Best':>7} "
             f"{'Wrst':>7} {'StDev':>7}"]
    for h in d["hops"]:
        addrs = h["addresses"] or ["???"]
        flag = " !" if h.get("unreachable") else ""
        lines.append(f"{h['ttl']:3}. {(addrs[0] + flag):<40} {h['loss_pct']:5.1f}% {h['sent']:5} "
                     f"{_ms(h['last_ms'])} {_ms(h['avg_ms'])} {_ms(h['best_ms'])} "
                     f"{_ms(h['worst_ms'])} {_ms(h['stddev_ms'])}")
        for extra in addrs[1:]:  # ECMP: further addresses answering at this hop, as mtr does
            lines.append(f"{'':5}{extra}")
    for c in d.get("changes", [])[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(c["ts"]))
        lines.append(f"route changed {when} at hop(s) {', '.join(map(str, c['changed_hops']))}: "
                     f"{' > '.join(h or '*' for h in c['old'])}  ->  "
                     f"{' > '.join(h or '*' for h in c['new'])}")
    if d.get("error"):
        lines.append(f"error: {d['error']}")
    return lines


def format_report(result: dict[str, Any]) -> str:
    """The report as text: one mtr-style hop table per destination."""
    out: list[str] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(result["started"]))
    out.append(f"Start: {started}")
    for d in result["destinations"]:
        out.extend(format_destination(d))
    for e in result.get("errors", []):
        out.append(f"error: {e}")
    return "\n".join(out) + "\n"


def destination_summary(d: DestinationPath) -> str:
    """One line per destination, for logs and status bars."""
    state = "reached" if d.reached else d.state
    return f"{d.name}: {d.hop_count} hops, {state}, {d.rounds} rounds"
