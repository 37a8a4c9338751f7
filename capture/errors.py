"""Capture errors, each carrying a one-line message meant for the user."""
from __future__ import annotations


class CaptureError(Exception):
    """Base of every capture failure the CLI reports as one line."""


class CaptureFileError(CaptureError):
    """A capture file that is missing, unreadable, not a capture, or of an unsupported kind."""


class CapturePermissionError(CaptureError):
    """Live capture was refused for lack of privileges."""


class InterfaceError(CaptureError):
    """The interface does not exist or cannot be opened."""


class FilterError(CaptureError):
    """The BPF filter does not compile."""


class WriteError(CaptureError):
    """The -w output cannot be written."""
