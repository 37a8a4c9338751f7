"""Name and geo answers stored by one run are used by the next (24 h / 1 h caches in SQLite)."""
from __future__ import annotations

import json
from pathlib import Path

import main
from db.connection import ConnectionPool
from db.repositories.dns_repo import DnsRepository
from geo.records import HostInfo
from tests.conftest import CAPTURES


def test_a_stored_ptr_answer_names_the_flow_on_the_next_run(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    pool = ConnectionPool(db)
    # What an earlier run's reverse lookup stored for the DNS server of this capture
    info = HostInfo(fqdn="dns.google", hostname="dns", domain="dns.google",
                    display_name="dns.google", source="ptr")
    DnsRepository(pool).save("8.8.8.8", info.to_dict())
    pool.close()
    out = tmp_path / "o.json"
    # --no-rdns: nothing is asked on the network, the stored answer must be enough
    rc = main.run(["-r", str(CAPTURES / "dns-nxdomain.pcapng"), "--no-ui", "--no-rdns",
                   "--db", str(db), "--export-json", str(out), "--log-file", str(tmp_path / "l")])
    assert rc == 0
    flows = json.loads(out.read_text())["flows"]
    ends = {(f["dst_ip"], f["dst_fqdn"], f["dst_name_source"]) for f in flows}
    ends |= {(f["src_ip"], f["src_fqdn"], f["src_name_source"]) for f in flows}
    assert ("8.8.8.8", "dns.google", "ptr") in ends
