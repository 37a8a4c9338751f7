"""Database errors, each carrying a one-line message meant for the user.

:func:`from_sqlite` turns a ``sqlite3.Error`` into the matching typed error so callers above
the db layer never have to read SQLite result codes.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

# SQLite primary result codes (https://sqlite.org/rescode.html); extended codes keep these in
# their low byte.
SQLITE_READONLY = 8
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26


class DatabaseError(Exception):
    """Base of every database failure the CLI reports as one line."""


class DatabaseCorruptError(DatabaseError):
    """The file at the database path is not a SQLite database or is damaged. Never overwritten."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"{path} is not a usable PacketTracer database{why}; it was left untouched. "
            f"Move it away, or choose another file with --db PATH, or run with --no-db")
        self.path = str(path)


class DatabaseLockedError(DatabaseError):
    """Another process holds the database lock for longer than the busy timeout."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            f"database {path} is locked by another process; wait for it to finish, "
            f"or use --db PATH for a separate file, or --no-db")
        self.path = str(path)


class DatabaseReadOnlyError(DatabaseError):
    """The database file or its folder cannot be written."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"cannot write the database at {path}: the location is read-only{why}; "
            f"choose a writable file with --db PATH, or run with --no-db")
        self.path = str(path)


class DiskFullError(DatabaseError):
    """The disk holding the database is full; what was committed before is intact."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"disk full while writing the database {path}; "
                         f"data committed before is intact, new data is kept in memory only")
        self.path = str(path)


class DatabaseVersionError(DatabaseError):
    """The file was written by a newer PacketTracer whose schema this one does not know."""

    def __init__(self, path: str | Path, found: int, supported: int) -> None:
        super().__init__(f"database {path} has schema version {found}, newer than this "
                         f"PacketTracer supports ({supported}); upgrade, or use --db PATH")
        self.path = str(path)


def result_code(exc: sqlite3.Error) -> int:
    """The primary SQLite result code of ``exc`` (0 when the driver gave none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else 0


def from_sqlite(exc: sqlite3.Error, path: str | Path) -> DatabaseError:
    """The typed error for a SQLite failure on the database at ``path``."""
    code = result_code(exc)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return DatabaseCorruptError(path, str(exc))
    if code == SQLITE_FULL:
        return DiskFullError(path)
    if code == SQLITE_READONLY:
        return DatabaseReadOnlyError(path, str(exc))
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return DatabaseLockedError(path)
    if code == SQLITE_CANTOPEN:
        return DatabaseReadOnlyError(path, "cannot open the file")
    return DatabaseError(f"database {path}: {exc}")
