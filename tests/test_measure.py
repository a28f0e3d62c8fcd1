"""`faeval-tui measure`: a kept (or the last) checkpoint measured again, and every refusal."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil

import pytest
import torch
from typer.testing import CliRunner

from engine import Audit, load_config
from engine.checkpoint import kept_path
from engine.errors import DataError, StoreError
from engine.records import Epoch, stable
from engine.remeasure import NOT_REMEASURED, remeasure
from faeval_tui.cli import app
from tests.conftest import tiny, train

cli = CliRunner()
RUNS = ("frozen-s42", "bp-s42", "fa-s42", "dfa-s42")
MEASURED = [k for k in Epoch.model_fields if k not in NOT_REMEASURED]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three epochs of frozen, bp, fa and dfa keeping epoch 1; tests that change files copy it."""
    audit = Audit.create(load_config(None, tiny("epochs=3", "methods=[frozen, bp, fa, dfa]",
                                                "keep_checkpoints=[1]")), tmp_path_factory.mktemp("m"))
    assert set(train(audit).values()) == {"finished"}
    return audit


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of the trained audit this test may change."""
    return Audit.open(shutil.copytree(trained.path, tmp_path / trained.path.name))


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def _files(root):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, res.output


# ---------------------------------------------------------------- what it measures

@pytest.mark.parametrize("rid", RUNS)
def test_defaults_on_a_kept_epoch_1_checkpoint_reproduce_that_epochs_record_exactly(trained, rid):
    result = remeasure(trained.path / rid, epoch=1)
    recorded = next(e for e in trained.log(rid).epochs if e.epoch == 1)
    assert result.kept and result.path == kept_path(trained.path / rid, 1) and result.epoch == 1
    for key in MEASURED:  # cos, cos_std, rho, null band, norms, growth, g_L, stability, accuracy, lr, fired …
        assert _same(getattr(result.record, key), getattr(recorded, key)), key
    assert result.record.train_loss is None  # nothing trained
    assert result.differs() == []
    assert {"cos", "rho", "h_norm", "g_L", "growth", "stability"} <= set(result.compared())
    if rid in ("fa-s42", "dfa-s42"):
        assert result.record.null_mean is not None and "null_mean" in result.compared()


def test_without_epoch_it_measures_the_last_checkpoint_and_reproduces_that_record(trained):
    result = remeasure(trained.path / "dfa-s42")
    assert (result.epoch, result.kept, result.path.name) == (3, False, "checkpoint.pt")
    assert stable([remeasure(trained.path / "dfa-s42", epoch=3).record]) == stable([result.record])  # the same file
    assert result.differs() == [] and "null_mean" in result.compared()


def test_it_writes_nothing_and_takes_no_lock(trained):
    before = _files(trained.path)
    remeasure(trained.path / "dfa-s42", epoch=1, null_draws=30, nudge=True)
    cli.invoke(app, ["measure", str(trained.path / "bp-s42"), "--format", "json"])
    assert _files(trained.path) == before


def test_more_null_draws_and_directions_change_only_the_band_and_rho(trained):
    base = remeasure(trained.path / "dfa-s42", epoch=1)
    more = remeasure(trained.path / "dfa-s42", epoch=1, null_draws=40, rho_directions=8)
    assert more.record.cos == base.record.cos and more.record.h_norm == base.record.h_norm
    assert more.record.null_mean != base.record.null_mean and more.record.rho != base.record.rho
    assert not {"null_mean", "null_std", "rho", "deep_rho"} & set(more.compared())
    assert more.differs() == []
    assert more.to_json()["settings"]["null_draws"] == 40 and more.to_json()["settings"]["rho_directions"] == 8


def test_an_epoch_whose_training_skipped_rho_gets_rho_and_still_its_recorded_null_band(new_audit):
    audit = new_audit("methods=[dfa]", "epochs=3", "diagnostics.rho_every=2", "keep_checkpoints=[1]")
    train(audit)
    recorded = audit.log("dfa-s42").epochs[0]
    assert recorded.rho is None and recorded.null_mean is not None
    result = remeasure(audit.path / "dfa-s42", epoch=1)
    assert result.record.rho is not None and len(result.record.rho) == len(recorded.cos)
    assert result.record.null_mean == recorded.null_mean and result.record.null_std == recorded.null_std
    assert "rho" not in result.compared() and result.differs() == []
    assert "ρ not compared" in result.verdict_line()


def test_nudge_column_in_markdown_and_every_per_layer_field_in_json(trained):
    res = cli.invoke(app, ["measure", str(trained.path / "bp-s42"), "--epoch", "1", "--nudge"])
    assert res.exit_code == 0, res.output
    assert "# faeval measure: bp-s42, epoch 1" in res.output
    assert "every field measured equals records.jsonl's epoch 1 line" in res.output
    rows = [line for line in res.output.splitlines() if line.startswith("|")]
    headers = [c.strip() for c in rows[0].strip("|").split("|")]
    assert headers[-2:] == ["nudge Δℓ ± std", "bp Δℓ"] and "cos_l ± std (over samples)" in headers
    body = [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]
    assert [r[headers.index("layer")] for r in body] == ["0", "1", "2", "3", "4"]
    assert all(r[-2].startswith(("−", "-")) for r in body)  # bp's credit points downhill at every layer
    assert [r[-2].split(" ± ")[0] for r in body] == [r[-1] for r in body]  # and it is the BP gradient

    res = cli.invoke(app, ["measure", str(trained.path / "dfa-s42"), "--epoch", "1", "--nudge", "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    recorded = next(e for e in trained.log("dfa-s42").epochs if e.epoch == 1)
    assert (out["run_id"], out["epoch"], out["kept"]) == ("dfa-s42", 1, True)
    assert out["against_record"]["differs"] == [] and out["settings"]["nudge_eta"] == 0.01
    assert [layer["layer"] for layer in out["layers"]] == [0, 1, 2, 3, 4]
    for l, layer in enumerate(out["layers"]):
        assert {"cos", "cos_std", "cos_excluded", "rho", "null_mean", "null_std", "z", "h_norm", "g_norm", "a_norm",
                "nudge", "nudge_std", "nudge_excluded", "nudge_bp"} <= set(layer)
        assert layer["cos"] == recorded.cos[l] and layer["null_std"] == recorded.null_std[l]
        assert isinstance(layer["nudge"], float) and layer["nudge_bp"] < 0
    assert out["scalars"]["g_L"] == recorded.g_L and out["scalars"]["fired"] == recorded.fired

    bp = remeasure(trained.path / "bp-s42", epoch=1, nudge=True)
    assert all(v < 0 for v in bp.nudge["nudge"])
    assert bp.nudge["nudge"] == pytest.approx(bp.nudge["nudge_bp"], rel=1e-9)
    assert stable([bp.record]) == stable([remeasure(trained.path / "bp-s42", epoch=1).record])  # it draws nothing


# ---------------------------------------------------------------- refusals

def test_an_epoch_that_was_not_kept_is_refused_listing_the_kept_ones(trained):
    res = cli.invoke(app, ["measure", str(trained.path / "dfa-s42"), "--epoch", "2"])
    _refused(res, "run dfa-s42 kept no checkpoint of epoch 2", "kept: epoch 1 (checkpoints/)",
             "the last checkpoint (checkpoint.pt) is of epoch 3", "keep_checkpoints=[2]")
    _refused(cli.invoke(app, ["measure", str(trained.path / "dfa-s42"), "--epoch", "9"]),
             "run dfa-s42 trains 3 epochs: it has no epoch 9")
    _refused(cli.invoke(app, ["measure", str(trained.path)]), "is an audit directory, not one of its runs")


def test_a_deleted_last_checkpoint_is_named_as_deleted_not_as_a_run_still_untrained(copy):
    (copy.path / "dfa-s42" / "checkpoint.pt").unlink()
    res = cli.invoke(app, ["measure", str(copy.path / "dfa-s42")])
    _refused(res, "run dfa-s42 has no checkpoint.pt", "though its records reach epoch 3: it was deleted or moved",
             "measure a kept epoch with --epoch N")
    assert "train it first" not in res.output
    shutil.rmtree(copy.path / "dfa-s42" / "checkpoints")
    res = cli.invoke(app, ["measure", str(copy.path / "dfa-s42")])
    _refused(res, "though its records reach epoch 3", "put checkpoint.pt back where training wrote it")


def test_a_checkpoint_of_another_run_is_refused(copy):
    dfa = copy.path / "dfa-s42"
    shutil.copyfile(kept_path(copy.path / "fa-s42", 1), kept_path(dfa, 1))
    _refused(cli.invoke(app, ["measure", str(dfa), "--epoch", "1"]), "belongs to another run",
             "run_id 'fa-s42' (this run's is 'dfa-s42')")
    state = torch.load(dfa / "checkpoint.pt", weights_only=True)
    state["seed"] = 7
    torch.save(state, dfa / "checkpoint.pt")
    _refused(cli.invoke(app, ["measure", str(dfa)]), "belongs to another run", "seed 7 (this run's is 42)")


def test_a_checkpoint_of_the_same_run_id_in_another_audit_is_refused(copy, new_audit, tmp_path):
    other = new_audit("methods=[dfa]", "epochs=1", "d=8", runs_dir=tmp_path / "other")
    train(other)
    shutil.copyfile(other.path / "dfa-s42" / "checkpoint.pt", kept_path(copy.path / "dfa-s42", 1))
    with pytest.raises(StoreError) as err:
        remeasure(copy.path / "dfa-s42", epoch=1)
    assert "was trained under another config" in err.value.problem and "d: 8 in the checkpoint, 16" in err.value.problem


def test_a_kept_file_renamed_to_another_epoch_is_refused(copy):
    dfa = copy.path / "dfa-s42"
    shutil.copyfile(kept_path(dfa, 1), kept_path(dfa, 2))
    _refused(cli.invoke(app, ["measure", str(dfa), "--epoch", "2"]), "holds epoch 1, not epoch 2")


def test_a_checkpoint_trained_on_other_data_is_refused(copy):
    path = kept_path(copy.path / "dfa-s42", 1)
    state = torch.load(path, weights_only=True)
    state["task_fingerprint"] = "0" * 64
    torch.save(state, path)
    with pytest.raises(DataError) as err:
        remeasure(copy.path / "dfa-s42", epoch=1)
    assert "is not the data checkpoint" in err.value.problem


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# torch warns about the raw pickle it is handed: that file is the point of the test
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(copy, tmp_path):
    marker = tmp_path / "pwned"
    with open(kept_path(copy.path / "dfa-s42", 1), "wb") as fh:
        pickle.dump({"model": _Payload(marker), "epoch": 1}, fh)
    _refused(cli.invoke(app, ["measure", str(copy.path / "dfa-s42"), "--epoch", "1"]), "cannot be loaded",
             "not a checkpoint faeval-tui wrote")
    assert not marker.exists()
    assert "weights_only=False" not in cli.invoke(app, ["measure", str(copy.path / "dfa-s42"), "--epoch", "1"]).output


@pytest.mark.parametrize("content", [b"\x00garbage" * 10, b"", b"PK\x03\x04" + b"\x00" * 40])
def test_garbage_in_place_of_a_checkpoint_is_refused(copy, content):
    (copy.path / "dfa-s42" / "checkpoint.pt").write_bytes(content)
    res = cli.invoke(app, ["measure", str(copy.path / "dfa-s42")])
    _refused(res, "checkpoint.pt")
    assert any(w in res.output for w in ("cannot be loaded", "empty or truncated", "truncated or damaged"))


def test_a_plain_data_file_without_the_checkpoint_keys_is_refused(copy):
    torch.save({"weights": torch.zeros(3)}, copy.path / "dfa-s42" / "checkpoint.pt")
    _refused(cli.invoke(app, ["measure", str(copy.path / "dfa-s42")]), "is not a faeval-tui checkpoint")


def test_an_unknown_format_is_refused(trained):
    _refused(cli.invoke(app, ["measure", str(trained.path / "bp-s42"), "--format", "latex"]),
             "unknown measure format 'latex'")
