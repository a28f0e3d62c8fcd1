"""Threshold sensitivity of (a), (b) and (d): how far each threshold can move before a verdict changes."""
from __future__ import annotations

import math
from typing import Any

from ..config import AuditConfig, Thresholds
from ..fmt import DASH, num, pp
from ..verdicts import DIAGNOSTICS, needs_baseline
from .cells import Table
from .runs import RunView, Source, config_of, views

HEADERS = ["diagnostic", "fires when", "healthy runs", "degenerate runs", "healthy edge", "degenerate edge",
           "thresholds keeping every verdict", "separation", "reading"]
# the (d) margins, relative to the declared one, at which the table counts the runs (d) fires on
MARGIN_STEPS = (-0.02, -0.01, 0.01, 0.02)
BARELY_PP = 0.01  # (d)'s edges closer than 1 percentage point: the verdicts hang on the exact margin


def depth_gap(run: RunView) -> float | None:
    """What (d) tests, as the gap to the baseline: latest accuracy − its frozen baseline
    (None when the run needs no baseline, or its latest record has none)."""
    f = run.final
    if f is None or not needs_baseline(run.log.method) or f.baseline_acc is None:
        return None
    return f.test_acc - f.baseline_acc


def _depth_fires(run: RunView, margin: float, th: Thresholds) -> bool:
    """(d) on the run's latest record at ``margin``, decided as the verdicts decide it."""
    return DIAGNOSTICS["d"].fires(run.final, th.model_copy(update={"depth_margin": margin}))


def sensitivity_row(runs: list[RunView], key: str, th: Thresholds) -> dict[str, Any]:
    """Threshold sensitivity of diagnostic ``key`` ("a", "b" or "d") over the runs' latest records.

    A run is *degenerate* for the diagnostic when it fires on its latest record under
    ``th`` (the verdict walks it back via that diagnostic), *healthy* otherwise. The
    healthy edge is the healthy value closest to firing (largest growth for (a),
    smallest ‖g_L‖ for (b), smallest gap to the baseline for (d)), the degenerate edge
    the firing value closest to health. Thresholds between them (closed on the healthy
    side) fire on exactly the same runs, so every verdict stays. Since both sets come
    from one threshold, they always separate around it; what matters is the room
    between the edges: their ratio (upper / lower) for (a) and (b), their difference in
    percentage points for (d), whose margin is added to the baseline. A NaN value fires
    at every threshold and is counted apart.

    (d) counts only the runs it can measure: not the frozen baseline itself, nor a run
    whose latest record has no baseline (``unmeasured``). Its row also counts the runs
    (d) would fire on at the margins ``MARGIN_STEPS`` around the declared one (``sweep``).
    """
    diag = DIAGNOSTICS[key]
    above = diag.comparison == "above"
    live = [r for r in runs if r.final]
    if key == "d":
        unmeasured = [r.log.run_id for r in live if depth_gap(r) is None]
        live = [r for r in live if depth_gap(r) is not None]
        vals: dict[str, float] = {r.log.run_id: depth_gap(r) for r in live}
    else:
        unmeasured = []
        vals = {r.log.run_id: getattr(r.final, diag.field) for r in live}  # growth, g_L: always set
    fires = {r.log.run_id: key in r.final.fired for r in live}
    nan = [rid for rid, v in vals.items() if math.isnan(v)]
    healthy = [v for rid, v in vals.items() if not fires[rid]]
    degen = [v for rid, v in vals.items() if fires[rid] and rid not in nan]
    h_edge = (max if above else min)(healthy) if healthy else None
    d_edge = (min if above else max)(degen) if degen else None
    lo, hi = (h_edge, d_edge) if above else (d_edge, h_edge)
    ratio = room = None
    if lo is not None and hi is not None:
        if key == "d":
            room = hi - lo
        else:
            ratio = hi / lo if lo > 0 else math.inf
    row = {"diagnostic": key, "field": "gap" if key == "d" else diag.field,
           "threshold": getattr(th, diag.threshold_key),
           "healthy": [rid for rid in vals if not fires[rid]], "degenerate": [rid for rid in vals if fires[rid]],
           "nan_runs": nan, "healthy_edge": h_edge, "degenerate_edge": d_edge, "interval": [lo, hi],
           "gap_ratio": ratio}
    if key == "d":
        margins = [th.depth_margin + step for step in MARGIN_STEPS]
        row.update({"gap_pp": None if room is None else 100 * room, "unmeasured": unmeasured,
                    "sweep": [{"margin": m, "degenerate": sum(_depth_fires(r, m, th) for r in live)}
                              for m in sorted({*margins, th.depth_margin})]})
    return row


def _reading(row: dict[str, Any]) -> str:
    key, h, d = row["diagnostic"], row["healthy_edge"], row["degenerate_edge"]
    side = {"a": "threshold", "b": "floor", "d": "margin"}[key]
    show = (lambda v: f"{pp(v)} pp") if key == "d" else num
    if not row["healthy"] and not row["degenerate"]:
        text = ("no run has a baseline to measure (d) against" if key == "d" and row["unmeasured"]
                else "no run has an epoch yet")
    elif h is None and d is None:
        text = f"every run fired ({key})"
    elif d is None:
        bound = f"≥ {show(h)}" if key == "a" else f"≤ {show(h)}"
        who = "only NaN runs fired" if row["nan_runs"] else "no run fired"
        text = f"{who} ({key}); any {side} {bound} keeps the verdicts"
    elif h is None:
        bound = f"< {show(d)}" if key == "a" else f"> {show(d)}"
        text = f"every run fired ({key}); any {side} {bound} keeps the verdicts"
    elif key == "d":
        text = f"separated by {row['gap_pp']:.2f} pp"
        if round(row["gap_pp"], 2) < 100 * BARELY_PP:  # as shown: 1.00 pp is not "barely"
            text += f": barely; moving the margin by less than {100 * BARELY_PP:.0f} pp changes a verdict"
    else:
        text = f"separated by a factor {num(row['gap_ratio'])}"
        if row["gap_ratio"] < 2:  # the verdicts hang on the exact threshold
            text += f": barely; moving the {side} by less than ×2 changes a verdict"
    if row["nan_runs"]:
        text += f"; {len(row['nan_runs'])} run(s) with a NaN value fire at any {side}"
    return text


def sweep_note(row: dict[str, Any]) -> str | None:
    """(d)'s row in words at the margins around the declared one, and the runs it does not count."""
    n = len(row["healthy"]) + len(row["degenerate"])
    parts = []
    if n:
        parts.append("(d) at margins " + ", ".join(pp(s["margin"]) for s in row["sweep"]) + " pp fires on "
                     + ", ".join(str(s["degenerate"]) for s in row["sweep"]) + f" of the {n} runs it measures")
    if row["unmeasured"]:
        parts.append(f"{len(row['unmeasured'])} run(s) without a baseline at their latest epoch (the frozen runs "
                     "themselves, or a baseline that failed or lags) are not counted for (d)")
    return "; ".join(parts) + "." if parts else None


def _interval(row: dict[str, Any]) -> str:
    lo, hi = row["interval"]
    if row["diagnostic"] == "a":  # fires above: healthy ≤ T < degenerate
        return f"[{num(lo) if lo is not None else '0'}, {num(hi) if hi is not None else 'inf'})"
    if row["diagnostic"] == "d":  # fires below, on a gap that can be negative
        return f"({pp(lo) if lo is not None else '−inf'}, {pp(hi) if hi is not None else 'inf'}] pp"
    return f"({num(lo) if lo is not None else '0'}, {num(hi) if hi is not None else 'inf'}]"


def _separation(row: dict[str, Any]) -> str:
    if row["diagnostic"] == "d":
        return DASH if row["gap_pp"] is None else f"{row['gap_pp']:.2f} pp"
    return DASH if row["gap_ratio"] is None else f"×{num(row['gap_ratio'])}"


def _rule(row: dict[str, Any]) -> str:
    if row["diagnostic"] == "d":
        return f"gap < {pp(row['threshold'])} pp"
    diag = DIAGNOSTICS[row["diagnostic"]]
    return f"{diag.field} {'>' if diag.comparison == 'above' else '<'} {num(row['threshold'])}"


def sensitivity_table(runs: Source, cfg: AuditConfig | None = None) -> Table:
    """For (a), (b) and (d): the edges between healthy and degenerate runs and the thresholds
    that keep every verdict."""
    cfg = cfg or config_of(runs)
    vs = views(runs, cfg)
    rows, data = [], []
    for key in ("a", "b", "d"):
        row = sensitivity_row(vs, key, cfg.thresholds)
        edge = (lambda v: DASH if v is None else f"{pp(v)} pp") if key == "d" else num
        ok = bool(row["healthy"] or row["degenerate"])
        rows.append([f"({key}) {DIAGNOSTICS[key].name}", _rule(row), str(len(row["healthy"])),
                     str(len(row["degenerate"])), edge(row["healthy_edge"]), edge(row["degenerate_edge"]),
                     _interval(row) if ok else DASH, _separation(row), _reading(row)])
        data.append(row)
    notes = ["healthy = the diagnostic does not fire on the run's latest record, degenerate = it fires (the "
             "verdict walks the run back through it). Edges: (a) largest healthy and smallest degenerate growth; "
             "(b) smallest healthy and largest degenerate ‖g_L‖; (d) smallest healthy and largest degenerate gap "
             "(accuracy − frozen baseline, in percentage points). separation = upper edge / lower edge for (a) "
             "and (b), upper − lower edge for (d), whose margin is added to the baseline."]
    sweep = sweep_note(data[-1])
    notes += [sweep] if sweep else []
    return Table("sensitivity", "Threshold sensitivity", HEADERS, rows, notes, data)
