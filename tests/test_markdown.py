"""The markdown export: goldens from hand-written records, GitHub-table structure, and agreement
with the JSON export on a small real audit.

Regenerate the goldens after an intended change with
``FAEVAL_REGEN_GOLDEN=1 pytest tests/test_markdown.py`` and review the diff.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from test_tables import edge_audit, main_audit  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from engine.audit import Audit
from engine.config import load_config
from engine.markdown import render_markdown, table_markdown
from engine.records import decode
from engine.scheduler import AuditRunner
from engine.tables import Table, audit_tables, page_tables
from faeval_tui.cli import app

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("FAEVAL_REGEN_GOLDEN") == "1"
# the export time and versions the goldens show (the real ones change with every export and install)
PINNED = {"date": "2026-01-01T00:00:00+00:00", "faeval_tui": "0.0.0-golden", "torch": "0.0.0-golden"}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not REGEN:
            pytest.fail(f"wrote missing golden {path}; review it and rerun")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs; FAEVAL_REGEN_GOLDEN=1 to accept"


def md_tables(text: str) -> list[dict]:
    """Every GitHub table in ``text`` as {headers, rows}, parsed by markdown-it with the table rule on."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables, cur, cells, section = [], None, None, None
    for i, tok in enumerate(tokens):
        if tok.type == "table_open":
            cur = {"headers": [], "rows": []}
        elif tok.type in ("thead_open", "tbody_open"):
            section = tok.type[:5]
        elif tok.type == "tr_open":
            cells = []
        elif tok.type in ("th_open", "td_open"):
            cells.append(tokens[i + 1].content if tokens[i + 1].type == "inline" else "")
        elif tok.type == "tr_close":
            (cur["headers"].extend(cells) if section == "thead" else cur["rows"].append(cells))
        elif tok.type == "table_close":
            tables.append(cur)
    return tables


def unescape(cell: str) -> str:
    return cell.replace("\\|", "|").replace("\\\\", "\\")


def md_sections(text: str) -> dict[str, dict]:
    """Each ``## title`` section's table (None for a section that is a note alone), by title."""
    out = {}
    for section in text.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        tables = md_tables(body)
        out[title] = tables[0] if tables else None
    return out


def merged(parts: list[dict]) -> dict:
    """The parts of a split table as one: headers in order, each row's cells joined on its keys."""
    headers = list(dict.fromkeys(h for p in parts for h in p["headers"]))
    rows = []
    for cells in zip(*(p["rows"] for p in parts)):
        joined = {}
        for p, c in zip(parts, cells):
            for h, v in zip(p["headers"], c):
                assert joined.setdefault(h, v) == v  # a key column repeats the same cell in every part
        rows.append([joined[h] for h in headers])
    return {"headers": headers, "rows": rows}


def assert_tables_parse(text: str, tables: list[Table]) -> None:
    parsed = md_tables(text)
    shown = [t for t in page_tables(tables) if t.rows]
    assert len(parsed) == len(shown)
    for p, t in zip(parsed, shown):
        assert p["headers"] == t.headers
        assert all(len(r) == len(t.headers) for r in p["rows"])  # markdown-it pads short rows: compare content too
        assert [[unescape(c) for c in r] for r in p["rows"]] == t.rows


# ---- goldens and structure ---------------------------------------------------------------

def test_markdown_golden_of_the_main_audit(main_audit):  # noqa: F811
    text = render_markdown(main_audit, provenance=PINNED)
    check_golden("main_audit.md", text)
    assert_tables_parse(text, audit_tables(main_audit))


def test_markdown_golden_of_the_edge_audit_with_nan_running_failed_and_single_seed(edge_audit):  # noqa: F811
    text = render_markdown(edge_audit, provenance=PINNED)
    check_golden("edge_audit.md", text)
    assert_tables_parse(text, audit_tables(edge_audit))
    assert "failed at epoch 1/4: RuntimeError: shape \\| mismatch" in text  # the pipe is escaped, not a cell break
    assert "- **runs**: 5 (1 diverged, 1 failed, 1 finished, 2 running)" in text


def test_header_names_preset_data_seeds_and_thresholds(main_audit):  # noqa: F811
    head = render_markdown(main_audit).split("## Audit")[0]
    for line in ("# faeval audit: golden", "- **preset**: golden (hand-written records)",
                 "- **data**: synthetic teacher task (10 classes", "- **seeds**: 1, 2",
                 "- **thresholds**: (a) growth > 50.0; (b) ‖g_L‖ < 1.00e-7; (c) stability > 0.300 = drift; "
                 "(d) accuracy < frozen baseline +0.00 pp (diagnostic set n = 1024)"):
        assert line in head


def test_the_depth_margin_is_in_percentage_points_like_the_gap(main_audit):  # noqa: F811
    from engine.markdown import header_markdown
    from engine.tables import views

    runs = views(main_audit, main_audit.cfg)
    for margin, shown in ((0.0, "+0.00"), (0.005, "+0.50"), (-0.02, "-2.00")):
        cfg = main_audit.cfg.model_copy(deep=True)
        cfg.thresholds.depth_margin = margin
        assert f"; (d) accuracy < frozen baseline {shown} pp (diagnostic set n = 1024);" in header_markdown(cfg, runs)


def test_header_says_when_the_steps_ran_in_bfloat16(main_audit):  # noqa: F811
    from engine.markdown import header_markdown
    from engine.tables import views

    runs = views(main_audit, main_audit.cfg)
    fp32 = header_markdown(main_audit.cfg, runs)
    bf16 = header_markdown(main_audit.cfg.model_copy(update={"precision": "bf16"}), runs)
    assert "bfloat16" not in fp32
    assert "cosine schedule; training steps in bfloat16 (autocast), every measurement in float32\n" in bf16


def test_numeric_columns_are_right_aligned_and_text_columns_left(main_audit):  # noqa: F811
    text = render_markdown(main_audit, provenance=PINNED)
    aligned = {}
    for table in page_tables(audit_tables(main_audit)):
        block = text.split(f"## {table.title}\n\n", 1)[1].splitlines()
        aligned.update(zip(table.headers, block[1].strip("|").split("|")))
    assert {h for h, a in aligned.items() if a == "---"} == {
        "method", "status", "verdict", "first fire", "(c) mode", "run", "S0 acc", "S1 acc+Γ", "S2 S1+(a)",
        "S3 S1+(b)", "S4 S1+(c)", "S5 S1+(d)", "S_full", "diagnostic", "fires when",
        "thresholds keeping every verdict", "reading"}
    assert {h for h, a in aligned.items() if a == "---:"} == {
        "λ", "n", "acc %", "gap pp", "Γ", "deep cos", "deep ρ", "‖h_L‖", "‖g_L‖", "max growth", "stability", "layer",
        "cos_l ± std (over seeds)", "null band", "z vs null", "ρ_l", "‖h_l‖", "‖g_l‖", "‖a_l‖", "healthy runs",
        "degenerate runs", "healthy edge", "degenerate edge", "separation"}
    tokens = MarkdownIt("commonmark").enable("table").parse(text)  # and a GitHub renderer reads it so
    first = [t.attrGet("style") for t in tokens if t.type == "th_open"][:6]
    assert first == [None, "text-align:right", "text-align:right", None, "text-align:right", "text-align:right"]
    assert "| method | λ | n | status | acc % | gap pp | verdict | first fire |\n|---|---:|---:|---|---:|---:|---|---|" \
        in text


def test_a_column_of_dashes_is_numeric_unless_it_holds_words():
    from engine.tables.cells import numeric_cell, numeric_column

    for cell in ("0.143 ± 0 †", "nan †", "0.0750 ‡", "+3.00 (n=1)", "0.300 ± 0.283", "-0.875 (noise)",
                 "+24.00 ± 0", "1e-05", "−inf", "9.81e4 ± 1.16e5", "1/2", "×45.0", "-3.00 pp", "6.00 pp"):
        assert numeric_cell(cell), cell
    for cell in ("ok", "1 of 10", "[2.00, 90.0)", "growth > 50.0", "(a) 3, 3", "TRUSTWORTHY", "drift 1/2", "noise",
                 "0.300 ± 0.283 drift 1/2", "(-3.00, +3.00] pp"):
        assert not numeric_cell(cell), cell
    assert not numeric_column("(c) mode", ["—"]) and not numeric_column("first fire", ["—"])
    assert numeric_column("gap pp", ["—", "—"]) and not numeric_column("verdict", ["—"])
    assert numeric_column("acc %", ["52.00", ""]) and not numeric_column("S0 acc", ["ok", "0 of 10"])


# ---- the header: provenance and the changes to the preset --------------------------------

def header_line(text: str, key: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(f"- **{key}**: ")]
    return line


def test_changing_a_set_changes_the_header(tmp_path):
    plain = Audit.create(load_config("synthetic_default", ["device=cpu"]), tmp_path / "a")
    longer = Audit.create(load_config("synthetic_default", ["device=cpu", "epochs=3", "seeds=[5]"]), tmp_path / "b")
    desc = load_config("synthetic_default").description
    assert header_line(render_markdown(plain, provenance=PINNED), "preset") == (
        f"- **preset**: synthetic_default ({desc}); changed from the preset: device=cpu")
    assert header_line(render_markdown(longer, provenance=PINNED), "preset") == (
        "- **preset**: synthetic_default; changed from the preset: epochs=3, seeds=[5], device=cpu "
        "(description omitted: the config differs from the preset)")


def test_an_unchanged_preset_says_so_and_keeps_its_description(tmp_path):
    audit = Audit.create(load_config("synthetic_default"), tmp_path)
    desc = load_config("synthetic_default").description
    assert header_line(render_markdown(audit, provenance=PINNED), "preset") == (
        f"- **preset**: synthetic_default ({desc}); unchanged")


def test_the_description_goes_whenever_what_it_describes_changed():
    from engine.markdown import DESCRIBED, preset_line

    cfg = load_config("synthetic_default")
    for key, value in (("methods", ["bp"]), ("seeds", [1]), ("epochs", 1), ("d", 8), ("L", 2), ("dataset", "digits"),
                       ("model", "mlp"), ("terminal_ln", False), ("penalties", [0.01])):
        assert key in DESCRIBED
        line = preset_line(cfg.model_copy(update={key: value}))
        assert cfg.description not in line and "(description omitted: the config differs from the preset)" in line
    changed = cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"n_train": 1024})})
    assert "synthetic.n_train=1024" in preset_line(changed) and cfg.description not in preset_line(changed)
    kept = cfg.model_copy(update={"workers": 3, "precision": "bf16",
                                  "thresholds": cfg.thresholds.model_copy(update={"growth": 1e-7})})
    assert preset_line(kept) == (f"- **preset**: synthetic_default ({cfg.description}); changed from the preset: "
                                 "precision=bf16, workers=3, thresholds.growth=1e-07")


def test_the_provenance_line_names_the_time_the_versions_the_device_and_the_precision(main_audit, monkeypatch):  # noqa: F811
    import importlib.metadata

    import torch

    monkeypatch.setenv("FAEVAL_EXPORT_TIME", "2026-05-04T10:00:00+00:00")
    cfg = main_audit.cfg.model_copy(update={"device": "cpu", "precision": "bf16"})
    assert header_line(render_markdown(main_audit, cfg), "exported") == (
        f"- **exported**: 2026-05-04T10:00:00+00:00 by faeval-tui {importlib.metadata.version('faeval-tui')}, "
        f"torch {torch.__version__}; trained with device cpu, precision bf16")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.delenv("FAEVAL_EXPORT_TIME")
    line = header_line(render_markdown(main_audit), "exported")
    assert " by faeval-tui unknown, torch " in line
    assert line.endswith("trained with device auto (cuda if available, else cpu; the records do not name which), "
                         "precision fp32")
    stamp = line.removeprefix("- **exported**: ").split(" ")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", stamp)  # UTC, ISO 8601, the clock's


def test_an_empty_table_renders_its_note_instead_of_a_table():
    text = table_markdown(Table("penalty", "Penalty sweep", ["method", "λ"], [], ["no penalty reruns in this audit."]))
    assert text == "## Penalty sweep\n\n_no penalty reruns in this audit._\n" and md_tables(text) == []


# ---- a real audit: markdown numbers equal the JSON export's -------------------------------

TINY = ["epochs=2", "seeds=[1,2]", "penalties=[0.01]", "d=8", "L=2", "batch_size=64", "synthetic.n_train=256",
        "synthetic.n_test=128", "diagnostics.n_samples=128", "diagnostics.rho_samples=32",
        "diagnostics.rho_directions=4", "diagnostics.null_draws=4", "device=cpu"]


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    """A tiny real audit (bp, fa, dfa, frozen × 2 seeds, λ = 0.01 reruns), exported both ways by the CLI."""
    audit = Audit.create(load_config(None, TINY), tmp_path_factory.mktemp("runs"))
    runner = AuditRunner(audit)
    runner.submit_unfinished()
    assert set(runner.run().values()) == {"finished"}
    cli = CliRunner()
    md = cli.invoke(app, ["export", str(audit.path)])
    js = cli.invoke(app, ["export", str(audit.path), "--format", "json"])
    assert md.exit_code == 0 and js.exit_code == 0, md.output + js.output
    return audit, md.stdout, decode(json.loads(js.stdout))


def agrees(text: str, value: float | None, scale: float = 1.0) -> bool:
    """``text`` is ``value`` printed: equal to within half a unit of its last digit."""
    if value is None:
        return text == "—"
    value *= scale
    if text in ("nan", "inf", "−inf"):
        return (math.isnan(value) if text == "nan" else value == (math.inf if text == "inf" else -math.inf))
    mantissa, _, exp = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    tol = 0.5 * 10.0 ** (int(exp or 0) - decimals)
    return abs(float(text) - value) <= tol * (1 + 1e-9)


def split_cell(cell: str) -> tuple[str, str | None]:
    """'0.123 ± 0.0400 (n=3) †' → ('0.123', '0.0400'); markers and labels dropped."""
    cell = re.sub(r"\(n=\d+\)|[†‡]|\(noise\)|\b(noise|drift)\b( \d+/\d+)?", "", cell).strip()
    mean, _, std = cell.partition(" ± ")
    return mean.strip(), (std.strip() or None)


def decimals(text: str) -> int:
    return len(text.partition("e")[0].partition(".")[2])


def assert_stat(cell: str, values: list[float], scale: float = 1.0) -> None:
    vals = [v for v in values if v is not None]
    mean, std = split_cell(cell)
    assert agrees(mean, float(np.mean(vals)) if vals else None, scale), (cell, vals)
    if len(vals) > 1:
        sd = float(np.std(vals, ddof=1)) * scale
        if "e" not in mean and mean not in ("0", "nan", "inf", "−inf"):  # a std no finer than its mean
            assert "e" not in std and decimals(std) <= decimals(mean), cell
        if std == "0":  # 0 to the mean's digits
            assert sd <= 0.5 * 10.0 ** -decimals(mean) * (1 + 1e-9), (cell, vals)
        else:
            assert agrees(std, sd), (cell, vals)
    else:
        assert std is None


def test_real_audit_renders_every_table_and_the_json_holds_the_same_cells(real_export):
    _, md, doc = real_export
    assert [t["key"] for t in doc["tables"]] == ["audit", "layers", "penalty", "strategies", "sensitivity"]
    parsed = by_table(md, doc)
    assert parsed["audit"][0]["headers"][:3] == ["method", "λ", "n"] and len(parsed["audit"]) > 1  # split
    for t in doc["tables"]:  # the JSON keeps each table whole: the markdown's parts put together are it
        p = merged(parsed[t["key"]])
        assert p["headers"] == t["headers"] and [[unescape(c) for c in r] for r in p["rows"]] == t["rows"]
    assert len(parsed["audit"][0]["rows"]) == 6 and len(parsed["penalty"][0]["rows"]) == 4  # fa, fa λ, dfa, dfa λ


def by_table(md: str, doc: dict) -> dict[str, list[dict]]:
    """The markdown's tables by the key of the JSON table they show: one, or its parts in order."""
    sections = md_sections(md)
    out = {}
    for t in doc["tables"]:
        out[t["key"]] = [p for title, p in sections.items() if title == t["title"] or title.startswith(t["title"] + " (")]
    return out


def finals(doc, method: str, lam: float) -> list[dict]:
    return [r["final"] for r in doc["runs"] if r["method"] == method and r["penalty"] == lam and r["final"]]


def test_real_audit_markdown_numbers_equal_the_json_runs(real_export):
    _, md, doc = real_export
    audit_t, layer_t, pen_t = (merged(by_table(md, doc)[k]) for k in ("audit", "layers", "penalty"))
    cols = {"acc %": ("test_acc", 100), "Γ": ("gamma", 1), "deep cos": ("deep_cos", 1), "deep ρ": ("deep_rho", 1),
            "‖g_L‖": ("g_L", 1), "max growth": ("growth", 1), "stability": ("stability", 1)}
    for cells in audit_t["rows"]:
        row = dict(zip(audit_t["headers"], cells))
        fs = finals(doc, row["method"], float(row["λ"]))
        assert row["n"] == str(len(fs)) == "2"
        for header, (key, scale) in cols.items():
            assert_stat(row[header], [f[key] for f in fs], scale)
        assert_stat(row["‖h_L‖"], [f["h_norm"][-1] for f in fs])
        if row["method"] != "frozen":
            assert_stat(row["gap pp"], [f["test_acc"] - f["baseline_acc"] for f in fs], 100)
        labels = {r["verdict_detail"]["label"] for r in doc["runs"]
                  if r["method"] == row["method"] and r["penalty"] == float(row["λ"])}
        assert all(label in row["verdict"] for label in labels)
    for cells in layer_t["rows"]:
        row = dict(zip(layer_t["headers"], cells))
        fs, l = finals(doc, row["method"], float(row["λ"])), int(row["layer"])
        for header, key in (("cos_l ± std (over seeds)", "cos"), ("ρ_l", "rho"), ("‖h_l‖", "h_norm"),
                            ("‖g_l‖", "g_norm"), ("‖a_l‖", "a_norm")):
            assert_stat(row[header], [f[key][l] for f in fs])
        if row["method"] in ("fa", "dfa"):
            assert agrees(split_cell(row["null band"])[0], float(np.mean([f["null_mean"][l] for f in fs])))
    for cells in pen_t["rows"]:
        row = dict(zip(pen_t["headers"], cells))
        fs = finals(doc, row["method"], float(row["λ"]))
        assert_stat(row["acc %"], [f["test_acc"] for f in fs], 100)
        assert_stat(row["‖g_L‖"], [f["g_L"] for f in fs])
        assert_stat(row["deep cos"], [f["deep_cos"] for f in fs])


def test_real_audit_strategies_and_sensitivity_agree_with_the_json_runs(real_export):
    _, md, doc = real_export
    strat_t, sens_t = (merged(by_table(md, doc)[k]) for k in ("strategies", "sensitivity"))
    runs = {r["run_id"]: r for r in doc["runs"]}
    for cells in strat_t["rows"][:-1]:
        row = dict(zip(strat_t["headers"], cells))
        f = runs[row["run"]]["final"]
        assert agrees(row["acc %"], f["test_acc"], 100) and agrees(split_cell(row["Γ"])[0], f["gamma"])
        s1 = f["test_acc"] <= 0.1 or f["gamma"] <= 0
        assert row["S1 acc+Γ"] == ("back" if s1 else "ok")
        assert row["S_full"] == ("back" if runs[row["run"]]["verdict_detail"]["walked_back"] else "ok")
    n = len(runs)
    k = sum(r["verdict_detail"]["walked_back"] for r in runs.values())
    assert f"by S_full: {k} of {n}" in md
    a = dict(zip(sens_t["headers"], sens_t["rows"][0]))
    healthy = [r["final"]["growth"] for r in runs.values() if "a" not in r["final"]["fired"]]
    assert int(a["healthy runs"]) == len(healthy) and agrees(a["healthy edge"], max(healthy))
    b = dict(zip(sens_t["headers"], sens_t["rows"][1]))
    healthy = [r["final"]["g_L"] for r in runs.values() if "b" not in r["final"]["fired"]]
    assert agrees(b["healthy edge"], min(healthy))
    d = dict(zip(sens_t["headers"], sens_t["rows"][2]))
    measured = [r for r in runs.values() if r["method"] != "frozen" and r["final"]["baseline_acc"] is not None]
    fired = [r for r in measured if "d" in r["final"]["fired"]]
    assert d["diagnostic"] == "(d) depth utility" and len(measured) == 10  # every run but the two frozen
    assert (int(d["healthy runs"]), int(d["degenerate runs"])) == (len(measured) - len(fired), len(fired))
    gaps = [r["final"]["test_acc"] - r["final"]["baseline_acc"] for r in measured if r not in fired]
    if gaps:
        assert d["healthy edge"].endswith(" pp") and agrees(d["healthy edge"].removesuffix(" pp"), min(gaps), 100)


def test_export_writes_markdown_to_a_file_with_out(real_export, tmp_path):
    audit, _, _ = real_export
    out = tmp_path / "report.md"
    env = {"FAEVAL_EXPORT_TIME": "2026-01-01T00:00:00+00:00"}  # the two exports must not straddle a second
    md = CliRunner().invoke(app, ["export", str(audit.path)], env=env).stdout
    result = CliRunner().invoke(app, ["export", str(audit.path), "--out", str(out)], env=env)
    assert result.exit_code == 0 and out.read_text(encoding="utf-8") == md
    assert md.startswith(f"# faeval audit: {audit.path.name}\n")
