"""Threshold sensitivity of (a) and (b): how far each threshold can move before a verdict changes."""
from __future__ import annotations

import math
from typing import Any

from ..config import AuditConfig, Thresholds
from ..fmt import DASH, num
from ..verdicts import DIAGNOSTICS
from .cells import Table
from .runs import RunView, Source, config_of, views

HEADERS = ["diagnostic", "fires when", "healthy runs", "degenerate runs", "healthy edge", "degenerate edge",
           "thresholds keeping every verdict", "gap ratio", "reading"]


def sensitivity_row(runs: list[RunView], key: str, th: Thresholds) -> dict[str, Any]:
    """Threshold sensitivity of diagnostic ``key`` ("a" or "b") over the runs' latest records.

    A run is *degenerate* for the diagnostic when it fires on its latest record under
    ``th`` (the verdict walks it back via that diagnostic), *healthy* otherwise. The
    healthy edge is the healthy value closest to firing (largest growth for (a),
    smallest ‖g_L‖ for (b)), the degenerate edge the firing value closest to health.
    Thresholds between them (closed on the healthy side) fire on exactly the same
    runs, so every verdict stays. Since both sets come from one threshold, they always
    separate around it; what matters is the gap ratio (upper / lower edge): near 1 the
    verdicts hang on the exact threshold. A NaN value fires at every threshold and is
    counted apart.
    """
    diag = DIAGNOSTICS[key]
    above = diag.comparison == "above"
    live = [r for r in runs if r.final]
    fires = {r.log.run_id: key in r.final.fired for r in live}
    vals: dict[str, float] = {r.log.run_id: getattr(r.final, diag.field) for r in live}  # growth, g_L: always set
    nan = [rid for rid, v in vals.items() if math.isnan(v)]
    healthy = [v for rid, v in vals.items() if not fires[rid]]
    degen = [v for rid, v in vals.items() if fires[rid] and rid not in nan]
    h_edge = (max if above else min)(healthy) if healthy else None
    d_edge = (min if above else max)(degen) if degen else None
    lo, hi = (h_edge, d_edge) if above else (d_edge, h_edge)
    ratio = None
    if lo is not None and hi is not None:
        ratio = hi / lo if lo > 0 else math.inf
    return {"diagnostic": key, "field": diag.field, "threshold": getattr(th, diag.threshold_key),
            "healthy": [rid for rid in vals if not fires[rid]], "degenerate": [rid for rid in vals if fires[rid]],
            "nan_runs": nan, "healthy_edge": h_edge, "degenerate_edge": d_edge, "interval": [lo, hi],
            "gap_ratio": ratio}


def _reading(row: dict[str, Any]) -> str:
    key, h, d = row["diagnostic"], row["healthy_edge"], row["degenerate_edge"]
    side = "threshold" if key == "a" else "floor"
    if not row["healthy"] and not row["degenerate"]:
        text = "no run has an epoch yet"
    elif h is None and d is None:
        text = f"every run fired ({key})"
    elif d is None:
        bound = f"≥ {num(h)}" if key == "a" else f"≤ {num(h)}"
        who = "only NaN runs fired" if row["nan_runs"] else "no run fired"
        text = f"{who} ({key}); any {side} {bound} keeps the verdicts"
    elif h is None:
        bound = f"< {num(d)}" if key == "a" else f"> {num(d)}"
        text = f"every run fired ({key}); any {side} {bound} keeps the verdicts"
    else:
        text = f"separated by a factor {num(row['gap_ratio'])}"
        if row["gap_ratio"] < 2:  # the verdicts hang on the exact threshold
            text += f": barely; moving the {side} by less than ×2 changes a verdict"
    if row["nan_runs"]:
        text += f"; {len(row['nan_runs'])} run(s) with a NaN value fire at any {side}"
    return text


def _interval(row: dict[str, Any]) -> str:
    lo, hi = row["interval"]
    if row["diagnostic"] == "a":  # fires above: healthy ≤ T < degenerate
        return f"[{num(lo) if lo is not None else '0'}, {num(hi) if hi is not None else 'inf'})"
    return f"({num(lo) if lo is not None else '0'}, {num(hi) if hi is not None else 'inf'}]"


def sensitivity_table(runs: Source, cfg: AuditConfig | None = None) -> Table:
    """For (a) and (b): the edges between healthy and degenerate runs and the thresholds that keep every verdict."""
    cfg = cfg or config_of(runs)
    vs = views(runs, cfg)
    rows, data = [], []
    for key in ("a", "b"):
        row = sensitivity_row(vs, key, cfg.thresholds)
        diag = DIAGNOSTICS[key]
        rule = f"{diag.field} {'>' if key == 'a' else '<'} {num(row['threshold'])}"
        ok = bool(row["healthy"] or row["degenerate"])
        rows.append([f"({key}) {diag.name}", rule, str(len(row["healthy"])), str(len(row["degenerate"])),
                     num(row["healthy_edge"]), num(row["degenerate_edge"]), _interval(row) if ok else DASH,
                     num(row["gap_ratio"]), _reading(row)])
        data.append(row)
    notes = ["healthy = the diagnostic does not fire on the run's latest record, degenerate = it fires (the "
             "verdict walks the run back through it). Edges: (a) largest healthy and smallest degenerate growth; "
             "(b) smallest healthy and largest degenerate ‖g_L‖. gap ratio = upper edge / lower edge."]
    return Table("sensitivity", "Threshold sensitivity", HEADERS, rows, notes, data)
