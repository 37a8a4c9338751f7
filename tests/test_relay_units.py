"""Relay pieces on their own: protocol validation, the agent's bounded buffer, tokens, TLS
certificates, the server's merge (dedup, no regressions), and the Relay panel."""
from __future__ import annotations

import ssl
import socket
import threading

import pytest
from rich.console import Console

from relay.agent.buffer import OutboundBuffer
from relay.errors import RelayError
from relay.server import protocol as p
from relay.server.store import MergedStore
from relay.server.tls import client_context, ensure_certificate, server_context
from relay.tokens import TokenStore, agent_token


def _flow(key: str, packets: int) -> p.FlowRecord:
    return p.FlowRecord(flow_key=key, protocol="UDP", src_ip="10.0.0.1", src_port=1000,
                        dst_ip="10.0.0.2", dst_port=53, packets_sent=packets, bytes_sent=packets * 100)


@pytest.mark.parametrize("frame, field", [
    ('{"t":"flows","seq":0,"flows":[]}', "$.seq"),
    ('{"t":"flows","seq":1,"flows":[{"flow_key":"k","protocol":"UDP","src_ip":"a","dst_ip":"b",'
     '"packets_sent":-1}]}', "packets_sent"),
    ('{"t":"hello","agent":"bad name!","session":"s","mac":"m"}', "$.agent"),
    ('{"t":"nope","seq":1}', "nope"),
    ('{"t":"metrics"', "truncated"),
    ("not json at all", "malformed"),
])
def test_protocol_rejects_malformed_messages(frame, field):
    with pytest.raises(p.ProtocolError) as err:
        p.decode_agent(frame)
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_protocol_round_trips_msgpack_and_json():
    m = p.FlowBatch(seq=7, flows=[_flow("UDP|a|1|b|2", 3)], resync=True)
    assert p.decode_agent(p.encode(m)) == m
    assert p.decode_agent(p.encode_json(m)) == m
    too_many = p.FlowBatch(seq=1, flows=[_flow(f"k{i}", 1) for i in range(p.MAX_BATCH_ROWS + 1)])
    with pytest.raises(p.ProtocolError):
        p.decode_agent(p.encode(too_many))


def test_hmac_proves_the_token_without_sending_it():
    tok = "x" * 32
    mac = p.hello_mac(tok, "nonce1", "agent-a", "s1")
    assert tok not in mac
    hello = p.Hello(agent="agent-a", session="s1", mac=mac)
    assert p.check_mac(tok, "nonce1", hello)
    assert not p.check_mac(tok, "nonce2", hello)          # replayed against another challenge
    assert not p.check_mac("y" * 32, "nonce1", hello)


def test_buffer_bounds_by_count_and_bytes_and_counts_drops():
    b = OutboundBuffer(max_messages=5, max_bytes=10_000)
    for i in range(8):
        b.add(lambda seq: p.FlowBatch(seq=seq, flows=[_flow("k", seq)]), rows=1)
    assert len(b) == 5 and b.dropped == 3 and b.dropped_rows == 3
    assert [e.seq for e in b.entries] == [4, 5, 6, 7, 8]
    b.ack(6)
    assert [e.seq for e in b.after(0)] == [7, 8]
    assert b.bytes == sum(len(e.data) for e in b.entries)
    big = OutboundBuffer(max_messages=1000, max_bytes=3000)
    for _ in range(10):
        big.add(lambda seq: p.FlowBatch(seq=seq, flows=[_flow(f"k{i}", 1) for i in range(10)]), rows=10)
    assert big.bytes <= 3000 and big.dropped > 0 and big.dropped_rows == 10 * big.dropped


def test_tokens_from_files_and_env(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# per agent and shared\nedge-1 " + "a" * 20 + "\n" + "s" * 24 + "\n")
    store = TokenStore.load([str(f)])
    assert store.for_agent("edge-1") == ["a" * 20, "s" * 24]
    assert store.for_agent("other") == ["s" * 24]
    assert agent_token("edge-1", str(f)) == "a" * 20
    assert agent_token("other", str(f)) == "s" * 24
    assert agent_token("x", None, {"PACKETTRACER_RELAY_TOKEN": "e" * 16}) == "e" * 16
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(RelayError, match="shorter"):
        TokenStore.load([str(short)])
    with pytest.raises(RelayError, match="no relay token"):
        TokenStore.load([], {})
    with pytest.raises(RelayError, match="cannot read"):
        TokenStore.load([str(tmp_path / "missing")])


def test_generated_certificate_is_verified_by_address(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert ensure_certificate(cert, key, ["127.0.0.1", "localhost"])
    assert not ensure_certificate(cert, key)                 # kept on the next run
    assert key.stat().st_mode & 0o077 == 0
    srv_ctx = server_context(cert, key)
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        with srv_ctx.wrap_socket(conn, server_side=True) as s:
            got.append(s.recv(5))

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_context(cert).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"hello")
    t.join(5)
    lsock.close()
    assert got == [b"hello"]
    lonely = tmp_path / "lonely-cert.pem"
    lonely.write_bytes(cert.read_bytes())
    with pytest.raises(RelayError, match="missing"):
        ensure_certificate(lonely, tmp_path / "absent-key.pem")
    ctx = client_context(cert)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_store_dedups_resends_and_never_moves_backwards():
    s = MergedStore()
    hello = p.Hello(agent="a1", session="s1", mac="m")
    assert s.connect(hello, "10.0.0.1:1") == 0
    assert s.apply("a1", p.FlowBatch(seq=1, flows=[_flow("k", 5)]), 100)
    assert s.apply("a1", p.FlowBatch(seq=2, flows=[_flow("k", 9)]), 100)
    assert not s.apply("a1", p.FlowBatch(seq=2, flows=[_flow("k", 9)]), 100)   # resend
    # a resync with an older snapshot of the same flow (lower packet count) does not regress it
    assert s.apply("a1", p.FlowBatch(seq=3, flows=[_flow("k", 7)], resync=True), 100)
    rows = s.flow_rows()
    assert [(r["agent"], r["packets_sent"]) for r in rows] == [("a1", 9)]
    assert s.agents["a1"].duplicates == 1
    # the same flow key on another agent is another flow
    s.connect(p.Hello(agent="a2", session="t", mac="m"), "10.0.0.2:1")
    s.apply("a2", p.FlowBatch(seq=1, flows=[_flow("k", 1)]), 10)
    assert sorted((r["agent"], r["packets_sent"]) for r in s.flow_rows()) == [("a1", 9), ("a2", 1)]
    assert s.connect(hello, "10.0.0.1:2") == 3                  # resume point after a reconnect
    flows = s.flow_objects()
    assert {f.agent for f in flows} == {"a1", "a2"} and all(f.flow_key == "k" for f in flows)


def test_relay_panel_lists_agents_and_sanitizes_names():
    from dashboard.panels import relay as panel
    from dashboard.state import DashboardState
    from dashboard.view_state import ViewState
    import dataclasses

    snap = {"listening": "wss://0.0.0.0:8765", "connected": 1, "flows": 12,
            "rejected": {"auth": 2},
            "agents": [{"agent": "edge-1", "state": "connected", "address": "10.0.0.5:40000",
                        "version": "0.4.0\x1b[31m", "heartbeat_age": 2.0, "pps": 1200.0,
                        "bps": 150000.0, "packets": 5000, "drops": 3, "buffered": 0,
                        "buffer_dropped": 0, "cpu_percent": 12.0, "bytes_in": 4096}]}
    fields = {f.name: None for f in dataclasses.fields(DashboardState)}
    fields.update(view="relay", data={"relay": snap}, selected_count=0, errors=(), trends=())
    state = DashboardState(**{k: v for k, v in fields.items()})
    console = Console(record=True, width=160, color_system=None)
    console.print(panel.render(state, ViewState(view="relay")))
    text = console.export_text()
    assert "edge-1" in text and "connected" in text and "10.0.0.5:40000" in text
    assert "auth 2" in text and "2 s ago" in text and "\x1b" not in text
    empty = dataclasses.replace(state, data={"relay": None})
    console = Console(record=True, width=100, color_system=None)
    console.print(panel.render(empty, ViewState(view="relay")))
    assert "no relay is connected" in console.export_text()


def test_deploy_start_command_returns_while_the_agent_runs(tmp_path):
    """The remote start command must not hold the SSH channel: run under sh with piped output
    (as sshd runs it), it returns at once, and agent.pid is the agent process itself."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    from relay.deploy.deployer import detached_command

    t0 = time.monotonic()
    done = subprocess.run(["sh", "-c", detached_command(str(tmp_path), "sleep 30")],
                          capture_output=True, text=True, timeout=25)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    try:
        assert took < 10, f"start command held the channel for {took:.1f} s"
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"30"]
        assert (tmp_path / "agent.pid").read_text().strip() == str(pid)
        assert os.getsid(pid) == pid  # its own session: the login session's signals miss it
    finally:
        os.kill(pid, signal.SIGTERM)


def _replay_through_collector(watch_packets: int) -> tuple[list[bytes], list, "MergedStore"]:
    """A real capture fed to a real flow tracker in steps; each step's collection is encoded
    as the agent would and applied by a server store."""
    from types import SimpleNamespace

    from capture.reader import iter_parsed
    from relay.agent.collect import StateCollector
    from relay.server.store import MergedStore
    from tests.conftest import CAPTURES, require
    from tracking.flow import FlowTracker

    cap = CAPTURES / "http-espn-browse.pcapng"
    require(cap.exists(), f"needs {cap}")
    flows = FlowTracker()
    rt = SimpleNamespace(flows=flows, components=SimpleNamespace(
        ports=None, dns=None, security=None, flow_enrichers=[]))
    col = StateCollector(rt, watch_packets=watch_packets)
    store = MergedStore()
    store.connect(p.Hello(agent="a", session="s1", mac="m"), "test")
    frames: list[bytes] = []
    seq = 0

    def ship() -> None:
        nonlocal seq
        ch = col.collect()
        seq += 1
        frames.append(p.encode(p.FlowBatch(seq=seq, flows=ch.flows, updates=ch.updates)))
        assert store.apply("a", p.decode_agent(frames[-1]), len(frames[-1]))

    for n, pkt in enumerate(iter_parsed(cap), 1):
        flows.process(pkt)
        if n % 40 == 0:
            ship()
    flows.finish()
    ship()
    return frames, flows.all_flows(), store


def test_flow_updates_are_compact_and_merge_to_the_exact_flows():
    frames, every, store = _replay_through_collector(watch_packets=4)
    decoded = [p.decode_agent(f) for f in frames]
    fulls = sum(len(m.flows) for m in decoded)
    updates = sum(len(m.updates) for m in decoded)
    # each flow: a record when first seen (and when its facts change), one when it retires
    assert updates > len(every) and fulls < 3 * len(every)
    # what the server holds is exactly each flow's final state
    assert {(a, k) for (a, k) in store.flows} == {("a", f.flow_key) for f in every}
    rows = {r["flow_key"]: r for r in store.flow_rows()}
    for f in every:
        # null facts travel as absent fields (a column null in every row is left out)
        mine = {k: v for k, v in f.as_dict().items() if v is not None}
        assert {k: v for k, v in rows[f.flow_key].items() if k in mine} == mine
        assert all(rows[f.flow_key].get(k) is None for k in f.as_dict() if k not in mine)
    assert store.unknown_flow_updates == 0 and store.stale_flow_updates == 0
    # an update is a fraction of the record it stands for on the wire
    upd = next(m.updates[0] for m in decoded if m.updates)
    rec = next(r for m in decoded for r in m.flows if r.id == upd.id)
    assert len(p.encode(upd)) * 5 < len(p.encode(rec)), (p.encode(upd), p.encode(rec))


def test_store_applies_updates_by_id_within_the_agent_session():
    s = MergedStore()
    s.connect(p.Hello(agent="a1", session="s1", mac="m"), "x")
    rec = p.FlowRecord(flow_key="UDP|k", id=7, protocol="UDP", src_ip="10.0.0.1", src_port=1,
                       dst_ip="10.0.0.2", dst_port=53, packets_sent=1, bytes_sent=100,
                       more={"sni": "example.org"})
    s.apply("a1", p.FlowBatch(seq=1, flows=[rec]), 10)
    s.apply("a1", p.FlowBatch(seq=2, updates=[p.FlowUpdate(7, 5, 2, 500, 200, 9.5, "ACTIVE")]), 10)
    row = s.flow_rows()[0]
    assert (row["packets_sent"], row["packets_recv"], row["bytes_recv"], row["last_seen"]) == (5, 2, 200, 9.5)
    assert row["sni"] == "example.org" and row["flow_key"] == "UDP|k"   # facts kept from the record
    s.apply("a1", p.FlowBatch(seq=3, updates=[p.FlowUpdate(7, 4, 2, 400, 200, 9.0)]), 10)
    assert s.flow_rows()[0]["packets_sent"] == 5 and s.stale_flow_updates == 1  # never backwards
    s.apply("a1", p.FlowBatch(seq=4, updates=[p.FlowUpdate(8, 1, 1, 1, 1, 1.0)]), 10)
    assert s.unknown_flow_updates == 1
    # a new agent run numbers its flows afresh: the old ids mean nothing
    s.connect(p.Hello(agent="a1", session="s2", mac="m"), "x")
    s.apply("a1", p.FlowBatch(seq=1, updates=[p.FlowUpdate(7, 50, 2, 5000, 200, 19.0)]), 10)
    assert s.flow_rows()[0]["packets_sent"] == 5 and s.unknown_flow_updates == 2
