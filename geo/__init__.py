"""Resolution: who and where every address is (geo, ASN, ownership, names).

Offline by default from bundled data; online sources (ip-api.com, WHOIS, reverse DNS) run in
background threads so a lookup always answers at once with what is known now.
"""
