"""The penalty sweep: λ against the Mode-1 numbers, for the methods that have penalty reruns."""
from __future__ import annotations

from ..config import AuditConfig
from ..fmt import DASH, num
from .cells import DAGGER, STALE, Stat, Table, lam_cell, mark, n_cell, pct
from .runs import (
    Footnotes,
    Source,
    config_of,
    final_stat,
    group_model,
    group_status,
    group_verdict,
    groups,
    model_cells,
    model_headers,
    views,
)

HEADERS = ["method", "λ", "n", "acc %", "‖h_L‖", "‖g_L‖", "deep cos", "deep ρ", "verdict"]
LAMBDA_NOTE = "λ · Σ_l mean_n ‖f_l‖² added to the block objectives; λ = 0 is the unpenalised run."


def penalty_table(runs: Source, cfg: AuditConfig | None = None) -> Table:
    """λ against the Mode-1 numbers, per method that has penalty reruns (λ = 0: the unpenalised run)."""
    cfg = cfg or config_of(runs)
    all_groups = groups(views(runs, cfg), cfg)
    swept = {(group_model(cfg, g), m) for m, lam, g in all_groups if lam}
    rows, data, foot = [], [], Footnotes("deep ρ")
    for method, lam, group in all_groups:
        live = [r for r in group if r.final]
        if (group_model(cfg, group), method) not in swept:
            continue
        if not live:  # planned, queued or not started: listed, so the sweep never looks complete
            rows.append([*model_cells(cfg, group), method, lam_cell(lam), n_cell(0, len(group)), *[DASH] * 5,
                         group_status(group)])
            data.append({"model": group_model(cfg, group), "method": method, "penalty": lam, "n": 0,
                         "planned": len(group), "status": group_status(group)})
            continue
        n = len(live)
        degen, rho = foot.group(live, "deep_rho")
        stats = {"acc": final_stat(live, lambda f: f.test_acc), "h_L": final_stat(live, lambda f: f.h_L),
                 "g_L": final_stat(live, lambda f: f.g_L), "deep_cos": final_stat(live, lambda f: f.deep_cos),
                 "deep_rho": Stat.of(v for v, _ in rho)}
        rows.append([*model_cells(cfg, group), method, lam_cell(lam), n_cell(n, len(group)),
                     stats["acc"].cell(pct, n), stats["h_L"].cell(num, n), stats["g_L"].cell(num, n),
                     mark(stats["deep_cos"].cell(num, n), degen, DAGGER),
                     mark(mark(stats["deep_rho"].cell(num, n), degen, DAGGER), any(o for _, o in rho), STALE),
                     group_verdict(group)])
        data.append({"model": group_model(cfg, group), "method": method, "penalty": lam, "n": n,
                     "planned": len(group), **{k: s.to_json() for k, s in stats.items()}})
    marked = foot.notes(cfg)
    notes = [LAMBDA_NOTE, *marked] if rows else ["no penalty reruns in this audit."]
    # never split (no column groups): λ is read against accuracy, the Mode-1 numbers and the verdict at once
    return Table("penalty", "Penalty sweep", model_headers(cfg) + HEADERS, rows, notes, data)
