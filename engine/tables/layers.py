"""The per-layer table: cos_l against its null band, ρ_l and the three norms, by method or by run."""
from __future__ import annotations

from ..config import AuditConfig
from ..fmt import DASH, num
from ..records import at_layer
from .cells import DAGGER, STALE, ColumnGroup, Stat, Table, lam_cell, mark, n_cell
from .runs import Footnotes, Source, config_of, group_model, groups, has_penalties, model_cells, model_headers, views

NORMS = ("‖h_l‖", "‖g_l‖", "‖a_l‖")
N_NOTE = ("mean ± std over seeds (ddof = 1); n = seeds with at least one epoch, k/N while only k of the N "
          "planned have one; ± 0: the seeds agree to the digits shown; a cell over one run shows its value alone.")


def layer_table(runs: Source, cfg: AuditConfig | None = None, by: str = "method") -> Table:
    """Layer by layer: cos_l, the null band, ρ_l and the three norms.

    ``by="method"``: mean ± std over seeds per method and λ (null band = mean of the
    runs' null means ± mean of their null stds). ``by="run"``: one run per block of
    rows, cos_l ± its std over samples and null mean ± null std of that run.
    """
    cfg = cfg or config_of(runs)
    vs = views(runs, cfg)
    blocks = (groups(vs, cfg) if by == "method"
              else [(r.log.run_id, float(r.log.penalty or 0.0), [r]) for r in vs])
    over = "over seeds" if by == "method" else "over samples"
    # by method, like the audit table: λ only in an audit with penalty reruns; by run it always
    # shows (engine.api's table of one record keeps its layout)
    lam_col = by == "run" or has_penalties(vs, cfg)
    alignment = (f"cos_l ± std ({over})", "null band", "z vs null", "ρ_l")
    headers = model_headers(cfg) + ["method" if by == "method" else "run", *(["λ"] if lam_col else []), "layer",
                                    "n", *alignment, *NORMS]
    rows, data, foot = [], [], Footnotes("ρ_l")
    for name, lam, group in blocks:
        live = [r for r in group if r.final]
        if not live:
            continue
        n = len(live)
        degen, rho = foot.group(live, "rho")
        null_m, null_s = [r.latest("null_mean")[0] for r in live], [r.latest("null_std")[0] for r in live]
        # by run, n is always 1: plain values
        cell = (lambda st: st.cell(num, n)) if by == "method" else (lambda st: num(st.mean))
        for l in range(live[0].final.layers):
            cos_vals = _at([r.final.cos for r in live], l)
            cos = Stat.of(cos_vals)
            if by == "method":
                cos_cell = cell(cos)
            else:  # one run: the spread worth showing is over samples, which the record keeps
                cos_cell = f"{num(cos.mean)} ± {num(_at([live[0].final.cos_std], l)[0])}"
            nm, ns = Stat.of(_at(null_m, l)), Stat.of(_at(null_s, l))
            z = Stat.of(_z(c, m, s) for c, m, s in zip(cos_vals, _at(null_m, l), _at(null_s, l)))
            z_cell = DASH if z.n == 0 else num(z.mean) + (" (noise)" if abs(z.mean) <= 2 else "")
            rho_l = Stat.of(_at([v for v, _ in rho], l))
            stats = {"cos": cos, "null_mean": nm, "null_std": ns, "z": z, "rho": rho_l,
                     "h": Stat.of(_at([r.final.h_norm for r in live], l)),
                     "g": Stat.of(_at([r.final.g_norm for r in live], l)),
                     "a": Stat.of(_at([r.final.a_norm for r in live], l))}
            rows.append([*model_cells(cfg, group), name, *([lam_cell(lam)] if lam_col else []), str(l),
                         n_cell(n, len(group)), mark(cos_cell, degen, DAGGER),
                         DASH if nm.n == 0 else f"{num(nm.mean)} ± {num(ns.mean)}", z_cell,
                         mark(mark(cell(rho_l), degen, DAGGER), any(o for _, o in rho), STALE),
                         cell(stats["h"]), cell(stats["g"]), cell(stats["a"])])
            data.append({"model": group_model(cfg, group), "name": name, "penalty": lam, "layer": l, "n": n,
                         "planned": len(group),
                         **{k: s.to_json() for k, s in stats.items()}})
    null_note = (f"null band: cos_l under {cfg.diagnostics.null_draws} fresh random feedback draws (fa, "
                 "fa_lillicrap, dfa); z vs null = (cos_l − null mean) / null std, and |z| ≤ 2 is marked "
                 "(noise): the training feedback does no better than a random one.")
    marked = foot.notes(cfg)
    notes = ([N_NOTE] if by == "method" else []) + [null_note, *marked]
    col_groups = [ColumnGroup("alignment", "alignment", alignment, (null_note, *marked)),
                  ColumnGroup("norms", "norms", NORMS)]
    return Table("layers", "Per layer" + (" (by run)" if by == "run" else ""), headers, rows, notes, data, col_groups)


def _at(lists: list[list[float] | None], layer: int) -> list[float | None]:
    """Layer ``layer`` of each run's per-layer list."""
    return [at_layer(xs, layer) for xs in lists]


def _z(cos: float | None, mean: float | None, std: float | None) -> float | None:
    if cos is None or mean is None or std is None or not std:
        return None
    return (cos - mean) / std
