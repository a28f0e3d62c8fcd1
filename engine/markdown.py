"""The audit as one markdown document: a header naming what was run, then every table.

Tables are GitHub tables of the cells ``engine.tables`` formatted, so the markdown,
the console and the JSON export show the same text for the same number; columns of
numbers are right-aligned (``Table.numeric``), columns of words left. A table wider
than a page is split into parts (``engine.tables.pages``: the audit table into its
outcome, credit-alignment and scale columns), each part keyed by model, method and λ.

The header says when and by what the report was written (``export_provenance``) and how
the audit's config differs from the shipped preset it is named after (``preset_changes``):
the config does not record which keys came from ``--set``, so the changes are found by
comparing the two.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import AuditConfig, shipped_presets, validate
from .errors import ConfigError
from .fmt import num, pp
from .models import describe
from .runstore import RunLog
from .sizing import image_shape
from .tables import RunLike, Source, Table, audit_tables, config_of, page_tables, views
from .userdata import diagnostic_n_for
from .yamlsafe import read_yaml

EXPORT_TIME_ENV = "FAEVAL_EXPORT_TIME"  # when set, the export time the header shows (reproducible exports)

# keys that are no choice of the user's: the preset's own name and description, and the
# npz file's digest the audit fills in when it is created
NOT_CHOSEN = ("name", "description", "data_sha256")
# what a preset's description speaks of (data, network, training length, methods, seeds,
# penalties): a change to any of these makes the description misdescribe the audit
DESCRIBED = ("dataset", "synthetic", "random_targets", "data_path", "model", "models", "d", "L", "r", "terminal_ln",
             "patch", "heads", "epochs", "methods", "seeds", "penalties", "penalty_methods")


def export_provenance() -> dict[str, str]:
    """When and by what a report is written: the UTC time (``FAEVAL_EXPORT_TIME`` instead of
    the clock when set), faeval-tui's and torch's versions ("unknown" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("faeval-tui")
    except PackageNotFoundError:
        tool = "unknown"
    try:
        import torch  # lazily: reading presets and the help never import torch

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "unknown"
    date = os.environ.get(EXPORT_TIME_ENV) or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"date": date, "faeval_tui": tool, "torch": torch_version}


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys; lists (seeds, methods, models) stay one value."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def setting(value: Any) -> str:
    """A config value as ``--set`` would take it: ``[5, 6]``, ``[bp, fa]``, ``true``, ``1e-07``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(setting(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {setting(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(value)
    text = str(value).replace("\n", " ")
    return text if text else "''"


def shipped_config(name: str) -> AuditConfig | None:
    """The shipped preset ``name`` as this version reads it (None: no such preset, or unreadable).
    Validated only, not sized: whether it fits this machine is not the question here."""
    path = shipped_presets().get(name)
    if path is None:
        return None
    try:
        return validate(read_yaml(path), f"preset {name}")
    except ConfigError:
        return None


def preset_changes(cfg: AuditConfig) -> list[tuple[str, Any]] | None:
    """(dotted key, value) for every key where ``cfg`` differs from the shipped preset it is
    named after, in the config's order; None when ``cfg.name`` is no shipped preset."""
    preset = shipped_config(cfg.name)
    if preset is None:
        return None
    mine, theirs = _flat(cfg.dump()), _flat(preset.dump())
    return [(k, v) for k, v in mine.items()
            if k.split(".")[0] not in NOT_CHOSEN and (k not in theirs or theirs[k] != v)]


def describes(key: str) -> bool:
    """Does a preset's description speak of ``key`` (``DESCRIBED``)?"""
    return any(key == d or key.startswith(d + ".") for d in DESCRIBED)


def preset_line(cfg: AuditConfig) -> str:
    """The preset, its description when it still describes the audit, and every change to it."""
    desc = cfg.description.strip()
    changes = preset_changes(cfg)
    if changes is None:  # a YAML of the user's: what came from --set is not known
        return (f"- **preset**: {cfg.name}" + (f" ({desc})" if desc else "")
                + "; not a shipped preset, so changes made with --set cannot be listed")
    if not changes:
        return f"- **preset**: {cfg.name}" + (f" ({desc})" if desc else "") + "; unchanged"
    listed = ", ".join(f"{k}={setting(v)}" for k, v in changes)
    if any(describes(k) for k, _ in changes):
        return (f"- **preset**: {cfg.name}; changed from the preset: {listed} "
                "(description omitted: the config differs from the preset)")
    return f"- **preset**: {cfg.name}" + (f" ({desc})" if desc else "") + f"; changed from the preset: {listed}"


def provenance_line(cfg: AuditConfig, provenance: Mapping[str, str] | None = None) -> str:
    """When and by what the report was written, and the device and precision the audit trained with."""
    p = dict(provenance or {})
    if not {"date", "faeval_tui", "torch"} <= p.keys():  # what is not given is looked up
        p = {**export_provenance(), **p}
    # "auto" is resolved when training starts, and the records do not keep what it chose
    device = cfg.device + (" (cuda if available, else cpu; the records do not name which)"
                           if cfg.device == "auto" else "")
    return (f"- **exported**: {p['date']} by faeval-tui {p['faeval_tui']}, torch {p['torch']}; "
            f"trained with device {device}, precision {cfg.precision}")


def _cell(text: str) -> str:
    # a pipe would end the cell and a newline the row
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def table_markdown(table: Table) -> str:
    """``## title``, the GitHub table (or a line saying it is empty), then the notes."""
    lines = [f"## {table.title}", ""]
    if table.rows:
        lines.append("| " + " | ".join(_cell(h) for h in table.headers) + " |")
        lines.append("|" + "|".join("---:" if right else "---" for right in table.numeric()) + "|")
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


def header_markdown(cfg: AuditConfig, runs: Sequence[RunLike], name: str | None = None,
                    provenance: Mapping[str, str] | None = None) -> str:
    """What was audited: when and by what it was exported, the preset and the changes to it,
    data, model, methods, seeds, thresholds, run states. ``provenance``: {"date",
    "faeval_tui", "torch"} instead of ``export_provenance()``'s (tests pin them)."""
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
    headers = [v.log.header for v in views(runs, cfg) if v.log.header is not None]
    scripts = sorted({h.script or "?" for h in headers if h.source == "tracker"})
    model_line = (
        f"- **model{'s' if cfg.multi_model else ''}**: {model}; {cfg.epochs} epochs, batch "
        f"{cfg.batch_size}, lr {cfg.lr:g}, {cfg.schedule} schedule"
        # bf16 trains a slightly different network (verdicts on a threshold's edge can flip): say so
        + ("; training steps in bfloat16 (autocast), every measurement in float32"
           if cfg.precision == "bf16" else ""))
    if scripts:  # the user's network and recipe: the config's model keys are the engine's defaults, not theirs
        model_line = (f"- **model**: the user's own, trained in their own loop ({', '.join(scripts)}) and "
                      f"measured by engine.tracker; {cfg.epochs} epochs")
    lines = [
        f"# faeval audit: {name or cfg.name}", "",
        provenance_line(cfg, provenance),
        preset_line(cfg),
        f"- **data**: {data}",
        model_line,
        f"- **methods**: {', '.join(cfg.methods)}{pen}",
        f"- **seeds**: {', '.join(map(str, cfg.seeds))}",
        f"- **thresholds**: (a) growth > {num(th.growth)}; (b) ‖g_L‖ < {num(th.g_floor)}; (c) stability > "
        f"{num(th.stability)} = drift; (d) accuracy < frozen baseline {pp(th.depth_margin)} pp "
        f"({n_note}); alerts after (a) {th.persist.a}, (b) {th.persist.b}, (d) {th.persist.d} consecutive "
        "fired epochs",
        f"- **runs**: {sum(states.values())} (" + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) + ")",
    ]
    lines += reused_lines(views(runs, cfg))
    problems = [p for r in views(runs, cfg) for p in r.log.problems]
    if problems:  # a damaged record file is part of the report, never silently smoothed over
        lines.append(f"- **problems reading the records** ({len(problems)}):")
        lines += [f"  - {p}" for p in problems]
    return "\n".join(lines) + "\n"


def reused_lines(runs: Sequence[RunLike]) -> list[str]:
    """The header's line on the runs copied from an identical finished run of another audit
    instead of trained (``engine.reuse``): each with its source, as ``<audit>/<run>``; none
    when every run trained here."""
    reused = []
    for r in runs:
        log = r if isinstance(r, RunLog) else r.log
        if log.header is not None and log.header.reused_from:
            src = Path(log.header.reused_from)
            reused.append(f"{log.run_id} from {src.parent.name}/{src.name}")
    if not reused:
        return []
    n = len(reused)
    return [f"- **reused**: {n} run{'s' if n > 1 else ''} not trained here but copied from an identical finished run "
            f"under the same runs dir, verified by its checksums (engine/reuse.py): {'; '.join(reused)}"]


def render_tables(tables: Sequence[Table]) -> str:
    """The tables, each wider than a page split into parts (``page_tables``)."""
    return "\n".join(table_markdown(t) for t in page_tables(tables))


def render_markdown(source: Source, cfg: AuditConfig | None = None,
                    provenance: Mapping[str, str] | None = None) -> str:
    """The whole report of an audit (or of in-memory runs) as one markdown document."""
    cfg = cfg or config_of(source)
    runs = views(source, cfg)
    name = getattr(getattr(source, "path", None), "name", None)
    return header_markdown(cfg, runs, name, provenance) + "\n" + render_tables(audit_tables(runs, cfg))
