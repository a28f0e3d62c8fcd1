"""The audit's tables, built from run records alone: one function per table.

The console (Textual DataTable) and the markdown export both consume ``Table``: the
cells are already text, formatted here and only here, and ``data`` keeps the raw
numbers behind them for the JSON export. Every builder takes a list of runs
(``RunSummary``, ``RunLog`` or ``RunView``) so the console can call it on in-memory
logs while an audit trains. Column definitions: docs/tables.md.

Over seeds a cell is mean ± std (ddof = 1) of the runs' latest epoch records; a cell
over a single value shows "(n=1)" instead of a std. Verdicts are re-evaluated from the
records under the thresholds in ``cfg`` (``verdicts.evaluate``), so a table never
disagrees with the declared thresholds.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

from .config import AuditConfig, Thresholds, validate
from .fmt import DASH, num
from .runstore import RunLog, encode
from .verdicts import DIAGNOSTICS, WALK_BACK, Verdict, evaluate, verdict

if TYPE_CHECKING:
    from .audit import Audit
    from .report import RunSummary

DAGGER = "†"  # cosine or ρ measured while (b) fired
STALE = "‡"  # value from an earlier epoch: ρ and the null band run on a cadence
DEGENERATE_NOTE = (f"{DAGGER} measured while (b) fired (in {{k}} of {{n}} runs): reference at the floor, "
                   "not credit quality")


# ---- cells (numbers themselves: engine/fmt.py) ---------------------------------------

def pct(v: float | None) -> str:
    """A fraction as percent with 2 decimals (accuracy)."""
    return DASH if v is None else (num(v) if not math.isfinite(v) else f"{100 * v:.2f}")


def pp(v: float | None) -> str:
    """A difference of fractions in signed percentage points (gap to the baseline)."""
    return DASH if v is None else (num(v) if not math.isfinite(v) else f"{100 * v:+.2f}")


@dataclass(frozen=True)
class Stat:
    """Mean and std (ddof = 1) over the values that exist; NaN and inf propagate."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stat":
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return cls(None, None, 0)
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return cls(mean, std, len(vals))

    def cell(self, fmt: Callable[[float | None], str] = num, n_row: int | None = None) -> str:
        if self.n == 0:
            return DASH
        if self.n == 1:
            return f"{fmt(self.mean)} (n=1)"
        text = f"{fmt(self.mean)} ± {fmt(self.std).lstrip('+')}"
        return text if n_row in (None, self.n) else f"{text} (n={self.n})"

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mark(cell: str, flag: bool, symbol: str) -> str:
    return f"{cell} {symbol}" if flag and cell != DASH else cell


@dataclass
class Table:
    """A titled grid of text cells, with notes below it and the raw numbers per row."""

    key: str  # stable id: audit, layers, penalty, strategies, sensitivity
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return encode({"key": self.key, "title": self.title, "headers": self.headers, "rows": self.rows,
                       "notes": self.notes, "data": self.data})


# ---- runs: one run's records, re-evaluated, with its status label -------------------

@dataclass
class RunView:
    """What the tables need from one run: its records under ``th`` and its status."""

    log: RunLog
    status: str
    records: list[dict[str, Any]]
    verdict: Verdict

    @classmethod
    def of(cls, log: RunLog, status: str, th: Thresholds) -> "RunView":
        records = [evaluate(r, th) for r in log.epochs]
        return cls(log, status, records, verdict(records))

    @property
    def final(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None

    def latest(self, key: str) -> tuple[Any, bool]:
        """The final record's value, or the latest measured one; the flag says it is older."""
        for i, rec in enumerate(reversed(self.records)):
            if rec.get(key) is not None:
                return rec[key], i > 0
        return None, False

    @property
    def label(self) -> str:
        done = self.final["epoch"] if self.final else 0
        of = f"epoch {done}/{self.log.total_epochs}"
        if self.status == "finished":
            return "finished"
        if self.status == "running":
            return f"running, {of}"
        if self.status in ("queued", "not started"):
            return self.status
        message = (self.log.end or {}).get("message", "")
        return f"{self.status} at {of}" + (f": {message[:80]}" if self.status == "failed" and message else "")


RunLike = Union["RunSummary", RunLog, RunView]


def config_of(source: Any) -> AuditConfig:
    """The audit's config: from an Audit, else from the first run header that carries one."""
    if hasattr(source, "cfg"):
        return source.cfg
    for run in source:
        log = run if isinstance(run, RunLog) else run.log
        if log.header and log.header.get("config"):
            return validate(log.header["config"], f"header of {log.run_id}")
    return AuditConfig()


def views(source: "Audit | Sequence[RunLike]", cfg: AuditConfig) -> list[RunView]:
    """RunViews from an Audit, RunSummaries, or bare RunLogs (read as still running if unended)."""
    if hasattr(source, "cfg"):
        from .report import summarize  # report imports the audit machinery; tables stays light

        source = summarize(source)
    out = []
    for run in source:
        if isinstance(run, RunView):
            out.append(run)
        elif isinstance(run, RunLog):
            out.append(RunView.of(run, run.status(live=True), cfg.thresholds))
        else:
            out.append(RunView.of(run.log, run.status, cfg.thresholds))
    return out


def n_classes(cfg: AuditConfig) -> int:
    return {"cifar10": 10, "cifar100": 100}.get(cfg.dataset, cfg.synthetic.classes)


def groups(runs: list[RunView], cfg: AuditConfig) -> list[tuple[str, float, list[RunView]]]:
    """(method, λ, runs over seeds), methods in config order, each followed by its λ's."""
    order = {m: i for i, m in enumerate(cfg.methods)}
    keyed: dict[tuple[str, float], list[RunView]] = {}
    for r in runs:
        keyed.setdefault((r.log.method, float(r.log.penalty or 0.0)), []).append(r)
    keys = sorted(keyed, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    return [(m, lam, keyed[(m, lam)]) for m, lam in keys]


def lam_cell(lam: float) -> str:
    return "0" if not lam else f"{lam:g}"


def group_status(runs: list[RunView]) -> str:
    if all(r.status == "finished" for r in runs):
        return "finished"
    done = sum(r.status == "finished" for r in runs)
    parts = [f"{done} finished"] if done else []
    parts += [f"s{r.log.seed} {r.label}" if len(runs) > 1 else r.label for r in runs if r.status != "finished"]
    return "; ".join(parts)


def submode_cell(runs: list[RunView]) -> str:
    """(c)'s label over seeds: "drift", "noise", "unknown" (NaN stability) or "drift 1/3"."""
    live = [r for r in runs if r.final]
    if not live:
        return ""
    modes = {r.verdict.submode for r in live}
    if len(modes) == 1:
        return modes.pop()  # drift, noise, or unknown (stability was NaN)
    drift = sum(r.verdict.submode == "drift" for r in live)
    return f"drift {drift}/{len(live)}"


def group_verdict(runs: list[RunView]) -> str:
    """The seeds' verdict when they agree (with the sub-mode if walked back), else each with its count."""
    live = [r for r in runs if r.final]
    labels = Counter(r.verdict.label for r in live)
    if not labels:
        return "NO DATA"
    if len(labels) == 1:
        label = next(iter(labels))
        return f"{label}, {submode_cell(live)}" if live[0].verdict.walked_back else label
    return "; ".join(f"{label} ({k}/{len(live)})" for label, k in labels.items())


def first_fire_cell(runs: list[RunView]) -> str:
    """Walk-back diagnostics' first-fire epochs, one per seed ("—" where it never fired)."""
    parts = []
    for k in WALK_BACK:
        epochs = [r.verdict.first_fire.get(k) for r in runs if r.final]
        if any(e is not None for e in epochs):
            parts.append(f"({k}) " + ", ".join(DASH if e is None else str(e) for e in epochs))
    return "; ".join(parts) or DASH


def _final(runs: list[RunView], get: Callable[[dict[str, Any]], Any]) -> Stat:
    return Stat.of(get(r.final) for r in runs if r.final)


@dataclass
class Footnotes:
    """What a table's † and ‡ markers flag, counted while its rows are built, for one note each."""

    what: str  # the ρ field named in the ‡ note
    runs: int = 0
    degenerate: int = 0
    stale: list[str] = field(default_factory=list)

    def group(self, live: list[RunView], key: str) -> tuple[bool, list[tuple[Any, bool]]]:
        """(any run degenerate?, each run's latest ``key`` with its is-older flag)."""
        k = sum(bool(r.final.get("degenerate")) for r in live)
        self.runs, self.degenerate = self.runs + len(live), self.degenerate + k
        latest = [r.latest(key) for r in live]
        self.stale += [r.log.run_id for r, (_, old) in zip(live, latest) if old]
        return k > 0, latest

    def notes(self, cfg: AuditConfig) -> list[str]:
        out = [DEGENERATE_NOTE.format(k=self.degenerate, n=self.runs)] if self.degenerate else []
        if self.stale:
            out.append(f"{STALE} {self.what} of {', '.join(self.stale)} is from an earlier epoch (ρ is measured "
                       f"every {cfg.diagnostics.rho_every} epochs).")
        return out


# ---- the tables --------------------------------------------------------------------

def audit_table(runs: "Audit | Sequence[RunLike]", cfg: AuditConfig | None = None) -> Table:
    """One row per method and λ: headline numbers over seeds, the verdict and first fires."""
    cfg = cfg or config_of(runs)
    headers = ["method", "λ", "n", "status", "acc %", "gap pp", "Γ", "deep cos", "deep ρ", "‖h_L‖", "‖g_L‖",
               "max growth", "stability", "verdict", "first fire (epoch, per seed)"]
    rows, data, foot = [], [], Footnotes("deep ρ")
    for method, lam, group in groups(views(runs, cfg), cfg):
        live = [r for r in group if r.final]
        n = len(live)
        degen, rho = foot.group(live, "deep_rho")
        stats = {
            "acc": _final(live, lambda f: f["test_acc"]),
            "gap": _final(live, lambda f: None if f.get("baseline_acc") is None else f["test_acc"] - f["baseline_acc"]),
            "gamma": _final(live, lambda f: f.get("gamma")),
            "deep_cos": _final(live, lambda f: f.get("deep_cos")),
            "deep_rho": Stat.of(v for v, _ in rho),
            "h_L": _final(live, lambda f: f["h_norm"][-1]),
            "g_L": _final(live, lambda f: f.get("g_L")),
            "growth": _final(live, lambda f: f.get("growth")),
            "stability": _final(live, lambda f: f.get("stability")),
        }
        submode = submode_cell(live)
        rows.append([method, lam_cell(lam), str(n), group_status(group), stats["acc"].cell(pct, n),
                     stats["gap"].cell(pp, n), mark(stats["gamma"].cell(num, n), degen, DAGGER),
                     mark(stats["deep_cos"].cell(num, n), degen, DAGGER),
                     mark(mark(stats["deep_rho"].cell(num, n), degen, DAGGER), any(o for _, o in rho), STALE),
                     stats["h_L"].cell(num, n), stats["g_L"].cell(num, n), stats["growth"].cell(num, n),
                     f"{stats['stability'].cell(num, n)} {submode}".strip(), group_verdict(group),
                     first_fire_cell(group)])
        data.append({"method": method, "penalty": lam, "n": n, "runs": [r.log.run_id for r in group],
                     "seeds": [r.log.seed for r in live], "degenerate": degen, "submode": submode,
                     "verdicts": [r.verdict.to_json() for r in live], **{k: s.to_json() for k, s in stats.items()}})
    notes = ["mean ± std over seeds (ddof = 1); n = seeds with at least one epoch; one seed shows (n=1) "
             "instead of a std; gap = accuracy − frozen baseline of the same seed and epoch.",
             "first fire lists every walk-back diagnostic that has ever fired; the verdict reads the latest "
             "epoch only, so a run that recovered is TRUSTWORTHY with a first fire."]
    notes += foot.notes(cfg)
    if "frozen" not in cfg.methods:
        notes.append("no frozen baseline in this audit: (d) and the gap cannot be measured.")
    elif any(d["method"] != "frozen" and d["gap"]["n"] < d["n"] for d in data):
        notes.append("gap — : the frozen run of that seed has no record at that epoch (failed, or not trained "
                     "that far), so (d) cannot fire there.")
    return Table("audit", "Audit", headers, rows, notes, data)


def layer_table(runs: "Audit | Sequence[RunLike]", cfg: AuditConfig | None = None, by: str = "method") -> Table:
    """Layer by layer: cos_l, the null band, ρ_l and the three norms.

    ``by="method"``: mean ± std over seeds per method and λ (null band = mean of the
    runs' null means ± mean of their null stds). ``by="run"``: one run per block of
    rows, cos_l ± its std over samples and null mean ± null std of that run.
    """
    cfg = cfg or config_of(runs)
    vs = views(runs, cfg)
    blocks = (groups(vs, cfg) if by == "method"
              else [(r.log.run_id, float(r.log.penalty or 0.0), [r]) for r in vs])
    spread = "over seeds" if by == "method" else "over samples"
    headers = ["method" if by == "method" else "run", "λ", "layer", "n", f"cos_l ± std ({spread})", "null band",
               "z vs null", "ρ_l", "‖h_l‖", "‖g_l‖", "‖a_l‖"]
    rows, data, foot = [], [], Footnotes("ρ_l")
    for name, lam, group in blocks:
        live = [r for r in group if r.final]
        if not live:
            continue
        n = len(live)
        degen, rho = foot.group(live, "rho")
        null_m, null_s = [r.latest("null_mean")[0] for r in live], [r.latest("null_std")[0] for r in live]
        # by run, n is always 1: plain values read better than "(n=1)" in every cell
        cell = (lambda st: st.cell(num, n)) if by == "method" else (lambda st: num(st.mean))
        for l in range(len(live[0].final["h_norm"])):
            cos_vals = _at([r.final["cos"] for r in live], l)
            cos = Stat.of(cos_vals)
            if by == "method":
                cos_cell = cell(cos)
            else:  # one run: the spread worth showing is over samples, which the record keeps
                cos_cell = f"{num(cos.mean)} ± {num(_at([live[0].final.get('cos_std')], l)[0])}"
            nm, ns = Stat.of(_at(null_m, l)), Stat.of(_at(null_s, l))
            z = Stat.of(_z(c, m, s) for c, m, s in zip(cos_vals, _at(null_m, l), _at(null_s, l)))
            z_cell = DASH if z.n == 0 else num(z.mean) + (" (noise)" if abs(z.mean) <= 2 else "")
            rho_l = Stat.of(_at([v for v, _ in rho], l))
            stats = {"cos": cos, "null_mean": nm, "null_std": ns, "z": z, "rho": rho_l,
                     "h": Stat.of(_at([r.final["h_norm"] for r in live], l)),
                     "g": Stat.of(_at([r.final["g_norm"] for r in live], l)),
                     "a": Stat.of(_at([r.final["a_norm"] for r in live], l))}
            rows.append([name, lam_cell(lam), str(l), str(n), mark(cos_cell, degen, DAGGER),
                         DASH if nm.n == 0 else f"{num(nm.mean)} ± {num(ns.mean)}", z_cell,
                         mark(mark(cell(rho_l), degen, DAGGER), any(o for _, o in rho), STALE),
                         cell(stats["h"]), cell(stats["g"]), cell(stats["a"])])
            data.append({"name": name, "penalty": lam, "layer": l, "n": n,
                         **{k: s.to_json() for k, s in stats.items()}})
    notes = [f"null band: cos_l under {cfg.diagnostics.null_draws} fresh random feedback draws (fa, dfa); z vs "
             "null = (cos_l − null mean) / null std, and |z| ≤ 2 is marked (noise): the training feedback does no "
             "better than a random one."] + foot.notes(cfg)
    return Table("layers", "Per layer" + (" (by run)" if by == "run" else ""), headers, rows, notes, data)


def _at(lists: list[list[float] | None], layer: int) -> list[float | None]:
    """Layer ``layer`` of each run's per-layer list (None where the list is missing)."""
    return [None if xs is None or layer >= len(xs) else xs[layer] for xs in lists]


def _z(cos: float | None, mean: float | None, std: float | None) -> float | None:
    if cos is None or mean is None or std is None or not std:
        return None
    return (cos - mean) / std


def penalty_table(runs: "Audit | Sequence[RunLike]", cfg: AuditConfig | None = None) -> Table:
    """λ against the Mode-1 numbers, per method that has penalty reruns (λ = 0: the unpenalised run)."""
    cfg = cfg or config_of(runs)
    all_groups = groups(views(runs, cfg), cfg)
    swept = {m for m, lam, _ in all_groups if lam}
    headers = ["method", "λ", "n", "acc %", "‖h_L‖", "‖g_L‖", "deep cos", "deep ρ", "verdict"]
    rows, data, foot = [], [], Footnotes("deep ρ")
    for method, lam, group in all_groups:
        live = [r for r in group if r.final]
        if method not in swept or not live:
            continue
        n = len(live)
        degen, rho = foot.group(live, "deep_rho")
        stats = {"acc": _final(live, lambda f: f["test_acc"]), "h_L": _final(live, lambda f: f["h_norm"][-1]),
                 "g_L": _final(live, lambda f: f.get("g_L")), "deep_cos": _final(live, lambda f: f.get("deep_cos")),
                 "deep_rho": Stat.of(v for v, _ in rho)}
        rows.append([method, lam_cell(lam), str(n), stats["acc"].cell(pct, n), stats["h_L"].cell(num, n),
                     stats["g_L"].cell(num, n), mark(stats["deep_cos"].cell(num, n), degen, DAGGER),
                     mark(mark(stats["deep_rho"].cell(num, n), degen, DAGGER), any(o for _, o in rho), STALE),
                     group_verdict(group)])
        data.append({"method": method, "penalty": lam, "n": n, **{k: s.to_json() for k, s in stats.items()}})
    notes = (["λ · Σ_l mean_n ‖f_l‖² added to the block objectives; λ = 0 is the unpenalised run.",
              *foot.notes(cfg)] if rows else ["no penalty reruns in this audit."])
    return Table("penalty", "Penalty sweep", headers, rows, notes, data)


STRATEGIES = ("S0", "S1", "S2", "S3", "S4", "S5", "S_full")
STRATEGY_HEADERS = ("S0 acc", "S1 acc+Γ", "S2 S1+(a)", "S3 S1+(b)", "S4 S1+(c)", "S5 S1+(d)", "S_full")


def strategy_walks_back(final: dict[str, Any], chance: float) -> dict[str, bool]:
    """Which reporting strategy walks this final record back (a NaN never certifies health)."""
    acc, gamma, fired = final.get("test_acc"), final.get("gamma"), set(final.get("fired", []))
    s0 = acc is None or not acc > chance
    s1 = s0 or gamma is None or not gamma > 0
    out = {"S0": s0, "S1": s1}
    out.update({s: s1 or k in fired for s, k in zip(("S2", "S3", "S4", "S5"), "abcd")})
    out["S_full"] = any(k in fired for k in WALK_BACK)
    return out


def strategy_table(runs: "Audit | Sequence[RunLike]", cfg: AuditConfig | None = None) -> Table:
    """Which runs each reporting strategy walks back, at each run's latest epoch."""
    cfg = cfg or config_of(runs)
    chance = 1 / n_classes(cfg)
    vs = [r for _, _, g in groups(views(runs, cfg), cfg) for r in g]
    live = [r for r in vs if r.final]
    headers = ["run", "status", "acc %", "Γ", *STRATEGY_HEADERS]
    rows, data = [], []
    for r in live:
        back = strategy_walks_back(r.final, chance)
        rows.append([r.log.run_id, r.label, pct(r.final["test_acc"]),
                     mark(num(r.final.get("gamma")), bool(r.final.get("degenerate")), DAGGER),
                     *("back" if back[s] else "ok" for s in STRATEGIES)])
        data.append({"run_id": r.log.run_id, "test_acc": r.final["test_acc"], "gamma": r.final.get("gamma"),
                     "walked_back": back})
    y = len(live)
    count = {s: sum(d["walked_back"][s] for d in data) for s in STRATEGIES}
    if live:
        rows.append(["walked back", "", "", "", *(f"{count[s]} of {y}" for s in STRATEGIES)])
    notes = [f"walked back by S1: {count['S1']} of {y}, by S_full: {count['S_full']} of {y}",
             f"S0 walks back only at or below chance (1/{n_classes(cfg)}); S1 also when Γ ≤ 0; S2–S5 add (a), "
             "(b), (c) drift, (d) to S1; S_full is the protocol's verdict ((a), (b) or (d) at the latest epoch)."]
    if any(r.final.get("degenerate") for r in live):
        notes.append(f"{DAGGER} Γ measured while (b) fired: reference at the floor, not credit quality")
    if len(live) < len(vs):
        notes.append(f"{len(vs) - len(live)} run(s) without a finished epoch are not listed.")
    return Table("strategies", "Reporting strategies", headers, rows, notes, data)


def sensitivity_row(runs: list[RunView], key: str, th: Thresholds) -> dict[str, Any]:
    """Threshold sensitivity of diagnostic ``key`` ("a" or "b") over the runs' latest records.

    A run is *degenerate* for the diagnostic when it fires on its latest record under
    ``th`` (the verdict walks it back via that diagnostic), *healthy* otherwise. The
    healthy edge is the healthy value closest to firing (largest growth for (a),
    smallest ‖g_L‖ for (b)), the degenerate edge the firing value closest to health.
    Thresholds between them (closed on the healthy side) fire on exactly the same
    runs, so every verdict stays. Since both sets come from one threshold, they always
    separate around it; what matters is the gap ratio (upper / lower edge): near 1 the
    verdicts hang on the exact threshold. A NaN value fires at every threshold and is
    counted apart.
    """
    diag = DIAGNOSTICS[key]
    above = diag.comparison == "above"
    live = [r for r in runs if r.final]
    fires = {r.log.run_id: key in r.final["fired"] for r in live}
    vals = {r.log.run_id: r.final.get(diag.field) for r in live}
    nan = [rid for rid, v in vals.items() if v is not None and math.isnan(v)]
    healthy = [vals[rid] for rid in vals if not fires[rid] and vals[rid] is not None]
    degen = [vals[rid] for rid in vals if fires[rid] and vals[rid] is not None and rid not in nan]
    h_edge = (max if above else min)(healthy) if healthy else None
    d_edge = (min if above else max)(degen) if degen else None
    lo, hi = (h_edge, d_edge) if above else (d_edge, h_edge)
    ratio = None
    if lo is not None and hi is not None:
        ratio = hi / lo if lo > 0 else math.inf
    return {"diagnostic": key, "field": diag.field, "threshold": getattr(th, diag.threshold_key),
            "healthy": [rid for rid in vals if not fires[rid]], "degenerate": [rid for rid in vals if fires[rid]],
            "nan_runs": nan, "healthy_edge": h_edge, "degenerate_edge": d_edge, "interval": [lo, hi],
            "gap_ratio": ratio}


def _reading(row: dict[str, Any]) -> str:
    key, h, d = row["diagnostic"], row["healthy_edge"], row["degenerate_edge"]
    side = "threshold" if key == "a" else "floor"
    if not row["healthy"] and not row["degenerate"]:
        text = "no run has an epoch yet"
    elif h is None and d is None:
        text = f"every run fired ({key})"
    elif d is None:
        bound = f"≥ {num(h)}" if key == "a" else f"≤ {num(h)}"
        who = "only NaN runs fired" if row["nan_runs"] else "no run fired"
        text = f"{who} ({key}); any {side} {bound} keeps the verdicts"
    elif h is None:
        bound = f"< {num(d)}" if key == "a" else f"> {num(d)}"
        text = f"every run fired ({key}); any {side} {bound} keeps the verdicts"
    else:
        text = f"separated by a factor {num(row['gap_ratio'])}"
        if row["gap_ratio"] < 2:  # the verdicts hang on the exact threshold
            text += f": barely; moving the {side} by less than ×2 changes a verdict"
    if row["nan_runs"]:
        text += f"; {len(row['nan_runs'])} run(s) with a NaN value fire at any {side}"
    return text


def _interval(row: dict[str, Any]) -> str:
    lo, hi = row["interval"]
    if row["diagnostic"] == "a":  # fires above: healthy ≤ T < degenerate
        return f"[{num(lo) if lo is not None else '0'}, {num(hi) if hi is not None else 'inf'})"
    return f"({num(lo) if lo is not None else '0'}, {num(hi) if hi is not None else 'inf'}]"


def sensitivity_table(runs: "Audit | Sequence[RunLike]", cfg: AuditConfig | None = None) -> Table:
    """For (a) and (b): the edges between healthy and degenerate runs and the thresholds that keep every verdict."""
    cfg = cfg or config_of(runs)
    vs = views(runs, cfg)
    headers = ["diagnostic", "fires when", "healthy runs", "degenerate runs", "healthy edge", "degenerate edge",
               "thresholds keeping every verdict", "gap ratio", "reading"]
    rows, data = [], []
    for key in ("a", "b"):
        row = sensitivity_row(vs, key, cfg.thresholds)
        diag = DIAGNOSTICS[key]
        rule = f"{diag.field} {'>' if key == 'a' else '<'} {num(row['threshold'])}"
        ok = bool(row["healthy"] or row["degenerate"])
        rows.append([f"({key}) {diag.name}", rule, str(len(row["healthy"])), str(len(row["degenerate"])),
                     num(row["healthy_edge"]), num(row["degenerate_edge"]), _interval(row) if ok else DASH,
                     num(row["gap_ratio"]), _reading(row)])
        data.append(row)
    notes = ["healthy = the diagnostic does not fire on the run's latest record, degenerate = it fires (the "
             "verdict walks the run back through it). Edges: (a) largest healthy and smallest degenerate growth; "
             "(b) smallest healthy and largest degenerate ‖g_L‖. gap ratio = upper edge / lower edge."]
    return Table("sensitivity", "Threshold sensitivity", headers, rows, notes, data)


def audit_tables(source: "Audit | Sequence[RunLike]", cfg: AuditConfig | None = None) -> list[Table]:
    """Every table of the report, in reading order."""
    cfg = cfg or config_of(source)
    vs = views(source, cfg)
    return [audit_table(vs, cfg), layer_table(vs, cfg), penalty_table(vs, cfg), strategy_table(vs, cfg),
            sensitivity_table(vs, cfg)]
