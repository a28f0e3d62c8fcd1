"""Records on disk: valid JSON for every value, and readers that cope with growing files."""
from __future__ import annotations

import json
import math

from engine.records import End, Epoch, Header, Start, decode, encode
from engine.runstore import RecordReader, RecordWriter, RunLog, append_line, read_run

FIELDS = dict(test_acc=0.5, test_loss=1.0, h_norm=[1.0, 2.0], g_norm=[1e-3, 1e-3], a_norm=[1.0, 1.0],
              cos=[0.5, 0.5], cos_std=[0.1, 0.1], cos_excluded=[0, 0], growth=2.0, g_L=1e-3, stability=0.1,
              gamma=0.5, deep_cos=0.5)


def epoch(n: int, **kw) -> Epoch:
    return Epoch(epoch=n, **{**FIELDS, **kw})


def header(rid: str = "r") -> Header:
    return Header(run_id=rid, method="fa", seed=1, epochs=2, dataset="synthetic")


def test_non_finite_values_round_trip_as_valid_json(tmp_path):
    rec = {"epoch": 3, "h_norm": [1.0, math.inf, -math.inf], "g_L": math.nan, "fired": ["a", "b"]}
    raw = json.loads(json.dumps(encode(rec), allow_nan=False))  # strict JSON: no bare NaN/Infinity tokens
    assert raw["h_norm"] == [1.0, "Infinity", "-Infinity"] and raw["g_L"] == "NaN"
    back = decode(raw)
    assert back["h_norm"][1] == math.inf and back["h_norm"][2] == -math.inf and math.isnan(back["g_L"])
    assert back["fired"] == ["a", "b"]
    # the same through a record line on disk
    path = tmp_path / "records.jsonl"
    append_line(path, epoch(3, h_norm=[math.inf, -math.inf], g_L=math.nan))
    line = path.read_text()
    json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"bare {c}")))
    (got,) = RecordReader(path).poll()
    assert got.h_norm == [math.inf, -math.inf] and math.isnan(got.g_L)


def test_reader_ignores_a_line_still_being_written_then_reads_it(tmp_path):
    path = tmp_path / "records.jsonl"
    w = RecordWriter(path)
    w.append(header("x"))
    full = epoch(1).dumps()
    with open(path, "a") as fh:
        fh.write(full[:20])
    reader = RecordReader(path)
    assert [type(r) for r in reader.poll()] == [Header]
    with open(path, "a") as fh:
        fh.write(full[20:] + "\n")
    assert reader.poll() == [epoch(1)]
    assert reader.poll() == []
    w.close()


def test_a_torn_line_is_skipped_and_a_reappended_epoch_wins(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(header().dumps() + "\n"
                    + epoch(1, test_acc=0.1).dumps() + "\n"
                    + '{"type":"epoch","epoch":2,"te\n'  # crash mid-write, then resume
                    + '{"type":"resume","epoch":1}\n'  # the start line's name before 2026-11-22
                    + epoch(2, test_acc=0.2).dumps() + "\n")
    log = read_run(path)
    assert [e.epoch for e in log.epochs] == [1, 2] and log.epochs[-1].test_acc == 0.2
    assert log.status(live=False) == "stopped" and log.status(live=True) == "running"
    # epoch 1 appended again after a crash (the checkpoint was of epoch 0): the later line wins
    append_line(path, Start(epoch=0))
    append_line(path, epoch(1, test_acc=0.15))
    log = read_run(path)
    assert [(e.epoch, e.test_acc) for e in log.epochs] == [(1, 0.15)]


def test_status_comes_from_the_end_line():
    log = RunLog("r")
    log.add(End(status="diverged"))
    assert log.status(live=True) == "diverged" and log.end.status == "diverged"


def test_a_run_reads_queued_until_its_start_line_then_running():
    log = RunLog("r")
    log.add(header())  # Audit.add_run queues a rerun with its header alone
    assert (log.status(live=True), log.status(live=False)) == ("queued", "not started") and log.unfinished
    log.add(Start(epoch=0, time="2026-11-22T03:00:00+00:00"))
    assert (log.status(live=True), log.status(live=False)) == ("running", "stopped")
    log.add(End(status="stopped", epoch=0))
    assert log.status(live=True) == "stopped"
    log.add(Start(epoch=0))  # resumed: the end line no longer holds
    assert log.end is None and log.status(live=True) == "running"
