"""Tables as the page-bound exports print them: a table wider than a page, split into parts.

The console scrolls a wide table sideways and the JSON export keeps every table whole;
the markdown and LaTeX exports are read on a page (a paper, a pull request), so there a
table wider than ``PAGE_WIDTH`` characters is split into the column groups its builder
declares (``Table.groups``). Consecutive groups share a part while the part fits the
page; a group is never broken up, so a part holding one wide group can stay wider. Every
part repeats the row's keys (the headers in no group: model, method, λ, n) and carries
the notes of its own groups; the notes that belong to no group (what ± and n mean) come
once, under the first part.

Width is counted as plain text: each column as wide as its widest cell or header, 3
characters between columns (the ``" | "`` of a padded markdown row, about a booktabs
column gap). 100 characters fit a LaTeX page at 10 pt and a GitHub comment without
scrolling.
"""
from __future__ import annotations

from collections.abc import Sequence

from .cells import ColumnGroup, Table

PAGE_WIDTH = 100  # characters


def width(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """The table's plain-text width: widest cell (or header) per column, 3 between columns."""
    cols = [max([len(h), *(len(r[i]) for r in rows if i < len(r))]) for i, h in enumerate(headers)]
    return sum(cols) + 3 * max(0, len(cols) - 1)


def columns(table: Table, headers: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """``headers`` (in the table's order) and the rows' cells under them."""
    index = [i for i, h in enumerate(table.headers) if h in headers]
    return [table.headers[i] for i in index], [[r[i] if i < len(r) else "" for i in index] for r in table.rows]


def part_headers(table: Table, groups: Sequence[ColumnGroup]) -> list[str]:
    grouped = {h for g in table.groups for h in g.headers}
    mine = {h for g in groups for h in g.headers}
    return [h for h in table.headers if h not in grouped or h in mine]


def split(table: Table, page: int = PAGE_WIDTH) -> list[Table]:
    """``table`` as the parts that fit ``page`` characters (itself when it fits, has no rows or
    declares no groups)."""
    if not table.groups or not table.rows or width(table.headers, table.rows) <= page:
        return [table]
    parts: list[list[ColumnGroup]] = []
    for group in table.groups:
        if parts and width(*columns(table, part_headers(table, [*parts[-1], group]))) <= page:
            parts[-1].append(group)
        else:
            parts.append([group])
    if len(parts) == 1:
        return [table]
    claimed = {n for g in table.groups for n in g.notes}
    out = []
    for i, groups in enumerate(parts, 1):
        headers, rows = columns(table, part_headers(table, groups))
        mine = {n for g in groups for n in g.notes}
        notes = [n for n in table.notes if n in mine or (i == 1 and n not in claimed)]
        title = f"{table.title} ({i} of {len(parts)}): {', '.join(g.title for g in groups)}"
        out.append(Table(f"{table.key}-{groups[0].key}", title, headers, rows, notes, table.data))
    return out


def page_tables(tables: Sequence[Table], page: int = PAGE_WIDTH) -> list[Table]:
    """Every table, the wide ones split (``split``), in reading order."""
    return [part for t in tables for part in split(t, page)]
