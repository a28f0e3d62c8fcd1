"""The audit table: one row per method and λ with the headline numbers, the verdict and first fires."""
from __future__ import annotations

from ..config import AuditConfig
from ..fmt import DASH, num
from ..verdicts import alert_rule
from .cells import DAGGER, STALE, ColumnGroup, Stat, Table, lam_cell, mark, n_cell, pct, pp
from .runs import (
    Footnotes,
    Source,
    config_of,
    final_stat,
    first_fire_cell,
    group_model,
    group_status,
    group_verdict,
    groups,
    has_penalties,
    model_cells,
    model_headers,
    submode_cell,
    views,
)

OUTCOME = ("status", "acc %", "gap pp", "verdict", "first fire")
ALIGNMENT = ("Γ", "deep cos", "deep ρ")
SCALE = ("‖h_L‖", "‖g_L‖", "max growth", "stability", "(c) mode")
HEADERS = ["method", "λ", "n", *OUTCOME, *ALIGNMENT, *SCALE]

N_NOTE = ("mean ± std over seeds (ddof = 1) of each run's latest epoch; n = seeds with at least one epoch, "
          "k/N while only k of the N planned have one; ± 0: the seeds agree to the digits shown; a cell over one "
          "run shows its value alone, and (n=k) marks a cell over fewer runs than its row's n.")
GAP_NOTE = "gap = accuracy − frozen baseline of the same seed and epoch, in percentage points."
FIRST_NOTE = ("first fire: the epoch each walk-back diagnostic first fired, per seed in seed order; the verdict "
              "reads the latest epoch only, so a run that recovered is TRUSTWORTHY with a first fire.")
MODE_NOTE = ("(c) mode: noise when stability ≤ the (c) threshold, drift above it, drift k/N when seeds differ, "
             "unknown when stability is NaN; it labels the walk-back, it never walks a run back alone.")


def audit_table(runs: Source, cfg: AuditConfig | None = None) -> Table:
    """One row per method and λ: headline numbers over seeds, the verdict and first fires."""
    cfg = cfg or config_of(runs)
    vs = views(runs, cfg)
    lam_col = has_penalties(vs, cfg)
    rows, data, foot = [], [], Footnotes("deep ρ")
    for method, lam, group in groups(vs, cfg):
        live = [r for r in group if r.final]
        n = len(live)
        degen, rho = foot.group(live, "deep_rho")
        stats = {
            "acc": final_stat(live, lambda f: f.test_acc),
            "gap": final_stat(live, lambda f: None if f.baseline_acc is None else f.test_acc - f.baseline_acc),
            "gamma": final_stat(live, lambda f: f.gamma),
            "deep_cos": final_stat(live, lambda f: f.deep_cos),
            "deep_rho": Stat.of(v for v, _ in rho),
            "h_L": final_stat(live, lambda f: f.h_L),
            "g_L": final_stat(live, lambda f: f.g_L),
            "growth": final_stat(live, lambda f: f.growth),
            "stability": final_stat(live, lambda f: f.stability),
        }
        submode = submode_cell(live)
        rows.append([*model_cells(cfg, group), method, *([lam_cell(lam)] if lam_col else []), n_cell(n, len(group)),
                     group_status(group), stats["acc"].cell(pct, n), stats["gap"].cell(pp, n), group_verdict(group),
                     first_fire_cell(group),
                     mark(stats["gamma"].cell(num, n), degen, DAGGER),
                     mark(stats["deep_cos"].cell(num, n), degen, DAGGER),
                     mark(mark(stats["deep_rho"].cell(num, n), degen, DAGGER), any(o for _, o in rho), STALE),
                     stats["h_L"].cell(num, n), stats["g_L"].cell(num, n), stats["growth"].cell(num, n),
                     stats["stability"].cell(num, n), submode or DASH])
        data.append({"model": group_model(cfg, group), "method": method, "penalty": lam, "n": n,
                     "planned": len(group), "runs": [r.log.run_id for r in group],
                     "seeds": [r.log.seed for r in live], "degenerate": degen, "submode": submode,
                     "verdicts": [r.verdict.to_json() for r in live], **{k: s.to_json() for k, s in stats.items()}})
    outcome = [GAP_NOTE, FIRST_NOTE, f"alerts: {alert_rule(cfg.thresholds)}."]
    if "frozen" not in cfg.methods:
        outcome.append("no frozen baseline in this audit: (d) and the gap cannot be measured, so no run reads "
                       "TRUSTWORTHY (UNVERIFIED at best).")
    elif any(d["method"] != "frozen" and d["gap"]["n"] < d["n"] for d in data):
        outcome.append("gap — : the frozen run of that seed has no record at that epoch (failed, or not trained "
                       "that far), so (d) cannot be measured there: a run whose last epoch has no baseline reads "
                       "UNVERIFIED, never TRUSTWORTHY.")
    marked = foot.notes(cfg)  # † and ‡: the alignment columns' markers
    notes = [N_NOTE, *outcome, *marked, MODE_NOTE]
    col_groups = [ColumnGroup("outcome", "outcome", OUTCOME, tuple(outcome)),
                  ColumnGroup("alignment", "credit alignment", ALIGNMENT, tuple(marked)),
                  ColumnGroup("scale", "scale, reference and stability", SCALE, (MODE_NOTE,))]
    headers = model_headers(cfg) + [h for h in HEADERS if lam_col or h != "λ"]
    return Table("audit", "Audit", headers, rows, notes, data, col_groups)
