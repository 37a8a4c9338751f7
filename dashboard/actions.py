"""What each action of the key table does to the ViewState (and, for a few, to the runtime).

``handle_key`` is the single entry point: prompt typing first, then the key table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dashboard import keys
from dashboard.panels.alerts import alert_rows
from dashboard.state import DashboardState
from dashboard.view_state import FLOW_SORTS, PORT_SORTS, PROTO_CYCLE, VIEW_ORDER, ViewState
from utils.logger import get_logger

log = get_logger(__name__)


@dataclass(slots=True)
class Context:
    runtime: Any
    state: DashboardState | None


Action = Callable[[ViewState, Context, str], None]


def _cycle(seq: tuple[str, ...], cur: str, step: int = 1) -> str:
    i = seq.index(cur) if cur in seq else -1
    return seq[(i + step) % len(seq)]


def _list_len(vs: ViewState, ctx: Context) -> int:
    st = ctx.state
    if st is None:
        return 0
    if vs.view == "alerts":
        return len(alert_rows(st))
    return st.total_flows


def _set_cursor(vs: ViewState, ctx: Context, pos: int) -> None:
    n = _list_len(vs, ctx)
    pos = max(0, min(pos, n - 1)) if n else 0
    if vs.view == "alerts":
        vs.alert_cursor = pos
    else:
        vs.cursor = pos


def _cur(vs: ViewState) -> int:
    return vs.alert_cursor if vs.view == "alerts" else vs.cursor


def move(vs: ViewState, ctx: Context, arg: str) -> None:
    _set_cursor(vs, ctx, _cur(vs) + int(arg))


def page(vs: ViewState, ctx: Context, arg: str) -> None:
    _set_cursor(vs, ctx, _cur(vs) + int(arg) * max(1, vs.page_rows - 1))


def edge(vs: ViewState, ctx: Context, arg: str) -> None:
    _set_cursor(vs, ctx, 0 if arg == "home" else _list_len(vs, ctx) - 1)


def _flow_key_at_cursor(vs: ViewState, ctx: Context) -> str | None:
    st = ctx.state
    if st is None or vs.destinations:
        return None
    i = vs.cursor - st.offset
    if 0 <= i < len(st.rows):
        return st.rows[i].flow_key
    return None


def select(vs: ViewState, ctx: Context, arg: str) -> None:
    key = _flow_key_at_cursor(vs, ctx)
    if key is None:
        return
    if key in vs.selected:
        vs.selected.discard(key)
    else:
        vs.selected.add(key)
    move(vs, ctx, "1")


def select_all(vs: ViewState, ctx: Context, arg: str) -> None:
    if ctx.state is not None and not vs.destinations:
        vs.selected.update(f.flow_key for f in ctx.state.flows)


def clear(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.selected.clear()
    vs.filter_text = ""
    vs.port_filter = None
    vs.proto_filter = ""
    vs.message = ""


def prompt(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.prompt = arg
    vs.prompt_buf = vs.filter_text if arg == "/" else (str(vs.port_filter) if vs.port_filter is not None else "")


def proto_cycle(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.proto_filter = _cycle(PROTO_CYCLE, vs.proto_filter)
    vs.cursor = vs.scroll = 0


def sort_cycle(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.sort = _cycle(FLOW_SORTS, vs.sort)
    vs.cursor = vs.scroll = 0


def ports_sort(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.ports_sort = _cycle(PORT_SORTS, vs.ports_sort)


def destinations(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.destinations = not vs.destinations
    vs.cursor = vs.scroll = 0


def local(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.hide_local = not vs.hide_local
    vs.cursor = vs.scroll = 0


def detail(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.detail_key = _flow_key_at_cursor(vs, ctx)


def trace(vs: ViewState, ctx: Context, arg: str) -> None:
    key = _flow_key_at_cursor(vs, ctx) or vs.detail_key
    if key is None:
        return
    dst = key.split("|")[3]
    tracer = getattr(ctx.runtime.components, "paths", None) or getattr(ctx.runtime, "tracer", None)
    request = getattr(tracer, "request", None) or getattr(tracer, "trace", None)
    vs.trace_requests.append(dst)
    if request is None:
        vs.message = f"traceroute to {dst}: not available yet (no path tracer in this build)"
        return
    request(dst)
    vs.message = f"traceroute to {dst} started: see view 2"


def _tracer(ctx: Context) -> Any:
    return getattr(ctx.runtime.components, "paths", None)


def paths_trace_selected(vs: ViewState, ctx: Context, arg: str) -> None:
    """Paths `s`: trace the destinations of the flows selected in Traffic."""
    tracer = _tracer(ctx)
    if tracer is None:
        vs.message = "traceroute: not available (no path tracer)"
        return
    dests = sorted({k.split("|")[3] for k in vs.selected if k.count("|") >= 4})
    if not dests:
        vs.message = "select flows in view 1 (Space) first, then press s here"
        return
    for d in dests:
        tracer.request(d)
    vs.message = f"tracing {len(dests)} destination(s): {', '.join(dests[:4])}"


def paths_reset(vs: ViewState, ctx: Context, arg: str) -> None:
    tracer = _tracer(ctx)
    if tracer is not None:
        tracer.reset()
        vs.message = "hop statistics reset"


def paths_clear(vs: ViewState, ctx: Context, arg: str) -> None:
    tracer = _tracer(ctx)
    if tracer is not None:
        tracer.clear()
        vs.message = "traces cleared"


def _scope(vs: ViewState, ctx: Context) -> Any:
    from dashboard import sources
    from export.view_export import ViewScope
    selected = frozenset(vs.selected)
    if vs.detail_key is not None and vs.view == "traffic":
        selected = frozenset((vs.detail_key,))     # the open detail stands for its flow
    names = None
    if vs.filter_text:
        nm = sources.Names(ctx.runtime.components.dns)
        if nm.available:
            names = lambda f: nm(f.dst_ip) + " " + nm(f.src_ip)  # noqa: E731
    return ViewScope(vs.view, selected, vs.filter_text, vs.port_filter, vs.proto_filter,
                     vs.hide_local, vs.sort, is_local=sources.is_local, names=names)


def export(vs: ViewState, ctx: Context, arg: str) -> None:
    """Write the current view's rows to a file named for the session and time; say where."""
    from capture.errors import CaptureError
    from export.base import ExportError
    from export.view_export import count_label, export_view
    try:
        res = export_view(ctx.runtime, _scope(vs, ctx))
    except (CaptureError, ExportError, OSError) as exc:
        vs.message = f"export failed: {exc}"
        return
    vs.last_export = str(res.path.resolve())
    vs.message = f"exported {count_label(res.kind, res.rows)} to {vs.last_export}"


def save_packets(vs: ViewState, ctx: Context, arg: str) -> None:
    """Write the selected flows' packets (else the flow under the cursor) to a pcapng file."""
    from capture.errors import CaptureError
    from export.view_export import save_flow_packets
    keys = set(vs.selected) or {k for k in (vs.detail_key or _flow_key_at_cursor(vs, ctx),) if k}
    if not keys:
        vs.message = "no flow selected: Space selects flows"
        return
    try:
        res = save_flow_packets(ctx.runtime, keys)
    except (CaptureError, ValueError, OSError) as exc:
        vs.message = f"saving packets failed: {exc}"
        return
    vs.last_export = str(res.path.resolve())
    note = f" (older packets had left memory: {res.seen} seen)" if res.packets < res.seen else ""
    vs.message = f"saved {res.packets} packets of {res.flows} flows to {vs.last_export}{note}"


def ack(vs: ViewState, ctx: Context, arg: str) -> None:
    sec = ctx.runtime.components.security
    if ctx.state is None or sec is None:
        return
    rows = alert_rows(ctx.state)
    if 0 <= vs.alert_cursor < len(rows):
        sec.engine.acknowledge(rows[vs.alert_cursor]["id"])
        move(vs, ctx, "1")


def ack_all(vs: ViewState, ctx: Context, arg: str) -> None:
    sec = ctx.runtime.components.security
    if ctx.state is None or sec is None:
        return
    for r in alert_rows(ctx.state):
        sec.engine.acknowledge(r["id"])


def view(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.switch(arg)


def next_view(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.switch(_cycle(VIEW_ORDER, vs.view))


def prev_view(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.switch(_cycle(VIEW_ORDER, vs.view, -1))


def help_(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.help = not vs.help


def pause(vs: ViewState, ctx: Context, arg: str) -> None:
    ev = ctx.runtime.pipeline.paused
    if ev.is_set():
        ev.clear()
        vs.message = "resumed"
    else:
        ev.set()
        vs.message = "paused: packets wait in the capture queue (drops are counted)"


def quit_(vs: ViewState, ctx: Context, arg: str) -> None:
    vs.quit = True


def escape(vs: ViewState, ctx: Context, arg: str) -> None:
    if vs.help:
        vs.help = False
    elif vs.detail_key is not None:
        vs.detail_key = None
    else:
        vs.message = ""


ACTIONS: dict[str, Action] = {
    "move": move, "page": page, "edge": edge, "select": select, "select_all": select_all,
    "clear": clear, "prompt": prompt, "proto_cycle": proto_cycle, "sort_cycle": sort_cycle,
    "ports_sort": ports_sort, "destinations": destinations, "local": local, "detail": detail,
    "trace": trace, "paths_trace_selected": paths_trace_selected, "paths_reset": paths_reset,
    "paths_clear": paths_clear, "ack": ack, "ack_all": ack_all, "view": view, "next_view": next_view,
    "prev_view": prev_view, "help": help_, "pause": pause, "quit": quit_, "escape": escape,
    "export": export, "save_packets": save_packets,
}
missing = {b.action for b in keys.BINDINGS} - set(ACTIONS)
assert not missing, f"key table names unknown actions: {missing}"


def _prompt_key(vs: ViewState, key: str) -> None:
    if key == "esc":
        vs.prompt = None
    elif key == "enter":
        text = vs.prompt_buf.strip()
        if vs.prompt == "/":
            vs.filter_text = text
        elif not text:
            vs.port_filter = None
        elif text.isdigit() and int(text) < 65536:
            vs.port_filter = int(text)
        else:
            vs.message = f"not a port: {text[:20]}"
        vs.prompt = None
        vs.cursor = vs.scroll = 0
    elif key == "backspace":
        vs.prompt_buf = vs.prompt_buf[:-1]
    elif key == "space":
        vs.prompt_buf += " "
    elif len(key) == 1 and len(vs.prompt_buf) < 100:
        vs.prompt_buf += key


def handle_key(vs: ViewState, ctx: Context, key: str) -> None:
    if vs.prompt is not None:
        _prompt_key(vs, key)
        return
    if vs.simple:
        return
    if vs.help and key not in ("?", "esc", "q"):
        vs.help = False
    # The detail view is part of Traffic: its own keys are Esc and t; everything else closes it
    # only when it switches the view.
    b = keys.lookup(vs.view, key)
    if b is None:
        return
    if vs.detail_key is not None and b.views == ("traffic",) and b.action not in ("trace", "save_packets"):
        return
    ACTIONS[b.action](vs, ctx, b.arg)
