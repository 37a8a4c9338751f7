"""The agent's outbound buffer: encoded messages waiting for the server's ack.

Bounded by message count and bytes. Past either bound the oldest messages are dropped and
counted (messages and the rows they held), and the agent is told to resync: a later full
snapshot repairs what the drops lost, as far as the agent still holds it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from msgspec import Struct

from config import RELAY_BUFFER_MAX_BYTES, RELAY_BUFFER_MAX_MESSAGES
from relay.server.protocol import encode


@dataclass(slots=True)
class Pending:
    seq: int
    data: bytes
    rows: int


class OutboundBuffer:
    def __init__(self, max_messages: int = RELAY_BUFFER_MAX_MESSAGES,
                 max_bytes: int = RELAY_BUFFER_MAX_BYTES) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.entries: deque[Pending] = deque()
        self.bytes = 0
        self.next_seq = 1
        self.dropped = 0
        self.dropped_rows = 0
        self.dropped_bytes = 0

    def add(self, make: Callable[[int], Struct], rows: int = 0) -> Pending:
        """Number, encode and queue a message; returns its entry (the newest is never dropped)."""
        return self.add_encoded(encode(make(self.next_seq)), rows)

    def add_encoded(self, data: bytes, rows: int = 0) -> Pending:
        """Queue a message already encoded with seq ``next_seq`` (callers that check its size
        before queueing it encode once)."""
        seq = self.next_seq
        self.next_seq += 1
        entry = Pending(seq, data, rows)
        self.entries.append(entry)
        self.bytes += len(entry.data)
        while len(self.entries) > 1 and (len(self.entries) > self.max_messages
                                         or self.bytes > self.max_bytes):
            old = self.entries.popleft()
            self.bytes -= len(old.data)
            self.dropped += 1
            self.dropped_rows += old.rows
            self.dropped_bytes += len(old.data)
        return entry

    def ack(self, seq: int) -> None:
        """The server applied everything up to ``seq``: forget it."""
        entries = self.entries
        while entries and entries[0].seq <= seq:
            self.bytes -= len(entries.popleft().data)

    def after(self, seq: int) -> list[Pending]:
        """Entries not yet sent on this connection (seq above ``seq``), oldest first."""
        return [e for e in self.entries if e.seq > seq]

    def clear(self) -> None:
        """Forget everything (a full resync supersedes it; not counted as dropped)."""
        self.entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def newest_seq(self) -> int:
        return self.next_seq - 1
