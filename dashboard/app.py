"""The dashboard controller: a Rich Live loop on the main thread, keys routed to the active view.

Each tick builds one frozen DashboardState and renders the frame from it. The terminal is
restored on every way out: ``q``, Ctrl+C, SIGTERM (sets ``runtime.stop``), or an exception —
the input handler and Live are context managers, and signal handlers are put back in ``finally``.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import ExitStack
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from dashboard import actions, screen
from dashboard.input_handler import InputHandler
from dashboard.state import DashboardState, StateBuilder
from dashboard.view_state import ViewState
from utils.logger import get_logger

log = get_logger(__name__)


class Dashboard:
    """One dashboard session over a runtime; ``run`` returns the exit status."""

    def __init__(self, runtime: Any, console: Console | None = None) -> None:
        self.rt = runtime
        self.simple = bool(getattr(runtime.args, "simple", False))
        self.console = console or terminal_console()
        self.view = ViewState(simple=self.simple)
        self.builder = StateBuilder(runtime)
        self.state: DashboardState | None = None
        self.refresh = float(runtime.settings.REFRESH_RATE)
        self.terminated = False
        #: set by SIGWINCH: the loop draws the next frame at once, at the new size
        self.resized = False
        #: read end of the signal wakeup pipe while ``run`` is on the main thread
        self._wake: int | None = None

    # ---- one tick ----------------------------------------------------------------------------
    def tick(self) -> DashboardState:
        # Cleared before the size is read: a resize during this frame asks for another one.
        self.resized = False
        self.view.page_rows = screen.page_rows(self.console.size.height, self.state)
        try:
            self.state = self.builder.build(self.view)
        except Exception as exc:  # boundary: keep the last good frame and say what broke
            log.exception("building the dashboard state failed")
            self.view.message = f"internal error: {type(exc).__name__}: {exc}"
            if self.state is None:
                raise
        return self.state

    def renderable(self) -> RenderableType:
        if self.state is None:
            return Text("starting…")
        return screen.frame(self.state, self.view)

    def handle(self, key: str) -> None:
        actions.handle_key(self.view, actions.Context(self.rt, self.state), key)

    def should_exit(self) -> bool:
        if self.view.quit or self.terminated:
            return True
        # --simple is for logs and pipes: it ends with the capture; the full UI stays open.
        return self.simple and bool(self.rt.capture_done)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        rt = self.rt

        def on_term(signum: int, frame: Any) -> None:
            self.terminated = True
            rt.stop.set()

        def on_winch(signum: int, frame: Any) -> None:
            self.resized = True

        on_main = _on_main_thread()
        prev_term = signal.signal(signal.SIGTERM, on_term) if on_main else None
        # SIGWINCH: Rich measures the terminal on every frame (see terminal_console); the handler
        # asks for a frame at once, and the wakeup pipe ends the key wait it arrives in (a Python
        # handler alone cannot: select is retried after it, PEP 475).
        prev_winch = signal.signal(signal.SIGWINCH, on_winch) if on_main else None
        wake_r, wake_w = os.pipe() if on_main else (-1, -1)
        prev_wakeup = -1
        if on_main:
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
            prev_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self._wake = wake_r if on_main else None
        use_keys = not self.simple and os.isatty(sys.stdin.fileno()) if _has_stdin() else False
        try:
            rt.start_capture()
            with ExitStack() as stack:
                inp = stack.enter_context(InputHandler(sys.stdin.fileno())) if use_keys else None
                live = stack.enter_context(Live(console=self.console, screen=not self.simple,
                                                auto_refresh=False, transient=False,
                                                get_renderable=self.renderable,
                                                redirect_stdout=False, redirect_stderr=False))
                self._loop(live, inp)
        except KeyboardInterrupt:
            pass
        finally:
            self.builder.close()
            if on_main:
                signal.set_wakeup_fd(prev_wakeup)
                signal.signal(signal.SIGTERM, prev_term)
                signal.signal(signal.SIGWINCH, prev_winch)
                os.close(wake_r)
                os.close(wake_w)
            rt.shutdown()
        return 0

    def _loop(self, live: Live, inp: InputHandler | None) -> None:
        while True:
            started = time.monotonic()
            self.tick()
            live.refresh()
            if self.should_exit():
                return
            deadline = started + self.refresh
            while True:
                left = deadline - time.monotonic()
                if inp is None:
                    if self.rt.stop.wait(max(0.0, left)) and self.terminated:
                        return
                    break
                keys = inp.read(max(0.0, left), self._wake)
                if keys:
                    for k in keys:
                        self.handle(k)
                    break  # redraw at once after input
                if left <= 0 or self.terminated or self.resized:
                    break
            if self.should_exit():
                return


def terminal_console() -> Console:
    """The dashboard's Console: on a terminal its size is measured at every frame.

    Rich takes COLUMNS/LINES from the environment as a fixed size for the Console's lifetime.
    Shells export them as a snapshot (bash with checkwinsize updates them in its own environment
    on a resize, never in a running child's; ``eval $(resize)`` exports them), so a dashboard
    started that way would draw every frame at its start size after the terminal was resized.
    On a terminal the terminal is the truth; output to a pipe or file (--simple) keeps them.
    """
    try:
        tty = os.isatty(sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):
        tty = False
    if not tty:
        return Console()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return Console(_environ=env)


def _on_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _has_stdin() -> bool:
    try:
        sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    return True


def run_dashboard(runtime: Any) -> int:
    """Entry point called by runtime.main(): run the dashboard until q / Ctrl+C / SIGTERM."""
    return Dashboard(runtime).run()
