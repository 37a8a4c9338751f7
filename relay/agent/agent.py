"""The relay agent: streams this host's capture state to a relay server.

The capture itself is an ordinary headless run (runtime.Runtime or anything with its
attributes: ``flows``, ``components``, ``pipeline``, ``source``); the agent only reads it. Its
own asyncio loop runs in a thread:

* every ``send_interval`` it collects what changed and queues it in the bounded buffer;
* a connection task dials the server, answers the challenge with the token's HMAC, and sends
  what the server has not acknowledged (at most ``window`` messages in flight);
* heartbeats go out every ``heartbeat_interval``; metrics every ``metrics_interval``;
* when the link drops it redials with exponential backoff and jitter; if the server is a new
  instance (it restarted and lost its state) or the buffer had to drop messages, the agent
  sends a full snapshot instead of the buffered deltas, so nothing is lost that it still holds.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import random
import secrets
import socket
import ssl
import threading
import time
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from config import (
    RELAY_BUFFER_MAX_BYTES, RELAY_BUFFER_MAX_MESSAGES, RELAY_HEARTBEAT_INTERVAL,
    RELAY_MAX_MESSAGE_BYTES, RELAY_METRICS_INTERVAL, VERSION,
)
from relay.agent.buffer import OutboundBuffer
from relay.agent.collect import Changes, StateCollector
from relay.errors import RelayError
from relay.server import protocol as p
from utils.logger import get_logger

log = get_logger(__name__)

#: rows per batch message before size splitting (full records; compact flow updates)
BATCH_ROWS = 2000
UPDATE_ROWS = 20000


class AuthRefused(RelayError):
    """The server refused our token (permanent: retrying will not help)."""


class RelayAgent:
    """Streams ``rt``'s flows, ports, DNS, alerts and metrics to ``url``.

    Args:
        rt: the running capture (see module doc).
        url: ws://HOST:PORT or wss://HOST:PORT of the relay server.
        token: this agent's token (from a file or the environment, never the command line).
        agent_id: the name the server files this host's data under.
        ssl_context: for wss (a context trusting the server's certificate).
        send_interval: seconds between collections.
        heartbeat_interval, metrics_interval: seconds.
        buffer_max_messages, buffer_max_bytes: the bound of the outbound buffer.
        window: messages in flight before waiting for acks.
        backoff_initial, backoff_max: reconnect delays (doubled each failure, with jitter).
    """

    def __init__(self, rt: Any, url: str, token: str, agent_id: str, *,
                 ssl_context: ssl.SSLContext | None = None, send_interval: float = 0.5,
                 heartbeat_interval: float = RELAY_HEARTBEAT_INTERVAL,
                 metrics_interval: float = RELAY_METRICS_INTERVAL,
                 buffer_max_messages: int = RELAY_BUFFER_MAX_MESSAGES,
                 buffer_max_bytes: int = RELAY_BUFFER_MAX_BYTES,
                 max_message_bytes: int = RELAY_MAX_MESSAGE_BYTES, window: int = 64,
                 backoff_initial: float = 0.25, backoff_max: float = 5.0,
                 rng: random.Random | None = None) -> None:
        self.rt = rt
        self.url = url
        self.token = token
        self.agent_id = agent_id
        self.ssl_context = ssl_context
        self.send_interval = send_interval
        self.heartbeat_interval = heartbeat_interval
        self.metrics_interval = metrics_interval
        self.max_message_bytes = max_message_bytes
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.session = secrets.token_hex(8)
        self.buffer = OutboundBuffer(buffer_max_messages, buffer_max_bytes)
        self.collector = StateCollector(rt)
        self.connected = False
        self.connections = 0
        self.reconnects = 0
        self.resyncs = 0
        self.messages_sent = 0
        self.bytes_sent = 0
        self.acked = 0
        self.error: str = ""
        self.server_instance: str | None = None
        self._need_resync = False
        self._dropped_seen = 0
        self._sent_upto = 0
        self._bye_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake: asyncio.Event | None = None
        self._acked_event: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._done = threading.Event()

    # ---- thread control ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="relay-agent", daemon=True)
        self._thread.start()

    def finish(self, timeout: float = 10.0) -> bool:
        """Call after the capture ended and flows retired: send the rest and a Bye, wait for
        the acks up to ``timeout``; True if the server acknowledged everything."""
        loop = self._loop
        if loop is None or self._thread is None or self._done.is_set():
            return False
        try:
            fut = asyncio.run_coroutine_threadsafe(self._final(timeout), loop)
        except RuntimeError:  # the loop just ended (a fatal relay error)
            self.stop()
            return False
        try:
            ok = fut.result(timeout + 5)
        except (TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError,
                concurrent.futures.TimeoutError, RelayError):
            # concurrent.futures' CancelledError is not asyncio's: the loop ending on a fatal
            # relay error (refused token) cancels the final send from under us.
            ok = False
        self.stop()
        return ok

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def stats(self) -> dict[str, Any]:
        b = self.buffer
        return {"agent": self.agent_id, "connected": self.connected, "connections": self.connections,
                "reconnects": self.reconnects, "resyncs": self.resyncs,
                "messages_sent": self.messages_sent, "bytes_sent": self.bytes_sent,
                "acked": self.acked, "buffered": len(b), "buffered_bytes": b.bytes,
                "buffer_dropped": b.dropped, "buffer_dropped_flows": b.dropped_rows,
                "error": self.error}

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                # A finish() that raced a fatal error left a task: cancel it, so its caller
                # gets CancelledError instead of a task destroyed with the loop.
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()
                self._done.set()

    # ---- the loop --------------------------------------------------------------------------------
    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._acked_event = asyncio.Event()
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._connect_loop())]
        stop_task = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stop_task], return_when=asyncio.FIRST_COMPLETED)
        for t in (*tasks, stop_task):
            t.cancel()
        await asyncio.gather(*tasks, stop_task, return_exceptions=True)
        for t in done:
            if t is not stop_task and not t.cancelled() and t.exception() is not None:
                self.error = str(t.exception())

    async def _produce(self) -> None:
        last_metrics = 0.0
        while True:
            self._queue_changes(self.collector.collect())
            now = time.monotonic()
            if now - last_metrics >= self.metrics_interval:
                last_metrics = now
                self._queue_metrics()
            await asyncio.sleep(self.send_interval)

    def _queue_changes(self, ch: Changes, resync: bool = False) -> None:
        # One collection is one FlowBatch when it fits: full records, then compact updates.
        for i in range(0, max(len(ch.flows), 1), BATCH_ROWS):
            last = i + BATCH_ROWS >= len(ch.flows)
            self._queue_flows(ch.flows[i:i + BATCH_ROWS], ch.updates if last else [], resync)
        self._queue_rows(ch.ports, lambda rows: lambda seq: p.PortBatch(seq=seq, rows=rows))
        self._queue_rows(ch.dns, lambda rows: lambda seq: p.DnsBatch(seq=seq, records=rows))
        self._queue_rows(ch.alerts, lambda rows: lambda seq: p.AlertBatch(seq=seq, alerts=rows))
        self._note_drops()
        if self._wake is not None:
            self._wake.set()

    def _queue_flows(self, flows: list[p.FlowRecord], updates: list[p.FlowUpdate],
                     resync: bool) -> None:
        if not flows and not updates:
            return
        if len(updates) > UPDATE_ROWS:
            self._queue_flows(flows, updates[:UPDATE_ROWS], resync)
            self._queue_flows([], updates[UPDATE_ROWS:], resync)
            return
        data = p.encode(p.FlowBatch(seq=self.buffer.next_seq, flows=flows, updates=updates,
                                    resync=resync))
        rows = len(flows) + len(updates)
        if rows > 1 and len(data) > self.max_message_bytes * 0.9:
            # over the server's limit: halve the longer list
            if len(flows) >= len(updates):
                half = len(flows) // 2
                self._queue_flows(flows[:half], [], resync)
                self._queue_flows(flows[half:], updates, resync)
            else:
                half = len(updates) // 2
                self._queue_flows(flows, updates[:half], resync)
                self._queue_flows([], updates[half:], resync)
            return
        self.buffer.add_encoded(data, rows)

    def _queue_rows(self, rows: list[Any], make: Callable[[list[Any]], Callable[[int], Any]]) -> None:
        for i in range(0, len(rows), BATCH_ROWS):
            self._queue_chunk(rows[i:i + BATCH_ROWS], make)

    def _queue_chunk(self, chunk: list[Any], make: Callable[[list[Any]], Callable[[int], Any]]) -> None:
        # A batch whose encoding would exceed the server's limit is split in halves.
        data = p.encode(make(chunk)(self.buffer.next_seq))
        if len(chunk) > 1 and len(data) > self.max_message_bytes * 0.9:
            half = len(chunk) // 2
            self._queue_chunk(chunk[:half], make)
            self._queue_chunk(chunk[half:], make)
            return
        self.buffer.add_encoded(data, len(chunk))

    def _queue_metrics(self) -> None:
        b = self.buffer
        self.buffer.add(lambda seq: self.collector.metrics(seq, len(b), b.bytes, b.dropped,
                                                           b.dropped_rows))
        self._note_drops()
        if self._wake is not None:
            self._wake.set()

    def _note_drops(self) -> None:
        if self.buffer.dropped != self._dropped_seen:
            log.warning("relay agent: buffer full, dropped %d message(s) (%d rows) so far; "
                        "a full resync follows", self.buffer.dropped, self.buffer.dropped_rows)
            self._dropped_seen = self.buffer.dropped
            self._need_resync = True

    def _resync(self) -> None:
        """Replace the buffer by a full snapshot of what this host holds."""
        self.resyncs += 1
        self.buffer.clear()
        self.collector.reset()
        self._queue_changes(self.collector.collect(full=True), resync=True)
        self._queue_metrics()
        if self._bye_seq:
            self._bye_seq = self.buffer.add(lambda seq: p.Bye(seq=seq, reason="capture ended")).seq
        self._need_resync = False

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except AuthRefused:
                raise
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, p.ProtocolError,
                    RelayError) as exc:
                if self.connected or attempt == 0:
                    log.warning("relay agent: link to %s lost: %s", self.url, exc)
                self.error = str(exc) or type(exc).__name__
            finally:
                self.connected = False
            delay = min(self.backoff_max, self.backoff_initial * (2 ** min(attempt, 16)))
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))

    async def _session(self) -> None:
        try:
            ws_cm = connect(self.url, ssl=self.ssl_context, open_timeout=10,
                            max_size=self.max_message_bytes, compression="deflate",
                            ping_interval=20, ping_timeout=20, close_timeout=2,
                            user_agent_header=f"PacketTracer-agent/{VERSION}")
        except InvalidURI as exc:
            raise AuthRefused(f"bad relay URL {self.url}: {exc}") from None
        except ssl.SSLError as exc:
            raise OSError(f"TLS: {exc}") from None
        async with ws_cm as ws:
            welcome = await self._handshake(ws)
            self.connections += 1
            self.connected = True
            self.error = ""
            if self.server_instance is not None and welcome.instance != self.server_instance:
                log.info("relay agent: server %s restarted; sending a full resync", self.url)
                self._need_resync = True
            self.server_instance = welcome.instance
            if welcome.max_message_bytes:
                self.max_message_bytes = min(self.max_message_bytes, welcome.max_message_bytes)
            if self._need_resync:
                self._resync()
            else:
                self.buffer.ack(welcome.acked)
            self.acked = welcome.acked
            self._sent_upto = welcome.acked
            log.info("relay agent: connected to %s as %s", self.url, self.agent_id)
            tasks = [asyncio.create_task(self._sender(ws)), asyncio.create_task(self._receiver(ws)),
                     asyncio.create_task(self._heartbeats(ws))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _handshake(self, ws: ClientConnection) -> p.Welcome:
        async with asyncio.timeout(10):
            ch = p.decode_server(await ws.recv())
            if not isinstance(ch, p.Challenge):
                raise p.ProtocolError(f"expected challenge, got {type(ch).__name__}")
            if ch.v != p.PROTOCOL_VERSION:
                raise AuthRefused(f"relay server speaks protocol {ch.v}, this agent {p.PROTOCOL_VERSION}")
            mac = p.hello_mac(self.token, ch.nonce, self.agent_id, self.session)
            await ws.send(p.encode(p.Hello(agent=self.agent_id, session=self.session, mac=mac,
                                           hostname=socket.gethostname()[:256], version=VERSION,
                                           source=self._source())))
            try:
                reply = p.decode_server(await ws.recv())
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 4001:
                    raise AuthRefused("relay server refused the token") from None
                raise
        if isinstance(reply, p.Error):
            if reply.code == "auth":
                raise AuthRefused("relay server refused the token")
            raise RelayError(f"relay server refused: {reply.code}: {reply.message}")
        if not isinstance(reply, p.Welcome):
            raise p.ProtocolError(f"expected welcome, got {type(reply).__name__}")
        return reply

    def _source(self) -> str:
        src = getattr(self.rt, "source", None)
        return str(getattr(src, "description", "") or "")[:256]

    async def _sender(self, ws: ClientConnection) -> None:
        assert self._wake is not None and self._acked_event is not None
        while True:
            pending = self.buffer.after(self._sent_upto)
            for entry in pending:
                while entry.seq - self.acked > self.window:
                    self._acked_event.clear()
                    await self._acked_event.wait()
                if entry.seq <= self._sent_upto:
                    continue
                await ws.send(entry.data)
                self._sent_upto = entry.seq
                self.messages_sent += 1
                self.bytes_sent += len(entry.data)
            self._wake.clear()
            if not self.buffer.after(self._sent_upto):
                await self._wake.wait()

    async def _receiver(self, ws: ClientConnection) -> None:
        assert self._acked_event is not None
        async for frame in ws:
            msg = p.decode_server(frame)
            if isinstance(msg, p.Ack):
                if msg.seq > self.acked:
                    self.acked = msg.seq
                    self.buffer.ack(msg.seq)
                self._acked_event.set()
            elif isinstance(msg, p.Error):
                raise RelayError(f"relay server closed the link: {msg.code}: {msg.message}")

    async def _heartbeats(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(p.encode(p.Heartbeat(ts=time.time())))
            await asyncio.sleep(self.heartbeat_interval)

    async def _final(self, timeout: float) -> bool:
        """Last collection (retired flows), last metrics, Bye; wait for the acks."""
        assert self._acked_event is not None
        self._queue_changes(self.collector.collect())
        self._queue_metrics()
        entry = self.buffer.add(lambda seq: p.Bye(seq=seq, reason="capture ended"))
        self._bye_seq = entry.seq
        if self._wake is not None:
            self._wake.set()
        deadline = time.monotonic() + timeout
        while self.acked < self._bye_seq:
            left = deadline - time.monotonic()
            if left <= 0 or self._done.is_set():
                return False
            self._acked_event.clear()
            try:
                async with asyncio.timeout(min(left, 0.5)):
                    await self._acked_event.wait()
            except TimeoutError:
                pass
        return True
