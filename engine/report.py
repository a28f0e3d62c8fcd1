"""Run summaries from the records alone: what ``export --format json`` prints and the
tables build on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .audit import Audit
from .runstore import RunLog, encode
from .verdicts import Verdict, verdict


@dataclass
class RunSummary:
    log: RunLog
    status: str
    verdict: Verdict

    @property
    def final(self) -> dict[str, Any] | None:
        return self.log.epochs[-1] if self.log.epochs else None

    def to_json(self) -> dict[str, Any]:
        h = self.log.header or {}
        final = self.final
        return {
            "run_id": self.log.run_id, "method": self.log.method, "seed": self.log.seed,
            "penalty": self.log.penalty, "parent": h.get("parent"), "status": self.status,
            "epochs_done": final["epoch"] if final else 0, "epochs": self.log.total_epochs,
            "message": (self.log.end or {}).get("message", ""),
            "final": final, "fired": list(final["fired"]) if final else [],
            "first_fire": self.verdict.first_fire, "verdict": self.verdict.label,
            "verdict_detail": self.verdict.to_json(),
        }


def summarize(audit: Audit) -> list[RunSummary]:
    live = audit.is_live()
    out = []
    for log in audit.logs():
        if log.header is None:
            continue  # planned but never started
        out.append(RunSummary(log, log.status(live), verdict(log.epochs)))
    return out


def export_json(audit: Audit) -> dict[str, Any]:
    """One JSON-ready document (non-finite floats encoded as "NaN"/"Infinity"/"-Infinity")."""
    from .tables import audit_tables  # tables builds on this module: import at call time

    cfg = audit.cfg
    summaries = summarize(audit)
    doc = {
        "audit": str(audit.path), "preset": cfg.name, "dataset": cfg.dataset, "seeds": cfg.seeds,
        "thresholds": cfg.thresholds.model_dump(), "config": cfg.dump(),
        "runs": [s.to_json() for s in summaries],
        "tables": [t.to_json() for t in audit_tables(summaries, cfg)],
    }
    return encode(doc)
