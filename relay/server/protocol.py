"""The relay wire protocol: versioned, validated messages between agents and the relay server.

Every message is a msgspec Struct tagged by ``t``. Agents send msgpack in binary frames; the
server also accepts the same messages as JSON in text frames (handy for debugging with a plain
WebSocket client). Decoding validates types, ranges and lengths, so nothing malformed reaches the
merge code. Size limits are enforced twice: by the WebSocket layer (``max_size``, checked on the
frame header before the payload is read) and here by list lengths. Frames are compressed by the
permessage-deflate extension that both ends negotiate.

The conversation:

    server -> Challenge(nonce, instance)
    agent  -> Hello(agent, session, mac = HMAC-SHA256(token, nonce|agent|session))
    server -> Welcome(acked)            (or Error + close)
    agent  -> FlowBatch / PortBatch / DnsBatch / AlertBatch / Metrics / Bye  (each with seq)
    server -> Ack(seq)                  (cumulative: every seq <= this one is applied)
    agent  -> Heartbeat                 (no seq, never buffered)

State messages carry absolute values (a flow's totals, a port's counters, an alert's count), so
applying one twice is harmless and the newest wins; ``seq`` lets the server drop resends and the
agent forget what was acknowledged. A server that restarted (new ``instance``) gets a full resync.

Flows travel in two shapes (version 2). A full ``FlowRecord`` -- addresses, ports, DPI and geo
facts -- goes once when the agent first reports a flow, again only when one of those facts
changed, and once more when the flow retires; it names the flow with a small ``id`` (unique in
the agent session). In between, a changed flow costs one ``FlowUpdate``: a msgpack array of the
id and its absolute counters, last_seen and TCP state (about 25 bytes instead of ~300, and a
fraction of the decode work). Counters stay absolute, not deltas, so a resend or a resync can
never count anything twice.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any, Union

import msgspec
from msgspec import Meta, Struct

PROTOCOL_VERSION = 2

#: largest frame before authentication: a Hello is a few hundred bytes
PRE_AUTH_MAX_BYTES = 16 * 1024
#: rows in one batch message (flows, ports, DNS records, alerts)
MAX_BATCH_ROWS = 20000
#: compact flow updates in one batch (each ~25 bytes)
MAX_UPDATE_ROWS = 100000

AgentId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
ShortStr = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=4096)]
Count = Annotated[int, Meta(ge=0)]
Seq = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


#: an empty msgpack map
EMPTY_MORE = msgspec.Raw(b"\x80")


class ProtocolError(ValueError):
    """A message that does not decode or validate; the text is safe to log in one line."""


# ---- handshake ------------------------------------------------------------------------------
class Challenge(Struct, tag="challenge", tag_field="t", kw_only=True):
    v: int = PROTOCOL_VERSION
    nonce: ShortStr
    instance: ShortStr
    server: ShortStr = ""


class Hello(Struct, tag="hello", tag_field="t", kw_only=True):
    v: int = PROTOCOL_VERSION
    agent: AgentId
    session: ShortStr
    mac: ShortStr
    hostname: ShortStr = ""
    version: ShortStr = ""
    source: ShortStr = ""


class Welcome(Struct, tag="welcome", tag_field="t", kw_only=True):
    instance: ShortStr
    #: highest seq of this agent session the server has applied (0: none)
    acked: Count = 0
    max_message_bytes: Count = 0


class Error(Struct, tag="error", tag_field="t", kw_only=True):
    code: ShortStr
    message: Text = ""


class Ack(Struct, tag="ack", tag_field="t", kw_only=True):
    seq: Count


class Heartbeat(Struct, tag="heartbeat", tag_field="t", kw_only=True):
    ts: float


# ---- data -----------------------------------------------------------------------------------
class FlowRecord(Struct, kw_only=True, omit_defaults=True):
    """One flow's absolute state (Flow.as_dict); fields beyond the core ones ride in ``more``."""

    flow_key: ShortStr
    #: the agent's short name for this flow in FlowUpdate rows (0: none, updates come as records)
    id: Count = 0
    protocol: ShortStr
    ip_version: int = 4
    src_ip: ShortStr
    src_port: Port | None = None
    dst_ip: ShortStr
    dst_port: Port | None = None
    packets_sent: Count = 0
    packets_recv: Count = 0
    bytes_sent: Count = 0
    bytes_recv: Count = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    state: ShortStr = ""
    classification: ShortStr | None = None
    encrypted: bool = False
    ttl_sent: int | None = None
    ttl_recv: int | None = None
    #: "" while active; why it left the agent's table otherwise ("idle", "closed", "end", ...)
    retired: ShortStr = ""
    #: the other export fields (DPI, geo, TCP analysis) as a msgpack map, nulls left out. The
    #: server keeps it undecoded -- merging never looks inside -- and readers decode it with
    #: more_fields(); most of a record's bytes and decode time were here.
    more: msgspec.Raw = EMPTY_MORE


class FlowUpdate(Struct, array_like=True):
    """A flow the server already has (by ``id``): its counters (absolute), last_seen and state.

    Encoded as a positional array; the fields that never change -- addresses, ports, facts --
    are not repeated."""

    id: Annotated[int, Meta(ge=1)]
    packets_sent: Count
    packets_recv: Count
    bytes_sent: Count
    bytes_recv: Count
    last_seen: float
    state: ShortStr = ""


class PortRecord(Struct, kw_only=True, omit_defaults=True):
    port: Port
    proto: ShortStr
    service: ShortStr | None = None
    range: ShortStr = ""
    packets: Count = 0
    bytes: Count = 0
    connections: Count = 0
    hits: Count = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


class AlertRecord(Struct, kw_only=True, omit_defaults=True):
    id: int
    ts: float
    last_ts: float = 0.0
    severity: ShortStr
    rule_id: ShortStr
    src: ShortStr | None = None
    dst: ShortStr | None = None
    message: Text = ""
    evidence: dict[str, Any] = {}
    count: Count = 1
    acknowledged: bool = False


Flows = Annotated[list[FlowRecord], Meta(max_length=MAX_BATCH_ROWS)]
FlowUpdates = Annotated[list[FlowUpdate], Meta(max_length=MAX_UPDATE_ROWS)]
Ports = Annotated[list[PortRecord], Meta(max_length=MAX_BATCH_ROWS)]
DnsRows = Annotated[list[dict[str, Any]], Meta(max_length=MAX_BATCH_ROWS)]
Alerts = Annotated[list[AlertRecord], Meta(max_length=MAX_BATCH_ROWS)]


class FlowBatch(Struct, tag="flows", tag_field="t", kw_only=True, omit_defaults=True):
    """Full records first (new flows, changed facts, retired flows), then compact updates."""

    seq: Seq
    flows: Flows = []
    updates: FlowUpdates = []
    #: part of a full resync (the server may have lost what came before)
    resync: bool = False


class PortBatch(Struct, tag="ports", tag_field="t", kw_only=True):
    seq: Seq
    rows: Ports


class DnsBatch(Struct, tag="dns", tag_field="t", kw_only=True):
    seq: Seq
    records: DnsRows


class AlertBatch(Struct, tag="alerts", tag_field="t", kw_only=True):
    seq: Seq
    alerts: Alerts


class Metrics(Struct, tag="metrics", tag_field="t", kw_only=True, omit_defaults=True):
    """The agent's counters (absolute) and rates at ``ts``."""

    seq: Seq
    ts: float
    packets: Count = 0
    bytes: Count = 0
    pps: float = 0.0
    bps: float = 0.0
    malformed: Count = 0
    #: packets the capture lost (kernel + queue)
    drops: Count = 0
    flows_active: Count = 0
    flows_total: Count = 0
    cpu_percent: float = 0.0
    rss_bytes: Count = 0
    #: relay messages waiting in the agent's buffer, and what the bound made it drop
    buffered: Count = 0
    buffered_bytes: Count = 0
    buffer_dropped: Count = 0
    buffer_dropped_flows: Count = 0
    first_timestamp: float = 0.0
    last_timestamp: float = 0.0
    source: ShortStr = ""
    capture_done: bool = False


class Bye(Struct, tag="bye", tag_field="t", kw_only=True):
    seq: Seq
    reason: ShortStr = ""


AgentMessage = Union[Hello, FlowBatch, PortBatch, DnsBatch, AlertBatch, Metrics, Bye, Heartbeat]
ServerMessage = Union[Challenge, Welcome, Ack, Error]
#: messages that carry a seq and wait in the agent's buffer until acknowledged
SEQUENCED = (FlowBatch, PortBatch, DnsBatch, AlertBatch, Metrics, Bye)

_msgpack_encoder = msgspec.msgpack.Encoder()
_agent_msgpack = msgspec.msgpack.Decoder(AgentMessage)
_agent_json = msgspec.json.Decoder(AgentMessage)
_server_msgpack = msgspec.msgpack.Decoder(ServerMessage)
_server_json = msgspec.json.Decoder(ServerMessage)


def encode(msg: Struct) -> bytes:
    """msgpack bytes for a binary frame."""
    return _msgpack_encoder.encode(msg)


def encode_json(msg: Struct) -> str:
    if type(msg) is FlowBatch:  # ``more`` is raw msgpack: spell it as JSON
        flows = [msgspec.structs.replace(r, more=msgspec.Raw(msgspec.json.encode(more_fields(r))))
                 for r in msg.flows]
        msg = msgspec.structs.replace(msg, flows=flows)
    return msgspec.json.encode(msg).decode()


def _decode(frame: bytes | str, binary: msgspec.msgpack.Decoder, text: msgspec.json.Decoder) -> Any:
    try:
        if isinstance(frame, str):
            return text.decode(frame)
        return binary.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # msgspec's text names the offending field ("Expected `int`, got `str` - at `$.seq`")
        raise ProtocolError(str(exc).splitlines()[0][:200]) from None


def decode_agent(frame: bytes | str) -> AgentMessage:
    """A message from an agent (server side)."""
    msg = _decode(frame, _agent_msgpack, _agent_json)
    if isinstance(frame, str) and type(msg) is FlowBatch:
        # a JSON frame's raw ``more`` is JSON text: store it as msgpack like the rest
        for rec in msg.flows:
            if rec.more == EMPTY_MORE:  # absent
                continue
            try:
                more = msgspec.json.decode(rec.more, type=dict[str, Any])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ProtocolError(f"more: {str(exc).splitlines()[0][:150]}") from None
            rec.more = msgspec.Raw(_msgpack_encoder.encode(more))
    return msg


def decode_server(frame: bytes | str) -> ServerMessage:
    """A message from the server (agent side)."""
    return _decode(frame, _server_msgpack, _server_json)


def hello_mac(token: str, nonce: str, agent: str, session: str) -> str:
    """The proof of the token: the token itself never crosses the link."""
    msg = f"{nonce}|{agent}|{session}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def check_mac(token: str, nonce: str, hello: Hello) -> bool:
    return hmac.compare_digest(hello_mac(token, nonce, hello.agent, hello.session), hello.mac)


_CORE = frozenset(f for f in FlowRecord.__struct_fields__ if f not in ("more", "id"))
_ROW_FIELDS = tuple(f for f in FlowRecord.__struct_fields__ if f not in ("more", "retired", "id"))
#: what a FlowUpdate carries; everything else in a FlowRecord is a "fact"
COUNTER_FIELDS = ("packets_sent", "packets_recv", "bytes_sent", "bytes_recv", "last_seen", "state")
_DERIVED = frozenset(("duration",))


def flow_record(row: dict[str, Any], retired: str = "", flow_id: int = 0) -> FlowRecord:
    """Flow.as_dict() -> FlowRecord (core fields typed, the rest kept in ``more``)."""
    core = {k: v for k, v in row.items() if k in _CORE}
    more = {k: v for k, v in row.items()
            if v is not None and k not in _CORE and k not in _DERIVED and k != "agent"}
    return FlowRecord(**core, id=flow_id, retired=retired,
                      more=msgspec.Raw(_msgpack_encoder.encode(more)) if more else EMPTY_MORE)


_more_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def more_fields(rec: FlowRecord) -> dict[str, Any]:
    """A record's extra export fields ({} if an agent sent something that is not a map)."""
    raw = rec.more
    if isinstance(raw, dict):  # built in-process, never encoded
        return raw
    try:
        return _more_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def flow_facts(rec: FlowRecord) -> FlowRecord:
    """``rec`` without what a FlowUpdate carries: equal facts mean an update is enough."""
    return msgspec.structs.replace(rec, packets_sent=0, packets_recv=0, bytes_sent=0,
                                   bytes_recv=0, last_seen=0.0, state="")


def flow_update(rec: FlowRecord) -> FlowUpdate:
    return FlowUpdate(rec.id, rec.packets_sent, rec.packets_recv, rec.bytes_sent, rec.bytes_recv,
                      rec.last_seen, rec.state)


def flow_row(rec: FlowRecord, agent: str) -> dict[str, Any]:
    """FlowRecord -> the export's flow row, tagged with its agent."""
    d = {f: getattr(rec, f) for f in _ROW_FIELDS}
    d["duration"] = round(rec.last_seen - rec.first_seen, 6)
    d.update(more_fields(rec))
    d["agent"] = agent
    return d
