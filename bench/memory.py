"""Peak resident memory of a CIFAR-100-shaped audit, measured in a fresh process.

The child builds the task through the engine's real ``cifar_task`` (per-channel
statistics, uint8 storage) from random CIFAR-100-shaped arrays in place of the
archive, then trains a few batches of every method, keeping all four runs alive,
and runs one full diagnostics pass (accuracy, probe, ρ, null band) for each. The
peak is the child's VmHWM: everything it ever held at once, interpreter and torch
included.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(n_train: int, n_test: int, batches: int, methods: list[str]) -> dict[str, float]:
    import torch

    import engine.cifar as cifar
    from engine.data import cifar_task
    from engine.trainer import epoch_record

    from .training import Shape, bench_config, run_parts, time_batches

    gen = torch.Generator().manual_seed(0)

    def fake_load(name, data_dir=None, download=True, spec=None):
        return cifar.CifarArrays(
            torch.randint(0, 256, (n_train, 3072), dtype=torch.uint8, generator=gen),
            torch.randint(0, 100, (n_train,), generator=gen),
            torch.randint(0, 256, (n_test, 3072), dtype=torch.uint8, generator=gen),
            torch.randint(0, 100, (n_test,), generator=gen), 100, [str(i) for i in range(100)], Path("."))

    cifar.load_cifar = fake_load
    task = cifar_task("cifar100", None, False)
    after_data = _peak_mb()
    shape = Shape(n_train=n_train, n_test=n_test)
    cfg = bench_config(shape, diagnostics={"n_samples": min(1024, n_test), "rho_samples": min(1024, n_test)})
    runs = [run_parts(cfg, m, task) for m in methods]
    for parts in runs:
        time_batches(parts, task, shape.batch, batches)
        epoch_record(parts, cfg, task, 0.0, cfg.epochs, 42)  # the last epoch: every diagnostic
    return {"peak_rss_mb": _peak_mb(), "rss_after_data_mb": after_data}


def _peak_mb() -> float:
    """VmHWM, the high-water mark of this process's own address space. ``ru_maxrss`` would
    also count the parent's memory at fork: Linux carries it across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(n_train: int = 50_000, n_test: int = 10_000, batches: int = 20,
             methods: tuple[str, ...] = ("bp", "fa", "dfa", "frozen"), threads: int = 0) -> dict[str, float]:
    code = (f"import json; from bench.memory import _child; "
            f"print(json.dumps(_child({n_train}, {n_test}, {batches}, {list(methods)!r})))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
