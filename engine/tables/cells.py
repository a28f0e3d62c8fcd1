"""Table cells: percent and percentage points, mean ± std over seeds, markers, the ``Table`` itself.

Numbers themselves become text in ``engine/fmt.py``; this module adds what a table
cell needs on top of that.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..fmt import DASH, num
from ..records import encode

DAGGER = "†"  # cosine or ρ measured while (b) fired
STALE = "‡"  # value from an earlier epoch: ρ and the null band run on a cadence
DEGENERATE_NOTE = (f"{DAGGER} measured while (b) fired (in {{k}} of {{n}} runs): reference at the floor, "
                   "not credit quality")


def pct(v: float | None) -> str:
    """A fraction as percent with 2 decimals (accuracy)."""
    return DASH if v is None else (num(v) if not math.isfinite(v) else f"{100 * v:.2f}")


def pp(v: float | None) -> str:
    """A difference of fractions in signed percentage points (gap to the baseline)."""
    return DASH if v is None else (num(v) if not math.isfinite(v) else f"{100 * v:+.2f}")


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
        if self.n == 0:
            return DASH
        if self.n == 1:
            return f"{fmt(self.mean)} (n=1)"
        text = f"{fmt(self.mean)} ± {fmt(self.std).lstrip('+')}"
        return text if n_row in (None, self.n) else f"{text} (n={self.n})"

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mark(cell: str, flag: bool, symbol: str) -> str:
    return f"{cell} {symbol}" if flag and cell != DASH else cell


# a number as ``fmt.num``/``pct``/``pp`` print it, optionally "± std", then what a cell adds
# behind it: "(n=k)", the † and ‡ markers, (c)'s sub-mode ("noise", "drift 1/3", "(noise)")
_NUMBER = r"[+\-−]?(?:\d+(?:\.\d*)?(?:e[+\-]?\d+)?|nan|inf)"
_NUMERIC_CELL = re.compile(rf"{_NUMBER}(?: ± {_NUMBER})?(?: \(n=\d+\))?(?: (?:noise|drift(?: \d+/\d+)?|unknown|"
                           rf"\(noise\)))?(?: [{DAGGER}{STALE}])*")
# columns of words whatever their cells hold (a "status" or "verdict" column of dashes is still text)
TEXT_COLUMNS = frozenset({"model", "method", "run", "status", "verdict", "diagnostic", "fires when", "reading",
                          "first fire (epoch, per seed)"})


def numeric_cell(cell: str) -> bool:
    """A cell that shows a number (with its ± std, "(n=k)", markers and sub-mode label)."""
    return _NUMERIC_CELL.fullmatch(cell) is not None


def numeric_column(header: str, cells: Iterable[str]) -> bool:
    """Right-aligned in the markdown and LaTeX exports: every cell a number, "—" or empty,
    and the header not one of ``TEXT_COLUMNS``."""
    return header not in TEXT_COLUMNS and all(c in (DASH, "") or numeric_cell(c) for c in cells)


@dataclass
class Table:
    """A titled grid of text cells, with notes below it and the raw numbers per row."""

    key: str  # stable id: audit, layers, penalty, strategies, sensitivity
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)

    def numeric(self) -> list[bool]:
        """Per column: does it hold numbers (``numeric_column``)? Exports right-align those."""
        return [numeric_column(h, [row[i] for row in self.rows if i < len(row)]) for i, h in enumerate(self.headers)]

    def to_json(self) -> dict[str, Any]:
        return encode({"key": self.key, "title": self.title, "headers": self.headers, "rows": self.rows,
                       "notes": self.notes, "data": self.data})
