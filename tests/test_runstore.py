"""Records on disk: valid JSON for every value, and readers that cope with growing files."""
from __future__ import annotations

import json
import math

from engine.runstore import RecordReader, RecordWriter, RunLog, decode, dumps, read_run


def test_non_finite_values_round_trip_as_valid_json():
    rec = {"epoch": 3, "h_norm": [1.0, math.inf, -math.inf], "g_L": math.nan, "fired": ["a", "b"]}
    text = dumps(rec)
    raw = json.loads(text)  # strict JSON: no bare NaN/Infinity tokens
    assert raw["h_norm"] == [1.0, "Infinity", "-Infinity"] and raw["g_L"] == "NaN"
    back = decode(raw)
    assert back["h_norm"][1] == math.inf and back["h_norm"][2] == -math.inf and math.isnan(back["g_L"])
    assert back["fired"] == ["a", "b"]


def test_reader_ignores_a_line_still_being_written_then_reads_it(tmp_path):
    path = tmp_path / "records.jsonl"
    w = RecordWriter(path)
    w.append({"type": "header", "run_id": "x"})
    with open(path, "a") as fh:
        fh.write('{"type":"epoch","epo')
    reader = RecordReader(path)
    assert [r["type"] for r in reader.poll()] == ["header"]
    with open(path, "a") as fh:
        fh.write('ch":1,"test_acc":0.5}\n')
    assert reader.poll() == [{"type": "epoch", "epoch": 1, "test_acc": 0.5}]
    assert reader.poll() == []


def test_a_torn_line_is_skipped_and_a_reappended_epoch_wins(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"type":"header","run_id":"r","method":"fa","seed":1}\n'
                    '{"type":"epoch","epoch":1,"test_acc":0.1}\n'
                    '{"type":"epoch","epoch":2,"te\n'  # crash mid-write, then resume
                    '{"type":"resume","epoch":1}\n'
                    '{"type":"epoch","epoch":2,"test_acc":0.2}\n')
    log = read_run(path)
    assert [e["epoch"] for e in log.epochs] == [1, 2] and log.epochs[-1]["test_acc"] == 0.2
    assert log.status(live=False) == "stopped" and log.status(live=True) == "running"


def test_status_comes_from_the_end_line():
    log = RunLog("r")
    log.add({"type": "end", "status": "diverged"})
    assert log.status(live=True) == "diverged"


def test_a_run_reads_queued_until_its_start_line_then_running():
    log = RunLog("r")
    log.add({"type": "header", "run_id": "r"})  # Audit.add_run queues a rerun with its header alone
    assert (log.status(live=True), log.status(live=False)) == ("queued", "not started") and log.unfinished
    log.add({"type": "start", "epoch": 0, "time": "2026-11-22T03:00:00+00:00"})
    assert (log.status(live=True), log.status(live=False)) == ("running", "stopped")
    log.add({"type": "end", "status": "stopped", "epoch": 0})
    assert log.status(live=True) == "stopped"
    log.add({"type": "start", "epoch": 0})  # resumed: the end line no longer holds
    assert log.end is None and log.status(live=True) == "running"
