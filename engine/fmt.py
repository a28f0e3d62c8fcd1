"""How a number becomes text, in one place: tables, markdown, alerts and the console."""
from __future__ import annotations

import math
import re

DASH = "—"


def nonfinite(v: float) -> str | None:
    """The one spelling of a non-finite number on screen and in reports ("nan", "inf", "−inf");
    None for a finite one. (Record files spell them as JSON strings: engine/records.py.)"""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "−inf"
    return None


def num(v: float | None) -> str:
    """3 significant digits; scientific outside [1e-3, 1e4); nan/inf/−inf spelled out."""
    if v is None:
        return DASH
    odd = nonfinite(v)
    if odd is not None:
        return odd
    a = abs(v)
    if a == 0:
        return "0"
    if 1e-3 <= a < 1e4:
        digits = max(0, 2 - math.floor(math.log10(a)))
        text = f"{v:.{digits}f}"
        # 0.9996 rounds up to 1.000: drop the digit the carry added, keeping 3 significant
        return f"{v:.{digits - 1}f}" if digits and abs(float(text)) >= 10 ** (math.floor(math.log10(a)) + 1) else text
    mantissa, exp = f"{v:.2e}".split("e")
    return f"{mantissa}e{int(exp)}"


def pct(v: float | None) -> str:
    """A fraction as percent with 2 decimals (accuracy), without the % sign: a column header
    or the caller says it (``acc %``, ``76.94%``)."""
    return DASH if v is None else (num(v) if not math.isfinite(v) else f"{100 * v:.2f}")


def pp(v: float | None) -> str:
    """A difference of fractions in signed percentage points, 2 decimals (gap to the baseline,
    the (d) margin), without the unit."""
    return DASH if v is None else (num(v) if not math.isfinite(v) else f"{100 * v:+.2f}")


def spread(mean_text: str, std: float | None) -> str:
    """The std behind a mean ``num`` printed as ``mean_text``: ``num(std)``, but never to more
    decimals than the mean shows (``9.07 ± 0.20``, not ``9.07 ± 0.199``), and ``0`` when it is
    0 to those decimals (``1.00 ± 0``, not ``1.00 ± 2.48e-16``: the seeds agree to the digits
    shown). A mean in scientific notation, non-finite, or an exact 0 (which shows no
    digits) keeps ``num(std)``."""
    text = num(std)
    fixed = re.fullmatch(r"[+\-]?\d+(\.\d+)?", mean_text) is not None
    if std is None or not math.isfinite(std) or mean_text == "0" or not fixed:
        return text
    decimals = len(mean_text.partition(".")[2])
    if "e" in text or len(text.partition(".")[2]) > decimals:
        text = f"{abs(std):.{decimals}f}"
    return "0" if float(text) == 0 else text


def duration(seconds: float) -> str:
    """A wall-clock span as people read it: 45 s, 12 min, 1 h 05 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m = round(s / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"
