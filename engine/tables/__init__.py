"""The audit's tables, built from run records alone: one function per table.

The console (Textual DataTable) and the markdown export both consume ``Table``: the
cells are already text, formatted here and only here, and ``data`` keeps the raw
numbers behind them for the JSON export. Every builder takes an ``Audit`` or a list of
runs (``RunLog`` or ``RunView``) so the console can call it on in-memory logs while an
audit trains. Column definitions: docs/tables.md.

Over seeds a cell is mean ± std (ddof = 1) of the runs' latest epoch records; a cell
over a single value shows it alone, and "(n=k)" only when it is over fewer runs than its
row's n; the row's n reads "k/N" while only k of its N planned runs have an epoch.
Verdicts are re-evaluated from the records under the thresholds in ``cfg``
(``verdicts.evaluate``), so a table never disagrees with the declared thresholds.

    cells        Stat, n_cell, mark, Table, ColumnGroup, the † and ‡ markers (pct, pp from fmt)
    runs         RunView (one run under the thresholds), grouping by method and λ, footnotes
    audit        audit_table          layers       layer_table
    penalty      penalty_table        strategies   strategy_table
    sensitivity  sensitivity_table
    pages        page_tables: the wide tables split for the markdown and LaTeX exports
"""
from __future__ import annotations

from ..config import AuditConfig
from ..fmt import DASH, num
from .audit import audit_table
from .cells import DAGGER, DEGENERATE_NOTE, STALE, ColumnGroup, Stat, Table, lam_cell, mark, n_cell, pct, pp
from .layers import layer_table
from .pages import PAGE_WIDTH, page_tables
from .penalty import penalty_table
from .runs import (
    Footnotes,
    RunLike,
    RunView,
    Source,
    audit_views,
    config_of,
    first_fire_cell,
    group_status,
    group_verdict,
    groups,
    has_penalties,
    n_classes,
    submode_cell,
    views,
)
from .sensitivity import sensitivity_row, sensitivity_table
from .strategies import STRATEGIES, STRATEGY_HEADERS, strategy_table, strategy_walks_back


def audit_tables(source: Source, cfg: AuditConfig | None = None) -> list[Table]:
    """Every table of the report, in reading order."""
    cfg = cfg or config_of(source)
    vs = views(source, cfg)  # read the runs once for all five tables
    return [audit_table(vs, cfg), layer_table(vs, cfg), penalty_table(vs, cfg), strategy_table(vs, cfg),
            sensitivity_table(vs, cfg)]


__all__ = ["DAGGER", "DASH", "DEGENERATE_NOTE", "PAGE_WIDTH", "STALE", "STRATEGIES", "STRATEGY_HEADERS",
           "ColumnGroup", "Footnotes", "RunLike", "RunView", "Source", "Stat", "Table", "audit_table",
           "audit_tables", "audit_views", "config_of", "first_fire_cell", "group_status", "group_verdict", "groups",
           "has_penalties", "lam_cell", "layer_table", "mark", "n_cell", "n_classes", "num", "page_tables", "pct",
           "penalty_table", "pp", "sensitivity_row", "sensitivity_table", "strategy_table", "strategy_walks_back",
           "submode_cell", "views"]
