"""Paper figures of an audit, each with a CSV of exactly the numbers it draws.

``write_figures(audit_dir)`` writes into ``<audit_dir>/figures/`` (or ``out``):

    audit.<fmt>         the four diagnostics against epoch: growth (a), ‖g_L‖ (b), stability (c) and
                        test accuracy against the frozen baseline (d); one colour per method, one line
                        per run (seed); unpenalised runs only (penalty reruns are in penalty.<fmt>); in
                        an audit of several networks, one row of four panels per network
    trajectories*.<fmt> per run: ‖h_L‖, ‖g_L‖ with the floor and accuracy with its frozen baseline, with
                        the first fire of (a), (b) and (d) marked; at most ``MAX_TRAJECTORY_ROWS`` runs a
                        file: ``trajectories.<fmt>``, or ``trajectories-1``, ``-2`` … when there are more;
                        in an audit of several networks one file (or more) per network,
                        ``trajectories-<network>[-k].<fmt>``
    layers.<fmt>        cos_l against layer l at each unpenalised run's final epoch, per method (per-seed
                        points, the mean over seeds as a line) with the null band, null mean ± 2 null std,
                        shaded (the mean of the runs' null means ± 2 × the mean of their null stds)
    penalty.<fmt>       only with penalty reruns: final ‖h_L‖, ‖g_L‖ and accuracy against λ (log axis,
                        λ = 0 drawn one decade left of the smallest λ and labelled 0)

and beside them ``audit.csv``, ``trajectories.csv`` (every page; its ``figure`` column names the
file a row is drawn in), ``layers.csv`` and ``penalty.csv``: floats as ``repr`` (they read back
exactly with ``float``), non-finite ones as nan/inf/-inf, a missing value empty.

The numbers come from ``figure_data`` alone, built from the records as the tables read them
(``engine.tables.runs.audit_views``: re-evaluated under the audit's thresholds, baselines
looked up again). A value a panel cannot place (NaN, ±inf, zero or negative on a log axis)
is left out of its line, which shows a gap, and marked on the panel's edge (× NaN, ▲ +inf,
▼ zero, negative or −inf), as the console's charts do; the CSV keeps it.

matplotlib is imported inside the functions, never at import time, and only through
``matplotlib.figure.Figure`` (no pyplot, no global backend); every style setting is made
inside ``matplotlib.rc_context``. SVG and PDF carry no date, so the same records give the
same bytes.
"""
from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audit import Audit
from .config import AuditConfig
from .errors import ConfigError, StoreError
from .records import Epoch
from .tables.runs import RunView, audit_views, groups, model_of, n_classes
from .verdicts import DIAGNOSTICS, WALK_BACK, alert_epochs

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("svg", "pdf", "png")
MAX_TRAJECTORY_ROWS = 8  # runs per trajectories file: 8 rows of three panels fill a page
WIDTH = 7.0  # inches: a two-column paper's full text width
PNG_DPI = 300
DODGE = 0.04  # decades between neighbouring methods' points on the λ axis

# Okabe–Ito, readable with every common colour-vision deficiency; the frozen baseline is grey;
# fa_lillicrap takes fa's neighbour (orange next to vermillion), ep the reddish purple
METHOD_COLOURS = {"bp": "#0072B2", "fa": "#D55E00", "dfa": "#009E73", "frozen": "#555555",
                  "fa_lillicrap": "#E69F00", "ep": "#CC79A7"}
SPARE_COLOURS = ("#56B4E9", "#000000", "#F0E442")  # the palette's rest, for other methods in order
REF = "#222222"  # threshold lines
CHANCE = "#999999"
THRESHOLD_STYLE = {"color": REF, "linestyle": (0, (1.2, 1.6)), "linewidth": 0.9}
CHANCE_STYLE = {"color": CHANCE, "linestyle": (0, (4, 2, 1, 2)), "linewidth": 0.8}
EDGE = {"nan": ("x", "NaN"), "inf": ("^", "+inf"), "low": ("v", "zero, negative or −inf (off the axis)")}

AUDIT_FIELDS = ["model", "run_id", "method", "seed", "penalty", "epoch", "growth", "g_L", "stability", "test_acc",
                "baseline_acc", "fired"]
TRAJECTORY_FIELDS = ["figure", "model", "run_id", "method", "seed", "penalty", "status", "verdict", "epoch", "h_L",
                     "g_L", "test_acc", "baseline_acc", "fired", "first_fire", "alert"]
LAYER_FIELDS = ["kind", "model", "method", "penalty", "run_id", "seed", "epoch", "layer", "cos", "cos_std",
                "null_mean", "null_std", "band_lo", "band_hi", "degenerate"]
PENALTY_FIELDS = ["kind", "model", "method", "penalty", "x", "run_id", "seed", "epoch", "h_L", "g_L", "test_acc",
                  "baseline_acc", "degenerate"]
FIELDS = {"audit": AUDIT_FIELDS, "trajectories": TRAJECTORY_FIELDS, "layers": LAYER_FIELDS,
          "penalty": PENALTY_FIELDS}

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 8, "lines.linewidth": 1.1, "lines.markersize": 3,
    "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4, "xtick.major.size": 2.5, "ytick.major.size": 2.5, "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5, "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "faeval-figures",
    "figure.constrained_layout.h_pad": 0.02, "figure.constrained_layout.w_pad": 0.02,
    "figure.constrained_layout.hspace": 0.03, "figure.constrained_layout.wspace": 0.03,
    "path.simplify": False, "mathtext.default": "regular",  # math in the text font: one font file fewer to embed
}
METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {}}


# ---------------------------------------------------------------------------------------------- data


def figure_data(audit: Audit | Path | str) -> dict[str, list[dict[str, Any]]]:
    """Every number the figures draw, one row per point: "audit", "trajectories", "layers" and
    "penalty" (empty without penalty reruns), each row keyed by that CSV's columns."""
    audit = audit if isinstance(audit, Audit) else Audit.open(audit)
    cfg = audit.cfg
    ordered = _ordered_runs(audit)
    if not ordered:
        raise StoreError(f"no epoch records yet in {audit.path}",
                         "train the audit first (faeval-tui run or resume), or wait for its first epoch")
    return {"audit": _audit_rows(cfg, ordered), "trajectories": _trajectory_rows(cfg, ordered),
            "layers": _layer_rows(cfg, ordered), "penalty": _penalty_rows(cfg, ordered)}


def _ordered_runs(audit: Audit) -> list[RunView]:
    """The runs with records, in the tables' order: network, method, λ, seed."""
    cfg = audit.cfg
    return [r for _, _, group in groups(audit_views(audit), cfg) for r in group if r.records]


def _net(cfg: AuditConfig, run: RunView) -> str | None:
    return (model_of(run) or "?") if cfg.multi_model else None


def _ident(cfg: AuditConfig, run: RunView) -> dict[str, Any]:
    return {"model": _net(cfg, run), "run_id": run.log.run_id, "method": run.log.method, "seed": run.log.seed,
            "penalty": float(run.log.penalty or 0.0)}


def _audit_rows(cfg: AuditConfig, runs: list[RunView]) -> list[dict[str, Any]]:
    return [{**_ident(cfg, r), "epoch": e.epoch, "growth": e.growth, "g_L": e.g_L, "stability": e.stability,
             "test_acc": e.test_acc, "baseline_acc": e.baseline_acc, "fired": ";".join(e.fired)}
            for r in runs if not r.log.penalty for e in r.records]


def _pages(cfg: AuditConfig, runs: list[RunView]) -> list[tuple[str, list[RunView]]]:
    """(file stem, runs) of the trajectories files: per network in an audit of several, each
    cut into pages of at most MAX_TRAJECTORY_ROWS runs, keeping a method and λ's seeds together
    where they fit."""
    by_net: dict[str | None, list[list[RunView]]] = {}
    for r in runs:
        blocks = by_net.setdefault(_net(cfg, r), [])
        key = (r.log.method, float(r.log.penalty or 0.0))
        if blocks and (blocks[-1][0].log.method, float(blocks[-1][0].log.penalty or 0.0)) == key:
            blocks[-1].append(r)
        else:
            blocks.append([r])
    out = []
    for net, blocks in by_net.items():
        pages: list[list[RunView]] = [[]]
        for block in blocks:
            for i in range(0, len(block), MAX_TRAJECTORY_ROWS):
                part = block[i:i + MAX_TRAJECTORY_ROWS]
                if pages[-1] and len(pages[-1]) + len(part) > MAX_TRAJECTORY_ROWS:
                    pages.append([])
                pages[-1].extend(part)
        stem = "trajectories" + (f"-{net}" if net is not None else "")
        out += [(stem if len(pages) == 1 else f"{stem}-{k}", page) for k, page in enumerate(pages, 1)]
    return out


def _trajectory_rows(cfg: AuditConfig, runs: list[RunView]) -> list[dict[str, Any]]:
    rows = []
    for stem, page in _pages(cfg, runs):
        for r in page:
            first = r.verdict.first_fire
            alerts = alert_epochs(r.records, cfg.thresholds)
            for e in r.records:
                rows.append({"figure": stem, **_ident(cfg, r), "status": r.status, "verdict": r.verdict.label,
                             "epoch": e.epoch, "h_L": e.h_L, "g_L": e.g_L, "test_acc": e.test_acc,
                             "baseline_acc": e.baseline_acc, "fired": ";".join(e.fired),
                             "first_fire": ";".join(k for k in WALK_BACK if first.get(k) == e.epoch),
                             "alert": ";".join(k for k in WALK_BACK if alerts.get(k) == e.epoch)})
    return rows


def _latest(run: RunView, key: str) -> list[float] | None:
    """The final record's per-layer ``key``, or the latest measured one (the null band runs on a
    cadence and always at the last epoch, so this is the final one unless the run stopped early)."""
    for rec in reversed(run.records):
        value = getattr(rec, key)
        if value is not None:
            return value
    return None


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values present; NaN and inf propagate (as the tables' cells do)."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _band(mean: float | None, std: float | None, sign: int) -> float | None:
    return None if mean is None or std is None else mean + sign * 2 * std


def _layer_rows(cfg: AuditConfig, runs: list[RunView]) -> list[dict[str, Any]]:
    rows = []
    for method, lam, group in groups(runs, cfg):
        if lam:
            continue  # unpenalised runs only: the sweep is penalty.<fmt>'s
        net = _net(cfg, group[0])
        per_run = []
        for r in group:
            final: Epoch = r.records[-1]
            null_m, null_s = _latest(r, "null_mean"), _latest(r, "null_std")
            for layer, cos in enumerate(final.cos):
                m = null_m[layer] if null_m else None
                s = null_s[layer] if null_s else None
                per_run.append({"kind": "run", **_ident(cfg, r), "epoch": final.epoch, "layer": layer, "cos": cos,
                                "cos_std": final.cos_std[layer], "null_mean": m, "null_std": s,
                                "band_lo": _band(m, s, -1), "band_hi": _band(m, s, 1),
                                "degenerate": final.degenerate})
        rows += per_run
        for layer in sorted({row["layer"] for row in per_run}):
            at = [row for row in per_run if row["layer"] == layer]
            m, s = _mean(row["null_mean"] for row in at), _mean(row["null_std"] for row in at)
            rows.append({"kind": "mean", "model": net, "run_id": None, "method": method, "seed": None,
                         "penalty": lam, "epoch": None, "layer": layer, "cos": _mean(row["cos"] for row in at),
                         "cos_std": None, "null_mean": m, "null_std": s, "band_lo": _band(m, s, -1),
                         "band_hi": _band(m, s, 1), "degenerate": any(row["degenerate"] for row in at)})
    return rows


def lambda_zero_x(lams: Iterable[float]) -> float:
    """Where λ = 0 is drawn on the log λ axis: one decade left of the smallest λ > 0."""
    positive = [x for x in lams if x > 0]
    return min(positive) / 10 if positive else 1.0


def _penalty_rows(cfg: AuditConfig, runs: list[RunView]) -> list[dict[str, Any]]:
    """The final records of every method with penalty reruns, its λ = 0 runs included."""
    all_groups = groups(runs, cfg)
    swept = {(_net(cfg, g[0]), m) for m, lam, g in all_groups if lam}
    if not swept:
        return []
    nets = {net for net, _ in swept}
    zero_x = {net: lambda_zero_x(lam for m, lam, g in all_groups if _net(cfg, g[0]) == net) for net in nets}
    # each method's points a little apart along λ (a factor of 10^±0.04), so seeds of two methods never hide
    # each other; x is where a point is drawn
    order = {net: list(dict.fromkeys(m for m, _, g in all_groups if (_net(cfg, g[0]), m) in swept
                                     and _net(cfg, g[0]) == net)) for net in nets}
    rows = []
    for method, lam, group in all_groups:
        net = _net(cfg, group[0])
        if (net, method) not in swept:
            continue
        k, n = order[net].index(method), len(order[net])
        x = (lam if lam else zero_x[net]) * 10 ** (DODGE * (k - (n - 1) / 2))
        finals = [(r, r.records[-1]) for r in group]
        for r, f in finals:
            rows.append({"kind": "run", **_ident(cfg, r), "x": x, "epoch": f.epoch, "h_L": f.h_L, "g_L": f.g_L,
                         "test_acc": f.test_acc, "baseline_acc": f.baseline_acc, "degenerate": f.degenerate})
        rows.append({"kind": "mean", "model": net, "method": method, "penalty": lam, "x": x, "run_id": None,
                     "seed": None, "epoch": None, "h_L": _mean(f.h_L for _, f in finals),
                     "g_L": _mean(f.g_L for _, f in finals), "test_acc": _mean(f.test_acc for _, f in finals),
                     "baseline_acc": _mean(f.baseline_acc for _, f in finals),
                     "degenerate": any(f.degenerate for _, f in finals)})
    return rows


# ------------------------------------------------------------------------------------------ writing


def write_figures(audit_dir: Path | str, out: Path | str | None = None, fmt: str = "png") -> list[Path]:
    """Write the audit's figures as ``fmt`` (svg, pdf or png) and their CSVs into ``out``
    (default ``<audit_dir>/figures``); returns the paths written, figures then CSVs."""
    if fmt not in FORMATS:
        raise ConfigError(f"figure format {fmt!r} is not supported", f"choose one of: {', '.join(FORMATS)}")
    audit = Audit.open(audit_dir)
    data = figure_data(audit)
    out = Path(out) if out is not None else audit.path / "figures"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create {out}: {err.strerror}", "choose a writable output directory") from None
    cfg = audit.cfg
    colours = method_colours(cfg.methods + sorted({r["method"] for r in data["trajectories"]} - set(cfg.methods)))
    written = []
    import matplotlib

    with matplotlib.rc_context(RC):
        # (every run with records may be a penalty rerun, its unpenalised run not started: no audit figure)
        figures = [("audit", _audit_figure(cfg, data["audit"], colours))] if data["audit"] else []
        pages: dict[str, list[dict[str, Any]]] = {}
        for row in data["trajectories"]:
            pages.setdefault(row["figure"], []).append(row)
        figures += [(stem, _trajectory_figure(cfg, rows, colours)) for stem, rows in pages.items()]
        if data["layers"]:
            figures.append(("layers", _layer_figure(cfg, data["layers"], colours)))
        if data["penalty"]:
            figures.append(("penalty", _penalty_figure(cfg, data["penalty"], colours)))
        for stem, fig in figures:
            path = out / f"{stem}.{fmt}"
            try:
                fig.savefig(path, format=fmt, metadata=METADATA[fmt], dpi=PNG_DPI)
            except OSError as err:
                raise StoreError(f"cannot write {path}: {err.strerror}", "check the disk and permissions") from None
            written.append(path)
    for name, rows in data.items():
        if rows:
            written.append(_write_csv(out / f"{name}.csv", FIELDS[name], rows))
    return written


def _cell(value: Any) -> str:
    """A CSV cell: floats as repr (exact round trip; nan, inf, -inf), None empty, bools true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _write_csv(path: Path, fields: Sequence[str], rows: list[dict[str, Any]]) -> Path:
    try:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(fields)
            writer.writerows([_cell(row.get(k)) for k in fields] for row in rows)
    except OSError as err:
        raise StoreError(f"cannot write {path}: {err.strerror}", "check the disk and permissions") from None
    return path


def method_colours(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method, the same in every figure: those of METHOD_COLOURS fixed, others in order."""
    out, spare = {}, itertools.cycle(SPARE_COLOURS)
    for m in methods:
        out[m] = METHOD_COLOURS.get(m) or next(spare)
    return out


# ------------------------------------------------------------------------------------------ drawing


def _placeable(v: float | None, log: bool) -> bool:
    return v is not None and math.isfinite(v) and (v > 0 or not log)


def _edge_kind(v: float) -> str:
    if math.isnan(v):
        return "nan"
    return "inf" if v > 0 else "low"


def _series(ax: Axes, xs: Sequence[int], ys: Sequence[float | None], log: bool, seen: set[str],
            **style: Any) -> None:
    """A line of ``ys`` against ``xs``: values the axis cannot place leave a gap and are marked on
    its edge; a point with no drawable neighbour gets a dot, so it is not lost."""
    from matplotlib.transforms import blended_transform_factory

    nan = math.nan
    draw = [float(y) if _placeable(y, log) else nan for y in ys]
    ax.plot(xs, draw, **style)
    colour = style.get("color")
    lone = [i for i, y in enumerate(draw) if not math.isnan(y)
            and (i == 0 or math.isnan(draw[i - 1])) and (i == len(draw) - 1 or math.isnan(draw[i + 1]))]
    if lone:
        ax.plot([xs[i] for i in lone], [draw[i] for i in lone], linestyle="none", marker="o", markersize=2.5,
                color=colour, alpha=style.get("alpha"))
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    for x, y in zip(xs, ys):
        if y is None or _placeable(y, log):
            continue
        kind = _edge_kind(y)
        seen.add(kind)
        ax.plot([x], [1.0 if kind == "inf" else 0.0], transform=edge, clip_on=False, linestyle="none",
                marker=EDGE[kind][0], markersize=4.5, markeredgewidth=1.0, color=colour,
                markerfacecolor=colour if kind != "nan" else "none", zorder=5)


def _threshold(ax: Axes, y: float, label: str, style: dict[str, Any] | None = None) -> None:
    """A horizontal reference line, named just right of the panel (constrained layout makes
    room for the name, and it never covers data)."""
    style = style or THRESHOLD_STYLE
    ax.axhline(y, **style, zorder=1)
    _right_label(ax, y, label, style["color"])


def _right_label(ax: Axes, y: float, text: str, colour: str, coords: str = "data") -> None:
    """``text`` beside the panel's right edge at height ``y`` (data, or "axes" fraction)."""
    ax.annotate(text, xy=(1.0, y), xycoords=("axes fraction", coords), xytext=(2, 0), textcoords="offset points",
                ha="left", va="center", fontsize=6.5, color=colour, annotation_clip=False)


def _chance(ax: Axes, chance: float, short: bool = False) -> None:
    """The chance line, once the panel's data are drawn: the axis keeps the data's range (a
    gap to the frozen baseline of a point or two stays visible), and a chance level outside
    it is named at the edge it lies beyond."""
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    if lo <= chance <= hi:
        _threshold(ax, chance, "chance" if short else f"chance {chance:.2g}", CHANCE_STYLE)
        return
    ax.set_ylim(lo, hi)
    arrow = "↓" if chance < lo else "↑"
    _right_label(ax, 0.0 if chance < lo else 1.0, f"chance {arrow}" if short else f"chance {chance:.2g} {arrow}",
                 CHANCE_STYLE["color"], coords="axes fraction")


def _decades(ax: Axes) -> None:
    """A log axis from the decade below its lowest drawn value (thresholds included) to the one
    above its highest: labelled decades only, never a crowd of minor-tick labels."""
    from matplotlib.ticker import NullFormatter, NullLocator

    lo, hi = ax.dataLim.intervaly
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        return  # nothing drawable: matplotlib's default range stands
    # a value within 0.01 decade of the edge (a threshold on a decade) gets one decade of room
    a, b = math.floor(math.log10(lo) - 0.01), math.ceil(math.log10(hi) + 0.01)
    ax.set_ylim(10.0 ** a, 10.0 ** b)
    ax.yaxis.set_minor_formatter(NullFormatter())
    if b - a > 3:  # minor ticks over many decades are a grey comb (and slow to lay out)
        ax.yaxis.set_minor_locator(NullLocator())


def _epoch_axis(ax: Axes, epochs: int, nbins: int = 6) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0.5, max(epochs, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=True, steps=[1, 2, 5, 10], min_n_ticks=2))


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(x: float) -> str:
    """10⁻⁴ as plain text (Unicode superscripts): no mathtext to lay out, and searchable in SVG/PDF."""
    if x <= 0 or not math.isfinite(x):
        return ""
    e = math.log10(x)
    if abs(e - round(e)) > 1e-9:
        return f"{x:g}"
    return "10" + str(int(round(e))).translate(SUPERSCRIPT)


def _log_axis(ax: Axes) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=5))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: power_of_ten(x)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs="auto", numticks=5))


def _legend(fig: Figure, handles: list[Any], most: int = 4) -> None:
    """One legend for the figure, below its panels, in rows of equal length where it can."""
    n = len(handles)
    ncols = n if n <= most else min(most, math.ceil(n / math.ceil(n / most)))
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, handlelength=2.2, columnspacing=1.4,
               borderaxespad=0.2)


def _method_handles(methods: Iterable[str], colours: dict[str, str]) -> list[Any]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=colours[m], label=m, **_method_style(m)) for m in methods]


def _method_style(method: str) -> dict[str, Any]:
    return {"linestyle": (0, (3.5, 1.5))} if method == "frozen" else {}


def _edge_handles(seen: set[str]) -> list[Any]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], linestyle="none", marker=EDGE[k][0], markersize=4.5, color="#444444",
                   markerfacecolor="none" if k == "nan" else "#444444", label=EDGE[k][1])
            for k in ("nan", "inf", "low") if k in seen]


def _ref_handles(cfg: AuditConfig, chance: bool = True, values: bool = False) -> list[Any]:
    from matplotlib.lines import Line2D

    th = cfg.thresholds
    label = (f"thresholds: (a) growth {th.growth:g}, (b) floor {_fmt_limit(th.g_floor)}, (c) drift {th.stability:g}"
             if values else "threshold (a)–(c), named on the right")
    out = [Line2D([], [], label=label, **THRESHOLD_STYLE)]
    if chance:
        out.append(Line2D([], [], label=f"chance 1/{n_classes(cfg)}", **CHANCE_STYLE))
    return out


def _by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def _nets(cfg: AuditConfig, rows: list[dict[str, Any]]) -> list[str | None]:
    present = list(dict.fromkeys(row["model"] for row in rows))
    order = {v.name: i for i, v in enumerate(cfg.variants())}
    return sorted(present, key=lambda n: (order.get(n, len(order)), n or ""))


def _new_figure(height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH, height), layout="constrained")


def _grid(fig: Figure, titles: Sequence[str | None], ncols: int, sharey: bool = False,
          title_height: float = 0.13) -> list[list[Axes]]:
    """Rows of ``ncols`` panels in one grid, so constrained layout lines the columns up across
    rows (subfigures would lay each row out alone); a row with a title gets a thin strip above
    it holding the title, left-aligned."""
    titled = any(t is not None for t in titles)
    ratios = [r for _ in titles for r in ([title_height, 1.0] if titled else [1.0])]
    gs = fig.add_gridspec(len(ratios), ncols, height_ratios=ratios)
    rows: list[list[Axes]] = []
    first: Axes | None = None
    for i, title in enumerate(titles):
        at = 2 * i + 1 if titled else i
        if titled:
            strip = fig.add_subplot(gs[at - 1, :])
            strip.axis("off")
            if title:
                strip.text(0.0, 0.0, title, transform=strip.transAxes, ha="left", va="bottom", fontsize=7.5,
                           fontweight="bold")
        row = []
        for c in range(ncols):
            ax = fig.add_subplot(gs[at, c], sharey=first if sharey else None)
            first = first or ax
            row.append(ax)
        rows.append(row)
    return rows


def _fmt_limit(v: float) -> str:
    return f"{v:.0e}" if v < 1e-2 else f"{v:g}"


GRID_TITLES = {"growth": "growth (log)", "g_L": "‖g$_L$‖ (log)", "stability": "stability",
               "test_acc": "test accuracy"}
AUDIT_PANELS = (
    # key, axis label, log, diagnostic
    ("growth", "growth ‖h$_l$‖/‖h$_{l-1}$‖ (log)", True, "a"),
    ("g_L", "‖g$_L$‖ (log)", True, "b"),
    ("stability", "stability (cross-batch cos)", False, "c"),
    ("test_acc", "test accuracy", False, "d"),
)


def _audit_figure(cfg: AuditConfig, rows: list[dict[str, Any]], colours: dict[str, str]) -> Figure:
    th = cfg.thresholds
    nets = _nets(cfg, rows)
    epochs = max((row["epoch"] for row in rows), default=1)
    seen: set[str] = set()
    methods = list(dict.fromkeys(row["method"] for row in rows))
    if len(nets) == 1:
        fig = _new_figure(4.5)
        axes_rows = [(None, fig.subplots(2, 2, sharex=True).ravel())]
    else:
        fig = _new_figure(1.45 * len(nets) + 0.55)
        axes_rows = list(zip(nets, _grid(fig, [str(n) for n in nets], 4)))
    for row_i, (net, axes) in enumerate(axes_rows):
        mine = [row for row in rows if row["model"] == net] if len(nets) > 1 else rows
        for col, (key, label, log, diag) in enumerate(AUDIT_PANELS):
            ax = axes[col]
            if log:
                _log_axis(ax)
            for (_, method), runs in _by(mine, "run_id", "method").items():
                _series(ax, [r["epoch"] for r in runs], [r[key] for r in runs], log, seen, color=colours[method],
                        alpha=0.9, **_method_style(method))
            grid = len(nets) > 1  # narrow panels: the lines are named (a)–(c), their values in the legend
            if diag == "a":
                _threshold(ax, th.growth, "(a)" if grid else f"(a) {th.growth:g}")
            elif diag == "b":
                _threshold(ax, th.g_floor, "(b)" if grid else f"(b) floor {_fmt_limit(th.g_floor)}")
            elif diag == "c":
                _threshold(ax, th.stability, "(c)" if grid else f"(c) drift {th.stability:g}")
            else:
                _chance(ax, 1.0 / n_classes(cfg), short=grid)
            if log:
                _decades(ax)
            _epoch_axis(ax, epochs, 6 if len(nets) == 1 else 4)
            if len(nets) == 1:
                ax.set_title(f"({diag}) {DIAGNOSTICS[diag].name}", fontsize=8)
                ax.set_ylabel(label)
                if col >= 2:
                    ax.set_xlabel("epoch")
            else:
                if row_i == 0:
                    ax.set_title(f"({diag}) {GRID_TITLES[key]}", fontsize=8)
                if row_i == len(nets) - 1:
                    ax.set_xlabel("epoch")
    notes = []
    if th.depth_margin:
        notes.append(f"(d) fires below frozen + {th.depth_margin:g}")
    from matplotlib.lines import Line2D

    handles = _method_handles(methods, colours)
    if "frozen" in methods:
        handles[methods.index("frozen")].set_label("frozen = (d) baseline")
    handles += _ref_handles(cfg, values=len(nets) > 1) + _edge_handles(seen)
    handles += [Line2D([], [], linestyle="none", label=n) for n in notes]
    _legend(fig, handles, 4)
    return fig


TRAJECTORY_PANELS = (
    ("h_L", "‖h$_L$‖ (log)", True, "a"),
    ("g_L", "‖g$_L$‖ (log)", True, "b"),
    ("test_acc", "test acc.", False, "d"),
)


def _first_fire(ax: Axes, epoch: int, label: str) -> None:
    """A dashed vertical line at a diagnostic's first fire, named in the panel's right title
    (laid out with the panel, so it never covers a line)."""
    ax.axvline(epoch, color=REF, linewidth=0.7, linestyle=(0, (2, 1.5)), zorder=1)
    ax.set_title(label, loc="right", fontsize=6.5, color=REF, pad=2)


def _trajectory_figure(cfg: AuditConfig, rows: list[dict[str, Any]], colours: dict[str, str]) -> Figure:
    th = cfg.thresholds
    runs = _by(rows, "run_id")
    epochs = max(row["epoch"] for row in rows)
    fig = _new_figure(1.1 * len(runs) + 0.5)
    seen: set[str] = set()
    has_base = False
    titles = []
    for (rid,), recs in runs.items():
        head = recs[0]
        lam = f", λ = {head['penalty']:g}" if head["penalty"] else ""
        status = "" if head["status"] == "finished" else f", {head['status']}"
        titles.append(f"{rid}{lam}{status}: {head['verdict']}")
    grid = _grid(fig, titles, 3)
    for i, recs in enumerate(runs.values()):
        head = recs[0]
        axes = grid[i]
        colour = colours[head["method"]]
        xs = [r["epoch"] for r in recs]
        fires = {k: r["epoch"] for r in recs for k in r["first_fire"].split(";") if k}
        alerts = {k: r["epoch"] for r in recs for k in r["alert"].split(";") if k}
        for col, (key, label, log, diag) in enumerate(TRAJECTORY_PANELS):
            ax = axes[col]
            if log:
                _log_axis(ax)
            if diag == "b":
                _threshold(ax, th.g_floor, f"(b) floor {_fmt_limit(th.g_floor)}")
            if diag == "d":
                base = [r["baseline_acc"] for r in recs]
                if any(b is not None for b in base):
                    has_base = True
                    _series(ax, xs, base, False, seen, color=colours.get("frozen", "#555555"),
                            linewidth=0.9, **_method_style("frozen"))
                    if th.depth_margin:
                        _series(ax, xs, [None if b is None else b + th.depth_margin for b in base], False, seen,
                                **THRESHOLD_STYLE)
            _series(ax, xs, [r[key] for r in recs], log, seen, color=colour, **_method_style(head["method"]))
            if diag == "d":
                _chance(ax, 1.0 / n_classes(cfg))
            if log:
                _decades(ax)
            ax.set_title(label, loc="left", fontsize=7.5, pad=2)
            if diag in fires:
                alert = alerts.get(diag)
                text = f"({diag}) e{fires[diag]}" + (f"; alert e{alert}" if alert and alert != fires[diag] else "")
                _first_fire(ax, fires[diag], text)
            _epoch_axis(ax, epochs)
            if i == len(runs) - 1:
                ax.set_xlabel("epoch")
    from matplotlib.lines import Line2D

    methods = list(dict.fromkeys(row["method"] for row in rows))
    handles = _method_handles(methods, colours)
    if has_base:
        if "frozen" in methods:
            handles[methods.index("frozen")].set_label("frozen = (d) baseline")
        else:
            handles.append(Line2D([], [], color=colours.get("frozen", "#555555"), label="frozen = (d) baseline",
                                  linewidth=0.9, **_method_style("frozen")))
    handles += [Line2D([], [], label="first fire of (a), (b), (d)", color=REF, linewidth=0.7,
                       linestyle=(0, (2, 1.5))),
                Line2D([], [], label="(b) floor", **THRESHOLD_STYLE),
                Line2D([], [], label=f"chance 1/{n_classes(cfg)}", **CHANCE_STYLE)]
    handles += _edge_handles(seen)
    _legend(fig, handles, 4)
    return fig


def _layer_figure(cfg: AuditConfig, rows: list[dict[str, Any]], colours: dict[str, str]) -> Figure:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    nets = _nets(cfg, rows)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    fig = _new_figure((1.55 * len(nets) if len(nets) > 1 else 1.9) + 0.55)
    seen: set[str] = set()
    degenerate_any = False
    grid = _grid(fig, [str(n) for n in nets] if len(nets) > 1 else [None], len(methods), sharey=True)
    # one cosine scale for every panel: fa's 0.2 reads against bp's 1 and its null band alike
    drawn = [v for r in rows for v in (r["cos"], r["band_lo"], r["band_hi"]) if _placeable(v, False)]
    y_lo, y_hi = min([0.0, *drawn]), max([1.0, *drawn])
    pad = 0.05 * (y_hi - y_lo)
    for row_i, (net, axes) in enumerate(zip(nets, grid)):
        for col, method in enumerate(methods):
            ax = axes[col]
            mine = [r for r in rows if r["model"] == net and r["method"] == method]
            colour = colours[method]
            ax.axhline(0.0, color="#bbbbbb", linewidth=0.5, zorder=0)
            if not mine:
                ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", color="#777777")
            means = [r for r in mine if r["kind"] == "mean"]
            layers = [r["layer"] for r in means]
            if any(r["band_lo"] is not None for r in means):
                nan = math.nan
                ax.fill_between(layers, [nan if r["band_lo"] is None else r["band_lo"] for r in means],
                                [nan if r["band_hi"] is None else r["band_hi"] for r in means], color=colour,
                                alpha=0.15, linewidth=0, zorder=1)
            degenerate = any(r["degenerate"] for r in means)
            degenerate_any |= degenerate
            _series(ax, layers, [r["cos"] for r in means], False, seen, color=colour, zorder=3)
            for pts in _by([r for r in mine if r["kind"] == "run"], "run_id").values():
                good = [p for p in pts if _placeable(p["cos"], False)]
                ax.plot([p["layer"] for p in good], [p["cos"] for p in good], linestyle="none", marker="o",
                        markersize=3.2, color=colour, alpha=0.75, zorder=4,
                        markerfacecolor="none" if degenerate else colour, markeredgewidth=0.8)
                _series(ax, [p["layer"] for p in pts], [None if _placeable(p["cos"], False) else p["cos"]
                                                        for p in pts], False, seen, color=colour)
            if row_i == 0:
                ax.set_title(method, loc="left", fontsize=8)
            if degenerate:
                ax.set_title("† degenerate", loc="right", fontsize=6.5, pad=2)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(y_lo - pad, y_hi + pad)
            if row_i == len(nets) - 1:
                ax.set_xlabel("layer l")
            if col == 0:
                ax.set_ylabel("cos$_l$ (final epoch)")
            else:
                ax.tick_params(labelleft=False)
    handles: list[Any] = [Patch(facecolor="#888888", alpha=0.3,
                                label="null band: null mean ± 2 std (fa, dfa, fa_lillicrap)"),
                          Line2D([], [], color="#444444", marker="o", linestyle="-", label="mean over seeds; "
                                 "points: seeds")]
    if degenerate_any:
        handles.append(Line2D([], [], color="#444444", marker="o", markerfacecolor="none", linestyle="none",
                              label="† hollow: (b) fired at the final epoch (degenerate)"))
    handles += _edge_handles(seen)
    _legend(fig, handles, 3)
    return fig


PENALTY_PANELS = (
    ("h_L", "final ‖h$_L$‖ (log)", True),
    ("g_L", "final ‖g$_L$‖ (log)", True),
    ("test_acc", "final test accuracy", False),
)


def _lambda_axis(ax: Axes, xs: list[float], zero: float | None) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ticks = sorted(set(xs))
    labels = ["0" if x == zero else power_of_ten(x) for x in ticks]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, labels)
    if ticks:
        ax.set_xlim(ticks[0] / 10 ** 0.3, ticks[-1] * 10 ** 0.3)
    if zero is not None and len(ticks) > 1:  # the axis is broken between λ = 0 and the smallest λ
        from matplotlib.transforms import blended_transform_factory

        mid = math.sqrt(zero * ticks[1])
        where = blended_transform_factory(ax.transData, ax.transAxes)
        ax.text(mid, 0.0, "//", transform=where, ha="center", va="center", fontsize=7, clip_on=False,
                bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none"})


def _penalty_figure(cfg: AuditConfig, rows: list[dict[str, Any]], colours: dict[str, str]) -> Figure:
    from matplotlib.lines import Line2D

    th = cfg.thresholds
    nets = _nets(cfg, rows)
    fig = _new_figure(1.75 * len(nets) + 0.55)
    grid = _grid(fig, [str(n) for n in nets] if len(nets) > 1 else [None], 3)
    seen: set[str] = set()
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for row_i, (net, axes) in enumerate(zip(nets, grid)):
        mine = [r for r in rows if r["model"] == net]
        for col, (key, label, log) in enumerate(PENALTY_PANELS):
            ax = axes[col]
            if log:
                _log_axis(ax)
            zero = lambda_zero_x(p["penalty"] for p in mine)
            baseline: dict[float, float] = {}
            for (method,), pts in _by(mine, "method").items():
                colour = colours[method]
                means = [p for p in pts if p["kind"] == "mean"]
                for p in means:
                    if p["baseline_acc"] is not None:
                        baseline.setdefault(p["penalty"] or zero, p["baseline_acc"])
                _series(ax, [p["x"] for p in means], [p[key] for p in means], log, seen, color=colour, zorder=3)
                runs = [p for p in pts if p["kind"] == "run"]
                good = [p for p in runs if _placeable(p[key], log)]
                ax.plot([p["x"] for p in good], [p[key] for p in good], linestyle="none", marker="o",
                        markersize=3, color=colour, alpha=0.6, zorder=4)
                _series(ax, [p["x"] for p in runs], [None if _placeable(p[key], log) else p[key] for p in runs],
                        log, seen, color=colour)
            if key == "test_acc" and baseline:
                # (d)'s baseline at each λ: the frozen runs at the epoch that λ's runs reached (the
                # first method's, where two methods' runs stopped at different epochs)
                xs = sorted(baseline)
                _series(ax, xs, [baseline[x] for x in xs], False, seen, color=colours.get("frozen", "#555555"),
                        linewidth=0.9, marker="_", markersize=6, zorder=2, **_method_style("frozen"))
            if key == "g_L":
                _threshold(ax, th.g_floor, f"(b) floor {_fmt_limit(th.g_floor)}")
            if log:
                _decades(ax)
            _lambda_axis(ax, [p["penalty"] or zero for p in mine], zero)
            if row_i == 0:
                ax.set_title(label, fontsize=8)
            if row_i == len(nets) - 1:
                ax.set_xlabel("penalty λ (log; 0 at the left)")
    handles = _method_handles(methods, colours)
    handles += [Line2D([], [], color="#444444", marker="o", linestyle="-", label="mean over seeds; points: seeds"),
                Line2D([], [], color=colours.get("frozen", "#555555"), linewidth=0.9, marker="_", markersize=5,
                       label="(d) frozen baseline at the same epoch", **_method_style("frozen")),
                Line2D([], [], label="(b) floor", **THRESHOLD_STYLE)]
    handles += _edge_handles(seen)
    _legend(fig, handles, 4)
    return fig
