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

Then the same audit is started as ``faeval-tui --preset cifar100_d256_L4`` starts it: a
console (here in Textual's headless driver, ``python -m faeval_tui.bench.memory``) whose
trainer is a process of its own, measured over the console's whole tree: the console, the
short-lived data check, the trainer and its training children.
"""
from __future__ import annotations

import json
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
PRESET = "cifar100_d256_L4"


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


def _audit_sets(data_dir: Path, seeds, methods, epochs: int, sets) -> list[str]:
    return [f"data_dir={data_dir}", f"epochs={epochs}", f"seeds={list(seeds)}", f"methods={list(methods)}",
            "workers=2", "penalty_methods=[]", "reuse=false", *sets]


def _sampled(args: list[str], threads: int, what: str) -> tuple[dict[str, int], str]:
    """Run ``args`` to its end, sampling its process tree every 50 ms: the peaks (KiB) of the
    summed RSS and PSS, of the first process's own RSS, and the tree's largest size; and
    what it printed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = {"rss": 0, "pss": 0, "root": 0, "processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            rss = [_kb(f"/proc/{p}/status", "VmRSS:") for p in pids]
            pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            peak["rss"], peak["pss"] = max(peak["rss"], sum(rss)), max(peak["pss"], pss)
            peak["root"] = max(peak["root"], rss[0])
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:  # both exit 0 only when every run finished
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{err[-2000:]}")
    return peak, out


def peak_rss(n_train: int = 50_000, n_test: int = 10_000, seeds: tuple[int, ...] = (42, 123),
             methods: tuple[str, ...] = ("frozen", "fa"), epochs: int = 1, threads: int = 0,
             sets: tuple[str, ...] = (), console: bool = True) -> dict[str, float]:
    """The audit's peak summed RSS and PSS in MB, sampled every 50 ms (``sets``: more
    overrides); with ``console``, the same audit started from the console, measured again
    over the console's tree (its trainer process, that one's workers, the data check)."""
    with tempfile.TemporaryDirectory(prefix="faeval-bench-mem-") as tmp:
        write_cifar100(Path(tmp) / "data", n_train, n_test)
        keys = _audit_sets(Path(tmp) / "data", seeds, methods, epochs, sets)
        args = [sys.executable, "-m", "faeval_tui", "run", "--preset", PRESET, "--runs-dir", str(Path(tmp) / "runs")]
        for kv in keys:
            args += ["--set", kv]
        peak, _ = _sampled(args, threads, "the memory audit")
        runs = list((Path(tmp) / "runs").glob("*/*/records.jsonl"))
        out = {"peak_rss_mb": peak["rss"] / 1024, "peak_pss_mb": peak["pss"] / 1024,
               "memory_processes": peak["processes"], "memory_runs": len(runs)}
        if console:
            args = [sys.executable, "-m", "faeval_tui.bench.memory", str(Path(tmp) / "console-runs"), *keys]
            peak, said = _sampled(args, threads, "the console's memory audit")
            out.update(console_imported_torch=json.loads(said.strip().splitlines()[-1])["torch"],
                       console_peak_rss_mb=peak["rss"] / 1024, console_peak_pss_mb=peak["pss"] / 1024,
                       console_own_rss_mb=peak["root"] / 1024, console_memory_processes=peak["processes"],
                       console_memory_runs=len(list((Path(tmp) / "console-runs").glob("*/*/records.jsonl"))))
    return out


async def _console(runs_dir: Path, sets: list[str], wait_s: float = 3600.0) -> int:
    """The console as ``faeval-tui --preset …`` opens it (its trainer a process of its own),
    in Textual's headless driver, until its trainer has finished: 0 when every run did."""
    from engine.config import load_config
    from engine.runstore import RECORDS, read_run
    from faeval_tui.app import FaevalApp

    app = FaevalApp(cfg=load_config(PRESET, sets), runs_dir=runs_dir, bell=False, detach=True, poll_s=0.5)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + wait_s
        while app.audit is None or app.trainer_live():
            if app.failure is not None or time.monotonic() > deadline:
                print(f"the console did not train: {app.failure or 'timed out'}", file=sys.stderr)
                return 1
            await pilot.pause(0.5)
        await pilot.pause(1.0)  # the last records drawn
        ends = [read_run(app.audit.path / rid / RECORDS).end for rid in app.state.runs]
    print(json.dumps({"torch": "torch" in sys.modules}))  # the console's process, not its trainer's
    return 0 if ends and all(e is not None and e.status == "finished" for e in ends) else 1


if __name__ == "__main__":  # python -m faeval_tui.bench.memory RUNS_DIR KEY=VALUE...: peak_rss's console
    import asyncio

    sys.exit(asyncio.run(_console(Path(sys.argv[1]), sys.argv[2:])))
