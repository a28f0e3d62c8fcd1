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


def goals_by_name(r: dict) -> dict[str, dict]:
    return {g["goal"]: g for g in r["goals"]}


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
    # and the same audit from the console: the console, the data check, the trainer and its children
    assert 0 < r["console_own_rss_mb"] < r["console_peak_pss_mb"] <= r["console_peak_rss_mb"]
    assert r["console_memory_processes"] >= 4 and r["console_memory_runs"] == 2
    assert r["console_imported_torch"] is False  # the console process itself; its trainer does
    assert "| bp |" in md.read_text()
    # one thread, as an audit's runs train: the rate and the shares measured at that thread count
    one = r["one_thread"]
    assert _positive_finite(one["matmul_gflops"])
    assert list(one["methods"]) == ["bp", "fa", "dfa", "fa_lillicrap", "ep"]
    for name, m in one["methods"].items():
        counted = ("epoch_s", "gflops", "frac_of_matmul", "ratio_to_bp") if name != "ep" else ("epoch_s", "ratio_to_bp")
        assert all(_positive_finite(m[k]) for k in counted), name
    # ep's products depend on its relaxation: no share is made up for it, only its multiple of bp
    assert one["methods"]["ep"]["gflops"] is None and one["methods"]["ep"]["frac_of_matmul"] is None
    assert one["methods"]["bp"]["ratio_to_bp"] == 1.0
    text = md.read_text()
    assert f"| ep | {one['methods']['ep']['epoch_s']:.2f} | — | — | {one['methods']['ep']['ratio_to_bp']:.2f} |" in text
    bp = one["methods"]["bp"]
    assert f"| bp | {bp['epoch_s']:.2f} | {bp['gflops']:.0f} | {100 * bp['frac_of_matmul']:.0f}% | 1.00 |" in text
    lillicrap = goals_by_name(r)["fa_lillicrap epoch / bp epoch, 1 thread (bp's products, each B in its W's place)"]
    assert lillicrap["measured"] == one["methods"]["fa_lillicrap"]["ratio_to_bp"]
    assert lillicrap["met"] == (lillicrap["measured"] <= 1.10)
    # the machine is named with the CPU features its matmul kernels depend on
    mc = r["machine"]
    assert mc["cpu"] and mc["cpu_capability"] and isinstance(mc["cpu_flags"], list)
    assert f"torch kernels {mc['cpu_capability']}" in md.read_text()
    goals = goals_by_name(r)
    assert goals["peak memory of the two-worker audit, summed RSS (MB)"]["measured"] == r["peak_rss_mb"]
    console = goals["the same audit from the console: console + trainer tree, summed RSS (MB)"]
    assert console["measured"] == r["console_peak_rss_mb"] and console["met"] == (r["console_peak_rss_mb"] <= 1536)


def test_matmul_counts_cover_the_rules_whose_products_are_fixed_and_refuse_ep():
    from faeval_tui.bench import shapes

    args = (128, 3072, 100, 256, 4, 256)
    bp = shapes.step_matmuls("bp", *args)
    # Lillicrap's FA forms g·B where bp forms g·W: the same products, the same count
    assert shapes.step_matmuls("fa_lillicrap", *args) == bp
    # the 4-block ResMLP: embed fwd + wgrad (2), 8 block linears × 3, head × 3; fa/dfa add e·[P_0|…|P_4]
    assert len(bp) == 2 + 8 * 3 + 3
    assert shapes.step_matmuls("dfa", *args) == bp + [(128, 100, 5 * 256)]
    assert shapes.flops(bp) == 2 * 128 * (2 * 3072 * 256 + 8 * 3 * 256 * 256 + 3 * 256 * 100)
    assert not shapes.counted("ep")
    with pytest.raises(ValueError, match="no matmul count for 'ep'"):
        shapes.step_matmuls("ep", *args)


def test_cpu_flags_are_read_from_cpuinfo_and_filtered_to_the_matmul_ones(monkeypatch, tmp_path):
    import builtins

    from faeval_tui.bench import run

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Test CPU\n"
                    "flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 sha_ni\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path,
                                                                           *a, **k))
    mc = run.machine()
    assert mc["cpu"] == "Intel(R) Xeon(R) Test CPU"
    assert mc["cpu_flags"] == ["fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    line = run.machine_line(mc)
    assert "Intel(R) Xeon(R) Test CPU (family 6 model 143), " in line and "; AMX;" in line and "sha_ni" not in line
    assert (mc["cpu_family"], mc["cpu_model"]) == ("6", "143")


@pytest.mark.slow  # profiles real training steps
def test_quick_profile_splits_every_step_into_categories(tmp_path):
    out = tmp_path / "profile.json"
    res = CliRunner().invoke(app, ["bench", "--quick", "--profile", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["profiles"] and r["profiles"][0]["threads"] == 1
    for p in r["profiles"]:
        assert [m["method"] for m in p["methods"]] == ["bp", "fa", "dfa"]
        for m in p["methods"]:
            assert sum(m["share"].values()) == pytest.approx(1.0)
            assert m["share"]["matmul"] > 0 and m["top"] and _positive_finite(m["step_ms"])
    assert "| `aten::mm` |" in res.output and "matmul" in res.output
