"""The training recipe and the verdict rules, on values: the ρ and null-band cadence,
random targets, the cosine learning rate, the (c) sub-mode and the (d) margin at their
edges, the bf16 refusal, and the per-process thread count."""
from __future__ import annotations

import math

import pytest
import torch

from engine import AuditRunner
from engine.config import Thresholds, load_config
from engine.data import load_task
from engine.errors import ConfigError
from engine.methods.bp import Backprop
from engine.plan import RunSpec, make_header
from engine.records import Epoch
from engine.verdicts import alert_epochs, evaluate, live_label, new_alerts, pending, streak, verdict
from tests.conftest import tiny, train

# ---------------------------------------------------------------- ρ and null-band cadence


def test_rho_and_the_null_band_follow_their_cadence_and_the_last_epoch_measures_both(new_audit):
    audit = new_audit("epochs=4", "diagnostics.rho_every=2", "diagnostics.null_every=3", "methods=[bp,dfa]")
    assert train(audit) == {"bp-s42": "finished", "dfa-s42": "finished"}
    for rid in ("bp-s42", "dfa-s42"):
        recs = audit.log(rid).epochs
        assert [r.epoch for r in recs] == [1, 2, 3, 4]
        assert [r.epoch for r in recs if r.rho is not None] == [2, 4], rid  # every 2nd, and the last
        for r in recs:  # ρ's summary is there exactly when ρ is
            assert (r.deep_rho is None) == (r.rho is None) and (r.rho is None or len(r.rho) == r.layers)
            assert ("rho" in r.diag_s) == (r.rho is not None)
    dfa = audit.log("dfa-s42").epochs
    assert [r.epoch for r in dfa if r.null_mean is not None] == [3, 4]  # every 3rd, and the last
    assert [r.epoch for r in dfa if r.null_std is not None] == [3, 4]
    assert all(len(r.null_mean) == r.layers for r in dfa if r.null_mean is not None)
    # bp has no random feedback to redraw: never a null band
    assert all(r.null_mean is None and r.null_std is None for r in audit.log("bp-s42").epochs)


# ---------------------------------------------------------------- random targets


def test_random_targets_replace_every_label_by_one_fixed_draw(new_audit):
    real = load_task(load_config(None, tiny()))
    cfg = load_config(None, tiny("random_targets=true"))
    first, second = load_task(cfg), load_task(cfg)
    C = real.n_classes
    for split in ("y_train", "y_test"):
        rand, again, true = getattr(first, split), getattr(second, split), getattr(real, split)
        assert torch.equal(rand, again), split  # the same draw in every load (every run of the audit)
        assert rand.shape == true.shape and rand.dtype == torch.int64
        assert int(rand.min()) >= 0 and int(rand.max()) < C and len(rand.unique()) == C
        # independent of the teacher: agreement near chance (1/C), not the real labels
        assert (rand != true).double().mean().item() > 0.75, split
    n = min(first.y_train.shape[0], first.y_test.shape[0])
    assert (first.y_train[:n] != first.y_test[:n]).double().mean().item() > 0.75  # two draws, not one reused
    assert torch.equal(first.x_train, real.x_train) and torch.equal(first.x_test, real.x_test)  # inputs stay
    assert first.name == "synthetic+random-targets" and first.n_classes == C
    assert make_header(cfg, RunSpec("bp-s42", "bp", 42)).dataset == "synthetic+random-targets"
    assert make_header(load_config(None, tiny()), RunSpec("bp-s42", "bp", 42)).dataset == "synthetic"
    audit = new_audit("random_targets=true", "methods=[bp]", "epochs=1")  # and on disk, as trained
    assert train(audit) == {"bp-s42": "finished"}
    assert audit.log("bp-s42").header.dataset == "synthetic+random-targets"


# ---------------------------------------------------------------- the learning-rate schedule


def test_each_epoch_records_the_cosine_learning_rate_it_ended_at(new_audit):
    lr0, epochs = 3e-3, 4
    audit = new_audit(f"epochs={epochs}", "synthetic.n_train=600", f"lr={lr0}", "methods=[bp]")
    assert train(audit) == {"bp-s42": "finished"}
    steps = math.ceil(600 / audit.cfg.batch_size)  # 5: the last batch is short
    total = epochs * steps
    want = [0.5 * lr0 * (1 + math.cos(math.pi * e * steps / total)) for e in range(1, epochs + 1)]
    got = [r.lr for r in audit.log("bp-s42").epochs]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-18)
    assert got[1] == pytest.approx(lr0 / 2) and got[-1] == pytest.approx(0.0, abs=1e-18)  # halfway, the end


def test_a_constant_schedule_records_the_base_learning_rate_every_epoch(new_audit):
    audit = new_audit("epochs=3", "lr=2e-3", "schedule=constant", "methods=[bp]")
    assert train(audit) == {"bp-s42": "finished"}
    assert [r.lr for r in audit.log("bp-s42").epochs] == [2e-3] * 3


# ---------------------------------------------------------------- verdict rules at their edges


def epoch(acc: float = 0.5, baseline: float | None = None, stability: float = 0.0, growth: float = 2.0,
          g_L: float = 1e-3) -> Epoch:
    return Epoch(epoch=1, test_acc=acc, test_loss=1.0, h_norm=[1.0, growth], g_norm=[g_L, g_L], a_norm=[1.0, 1.0],
                 cos=[0.5, 0.5], cos_std=[0.1, 0.1], cos_excluded=[0, 0], growth=growth, g_L=g_L,
                 stability=stability, gamma=0.5, deep_cos=0.5, baseline_acc=baseline)


@pytest.mark.parametrize("margin", [0.05, -0.05, 0.0])
def test_depth_utility_fires_exactly_below_baseline_plus_margin(margin):
    th = Thresholds(depth_margin=margin)
    base = 0.5
    edge = base + margin  # what the run must reach for its depth to count
    below, above = math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf)
    assert "d" in evaluate(epoch(below, base), th).fired
    assert "d" not in evaluate(epoch(edge, base), th).fired  # strictly below: the edge itself passes
    assert "d" not in evaluate(epoch(above, base), th).fired
    assert "d" not in evaluate(epoch(0.0, None), th).fired  # no frozen baseline: (d) cannot fire
    rec = evaluate(epoch(below, base), th)
    assert verdict([rec]).label == "WALKED BACK via (d)"
    once = Thresholds(depth_margin=margin, persist={"d": 1})  # the alert rule aside: alert on the first fire
    (alert,) = new_alerts("fa-s1", [], rec, once)
    assert (alert.diagnostic, alert.value, alert.threshold) == ("d", below, edge)


def _run(pattern: str, th: Thresholds) -> list:
    """Epoch records 1..n whose (d) fires where ``pattern`` has a 'd' (accuracy below frozen's)."""
    return [evaluate(epoch(0.4 if c == "d" else 0.6, 0.5).model_copy(update={"epoch": i + 1}), th)
            for i, c in enumerate(pattern)]


@pytest.mark.parametrize("pattern, alert_at", [
    ("..ddd.........", None),      # bp-s42 on the digits default: (d) on three epochs in a row, no alert
    ("d.............", None),      # bp on the synthetic default: a first-epoch flip
    ("dddddddddddddd", 4),         # fa and dfa on digits: alerted at epoch 4
    ("ddd.dddddd", 8),             # dfa-s123 on the synthetic default: the streak restarts
    ("dddd.dd.dd", 4),
    ("dd.dd.dd.dd.", None),        # flapping never alerts
])
def test_d_alerts_once_it_has_fired_on_four_consecutive_epochs(pattern, alert_at):
    th = Thresholds()
    assert th.persist.d == 4 and th.persist.a == th.persist.b == 1
    records = _run(pattern, th)
    raised = [r.epoch for i, r in enumerate(records) for a in new_alerts("x", records[:i], r, th)]
    assert raised == ([] if alert_at is None else [alert_at])  # at most once per run
    assert alert_epochs(records, th).get("d") == alert_at
    if alert_at:
        (alert,) = new_alerts("x", records[:alert_at - 1], records[alert_at - 1], th)
        assert f"fired on every epoch since {alert_at - 3}" in alert.headline


@pytest.mark.parametrize("pattern, label", [
    ("..d", "firing (d) 1/4"),    # bp on the digits default at epoch 3: no alert, so no WALKED BACK yet
    ("..ddd", "firing (d) 3/4"),
    ("..dddd", None),             # the fourth epoch in a row alerts: the badge says WALKED BACK
    ("dddd.d", "firing (d) 1/4"),  # a new streak after an alerted one: short of the rule again
    ("..dd.", None),              # nothing fires on the last epoch: the verdict's TRUSTWORTHY stands
])
def test_a_training_run_reads_firing_until_the_alert_rule_is_met(pattern, label):
    th = Thresholds()
    records = _run(pattern, th)
    assert live_label(records, th) == label
    assert pending(records, th) == ({"d": int(label.split()[-1][0])} if label else {})
    # the final verdict is the protocol's: the last epoch's fired set, whatever the streak
    assert verdict(records).walked_back == pattern.endswith("d")


def test_firing_names_every_pending_diagnostic_and_yields_to_an_alerted_one():
    th = Thresholds()
    both = [r.model_copy(update={"fired": ["a", "d"]}) for r in _run("dd", th)]
    assert live_label(both, th) is None  # (a) alerts on its first epoch: WALKED BACK stands
    slow = Thresholds(persist={"a": 3, "b": 1, "d": 4})
    assert live_label(both, slow) == "firing (a) 2/3 (d) 2/4"


def test_a_gap_in_the_epochs_breaks_a_streak():
    th = Thresholds()
    records = _run("dddd", th)
    gapped = records[:2] + [r.model_copy(update={"epoch": r.epoch + 1}) for r in records[2:]]  # epochs 1, 2, 4, 5
    assert streak(gapped, "d") == 2 and alert_epochs(gapped, th) == {}
    assert streak(records, "d") == 4 and alert_epochs(records, th) == {"d": 4}


def test_a_margin_moves_the_verdict_of_a_run_that_beats_its_baseline_by_less():
    rec = epoch(acc=0.52, baseline=0.50)  # two points above frozen
    assert "d" not in evaluate(rec, Thresholds()).fired
    assert "d" in evaluate(rec, Thresholds(depth_margin=0.03)).fired
    assert "d" not in evaluate(rec, Thresholds(depth_margin=0.01)).fired
    assert "d" not in evaluate(epoch(acc=0.48, baseline=0.50), Thresholds(depth_margin=-0.03)).fired


def test_stability_labels_drift_above_the_threshold_noise_at_or_below_it_and_nan_unknown():
    th = Thresholds()
    cases = {math.nextafter(th.stability, math.inf): "drift", th.stability: "noise",
             math.nextafter(th.stability, -math.inf): "noise", -1.0: "noise", math.nan: "unknown"}
    for value, mode in cases.items():
        rec = evaluate(epoch(stability=value), th)
        assert rec.stability_mode == mode, value
        assert ("c" in rec.fired) == (mode == "drift"), value  # a NaN never claims drift
    # (c) only labels a walk-back, it never causes one: NaN stability on a run that (a) walks back
    walked = evaluate(epoch(stability=math.nan, growth=1e3), th)
    assert walked.fired == ["a"] and verdict([walked]).describe() == "WALKED BACK via (a), unknown"
    assert verdict([evaluate(epoch(stability=0.9, baseline=0.1), th)]).describe() == "TRUSTWORTHY"
    # the frozen baseline itself needs none; any other run without one is UNVERIFIED, never TRUSTWORTHY
    assert verdict([evaluate(epoch(stability=0.9), th, baseline_needed=False)]).label == "TRUSTWORTHY"
    assert verdict([evaluate(epoch(stability=0.9), th)]).label == "UNVERIFIED: no baseline for (d)"


# ---------------------------------------------------------------- bf16 on CPU and on a GPU without it


def test_bf16_is_allowed_on_cpu(new_audit):
    runner = AuditRunner(new_audit("precision=bf16", "device=cpu", "methods=[bp]"))
    assert runner.device == torch.device("cpu")


SLOW_BF16 = ("precision = 'bf16' but this CPU has no native bfloat16 (neither AVX512-BF16 nor AMX): its bfloat16 "
             "steps are emulated, about 10x slower than float32; --set precision=fp32 trains at full speed")


@pytest.mark.parametrize("native, precision, expected", [(False, "bf16", SLOW_BF16), (True, "bf16", None),
                                                         (None, "bf16", None), (False, "fp32", None)])
def test_bf16_on_a_cpu_that_emulates_it_is_said_once_by_the_runner_not_refused(new_audit, monkeypatch, native,
                                                                              precision, expected):
    import engine.device

    monkeypatch.setattr(engine.device, "native_cpu_bf16", lambda: native)  # None: torch cannot tell
    said: list[str] = []
    runner = AuditRunner(new_audit(f"precision={precision}", "device=cpu", "methods=[bp]"), warn=said.append)
    assert runner.device == torch.device("cpu")
    assert said == ([] if expected is None else [expected])
    assert engine.device.precision_warning(runner.audit.cfg, torch.device("cuda")) is None  # a GPU's is refused


def test_the_consoles_data_check_passes_the_slow_bf16_warning_on(monkeypatch):
    import io
    import json

    import engine.device
    from faeval_tui import data_check

    monkeypatch.setattr(engine.device, "native_cpu_bf16", lambda: False)
    out = io.StringIO()
    cfg = load_config(None, tiny("precision=bf16", "methods=[bp]"))
    assert data_check.main(io.StringIO(json.dumps(cfg.dump())), out) == 0
    assert json.loads(out.getvalue()) == {"data_path": None, "data_sha256": None, "warning": SLOW_BF16}


def test_bf16_on_a_gpu_without_bfloat16_is_refused_with_what_to_do(new_audit, monkeypatch):
    audit = new_audit("precision=bf16", "device=cuda", "methods=[bp]")
    if not torch.cuda.is_available():  # this machine: the device is refused before precision matters
        with pytest.raises(ConfigError, match="CUDA is not available"):
            AuditRunner(audit)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a pre-Ampere GPU
    with pytest.raises(ConfigError) as err:
        AuditRunner(audit)
    assert "bf16" in err.value.problem and "no bfloat16 support" in err.value.problem
    assert "precision=fp32" in err.value.hint
    assert list(audit.path.iterdir()) == [audit.path / "config.yaml"]  # refused before anything trained
    with pytest.raises(ConfigError, match="no bfloat16 support"):  # auto picks that GPU too
        AuditRunner(new_audit("precision=bf16", "device=auto", "methods=[bp]"))
    assert AuditRunner(new_audit("precision=fp32", "device=cuda", "methods=[bp]")).device.type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # Ampere or newer
    assert AuditRunner(audit).device.type == "cuda"


# ---------------------------------------------------------------- threads


class ThreadsSeen(Backprop):
    """bp that notes the intra-op thread count each training step runs with."""

    name = "test_threads_seen"
    seen: list[int] = []

    def step(self, model, x, y, penalty):
        ThreadsSeen.seen.append(torch.get_num_threads())
        return super().step(model, x, y, penalty)


@pytest.mark.parametrize("before, threads", [(1, 2), (2, 1)])
def test_a_run_trains_with_the_configured_threads_and_restores_the_previous_count(new_audit, registered,
                                                                                  before, threads):
    registered(ThreadsSeen)
    ThreadsSeen.seen = []
    outer = torch.get_num_threads()
    try:
        torch.set_num_threads(before)
        audit = new_audit(f"threads={threads}", "methods=[test_threads_seen]", "epochs=1")
        assert train(audit) == {"test_threads_seen-s42": "finished"}
        assert ThreadsSeen.seen == [threads] * 4  # 512 samples: four steps, each with the config's count
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(outer)
