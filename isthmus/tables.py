"""Rich tables that never cut a name: `print_table(table)` instead of `console.print(table)`.

Rich shrinks the widest columns of a table wider than the terminal and cuts what no longer fits with
"…" (at 80 columns: service, site, instance type and model names). `print_table` gives every column
a width of at least its longest word (header included), taking what the terminal lacks from the
columns with the most room above that, so a cell wraps only at spaces. When even the longest words do
not fit side by side, it prints the table stacked: one "column  value" block per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["print_table"]


def print_table(table: "Table", console: "Console | None" = None) -> None:
    """Print `table` on `console` (default: a new stdout Console) with no cell cut short."""
    from rich.console import Console

    console = console or Console()
    widths = _widths(table, console)
    if widths is None:
        if table.title:   # above the narrow stacked table, not wrapped to its width
            console.print(table.title, style="table.title")
        table = _stacked(table)
    else:
        for column, width in zip(table.columns, widths):
            column.width = width
    for column in table.columns:
        column.overflow = "fold"   # a single word wider than the terminal folds rather than ending in "…"
    console.print(table)


def _widths(table: "Table", console: "Console") -> list[int] | None:
    """Content width per column that fits the console without breaking a word (None: none does)."""
    from rich.measure import Measurement

    options = console.options.update(width=10**6)
    spans = [[Measurement.get(console, options, cell) for cell in (column.header, *column.cells)]
             for column in table.columns]
    least = [max(m.minimum for m in s) for s in spans]
    widths = [max(m.maximum for m in s) for s in spans]
    chrome = Measurement.get(console, options, table).maximum - sum(widths)   # borders and padding
    if chrome + sum(least) > console.width:
        return None
    for _ in range(chrome + sum(widths) - console.width):   # a character at a time off the widest that can wrap
        i = max((i for i in range(len(widths)) if widths[i] > least[i]), key=lambda i: widths[i])
        widths[i] -= 1
    return widths


def _stacked(table: "Table") -> "Table":
    """The same cells as one block per row: each column's header beside its value."""
    from rich.table import Table

    stacked = Table(show_header=False)
    stacked.add_column(style="bold")
    stacked.add_column()
    cells = [list(column.cells) for column in table.columns]
    for row in range(table.row_count):
        for i, column in enumerate(table.columns):
            stacked.add_row(column.header, cells[i][row], end_section=i == len(cells) - 1)
    return stacked
