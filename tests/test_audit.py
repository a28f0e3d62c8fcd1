"""Whole audits through the engine and the CLI, on values."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from engine import Audit, AuditRunner, load_config
from engine.checkpoint import load_checkpoint
from engine.data import load_task
from engine.diagnostics import make_probe
from engine.plan import RunSpec, run_id
from engine.records import stable
from engine.trainer import RunParts
from engine.verdicts import verdict
from faeval_tui.cli import app
from tests.conftest import TINY, WAIT_S, tiny, train


def run_audit(tmp_path, sets):
    audit = Audit.create(load_config(None, tiny(*sets)), tmp_path)
    return audit, train(audit)


def test_same_seed_gives_identical_first_epoch_records_on_cpu(tmp_path):
    a, _ = run_audit(tmp_path / "a", ["methods=[fa,frozen]"])
    b, _ = run_audit(tmp_path / "b", ["methods=[fa,frozen]"])
    for rid in ("fa-s42", "frozen-s42"):
        assert stable(a.log(rid).epochs[:1]) == stable(b.log(rid).epochs[:1])
    c, _ = run_audit(tmp_path / "c", ["methods=[fa,frozen]", "seeds=[7]"])
    assert c.log("fa-s7").epochs[0].test_acc != a.log("fa-s42").epochs[0].test_acc or \
        c.log("fa-s7").epochs[0].h_norm != a.log("fa-s42").epochs[0].h_norm


def test_audit_directory_layout_and_checkpoint_contents(tmp_path):
    audit, statuses = run_audit(tmp_path, ["methods=[dfa,frozen]"])
    assert statuses == {"frozen-s42": "finished", "dfa-s42": "finished"}
    assert (audit.path / "config.yaml").is_file()
    lines = (audit.path / "dfa-s42" / "records.jsonl").read_text().splitlines()
    kinds = [json.loads(l)["type"] for l in lines]
    assert kinds == ["header", "start", "epoch", "epoch", "end"]
    assert json.loads(lines[1])["epoch"] == 0 and all("time" in json.loads(x) for x in lines[1:])
    header = json.loads(lines[0])
    assert header["schema"] == 1 and header["method"] == "dfa" and header["config"]["d"] == 16
    state = load_checkpoint(audit.path / "dfa-s42" / "checkpoint.pt")
    assert state["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "rng_shuffle", "method"} <= set(state)
    assert len(state["method"]["B"]) == 5  # one C×d matrix per layer h_0..h_4


def test_recorded_dfa_credit_matches_independent_recomputation_from_checkpoint(tmp_path):
    """Re-measure the last epoch from the checkpoint with the saved B's, by hand."""
    audit, _ = run_audit(tmp_path, ["methods=[dfa,frozen]"])
    cfg = audit.cfg
    task = load_task(cfg)
    spec = next(s for s in audit.planned() if s.run_id == "dfa-s42")
    parts = RunParts(cfg, spec, task, torch.device("cpu"))
    parts.load(audit.path / "dfa-s42" / "checkpoint.pt", spec)
    B = load_checkpoint(audit.path / "dfa-s42" / "checkpoint.pt")["method"]["B"]
    x, y = task.diagnostic_set(cfg.diagnostics.n_samples)
    probe = make_probe(parts.model, x, y)
    e = torch.softmax(probe.logits.double(), 1) - torch.nn.functional.one_hot(y, task.n_classes).double()
    g = [gr.double() / x.shape[0] for gr in probe.grads]
    rec = audit.log("dfa-s42").epochs[-1]
    for l, b in enumerate(B):
        a = e @ b.double()
        assert rec.a_norm[l] == pytest.approx(a.norm(dim=1).mean().item(), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(a, g[l], dim=1).mean().item()
        assert rec.cos[l] == pytest.approx(cos, abs=1e-5)


def test_depth_utility_compares_against_frozen_of_same_seed_and_epoch(tmp_path):
    audit, _ = run_audit(tmp_path, ["methods=[bp,frozen]", "seeds=[1,2]"])
    for seed in (1, 2):
        frozen = audit.log(f"frozen-s{seed}").epochs
        for rec, base in zip(audit.log(f"bp-s{seed}").epochs, frozen):
            assert rec.baseline_acc == base.test_acc
            assert ("d" in rec.fired) == (rec.test_acc < base.test_acc)
        assert all(r.baseline_acc is None and "d" not in r.fired for r in frozen)


def test_growth_threshold_fires_a_and_is_recorded_as_first_fire(tmp_path):
    audit, _ = run_audit(tmp_path, ["methods=[bp]", "thresholds.growth=1.0001"])
    recs = audit.log("bp-s42").epochs
    assert all("a" in r.fired for r in recs)
    v = verdict(recs)
    assert v.label == "WALKED BACK via (a)" and v.first_fire["a"] == 1


def test_cli_run_then_export_json(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--runs-dir", str(tmp_path)] + sum((["--set", s] for s in TINY), []))
    assert res.exit_code == 0, res.output
    audit_dir = res.output.strip().splitlines()[-1]
    # after each run but the last, how long the rest should take, from the epochs measured so far
    eta = [line for line in res.output.splitlines() if "runs ended · about" in line]
    assert [line.split()[:3] for line in eta] == [["1", "of", "4"], ["2", "of", "4"], ["3", "of", "4"]], res.output
    res = runner.invoke(app, ["export", audit_dir, "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert set(runs) == {"frozen-s42", "bp-s42", "fa-s42", "dfa-s42"}
    for r in runs.values():
        assert r["status"] == "finished" and r["epochs_done"] == 2
        assert {"method", "seed", "penalty", "status", "verdict", "fired", "first_fire", "final"} <= set(r)
        final = r["final"]
        for key in ("epoch", "test_acc", "h_norm", "g_norm", "a_norm", "cos", "cos_std", "rho", "growth", "g_L",
                    "stability", "gamma", "deep_cos", "fired"):
            assert key in final
        assert len(final["cos"]) == 5
    assert runs["bp-s42"]["final"]["cos"] == pytest.approx([1.0] * 5, abs=1e-6)


def test_cli_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path):
    res = CliRunner().invoke(app, ["run", "--runs-dir", str(tmp_path), "--set", "epochs=0"])
    assert res.exit_code == 2
    assert "epochs = 0" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # nothing created for a refused config


@pytest.mark.slow
def test_default_audit_completes_and_bp_is_trustworthy(tmp_path):
    """`faeval-tui run` with no preset: the embedded default, end to end, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "faeval_tui", "run", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    audit_dir = proc.stdout.strip().splitlines()[-1]
    out = subprocess.run([sys.executable, "-m", "faeval_tui", "export", audit_dir, "--format", "json"],
                         capture_output=True, text=True, check=True, timeout=WAIT_S)
    runs = json.loads(out.stdout)["runs"]
    bp = [r for r in runs if r["method"] == "bp"]
    frozen = {r["seed"]: r for r in runs if r["method"] == "frozen"}
    assert bp and all(r["verdict"] == "TRUSTWORTHY" for r in bp)
    for r in bp:  # BP above the frozen baseline (on digits frozen random blocks are strong: ~1.5 points)
        assert r["final"]["test_acc"] > frozen[r["seed"]]["final"]["test_acc"]
    local = [r for r in runs if r["method"] in ("fa", "dfa")]
    assert len(local) == 4 and all(r["verdict"].startswith("WALKED BACK via (d)") for r in local)  # the point


@pytest.mark.slow
def test_the_cross_architecture_preset_measures_every_network_and_bp_is_the_reference_on_each(tmp_path):
    """`digits_cross_arch`, shortened to 3 epochs: five networks, 20 runs, through the CLI."""
    proc = subprocess.run([sys.executable, "-m", "faeval_tui", "run", "--preset", "digits_cross_arch",
                           "--set", "epochs=3", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    audit_dir = proc.stdout.strip().splitlines()[-1]
    out = subprocess.run([sys.executable, "-m", "faeval_tui", "export", audit_dir, "--format", "json"],
                         capture_output=True, text=True, check=True, timeout=WAIT_S)
    doc = json.loads(out.stdout)
    runs = doc["runs"]
    nets = ["resmlp", "resmlp_noln", "vit_mini", "cnn", "mlp"]
    assert sorted({r["model"] for r in runs}) == sorted(nets) and len(runs) == 20
    for r in runs:
        if r["method"] == "bp":
            assert r["verdict"] == "TRUSTWORTHY", r["run_id"]
            assert r["final"]["cos"] == pytest.approx([1.0] * 5, abs=1e-6), r["run_id"]
            assert min(r["final"]["rho"]) > 0.99, (r["run_id"], r["final"]["rho"])
    audit = next(t for t in doc["tables"] if t["key"] == "audit")
    assert audit["headers"][:2] == ["model", "method"] and [row[0] for row in audit["rows"]][::4] == nets


def test_a_queued_rerun_is_on_disk_before_it_starts_and_resumes_later(tmp_path):
    audit = Audit.create(load_config(None, tiny("methods=[bp]", "epochs=1")), tmp_path)
    rid = run_id("bp", 42, 0.01)
    AuditRunner(audit).submit(RunSpec(rid, "bp", 42, 0.01, "bp-s42"))  # queued, then the console quits
    assert rid in [s.run_id for s in Audit.open(audit.path).planned()]
    log = audit.log(rid)
    assert log.header.parent == "bp-s42" and log.header.penalty == 0.01 and log.unfinished
    assert log.status(live=False) == "not started" and log.status(live=True) == "queued"
    runner = AuditRunner(Audit.open(audit.path))
    assert rid in [s.run_id for s in runner.submit_unfinished()]
    assert runner.run()[rid] == "finished"
    kinds = [json.loads(l)["type"] for l in (audit.path / rid / "records.jsonl").read_text().splitlines()]
    assert kinds == ["header", "start", "epoch", "end"]  # queued: the header alone; then started
