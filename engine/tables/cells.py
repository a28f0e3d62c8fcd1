"""Table cells: mean ± std over seeds, n, markers, the ``Table`` itself and its column groups.

Numbers themselves become text in ``engine/fmt.py`` (``num``, ``pct``, ``pp``, re-exported
here); this module adds what a table cell needs on top of that.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..fmt import DASH, num, pct, pp, spread  # noqa: F401  (pct, pp: re-exported for the table modules)
from ..records import encode

DAGGER = "†"  # cosine or ρ measured while (b) fired
STALE = "‡"  # value from an earlier epoch: ρ and the null band run on a cadence
DEGENERATE_NOTE = (f"{DAGGER} measured while (b) fired (in {{k}} of {{n}} runs): reference at the floor, "
                   "not credit quality")


def lam_cell(lam: float) -> str:
    return "0" if not lam else f"{lam:g}"


@dataclass(frozen=True)
class Stat:
    """Mean and std (ddof = 1) over the values that exist; NaN and inf propagate."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return cls(None, None, 0)
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return cls(mean, std, len(vals))

    def cell(self, fmt: Callable[[float | None], str] = num, n_row: int | None = None) -> str:
        """``mean ± std``; one value alone (there is no std); "(n=k)" behind it when it is
        over fewer runs than ``n_row``, the row's n (which its own column shows)."""
        if self.n == 0:
            return DASH
        mean = fmt(self.mean)
        if self.n == 1:
            text = mean
        else:
            std = spread(mean, self.std) if fmt is num else fmt(self.std).lstrip("+")
            std = "0" if std.replace("0", "").strip(".") == "" else std  # 0 to the digits shown: pct, pp too
            text = f"{mean} ± {std}"
        return text if n_row is None or self.n >= n_row else f"{text} (n={self.n})"

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def n_cell(n: int, planned: int) -> str:
    """A row's n: the runs with at least one epoch, "k/N" while fewer than the N planned have one."""
    return str(n) if n >= planned else f"{n}/{planned}"


def mark(cell: str, flag: bool, symbol: str) -> str:
    return f"{cell} {symbol}" if flag and cell != DASH else cell


# a number as ``fmt.num``/``pct``/``pp`` print it (a ratio after "×", percentage points with
# "pp" behind), optionally "± std", then what a cell adds behind it: "(n=k)", the layer
# table's "(noise)", the † and ‡ markers; or a row's n as "k/N" (``n_cell``)
_NUMBER = r"[+\-−]?(?:\d+(?:\.\d*)?(?:e[+\-]?\d+)?|nan|inf)"
_NUMERIC_CELL = re.compile(rf"×?{_NUMBER}(?: ± {_NUMBER})?(?: pp)?(?: \(n=\d+\))?(?: \(noise\))?"
                           rf"(?: [{DAGGER}{STALE}])*|\d+/\d+")
# columns of words whatever their cells hold (a "status" or "verdict" column of dashes is still text)
TEXT_COLUMNS = frozenset({"model", "method", "run", "status", "verdict", "diagnostic", "fires when", "reading",
                          "first fire", "(c) mode"})


def numeric_cell(cell: str) -> bool:
    """A cell that shows a number (with its ± std, "(n=k)" and markers), or a row's n."""
    return _NUMERIC_CELL.fullmatch(cell) is not None


def numeric_column(header: str, cells: Iterable[str]) -> bool:
    """Right-aligned in the markdown and LaTeX exports: every cell a number, "—" or empty,
    and the header not one of ``TEXT_COLUMNS``."""
    return header not in TEXT_COLUMNS and all(c in (DASH, "") or numeric_cell(c) for c in cells)


@dataclass(frozen=True)
class ColumnGroup:
    """Columns that belong together when an export splits a wide table (``engine.tables.pages``),
    with the notes that explain them (strings of the table's ``notes``)."""

    key: str  # appended to the table's key for a part: audit-outcome
    title: str  # appended to the table's title for a part: "Audit (1 of 3): outcome"
    headers: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass
class Table:
    """A titled grid of text cells, with notes below it and the raw numbers per row.

    ``groups``: how the columns split when the table is wider than a page; the headers in
    no group are the row's keys (method, λ, n), repeated in every part."""

    key: str  # stable id: audit, layers, penalty, strategies, sensitivity
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    groups: list[ColumnGroup] = field(default_factory=list)

    def numeric(self) -> list[bool]:
        """Per column: does it hold numbers (``numeric_column``)? Exports right-align those."""
        return [numeric_column(h, [row[i] for row in self.rows if i < len(row)]) for i, h in enumerate(self.headers)]

    def to_json(self) -> dict[str, Any]:
        return encode({"key": self.key, "title": self.title, "headers": self.headers, "rows": self.rows,
                       "notes": self.notes, "data": self.data})
