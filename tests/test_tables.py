"""The audit tables, built from hand-written records (no training): values, labels, edge cases.

``main_audit`` and ``edge_audit`` are also the inputs of the markdown goldens
(test_markdown.py): a healthy bp, a Mode-1 fa that fires (a) then (b), a dfa below
its frozen baseline, a penalty rerun that contains the growth; and a single-seed
audit with a failed baseline, a diverged run, a run in progress and a run with no
epoch yet.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.audit import Audit, AuditLock
from engine.config import AuditConfig
from engine.records import End, Epoch, Header, Start
from engine.runstore import RECORDS, RecordWriter, read_run, write_config
from engine.tables import (
    DASH,
    Stat,
    audit_table,
    audit_tables,
    layer_table,
    n_cell,
    num,
    pct,
    penalty_table,
    pp,
    sensitivity_table,
    strategy_table,
    views,
)
from engine.verdicts import evaluate

NAN, INF = math.nan, math.inf


def record(epoch: int, acc: float, base: float | None, *, growth: float = 1.2, g_L: float = 5e-4,
           cos: tuple = (1.0, 1.0, 1.0), rho: tuple | None = (0.999, 0.998, 0.997), stab: float = 0.1,
           null: tuple | None = None, h: list | None = None) -> Epoch:
    """An epoch record of an L = 2 network with every field the trainer writes."""
    h = h or [2.0, 2.0 * growth, 2.0 * growth ** 2]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return Epoch(epoch=epoch, test_acc=acc, test_loss=1.5, train_loss=1.4, lr=1e-3, h_norm=h,
                 g_norm=[4 * g_L, 2 * g_L, g_L], a_norm=[1.0, 0.9, 0.8], cos=list(cos), cos_std=[0.1, 0.2, 0.3],
                 cos_excluded=[0, 0, 0], rho=None if rho is None else list(rho),
                 null_mean=None if null is None else [null[0]] * 3, null_std=None if null is None else [null[1]] * 3,
                 growth=growth, g_L=g_L, stability=stab, gamma=mean(cos), deep_cos=mean(cos[1:]),
                 deep_rho=None if rho is None else mean(rho[1:]), baseline_acc=base, train_s=0.5,
                 diag_s={"probe": 0.1})


def write_audit(root: Path, cfg: AuditConfig, runs: dict, name: str = "golden") -> Audit:
    """An audit directory holding ``runs``: run_id → (method, seed, λ, [records], End fields or None)."""
    path = root / name
    path.mkdir()
    write_config(path, cfg.dump())
    for rid, (method, seed, lam, recs, end) in runs.items():
        (path / rid).mkdir()
        w = RecordWriter(path / rid / RECORDS)
        w.append(Header(run_id=rid, method=method, seed=seed, penalty=lam, parent=f"{method}-s{seed}" if lam else None,
                        epochs=cfg.epochs, dataset="synthetic", created="2026-01-01T00:00:00+00:00", config=cfg.dump()))
        w.append(Start(epoch=0, time="2026-01-01T00:00:00+00:00"))
        for r in recs:
            w.append(evaluate(r, cfg.thresholds))
        if end:
            w.append(End(epoch=recs[-1].epoch if recs else 0, time="2026-01-01T01:00:00+00:00", **end))
        w.close()
    return Audit.open(path)


FROZEN = {1: [0.20, 0.24, 0.27, 0.28], 2: [0.21, 0.25, 0.28, 0.30]}


def series(seed: int, accs: list[float], **per_epoch) -> list[Epoch]:
    """One record per epoch; keyword values that are lists vary by epoch."""
    out = []
    for i, acc in enumerate(accs):
        kw = {k: (v[i] if isinstance(v, list) else v) for k, v in per_epoch.items()}
        out.append(record(i + 1, acc, FROZEN[seed][i], **kw))
    return out


def main_runs() -> dict:
    done = {"status": "finished"}
    runs = {f"frozen-s{s}": ("frozen", s, 0.0, [record(i + 1, a, None, growth=1.1) for i, a in enumerate(FROZEN[s])],
                             done) for s in (1, 2)}
    runs["bp-s1"] = ("bp", 1, 0.0, series(1, [0.40, 0.45, 0.50, 0.52]), done)
    runs["bp-s2"] = ("bp", 2, 0.0, series(2, [0.41, 0.46, 0.50, 0.54]), done)
    mode1 = dict(cos=(0.4, 0.02, 0.01), rho=(0.3, 0.01, 0.0), null=(0.0, 0.05))
    runs["fa-s1"] = ("fa", 1, 0.0, series(1, [0.25, 0.30, 0.31, 0.31], growth=[1.5, 10.0, 80.0, 300.0],
                                          g_L=[1e-4, 1e-5, 1e-6, 1e-9], stab=0.5, **mode1), done)
    runs["fa-s2"] = ("fa", 2, 0.0, series(2, [0.26, 0.29, 0.32, 0.33], growth=[1.4, 6.0, 60.0, 90.0],
                                          g_L=[2e-4, 3e-5, 4e-7, 5e-8], **mode1), done)
    for s, accs in ((1, [0.30, 0.36, 0.40, 0.44]), (2, [0.31, 0.37, 0.41, 0.45])):
        runs[f"fa-lam0.01-s{s}"] = ("fa", s, 0.01, series(s, accs, growth=2.0, g_L=3e-4, cos=(0.45, 0.2, 0.15),
                                                          null=(0.0, 0.05)), done)
    runs["dfa-s1"] = ("dfa", 1, 0.0, series(1, [0.18, 0.20, 0.22, 0.25], growth=1.8, g_L=2e-4,
                                            cos=(0.3, 0.05, -0.02), null=(0.01, 0.04)), done)
    runs["dfa-s2"] = ("dfa", 2, 0.0, series(2, [0.19, 0.21, 0.23, 0.26], growth=1.8, g_L=2e-4,
                                            cos=(0.1, -0.1, -0.2), null=(0.01, 0.04)), done)
    return runs


def main_cfg() -> AuditConfig:
    return AuditConfig(name="golden", description="hand-written records", epochs=4, seeds=[1, 2], d=8, L=2,
                       penalties=[0.01], penalty_methods=["fa"])


def edge_cfg() -> AuditConfig:
    cfg = main_cfg().model_copy(update={"seeds": [1], "description": "edge cases"})
    cfg.diagnostics.rho_every = 2
    return cfg


def edge_runs() -> dict:
    base1 = [0.20, None, None, None]  # the baseline failed after epoch 1
    bp = [record(i + 1, a, base1[i]) for i, a in enumerate([0.40, 0.45, 0.50, 0.52])]
    fa = [record(1, 0.25, 0.20, growth=3.0, null=(0.0, 0.05), cos=(0.3, 0.1, 0.1)),
          record(2, 0.10, None, growth=40.0, g_L=1e-6, null=(0.0, 0.05), cos=(0.3, 0.1, 0.1)),
          record(3, 0.10, None, growth=INF, g_L=NAN, h=[2.0, INF, INF], cos=(NAN, NAN, NAN),
                 rho=(NAN, NAN, NAN), null=(NAN, NAN), stab=NAN)]
    dfa = [record(1, 0.22, 0.20, growth=1.5, null=(0.0, 0.05), cos=(0.2, 0.1, 0.05)),
           record(2, 0.24, None, growth=1.5, null=(0.0, 0.05), cos=(0.2, 0.1, 0.05), rho=(0.2, 0.1, 0.05)),
           record(3, 0.25, None, growth=1.5, null=(0.0, 0.05), cos=(0.2, 0.1, 0.05), rho=None)]
    return {
        "frozen-s1": ("frozen", 1, 0.0, [record(1, 0.20, None)],
                      {"status": "failed", "message": "RuntimeError: shape | mismatch"}),
        "bp-s1": ("bp", 1, 0.0, bp, {"status": "finished"}),
        "fa-s1": ("fa", 1, 0.0, fa, {"status": "diverged",
                                      "message": "non-finite values in h_norm at epoch 3: training diverged"}),
        "dfa-s1": ("dfa", 1, 0.0, dfa, None),
        "fa-lam0.01-s1": ("fa", 1, 0.01, [], None),
    }


@pytest.fixture
def main_audit(tmp_path) -> Audit:
    return write_audit(tmp_path, main_cfg(), main_runs())


@pytest.fixture
def edge_audit(tmp_path):
    """The edge audit with its lock held, as while it trains: unended runs read as running."""
    audit = write_audit(tmp_path, edge_cfg(), edge_runs(), name="edge")
    with AuditLock(audit.path):
        yield audit


def row(table, *first):
    """The row whose first cells are ``first``."""
    matches = [r for r in table.rows if tuple(r[:len(first)]) == first]
    assert len(matches) == 1, (first, [r[:3] for r in table.rows])
    return dict(zip(table.headers, matches[0]))


# ---- cells ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (0.12345, "0.123"), (12.345, "12.3"), (50.0, "50.0"), (1234.5, "1234"), (0.9996, "1.00"), (0.0012, "0.00120"),
    (1.5e8, "1.50e8"), (-2.25e-9, "-2.25e-9"), (9.99e-4, "9.99e-4"), (0.0, "0"), (None, DASH),
    (NAN, "nan"), (INF, "inf"), (-INF, "−inf")])
def test_num_uses_three_significant_digits_and_scientific_notation_outside_1e_minus3_to_1e4(value, text):
    assert num(value) == text


def test_percent_and_percentage_points():
    assert (pct(0.4907), pp(0.0322), pp(-0.121), pct(NAN), pp(None)) == ("49.07", "+3.22", "-12.10", "nan", DASH)


def test_stat_is_mean_and_sample_std_and_a_single_value_stands_alone():
    s = Stat.of([1.0, 2.0, 3.0, None])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.cell() == "2.00 ± 1.00" and s.cell(n_row=3) == "2.00 ± 1.00"
    assert s.cell(n_row=4) == "2.00 ± 1.00 (n=3)"  # fewer values than the row's n: said in the cell
    assert Stat.of([0.5]).cell(pct) == "50.00" and Stat.of([0.5]).cell(pct, n_row=1) == "50.00"
    assert Stat.of([0.5]).cell(pct, n_row=2) == "50.00 (n=1)"
    assert Stat.of([]).cell() == DASH
    assert Stat.of([1.0, NAN]).cell() == "nan ± nan"
    assert Stat.of([1.0, INF]).cell() == "inf ± nan"


@pytest.mark.parametrize("values, text", [
    ([1.0, 1.0 + 4e-16], "1.00 ± 0"),  # float noise, not 2.83e-16: the seeds agree to the digits shown
    ([2.0, 2.0], "2.00 ± 0"), ([0.179, 0.17945], "0.179 ± 0"),
    ([9.0, 9.28], "9.14 ± 0.20"),  # not 0.198: no more decimals than the mean
    ([0.05, -0.1], "-0.0250 ± 0.106"),  # fewer decimals than the mean: num's 3 significant digits
    ([260.0, 270.0], "265 ± 7"),
    ([5e-4, 5e-4], "5.00e-4 ± 0"),  # a mean in scientific notation keeps num's std
    ([0.0, 0.0], "0 ± 0"), ([-0.001, 0.001], "0 ± 0.00141"),  # a mean of 0 shows no decimals to follow
    ([1.0, NAN], "nan ± nan")])
def test_a_std_never_shows_more_decimals_than_its_mean(values, text):
    assert Stat.of(values).cell() == text


def test_n_reads_k_of_n_only_while_runs_are_missing():
    assert (n_cell(2, 2), n_cell(1, 3), n_cell(0, 2)) == ("2", "1/3", "0/2")


# ---- audit table -------------------------------------------------------------------

def test_audit_table_rows_are_methods_and_penalties_in_config_order(main_audit):
    t = audit_table(main_audit)
    assert [(r[0], r[1]) for r in t.rows] == [("bp", "0"), ("fa", "0"), ("fa", "0.01"), ("dfa", "0"), ("frozen", "0")]


def test_audit_table_means_stds_and_gap_over_seeds(main_audit):
    bp = row(audit_table(main_audit), "bp")
    assert bp["n"] == "2" and bp["status"] == "finished"
    assert bp["acc %"] == "53.00 ± 1.41"  # 0.52, 0.54
    assert bp["gap pp"] == "+24.00 ± 0"  # 0.52 − 0.28, 0.54 − 0.30: in pp too, 0 is 0
    assert bp["verdict"] == "TRUSTWORTHY" and bp["first fire"] == DASH
    assert bp["stability"] == "0.100 ± 0" and bp["(c) mode"] == "noise"
    assert not any("(n=" in c for r in audit_table(main_audit).rows for c in r)  # every cell over both seeds


def test_mode1_run_is_walked_back_with_first_fires_and_degenerate_cosines_marked(main_audit):
    t = audit_table(main_audit)
    fa = row(t, "fa", "0")
    assert fa["verdict"] == "WALKED BACK via (a)+(b)"  # (c)'s sub-mode has a column of its own
    assert fa["first fire"] == "(a) 3, 3; (b) 4, 4"
    assert fa["Γ"] == "0.143 ± 0 †" and fa["deep cos"].endswith("†") and fa["deep ρ"].endswith("†")
    assert fa["‖g_L‖"] == "2.55e-8 ± 3.46e-8" and fa["max growth"] == "195 ± 148"
    assert fa["stability"] == "0.300 ± 0.283" and fa["(c) mode"] == "drift 1/2"
    assert any("† measured while (b) fired (in 2 of 10 runs)" in n for n in t.notes)
    assert row(t, "fa", "0.01")["verdict"] == "TRUSTWORTHY" and "†" not in row(t, "fa", "0.01")["Γ"]


def test_depth_utility_walks_back_a_method_below_its_frozen_baseline(main_audit):
    dfa = row(audit_table(main_audit), "dfa")
    assert dfa["verdict"] == "WALKED BACK via (d)" and dfa["(c) mode"] == "noise"
    assert dfa["gap pp"] == "-3.50 ± 0.71" and dfa["first fire"] == "(d) 1, 1"
    assert row(audit_table(main_audit), "frozen")["gap pp"] == DASH


def test_tables_follow_the_thresholds_given_not_the_ones_recorded(main_audit):
    cfg = main_audit.cfg.model_copy(deep=True)
    cfg.thresholds.growth = 500.0  # fa's growth 300 and 90 no longer fire (a)
    fa = row(audit_table(main_audit, cfg), "fa", "0")
    assert fa["first fire"] == "(b) 4, 4" and fa["verdict"] == "WALKED BACK via (b)"


# ---- per-layer and penalty tables ---------------------------------------------------------

def test_layer_table_has_each_layer_with_null_band_and_z(main_audit):
    t = layer_table(main_audit)
    assert [r[2] for r in t.rows if r[0] == "dfa"] == ["0", "1", "2"]
    dfa1 = row(t, "dfa", "0", "1")
    assert dfa1["cos_l ± std (over seeds)"] == "-0.0250 ± 0.106"  # 0.05, −0.1
    assert dfa1["null band"] == "0.0100 ± 0.0400" and dfa1["z vs null"] == "-0.875 (noise)"
    assert row(t, "fa", "0.01", "0")["z vs null"] == "9.00"
    assert row(t, "bp", "0", "2")["null band"] == DASH
    assert row(t, "fa", "0", "0")["cos_l ± std (over seeds)"] == "0.400 ± 0 †"


def test_layer_table_by_run_shows_the_spread_over_samples(main_audit):
    t = layer_table(main_audit, by="run")
    r = row(t, "dfa-s2", "0", "2")
    assert r["cos_l ± std (over samples)"] == "-0.200 ± 0.300" and r["‖h_l‖"] == "6.48" and r["n"] == "1"


def test_penalty_table_sweeps_lambda_for_methods_with_reruns_only(main_audit):
    t = penalty_table(main_audit)
    assert [(r[0], r[1]) for r in t.rows] == [("fa", "0"), ("fa", "0.01")]
    lam = row(t, "fa", "0.01")
    assert lam["‖h_L‖"] == "8.00 ± 0" and lam["‖g_L‖"] == "3.00e-4 ± 0" and lam["verdict"] == "TRUSTWORTHY"
    assert row(t, "fa", "0")["verdict"] == "WALKED BACK via (a)+(b)"
    assert row(t, "fa", "0")["‖h_L‖"] == "9.81e4 ± 1.16e5"  # 2·300², 2·90²


def test_penalty_table_says_when_there_are_no_reruns(tmp_path):
    cfg = main_cfg()
    cfg.penalties = []
    runs = {k: v for k, v in main_runs().items() if "lam" not in k}
    t = penalty_table(write_audit(tmp_path, cfg, runs))
    assert t.rows == [] and t.notes == ["no penalty reruns in this audit."]


def test_penalty_table_lists_planned_reruns_that_have_not_trained(tmp_path):
    runs = {k: v for k, v in main_runs().items() if "lam" not in k}
    t = penalty_table(write_audit(tmp_path, main_cfg(), runs))
    assert [(r[0], r[1], r[2]) for r in t.rows] == [("fa", "0", "2"), ("fa", "0.01", "0/2")]
    assert row(t, "fa", "0.01")["verdict"] == "not started" and row(t, "fa", "0.01")["acc %"] == "—"


# ---- strategies and sensitivity ------------------------------------------------------

def test_strategies_show_what_accuracy_and_gamma_miss(main_audit):
    t = strategy_table(main_audit)
    assert t.notes[0] == "walked back by S1: 1 of 10, by S_full: 4 of 10"
    assert row(t, "walked back")["S2 S1+(a)"] == "3 of 10" and row(t, "walked back")["S4 S1+(c)"] == "2 of 10"
    fa = row(t, "fa-s1")
    assert [fa[h] for h in t.headers[4:]] == ["ok", "ok", "back", "back", "back", "ok", "back"]
    assert fa["Γ"] == "0.143 †"
    dfa2 = row(t, "dfa-s2")  # Γ < 0: S1 catches it
    assert [dfa2[h] for h in t.headers[4:]] == ["ok", "back", "back", "back", "back", "back", "back"]


def test_s0_walks_back_at_chance_exactly(tmp_path):
    runs = {"bp-s1": ("bp", 1, 0.0, [record(1, 0.1, None)], {"status": "finished"})}
    t = strategy_table(write_audit(tmp_path, main_cfg(), runs))
    assert row(t, "bp-s1")["S0 acc"] == "back"  # 10 classes: 0.1 is chance


def test_sensitivity_gives_edges_interval_and_gap(main_audit):
    t = sensitivity_table(main_audit)
    a, b = row(t, "(a) scale stability"), row(t, "(b) reference validity")
    assert (a["healthy runs"], a["degenerate runs"], a["healthy edge"], a["degenerate edge"]) == ("8", "2", "2.00", "90.0")
    assert a["thresholds keeping every verdict"] == "[2.00, 90.0)" and a["separation"] == "×45.0"
    assert (b["healthy edge"], b["degenerate edge"], b["thresholds keeping every verdict"]) == \
        ("2.00e-4", "5.00e-8", "(5.00e-8, 2.00e-4]")
    assert b["separation"] == "×4000" and b["reading"] == "separated by a factor 4000"
    assert t.data[0]["degenerate"] == ["fa-s1", "fa-s2"]


def test_sensitivity_says_plainly_when_no_run_fired(tmp_path):
    runs = {k: v for k, v in main_runs().items() if not k.startswith("fa-s")}
    a = row(sensitivity_table(write_audit(tmp_path, main_cfg(), runs)), "(a) scale stability")
    assert a["reading"] == "no run fired (a); any threshold ≥ 2.00 keeps the verdicts"
    assert a["thresholds keeping every verdict"] == "[2.00, inf)" and a["separation"] == DASH


# ---- robustness: NaN/inf, in progress, failed, single seed ------------------------------

def test_edge_runs_are_labelled_not_crashed_on(edge_audit):
    t = audit_table(edge_audit)
    status = {r[0] + ("" if r[1] == "0" else "-" + r[1]): r[3] for r in t.rows}
    assert status == {"bp": "finished", "fa": "diverged at epoch 3/4", "fa-0.01": "running, epoch 0/4",
                      "dfa": "running, epoch 3/4", "frozen": "failed at epoch 1/4: RuntimeError: shape | mismatch"}
    fa = row(t, "fa", "0")
    assert fa["‖h_L‖"] == "inf" and fa["max growth"] == "inf" and fa["‖g_L‖"] == "nan"  # one seed: values alone
    # a NaN stability never fires (c): its sub-mode is "unknown"; the walk-back is (a)+(b)
    assert fa["Γ"] == "nan †" and fa["verdict"] == "WALKED BACK via (a)+(b)" and fa["(c) mode"] == "unknown"
    empty = row(t, "fa", "0.01")
    assert empty["n"] == "0/1" and empty["acc %"] == DASH and empty["verdict"] == "NO DATA"
    assert empty["(c) mode"] == DASH
    bp = row(t, "bp")
    assert bp["n"] == "1" and bp["acc %"] == "52.00" and bp["gap pp"] == DASH  # no baseline at the last epoch


def test_rho_from_an_earlier_epoch_is_marked_stale(edge_audit):
    t = audit_table(edge_audit)
    assert row(t, "dfa")["deep ρ"] == "0.0750 ‡"
    assert any(n.startswith("‡ deep ρ of dfa-s1 is from an earlier epoch") for n in t.notes)
    assert row(layer_table(edge_audit), "dfa", "0", "0")["ρ_l"] == "0.200 ‡"


def test_sensitivity_counts_nan_runs_apart(edge_audit):
    b = row(sensitivity_table(edge_audit), "(b) reference validity")
    assert b["degenerate runs"] == "1" and b["degenerate edge"] == DASH
    assert b["reading"] == "only NaN runs fired (b); any floor ≤ 5.00e-4 keeps the verdicts; " \
                           "1 run(s) with a NaN value fire at any floor"


def test_every_table_builds_for_the_edge_audit_and_notes_runs_without_epochs(edge_audit):
    tables = audit_tables(edge_audit)
    assert [t.key for t in tables] == ["audit", "layers", "penalty", "strategies", "sensitivity"]
    s = tables[3]
    assert s.notes[0] == "walked back by S1: 1 of 4, by S_full: 1 of 4"
    assert "1 run(s) without a finished epoch are not listed." in s.notes
    assert tables[0].to_json()["data"][1]["h_L"]["mean"] == "Infinity"  # JSON-safe


def test_in_memory_logs_work_and_unended_ones_read_as_running(main_audit, tmp_path):
    logs = [read_run(p) for p in sorted(main_audit.path.glob(f"*/{RECORDS}"))]
    logs[0].end = None
    t = audit_table(logs)  # the config comes from the run headers
    assert sum("running, epoch 4/4" in r[3] for r in t.rows) == 1
    assert [r[:2] for r in t.rows] == [r[:2] for r in audit_table(main_audit).rows]
    assert views(logs, main_audit.cfg)[0].status == "running"



def test_sensitivity_flags_a_narrow_gap(main_audit):
    tight = main_cfg()
    tight.thresholds.growth = 1.9  # fa-lam's 2.0 fires now, dfa's 1.8 does not: the edges are 1.8 and 2.0
    a = row(sensitivity_table(main_audit, tight), "(a) scale stability")
    assert (a["healthy edge"], a["degenerate edge"], a["degenerate runs"]) == ("1.80", "2.00", "4")
    assert a["reading"] == "separated by a factor 1.11: barely; moving the threshold by less than ×2 changes a verdict"


# ---- n, the λ column, (d)'s sensitivity, the split for a page ------------------------------

def test_a_mean_over_fewer_runs_than_planned_says_so_and_a_full_one_does_not(tmp_path):
    runs = {k: v for k, v in main_runs().items() if k != "bp-s2"}  # bp-s2 planned, never started
    frozen = runs["frozen-s2"]  # the seed-2 baseline failed after epoch 3: seed 2 has no gap at epoch 4
    runs["frozen-s2"] = (*frozen[:3], frozen[3][:3], {"status": "failed", "message": "killed"})
    t = audit_table(write_audit(tmp_path, main_cfg(), runs))
    bp, fa, frozen_row = row(t, "bp"), row(t, "fa", "0"), row(t, "frozen")
    assert bp["n"] == "1/2" and bp["status"] == "1 finished; s2 not started"
    assert bp["acc %"] == "52.00" and bp["Γ"] == "1.00"  # over the one run the row's n says
    assert fa["n"] == "2" and fa["gap pp"] == "+3.00 (n=1)"  # fewer than the row's n: said in the cell
    assert fa["acc %"] == "32.00 ± 1.41"
    assert frozen_row["n"] == "2" and not any("(n=" in c for c in frozen_row.values())  # full n: no n in a cell
    assert (t.data[0]["n"], t.data[0]["planned"]) == (1, 2)


def test_an_audit_without_penalty_reruns_has_no_lambda_column(tmp_path):
    cfg = main_cfg()
    cfg.penalties = []
    audit = write_audit(tmp_path, cfg, {k: v for k, v in main_runs().items() if "lam" not in k})
    for table in (audit_table(audit), layer_table(audit)):
        assert "λ" not in table.headers and table.headers[0] == "method"
    assert row(audit_table(audit), "fa")["verdict"] == "WALKED BACK via (a)+(b)"
    assert layer_table(audit, by="run").headers[:3] == ["run", "λ", "layer"]  # one run's table keeps its layout
    assert "λ" in audit_table(write_audit(tmp_path, main_cfg(), main_runs(), name="with")).headers


def test_sensitivity_of_d_counts_the_runs_it_measures_and_gives_the_margins_in_pp(main_audit):
    t = sensitivity_table(main_audit)
    assert [r[0] for r in t.rows] == ["(a) scale stability", "(b) reference validity", "(d) depth utility"]
    d = row(t, "(d) depth utility")
    # gaps: bp +24, +24; fa +3, +3; fa λ +16, +15; dfa −3, −4; frozen: no baseline of its own
    assert (d["fires when"], d["healthy runs"], d["degenerate runs"]) == ("gap < +0.00 pp", "6", "2")
    assert (d["healthy edge"], d["degenerate edge"]) == ("+3.00 pp", "-3.00 pp")
    assert d["thresholds keeping every verdict"] == "(-3.00, +3.00] pp" and d["separation"] == "6.00 pp"
    assert d["reading"] == "separated by 6.00 pp"
    data = t.data[2]
    assert data["degenerate"] == ["dfa-s1", "dfa-s2"] and data["unmeasured"] == ["frozen-s1", "frozen-s2"]
    assert t.notes[1] == ("(d) at margins -2.00, -1.00, +0.00, +1.00, +2.00 pp fires on 2, 2, 2, 2, 2 of the 8 runs "
                          "it measures; 2 run(s) without a baseline at their latest epoch (the frozen runs "
                          "themselves, or a baseline that failed or lags) are not counted for (d).")


def test_sensitivity_of_d_follows_the_declared_margin(main_audit):
    cfg = main_cfg()
    cfg.thresholds.depth_margin = 0.025  # fa's +3.00 pp still clears it; at +3.50 pp fa fires too
    t = sensitivity_table(main_audit, cfg)
    d = row(t, "(d) depth utility")
    assert (d["fires when"], d["healthy runs"], d["degenerate runs"]) == ("gap < +2.50 pp", "6", "2")
    assert [(round(s["margin"], 4), s["degenerate"]) for s in t.data[2]["sweep"]] == [
        (0.005, 2), (0.015, 2), (0.025, 2), (0.035, 4), (0.045, 4)]
    tight = main_cfg()
    tight.thresholds.depth_margin = 0.035  # fa fires: the edges are fa's +3.00 and fa λ's +15.00
    d = row(sensitivity_table(main_audit, tight), "(d) depth utility")
    assert (d["healthy runs"], d["degenerate runs"], d["healthy edge"], d["degenerate edge"]) == \
        ("4", "4", "+15.00 pp", "+3.00 pp")
    near = main_cfg()
    near.thresholds.depth_margin = 0.155  # fa λ's gaps +16 and +15 fall either side: 1.00 pp apart
    assert row(sensitivity_table(main_audit, near), "(d) depth utility")["reading"] == "separated by 1.00 pp"
    near.thresholds.depth_margin = -0.035  # dfa's −3 and −4 either side: a negative margin
    d = row(sensitivity_table(main_audit, near), "(d) depth utility")
    assert (d["fires when"], d["healthy edge"], d["degenerate edge"]) == ("gap < -3.50 pp", "-3.00 pp", "-4.00 pp")
    near.thresholds.depth_margin = 0.2  # bp's +24 healthy, fa λ's +16 the degenerate edge
    assert row(sensitivity_table(main_audit, near), "(d) depth utility")["separation"] == "8.00 pp"


def test_sensitivity_of_d_flags_edges_less_than_a_point_apart(tmp_path):
    done = {"status": "finished"}
    runs = {"frozen-s1": ("frozen", 1, 0.0, [record(1, 0.28, None)], done),
            "bp-s1": ("bp", 1, 0.0, [record(1, 0.285, 0.28)], done),  # +0.50 pp
            "dfa-s1": ("dfa", 1, 0.0, [record(1, 0.279, 0.28)], done)}  # −0.10 pp
    d = row(sensitivity_table(write_audit(tmp_path, main_cfg(), runs)), "(d) depth utility")
    assert (d["healthy runs"], d["degenerate runs"], d["separation"]) == ("1", "1", "0.60 pp")
    assert d["reading"] == "separated by 0.60 pp: barely; moving the margin by less than 1 pp changes a verdict"


def test_sensitivity_of_d_without_any_baseline_says_so(edge_audit):
    t = sensitivity_table(edge_audit)
    d = row(t, "(d) depth utility")
    assert (d["healthy runs"], d["degenerate runs"], d["thresholds keeping every verdict"]) == ("0", "0", DASH)
    assert d["reading"] == "no run has a baseline to measure (d) against"
    assert t.notes[-1] == ("4 run(s) without a baseline at their latest epoch (the frozen runs themselves, or a "
                           "baseline that failed or lags) are not counted for (d).")


def test_width_is_the_widest_cell_per_column_and_three_characters_between():
    from engine.tables.pages import width

    assert width(["a", "bb"], [["ccc", "d"], ["e"]]) == 3 + 3 + 2
    assert width(["‖h_L‖"], []) == 5  # characters, not bytes


def test_the_audit_table_is_split_into_parts_keyed_by_method_lambda_and_n(main_audit):
    from engine.tables.pages import PAGE_WIDTH, columns, split, width

    whole = audit_table(main_audit)
    assert width(whole.headers, whole.rows) > PAGE_WIDTH  # 16 columns
    parts = split(whole)
    assert [p.title for p in parts] == ["Audit (1 of 3): outcome", "Audit (2 of 3): credit alignment",
                                        "Audit (3 of 3): scale, reference and stability"]
    assert [p.key for p in parts] == ["audit-outcome", "audit-alignment", "audit-scale"]
    assert [p.headers[3:] for p in parts] == [
        ["status", "acc %", "gap pp", "verdict", "first fire"], ["Γ", "deep cos", "deep ρ"],
        ["‖h_L‖", "‖g_L‖", "max growth", "stability", "(c) mode"]]
    for part in parts:
        assert part.headers[:3] == ["method", "λ", "n"]
        for prow, wrow in zip(part.rows, whole.rows):  # the same cells, under the same headers
            assert dict(zip(part.headers, prow)).items() <= dict(zip(whole.headers, wrow)).items()
        assert len(part.rows) == len(whole.rows)
    # a part is one group, or groups that fit the page together
    assert width(*columns(whole, parts[1].headers + parts[2].headers[3:])) > PAGE_WIDTH
    assert all(width(p.headers, p.rows) <= PAGE_WIDTH for p in parts[1:])
    first, align, scale = (p.notes for p in parts)
    assert first[0].startswith("mean ± std over seeds") and not any(n.startswith("mean ± std") for n in align + scale)
    assert any(n.startswith("first fire:") for n in first) and any(n.startswith("alerts:") for n in first)
    assert align == ["† measured while (b) fired (in 2 of 10 runs): reference at the floor, not credit quality"]
    assert scale == [n for n in whole.notes if n.startswith("(c) mode:")]
    assert sorted(first + align + scale) == sorted(whole.notes)  # every note, once


def test_groups_share_a_part_while_they_fit_and_narrow_or_ungrouped_tables_stay_whole(main_audit):
    from engine.tables.pages import page_tables, split

    whole = audit_table(main_audit)
    assert split(whole, page=1000) == [whole]
    wider = split(whole, page=150)  # alignment and scale fit one part of 150 characters
    assert [p.title for p in wider] == ["Audit (1 of 2): outcome",
                                        "Audit (2 of 2): credit alignment, scale, reference and stability"]
    assert wider[1].headers == ["method", "λ", "n", "Γ", "deep cos", "deep ρ", "‖h_L‖", "‖g_L‖", "max growth",
                                "stability", "(c) mode"]
    assert [len(p.headers) for p in split(whole, page=10)] == [8, 6, 8]  # a group is never broken up
    strategies, penalty = strategy_table(main_audit), penalty_table(main_audit)
    assert split(strategies) == [strategies] and split(penalty) == [penalty]  # no groups: kept whole
    assert [t.key for t in page_tables(audit_tables(main_audit))] == [
        "audit-outcome", "audit-alignment", "audit-scale", "layers-alignment", "layers-norms", "penalty",
        "strategies", "sensitivity"]
