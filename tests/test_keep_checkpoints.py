"""keep_checkpoints: the epochs that keep a checkpoint of their own beside the rolling one."""
from __future__ import annotations

import os

import pytest
import torch
import yaml

from engine import Audit, AuditRunner, load_config
from engine.checkpoint import kept_epochs, kept_path
from engine.errors import ConfigError
from engine.events import EpochDone
from engine.records import stable
from engine.verdicts import WALK_BACK
from tests.conftest import tiny, train


def _epoch_in(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


# ---------------------------------------------------------------- the config key

def test_a_plain_list_is_the_epochs_to_keep_and_a_mapping_sets_each_part():
    assert load_config(None, tiny("epochs=4", "keep_checkpoints=[3, 1]")).keep_checkpoints.model_dump() == \
        {"epochs": [1, 3], "every": 0, "first_fire": False}
    cfg = load_config(None, tiny("epochs=4", "keep_checkpoints.every=2", "keep_checkpoints.first_fire=true"))
    assert cfg.keep_checkpoints.model_dump() == {"epochs": [], "every": 2, "first_fire": True}
    assert load_config(None, tiny()).keep_checkpoints.model_dump() == {"epochs": [], "every": 0, "first_fire": False}
    # config.yaml holds the mapping: it reads back as itself
    assert load_config(None, tiny("epochs=4", "keep_checkpoints={epochs: [2], every: 3}")).keep_checkpoints.keeps(3)


@pytest.mark.parametrize("value, says", [
    ("[1, 1]", "keep_checkpoints.epochs = [1, 1]: an epoch is listed twice"),
    ("[0]", "keep_checkpoints.epochs = [0]: epochs are numbered from 1"),
    ("[5]", "keep_checkpoints.epochs: epoch 5 is past the last epoch (epochs = 2)"),
    ("3", "keep_checkpoints = 3: give a list of epochs, like [1, 2, 3], or a mapping"),
    ("[true]", "keep_checkpoints.epochs.0 = True: Input should be a valid integer"),
    ("{every: -1}", "keep_checkpoints.every = -1: Input should be greater than or equal to 0"),
    ("{first_fire: 1}", "keep_checkpoints.first_fire = 1: Input should be a valid boolean"),
    ("{epoch: [1]}", "unknown key 'keep_checkpoints.epoch' (allowed here: epochs, every, first_fire)"),
])
def test_bad_keep_checkpoints_values_are_refused_naming_the_key(value, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, tiny(f"keep_checkpoints={value}"))
    assert says in str(err.value)


# ---------------------------------------------------------------- what training keeps

def test_listed_epochs_are_kept_beside_the_rolling_checkpoint_which_never_deletes_them(new_audit):
    audit = new_audit("methods=[bp, dfa]", "epochs=3", "keep_checkpoints=[1, 2]")
    assert train(audit) == {"bp-s42": "finished", "dfa-s42": "finished"}
    for rid in ("bp-s42", "dfa-s42"):
        run = audit.path / rid
        assert kept_epochs(run) == [1, 2]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
        assert [_epoch_in(kept_path(run, e)) for e in (1, 2)] == [1, 2]
        assert _epoch_in(run / "checkpoint.pt") == 3
    # the kept B's are the training B's (they never change during a run)
    dfa = audit.path / "dfa-s42"
    b1 = torch.load(kept_path(dfa, 1), weights_only=True)["method"]["B"]
    b3 = torch.load(dfa / "checkpoint.pt", weights_only=True)["method"]["B"]
    assert all(torch.equal(x, y) for x, y in zip(b1, b3))


def test_every_k_keeps_each_kth_epoch_and_a_kept_last_epoch_is_the_rolling_checkpoints_bytes(new_audit):
    audit = new_audit("methods=[bp]", "epochs=4", "keep_checkpoints.every=2")
    train(audit)
    run = audit.path / "bp-s42"
    assert kept_epochs(run) == [2, 4]
    assert kept_path(run, 4).read_bytes() == (run / "checkpoint.pt").read_bytes()
    state = torch.load(kept_path(run, 2), weights_only=True)
    assert (state["run_id"], state["method_name"], state["seed"]) == ("bp-s42", "bp", 42)
    # about 12 bytes a parameter: weights and AdamW's two moments, in float32
    params = sum(t.numel() for t in state["model"].values())
    assert 12 * params < kept_path(run, 2).stat().st_size < 12 * params + 64_000


def test_no_keep_checkpoints_leaves_the_run_directory_as_it_was(new_audit):
    audit = new_audit("methods=[bp]")
    train(audit)
    assert not (audit.path / "bp-s42" / "checkpoints").exists()


def test_first_fire_keeps_the_epoch_a_walk_back_diagnostic_first_fires(new_audit):
    # growth is always above 1 here: (a) fires from epoch 1 on, and only epoch 1 is its first
    audit = new_audit("methods=[bp]", "epochs=3", "thresholds.growth=1.0", "keep_checkpoints.first_fire=true")
    train(audit)
    log = audit.log("bp-s42")
    assert all("a" in e.fired for e in log.epochs)
    assert kept_epochs(audit.path / "bp-s42") == [1]


def test_first_fire_follows_the_records_and_c_alone_keeps_nothing(new_audit):
    audit = new_audit("methods=[frozen, dfa]", "epochs=3", "thresholds.stability=-1",
                      "keep_checkpoints={first_fire: true}")
    train(audit)
    for rid in ("frozen-s42", "dfa-s42"):
        seen, expected = set(), []
        for e in audit.log(rid).epochs:
            assert "c" in e.fired  # (c) fires every epoch: it is a label, it keeps nothing
            new = {k for k in e.fired if k in WALK_BACK} - seen
            if new:
                expected.append(e.epoch)
            seen |= set(e.fired)
        assert kept_epochs(audit.path / rid) == expected
    assert kept_epochs(audit.path / "dfa-s42") == [1]  # dfa's (d) fires at epoch 1 against frozen
    assert kept_epochs(audit.path / "frozen-s42") == []  # the baseline itself has no (d); nothing else fires


def test_resume_is_unaffected_by_kept_checkpoints_and_keep_checkpoints_may_be_edited_before_it(new_audit, tmp_path):
    audit = new_audit("methods=[dfa]", "epochs=3", "keep_checkpoints=[1]", runs_dir=tmp_path / "a")
    runner = AuditRunner(audit, lambda ev: runner.stop() if isinstance(ev, EpochDone) else None)
    runner.submit_unfinished()
    assert runner.run() == {"dfa-s42": "stopped"}
    run = audit.path / "dfa-s42"
    assert kept_epochs(run) == [1] and _epoch_in(run / "checkpoint.pt") == 1
    first = kept_path(run, 1).read_bytes()
    stale = run / "checkpoints" / ".epoch-0002.pt.tmp999999999"  # a killed writer's temporary file
    stale.write_bytes(b"half")
    # keep_checkpoints changes nothing trained or measured: editing it does not block the resume
    data = yaml.safe_load((audit.path / "config.yaml").read_text())
    data["keep_checkpoints"] = {"epochs": [1, 3], "every": 0, "first_fire": False}
    (audit.path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    audit = Audit.open(audit.path)  # as `faeval-tui resume` reads it
    assert train(audit) == {"dfa-s42": "finished"}
    assert kept_epochs(run) == [1, 3] and not stale.exists()
    assert kept_path(run, 1).read_bytes() == first  # never rewritten by the resume
    reference = new_audit("methods=[dfa]", "epochs=3", runs_dir=tmp_path / "ref")
    train(reference)
    assert stable(audit.log("dfa-s42").epochs) == stable(reference.log("dfa-s42").epochs)
    assert sorted(os.listdir(run / "checkpoints")) == ["epoch-0001.pt", "epoch-0003.pt"]


# ---------------------------------------------------------------- a kill while a kept checkpoint is written

@pytest.mark.slow
@pytest.mark.parametrize("point", ["file-before-rename@3", "file-after-rename@3"])
def test_a_kill_around_a_kept_checkpoint_then_resume_keeps_it_and_equals_an_uninterrupted_run(point, tmp_path):
    """Files written: config.yaml 1, checkpoint.pt of epoch 1 2, the kept epoch 2 3 (before
    checkpoint.pt of epoch 2): the kill leaves checkpoint.pt at epoch 1, so the resume re-runs
    epoch 2 and writes its kept copy again."""
    import subprocess
    import sys

    from engine.remeasure import remeasure
    from engine.runstore import FAULT_ENV
    from tests.conftest import WAIT_S

    sets = tiny("methods=[dfa]", "epochs=3", "keep_checkpoints=[2]")

    def faeval(*args, fault=None):
        env = {k: v for k, v in os.environ.items() if k != FAULT_ENV} | ({FAULT_ENV: fault} if fault else {})
        return subprocess.run([sys.executable, "-m", "faeval_tui", *args], capture_output=True, text=True, env=env,
                              timeout=WAIT_S)

    def run(runs_dir, fault=None):
        return faeval("run", "--runs-dir", str(runs_dir), *sum((["--set", s] for s in sets), []), fault=fault)

    assert run(tmp_path / "k", point).returncode == 137
    (audit_dir,) = (tmp_path / "k").iterdir()
    run_dir = audit_dir / "dfa-s42"
    assert _epoch_in(run_dir / "checkpoint.pt") == 1
    assert faeval("resume", str(audit_dir)).returncode == 0
    assert kept_epochs(run_dir) == [2] and not list((run_dir / "checkpoints").glob(".*"))
    ref = run(tmp_path / "r")
    assert ref.returncode == 0
    reference = Audit.open(ref.stdout.strip().splitlines()[-1])
    assert stable(Audit.open(audit_dir).log("dfa-s42").epochs) == stable(reference.log("dfa-s42").epochs)
    assert remeasure(run_dir, epoch=2).differs() == []
