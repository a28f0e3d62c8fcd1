"""engine.tracker: the user's own training loop measured with the engine's code into the engine's
records, followed by watch and reported by export; every kind of bad use gets a clear answer."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from engine.api import HiddenStateAdapter
from engine.audit import Audit
from engine.config import load_config
from engine.data import load_task
from engine.errors import StoreError
from engine.model import ResMLP
from engine.plan import RunSpec
from engine.records import stable
from engine.runstore import RECORDS, AuditLock, read_run
from engine.tracker import Tracker, TrackingError, freeze_blocks
from engine.trainer import RunParts, train_epoch
from engine.trainer import epoch_record as engine_record
from faeval_tui.cli import app
from tests.conftest import WAIT_S, tiny

ROOT = Path(__file__).resolve().parent.parent
LABEL = re.compile(r"TRUSTWORTHY|UNVERIFIED: no baseline for \(d\)|WALKED BACK via \([abd]\)(\+\([abd]\))*")


def data(n: int = 256, d: int = 16, classes: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randint(classes, (n,), generator=gen)


def fast() -> dict:
    return {"rho_directions": 2, "null_draws": 2}


def tracker(tmp_path: Path, x=None, y=None, **kw) -> Tracker:
    x, y = (x, y) if x is not None else data()
    return Tracker(x, y, epochs=kw.pop("epochs", 3), audit=kw.pop("audit", tmp_path / "audit"),
                   diagnostics=kw.pop("diagnostics", fast()), on_alert=kw.pop("on_alert", None), **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def export_json(audit_dir: Path) -> dict:
    res = CliRunner().invoke(app, ["export", str(audit_dir), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# ---- the records equal the engine's --------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_task():
    cfg = load_config(None, tiny("methods=[dfa,frozen]", "epochs=3", "diagnostics.rho_every=2",
                                 "diagnostics.null_every=2"))
    return cfg, load_task(cfg)


@pytest.mark.parametrize("method, credit", [("dfa", "dfa"), ("dfa", "engine's instance"), ("frozen", None),
                                            ("dfa", "callable")])
def test_the_tracker_writes_the_engines_records_field_by_field(tmp_path, engine_task, method, credit):
    """The engine's model and method trained by the engine's trainer, measured after every
    epoch by the trainer's path and by the tracker: the same Epoch records, apart from the
    wall-clock fields, with ρ and the null band on the same cadence (rho_every = 2: epochs 2, 3)."""
    cfg, task = engine_task
    spec = RunSpec(f"{method}-s42", method, 42)
    parts = RunParts(cfg, spec, task, torch.device("cpu"))
    x, y = task.diagnostic_set(cfg.diagnostics.n_samples, cfg.diagnostics.stability_batches)
    given = {"engine's instance": parts.method, "callable": lambda probe: parts.method.credit(probe)}.get(credit, credit)
    base = None if method == "frozen" else "given"
    ours, theirs = [], []
    with Tracker(x, y, epochs=cfg.epochs, audit=tmp_path / "t", diagnostics=cfg.diagnostics,
                 thresholds=cfg.thresholds, on_alert=None) as tr:
        run = tr.run(method, seed=42, baseline=base)
        for epoch in range(1, cfg.epochs + 1):
            loss = train_epoch(parts, task, cfg.batch_size, 0.0, threading.Event())
            acc = None if method == "frozen" else 0.97
            rec, _ = engine_record(parts, cfg, task, loss, epoch, 42, baseline_acc=acc, train_s=0.1)
            theirs.append(rec)
            ours.append(run.log(parts.model, given, test_acc=rec.test_acc, test_loss=rec.test_loss, train_loss=loss,
                                lr=rec.lr, baseline_acc=acc if base else None))
    assert [r.rho is None for r in theirs] == [True, False, False]  # the cadence was exercised
    if credit == "callable":  # a plain function has no null band: everything else is the engine's
        assert all(r.null_mean is None and r.null_std is None for r in ours)
        theirs = [r.model_copy(update={"null_mean": None, "null_std": None}) for r in theirs]
    assert stable(ours) == stable(theirs)
    if method == "dfa":
        assert all("d" in r.fired for r in ours) and all(r.baseline_acc == 0.97 for r in ours)
    # and what is on disk, read back as every reader reads it, is the same again
    assert stable(Audit.open(tmp_path / "t").log(spec.run_id).epochs) == stable(theirs)


def test_headers_say_the_runs_came_from_the_users_loop_and_old_fields_stay(tmp_path):
    with tracker(tmp_path, script="train.py") as tr:
        tr.run("mine", seed=1, baseline=tr.frozen(seed=1), penalty=1e-3)
    audit = Audit.open(tr.path)
    assert audit.tracked and [s.run_id for s in audit.planned()] == ["frozen-s1", "mine-lam0.001-s1"]
    head = audit.log("mine-lam0.001-s1").header
    assert (head.source, head.script, head.baseline, head.parent) == ("tracker", "train.py", "frozen-s1", "mine-s1")
    raw = lines(tr.path / "frozen-s1" / RECORDS)
    assert [r["type"] for r in raw] == ["header", "start", "end"] and raw[0]["baseline"] is None
    assert audit.cfg.seeds == [1] and audit.cfg.methods == ["frozen"] and audit.cfg.dataset == "npz"
    assert json.loads((tr.path / "tracked.json").read_text())["diagnostic_set"]["n"] == 256


# ---- the examples, the doc's example, export and watch -------------------------------------------

def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=WAIT_S,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("script, runs", [("own_dfa_loop.py", {"frozen-s0", "own-dfa-s0"}),
                                          ("adapter_loop.py", {"frozen-s0", "bp-s0", "fa-s0"})])
def test_the_examples_run_headless_and_export_gives_every_run_a_verdict(tmp_path, script, runs):
    run_script([str(ROOT / "examples" / script), "--epochs", "2", "--out", "out"], tmp_path)
    (audit_dir,) = (tmp_path / "out").iterdir()
    doc = export_json(audit_dir)
    assert {r["run_id"] for r in doc["runs"]} == runs
    header = Audit.open(audit_dir).log("frozen-s0").header
    assert header.source == "tracker" and header.script == str(ROOT / "examples" / script)
    for r in doc["runs"]:
        assert r["status"] == "finished" and r["epochs_done"] == 2 and LABEL.fullmatch(r["verdict"]), r
        assert r["verdict"] != "UNVERIFIED: no baseline for (d)"  # every run had its baseline
    md = CliRunner().invoke(app, ["export", str(audit_dir), "--format", "markdown"])
    assert md.exit_code == 0 and "tracked in your own training loop" in md.stdout
    # the model line names the user's loop, not the engine's default network the config carries
    assert f"- **model**: the user's own, trained in their own loop ({ROOT / 'examples' / script})" in md.stdout
    assert "ResMLP d = " not in md.stdout


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return "## Audit your own training loop" + text.split("## Audit your own training loop", 1)[1].split("\n## ", 1)[0]


def doc_example() -> str:
    """The README's shortest example (the same text as docs/tracker.md's README section)."""
    (block,) = re.findall(r"```python\n(.*?)```", readme_section(), flags=re.S)
    return block


def test_the_readme_section_is_docs_trackers():
    doc = (ROOT / "docs" / "tracker.md").read_text()
    section = doc.split("<!-- README:begin -->", 1)[1].split("<!-- README:end -->", 1)[0]
    assert section.strip() == readme_section().strip()


def test_the_readme_sections_example_runs_as_written_and_writes_under_runs(tmp_path):
    proc = run_script(["-c", doc_example()], tmp_path)
    out = proc.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in out[:-1]] == ["1", "2", "3", "4", "5"]  # epoch, then fired
    (audit_dir,) = (tmp_path / "runs").iterdir()
    assert out[-1] == str(Path("runs") / audit_dir.name)
    doc = export_json(audit_dir)
    assert {r["run_id"]: r["status"] for r in doc["runs"]} == {"frozen-s0": "finished", "my-dfa-s0": "finished"}
    assert all(LABEL.fullmatch(r["verdict"]) for r in doc["runs"])
    mine = next(r for r in doc["runs"] if r["run_id"] == "my-dfa-s0")
    assert mine["final"]["baseline_acc"] is not None and len(mine["final"]["cos"]) == 4


def test_watch_follows_a_tracked_audit_while_the_loop_runs(tmp_path):
    """What `faeval-tui watch` reads (FileFeed into AuditState), polled between epochs of a live loop."""
    from faeval_tui.feeds import FileFeed
    from faeval_tui.state import AuditState

    x, y = data()
    model, frozen = ResMLP(16, 4, d=8, L=2), ResMLP(16, 4, d=8, L=2)
    freeze_blocks(frozen)
    with tracker(tmp_path, x, y, epochs=4) as tr:
        base = tr.frozen()
        run = tr.run("dfa", baseline=[0.99] * 4)  # a baseline no untrained net reaches: (d) fires
        audit = Audit.open(tr.path)
        state = AuditState(audit.path, audit.cfg, read_only=True)
        feed = FileFeed(audit, state)
        feed.poll()
        assert state.live and set(state.runs) == {"frozen-s0", "dfa-s0"}
        assert {v.status(state.live) for v in state.runs.values()} == {"running"}
        alerts = []
        for _ in range(4):
            base.log(frozen)
            run.log(model)
            alerts += feed.poll()
        assert [len(v.log.epochs) for v in state.runs.values()] == [4, 4]
        assert [(a.run_id, a.diagnostic, a.epoch) for a in alerts] == [("dfa-s0", "d", 4)] == \
            [(a.run_id, a.diagnostic, a.epoch) for a in run.alerts]
    feed.poll()
    assert not state.live and {v.status(False) for v in state.runs.values()} == {"finished"}
    assert state.runs["dfa-s0"].verdict.label == "WALKED BACK via (d)"


def test_a_baseline_of_the_same_loop_is_paired_by_every_reader(tmp_path):
    x, y = data()
    models = {"frozen": ResMLP(16, 4, d=8, L=2), "bp": ResMLP(16, 4, d=8, L=2)}
    freeze_blocks(models["frozen"])
    with tracker(tmp_path, x, y, epochs=2) as tr:
        runs = {"bp": tr.run("bp", seed=3, baseline="frozen-s3"), "frozen": tr.frozen(seed=3)}
        for _ in range(2):
            runs["bp"].log(models["bp"])  # before its baseline: the written record has none yet
            runs["frozen"].log(models["frozen"])
    assert runs["bp"].records[0].baseline_acc is None
    frozen_acc = [r.test_acc for r in runs["frozen"].records]
    assert [e.baseline_acc for e in Audit.open(tr.path).log("bp-s3").epochs] == frozen_acc
    assert [e.baseline_acc for log in Audit.open(tr.path).logs() if log.run_id == "bp-s3" for e in log.epochs] \
        == frozen_acc
    doc = export_json(tr.path)
    assert {r["run_id"]: r["verdict"] for r in doc["runs"]}["bp-s3"] != "UNVERIFIED: no baseline for (d)"


def test_freeze_blocks_freezes_what_the_engines_frozen_baseline_freezes():
    mine, engines = ResMLP(16, 4, d=8, L=2), ResMLP(16, 4, d=8, L=2)
    from engine.methods import get_method

    trained = freeze_blocks(mine)
    get_method("frozen")(engines, 4, torch.Generator())
    assert [p.requires_grad for p in mine.parameters()] == [p.requires_grad for p in engines.parameters()]
    assert trained == [p for p in mine.parameters() if p.requires_grad] and 0 < len(trained) < len(
        list(mine.parameters()))
    with pytest.raises(TrackingError, match="no parameters to freeze"):
        freeze_blocks(HiddenStateAdapter(nn.Linear(16, 4), embed=lambda m, x: x, blocks=[lambda m, h: h],
                                         head=lambda m, h: m(h)))


# ---- bad use ----------------------------------------------------------------------------------------

def test_a_model_without_the_hidden_state_interface_is_refused_at_the_call_naming_the_adapter(tmp_path):
    with tracker(tmp_path) as tr:
        run = tr.run("bp")
        with pytest.raises(TrackingError, match="(?s)has no depth, hidden_states, forward_from.*HiddenStateAdapter"):
            run.log(nn.Sequential(nn.Linear(16, 4)))
        # the adapter is the answer, and the run goes on
        net = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
        rec = run.log(HiddenStateAdapter(net, embed="0", blocks=["1"], head="2"))
        assert rec.epoch == 1 and rec.layers == 2
    assert [r["type"] for r in lines(tr.path / "bp-s0" / RECORDS)] == ["header", "start", "epoch", "end"]


def test_credits_of_the_wrong_shape_name_the_layer_and_both_shapes_and_write_nothing(tmp_path):
    model = ResMLP(16, 4, d=8, L=2)
    with tracker(tmp_path) as tr:
        run = tr.run("mine")
        wrong = lambda probe: [*probe.grads[:2], probe.grads[2][:, :5]]  # noqa: E731
        with pytest.raises(TrackingError, match=re.escape("a_2 has shape (256, 5), h_2 has shape (256, 8)")):
            run.log(model, wrong)
        with pytest.raises(TrackingError, match="returned 2 credits; the model has 3 hidden states h_0..h_2"):
            run.log(model, lambda probe: probe.grads[:2])
        with pytest.raises(TrackingError, match="returned a Tensor, not a list"):
            run.log(model, lambda probe: probe.grads[0])
        with pytest.raises(TrackingError, match="no registered method is called 'mine'"):
            run.log(model)  # no credit given, and its name is no registered method
        assert run.log(model, lambda probe: probe.grads).epoch == 1  # the run is still open
    assert [r["type"] for r in lines(tr.path / "mine-s0" / RECORDS)] == ["header", "start", "epoch", "end"]


def test_non_finite_credits_are_recorded_as_the_engine_records_them_and_end_the_run_diverged(tmp_path):
    model = ResMLP(16, 4, d=8, L=2)

    def credit(probe):
        return [g.clone() if layer != 1 else torch.full_like(g, math.nan) for layer, g in enumerate(probe.grads)]

    with tracker(tmp_path) as tr:
        run = tr.run("mine", credit=credit)
        rec = run.log(model)
        assert math.isnan(rec.a_norm[1]) and math.isnan(rec.cos[1]) and rec.cos_excluded == [0, 256, 0]
        assert rec.cos[0] == pytest.approx(1.0) and run.status == "diverged"
        with pytest.warns(RuntimeWarning, match="ended \\(diverged\\) at epoch 1"):
            assert run.log(model) is None
    log = read_run(tr.path / "mine-s0" / RECORDS)
    assert log.end.status == "diverged" and "non-finite values in a_norm at epoch 1" in log.end.message
    assert log.epochs[0].to_json() == rec.to_json()  # NaN written as "NaN", read back as NaN


def test_two_trackers_on_one_run_are_refused_by_its_lock(tmp_path):
    with tracker(tmp_path) as first:
        first.run("bp", seed=5)
        with tracker(tmp_path) as second:  # the same audit, reopened: more runs are fine
            with pytest.raises(StoreError, match="run bp-s5 .* is being written by another tracker in this process"):
                second.run("bp", seed=5)
            second.run("bp", seed=6)
        code = ("import sys, torch; from engine.tracker import Tracker\n"
                "g = torch.Generator().manual_seed(0)\n"
                "x, y = torch.randn(256, 16, generator=g), torch.randint(4, (256,), generator=g)\n"
                f"t = Tracker(x, y, audit={str(first.path)!r}, on_alert=None)\n"
                "try:\n    t.run('bp', seed=5)\nexcept Exception as e:\n    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT)
        assert proc.returncode == 3 and re.search(r"being written by another process \(pid \d+\)", proc.stdout), \
            proc.stdout + proc.stderr
    assert read_run(first.path / "bp-s5" / RECORDS).end.status == "finished"


def test_a_reused_run_id_is_refused_with_the_old_runs_status(tmp_path):
    with tracker(tmp_path) as tr:
        tr.run("bp", seed=0)
        with pytest.raises(StoreError, match="already tracked by this tracker"):
            tr.run("bp", seed=0)
    with tracker(tmp_path) as again, pytest.raises(StoreError, match="bp-s0 .* already has records \\(finished"):
        again.run("bp", seed=0)
    assert len(lines(tr.path / "bp-s0" / RECORDS)) == 3  # header, start, end: untouched


def test_an_exception_in_the_loop_ends_the_runs_failed_with_its_message_and_goes_on(tmp_path):
    model = ResMLP(16, 4, d=8, L=2)
    with pytest.raises(ZeroDivisionError), tracker(tmp_path) as tr:
        run = tr.run("bp")
        run.log(model)
        _ = 1 / 0
    log = read_run(tr.path / "bp-s0" / RECORDS)
    assert (log.end.status, log.end.epoch, log.end.message) == ("failed", 1, "ZeroDivisionError: division by zero")
    assert "_ = 1 / 0" in log.end.traceback and not AuditLock.is_held(tr.path)
    with pytest.raises(TrackingError, match="is closed"):
        run.log(model)


def test_epochs_out_of_order_or_past_the_declared_ones_are_refused(tmp_path):
    model = ResMLP(16, 4, d=8, L=2)
    with tracker(tmp_path, epochs=2) as tr:
        run = tr.run("bp")
        run.log(model, epoch=2)
        with pytest.raises(TrackingError, match="epoch 2 is not after the last one logged \\(2\\)"):
            run.log(model, epoch=2)
        with pytest.raises(TrackingError, match="declared with 2 epochs; epoch 3 is past them"):
            run.log(model)
        with pytest.raises(TrackingError, match="fractions"):
            tr.run("bp", seed=1).log(model, test_acc=97.5)
        with pytest.raises(TrackingError, match="only for runs declared with baseline='given'"):
            tr.run("bp", seed=2).log(model, baseline_acc=0.5)


def test_the_tracker_holds_the_audit_shared_so_the_engine_cannot_train_it(tmp_path):
    from engine.scheduler import AuditRunner

    with tracker(tmp_path) as tr:
        tr.run("bp")
        assert AuditLock.is_held(tr.path)
        with pytest.raises(StoreError, match="is being trained by another process"):
            AuditLock(tr.path).acquire()
    assert not AuditLock.is_held(tr.path)
    with pytest.raises(StoreError, match="measured in your own training loop"):
        AuditRunner(Audit.open(tr.path))
    res = CliRunner().invoke(app, ["resume", str(tr.path)])
    assert res.exit_code == 2 and "engine.tracker" in res.output


def test_an_engine_audit_or_another_diagnostic_set_is_not_tracked_into(tmp_path, new_audit):
    engine_audit = new_audit()
    with pytest.raises(StoreError, match="an audit the engine trains"):
        tracker(tmp_path, audit=engine_audit.path)
    tracker(tmp_path).close()
    x, y = data(seed=1)
    with pytest.raises(TrackingError, match="another diagnostic set"):
        tracker(tmp_path, x, y)
    with pytest.raises(TrackingError, match="other thresholds"):
        tracker(tmp_path, thresholds={"growth": 10.0})
    with pytest.raises(TrackingError, match="fewer than the 16"):
        Tracker(*data(n=12), epochs=1, runs_dir=tmp_path / "small")


def test_every_line_the_tracker_writes_has_exactly_its_models_fields(tmp_path):
    from tests.test_records import MODELS, fields

    model = ResMLP(16, 4, d=8, L=2)
    with tracker(tmp_path) as tr:
        tr.run("bp").log(model)
    raw = lines(tr.path / "bp-s0" / RECORDS)
    assert [r["type"] for r in raw] == ["header", "start", "epoch", "end"]
    for line in raw:
        assert set(line) == fields(MODELS[line["type"]]), line["type"]


def test_an_interrupted_loop_ends_its_runs_stopped_and_a_trainable_baseline_is_warned_about(tmp_path):
    model = ResMLP(16, 4, d=8, L=2)  # not frozen
    with pytest.raises(KeyboardInterrupt), tracker(tmp_path) as tr:
        base = tr.frozen()
        with pytest.warns(RuntimeWarning, match="frozen-blocks baseline, but the blocks of ResMLP require gradients"):
            base.log(model)
        raise KeyboardInterrupt
    end = read_run(tr.path / "frozen-s0" / RECORDS).end
    assert (end.status, end.epoch, end.message) == ("stopped", 1, "interrupted (KeyboardInterrupt) after epoch 1")
