"""Passive device inventory on the real captures, checked against scapy's and tshark's decodes."""
from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest
from scapy.layers.dhcp import DHCP
from scapy.layers.dns import DNS
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from analysis.devices import IEEE_DATA_DIR, ROLE_ENDPOINT, ROLE_GATEWAY, DeviceInventory, OuiDb
from capture.reader import iter_parsed
from db.repositories.device_repo import upsert_devices
from db.schema import migrate
from tests.conftest import CAPTURES, expected_for, require


def capture(name: str) -> Path:
    path = CAPTURES / name
    require(path.is_file(), f"capture {name} not found")
    return path


def inventory(path: Path) -> DeviceInventory:
    inv = DeviceInventory()
    for pkt in iter_parsed(path):
        inv.observe(pkt)
    return inv


def _dhcp_option(pkt: object, name: str) -> bytes | None:
    for opt in pkt[DHCP].options:  # type: ignore[index]
        if isinstance(opt, tuple) and opt[0] == name:
            return opt[1]
    return None


@pytest.mark.parametrize("name", ["dhcp-dora.pcapng", "mobile-android-mix.pcap"])
def test_dhcp_hostname_and_vendor_class_match_scapy(name: str) -> None:
    path = capture(name)
    inv = inventory(path)
    checked = 0
    for pkt in rdpcap(str(path)):
        if DHCP not in pkt or pkt[Ether].src.lower() != pkt["BOOTP"].chaddr[:6].hex(":"):
            continue
        dev = inv.get(pkt[Ether].src)
        assert dev is not None
        host = _dhcp_option(pkt, "hostname")
        if host:
            assert dev.dhcp_hostname == host.decode()
            assert dev.hostname == host.decode()
            checked += 1
        vclass = _dhcp_option(pkt, "vendor_class_id")
        if vclass:
            assert dev.dhcp_vendor_class == vclass.decode()
            checked += 1
    assert checked


def test_dhcp_ack_gives_the_client_its_address() -> None:
    path = capture("dhcp-dora.pcapng")
    inv = inventory(path)
    for pkt in rdpcap(str(path)):
        if DHCP in pkt and ("message-type", 5) in pkt[DHCP].options:
            client = inv.get(pkt["BOOTP"].chaddr[:6].hex(":"))
            assert client is not None and pkt["BOOTP"].yiaddr in client.ips


def test_mdns_announced_names_are_attached_to_the_announcer() -> None:
    path = capture("mdns-ipv4-ipv6.pcap")
    inv = inventory(path)
    want: dict[str, set[str]] = {}
    for pkt in rdpcap(str(path)):
        if DNS not in pkt or not pkt[DNS].qr:
            continue
        src = pkt.payload.src
        for i in range(pkt[DNS].ancount):
            rr = pkt[DNS].an[i]
            if rr.type in (1, 28) and rr.rdata == src:
                want.setdefault(pkt[Ether].src, set()).add(rr.rrname.decode().rstrip("."))
    assert want
    for mac, names in want.items():
        dev = inv.get(mac)
        assert dev is not None and names <= {n for n, _ in dev.names}
        assert all(src == "mdns" for _, src in dev.names)


def test_arp_senders_get_their_addresses() -> None:
    path = capture("arp-request-reply.pcapng")
    inv = inventory(path)
    pairs = {(p[ARP].hwsrc, p[ARP].psrc) for p in rdpcap(str(path)) if ARP in p}
    assert len(pairs) == 2
    for mac, ip in pairs:
        dev = inv.get(mac)
        assert dev is not None and ip in dev.ips and dev.role == ROLE_ENDPOINT


def test_traceroute_gateway_and_endpoint_roles() -> None:
    path = capture("icmp-traceroute-windows.pcapng")
    exp = expected_for(path)
    exceeded = set(exp["link_icmp"]["icmp_time_exceeded_frames"])
    frames = list(iter_parsed(path))
    inv = inventory(path)
    router_macs = {frames[n - 1].src_mac.hex(":") for n in exceeded}
    echo_macs = {p.src_mac.hex(":") for p in frames if p.icmp_type == 8}
    assert len(router_macs) == 1 and echo_macs and not router_macs & echo_macs
    (router,) = router_macs
    assert inv.get(router).role == ROLE_GATEWAY
    for mac in echo_macs:
        assert inv.get(mac).role == ROLE_ENDPOINT


def test_os_guess_of_the_android_phone() -> None:
    inv = inventory(capture("mobile-android-mix.pcap"))
    phones = [d for d in inv.devices() if (d.dhcp_vendor_class or "").startswith("android")]
    assert phones and phones[0].os_guess == "Android"


def test_vendor_from_ieee_registry() -> None:
    require((IEEE_DATA_DIR / "oui.csv").is_file(), "Debian package ieee-data not installed")
    path = capture("dhcp-dora.pcapng")
    inv = inventory(path)
    registry = {}
    with open(IEEE_DATA_DIR / "oui.csv", newline="") as fh:
        for row in csv.reader(fh):
            if row[0] == "MA-L":
                registry[row[1]] = row[2]
    devices = inv.devices()
    assert devices
    for dev in devices:
        prefix = dev.mac.replace(":", "")[:6].upper()
        assert dev.vendor == registry[prefix]
    assert inv.oui.source.startswith("ieee-data")
    assert OuiDb().vendor(bytes.fromhex("020000000001")) == "(locally administered)"


def test_without_registry_vendor_is_unknown_not_wrong(tmp_path: Path) -> None:
    db = OuiDb(tmp_path)
    vendor = db.vendor(bytes.fromhex("000c29c060a4"))
    assert vendor is None or "VMware" in vendor          # netaddr's offline copy, if installed


def test_inventory_rows_persist_in_the_devices_table(tmp_path: Path) -> None:
    inv = inventory(capture("mobile-android-mix.pcap"))
    rows = inv.db_rows()
    assert rows
    conn = sqlite3.connect(tmp_path / "pt.db")
    try:
        migrate(conn)
        upsert_devices(conn, rows)
        conn.commit()
        stored = {r[0]: r for r in conn.execute(
            "SELECT ip, mac, device_type, vendor, hostname, os FROM devices")}
    finally:
        conn.close()
    for row in rows:
        assert stored[row["ip"]][1:] == (row["mac"], row["device_type"], row["vendor"],
                                         row["hostname"], row["os"])
