"""Per-epoch cost of each diagnostic, from the timings the engine records (``diag_s``).

ρ runs every ``rho_every`` epochs (and at the last), so its cost is amortised over
that cadence; the null band over ``null_every``. The share is of the epoch's wall
time, training plus diagnostics.
"""
from __future__ import annotations

from engine.data import TaskData
from engine.trainer import epoch_record

from .training import Shape, bench_config, run_parts

KEYS = ("accuracy", "probe", "stability", "rho", "null")


def diag_seconds(shape: Shape, task: TaskData, methods: list[str], rounds: int, rho_every: int = 10,
                 null_every: int = 1, n_samples: int = 1024) -> dict[str, dict[str, float]]:
    """method → diagnostic → seconds per epoch (best round, amortised over its cadence)."""
    cfg = bench_config(shape, diagnostics={"rho_every": rho_every, "null_every": null_every,
                                           "n_samples": n_samples, "rho_samples": n_samples})
    out = {}
    for method in methods:
        parts = run_parts(cfg, method, task)
        epoch = rho_every * null_every  # an epoch that measures both
        best: dict[str, float] = {}
        for _ in range(rounds + 1):  # the first round warms up
            _, timings = epoch_record(parts, cfg, task, 0.0, epoch, 42)
            for k, v in timings.items():
                best[k] = min(best.get(k, float("inf")), v)
        cadence = {"rho": rho_every, "null": null_every}
        out[method] = {k: best.get(k, 0.0) / cadence.get(k, 1) for k in KEYS}
    return out


def shares(diag: dict[str, dict[str, float]], epoch_s: dict[str, float]) -> dict[str, float]:
    """Each diagnostic's share of the audit's epoch wall time (methods weighted equally, as in
    an audit with the same seeds for each), and ``total``."""
    methods = list(diag)
    wall = sum(epoch_s[m] + sum(diag[m].values()) for m in methods)
    result = {k: sum(diag[m][k] for m in methods) / wall for k in KEYS}
    result["total"] = sum(result.values())
    # the test-accuracy pass is the run's own evaluation, which any training loop does
    result["total_without_accuracy"] = result["total"] - result["accuracy"]
    return result


def shares_by_method(diag: dict[str, dict[str, float]], epoch_s: dict[str, float]) -> dict[str, float]:
    return {m: sum(d.values()) / (epoch_s[m] + sum(d.values())) for m, d in diag.items()}
