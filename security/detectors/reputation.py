"""Traffic to or from addresses on an offline blocklist or with a bad online reputation.

Verdicts are cached per address string, so a long flow costs one dict lookup per packet and
the radix tree is consulted once per new address. Online scores come from a background service
(never looked up on the packet path): until the answer arrives the address is simply unknown.
"""
from __future__ import annotations

from typing import Protocol

from capture.packet import ParsedPacket
from security.alerts import AlertEngine


class _Lists(Protocol):
    def lookup(self, ip: str) -> str | None: ...


class _Scores(Protocol):
    def score(self, ip: str) -> int | None: ...


_CLEAN = ""


class ReputationDetector:
    """Raises ``blocklisted_address`` and ``bad_reputation``.

    Args:
        blocklist: offline lists (:class:`security.reputation.BlockList`), or None.
        online: a non-blocking scorer (:class:`security.reputation.ReputationService`), or None.
        min_score: AbuseIPDB confidence (0-100) from which an address is reported.
    """

    def __init__(self, engine: AlertEngine, blocklist: _Lists | None = None,
                 online: _Scores | None = None, min_score: int = 75,
                 cache_size: int = 65536) -> None:
        self.engine = engine
        self.blocklist = blocklist
        self.online = online
        self.min_score = min_score
        self.cache_size = cache_size
        #: ip -> "" (clean) or the name of the list that holds it
        self._verdict: dict[str, str] = {}
        #: ip -> score once the online answer is known
        self._scored: dict[str, int] = {}
        #: bad ip -> [time of the last report to the engine, packets seen]
        self._reported: dict[str, list[float]] = {}
        self.hits = 0

    def process(self, pkt: ParsedPacket) -> None:
        if not pkt.ip_version:
            return
        src, dst = pkt.src_ip, pkt.dst_ip
        v = self._verdict.get(src)
        if v is None:
            v = self._classify(src)
        if v:
            self._hit(src, dst, v, pkt.ts)
        v = self._verdict.get(dst)
        if v is None:
            v = self._classify(dst)
        if v:
            self._hit(dst, src, v, pkt.ts)
        if self.online is not None:
            self._online(src, dst, pkt.ts)
            self._online(dst, src, pkt.ts)

    def _classify(self, ip: str) -> str:
        name = self.blocklist.lookup(ip) if self.blocklist is not None else None
        if len(self._verdict) >= self.cache_size:
            self._verdict.clear()  # cheap reset; hot addresses come back at once
        v = self._verdict[ip] = name or _CLEAN
        return v

    def _due(self, bad: str, ts: float) -> int:
        """Packets seen for ``bad`` if it is time to tell the engine again, else 0.

        A flow to a bad address would otherwise call the engine on every packet; once a
        second is enough to keep the alert's count and evidence current.
        """
        self.hits += 1
        rec = self._reported.get(bad)
        if rec is None:
            if len(self._reported) >= self.cache_size:
                self._reported.clear()
            rec = self._reported[bad] = [ts - 2.0, 0]
        rec[1] += 1
        if ts - rec[0] < 1.0:
            return 0
        rec[0] = ts
        return int(rec[1])

    def _hit(self, bad: str, peer: str, list_name: str, ts: float) -> None:
        packets = self._due(bad, ts)
        if packets:
            self.engine.raise_alert(
                "blocklisted_address", "high", bad, peer,
                f"Traffic between {peer} and blocklisted {bad} (list: {list_name})",
                {"list": list_name, "packets": packets}, ts=ts)

    def _online(self, ip: str, peer: str, ts: float) -> None:
        known = self._scored.get(ip)
        if known is None:
            assert self.online is not None
            score = self.online.score(ip)
            if score is None:
                return
            if len(self._scored) >= self.cache_size:
                self._scored.clear()
            known = self._scored[ip] = score
        if known >= self.min_score:
            packets = self._due(ip, ts)
            if packets:
                self.engine.raise_alert(
                    "bad_reputation", "high", ip, peer,
                    f"Traffic between {peer} and {ip}, abuse confidence {known}/100",
                    {"abuse_score": known, "packets": packets}, ts=ts)
