"""Peak memory of a real CIFAR-100-shaped audit with two workers, over its whole process tree.

A fresh process runs the engine's ``AuditRunner`` on an audit whose task is built by the
real ``cifar_task`` (per-channel statistics, uint8 storage) from random CIFAR-100-shaped
arrays in place of the archive. With ``workers = 2`` each run trains in a child process
that takes the images from shared memory; every run trains one full epoch and then
measures its last-epoch diagnostics (accuracy, probe, ρ, null band), the memory peak.

While it runs, the benchmark samples every process of the tree (the audit process, its
training children, multiprocessing's resource tracker) every 50 ms and reports the peak
of the summed RSS, which counts the shared images once per process that touched them
(an upper bound), and the peak of the summed PSS, which splits shared pages among their
users (what the tree really holds).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the directory holding faeval_tui and engine


def _audit(n_train: int, n_test: int, runs_dir: str, sets: list[str]) -> dict[str, object]:
    import torch

    import engine.cifar as cifar
    from engine import Audit, AuditRunner, load_config

    gen = torch.Generator().manual_seed(0)

    def fake_load(name, data_dir=None, download=True, spec=None):
        return cifar.CifarArrays(
            torch.randint(0, 256, (n_train, 3072), dtype=torch.uint8, generator=gen),
            torch.randint(0, 100, (n_train,), generator=gen),
            torch.randint(0, 256, (n_test, 3072), dtype=torch.uint8, generator=gen),
            torch.randint(0, 100, (n_test,), generator=gen), 100, [str(i) for i in range(100)], Path("."))

    cifar.load_cifar = fake_load
    audit = Audit.create(load_config("cifar100_d256_L4", sets), Path(runs_dir))
    runner = AuditRunner(audit)
    runner.submit_unfinished()
    return {"statuses": runner.run(), "workers": runner.workers}


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss(n_train: int = 50_000, n_test: int = 10_000, seeds: tuple[int, ...] = (42, 123),
             methods: tuple[str, ...] = ("frozen", "fa"), epochs: int = 1, threads: int = 0,
             sets: tuple[str, ...] = ()) -> dict[str, float]:
    """The audit's peak summed RSS and PSS in MB, sampled every 50 ms (``sets``: more overrides)."""
    with tempfile.TemporaryDirectory(prefix="faeval-bench-mem-") as tmp:
        sets = [f"epochs={epochs}", f"seeds={list(seeds)}", f"methods={list(methods)}", "workers=2",
                "penalty_methods=[]", *sets]
        code = (f"import json; from faeval_tui.bench.memory import _audit; "
                f"print(json.dumps(_audit({n_train}, {n_test}, {tmp!r}, {sets!r})))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        peak = {"rss": 0, "pss": 0, "processes": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pids = _tree(proc.pid)
                rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
                pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                peak["processes"] = max(peak["processes"], len(pids))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = proc.communicate()
        done.set()
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(f"the memory audit failed:\n{err[-2000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        bad = {k: v for k, v in result["statuses"].items() if v != "finished"}
        if bad:
            raise RuntimeError(f"the memory audit's runs did not finish: {bad}")
    return {"peak_rss_mb": peak["rss"] / 1024, "peak_pss_mb": peak["pss"] / 1024,
            "memory_processes": peak["processes"], "memory_runs": len(result["statuses"])}
