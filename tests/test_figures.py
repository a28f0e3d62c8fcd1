"""engine.figures: the paper figures of an audit and the CSVs of the numbers they draw.

The fixture audit (tests/test_console_fixtures.py) has a NaN (fa's ‖h_L‖ and growth at
epoch 3), a zero on a log axis (dfa's ‖g_L‖ at epoch 5) and a penalty rerun; the CSVs must
carry exactly what the records hold, and every format must be written without a crash.
"""
from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engine import Audit, load_config
from engine.errors import ConfigError, StoreError
from engine.figures import FORMATS, figure_data, lambda_zero_x, write_figures
from engine.tables.runs import audit_views
from tests.conftest import tiny, train
from tests.test_console_fixtures import write_fixture_audit

FIGURES = ["audit", "trajectories", "layers", "penalty"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fixture_audit(tmp_path_factory) -> Path:
    return write_fixture_audit(tmp_path_factory.mktemp("figures") / "a")


@pytest.fixture(scope="module")
def written(fixture_audit: Path, tmp_path_factory) -> dict[str, tuple[Path, list[Path]]]:
    """fmt → (output directory, paths written), each format written once for the module."""
    out = {}
    for fmt in FORMATS:
        d = tmp_path_factory.mktemp(f"out-{fmt}")
        out[fmt] = (d, write_figures(fixture_audit, d, fmt))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def num(text: str) -> float | None:
    return None if text == "" else float(text)


def same(a: float | None, b: float | None) -> bool:
    """Equal, NaN equal to NaN: the CSV keeps the records' values exactly."""
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_figure_and_csv_is_written_in_each_format(written, fmt):
    out, paths = written[fmt]
    assert [p.name for p in paths] == [f"{f}.{fmt}" for f in FIGURES] + [f"{f}.csv" for f in FIGURES]
    for p in paths:
        assert p.parent == out and p.stat().st_size > 0
    data = (out / f"audit.{fmt}").read_bytes()
    if fmt == "png":
        assert all((out / f"{f}.png").read_bytes().startswith(PNG_MAGIC) for f in FIGURES)
    elif fmt == "pdf":
        assert data.startswith(b"%PDF-")
        assert b"/FontFile2" in data and b"CreationDate" not in data  # TrueType embedded (pdf.fonttype 42), no date
    else:
        for f in FIGURES:
            ET.fromstring((out / f"{f}.svg").read_bytes())  # well-formed XML
        text = data.decode("utf-8")
        # text stays text (svg.fonttype none): the threshold names are searchable strings
        assert "(b) floor 1e-07" in text and "(a) 50" in text and "(c) drift 0.3" in text and "chance" in text
        assert "<dc:date>" not in text
        traj = (out / "trajectories.svg").read_text(encoding="utf-8")
        assert "(a) e3" in traj and "(b) e3" in traj and "(d) e1" in traj  # fa's and dfa's first fires


def test_default_output_directory_is_figures_inside_the_audit_and_no_setting_leaks(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    path = write_fixture_audit(tmp_path / "a")
    paths = write_figures(path)
    assert {p.parent for p in paths} == {path / "figures"}
    assert (path / "figures" / "audit.png").read_bytes().startswith(PNG_MAGIC)
    assert dict(matplotlib.rcParams) == before  # styles are set in an rc_context only


def test_audit_csv_holds_every_unpenalised_record_exactly(written, fixture_audit):
    rows = read_csv(written["png"][0] / "audit.csv")
    assert list(rows[0]) == ["model", "run_id", "method", "seed", "penalty", "epoch", "growth", "g_L", "stability",
                             "test_acc", "baseline_acc", "fired"]
    audit = Audit.open(fixture_audit)
    expected = {(rid, e.epoch): e for rid in ("bp-s42", "fa-s42", "dfa-s42", "frozen-s42")
                for e in audit.log(rid).epochs}
    assert {(r["run_id"], int(r["epoch"])) for r in rows} == set(expected)  # the penalty rerun is not in it
    for r in rows:
        e = expected[(r["run_id"], int(r["epoch"]))]
        for key in ("growth", "g_L", "stability", "test_acc", "baseline_acc"):
            assert same(num(r[key]), getattr(e, key)), (r["run_id"], r["epoch"], key)
        assert r["fired"] == ";".join(e.fired)
    by = {(r["run_id"], int(r["epoch"])): r for r in rows}
    assert by[("fa-s42", 3)]["growth"] == "nan"  # NaN kept, spelled as Python does
    assert by[("dfa-s42", 5)]["g_L"] == "0.0"  # a zero on the log axis stays a zero
    assert by[("bp-s42", 1)]["test_acc"] == repr(audit.log("bp-s42").epochs[0].test_acc)  # repr: exact round trip
    assert by[("frozen-s42", 1)]["baseline_acc"] == ""  # the baseline itself has none


def test_trajectories_csv_holds_every_run_with_its_first_fires(written, fixture_audit):
    rows = read_csv(written["png"][0] / "trajectories.csv")
    audit = Audit.open(fixture_audit)
    views = {v.log.run_id: v for v in audit_views(audit)}
    assert {r["figure"] for r in rows} == {"trajectories"}
    assert [r["run_id"] for r in rows if r["epoch"] == "1"] == ["bp-s42", "fa-s42", "dfa-s42", "dfa-lam0.01-s42",
                                                                "frozen-s42"]
    for r in rows:
        e = next(x for x in audit.log(r["run_id"]).epochs if x.epoch == int(r["epoch"]))
        assert same(num(r["h_L"]), e.h_L) and same(num(r["g_L"]), e.g_L) and same(num(r["test_acc"]), e.test_acc)
        assert same(num(r["baseline_acc"]), e.baseline_acc)
        first = views[r["run_id"]].verdict.first_fire
        assert r["first_fire"] == ";".join(k for k in "abd" if first.get(k) == e.epoch)
        assert r["verdict"] == views[r["run_id"]].verdict.label
    fa3 = next(r for r in rows if r["run_id"] == "fa-s42" and r["epoch"] == "3")
    assert fa3["h_L"] == "nan" and fa3["first_fire"] == "a" and fa3["status"] == "diverged"
    dfa = [r for r in rows if r["run_id"] == "dfa-s42"]
    assert dfa[2]["first_fire"] == "a;b" and dfa[-1]["g_L"] == "0.0"
    fa = [r for r in rows if r["run_id"] == "fa-s42"]
    # (d) fired from epoch 1 but alerts only on a streak of persist.d = 4 epochs, which fa never reaches
    assert fa[0]["first_fire"] == "d" and [r["alert"] for r in fa] == ["", "", "a"]
    lam = next(r for r in rows if r["run_id"] == "dfa-lam0.01-s42")
    assert lam["penalty"] == "0.01" and lam["status"] == "stopped"


def test_layers_csv_is_the_final_cosines_and_their_mean_and_band(written, fixture_audit):
    rows = read_csv(written["png"][0] / "layers.csv")
    audit = Audit.open(fixture_audit)
    for r in (r for r in rows if r["kind"] == "run"):
        final = audit.log(r["run_id"]).epochs[-1]
        layer = int(r["layer"])
        assert int(r["epoch"]) == final.epoch
        assert num(r["cos"]) == final.cos[layer] and num(r["cos_std"]) == final.cos_std[layer]
        if final.null_mean is None:
            assert r["null_mean"] == r["band_lo"] == r["band_hi"] == ""
        else:
            m, s = final.null_mean[layer], final.null_std[layer]
            assert (num(r["null_mean"]), num(r["null_std"])) == (m, s)
            assert (num(r["band_lo"]), num(r["band_hi"])) == (m - 2 * s, m + 2 * s)
    means = {(r["method"], float(r["penalty"]), int(r["layer"])): r for r in rows if r["kind"] == "mean"}
    assert len(means) == 4 * 3  # bp, fa, dfa, frozen × layers 0..2: the penalty rerun is penalty.csv's
    assert num(means[("fa", 0.0, 0)]["cos"]) == 0.3
    assert means[("dfa", 0.0, 0)]["degenerate"] == "true"  # (b) fired at dfa's final epoch
    assert all(r["run_id"] != "dfa-lam0.01-s42" for r in rows)
    assert means[("bp", 0.0, 1)]["band_lo"] == ""  # bp has no null band


def test_penalty_csv_puts_lambda_zero_one_decade_left(written, fixture_audit):
    rows = read_csv(written["png"][0] / "penalty.csv")
    audit = Audit.open(fixture_audit)
    run = {r["run_id"]: r for r in rows if r["kind"] == "run"}
    assert set(run) == {"dfa-s42", "dfa-lam0.01-s42"}
    assert num(run["dfa-s42"]["x"]) == lambda_zero_x([0.01]) == 0.01 / 10
    assert num(run["dfa-lam0.01-s42"]["x"]) == 0.01
    for rid, r in run.items():
        final = audit.log(rid).epochs[-1]
        assert (num(r["h_L"]), num(r["g_L"]), num(r["test_acc"]), num(r["baseline_acc"])) == \
            (final.h_L, final.g_L, final.test_acc, final.baseline_acc)
        assert int(r["epoch"]) == final.epoch
    assert run["dfa-s42"]["g_L"] == "0.0" and run["dfa-s42"]["degenerate"] == "true"
    assert sum(r["kind"] == "mean" for r in rows) == 2


def test_figure_data_is_what_the_csvs_hold(written, fixture_audit):
    data = figure_data(fixture_audit)
    for name in FIGURES:
        rows = read_csv(written["svg"][0] / f"{name}.csv")
        assert len(rows) == len(data[name])
        for got, want in zip(rows, data[name]):
            for key, value in want.items():
                if isinstance(value, float):
                    assert same(num(got[key]), value), (name, key)
                elif isinstance(value, bool):
                    assert got[key] == ("true" if value else "false")
                else:
                    assert got[key] == ("" if value is None else str(value)), (name, key)


def test_no_penalty_figure_without_reruns_and_a_run_without_records_is_left_out(tmp_path):
    path = write_fixture_audit(tmp_path / "a")
    shutil.rmtree(path / "dfa-lam0.01-s42")  # the only rerun
    (path / "bp-s42" / "records.jsonl").unlink()  # planned, never written
    data = figure_data(path)
    assert data["penalty"] == []
    assert all(r["run_id"] != "bp-s42" for rows in data.values() for r in rows)
    assert list(dict.fromkeys(r["run_id"] for r in data["trajectories"])) == ["fa-s42", "dfa-s42", "frozen-s42"]
    names = [p.name for p in write_figures(path, tmp_path / "out", "svg")]
    assert names == ["audit.svg", "trajectories.svg", "layers.svg", "audit.csv", "trajectories.csv", "layers.csv"]
    assert not (tmp_path / "out" / "penalty.svg").exists()


def test_an_unknown_format_is_refused_before_anything_is_written(fixture_audit, tmp_path):
    with pytest.raises(ConfigError, match="'jpg' is not supported") as err:
        write_figures(fixture_audit, tmp_path / "out", "jpg")
    assert "svg, pdf, png" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_an_audit_without_records_raises_a_store_error(tmp_path):
    audit = Audit.create(load_config(None, tiny("methods=[dfa,frozen]")), tmp_path)
    with pytest.raises(StoreError, match="no epoch records yet in") as err:
        write_figures(audit.path, tmp_path / "out")
    assert str(audit.path) in err.value.problem
    assert not (tmp_path / "out").exists()
    with pytest.raises(StoreError, match="is not a directory"):
        write_figures(tmp_path / "nowhere")


def test_trajectories_are_split_into_pages(fixture_audit, monkeypatch):
    import engine.figures as figures

    monkeypatch.setattr(figures, "MAX_TRAJECTORY_ROWS", 2)
    pages = {}
    for r in figure_data(fixture_audit)["trajectories"]:
        pages.setdefault(r["figure"], []).append(r["run_id"])
    assert {k: list(dict.fromkeys(v)) for k, v in pages.items()} == {
        "trajectories-1": ["bp-s42", "fa-s42"], "trajectories-2": ["dfa-s42", "dfa-lam0.01-s42"],
        "trajectories-3": ["frozen-s42"]}


def test_svg_and_pdf_are_byte_identical_when_written_again(written, fixture_audit, tmp_path):
    for fmt in ("svg", "pdf"):
        again = write_figures(fixture_audit, tmp_path / fmt, fmt)
        first = written[fmt][0]
        for p in again:
            assert p.read_bytes() == (first / p.name).read_bytes(), p.name


def test_importing_engine_figures_imports_neither_matplotlib_nor_torch():
    code = ("import sys, engine.figures\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'torch', 'textual', 'rich')]\n"
            "print(bad[:5]); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_trained_audit_of_two_networks(tmp_path):
    audit = Audit.create(load_config(None, tiny("methods=[dfa,frozen]", "epochs=2",
                                                "models=[{name: res, model: resmlp}, {name: mlp, model: mlp}]")),
                         tmp_path / "runs")
    assert set(train(audit).values()) == {"finished"}
    paths = write_figures(audit.path, tmp_path / "out", "png")
    assert [p.name for p in paths] == ["audit.png", "trajectories-res.png", "trajectories-mlp.png", "layers.png",
                                       "audit.csv", "trajectories.csv", "layers.csv"]
    rows = read_csv(tmp_path / "out" / "audit.csv")
    assert [(r["model"], r["run_id"], r["epoch"]) for r in rows] == [
        (net, f"{net}.{m}-s42", str(e)) for net in ("res", "mlp") for m in ("dfa", "frozen") for e in (1, 2)]
    for r in rows:
        e = audit.log(r["run_id"]).epochs[int(r["epoch"]) - 1]
        assert (num(r["g_L"]), num(r["test_acc"]), num(r["baseline_acc"])) == (e.g_L, e.test_acc, e.baseline_acc)
    assert {r["figure"] for r in read_csv(tmp_path / "out" / "trajectories.csv")} == {"trajectories-res",
                                                                                      "trajectories-mlp"}
    layers = read_csv(tmp_path / "out" / "layers.csv")
    assert {r["model"] for r in layers} == {"res", "mlp"}
    assert all(r["null_mean"] != "" for r in layers if r["method"] == "dfa")  # the band is measured at the last epoch
