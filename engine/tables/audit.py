"""The audit table: one row per method and λ with the headline numbers, the verdict and first fires."""
from __future__ import annotations

from ..config import AuditConfig
from ..fmt import num
from ..verdicts import alert_rule
from .cells import DAGGER, STALE, Stat, Table, lam_cell, mark, pct, pp
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
    model_cells,
    model_headers,
    submode_cell,
    views,
)

HEADERS = ["method", "λ", "n", "status", "acc %", "gap pp", "Γ", "deep cos", "deep ρ", "‖h_L‖", "‖g_L‖",
           "max growth", "stability", "verdict", "first fire (epoch, per seed)"]


def audit_table(runs: Source, cfg: AuditConfig | None = None) -> Table:
    """One row per method and λ: headline numbers over seeds, the verdict and first fires."""
    cfg = cfg or config_of(runs)
    rows, data, foot = [], [], Footnotes("deep ρ")
    for method, lam, group in groups(views(runs, cfg), cfg):
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
        rows.append([*model_cells(cfg, group), method, lam_cell(lam), str(n), group_status(group),
                     stats["acc"].cell(pct, n),
                     stats["gap"].cell(pp, n), mark(stats["gamma"].cell(num, n), degen, DAGGER),
                     mark(stats["deep_cos"].cell(num, n), degen, DAGGER),
                     mark(mark(stats["deep_rho"].cell(num, n), degen, DAGGER), any(o for _, o in rho), STALE),
                     stats["h_L"].cell(num, n), stats["g_L"].cell(num, n), stats["growth"].cell(num, n),
                     f"{stats['stability'].cell(num, n)} {submode}".strip(), group_verdict(group),
                     first_fire_cell(group)])
        data.append({"model": group_model(cfg, group), "method": method, "penalty": lam, "n": n,
                     "runs": [r.log.run_id for r in group],
                     "seeds": [r.log.seed for r in live], "degenerate": degen, "submode": submode,
                     "verdicts": [r.verdict.to_json() for r in live], **{k: s.to_json() for k, s in stats.items()}})
    notes = ["mean ± std over seeds (ddof = 1); n = seeds with at least one epoch; one seed shows (n=1) "
             "instead of a std; gap = accuracy − frozen baseline of the same seed and epoch.",
             "first fire lists every walk-back diagnostic that has ever fired; the verdict reads the latest "
             "epoch only, so a run that recovered is TRUSTWORTHY with a first fire.",
             f"alerts: {alert_rule(cfg.thresholds)}."]
    notes += foot.notes(cfg)
    if "frozen" not in cfg.methods:
        notes.append("no frozen baseline in this audit: (d) and the gap cannot be measured, so no run reads "
                     "TRUSTWORTHY (UNVERIFIED at best).")
    elif any(d["method"] != "frozen" and d["gap"]["n"] < d["n"] for d in data):
        notes.append("gap — : the frozen run of that seed has no record at that epoch (failed, or not trained "
                     "that far), so (d) cannot be measured there: a run whose last epoch has no baseline reads "
                     "UNVERIFIED, never TRUSTWORTHY.")
    return Table("audit", "Audit", model_headers(cfg) + HEADERS, rows, notes, data)
