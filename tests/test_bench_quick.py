"""``faeval-tui bench --quick`` runs end to end and writes every figure issue #5 asks for.

This checks the benchmark's plumbing, not the machine: no timing is asserted."""
from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from faeval_tui.cli import app

TOP_KEYS = ("matmul_gflops", "methods", "conventional_ratio", "diag_share", "ui_lag_p50_ms", "ui_lag_p99_ms",
            "peak_rss_mb")


def _positive_finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.slow  # trains real audits, two of them in worker processes, and drives the console
def test_quick_bench_writes_every_key_with_positive_finite_values(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    res = CliRunner().invoke(app, ["bench", "--quick", "--json", str(out), "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert all(k in r for k in TOP_KEYS)
    assert set(r["methods"]) == {"bp", "fa", "dfa", "frozen"}
    for m in r["methods"].values():
        assert all(_positive_finite(m[k]) for k in ("epoch_s", "gflops", "frac_of_matmul"))
    assert set(r["diag_share"]) == {"accuracy", "probe", "stability", "rho", "null", "total", "total_without_accuracy"}
    parts = ("accuracy", "probe", "stability", "rho", "null")
    assert r["diag_share"]["total"] == pytest.approx(sum(r["diag_share"][k] for k in parts))
    assert r["diag_share"]["total_without_accuracy"] == pytest.approx(r["diag_share"]["total"]
                                                                     - r["diag_share"]["accuracy"])
    assert r["diag_share"]["null"] > 0 and r["diag_share"]["rho"] > 0
    for k in ("matmul_gflops", "conventional_ratio", "diag_share", "ui_lag_p99_ms", "peak_rss_mb"):
        v = r[k]["total"] if k == "diag_share" else r[k]
        assert _positive_finite(v), k
    assert r["ui_lag_p50_ms"] >= 0 and r["ui_lag_p50_ms"] <= r["ui_lag_p99_ms"]
    assert r["ui_runs_training"] == 2
    # memory is the real two-worker audit's process tree: the audit, its training children, the tracker
    assert 0 < r["peak_pss_mb"] <= r["peak_rss_mb"] and r["memory_processes"] >= 3 and r["memory_runs"] == 2
    assert "| bp |" in md.read_text()
