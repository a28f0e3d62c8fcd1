"""How a number becomes text, in one place: tables, markdown, alerts and the console."""
from __future__ import annotations

import math

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


def duration(seconds: float) -> str:
    """A wall-clock span as people read it: 45 s, 12 min, 1 h 05 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m = round(s / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"
