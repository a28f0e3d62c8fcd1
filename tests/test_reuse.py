"""Controls reused across audits (engine/reuse.py): a later audit under the same runs dir copies
a finished identical run, verified by its checksums, instead of training it again."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import engine.scheduler
from engine import Audit, AuditRunner, load_config
from engine.checkpoint import kept_path, load_checkpoint
from engine.data import load_task, task_fingerprint
from engine.events import EpochDone, RunEnded, RunStarted
from engine.markdown import render_markdown
from engine.methods.bp import Backprop
from engine.plan import RunSpec
from engine.report import export_json
from engine.reuse import INDEX, NotReusable, code_version, key_contents, read_index, run_key, verify
from engine.runstore import CHECKPOINT, RECORDS
from engine.trainer import train_run as real_train_run
from tests.conftest import tiny

CONTROLS = ("methods=[dfa,frozen]",)  # TINY: seed 42, 2 epochs


def make(runs_dir, *sets) -> Audit:
    return Audit.create(load_config(None, tiny("reuse=true", *sets)), runs_dir)


def train(audit, **kw):
    """(statuses, runner, events, notes): every unfinished run trained or reused."""
    events, notes = [], []
    runner = AuditRunner(audit, events.append, warn=notes.append, **kw)
    runner.submit_unfinished()
    return runner.run(), runner, events, notes


@pytest.fixture
def trained_calls(monkeypatch):
    """The run ids train_run is called for (it still trains them)."""
    calls = []

    def spy(audit, spec, *args, **kw):
        calls.append(spec.run_id)
        return real_train_run(audit, spec, *args, **kw)

    monkeypatch.setattr(engine.scheduler, "train_run", spy)
    return calls


@pytest.fixture
def no_training(monkeypatch):
    def refuse(audit, spec, *args, **kw):
        pytest.fail(f"{spec.run_id} was trained; it should have been reused")

    monkeypatch.setattr(engine.scheduler, "train_run", refuse)


def raw(audit: Audit, rid: str) -> list[dict]:
    return [json.loads(line) for line in (audit.run_dir(rid) / RECORDS).read_text().splitlines()]


def epoch_lines(audit: Audit, rid: str) -> list[dict]:
    return [line for line in raw(audit, rid) if line["type"] == "epoch"]


# ------------------------------------------------------------------ reuse end to end

def test_a_second_identical_audit_reuses_every_run_and_trains_nothing(tmp_path, monkeypatch):
    first = make(tmp_path, *CONTROLS)
    statuses, runner, _, notes = train(first)
    assert statuses == {"frozen-s42": "finished", "dfa-s42": "finished"} and runner.reused == {} and notes == []
    index = read_index(first.path)
    assert sorted(e["run"] for e in index.values()) == ["dfa-s42", "frozen-s42"]
    assert all(e["reused_from"] is None for e in index.values())

    def refuse(audit, spec, *args, **kw):
        pytest.fail(f"{spec.run_id} was trained")

    monkeypatch.setattr(engine.scheduler, "train_run", refuse)
    second = make(tmp_path, *CONTROLS)
    statuses, runner, events, notes = train(second)
    assert statuses == {"frozen-s42": "finished", "dfa-s42": "finished"} and notes == []
    assert runner.reused == {rid: str(first.run_dir(rid)) for rid in statuses}
    for rid in statuses:
        lines = raw(second, rid)
        assert [line["type"] for line in lines] == ["header", "start", "epoch", "epoch", "end"]
        assert epoch_lines(second, rid) == epoch_lines(first, rid)  # every field, wall-clock ones too
        header, end = lines[0], lines[-1]
        assert header["reused_from"] == str(first.run_dir(rid)) and header["run_id"] == rid
        assert header["config"] == second.cfg.dump()
        assert (end["status"], end["epoch"], end["message"]) == ("finished", 2, f"reused from {first.run_dir(rid)}")
        assert second.log(rid).status(False) == "finished" and second.log(rid).problems == []
        # the checkpoint is the source's weights, as this run's
        mine, theirs = load_checkpoint(second.run_dir(rid) / CHECKPOINT), load_checkpoint(first.run_dir(rid) / CHECKPOINT)
        assert mine["run_id"] == rid and mine["config"] == second.cfg.dump() and mine["epoch"] == 2
        assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in theirs["model"])
        # the listener heard what training would have sent: start, each epoch as on disk, end
        heard = [e for e in events if e.run_id == rid]
        assert isinstance(heard[0], RunStarted) and heard[0].header == second.log(rid).header
        assert [e.record for e in heard if isinstance(e, EpochDone)] == second.log(rid).epochs
        assert isinstance(heard[-1], RunEnded) and heard[-1].status == "finished"
        assert heard[-1].message == f"reused from {first.run_dir(rid)}"
    # its own index offers the copies in turn, saying where they came from
    assert {e["run"]: e["reused_from"] for e in read_index(second.path).values()} == \
        {rid: str(first.run_dir(rid)) for rid in statuses}

    doc = export_json(second)
    assert {r["run_id"]: r["reused_from"] for r in doc["runs"]} == {rid: str(first.run_dir(rid)) for rid in statuses}
    assert {r["run_id"]: r["reused_from"] for r in export_json(first)["runs"]} == dict.fromkeys(statuses)
    md = render_markdown(second)
    line = next(x for x in md.splitlines() if x.startswith("- **reused**"))
    assert line.startswith("- **reused**: 2 runs not trained here but copied from an identical finished run")
    assert line.endswith(f"frozen-s42 from {first.path.name}/frozen-s42; dfa-s42 from {first.path.name}/dfa-s42")
    assert "**reused**" not in render_markdown(first)


def test_an_audit_that_adds_a_method_reuses_the_controls_and_trains_only_the_new_one(tmp_path, trained_calls):
    first = make(tmp_path, *CONTROLS)
    train(first)
    trained_calls.clear()
    third = make(tmp_path, "methods=[dfa,bp,frozen]")
    statuses, runner, _, notes = train(third)
    assert statuses == dict.fromkeys(["frozen-s42", "dfa-s42", "bp-s42"], "finished") and notes == []
    assert trained_calls == ["bp-s42"]
    assert sorted(runner.reused) == ["dfa-s42", "frozen-s42"]
    assert third.log("bp-s42").header.reused_from is None
    # bp trained against the reused baseline: the same accuracies the source's dfa was measured against
    frozen = [e.test_acc for e in third.log("frozen-s42").epochs]
    assert [e.baseline_acc for e in third.log("bp-s42").epochs] == frozen
    assert [e.baseline_acc for e in third.log("dfa-s42").epochs] == frozen


def test_a_method_measured_without_a_baseline_is_not_reused_beside_one(tmp_path, trained_calls):
    alone = make(tmp_path, "methods=[dfa]")  # no frozen run: its (d) has no baseline_acc
    train(alone)
    trained_calls.clear()
    statuses, runner, _, notes = train(make(tmp_path, *CONTROLS))
    assert trained_calls == ["frozen-s42", "dfa-s42"] and runner.reused == {} and notes == []


def test_reuse_false_trains_everything_and_offers_nothing(tmp_path, trained_calls):
    train(make(tmp_path, *CONTROLS))
    trained_calls.clear()
    off = make(tmp_path, *CONTROLS, "reuse=false")
    statuses, runner, _, notes = train(off)
    assert set(statuses.values()) == {"finished"} and trained_calls == ["frozen-s42", "dfa-s42"]
    assert runner.reused == {} and notes == [] and not (off.path / INDEX).exists()
    assert all(off.log(rid).header.reused_from is None for rid in statuses)


def test_a_run_that_already_started_is_never_filled_by_a_copy(tmp_path, trained_calls):
    train(make(tmp_path, "methods=[frozen]"))
    second = make(tmp_path, "methods=[frozen]", "reuse=false")
    runner = None

    def stop_after_one(event):
        if isinstance(event, EpochDone):
            runner.stop()

    runner = AuditRunner(second, stop_after_one)
    runner.submit_unfinished()
    assert runner.run() == {"frozen-s42": "stopped"}
    second.cfg.reuse = True  # uncompared: the resume may turn it on
    trained_calls.clear()
    statuses, runner, _, _ = train(Audit(second.path, second.cfg))
    assert statuses == {"frozen-s42": "finished"} and trained_calls == ["frozen-s42"] and runner.reused == {}
    assert second.log("frozen-s42").header.reused_from is None


def test_a_penalty_rerun_queued_from_the_console_is_reused_under_its_queued_header(tmp_path, trained_calls):
    rerun = RunSpec("dfa-lam0.1-s42", "dfa", 42, 0.1, "dfa-s42")
    first = make(tmp_path, *CONTROLS)
    runner = AuditRunner(first)
    runner.submit_unfinished()
    runner.submit(rerun)
    assert runner.run()["dfa-lam0.1-s42"] == "finished"
    trained_calls.clear()
    second = make(tmp_path, *CONTROLS)
    runner = AuditRunner(second)
    runner.submit_unfinished()
    runner.submit(rerun)  # Audit.add_run writes its header at once: a queued run is still fresh
    queued = second.log("dfa-lam0.1-s42").header
    assert runner.run()["dfa-lam0.1-s42"] == "finished" and trained_calls == []
    log = second.log("dfa-lam0.1-s42")
    assert log.header.created == queued.created and log.header.parent == "dfa-s42" and log.header.penalty == 0.1
    assert log.header.reused_from == str(first.run_dir("dfa-lam0.1-s42"))
    assert epoch_lines(second, "dfa-lam0.1-s42") == epoch_lines(first, "dfa-lam0.1-s42")


# ------------------------------------------------------------------ verification

def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (lambda d: _flip_byte(d / RECORDS), "its records.jsonl changed after the run finished (SHA-256 now "),
    (lambda d: _flip_byte(d / CHECKPOINT), "its checkpoint.pt changed after the run finished (SHA-256 now "),
    (lambda d: (d / RECORDS).unlink(), "its records.jsonl is gone"),
    (lambda d: (d / CHECKPOINT).unlink(), "its checkpoint.pt is gone"),
], ids=["records-byte", "checkpoint-byte", "records-deleted", "checkpoint-deleted"])
def test_a_source_changed_after_it_finished_is_not_reused_and_the_reason_is_reported(tmp_path, trained_calls,
                                                                                      damage, reason):
    first = make(tmp_path, "methods=[frozen]")
    train(first)
    src = first.run_dir("frozen-s42")
    damage(src)
    trained_calls.clear()
    second = make(tmp_path, "methods=[frozen]")
    statuses, runner, _, notes = train(second)
    assert statuses == {"frozen-s42": "finished"} and trained_calls == ["frozen-s42"] and runner.reused == {}
    expected = f"frozen-s42: not reused from {src}: {reason}"
    assert len(notes) == 1 and notes[0].startswith(expected) and notes[0].endswith("; it trains"), notes
    assert runner.not_reused == {"frozen-s42": [notes[0].removeprefix("frozen-s42: ")]}
    assert second.log("frozen-s42").header.reused_from is None
    # the run trained here is offered from now on: a third audit reuses it, never the damaged one
    trained_calls.clear()
    _, runner, _, notes = train(make(tmp_path, "methods=[frozen]"))
    assert trained_calls == [] and runner.reused == {"frozen-s42": str(second.run_dir("frozen-s42"))}
    # when the damaged one is tried first, it is said again, with the copy used instead
    assert all(n.startswith(expected) and n.endswith(f"(reused from {second.run_dir('frozen-s42')} instead)")
               for n in notes)


def test_the_default_warning_goes_to_stderr(tmp_path, capsys):
    first = make(tmp_path, "methods=[frozen]")
    train(first)
    (first.run_dir("frozen-s42") / CHECKPOINT).unlink()
    runner = AuditRunner(make(tmp_path, "methods=[frozen]"))
    runner.submit_unfinished()
    assert runner.run() == {"frozen-s42": "finished"}
    assert (f"faeval-tui: frozen-s42: not reused from {first.run_dir('frozen-s42')}: its checkpoint.pt is gone; "
            "it trains\n") in capsys.readouterr().err


def test_a_source_measured_against_another_baseline_is_refused(tmp_path):
    first = make(tmp_path, *CONTROLS)
    _, runner, _, _ = train(first)
    spec = RunSpec("dfa-s42", "dfa", 42)
    _, contents = runner._key(spec)
    entry = next(e for e in read_index(first.path).values() if e["run"] == "dfa-s42")
    frozen = {e.epoch: e.test_acc for e in first.log("frozen-s42").epochs}
    assert verify(first.run_dir("dfa-s42"), entry, first.cfg, spec, contents, frozen).epochs
    with pytest.raises(NotReusable, match="its epoch 1 was measured against a baseline accuracy of"):
        verify(first.run_dir("dfa-s42"), entry, first.cfg, spec, contents, {1: 0.0, 2: 0.0})
    with pytest.raises(NotReusable, match="its header says method 'dfa' \\(this run's is 'fa'\\)"):
        verify(first.run_dir("dfa-s42"), entry, first.cfg, dataclasses.replace(spec, method="fa"), contents, frozen)


# ------------------------------------------------------------------ what is never cached

class NaNLoss(Backprop):
    name = "test_reuse_nan"

    def step(self, model, x, y, penalty):
        return super().step(model, x, y, penalty) * float("nan")


class Boom(Backprop):
    name = "test_reuse_boom"

    def step(self, model, x, y, penalty):
        raise RuntimeError("boom")


def test_diverged_failed_and_stopped_runs_are_never_offered(tmp_path, registered, trained_calls):
    registered(NaNLoss)
    registered(Boom)
    audit = make(tmp_path, "methods=[bp,test_reuse_nan,test_reuse_boom]")
    statuses, *_ = train(audit)
    assert statuses == {"bp-s42": "finished", "test_reuse_nan-s42": "diverged", "test_reuse_boom-s42": "failed"}
    assert [e["run"] for e in read_index(audit.path).values()] == ["bp-s42"]

    stopped = make(tmp_path, "methods=[frozen]")
    runner = None

    def stop_after_one(event):
        if isinstance(event, EpochDone):
            runner.stop()

    runner = AuditRunner(stopped, stop_after_one)
    runner.submit_unfinished()
    assert runner.run() == {"frozen-s42": "stopped"}
    assert read_index(stopped.path) == {}
    # so identical audits train them again, and reuse only the finished one
    trained_calls.clear()
    _, runner, _, notes = train(make(tmp_path, "methods=[bp,test_reuse_nan,test_reuse_boom]"))
    assert sorted(trained_calls) == ["test_reuse_boom-s42", "test_reuse_nan-s42"] and notes == []
    assert runner.reused == {"bp-s42": str(audit.run_dir("bp-s42"))}
    trained_calls.clear()
    _, runner, _, _ = train(make(tmp_path, "methods=[frozen]"))
    assert trained_calls == ["frozen-s42"] and runner.reused == {}


# ------------------------------------------------------------------ the key

SPEC = RunSpec("dfa-s42", "dfa", 42)


def key(*sets, spec=SPEC, data="d" * 64, device="cpu", baseline="b" * 64):
    return run_key(load_config(None, tiny(*sets)), spec, data, device, baseline)


@pytest.mark.parametrize("change", [
    {"sets": ["seeds=[7]"], "spec": RunSpec("dfa-s7", "dfa", 7)},
    {"sets": ["lr=0.0005"]},
    {"sets": ["epochs=3"]},
    {"sets": ["batch_size=64"]},
    {"sets": ["weight_decay=0.1"]},
    {"sets": ["schedule=constant"]},
    {"sets": ["precision=bf16"]},
    {"sets": ["d=32"]},
    {"sets": ["diagnostics.null_draws=10"]},
    {"sets": ["diagnostics.n_samples=512", "diagnostics.rho_samples=512"]},
    {"spec": RunSpec("dfa-lam0.01-s42", "dfa", 42, 0.01, "dfa-s42")},
    {"spec": RunSpec("fa-s42", "fa", 42)},
    {"data": "e" * 64},
    {"device": "cuda"},
    {"baseline": None},
], ids=lambda c: ",".join(c.get("sets", [])) or next(k for k in c if k != "sets"))
def test_every_input_that_decides_the_records_changes_the_key(change):
    sets = change.get("sets", [])
    kw = {k: v for k, v in change.items() if k != "sets"}
    assert key(*sets, **kw) != key()


@pytest.mark.parametrize("sets", [
    ["thresholds.growth=10", "thresholds.persist.d=1", "thresholds.depth_margin=0.2"],
    ["threads=2"], ["workers=2"], ["name=another", "description=x"], ["methods=[bp,dfa,fa,frozen]"],
    ["seeds=[42,7]", "penalties=[0.01]"], ["reuse=false"], ["ep.beta=0.01"],
    ["models=[{name: res, model: resmlp}]"],  # the same network under a display name: only its run ids differ
], ids=lambda s: ",".join(s))
def test_what_does_not_decide_the_records_leaves_the_key_alone(sets):
    spec = dataclasses.replace(SPEC, run_id="res.dfa-s42", model="res") if "models" in sets[0] else SPEC
    assert key(*sets, spec=spec) == key()


def test_the_key_holds_the_data_fingerprint_the_method_settings_and_the_code():
    cfg = load_config(None, tiny())
    data = task_fingerprint(load_task(cfg))
    other = task_fingerprint(load_task(load_config(None, tiny("synthetic.seed=1"))))
    assert data != other and run_key(cfg, SPEC, data, "cpu") != run_key(cfg, SPEC, other, "cpu")
    ep = RunSpec("ep-s42", "ep", 42)
    contents = key_contents(cfg, ep, data, "cpu")
    assert contents["method_config"] == {"ep": cfg.ep.model_dump(mode="json")}
    assert run_key(load_config(None, tiny("ep.beta=0.01")), ep, data, "cpu") != run_key(cfg, ep, data, "cpu")
    assert key_contents(cfg, SPEC, data, "cpu")["method_config"] is None
    assert set(key_contents(cfg, SPEC, data, "cpu")) == {"key", "data", "network", "recipe", "device", "seed",
                                                         "method", "penalty", "diagnostics", "method_config",
                                                         "code", "baseline"}
    # each method's own module is in its code version; the engine's shared files in all of them
    from engine.methods import get_method

    dfa, fa = code_version(get_method("dfa")), code_version(get_method("fa"))
    assert dfa["sources"] != fa["sources"] and dfa["torch"] == torch.__version__
    assert code_version(get_method("dfa")) == dfa


def test_a_method_whose_code_cannot_be_read_has_no_key(registered):
    cls = type("Anonymous", (Backprop,), {"name": "test_reuse_anon", "__module__": "not_a_loaded_module"})
    registered(cls)
    assert run_key(load_config(None, tiny("methods=[test_reuse_anon]")), RunSpec("test_reuse_anon-s42",
                   "test_reuse_anon", 42), "d" * 64, "cpu") is None


# ------------------------------------------------------------------ kept checkpoints

def test_the_kept_checkpoints_this_audit_keeps_are_copied_or_the_source_is_refused(tmp_path, trained_calls):
    first = make(tmp_path, "methods=[frozen]", "keep_checkpoints=[1]")
    train(first)
    trained_calls.clear()
    same = make(tmp_path, "methods=[frozen]", "keep_checkpoints=[1]")
    _, runner, _, notes = train(same)
    assert trained_calls == [] and notes == []
    kept = load_checkpoint(kept_path(same.run_dir("frozen-s42"), 1))
    assert kept["epoch"] == 1 and kept["run_id"] == "frozen-s42"
    none = make(tmp_path, "methods=[frozen]")  # keeps nothing: the copy has no kept checkpoint
    train(none)
    assert trained_calls == [] and not kept_path(none.run_dir("frozen-s42"), 1).exists()
    more = make(tmp_path, "methods=[frozen]", "keep_checkpoints=[2]")
    _, runner, _, notes = train(more)
    assert trained_calls == ["frozen-s42"] and runner.reused == {}
    assert notes and all("keeps the checkpoint of epoch 2 (keep_checkpoints); the source did not keep it" in n
                         for n in notes)


# ------------------------------------------------------------------ workers > 1

@pytest.mark.slow
def test_child_process_workers_offer_their_runs_and_reuse_happens_before_any_child(tmp_path, monkeypatch):
    first = make(tmp_path, *CONTROLS, "workers=2")
    statuses, *_ = train(first)
    assert set(statuses.values()) == {"finished"} and len(read_index(first.path)) == 2

    class NoChild:
        context = engine.scheduler.ChildTrainer.context

        def __init__(self, audit, spec, *args, **kw):
            pytest.fail(f"{spec.run_id} was handed to a child process")

    monkeypatch.setattr(engine.scheduler, "ChildTrainer", NoChild)
    second = make(tmp_path, *CONTROLS, "workers=2")
    statuses, runner, events, _ = train(second)
    assert statuses == {"frozen-s42": "finished", "dfa-s42": "finished"}
    assert runner.reused == {rid: str(first.run_dir(rid)) for rid in statuses}
    for rid in statuses:
        assert epoch_lines(second, rid) == epoch_lines(first, rid)
        assert [type(e).__name__ for e in events if e.run_id == rid] == ["RunStarted", "EpochDone", "EpochDone",
                                                                        "RunEnded"]
