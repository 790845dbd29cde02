"""Tables that fit the width they are printed at without losing a character.

Left to itself, rich squeezes a table that is too wide by cutting cells to an ellipsis
(``5004…``, ``12.…``): a number or an id cut that way is not short, it is wrong. :class:`Fitted`
wraps a table and decides the column widths itself, at print time, for the width it is printed at:

- every column is *atomic* (numbers, ids, times: never broken, never cut) unless it is named as
  *text*, which wraps at spaces, never narrower than its longest word;
- headers wrap at spaces (``rate-limit`` over ``waits``);
- text columns give way first, the widest first; if the atomic columns still do not fit, the
  columns named *optional* are left out, the last named first, and a note under the table says
  which ones and where to see them.

Output that is not a terminal (a pipe, a file) is printed at its natural width:
:func:`output_console` gives such a console.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

__all__ = ["Fitted", "fit_table", "output_console"]

# Wide enough for any table this project prints; lines are not padded to it.
_PIPE_WIDTH = 4096


def output_console(*, stderr: bool = False) -> Console:
    """A console for command output: the terminal's width on a terminal, else (a pipe, a file)
    wide enough that nothing is wrapped or cut, unless ``COLUMNS`` says otherwise."""
    out = Console(highlight=False, stderr=stderr)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = _PIPE_WIDTH
    return out


@dataclass(frozen=True)
class Fitted:
    """A table printed at whatever width is available without cutting an atomic cell.

    Args:
        table: the table (its columns' widths and overflow are decided here).
        text: headers of the columns that may wrap at spaces (free text: errors, JSON).
        optional: headers of the columns that may be left out when the rest cannot fit,
            left out in reverse order (the last named goes first).
        hint: where the left-out columns can be read (ends the note).
    """

    table: Table
    text: frozenset[str] = frozenset()
    optional: tuple[str, ...] = ()
    hint: str = "widen the terminal or use --json"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, dropped = fit_table(
            self.table, console, options.max_width, text=self.text, optional=self.optional
        )
        yield table
        if dropped:
            yield Text(
                f"(not shown at {options.max_width} columns: {', '.join(dropped)}; {self.hint})",
                style="dim",
            )

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table)


def _plain(console: Console, cell: RenderableType) -> Text | None:
    if isinstance(cell, Text):
        return cell
    if isinstance(cell, str):
        return console.render_str(cell)
    return None


def _extent(
    console: Console, options: ConsoleOptions, cells: Iterable[RenderableType]
) -> tuple[int, int]:
    """(longest line, longest word) over ``cells``, in terminal cells."""
    longest = word = 0
    for cell in cells:
        text = _plain(console, cell)
        if text is None:
            m = Measurement.get(console, options, cell)
            longest, word = max(longest, m.maximum), max(word, m.minimum)
            continue
        for line in text.plain.splitlines() or [""]:
            longest = max(longest, cell_len(line))
            word = max(word, *(cell_len(w) for w in line.split() or [""]))
    return longest, word


def fit_table(
    table: Table,
    console: Console,
    width: int,
    *,
    text: frozenset[str] = frozenset(),
    optional: tuple[str, ...] = (),
) -> tuple[Table, list[str]]:
    """A copy of ``table`` with fixed column widths that fit ``width``, and the headers of the
    columns left out to make it fit (see the module docstring for the rules)."""
    options = console.options.update_width(max(width, 1))
    columns = list(table.columns)
    dropped: list[str] = []
    droppable = list(reversed(optional))
    while True:
        widths = _widths(table, console, options, columns, text, width)
        if widths is not None or not droppable:
            break
        name = droppable.pop(0)
        kept = [c for c in columns if str(c.header) != name]
        if len(kept) != len(columns):
            dropped.append(name)
            columns = kept
    if widths is None:  # nothing left to drop: minimum widths, folded rather than cut
        widths = [_minimum(console, options, c, text) for c in columns]
    fitted = _copy(table, columns, widths)
    return fitted, list(reversed(dropped))


def _minimum(
    console: Console, options: ConsoleOptions, column: Column, text: frozenset[str]
) -> int:
    head = _extent(console, options, [column.header])[1]
    longest, word = _extent(console, options, column.cells)
    return max(1, head, word if str(column.header) in text else longest)


def _widths(
    table: Table,
    console: Console,
    options: ConsoleOptions,
    columns: list[Column],
    text: frozenset[str],
    width: int,
) -> list[int] | None:
    natural = [max(1, _extent(console, options, [c.header, *c.cells])[0]) for c in columns]
    minimum = [_minimum(console, options, c, text) for c in columns]
    natural = [max(n, m) for n, m in zip(natural, minimum, strict=True)]
    overhead = _overhead(table, console, options, columns, natural)
    excess = overhead + sum(natural) - width
    widths = list(natural)
    while excess > 0:
        # Take one cell from the widest column that can give way (text above its longest word,
        # or a header wider than its cells).
        slack = [i for i in range(len(widths)) if widths[i] > minimum[i]]
        if not slack:
            return None
        widest = max(slack, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def _overhead(
    table: Table,
    console: Console,
    options: ConsoleOptions,
    columns: list[Column],
    widths: list[int],
) -> int:
    probe = _copy(table, columns, widths)
    wide = options.update_width(sum(widths) * 2 + 16 * len(widths) + 16)
    return Measurement.get(console, wide, probe).maximum - sum(widths)


def _copy(table: Table, columns: list[Column], widths: list[int]) -> Table:
    copy = dataclasses.replace  # Column is a dataclass: copy it with its cells
    out = Table.__new__(Table)
    out.__dict__.update(table.__dict__)
    out.columns = [
        copy(
            column,
            _index=index,
            width=w,
            min_width=None,
            max_width=None,
            no_wrap=False,
            overflow="fold",
        )
        for index, (column, w) in enumerate(zip(columns, widths, strict=True))
    ]
    return out
