"""The fault-injection harness: kill a training process at exact write points (the
FAEVAL_FAULT hook in engine/runstore.py, which ends the process as kill -9 would), resume,
and require what an uninterrupted audit gives: the same records, every run in the export,
the same verdicts. Slow: two subprocesses per point."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Audit
from engine.records import stable
from engine.report import export_json
from engine.runstore import FAULT_ENV, FAULT_POINTS
from tests.conftest import WAIT_S, tiny

pytestmark = pytest.mark.slow
SETS = tiny("methods=[dfa,frozen]", "seeds=[5]", "epochs=3")
# lines in order: frozen header 1, start 2, epochs 3-5, end 6; dfa header 7, start 8, epochs 9-11, end 12.
# files: config.yaml 1, then one checkpoint per epoch (frozen 2-4, dfa 5-7)
POINTS = ["line-before@1", "line-torn@1", "line-after@3", "line-torn@3", "line-torn@7", "line-torn@9",
          "line-before@12", "file-before-rename@2", "file-after-rename@3", "file-before-rename@6"]


def faeval(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "faeval_tui", *args], capture_output=True, text=True, env=env,
                          timeout=WAIT_S)


def run_args(runs_dir: Path) -> list[str]:
    return ["run", "--runs-dir", str(runs_dir), *sum((["--set", s] for s in SETS), [])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Audit:
    res = faeval(*run_args(tmp_path_factory.mktemp("reference")))
    assert res.returncode == 0, res.stderr
    return Audit.open(res.stdout.strip().splitlines()[-1])


def test_every_named_point_is_exercised_by_the_harness():
    assert {p.split("@")[0] for p in POINTS} == set(FAULT_POINTS)


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_a_write_point_then_resume_equals_the_uninterrupted_audit(point, tmp_path, reference):
    killed = faeval(*run_args(tmp_path), fault=point)
    assert killed.returncode == 137, f"{point} was never reached: {killed.stderr[-2000:]}"
    (audit_dir,) = tmp_path.iterdir()
    resumed = faeval("resume", str(audit_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    audit = Audit.open(audit_dir)
    for rid in ("frozen-s5", "dfa-s5"):
        log, ref = audit.log(rid), reference.log(rid)
        assert log.end.status == "finished" and [e.epoch for e in log.epochs] == [1, 2, 3], (point, rid)
        assert stable(log.epochs) == stable(ref.epochs), (point, rid)
    doc, ref_doc = export_json(audit), export_json(reference)
    assert {r["run_id"]: r["verdict"] for r in doc["runs"]} == {r["run_id"]: r["verdict"] for r in ref_doc["runs"]}
    # a torn line is the one thing a kill leaves behind, and the export says so
    torn = [p for r in doc["runs"] for p in r["problems"]]
    assert bool(torn) == point.startswith("line-torn"), torn
    assert not list(audit_dir.glob("*/.checkpoint.pt.tmp*")), "a dead process's temp checkpoint was left"
    json.dumps(doc, allow_nan=False)
