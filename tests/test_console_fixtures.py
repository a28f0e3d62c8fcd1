"""Hand-made audit directories for the console tests and snapshots (no training).

``write_fixture_audit`` writes config.yaml and records.jsonl files exactly as the
engine lays them out, with values chosen to exercise every marking: a healthy BP
run, a DFA run whose residual stream explodes until its reference gradient sits at
the floor (degenerate, (a) and (b) fire, then ‖g_L‖ = 0), an FA run that loses to
the frozen baseline and ends with NaN (diverged), and a penalty rerun of the DFA run.
"""
from __future__ import annotations

import math
from pathlib import Path

from engine.config import load_config
from engine.records import End, Epoch, Header, Start
from engine.runstore import RECORDS, write_config
from engine.verdicts import evaluate
from tests.conftest import tiny

TINY = tiny("methods=[dfa,frozen]")
FIXTURE_SETS = ["dataset=synthetic", "epochs=5", "L=2", "seeds=[42]", "methods=[bp,fa,dfa,frozen]"]
FIXTURE_TIME = "2026-01-01T00:00:00+00:00"


def record(epoch: int, acc: float, base: float | None, h: list[float], g: list[float], cos: list[float],
           stability: float, null: bool, rho: bool = True) -> Epoch:
    growth = max(h[i] / h[i - 1] for i in range(1, len(h)))
    return Epoch(epoch=epoch, test_acc=acc, test_loss=1.0, train_loss=1.0, lr=1e-3, h_norm=h, g_norm=g,
                 a_norm=[0.5 * x for x in h], cos=cos, cos_std=[0.2] * len(cos), cos_excluded=[0] * len(cos),
                 growth=growth, g_L=g[-1], stability=stability, rho=[c * 0.9 for c in cos] if rho else None,
                 null_mean=[0.01] * len(cos) if null else None, null_std=[0.06] * len(cos) if null else None,
                 gamma=sum(cos) / len(cos), deep_cos=sum(cos[1:]) / (len(cos) - 1),
                 deep_rho=sum(cos[1:]) / (len(cos) - 1) * 0.9 if rho else None, baseline_acc=base,
                 train_s=0.1, time=FIXTURE_TIME)


def runs(th) -> dict[str, tuple[Header, list[Epoch], End | None]]:
    frozen_acc = [0.20, 0.24, 0.26, 0.27, 0.28]
    out: dict[str, tuple[Header, list[Epoch], End | None]] = {}

    def add(rid: str, method: str, penalty: float, parent: str | None, recs: list[Epoch], end: str | None) -> None:
        header = Header(run_id=rid, method=method, seed=42, penalty=penalty, parent=parent, epochs=5,
                        dataset="synthetic", created=FIXTURE_TIME)
        recs = [evaluate(r, th) for r in recs]
        tail = None if end is None else End(status=end, epoch=recs[-1].epoch, time=FIXTURE_TIME)
        out[rid] = (header, recs, tail)

    add("frozen-s42", "frozen", 0.0, None,
        [record(e, frozen_acc[e - 1], None, [2.0, 2.1, 2.2], [1e-3, 9e-4, 8e-4], [1.0, 1.0, 1.0], 0.1, False)
         for e in range(1, 6)], "finished")
    add("bp-s42", "bp", 0.0, None,
        [record(e, frozen_acc[e - 1] + 0.1 * e, frozen_acc[e - 1], [2.0, 2.5, 3.0], [1e-3, 8e-4, 7e-4],
                [1.0, 1.0, 1.0], 0.12, False) for e in range(1, 6)], "finished")
    dfa_h = [[2.0, 3.0, 4.0], [2.0, 40.0, 300.0], [2.0, 900.0, 6e4], [2.0, 4e4, 3e6], [2.0, 4e6, 1e8]]
    dfa_g = [[1e-3, 5e-4, 3e-4], [1e-3, 1e-5, 2e-6], [1e-3, 1e-7, 3e-8], [1e-3, 1e-8, 1e-9], [1e-3, 1e-9, 0.0]]
    add("dfa-s42", "dfa", 0.0, None,
        [record(e, 0.30 + 0.005 * e, frozen_acc[e - 1], dfa_h[e - 1], dfa_g[e - 1], [0.4, 0.02, -0.01], 0.45,
                True, rho=e % 2 == 1) for e in range(1, 6)], "finished")
    fa = [record(e, frozen_acc[e - 1] - 0.02, frozen_acc[e - 1], [2.0, 2.4, 2.9], [1e-3, 7e-4, 5e-4],
                 [0.3, 0.05, 0.01], 0.2, True) for e in range(1, 4)]
    fa[-1].h_norm[-1] = math.nan
    fa[-1].growth = math.nan
    add("fa-s42", "fa", 0.0, None, fa, "diverged")
    add("dfa-lam0.01-s42", "dfa", 0.01, "dfa-s42",
        [record(e, 0.34 + 0.01 * e, frozen_acc[e - 1], [2.0, 2.6, 3.1], [1e-3, 6e-4, 4e-4], [0.35, 0.1, 0.08],
                0.2, True) for e in range(1, 4)], None)
    return out


def write_fixture_audit(path: Path) -> Path:
    """An audit directory nobody trains, with the runs above; returns its path."""
    cfg = load_config(None, FIXTURE_SETS)
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, cfg.dump())
    for rid, (header, recs, end) in runs(cfg.thresholds).items():
        (path / rid).mkdir(exist_ok=True)
        lines = [header, Start(epoch=0, time=FIXTURE_TIME), *recs] + ([end] if end else [])
        (path / rid / RECORDS).write_text("".join(r.dumps() + "\n" for r in lines), encoding="utf-8")
    return path
