"""The audit as one markdown document: a header naming what was run, then every table.

Tables are GitHub tables of the cells ``engine.tables`` formatted, so the markdown,
the console and the JSON export show the same text for the same number.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .config import AuditConfig
from .data import diagnostic_n_for
from .fmt import num
from .models import describe
from .sizing import image_shape
from .tables import RunLike, Source, Table, audit_tables, config_of, views


def _cell(text: str) -> str:
    # a pipe would end the cell and a newline the row
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def table_markdown(table: Table) -> str:
    """``## title``, the GitHub table (or a line saying it is empty), then the notes."""
    lines = [f"## {table.title}", ""]
    if table.rows:
        lines.append("| " + " | ".join(_cell(h) for h in table.headers) + " |")
        lines.append("|" + "|".join("---" for _ in table.headers) + "|")
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
        lines.append("")
    lines += [f"_{_cell(note)}_" if not table.rows else f"- {note}" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def data_line(cfg: AuditConfig) -> str:
    """The audit's data in words, for the report's header."""
    if cfg.dataset == "synthetic":
        s = cfg.synthetic
        data = (f"synthetic teacher task ({s.classes} classes, in_dim {s.in_dim}, {s.n_train} train / "
                f"{s.n_test} test, teacher seed {s.seed})")
    elif cfg.dataset == "digits":
        data = "UCI handwritten digits (scikit-learn; 8×8, 10 classes, 1437 train / 360 test, stratified split)"
    elif cfg.dataset == "npz":
        digest = f", sha256 {cfg.data_sha256[:12]}" if cfg.data_sha256 else ""
        data = f"the user's arrays in {Path(cfg.data_path or '?').name}{digest}"
    else:
        data = cfg.dataset.upper().replace("CIFAR", "CIFAR-")
    return data + (", random targets" if cfg.random_targets else "")


def header_markdown(cfg: AuditConfig, runs: Sequence[RunLike], name: str | None = None) -> str:
    """What was audited: preset, data, model, methods, seeds, thresholds, run states."""
    th = cfg.thresholds
    data = data_line(cfg)
    shape = image_shape(cfg)
    nets = [describe(net, shape) for net in cfg.variants()]
    model = nets[0] if not cfg.multi_model else "; ".join(f"{v.name}: {d}" for v, d in zip(cfg.variants(), nets))
    n_diag = diagnostic_n_for(cfg)
    n_note = (f"diagnostic set n = {n_diag}" if n_diag == cfg.diagnostics.n_samples else
              f"diagnostic set n = {n_diag}, the whole test split, not the {cfg.diagnostics.n_samples} the "
              f"thresholds assume: ‖g_L‖ scales as 1/n")
    pen = (f"; penalty reruns λ ∈ {{{', '.join(f'{x:g}' for x in cfg.penalties)}}} for "
           f"{', '.join(cfg.penalty_methods)}" if cfg.penalties else "")
    states = Counter(r.status for r in views(runs, cfg))
    lines = [
        f"# faeval audit: {name or cfg.name}", "",
        f"- **preset**: {cfg.name}" + (f" ({cfg.description.strip()})" if cfg.description.strip() else ""),
        f"- **data**: {data}",
        f"- **model{'s' if cfg.multi_model else ''}**: {model}; {cfg.epochs} epochs, batch "
        f"{cfg.batch_size}, lr {cfg.lr:g}, {cfg.schedule} schedule"
        # bf16 trains a slightly different network (verdicts on a threshold's edge can flip): say so
        + ("; training steps in bfloat16 (autocast), every measurement in float32"
           if cfg.precision == "bf16" else ""),
        f"- **methods**: {', '.join(cfg.methods)}{pen}",
        f"- **seeds**: {', '.join(map(str, cfg.seeds))}",
        f"- **thresholds**: (a) growth > {num(th.growth)}; (b) ‖g_L‖ < {num(th.g_floor)}; (c) stability > "
        f"{num(th.stability)} = drift; (d) accuracy < frozen baseline + {num(th.depth_margin)} "
        f"({n_note}); alerts after (a) {th.persist.a}, (b) {th.persist.b}, (d) {th.persist.d} consecutive "
        "fired epochs",
        f"- **runs**: {sum(states.values())} (" + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) + ")",
    ]
    problems = [p for r in views(runs, cfg) for p in r.log.problems]
    if problems:  # a damaged record file is part of the report, never silently smoothed over
        lines.append(f"- **problems reading the records** ({len(problems)}):")
        lines += [f"  - {p}" for p in problems]
    return "\n".join(lines) + "\n"


def render_tables(tables: Sequence[Table]) -> str:
    return "\n".join(table_markdown(t) for t in tables)


def render_markdown(source: Source, cfg: AuditConfig | None = None) -> str:
    """The whole report of an audit (or of in-memory runs) as one markdown document."""
    cfg = cfg or config_of(source)
    runs = views(source, cfg)
    name = getattr(getattr(source, "path", None), "name", None)
    return header_markdown(cfg, runs, name) + "\n" + render_tables(audit_tables(runs, cfg))
