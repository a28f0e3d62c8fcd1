"""Never a silently wrong verdict: damaged record files are reported, not smoothed over,
and (d) is derived from the baseline's records as they are now."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from engine import Audit
from engine.records import Header
from engine.report import export_json
from engine.runstore import RECORDS, RecordWriter, read_run
from faeval_tui.cli import app
from faeval_tui.feeds import resumable_audits
from tests.conftest import train
from tests.test_console_fixtures import write_fixture_audit

cli = CliRunner()


def lines_of(audit: Audit, rid: str) -> list[str]:
    return (audit.path / rid / RECORDS).read_text().splitlines()


def write_lines(audit: Audit, rid: str, lines: list[str]) -> None:
    (audit.path / rid / RECORDS).write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def fixture_audit(tmp_path) -> Audit:
    return Audit.open(write_fixture_audit(tmp_path / "fixture"))


# ---------------------------------------------------------------- F1: missing or torn header

def test_a_run_whose_header_was_deleted_is_still_exported_and_the_loss_is_reported(fixture_audit):
    before = {r["run_id"]: r["verdict"] for r in export_json(fixture_audit)["runs"]}
    write_lines(fixture_audit, "dfa-s42", lines_of(fixture_audit, "dfa-s42")[1:])  # drop the header
    doc = export_json(fixture_audit)
    after = {r["run_id"]: r["verdict"] for r in doc["runs"]}
    assert after == before  # same runs, same verdicts
    dfa = next(r for r in doc["runs"] if r["run_id"] == "dfa-s42")
    assert (dfa["method"], dfa["seed"]) == ("dfa", 42) and "no readable header" in dfa["problems"][0]
    res = cli.invoke(app, ["export", str(fixture_audit.path)])
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "dfa-s42" in res.stderr and "no readable header" in res.stderr
    assert "problems reading the records" in res.stdout and "| dfa |" in res.stdout


def test_a_header_torn_by_a_crash_is_followed_by_a_readable_one_on_resume(fixture_audit):
    path = fixture_audit.path / "bp-s42" / RECORDS
    header = lines_of(fixture_audit, "bp-s42")[0]
    path.write_text(header[: len(header) // 2])  # kill -9 while the header was being written
    writer = RecordWriter(path)  # what train_run does on resume: a new header
    writer.append(Header.model_validate(json.loads(header)))
    writer.close()
    log = read_run(path)
    assert log.header is not None and log.header.run_id == "bp-s42"
    assert len(log.problems) == 1 and "line 1" in log.problems[0] and "torn" in log.problems[0]


def test_a_run_with_only_a_lost_penalty_header_is_found_by_its_name(fixture_audit):
    write_lines(fixture_audit, "dfa-lam0.01-s42", lines_of(fixture_audit, "dfa-lam0.01-s42")[1:])
    specs = {s.run_id: s for s in fixture_audit.planned()}
    assert specs["dfa-lam0.01-s42"].penalty == 0.01 and specs["dfa-lam0.01-s42"].parent == "dfa-s42"
    assert "dfa-lam0.01-s42" in [r["run_id"] for r in export_json(fixture_audit)["runs"]]


# ---------------------------------------------------------------- F4: JSON that is not a record

@pytest.mark.parametrize("bad", ["42", '{"type":"epoch"}', '{"type":"end","epoch":3}', '"text"', "[1, 2]"])
def test_valid_json_that_is_not_a_record_is_skipped_with_its_file_and_line(fixture_audit, bad):
    lines = lines_of(fixture_audit, "fa-s42")
    write_lines(fixture_audit, "fa-s42", lines[:3] + [bad] + lines[3:])
    res = cli.invoke(app, ["export", str(fixture_audit.path), "--format", "json"])
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert f"{fixture_audit.path / 'fa-s42' / RECORDS} line 4 skipped" in res.stderr
    fa = next(r for r in json.loads(res.stdout)["runs"] if r["run_id"] == "fa-s42")
    assert fa["epochs_done"] == 3 and fa["status"] == "diverged" and len(fa["problems"]) == 1


def test_a_string_schema_number_is_read_as_the_number(fixture_audit):
    lines = lines_of(fixture_audit, "bp-s42")
    header = json.loads(lines[0])
    write_lines(fixture_audit, "bp-s42", [json.dumps({**header, "schema": "1"})] + lines[1:])
    assert fixture_audit.log("bp-s42").header.schema_version == 1


def test_a_run_from_a_newer_version_is_no_resume_candidate_and_crashes_nothing(fixture_audit):
    lines = lines_of(fixture_audit, "dfa-lam0.01-s42")  # the unfinished run: a resume candidate
    header = json.loads(lines[0])
    write_lines(fixture_audit, "dfa-lam0.01-s42", [json.dumps({**header, "schema": 99})] + lines[1:])
    assert resumable_audits(fixture_audit.path.parent, fixture_audit.cfg) == []
    res = cli.invoke(app, ["export", str(fixture_audit.path)])
    assert res.exit_code == 2 and "schema version 99" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- F2: (d) against the baseline as it is now

def test_a_baseline_trained_after_its_dependents_still_walks_them_back(new_audit):
    audit = new_audit("methods=[dfa,frozen]", "thresholds.depth_margin=0.5")  # (d) fires on any real run
    assert set(train(audit).values()) == {"finished"}
    assert "d" in audit.log("dfa-s42").final.fired
    # as if frozen had failed before dfa trained: dfa's lines say "no baseline"
    lines = [json.loads(line) for line in lines_of(audit, "dfa-s42")]
    write_lines(audit, "dfa-s42", [json.dumps({**rec, "baseline_acc": None, "fired": []}
                                              if rec["type"] == "epoch" else rec) for rec in lines])
    dfa = audit.log("dfa-s42")
    assert dfa.final.baseline_acc == audit.log("frozen-s42").final.test_acc
    assert "d" in dfa.final.fired
    verdicts = {r["run_id"]: r["verdict"] for r in export_json(audit)["runs"]}
    assert verdicts["dfa-s42"].startswith("WALKED BACK via (d)")


def test_a_run_whose_baseline_has_no_record_never_reads_trustworthy(new_audit):
    audit = new_audit("methods=[dfa,frozen]", "thresholds.depth_margin=-1")  # (d) can never fire
    assert set(train(audit).values()) == {"finished"}
    assert {r["run_id"]: r["verdict"] for r in export_json(audit)["runs"]}["dfa-s42"] == "TRUSTWORTHY"
    frozen = lines_of(audit, "frozen-s42")
    write_lines(audit, "frozen-s42", [line for line in frozen if '"type":"epoch"' not in line])
    doc = export_json(audit)
    assert {r["run_id"]: r["verdict"] for r in doc["runs"]}["dfa-s42"] == "UNVERIFIED: no baseline for (d)"
    table = doc["tables"][0]
    row = next(r for r in table["rows"] if r[0] == "dfa")
    assert row[table["headers"].index("verdict")] == "UNVERIFIED: no baseline for (d)"


def test_an_audit_without_frozen_reads_unverified(new_audit):
    audit = new_audit("methods=[bp]")
    assert train(audit) == {"bp-s42": "finished"}
    assert export_json(audit)["runs"][0]["verdict"] == "UNVERIFIED: no baseline for (d)"


def test_a_run_whose_records_were_deleted_but_whose_checkpoint_remains_is_reported(new_audit):
    audit = new_audit("methods=[dfa,frozen]")
    assert set(train(audit).values()) == {"finished"}
    (audit.path / "frozen-s42" / RECORDS).unlink()
    doc = export_json(audit)
    frozen = next(r for r in doc["runs"] if r["run_id"] == "frozen-s42")
    assert "records are lost" in frozen["problems"][0] and frozen["epochs_done"] == 0
    assert next(r for r in doc["runs"] if r["run_id"] == "dfa-s42")["verdict"] == "UNVERIFIED: no baseline for (d)"


def test_a_last_line_torn_in_half_is_reported(fixture_audit):
    path = fixture_audit.path / "dfa-s42" / RECORDS
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # the end line, cut
    log = fixture_audit.log("dfa-s42")
    assert log.end is None and any("has no end" in p for p in log.problems)


@pytest.mark.parametrize("edit", ["duplicate", "swap"])
def test_an_epoch_line_out_of_order_is_reported_not_silently_shortening_the_run(fixture_audit, edit):
    lines = lines_of(fixture_audit, "bp-s42")  # header, start, epochs 1-5, end
    epochs = lines[2:7]
    lines = lines + [epochs[1]] if edit == "duplicate" else lines[:2] + epochs[:3] + [epochs[4], epochs[3]] + lines[7:]
    write_lines(fixture_audit, "bp-s42", lines)
    kept = [e.epoch for e in fixture_audit.log("bp-s42").epochs]
    log = fixture_audit.log("bp-s42")
    # appended past the end line, the copy is skipped as such; swapped, the earlier is superseded
    said = "after the run's end line was skipped" if edit == "duplicate" else "superseded"
    assert any(said in p for p in log.problems), log.problems
    if edit == "duplicate":
        assert [e.epoch for e in log.epochs] == kept and log.end.status == "finished"


def test_a_run_edited_to_read_finished_before_its_last_epoch_is_read_as_stopped_and_resumable(fixture_audit):
    lines = lines_of(fixture_audit, "bp-s42")  # header, start, epochs 1-5, end: finished
    end = json.loads(lines[-1])
    assert end["status"] == "finished" and end["epoch"] == 5
    end["epoch"] = 3  # as if it had been stopped at epoch 3 and its end line then edited
    write_lines(fixture_audit, "bp-s42", lines[:5] + [json.dumps(end)])
    log = fixture_audit.log("bp-s42")
    assert log.end.status == "stopped" and log.unfinished
    assert any("says finished at epoch 3 of 5: read as stopped" in p for p in log.problems)
    run = next(r for r in export_json(fixture_audit)["runs"] if r["run_id"] == "bp-s42")
    assert run["status"] == "stopped" and any("read as stopped" in p for p in run["problems"])


def test_a_forged_epoch_after_the_end_line_does_not_change_the_verdict(fixture_audit):
    before = {r["run_id"]: r["verdict"] for r in export_json(fixture_audit)["runs"]}
    lines = lines_of(fixture_audit, "fa-s42")  # diverged at epoch 3, WALKED BACK
    forged = json.loads(lines[-2])
    forged.update(epoch=4, test_acc=0.99, fired=[], growth=1.0)
    write_lines(fixture_audit, "fa-s42", lines + [json.dumps(forged)])
    doc = export_json(fixture_audit)
    assert {r["run_id"]: r["verdict"] for r in doc["runs"]} == before
    fa = next(r for r in doc["runs"] if r["run_id"] == "fa-s42")
    assert any("epoch 4 line after the run's end line was skipped" in p for p in fa["problems"])


def test_a_config_schema_that_is_not_a_number_is_refused(fixture_audit):
    cfg = fixture_audit.path / "config.yaml"
    cfg.write_text(cfg.read_text().replace("schema: 1", "schema: '1'"))
    res = cli.invoke(app, ["resume", str(fixture_audit.path)])
    assert res.exit_code == 2 and "not a version number" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- the sweep's last pass: six more

def test_a_header_whose_method_was_edited_is_reported_as_its_name_says(fixture_audit):
    before = {r["run_id"]: (r["method"], r["verdict"]) for r in export_json(fixture_audit)["runs"]}
    lines = lines_of(fixture_audit, "dfa-s42")
    write_lines(fixture_audit, "dfa-s42", [lines[0].replace('"method":"dfa"', '"method":"frozen"')] + lines[1:])
    doc = export_json(fixture_audit)
    assert {r["run_id"]: (r["method"], r["verdict"]) for r in doc["runs"]} == before
    dfa = next(r for r in doc["runs"] if r["run_id"] == "dfa-s42")
    assert dfa["problems"] == [f"{fixture_audit.path / 'dfa-s42' / RECORDS}: its header says method 'frozen' "
                               "(its name says 'dfa'); the run is reported as its name says"]
    frozen_row = next(r for r in doc["tables"][0]["rows"] if r[0] == "frozen")
    assert frozen_row[2] == "1"  # n: frozen-s42 alone, not averaged with dfa-s42


def test_resume_refuses_a_run_whose_header_names_another_method(new_audit):
    audit = new_audit("methods=[dfa,frozen]", "epochs=2")
    train(audit)
    lines = lines_of(audit, "dfa-s42")
    write_lines(audit, "dfa-s42", [lines[0].replace('"method":"dfa"', '"method":"bp"')] + lines[1:])
    (audit.path / "dfa-s42" / RECORDS).write_text("\n".join(lines_of(audit, "dfa-s42")[:-1]) + "\n")  # no end
    before = (audit.path / "dfa-s42" / RECORDS).read_bytes()
    res = cli.invoke(app, ["resume", str(audit.path)])
    assert "its header says method 'bp' (its name says 'dfa')" in res.output and "Traceback" not in res.output
    assert (audit.path / "dfa-s42" / RECORDS).read_bytes() == before


@pytest.mark.parametrize("edit", [{"h_norm": []}, {"g_norm": [1.0]}, {"rho": [0.5]}, {"cos_excluded": []},
                                  {"epoch": -1}])
def test_an_epoch_line_with_a_short_or_empty_per_layer_list_is_a_bad_line(fixture_audit, edit):
    lines = lines_of(fixture_audit, "bp-s42")  # header, start, epochs 1-5, end
    write_lines(fixture_audit, "bp-s42", lines[:4] + [json.dumps({**json.loads(lines[4]), **edit})] + lines[5:])
    key = next(iter(edit))
    log = fixture_audit.log("bp-s42")
    assert len(log.problems) >= 1 and "line 5 skipped" in log.problems[0] and key in log.problems[0]
    res = cli.invoke(app, ["export", str(fixture_audit.path)])
    assert res.exit_code == 0 and "Traceback" not in res.output and "line 5 skipped" in res.stderr


def test_an_epoch_beyond_the_runs_epochs_is_skipped_and_reported(fixture_audit):
    lines = lines_of(fixture_audit, "bp-s42")
    write_lines(fixture_audit, "bp-s42", lines[:-1] + [json.dumps({**json.loads(lines[6]), "epoch": 99})] + lines[-1:])
    log = fixture_audit.log("bp-s42")
    assert log.final.epoch == 5 and log.problems == [
        "an epoch 99 line was skipped: the run trains 5 epochs (a hand-edited or foreign line)"]


def test_records_that_are_a_directory_are_reported_not_a_traceback(fixture_audit):
    path = fixture_audit.path / "fa-s42" / RECORDS
    path.unlink()
    path.mkdir()
    res = cli.invoke(app, ["export", str(fixture_audit.path), "--format", "json"])
    assert res.exit_code == 0 and "Traceback" not in res.output
    fa = next(r for r in json.loads(res.stdout)["runs"] if r["run_id"] == "fa-s42")
    assert fa["status"] == "not started" and fa["method"] == "fa"
    assert fa["problems"] == [f"{path} cannot be read: Is a directory"]
    assert f"{path} cannot be read" in res.stderr


def test_planned_runs_that_have_not_started_are_listed_in_the_export(new_audit):
    audit = new_audit("methods=[dfa,frozen]", "seeds=[1,2]")
    doc = export_json(audit)  # nothing trained yet, as after kill -9 before the first run began
    assert [(r["run_id"], r["status"], r["verdict"]) for r in doc["runs"]] == [
        ("frozen-s1", "not started", "NO DATA"), ("frozen-s2", "not started", "NO DATA"),
        ("dfa-s1", "not started", "NO DATA"), ("dfa-s2", "not started", "NO DATA")]
    res = cli.invoke(app, ["export", str(audit.path)])
    assert res.exit_code == 0 and res.stdout.count("not started") >= 2


def test_a_finished_run_whose_last_epoch_line_is_unreadable_is_unverified_not_read_from_the_epoch_before(
        fixture_audit):
    lines = lines_of(fixture_audit, "bp-s42")  # header, start, epochs 1-5, end (finished at 5)
    write_lines(fixture_audit, "bp-s42", lines[:6] + [json.dumps({**json.loads(lines[6]), "h_norm": []})] + lines[7:])
    bp = next(r for r in export_json(fixture_audit)["runs"] if r["run_id"] == "bp-s42")
    assert bp["epochs_done"] == 4 and bp["verdict"] == "UNVERIFIED: records end at epoch 4 of 5"
    assert "line 7 skipped" in bp["problems"][0]
    # resume does not pass it over: the checkpoint of epoch 5 is ahead of the records, so it says so
    before = (fixture_audit.path / "bp-s42" / RECORDS).read_bytes()
    import torch
    torch.save({"epoch": 5, "run_id": "bp-s42"}, fixture_audit.path / "bp-s42" / "checkpoint.pt")
    res = cli.invoke(app, ["resume", str(fixture_audit.path)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "bp-s42" in res.output
    assert (fixture_audit.path / "bp-s42" / RECORDS).read_bytes() == before


def test_a_frozen_accuracy_edited_after_training_is_reported_where_it_changes_a_verdict(fixture_audit):
    """(d) is read against the frozen run's records; the method's own lines hold the baseline
    it was trained against. When they disagree, one file was edited: the report says so."""
    lines = lines_of(fixture_audit, "frozen-s42")
    edited = []
    for line in lines:
        rec = json.loads(line)
        if rec["type"] == "epoch":
            rec["test_acc"] = 0.10  # far below every method
        edited.append(json.dumps(rec))
    write_lines(fixture_audit, "frozen-s42", edited)
    doc = export_json(fixture_audit)
    fa = next(r for r in doc["runs"] if r["run_id"] == "fa-s42")
    note = next(p for p in fa["problems"] if "edited after training" in p)
    assert note.startswith("epoch 1: trained against a frozen baseline of ") and "frozen-s42's records now say 10.00%" in note
    res = cli.invoke(app, ["export", str(fixture_audit.path)])
    assert res.exit_code == 0 and "edited after training" in res.stderr


def test_a_training_key_edited_in_config_yaml_after_training_is_reported(new_audit):
    """resume refuses the edit; export reads on, but says the settings it prints are not the
    ones the runs trained under."""
    from tests.conftest import train

    audit = new_audit("methods=[bp]", "epochs=1")
    assert train(audit) == {"bp-s42": "finished"}
    cfg = audit.path / "config.yaml"
    text = cfg.read_text()
    assert "\nlr: 0.002\n" in text
    cfg.write_text(text.replace("\nlr: 0.002\n", "\nlr: 0.5\n"))
    (run,) = export_json(Audit.open(audit.path))["runs"]
    assert any("lr: 0.002 when it trained, 0.5 in config.yaml" in p for p in run["problems"]), run["problems"]
    res = cli.invoke(app, ["export", str(audit.path)])
    assert res.exit_code == 0 and "config.yaml no longer says what this run trained under" in res.stderr
