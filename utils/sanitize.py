"""Make network-supplied text safe to put on a terminal.

DNS names, SNI, HTTP headers and PTR records are attacker-controlled: strip control and
bidi-override characters, escape Rich markup, and bound the length. Stored data keeps the raw
value; only what reaches a screen or a text report goes through here.
"""
from __future__ import annotations

import re
import unicodedata

from rich.markup import escape

# C0/C1 controls, DEL, and the Unicode bidi controls / isolates that reorder text on screen.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]")


def clean_text(value: object, max_len: int = 253) -> str:
    """Printable, single-line text: controls removed, truncated with an ellipsis."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    text = _UNSAFE.sub("\ufffd", text)
    # Drop other format-category characters (Cf) that the regex does not list.
    if any(unicodedata.category(c) == "Cf" for c in text):
        text = "".join("\ufffd" if unicodedata.category(c) == "Cf" else c for c in text)
    if len(text) > max_len:
        text = text[: max(0, max_len - 1)] + "…"
    return text


def safe_markup(value: object, max_len: int = 253) -> str:
    """:func:`clean_text` plus Rich markup escaping, for strings embedded in markup."""
    return escape(clean_text(value, max_len))
