"""The key table: every binding, its action and help text, in one declaration.

The dispatcher, the footer and the ``?`` help overlay all read this table, so the help can never
disagree with what a key does. ``views`` is empty for global keys.
"""
from __future__ import annotations

from dataclasses import dataclass

from dashboard.view_state import VIEWS


@dataclass(frozen=True, slots=True)
class Binding:
    keys: tuple[str, ...]
    action: str
    help: str
    views: tuple[str, ...] = ()
    #: argument passed to the action (e.g. the view to switch to)
    arg: str = ""
    #: shown in the footer of its views
    footer: bool = True


_NAV = ("traffic", "alerts")

BINDINGS: tuple[Binding, ...] = (
    *(Binding((num,), "view", f"{title} view", arg=view, footer=False)
      for view, (num, title) in VIEWS.items()),
    Binding(("tab",), "next_view", "next view", footer=False),
    Binding(("shift_tab",), "prev_view", "previous view", footer=False),
    Binding(("?",), "help", "show/hide this help"),
    Binding(("p",), "pause", "pause/resume capture processing"),
    Binding(("q",), "quit", "quit"),
    Binding(("esc",), "escape", "close detail/help, cancel prompt", footer=False),
    Binding(("e",), "export", "export this view (selection, filters) to a file"),
    # navigation (Traffic and Alerts lists)
    Binding(("up", "k"), "move", "cursor up", _NAV, arg="-1", footer=False),
    Binding(("down", "j"), "move", "cursor down", _NAV, arg="1", footer=False),
    Binding(("pgup",), "page", "page up", _NAV, arg="-1", footer=False),
    Binding(("pgdn",), "page", "page down", _NAV, arg="1", footer=False),
    Binding(("home",), "edge", "first row", _NAV, arg="home", footer=False),
    Binding(("end",), "edge", "last row", _NAV, arg="end", footer=False),
    # Traffic
    Binding(("space",), "select", "select/unselect flow", ("traffic",)),
    Binding(("a",), "select_all", "select all shown flows", ("traffic",)),
    Binding(("c",), "clear", "clear selection and filters", ("traffic",)),
    Binding(("/",), "prompt", "filter by IP or name substring", ("traffic",), arg="/"),
    Binding((":",), "prompt", "filter by port", ("traffic",), arg=":"),
    Binding(("f",), "proto_cycle", "cycle protocol filter", ("traffic",)),
    Binding(("s",), "sort_cycle", "cycle sort bytes/packets/rate/time", ("traffic",)),
    Binding(("g",), "destinations", "flows / destinations", ("traffic",)),
    Binding(("l",), "local", "show/hide local-only traffic", ("traffic",)),
    Binding(("enter",), "detail", "flow details", ("traffic",)),
    Binding(("t",), "trace", "traceroute the flow's destination", ("traffic",)),
    Binding(("w",), "save_packets", "save the selected flows' packets (pcapng)", ("traffic",),
            footer=False),
    # Paths (view-specific keys win over the global ones: r is Relay elsewhere)
    Binding(("s",), "paths_trace_selected", "trace the selected flows' destinations", ("paths",)),
    Binding(("r",), "paths_reset", "refresh: reset hop statistics", ("paths",)),
    Binding(("c",), "paths_clear", "clear traces", ("paths",)),
    # Ports
    Binding(("s",), "ports_sort", "cycle sort bytes/packets/connections/rate", ("ports",)),
    # Alerts
    Binding(("space", "enter"), "ack", "acknowledge alert", ("alerts",)),
    Binding(("A",), "ack_all", "acknowledge all alerts", ("alerts",)),
)


def lookup(view: str, key: str) -> Binding | None:
    """The binding of ``key`` in ``view``: view-specific bindings win over global ones."""
    glob = None
    for b in BINDINGS:
        if key in b.keys:
            if view in b.views:
                return b
            if not b.views and glob is None:
                glob = b
    return glob


def for_view(view: str) -> list[Binding]:
    return [b for b in BINDINGS if view in b.views]


KEY_LABELS = {"space": "Space", "enter": "Enter", "esc": "Esc", "tab": "Tab",
              "shift_tab": "Shift+Tab", "up": "↑", "down": "↓", "pgup": "PgUp", "pgdn": "PgDn",
              "home": "Home", "end": "End"}


def label(keys: tuple[str, ...]) -> str:
    return "/".join(KEY_LABELS.get(k, k) for k in keys)
