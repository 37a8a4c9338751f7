"""Relay errors with one-line messages; main.py maps them to stderr and a non-zero exit."""
from __future__ import annotations


class RelayError(Exception):
    """A relay failure the user can act on (bad token file, address in use, bad URL...)."""
