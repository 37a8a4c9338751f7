"""The relay server: agents connect over WebSocket (TLS unless on loopback), prove their token,
and stream their state, which is merged into one store tagged by agent id.

Bad peers cost little and never crash it:
* a connection is admitted only while its address has fewer than ``max_pending_per_ip`` (and
  the server fewer than ``max_pending``) connections that have not authenticated yet; the rest
  are aborted as they are accepted, so a flood of idle sockets holds bounded memory;
* a peer has ``auth_timeout`` seconds to finish the HTTP upgrade and send its Hello;
* before authentication a frame may be at most 16 KiB, after it ``max_message_bytes``; the
  WebSocket layer checks the length in the frame header and closes (1009) without reading the
  payload;
* a wrong token, a malformed or unknown message closes the connection with a log line;
* an agent that does not read its acks within ``send_timeout`` is dropped (it resends later);
* too many failed logins from one address lock it out for a while.

It runs its own asyncio loop in a thread, so the CLI and the dashboard embed it the same way.
"""
from __future__ import annotations

import asyncio
import secrets
import ssl
import threading
import time
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from config import RELAY_MAX_MESSAGE_BYTES, RELAY_SERVER_PORT, VERSION
from relay.errors import RelayError
from relay.server import protocol as p
from relay.server.store import CLOSED, LOST, MergedStore
from relay.tokens import TokenStore
from utils.logger import get_logger

log = get_logger(__name__)

#: WebSocket close codes (4000-4999 are for applications)
CLOSE_AUTH = 4001
CLOSE_PROTOCOL = 4002
CLOSE_TIMEOUT = 4008
CLOSE_REPLACED = 4009


class _Admission:
    """Counts connections that have not authenticated yet, per address and in total."""

    def __init__(self, per_ip: int, total: int, max_connections: int, fail_limit: int,
                 lockout: float, clock: Callable[[], float]) -> None:
        self.per_ip, self.total, self.max_connections = per_ip, total, max_connections
        self.fail_limit, self.lockout, self.clock = fail_limit, lockout, clock
        self.pending: dict[str, int] = {}
        self.pending_total = 0
        self.open = 0
        self.failures: dict[str, tuple[int, float]] = {}

    def admit(self, ip: str) -> str:
        """"" if admitted, else the reason for refusing."""
        if self.open >= self.max_connections:
            return "too many connections"
        if self.pending_total >= self.total:
            return "too many unauthenticated connections"
        if self.pending.get(ip, 0) >= self.per_ip:
            return f"too many unauthenticated connections from {ip}"
        fails = self.failures.get(ip)
        if fails is not None and fails[0] >= self.fail_limit:
            if self.clock() - fails[1] < self.lockout:
                return f"{ip} locked out after {fails[0]} failed logins"
            del self.failures[ip]
        self.pending[ip] = self.pending.get(ip, 0) + 1
        self.pending_total += 1
        self.open += 1
        return ""

    def authenticated(self, ip: str) -> None:
        self._unpend(ip)
        self.failures.pop(ip, None)

    def _unpend(self, ip: str) -> None:
        n = self.pending.get(ip, 0)
        if n <= 1:
            self.pending.pop(ip, None)
        else:
            self.pending[ip] = n - 1
        self.pending_total -= 1

    def closed(self, ip: str, was_pending: bool) -> None:
        if was_pending:
            self._unpend(ip)
        self.open -= 1

    def failed(self, ip: str) -> None:
        n, _ = self.failures.get(ip, (0, 0.0))
        self.failures[ip] = (n + 1, self.clock())
        if len(self.failures) > 10000:  # bounded: forget the oldest half
            for k, _ in sorted(self.failures.items(), key=lambda kv: kv[1][1])[:5000]:
                del self.failures[k]


class RelayServer:
    """Accepts agents and merges their data into ``store``.

    Args:
        tokens: which token each agent id may present.
        host, port: where to listen (port 0: any free port; see ``port`` after ``start``).
        ssl_context: TLS server context, or None for plain ws (the CLI allows that only on
            loopback unless forced).
        max_message_bytes: largest message after authentication.
        auth_timeout: seconds to finish the upgrade and send a valid Hello.
        send_timeout: seconds an agent may take to read what we send before it is dropped.
        max_pending_per_ip, max_pending, max_connections: admission limits (see module doc).
        auth_fail_limit, auth_lockout: failed logins from one address before it is refused for
            ``auth_lockout`` seconds.
        pool, session_id: a db ConnectionPool and session: agents are persisted in relay_agents.
        persist_interval: seconds between database updates of the agents' rows.
    """

    def __init__(self, tokens: TokenStore, host: str = "127.0.0.1", port: int = RELAY_SERVER_PORT,
                 ssl_context: ssl.SSLContext | None = None, *,
                 max_message_bytes: int = RELAY_MAX_MESSAGE_BYTES, auth_timeout: float = 5.0,
                 send_timeout: float = 10.0, max_pending_per_ip: int = 32, max_pending: int = 256,
                 max_connections: int = 1024, auth_fail_limit: int = 20,
                 auth_lockout: float = 60.0, store: MergedStore | None = None,
                 pool: Any = None, session_id: int | None = None, persist_interval: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_message_bytes = max_message_bytes
        self.auth_timeout = auth_timeout
        self.send_timeout = send_timeout
        self.store = store or MergedStore(clock)
        self.instance = secrets.token_hex(8)
        self.clock = clock
        self.admission = _Admission(max_pending_per_ip, max_pending, max_connections,
                                    auth_fail_limit, auth_lockout, clock)
        self.rejected: dict[str, int] = {}
        self.started_at = 0.0
        self._pool = pool
        self._session_id = session_id
        self._persist_interval = persist_interval
        self._live: dict[str, ServerConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "wss" if self.ssl_context is not None else "ws"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> None:
        """Listen in a background thread; returns once bound (raises RelayError if not)."""
        self._thread = threading.Thread(target=self._run, name="relay-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._start_error is not None:
            raise RelayError(f"relay server cannot listen on {self.host}:{self.port}: "
                             f"{getattr(self._start_error, 'strerror', None) or self._start_error}")

    def close(self, timeout: float = 5.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._persist()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        relay = self

        class Guarded(ServerConnection):
            """Refuses connections over the admission limits as soon as they are accepted."""

            pending_ip = ""
            admitted = False
            reached = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                peer = transport.get_extra_info("peername")
                ip = peer[0] if peer else "?"
                why = relay.admission.admit(ip)
                if why:
                    relay._reject("flood", why, throttle=True)
                    transport.abort()
                else:
                    self.pending_ip = ip
                    self.admitted = True

            def connection_lost(self, exc: Exception | None) -> None:
                if self.admitted and self.pending_ip and not self.reached:
                    # idle or broken before the WebSocket upgrade finished (open_timeout)
                    relay._reject("handshake", f"{self.pending_ip}: no WebSocket upgrade", throttle=True)
                if self.admitted:
                    relay.admission.closed(self.pending_ip or "?", bool(self.pending_ip))
                    self.pending_ip = ""
                super().connection_lost(exc)

        try:
            server = await serve(self._handler, self.host, self.port, ssl=self.ssl_context,
                                 create_connection=Guarded, open_timeout=self.auth_timeout,
                                 max_size=p.PRE_AUTH_MAX_BYTES, max_queue=4,
                                 write_limit=64 * 1024, compression="deflate",
                                 server_header=None, ping_interval=20, ping_timeout=20,
                                 close_timeout=2)
        except OSError as exc:
            self._start_error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self.started_at = self.clock()
        log.info("relay server listening on %s (instance %s)", self.url, self.instance)
        self._ready.set()
        persist = asyncio.create_task(self._persist_loop())
        try:
            await self._stopping.wait()
        finally:
            persist.cancel()
            server.close()
            await server.wait_closed()

    async def _persist_loop(self) -> None:
        if self._pool is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._persist_interval)
            await loop.run_in_executor(None, self._persist)

    def _persist(self) -> None:
        if self._pool is None or self._session_id is None:
            return
        from db.repositories.relay_repo import RelayRepository
        rows = [{"agent": r["agent"], "hostname": r["hostname"], "address": r["address"],
                 "version": r["version"], "connected_at": r["connected_at"],
                 "last_seen": r["last_heartbeat"], "status": r["state"],
                 "packets": r["packets"], "bytes": r["bytes"], "drops": r["drops"],
                 "buffer_dropped": r["buffer_dropped"]} for r in self.store.agent_rows()]
        if rows:
            RelayRepository(self._pool).upsert(self._session_id, rows)

    def _reject(self, kind: str, why: str, throttle: bool = False) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        # Floods are logged once per hundred, not once per socket.
        if not throttle or self.rejected[kind] % 100 == 1:
            log.warning("relay: rejected (%s): %s", kind, why)

    # ---- one connection ----------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        ws.reached = True  # type: ignore[attr-defined]
        peer = ws.remote_address
        address = f"{peer[0]}:{peer[1]}" if peer else "?"
        hello = await self._authenticate(ws, address)
        if hello is None:
            return
        agent = hello.agent
        ip = getattr(ws, "pending_ip", "")
        self.admission.authenticated(ip)
        ws.pending_ip = ""  # type: ignore[attr-defined]
        old = self._live.get(agent)
        if old is not None:
            log.warning("relay: agent %s reconnected from %s; closing its old connection", agent, address)
            await old.close(CLOSE_REPLACED, "replaced by a newer connection")
        self._live[agent] = ws
        acked = self.store.connect(hello, address)
        # Authenticated agents may send full-size batches.
        ws.protocol.max_message_size = self.max_message_bytes
        log.info("relay: agent %s connected from %s (version %s, resume after %d)",
                 agent, address, hello.version, acked)
        end = LOST
        try:
            await self._send(ws, p.Welcome(instance=self.instance, acked=acked,
                                           max_message_bytes=self.max_message_bytes))
            end = await self._serve_agent(ws, agent, address)
        except ConnectionClosedError as exc:
            # We close with 1009 ourselves; the agent's own close may have crossed ours.
            codes = {c.code for c in (exc.sent, exc.rcvd) if c is not None}
            if 1009 in codes:
                self._reject("oversized", f"agent {agent} at {address}: message over "
                             f"{self.max_message_bytes} bytes")
            else:
                log.info("relay: agent %s at %s disconnected (%s)", agent, address, exc)
        except ConnectionClosed:
            pass
        except TimeoutError:
            self._reject("slow", f"agent {agent} at {address} does not read its acks")
            ws.transport.abort()
        finally:
            if self._live.get(agent) is ws:
                del self._live[agent]
                self.store.disconnect(agent, end)
            log.info("relay: agent %s at %s %s", agent, address, end)

    async def _authenticate(self, ws: ServerConnection, address: str) -> p.Hello | None:
        nonce = secrets.token_hex(16)
        try:
            await self._send(ws, p.Challenge(nonce=nonce, instance=self.instance, server=VERSION))
            async with asyncio.timeout(self.auth_timeout):
                frame = await ws.recv()
        except TimeoutError:
            self._reject("timeout", f"{address}: no hello within {self.auth_timeout:g} s", throttle=True)
            await ws.close(CLOSE_TIMEOUT, "authentication timeout")
            return None
        except ConnectionClosedError as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                self._reject("oversized", f"{address}: frame over {p.PRE_AUTH_MAX_BYTES} bytes before authentication")
            return None
        except ConnectionClosed:
            return None
        try:
            msg = p.decode_agent(frame)
        except p.ProtocolError as exc:
            self._reject("malformed", f"{address}: {exc}")
            self.admission.failed(ws.pending_ip)  # type: ignore[attr-defined]
            await self._refuse(ws, CLOSE_PROTOCOL, "malformed", str(exc))
            return None
        if not isinstance(msg, p.Hello) or msg.v != p.PROTOCOL_VERSION:
            why = (f"protocol version {msg.v}, server speaks {p.PROTOCOL_VERSION}"
                   if isinstance(msg, p.Hello) else f"expected hello, got {type(msg).__name__}")
            self._reject("protocol", f"{address}: {why}")
            await self._refuse(ws, CLOSE_PROTOCOL, "protocol", why)
            return None
        if not any(p.check_mac(t, nonce, msg) for t in self.tokens.for_agent(msg.agent)):
            self._reject("auth", f"{address}: wrong token for agent {msg.agent}")
            self.admission.failed(ws.pending_ip)  # type: ignore[attr-defined]
            await self._refuse(ws, CLOSE_AUTH, "auth", "authentication failed")
            return None
        return msg

    async def _refuse(self, ws: ServerConnection, code: int, kind: str, message: str) -> None:
        try:
            await self._send(ws, p.Error(code=kind, message=message))
            await ws.close(code, kind)
        except (ConnectionClosed, TimeoutError):
            ws.transport.abort()

    async def _send(self, ws: ServerConnection, msg: Any) -> None:
        async with asyncio.timeout(self.send_timeout):
            await ws.send(p.encode(msg))

    async def _serve_agent(self, ws: ServerConnection, agent: str, address: str) -> str:
        store = self.store
        async for frame in ws:
            try:
                msg = p.decode_agent(frame)
            except p.ProtocolError as exc:
                self._reject("malformed", f"agent {agent} at {address}: {exc}")
                await self._refuse(ws, CLOSE_PROTOCOL, "malformed", str(exc))
                return LOST
            kind = type(msg)
            if kind is p.Heartbeat:
                store.heartbeat(agent)
                continue
            if kind is p.Hello:
                self._reject("protocol", f"agent {agent} at {address}: second hello")
                await self._refuse(ws, CLOSE_PROTOCOL, "protocol", "already authenticated")
                return LOST
            store.apply(agent, msg, len(frame))
            await self._send(ws, p.Ack(seq=msg.seq))
            if kind is p.Bye:
                log.info("relay: agent %s says bye (%s)", agent, msg.reason)
                return CLOSED
        return LOST

    # ---- readers -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data for the Relay panel."""
        agents = self.store.agent_rows()
        return {
            "listening": self.url,
            "instance": self.instance,
            "agents": agents,
            "connected": sum(1 for a in agents if a["state"] == "connected"),
            "flows": len(self.store.flows),
            "rejected": dict(self.rejected),
            "pending": self.admission.pending_total,
        }

    def document(self) -> dict[str, Any]:
        """The merged JSON export (export/document.py layout), every row tagged with ``agent``."""
        from export.document import build_document
        totals = self.store.totals()
        meta = {"version": VERSION, "source": f"relay {self.url}", "source_kind": "relay",
                "filter": None, "malformed_reasons": {}, **totals,
                "agents": self.store.agent_rows()}
        return build_document(meta, self.store.flow_rows(), dns=self.store.dns_rows(),
                              ports=self.store.port_rows(),
                              extra={"alerts": self.store.alert_rows(),
                                     "relay": {"rejected": dict(self.rejected),
                                               "instance": self.instance}})

