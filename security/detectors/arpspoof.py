"""ARP spoofing: an IP address whose MAC changes, a frame whose Ethernet source disagrees with
the ARP sender, and gratuitous-ARP storms.
"""
from __future__ import annotations

from capture.packet import ParsedPacket, mac_str
from security.alerts import AlertEngine
from utils.bounded import evict_oldest


class ArpSpoofDetector:
    """Raises ``arp_spoof`` and ``arp_storm``.

    Args:
        binding_ttl: seconds a learned IP->MAC binding is trusted; a change after that is a
            normal re-assignment (DHCP lease moved), not a spoof.
        storm_threshold: gratuitous ARPs from one MAC within ``storm_window`` seconds.
        max_bindings: IP->MAC bindings remembered.
    """

    def __init__(self, engine: AlertEngine, binding_ttl: float = 3600.0,
                 storm_threshold: int = 20, storm_window: float = 10.0,
                 max_bindings: int = 65536) -> None:
        self.engine = engine
        self.binding_ttl = binding_ttl
        self.storm_threshold = storm_threshold
        self.storm_window = storm_window
        self.max_bindings = max_bindings
        #: ip -> (mac, last time the binding was seen)
        self._bindings: dict[str, tuple[bytes, float]] = {}
        #: sender mac -> (window start, gratuitous count)
        self._garp: dict[bytes, tuple[float, int]] = {}
        self.changes = 0

    def process(self, pkt: ParsedPacket) -> None:
        arp = pkt.arp
        if arp is None:
            return
        ip, mac, ts = arp.sender_ip, arp.sender_mac, pkt.ts
        if not ip or ip == "0.0.0.0" or not mac or mac == b"\x00" * 6:
            return  # ARP probes (RFC 5227) carry no claim yet
        if pkt.src_mac and pkt.src_mac != mac and arp.op == 2:
            # Replies are sent by the owner itself; a different frame source means forgery
            # (proxy ARP replies carry the proxy's MAC in both fields).
            self._raise(ip, pkt.src_mac, mac, ts, "Ethernet source differs from ARP sender")
        # The same address may live on several VLANs; bind per VLAN.
        key = ip if not pkt.vlan_ids else f"{pkt.vlan_ids[-1]}/{ip}"
        prev = self._bindings.get(key)
        if prev is not None and prev[0] != mac and ts - prev[1] < self.binding_ttl:
            self.changes += 1
            self._raise(ip, mac, prev[0], ts, "IP moved to another MAC")
            # Keep the first binding: every further forged reply must keep alerting.
            self._bindings[key] = (prev[0], ts)
        else:
            self._bindings[key] = (mac, ts)
            if prev is None and len(self._bindings) > self.max_bindings:
                evict_oldest(self._bindings, self.max_bindings)
        if ip == arp.target_ip:  # gratuitous ARP (request or reply announcing itself)
            start, n = self._garp.get(mac, (ts, 0))
            if ts - start > self.storm_window:
                start, n = ts, 0
            n += 1
            self._garp[mac] = (start, n)
            if len(self._garp) > 4096:
                evict_oldest(self._garp, 4096)
            if n >= self.storm_threshold:
                who = mac_str(mac)
                self.engine.raise_alert(
                    "arp_storm", "medium", who, ip,
                    f"Gratuitous ARP storm from {who}: {n} announcements of {ip} in "
                    f"{self.storm_window:.0f} s", {"gratuitous_arps": n}, ts=ts)

    def _raise(self, ip: str, attacker_mac: bytes, other_mac: bytes, ts: float, why: str) -> None:
        attacker, other = mac_str(attacker_mac), mac_str(other_mac)
        self.engine.raise_alert(
            "arp_spoof", "high", attacker, ip,
            f"ARP spoofing: {ip} claimed by {attacker} ({why}; other MAC {other})",
            {"ip": ip, "claimed_mac": attacker, "other_mac": other,
             "changes": self.changes}, ts=ts)

    def bindings(self) -> dict[str, str]:
        """Current IP -> MAC table (as text), for the dashboard."""
        return {ip: mac_str(mac) for ip, (mac, _) in self._bindings.items()}
