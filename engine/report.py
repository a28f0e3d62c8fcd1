"""The JSON export (``faeval-tui export --format json``): the audit's runs, each with its
final record and verdict, and every table's cells and raw numbers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .records import encode
from .tables import audit_tables, audit_views

if TYPE_CHECKING:
    from .audit import Audit


def export_json(audit: Audit) -> dict[str, Any]:
    """One JSON-ready document (non-finite floats encoded as "NaN"/"Infinity"/"-Infinity")."""
    cfg = audit.cfg
    runs = audit_views(audit)
    doc = {
        "audit": str(audit.path), "preset": cfg.name, "dataset": cfg.dataset, "seeds": cfg.seeds,
        "thresholds": cfg.thresholds.model_dump(), "config": cfg.dump(),
        "runs": [r.to_json() for r in runs],
        "tables": [t.to_json() for t in audit_tables(runs, cfg)],
    }
    return encode(doc)
