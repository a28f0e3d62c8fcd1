"""One record type end to end: every path that makes or reads a record line has the same
fields, and what the console hears is what the disk holds."""
from __future__ import annotations

import json
import math

import pytest
import torch

from engine import Audit, AuditRunner, load_config
from engine.api import audit_model
from engine.events import EpochDone, RunEnded, RunStarted
from engine.model import ResMLP
from engine.records import End, Epoch, Header, Start, from_json, parse_line
from engine.runstore import RECORDS, read_run
from engine.verdicts import evaluate
from tests.conftest import tiny
from tests.test_console_fixtures import write_fixture_audit

MODELS = {"header": Header, "start": Start, "epoch": Epoch, "end": End}


def fields(model) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny audit trained once, with every event the listener heard."""
    events = []
    audit = Audit.create(load_config(None, tiny("methods=[bp,dfa,frozen]")), tmp_path_factory.mktemp("runs"))
    runner = AuditRunner(audit, listener=events.append)
    runner.submit_unfinished()
    assert set(runner.run().values()) == {"finished"}
    return audit, events


def raw_lines(audit: Audit) -> list[dict]:
    return [json.loads(line) for p in sorted(audit.path.glob(f"*/{RECORDS}")) for line in p.read_text().splitlines()]


def test_every_line_the_trainer_writes_has_exactly_its_models_fields(trained):
    audit, _ = trained
    lines = raw_lines(audit)
    assert {line["type"] for line in lines} == set(MODELS)
    for line in lines:
        assert set(line) == fields(MODELS[line["type"]]), line["type"]


def test_the_fixture_audit_writes_the_same_fields_as_the_trainer(tmp_path):
    audit = Audit.open(write_fixture_audit(tmp_path / "fixture"))
    for line in raw_lines(audit):
        assert set(line) == fields(MODELS[line["type"]]), line["type"]


def test_audit_model_returns_the_trainers_record_type_with_the_same_measured_fields(trained):
    audit, _ = trained
    disk = audit.log("dfa-s42").final
    torch.manual_seed(0)
    model = ResMLP(16, 10, d=16, L=4)
    x, y = torch.randn(1024, 16), torch.randint(10, (1024,))
    api = audit_model(model, x, y, credit="dfa", frozen_acc=0.5).record
    assert type(api) is Epoch and set(api.to_json()) == set(disk.to_json())
    # measured on both paths; the api leaves only what needs training empty
    unset = {k for k, v in api.model_dump().items() if v is None}
    assert unset == {"train_loss", "lr", "train_s", "time"}
    assert all(getattr(disk, k) is not None for k in unset)
    assert api.layers == disk.layers == 5 and len(api.rho) == len(api.null_mean) == 5


def test_what_the_listener_hears_is_what_the_disk_holds(trained):
    audit, events = trained
    for rid in ("bp-s42", "dfa-s42", "frozen-s42"):
        log = audit.log(rid)
        heard = [e.record for e in events if isinstance(e, EpochDone) and e.run_id == rid]
        assert heard == log.epochs
        started = [e for e in events if isinstance(e, RunStarted) and e.run_id == rid]
        assert [s.header for s in started] == [log.header]
        ended = [e.status for e in events if isinstance(e, RunEnded) and e.run_id == rid]
        assert ended == [log.end.status] == ["finished"]


def test_fired_is_derived_on_read_so_a_hand_edit_cannot_hide_a_walk_back(tmp_path):
    audit = Audit.open(write_fixture_audit(tmp_path / "fixture"))
    path = audit.path / "dfa-s42" / RECORDS
    assert "b" in audit.log("dfa-s42").final.fired
    lines = path.read_text().splitlines()
    edited = [json.dumps({**json.loads(l), "fired": [], "degenerate": False}) if '"type":"epoch"' in l else l
              for l in lines]
    path.write_text("\n".join(edited) + "\n")
    final = audit.log("dfa-s42").final
    assert {"a", "b"} <= set(final.fired) and final.degenerate is True
    # and with other thresholds, the same line reads under those
    loose = audit.cfg.thresholds.model_copy(update={"growth": 1e12, "g_floor": 1e-30, "stability": 0.99})
    assert read_run(path, loose).final.fired == ["b"]  # its ‖g_L‖ is exactly 0: below any floor


def test_non_finite_values_round_trip_as_strings():
    rec = evaluate(Epoch(epoch=1, test_acc=0.1, test_loss=math.inf, h_norm=[1.0, math.nan], g_norm=[1.0, 0.0],
                         a_norm=[1.0, 1.0], cos=[1.0, -math.inf], cos_std=[0.0, 0.0], cos_excluded=[0, 1],
                         growth=math.nan, g_L=0.0, stability=math.nan, gamma=1.0, deep_cos=math.nan),
                   load_config(None).thresholds)
    text = rec.dumps()
    assert '"NaN"' in text and '"Infinity"' in text and '"-Infinity"' in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    back = parse_line(text)
    assert back.test_loss == math.inf and math.isnan(back.h_norm[1]) and back.cos[1] == -math.inf
    assert back.fired == ["a", "b"] and back.stability_mode == "unknown"


@pytest.mark.parametrize("line, problem", [
    ({"type": "epoch", "epoch": 1}, "test_acc"),
    ({"type": "header", "run_id": "x", "method": "bp", "seed": 1, "epochs": 2, "dataset": "s", "bogus": 1}, "bogus"),
    ({"type": "teleport"}, "unknown record type"),
    ([1, 2], "JSON object"),
])
def test_a_line_that_is_not_a_record_says_what_is_wrong(line, problem):
    with pytest.raises(ValueError, match=problem):
        from_json(line)


def test_lines_of_older_files_still_read():
    start = from_json({"type": "resume", "epoch": 3, "time": "2026-11-01T00:00:00+00:00"})
    assert isinstance(start, Start) and start.epoch == 3
