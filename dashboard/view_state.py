"""What the user has chosen on screen: view, cursor, selection, filters, sort, prompts.

This is the only mutable UI state; keys change it (dashboard/actions.py) and the state builder
reads it. Selection is a set of ``flow_key`` strings, so it survives reordering and view switches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: view id -> (number key, title), in Tab order
VIEWS: dict[str, tuple[str, str]] = {
    "traffic": ("1", "Traffic"),
    "paths": ("2", "Paths"),
    "stats": ("3", "Stats"),
    "analysis": ("4", "Analysis"),
    "ports": ("5", "Ports"),
    "dns": ("6", "DNS"),
    "dpi": ("7", "DPI"),
    "alerts": ("8", "Alerts"),
    "tcp": ("9", "TCP"),
    "trends": ("0", "Trends"),
    "relay": ("r", "Relay"),
}
VIEW_ORDER: tuple[str, ...] = tuple(VIEWS)

FLOW_SORTS: tuple[str, ...] = ("bytes", "packets", "rate", "time")
PORT_SORTS: tuple[str, ...] = ("bytes", "packets", "connections", "rate")
#: protocol filter cycle ("" = all)
PROTO_CYCLE: tuple[str, ...] = ("", "TCP", "UDP", "ICMP", "ICMPv6")


@dataclass(slots=True)
class ViewState:
    view: str = "traffic"
    #: cursor index into the current (filtered, sorted) list and first visible row
    cursor: int = 0
    scroll: int = 0
    #: body rows available for a table; set by the app from the terminal size each tick
    page_rows: int = 20
    selected: set[str] = field(default_factory=set)
    filter_text: str = ""
    port_filter: int | None = None
    proto_filter: str = ""
    sort: str = "bytes"
    destinations: bool = False
    #: False: show all flows; True: hide flows whose both ends are local/private
    hide_local: bool = False
    #: flow_key whose detail view is open (Traffic view)
    detail_key: str | None = None
    #: "/" or ":" while a filter is being typed in the footer prompt
    prompt: str | None = None
    prompt_buf: str = ""
    help: bool = False
    message: str = ""
    trace_requests: list[str] = field(default_factory=list)
    #: where the last ``e``/``w`` export went (also said in the footer message)
    last_export: str = ""
    ports_sort: str = "bytes"
    #: cursor in the alert list (Alerts view)
    alert_cursor: int = 0
    quit: bool = False
    simple: bool = False

    def switch(self, view: str) -> None:
        if view in VIEWS and not self.simple:
            self.view = view
            self.help = False
            self.detail_key = None
            self.message = ""
