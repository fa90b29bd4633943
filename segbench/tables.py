"""The one table renderer: Markdown, CSV and aligned console text, for every verb and benchmark.

A table is ``columns`` (header names) and ``rows``: each row a mapping (cells looked up by
column name; missing ones are empty) or a sequence of cells in column order.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Callable, Mapping, Sequence

Row = Mapping[str, Any] | Sequence[Any]


def cells(columns: Sequence[str], row: Row) -> list[Any]:
    if isinstance(row, Mapping):
        return [row.get(c, "") for c in columns]
    return list(row)


def markdown_cell(value: Any) -> str:
    """A cell that cannot break the table: pipes escaped, newlines folded."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Row],
                   fmt: Callable[[Any], str] = markdown_cell) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(c) for c in cells(columns, row)) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(columns: Sequence[str], rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # csv's own \r\n line ends, as the DictWriter it replaced
    writer.writerow(columns)
    writer.writerows(cells(columns, row) for row in rows)
    return buffer.getvalue()


def text_table(columns: Sequence[str], rows: Sequence[Row]) -> str:
    """Aligned columns for a terminal: the first left-aligned, the rest right-aligned."""
    body = [[str(c) for c in cells(columns, row)] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(columns), "  ".join("-" * w for w in widths), *map(line, body)])
