"""Peak memory of a real CIFAR-100-shaped audit with two workers, over its whole process tree.

The benchmark writes a ``cifar-100-python/`` folder in the CIFAR format (pickled dicts of
uint8 rows and fine labels, random values) and runs ``python -m faeval_tui run --preset
cifar100_d256_L4 --data-dir …`` on it, as a user would: the real loader, the real
process tree. With ``workers = 2`` each run trains in a child process that takes the
images from shared memory; every run trains one full epoch and then measures its
last-epoch diagnostics (accuracy, probe, ρ, null band), the memory peak.

While it runs, the benchmark samples every process of the tree (the audit process, its
training children, multiprocessing's resource tracker) every 50 ms and reports the peak
of the summed RSS, which counts shared pages (the images, torch's libraries) once per
process that maps them: the goal's measure. The peak of the summed PSS, which splits
shared pages among their users, is what the tree really holds.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the directory holding faeval_tui and engine


def write_cifar100(data_dir: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``data_dir/cifar-100-python/{train,test,meta}`` with random images and labels. Pickle
    protocol 4, which the engine's loader reads like the official protocol-2 files."""
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, size=n)
        batch = {b"batch_label": split.encode(), b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                 b"filenames": [b"x.png"] * n}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"k{i:02d}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))


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
        write_cifar100(Path(tmp) / "data", n_train, n_test)
        args = [sys.executable, "-m", "faeval_tui", "run", "--preset", "cifar100_d256_L4", "--data-dir",
                str(Path(tmp) / "data"), "--runs-dir", str(Path(tmp) / "runs"), "--no-reuse"]
        for kv in (f"epochs={epochs}", f"seeds={list(seeds)}", f"methods={list(methods)}", "workers=2",
                   "penalty_methods=[]", *sets):
            args += ["--set", kv]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
        if proc.returncode != 0:  # run exits 0 only when every run finished
            raise RuntimeError(f"the memory audit failed (exit {proc.returncode}):\n{err[-2000:]}")
        runs = list((Path(tmp) / "runs").glob("*/*/records.jsonl"))
    return {"peak_rss_mb": peak["rss"] / 1024, "peak_pss_mb": peak["pss"] / 1024,
            "memory_processes": peak["processes"], "memory_runs": len(runs)}
