"""JSON export: the whole document, written atomically (a crash never leaves half a file)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from capture.errors import WriteError


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, default=_default)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise WriteError(f"cannot write {path}: {exc.strerror}") from None
    return path


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
