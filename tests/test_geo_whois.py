"""WHOIS ownership against local registry servers replaying registry-format answers.

Each registry (IANA, ARIN, RIPE, APNIC, LACNIC) is a TCP server on 127.0.0.1; the resolver
is told to reach "whois.arin.net" etc. at those local ports. The answer texts follow the
formats the real servers send (comment headers, ARIN's CamelCase blocks listed least
specific first, RPSL objects with continuation lines, route objects carrying the origin AS).
"""
from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from geo.ownership import OwnershipResolver
from geo.whois_parse import parse_whois

IANA_HEAD = """% IANA WHOIS server
% for more information on IANA, visit http://www.iana.org
% This query returned 1 object

"""


def iana(refer: str, block: str, org: str, v6: bool = False) -> str:
    key = "inet6num:" if v6 else "inetnum: "
    return IANA_HEAD + f"""refer:        {refer}

{key}     {block}
organisation: {org}
status:       ALLOCATED

whois:        {refer}

changed:      1992-12
source:       IANA

"""


ARIN_HEAD = """
#
# ARIN WHOIS data and services are subject to the Terms of Use
# available at: https://www.arin.net/resources/registry/whois/tou/
#
# If you see inaccuracies in the results, please report at
# https://www.arin.net/resources/registry/whois/inaccuracy_reporting/
#
# Copyright 1997-2024, American Registry for Internet Numbers, Ltd.
#

"""

ARIN_8_8_8_8 = ARIN_HEAD + """
NetRange:       8.0.0.0 - 8.127.255.255
CIDR:           8.0.0.0/9
NetName:        LVLT-ORG-8-8
NetHandle:      NET-8-0-0-0-1
Parent:         NET8 (NET-8-0-0-0-0)
NetType:        Direct Allocation
OriginAS:
Organization:   Level 3 Parent, LLC (LPL-141)
RegDate:        1992-12-01
Updated:        2018-04-23
Ref:            https://rdap.arin.net/registry/ip/8.0.0.0

OrgName:        Level 3 Parent, LLC
OrgId:          LPL-141
Address:        100 CenturyLink Drive
City:           Monroe
StateProv:      LA
PostalCode:     71203
Country:        US
RegDate:        2018-02-06
Updated:        2024-01-24
Ref:            https://rdap.arin.net/registry/entity/LPL-141

OrgAbuseHandle: IPADD5-ARIN
OrgAbuseName:   ipaddressing
OrgAbusePhone:  +1-877-453-8353
OrgAbuseEmail:  ipaddressing@lumen.com
OrgAbuseRef:    https://rdap.arin.net/registry/entity/IPADD5-ARIN

# end


# start

NetRange:       8.8.8.0 - 8.8.8.255
CIDR:           8.8.8.0/24
NetName:        GOGL
NetHandle:      NET-8-8-8-0-2
Parent:         LVLT-ORG-8-8 (NET-8-0-0-0-1)
NetType:        Direct Allocation
OriginAS:
Organization:   Google LLC (GOGL)
RegDate:        2023-12-28
Updated:        2023-12-28
Ref:            https://rdap.arin.net/registry/ip/8.8.8.0

OrgName:        Google LLC
OrgId:          GOGL
Address:        1600 Amphitheatre Parkway
City:           Mountain View
StateProv:      CA
PostalCode:     94043
Country:        US
RegDate:        2000-03-30
Updated:        2019-10-31
Comment:        Please note that the recommended way to file abuse complaints are located in the following links.
Ref:            https://rdap.arin.net/registry/entity/GOGL

OrgTechHandle: ZG39-ARIN
OrgTechName:   Google LLC
OrgTechPhone:  +1-650-253-0000
OrgTechEmail:  arin-contact@google.com
OrgTechRef:    https://rdap.arin.net/registry/entity/ZG39-ARIN

# end

#
# ARIN WHOIS data and services are subject to the Terms of Use
# available at: https://www.arin.net/resources/registry/whois/tou/
#
"""

ARIN_GITHUB = ARIN_HEAD + """
NetRange:       140.82.112.0 - 140.82.127.255
CIDR:           140.82.112.0/20
NetName:        GITHU
NetHandle:      NET-140-82-112-0-1
Parent:         NET140 (NET-140-0-0-0-0)
NetType:        Direct Allocation
OriginAS:       AS36459
Organization:   GitHub, Inc. (GITHU)
RegDate:        2017-04-26
Updated:        2017-04-26
Ref:            https://rdap.arin.net/registry/ip/140.82.112.0

OrgName:        GitHub, Inc.
OrgId:          GITHU
Address:        88 Colin P Kelly Jr Street
City:           San Francisco
StateProv:      CA
PostalCode:     94107
Country:        US
RegDate:        2012-11-15
Updated:        2022-08-16
Ref:            https://rdap.arin.net/registry/entity/GITHU
"""

ARIN_ERX = ARIN_HEAD + """
NetRange:       192.71.0.0 - 192.71.255.255
CIDR:           192.71.0.0/16
NetName:        RIPE-ERX-192-71-0-0
NetHandle:      NET-192-71-0-0-1
Parent:         NET192 (NET-192-0-0-0-0)
NetType:        Early Registrations, Maintained by RIPE NCC
OriginAS:
Organization:   RIPE Network Coordination Centre (RIPE)
RegDate:        2003-11-12
Updated:        2003-11-12
Comment:        These addresses have been further assigned to users in
Comment:        the RIPE NCC region.  Contact information can be found in
Comment:        the RIPE database at http://www.ripe.net/whois
Ref:            https://rdap.arin.net/registry/ip/192.71.0.0

ResourceLink:  https://apps.db.ripe.net/search/query.html
ResourceLink:  whois://whois.ripe.net

ReferralServer:  whois://whois.ripe.net
"""

ARIN_RWHOIS = ARIN_HEAD + """
NetRange:       64.124.0.0 - 64.125.255.255
CIDR:           64.124.0.0/15
NetName:        ZAYO-BLK
NetType:        Direct Allocation
OriginAS:       AS6461
Organization:   Zayo Bandwidth (ZAYOB-6)
ReferralServer:  rwhois://rwhois.zayo.com:4321
Country:        US
"""

RIPE_HEAD = """% This is the RIPE Database query service.
% The objects are in RPSL format.
%
% The RIPE Database is subject to Terms and Conditions.
% See https://docs.db.ripe.net/terms-conditions.html

% Note: this output has been filtered.
%       To receive output for a database update, use the "-B" flag.

"""

RIPE_GOOGLE_V6 = RIPE_HEAD + """% Information related to '2a00:1450::/29'

% Abuse contact for '2a00:1450::/29' is 'network-abuse@google.com'

inet6num:       2a00:1450::/29
netname:        IE-GOOGLE-2a00-1450-4000-1
country:        IE
org:            ORG-GIL6-RIPE
admin-c:        GIL-RIPE
tech-c:         GIL-RIPE
status:         ALLOCATED-BY-RIR
mnt-by:         RIPE-NCC-HM-MNT
mnt-by:         MNT-GOOG-PROD
created:        2009-10-05T12:40:41Z
last-modified:  2021-09-20T08:14:36Z
source:         RIPE

organisation:   ORG-GIL6-RIPE
org-name:       Google Ireland Limited
country:        IE
org-type:       LIR
address:        Gordon House, Barrow Street
address:        D04 E5W5
address:        Dublin 4
address:        IRELAND
mnt-ref:        MNT-GOOG-PROD
mnt-by:         RIPE-NCC-HM-MNT
created:        2009-10-01T11:48:44Z
last-modified:  2020-12-16T12:29:46Z
source:         RIPE # Filtered

% Information related to '2a00:1450::/32AS15169'

route6:         2a00:1450::/32
descr:          Google
origin:         AS15169
mnt-by:         MNT-GOOG-PROD
created:        2009-10-05T16:14:08Z
last-modified:  2009-10-05T16:14:08Z
source:         RIPE

% This query was served by the RIPE Database Query Service version 1.112 (ABERDEEN)


"""

RIPE_ERX = RIPE_HEAD + """% Information related to '192.71.200.0 - 192.71.201.255'

inetnum:        192.71.200.0 - 192.71.201.255
netname:        SE-EXAMPLE-NET
descr:          Example AB
descr:          Stockholm
country:        SE
admin-c:        EX123-RIPE
tech-c:         EX123-RIPE
status:         LEGACY
mnt-by:         RIPE-NCC-LEGACY-MNT
created:        2003-11-12T10:00:00Z
last-modified:  2016-04-14T10:27:11Z
source:         RIPE

% This query was served by the RIPE Database Query Service version 1.112 (WAGYU)
"""

APNIC_1_1_1_1 = """% [whois.apnic.net]
% Whois data copyright terms    http://www.apnic.net/db/dbcopyright.html

% Information related to '1.1.1.0 - 1.1.1.255'

% Abuse contact for '1.1.1.0 - 1.1.1.255' is 'helpdesk@apnic.net'

inetnum:        1.1.1.0 - 1.1.1.255
netname:        APNIC-LABS
descr:          APNIC and Cloudflare DNS Resolver project
descr:          Routed globally by AS13335/Cloudflare
descr:          Research prefix for APNIC Labs
country:        AU
org:            ORG-ARAD1-AP
admin-c:        AIC3-AP
tech-c:         AIC3-AP
abuse-c:        AA1412-AP
status:         ASSIGNED PORTABLE
remarks:        ---------------
remarks:        All Cloudflare abuse reporting can be done via
remarks:        resolver-abuse@cloudflare.com
remarks:        ---------------
mnt-by:         APNIC-HM
mnt-routes:     MAINT-APNICRANDNET
mnt-irt:        IRT-APNICRANDNET-AU
last-modified:  2023-04-26T22:57:58Z
mnt-lower:      MAINT-APNICRANDNET
source:         APNIC

irt:            IRT-APNICRANDNET-AU
address:        PO Box 3646
address:        South Brisbane, QLD 4101
address:        Australia
e-mail:         helpdesk@apnic.net
abuse-mailbox:  helpdesk@apnic.net
admin-c:        AR302-AP
tech-c:         AR302-AP
auth:           # Filtered
mnt-by:         MAINT-AU-APNIC-GM85-AP
last-modified:  2025-01-07T06:23:54Z
source:         APNIC

organisation:   ORG-ARAD1-AP
org-name:       APNIC Research and Development
country:        AU
address:        6 Cordelia St
phone:          +61-7-38583100
e-mail:         helpdesk@apnic.net
mnt-ref:        APNIC-HM
mnt-by:         APNIC-HM
last-modified:  2023-09-05T02:15:19Z
source:         APNIC

% Information related to '1.1.1.0/24AS13335'

route:          1.1.1.0/24
origin:         AS13335
descr:          APNIC Research and Development
                6 Cordelia St
mnt-by:         MAINT-APNICRANDNET
last-modified:  2023-04-26T02:42:44Z
source:         APNIC

% This query was served by the APNIC Whois Service version 1.88.25 (WHOIS-AU4)


"""

LACNIC_NICBR = """
% Joint Whois - whois.lacnic.net
%  This server accepts single ASN, IPv4 or IPv6 queries

% Brazilian resource: whois.registro.br

% Copyright (c) Nic.br
%  The use of the data below is only permitted as described in
%  full by the terms of use at https://registro.br/termo/en.html ,
%  being prohibited its distribution, commercialization or
%  reproduction, in particular, to use it for advertising or
%  any similar purpose.
%  2024-06-18T10:12:31-03:00 - IP: 192.0.2.10

inetnum:     200.160/20
aut-num:     AS22548
abuse-c:     GRC
owner:       Núcleo de Inf. e Coord. do Ponto BR - NIC.BR
ownerid:     005.506.560/0001-36
responsible: Frederico A C Neves
owner-c:     FAN
tech-c:      FAN
inetrev:     200.160.0.0/20
nserver:     a.dns.br
nsstat:      20240617 AA
nslastaa:    20240617
created:     19980928
changed:     20190107
country:     BR

nic-hdl-br:  FAN
person:      Frederico Neves
created:     19971217
changed:     20170516

% Security and mail abuse issues should also be addressed to
% cert.br, http://www.cert.br/ , respectivelly to cert@cert.br
% and mail-abuse@cert.br
"""

NO_MATCH = "% No match found for the query.\n"

IANA_ANSWERS = {
    "8.8.8.8": iana("whois.arin.net", "8.0.0.0 - 8.255.255.255", "ARIN"),
    "8.8.8.4": iana("whois.arin.net", "8.0.0.0 - 8.255.255.255", "ARIN"),
    "140.82.112.3": iana("whois.arin.net", "140.0.0.0 - 140.255.255.255", "ARIN"),
    "192.71.200.5": iana("whois.arin.net", "192.0.0.0 - 192.255.255.255", "Administered by ARIN"),
    "64.125.1.1": iana("whois.arin.net", "64.0.0.0 - 64.255.255.255", "ARIN"),
    "1.1.1.1": iana("whois.apnic.net", "1.0.0.0 - 1.255.255.255", "APNIC"),
    "200.160.2.3": iana("whois.lacnic.net", "200.0.0.0 - 200.255.255.255", "LACNIC"),
    "2a00:1450:4001:80b::200e": iana("whois.ripe.net", "2a00:0000:0000:0000:0000:0000:0000:0000/12",
                                     "RIPE NCC", v6=True),
    "9.9.9.9": iana("whois.loop.example", "9.0.0.0 - 9.255.255.255", "ARIN"),
}
REGISTRY_ANSWERS = {
    "whois.arin.net": {"8.8.8.8": ARIN_8_8_8_8, "8.8.8.4": ARIN_8_8_8_8,
                       "140.82.112.3": ARIN_GITHUB, "192.71.200.5": ARIN_ERX,
                       "64.125.1.1": ARIN_RWHOIS},
    "whois.ripe.net": {"2a00:1450:4001:80b::200e": RIPE_GOOGLE_V6, "192.71.200.5": RIPE_ERX},
    "whois.apnic.net": {"1.1.1.1": APNIC_1_1_1_1},
    "whois.lacnic.net": {"200.160.2.3": LACNIC_NICBR},
    # a server that refers back to IANA's answer for 9.9.9.9: a referral loop
    "whois.loop.example": {"9.9.9.9": "refer: whois.loop.example\nnetname: LOOP-NET\n"},
}


@dataclass
class Registry:
    name: str
    answers: dict[str, str]
    queries: list[str] = field(default_factory=list)
    port: int = 0


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        reg: Registry = self.server.registry  # type: ignore[attr-defined]
        line = self.rfile.readline(1024).decode("ascii").strip()
        reg.queries.append(line)
        ip = line.split()[-1] if line else ""
        self.wfile.write(reg.answers.get(ip, NO_MATCH).encode("utf-8"))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def registries() -> Iterator[dict[str, Registry]]:
    regs = {"whois.iana.org": Registry("whois.iana.org", IANA_ANSWERS)}
    regs.update({n: Registry(n, a) for n, a in REGISTRY_ANSWERS.items()})
    servers = []
    for reg in regs.values():
        srv = _Server(("127.0.0.1", 0), _Handler)
        srv.registry = reg  # type: ignore[attr-defined]
        reg.port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
    yield regs
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def resolver(regs: dict[str, Registry], **kw: object) -> OwnershipResolver:
    mapped = {n: ("127.0.0.1", r.port) for n, r in regs.items()}
    return OwnershipResolver(server="whois.iana.org", port=regs["whois.iana.org"].port,
                             servers=mapped, follow_unmapped=False, min_interval=0.0,
                             timeout=2.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("ip,registry,netname,org,cidr,country,asn", [
    ("8.8.8.8", "whois.arin.net", "GOGL", "Google LLC", "8.8.8.0/24", "US", None),
    ("140.82.112.3", "whois.arin.net", "GITHU", "GitHub, Inc.", "140.82.112.0/20", "US", 36459),
    ("2a00:1450:4001:80b::200e", "whois.ripe.net", "IE-GOOGLE-2a00-1450-4000-1",
     "Google Ireland Limited", "2a00:1450::/29", "IE", 15169),
    ("1.1.1.1", "whois.apnic.net", "APNIC-LABS", "APNIC Research and Development",
     "1.1.1.0/24", "AU", 13335),
    ("200.160.2.3", "whois.lacnic.net", None, "Núcleo de Inf. e Coord. do Ponto BR - NIC.BR",
     "200.160.0.0/20", "BR", 22548),
    # IANA -> ARIN -> "ReferralServer: whois://whois.ripe.net" -> RIPE
    ("192.71.200.5", "whois.ripe.net", "SE-EXAMPLE-NET", "Example AB", "192.71.200.0/23", "SE", None),
    # an rwhois referral is a different protocol: ARIN's answer stands
    ("64.125.1.1", "whois.arin.net", "ZAYO-BLK", "Zayo Bandwidth", "64.124.0.0/15", "US", 6461),
])
def test_referrals_and_parsing(registries: dict[str, Registry], ip: str, registry: str,
                               netname: str | None, org: str, cidr: str, country: str,
                               asn: int | None) -> None:
    r = resolver(registries)
    try:
        info = r.query(ip)
        assert info is not None
        assert (info.registry, info.netname, info.org, info.cidr, info.country, info.asn) == (
            registry, netname, org, cidr, country, asn)
        assert registries["whois.iana.org"].queries == [ip]
        if registry == "whois.arin.net":
            assert registries["whois.arin.net"].queries == [f"n + {ip}"]
        contacted = {("127.0.0.1", reg.port) for reg in registries.values() if reg.queries}
        assert r.own_traffic() == contacted and len(r.own_local_ports()) == len(contacted)
    finally:
        r.close()


def test_referral_loop_stops(registries: dict[str, Registry]) -> None:
    r = resolver(registries)
    try:
        info = r.query("9.9.9.9")
        assert info is not None and info.netname == "LOOP-NET"
        assert len(registries["whois.loop.example"].queries) == 1
    finally:
        r.close()


def test_lookup_is_background_and_blocks_are_reused(registries: dict[str, Registry]) -> None:
    r = resolver(registries)
    try:
        assert r.lookup("8.8.8.8") is None          # scheduled, not waited for
        assert r.drain(10)
        info = r.lookup("8.8.8.8")
        assert info is not None and info.org == "Google LLC"
        arin_queries = len(registries["whois.arin.net"].queries)
        near = r.lookup("8.8.8.200")                # same /24: no new query
        assert near is not None and near.netname == "GOGL" and near.ip == "8.8.8.200"
        assert len(registries["whois.arin.net"].queries) == arin_queries
        assert r.stats().hits >= 1
    finally:
        r.close()


def test_disabled_special_and_user_private_send_nothing(registries: dict[str, Registry]) -> None:
    off = resolver(registries, enabled=False)
    on = resolver(registries, private_nets=("140.82.0.0/16",))
    try:
        assert off.lookup("8.8.8.8") is None
        for ip in ("10.0.0.1", "100.64.0.1", "fe80::1", "192.0.2.1", "140.82.112.3"):
            assert on.lookup(ip) is None
        assert off.drain(1) and on.drain(1)
        assert all(not reg.queries for reg in registries.values())
        assert off.own_traffic() == set() == on.own_traffic()
    finally:
        off.close()
        on.close()


def test_dead_and_flooding_servers_are_survived(registries: dict[str, Registry]) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    r = OwnershipResolver(server="127.0.0.1", port=port, min_interval=0.0, timeout=1.0,
                          follow_unmapped=False)
    try:
        assert r.query("8.8.8.8") is None and r.failures == 1
    finally:
        r.close()

    class Flood(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            try:
                for _ in range(64):
                    self.wfile.write(b"netname: FLOOD\n" + b"x" * 16384 + b"\n")
            except OSError:
                pass

    srv = _Server(("127.0.0.1", 0), Flood)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    r = OwnershipResolver(server="127.0.0.1", port=srv.server_address[1], min_interval=0.0,
                          timeout=2.0, follow_unmapped=False)
    try:
        info = r.query("8.8.8.8")
        assert info is not None and info.netname == "FLOOD"
    finally:
        r.close()
        srv.shutdown()
        srv.server_close()


def test_parser_edge_cases() -> None:
    a = parse_whois("CIDR: 104.16.0.0/13, 104.24.0.0/14\nOriginAS: AS13335, AS209242\n"
                    "NetName: CLOUDFLARENET\nOrganization: Cloudflare, Inc. (CLOUD14)\n")
    assert (a.cidr, a.asn, a.org, a.referral) == ("104.16.0.0/13, 104.24.0.0/14", 13335,
                                                  "Cloudflare, Inc.", None)
    b = parse_whois("% comment: not a field\nnetname:\nrefer: whois.afrinic.net:4343\n")
    assert (b.netname, b.referral) == (None, ("whois.afrinic.net", 4343))
    assert parse_whois("").cidr is None
