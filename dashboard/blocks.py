"""Fixed-layout renderables: a small table and a tiling of blocks, both laid out by hand.

Rich's ``Table`` measures every cell (twice, with padding objects and wrap attempts), and
``Columns`` measures every table again to arrange them: a view of ten small tables cost
100-400 ms a frame. Here a cell is one line of text, a column is as wide as its widest cell
(shrunk with an ellipsis when the width is short), and tiles are packed left to right into rows,
each rendered once. A view of ten tables costs a few milliseconds.

Cells are plain ``str`` (never parsed as markup) or ``Text`` (their styles kept).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.text import Text

#: cells between columns of a table, and between tiles
COLUMN_GAP = 2
TILE_GAP = 2



def emit(console: Console, line: Text, width: int | None = None) -> Iterator[Segment]:
    """One line as segments plus a newline, cut to ``width`` cells (no wrapping pass)."""
    if width is not None and line.cell_len > width:
        line.truncate(width, overflow="crop")
    if line.style:
        line.stylize_before(line.style, 0, len(line))
        line.style = ""
    yield from line.render(console)
    yield Segment.line()


def fit_text(cell: str | Text, width: int, right: bool = False) -> Text:
    """``cell`` cut (with an ellipsis) or padded to exactly ``width`` cells."""
    t = cell.copy() if isinstance(cell, Text) else Text(cell)
    n = t.cell_len
    if n > width:
        t.truncate(width, overflow="ellipsis")
        n = t.cell_len
    if n < width:
        if right:
            t = Text.assemble(" " * (width - n), t)
        else:
            t.append(" " * (width - n))
    return t


def _width_of(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _cap(widths: list[int], avail: int) -> list[int]:
    """Shrink the widest columns first until the total fits ``avail`` (water filling)."""
    if sum(widths) <= avail:
        return widths
    lo, hi = 1, max(widths)
    while lo < hi:  # the largest cap C with sum(min(w, C)) <= avail
        mid = (lo + hi + 1) // 2
        if sum(min(w, mid) for w in widths) <= avail:
            lo = mid
        else:
            hi = mid - 1
    capped = [min(w, lo) for w in widths]
    spare = avail - sum(capped)
    for i, w in enumerate(widths):  # hand out what the integer cap left over, left to right
        if spare <= 0:
            break
        if w > capped[i]:
            capped[i] += 1
            spare -= 1
    return capped


class Block:
    """A titled table of one-line cells, with the small part of ``rich.table.Table``'s API the
    panels use (``add_column``, ``add_row(..., style=)``, ``show_header``, ``title``)."""

    def __init__(self, title: str | None = None, *, show_header: bool = True,
                 expand: bool = False, title_style: str = "bold cyan") -> None:
        self.title = title
        self.title_style = title_style
        self.show_header = show_header
        self.expand = expand
        self.headers: list[str] = []
        self.right: list[bool] = []
        self.rows: list[tuple[Sequence[str | Text], str]] = []

    def add_column(self, header: str = "", justify: str = "left") -> None:
        self.headers.append(header)
        self.right.append(justify == "right")

    def add_row(self, *cells: str | Text | None, style: str = "") -> None:
        row = [c if isinstance(c, (str, Text)) else ("" if c is None else str(c)) for c in cells]
        row += [""] * (len(self.headers) - len(row))
        self.rows.append((row, style))

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def natural_widths(self) -> list[int]:
        widths = [cell_len(h) if self.show_header else 0 for h in self.headers]
        for cells, _ in self.rows:
            for i, c in enumerate(cells[:len(widths)]):
                w = _width_of(c)
                if w > widths[i]:
                    widths[i] = w
        return widths

    def natural_width(self) -> int:
        widths = self.natural_widths()
        body = sum(widths) + COLUMN_GAP * max(0, len(widths) - 1)
        return max(body, cell_len(self.title) if self.title else 0, 1)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        w = min(self.natural_width(), options.max_width)
        return Measurement(w, options.max_width if self.expand else w)

    def lines(self, width: int) -> Iterator[Text]:
        """The block as lines of at most ``width`` cells."""
        n = len(self.headers)
        widths = _cap(self.natural_widths(), max(n, width - COLUMN_GAP * max(0, n - 1)))
        if self.expand and widths:
            used = sum(widths) + COLUMN_GAP * (n - 1)
            widths[widths.index(max(widths))] += max(0, width - used)
        gap = " " * COLUMN_GAP
        if self.title:
            yield fit_text(Text(self.title, style=self.title_style), width)
        if self.show_header and n:
            head = Text(style="bold")
            for i, (h, w) in enumerate(zip(self.headers, widths)):
                if i:
                    head.append(gap)
                head.append_text(fit_text(h, w, self.right[i]))
            yield head
            yield Text("─" * min(width, sum(widths) + COLUMN_GAP * (n - 1)), style="dim")
        for cells, style in self.rows:
            line = Text()
            for i, (c, w) in enumerate(zip(cells, widths)):
                if i:
                    line.append(gap)
                line.append_text(fit_text(c, w, self.right[i]))
            if style:
                line.stylize_before(style, 0, len(line))
            yield line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        limit = options.height
        for i, line in enumerate(self.lines(width)):
            if limit is not None and i >= limit:
                return
            yield from emit(console, line, width)


class Tiles:
    """Blocks packed left to right into rows that fit the width; each block rendered once.

    Rendering stops at the available height (the frame crops there anyway), so tiles that fall
    off the bottom of a small terminal cost nothing.
    """

    def __init__(self, parts: Iterable[RenderableType], gap: int = TILE_GAP) -> None:
        self.parts = list(parts)
        self.gap = gap

    def _width(self, console: Console, options: ConsoleOptions, part: RenderableType) -> int:
        if isinstance(part, Block):
            w = part.natural_width()
        elif isinstance(part, Text):
            w = max((cell_len(l) for l in part.plain.split("\n")), default=0)
        else:
            w = Measurement.get(console, options, part).maximum
        return max(1, min(w, options.max_width))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        limit = options.height
        widths = [self._width(console, options, p) for p in self.parts]
        rows: list[list[int]] = []
        used = 0
        for i, w in enumerate(widths):
            if rows and used + self.gap + w <= width:
                rows[-1].append(i)
                used += self.gap + w
            else:
                rows.append([i])
                used = w
        emitted = 0
        pad = Segment(" " * self.gap)
        for row in rows:
            if limit is not None and emitted >= limit:
                return
            sub = options.update(height=None)
            rendered = [console.render_lines(self.parts[i], sub.update_width(widths[i]), pad=True)
                        for i in row]
            tall = max(len(r) for r in rendered)
            if limit is not None:
                tall = min(tall, limit - emitted)
            for n in range(tall):
                for k, (i, lines) in enumerate(zip(row, rendered)):
                    if k:
                        yield pad
                    if n < len(lines):
                        yield from lines[n]
                    else:
                        yield Segment(" " * widths[i])
                yield Segment.line()
            emitted += tall
            if row is not rows[-1] and (limit is None or emitted < limit):
                yield Segment.line()  # a blank line between rows of tiles
                emitted += 1
