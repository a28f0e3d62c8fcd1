"""Reporting strategies S0..S_full: which runs each one walks back at their latest epoch."""
from __future__ import annotations

from ..config import AuditConfig
from ..fmt import num
from ..records import Epoch
from ..verdicts import WALK_BACK
from .cells import DAGGER, Table, mark, pct
from .runs import Source, config_of, groups, n_classes, views

STRATEGIES = ("S0", "S1", "S2", "S3", "S4", "S5", "S_full")
STRATEGY_HEADERS = ("S0 acc", "S1 acc+Γ", "S2 S1+(a)", "S3 S1+(b)", "S4 S1+(c)", "S5 S1+(d)", "S_full")


def strategy_walks_back(final: Epoch, chance: float) -> dict[str, bool]:
    """Which reporting strategy walks this final record back (a NaN never certifies health)."""
    fired = set(final.fired)
    s0 = not final.test_acc > chance
    s1 = s0 or not final.gamma > 0
    out = {"S0": s0, "S1": s1}
    out.update({s: s1 or k in fired for s, k in zip(("S2", "S3", "S4", "S5"), "abcd")})
    out["S_full"] = any(k in fired for k in WALK_BACK)
    return out


def strategy_table(runs: Source, cfg: AuditConfig | None = None) -> Table:
    """Which runs each reporting strategy walks back, at each run's latest epoch."""
    cfg = cfg or config_of(runs)
    chance = 1 / n_classes(cfg)
    vs = [r for _, _, g in groups(views(runs, cfg), cfg) for r in g]
    live = [r for r in vs if r.final]
    headers = ["run", "status", "acc %", "Γ", *STRATEGY_HEADERS]
    rows, data = [], []
    for r in live:
        back = strategy_walks_back(r.final, chance)
        rows.append([r.log.run_id, r.label, pct(r.final.test_acc), mark(num(r.final.gamma), r.final.degenerate, DAGGER),
                     *("back" if back[s] else "ok" for s in STRATEGIES)])
        data.append({"run_id": r.log.run_id, "test_acc": r.final.test_acc, "gamma": r.final.gamma,
                     "walked_back": back})
    y = len(live)
    count = {s: sum(d["walked_back"][s] for d in data) for s in STRATEGIES}
    if live:
        rows.append(["walked back", "", "", "", *(f"{count[s]} of {y}" for s in STRATEGIES)])
    notes = [f"walked back by S1: {count['S1']} of {y}, by S_full: {count['S_full']} of {y}",
             f"S0 walks back only at or below chance (1/{n_classes(cfg)}); S1 also when Γ ≤ 0; S2–S5 add (a), "
             "(b), (c) drift, (d) to S1; S_full is the protocol's verdict ((a), (b) or (d) at the latest epoch)."]
    if any(r.final.degenerate for r in live):
        notes.append(f"{DAGGER} Γ measured while (b) fired: reference at the floor, not credit quality")
    if len(live) < len(vs):
        notes.append(f"{len(vs) - len(live)} run(s) without a finished epoch are not listed.")
    return Table("strategies", "Reporting strategies", headers, rows, notes, data)
