"""Epoch timings with the engine's own ``train_epoch``, and the conventional loop to compare.

The training set is CIFAR-100-shaped (uint8 rows of 3072, 100 classes, random values:
timing does not depend on them). A fraction of an epoch is timed and scaled to the
full epoch (``batches`` of ``steps``); methods are interleaved round by round so a
burst of load from elsewhere hits them alike, and each method keeps its best round.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from engine.config import AuditConfig
from engine.data import TaskData
from engine.model import ResMLP
from engine.plan import RunSpec
from engine.trainer import RunParts, train_epoch


@dataclass(frozen=True)
class Shape:
    n_train: int = 50_000
    n_test: int = 10_000
    in_dim: int = 3072
    n_classes: int = 100
    d: int = 256
    L: int = 4
    batch: int = 128

    @property
    def steps(self) -> int:
        return -(-self.n_train // self.batch)


def cifar_shaped_task(shape: Shape, seed: int = 0) -> TaskData:
    """uint8 images normalised per batch by ``prepare``, as the real CIFAR task is."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (shape.n_train + shape.n_test, shape.in_dim), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, shape.n_classes, (shape.n_train + shape.n_test,), generator=gen)
    scale = torch.full((shape.in_dim,), 1 / (255 * 0.25))
    shift = torch.full((shape.in_dim,), -2.0)
    return TaskData("cifar100-shaped", x[:shape.n_train], y[:shape.n_train], x[shape.n_train:],
                    y[shape.n_train:], shape.n_classes, scale, shift)


def bench_config(shape: Shape, **overrides) -> AuditConfig:
    return AuditConfig(name="bench", dataset="cifar100", d=shape.d, L=shape.L, batch_size=shape.batch,
                       epochs=100, **overrides)


def run_parts(cfg: AuditConfig, method: str, task: TaskData, seed: int = 42) -> RunParts:
    return RunParts(cfg, RunSpec(f"{method}-s{seed}", method, seed), task, task.device)


def time_batches(parts: RunParts, task: TaskData, batch: int, batches: int) -> float:
    """Seconds for ``batches`` steps of the engine's ``train_epoch`` (its loop, its one sync)."""
    full = parts.steps_per_epoch
    parts.steps_per_epoch = batches  # train_epoch runs steps_per_epoch batches of the shuffled set
    try:
        t0 = time.perf_counter()
        train_epoch(parts, task, batch, 0.0, threading.Event())
        return time.perf_counter() - t0
    finally:
        parts.steps_per_epoch = full


class ConventionalLoop:
    """The same model and recipe written the usual way: a DataLoader over float32 tensors
    (normalised up front), the default AdamW, a per-batch ``.item()`` for the running loss."""

    def __init__(self, cfg: AuditConfig, task: TaskData, seed: int = 42) -> None:
        x = task.prepare(task.x_train)  # float32, 4× the uint8 set
        self.loader = DataLoader(TensorDataset(x, task.y_train), batch_size=cfg.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(seed))
        self.model = ResMLP(task.in_dim, task.n_classes, cfg.d, cfg.L, cfg.r, cfg.terminal_ln,
                            generator=torch.Generator().manual_seed(seed))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=100 * len(self.loader))

    def time_batches(self, batches: int) -> float:
        self.model.train()
        running = 0.0
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(self.loader):
            if i == batches:
                break
            self.opt.zero_grad()
            loss = F.cross_entropy(self.model(xb), yb)
            loss.backward()
            self.opt.step()
            self.sched.step()
            running += loss.item()
        return time.perf_counter() - t0


def epoch_times(shape: Shape, task: TaskData, methods: list[str], batches: int, rounds: int,
                conventional: bool = True) -> dict[str, list[float]]:
    """Per method (and ``conventional``), the full-epoch seconds extrapolated from each round."""
    cfg = bench_config(shape)
    runners = {m: run_parts(cfg, m, task) for m in methods}
    conv = ConventionalLoop(cfg, task) if conventional else None
    for parts in runners.values():  # warm-up: first-touch allocations, kernel selection
        time_batches(parts, task, shape.batch, min(batches, 5))
    if conv is not None:
        conv.time_batches(min(batches, 5))
    scale = shape.steps / batches
    times: dict[str, list[float]] = {m: [] for m in methods}
    if conv is not None:
        times["conventional"] = []
    order = list(times)
    if conv is not None:  # conventional next to bp: their ratio is the one that matters
        order.remove("conventional")
        order.insert(order.index("bp") + 1 if "bp" in order else 0, "conventional")
    for r in range(rounds):
        # forward, then backward order (A B C D D C B A …): a drift in load hits all alike
        for m in order if r % 2 == 0 else order[::-1]:
            t = conv.time_batches(batches) if m == "conventional" else time_batches(runners[m], task, shape.batch,
                                                                                     batches)
            times[m].append(t * scale)
    return times


def _paired_child(shape: Shape, method: str, seed: int, batches: int, precision: str, orders, go, out) -> None:
    torch.set_num_threads(1)
    task = cifar_shaped_task(shape)
    parts = run_parts(bench_config(shape, precision=precision), method, task, seed)
    time_batches(parts, task, shape.batch, min(batches, 3))  # warm-up
    out.put(("ready", seed, 0.0))
    while (r := orders.get()) is not None:
        go.wait()  # both runs of the pair start the round together
        out.put((r, seed, time_batches(parts, task, shape.batch, batches)))


def paired_epoch_times(shape: Shape, methods: list[str], batches: int, rounds: int,
                       precision: str = "fp32") -> dict[str, list[float]]:
    """Per method, wall seconds for two runs of it (seeds 42 and 123) to each finish an epoch
    side by side, as an audit with ``workers = 2`` trains them: each in its own process with
    one intra-op thread. Same-method pairs finish together, so the wall time (the slower of
    the two) is the pair's throughput, with no tail where one run trains alone.

    Every pair's processes start first and wait; the rounds then go method by method, in
    reverse order every other round, so a burst of load from elsewhere hits them alike."""
    ctx = mp.get_context("spawn")
    pairs = {}
    for method in methods:
        go, out = ctx.Barrier(2), ctx.Queue()
        orders = [ctx.Queue(), ctx.Queue()]
        procs = [ctx.Process(target=_paired_child, daemon=True,
                             args=(shape, method, seed, batches, precision, q, go, out))
                 for seed, q in zip((42, 123), orders)]
        for proc in procs:
            proc.start()
        pairs[method] = (procs, orders, out, go)  # go kept here: a dropped Barrier unlinks its semaphores
    try:
        for procs, _, out, _ in pairs.values():
            for _ in procs:
                out.get(timeout=600)  # "ready": built and warmed up
        times: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(rounds):
            for method in methods if r % 2 == 0 else methods[::-1]:
                procs, orders, out, _ = pairs[method]
                for q in orders:
                    q.put(r)
                seconds = [out.get(timeout=600)[2] for _ in procs]
                times[method].append(max(seconds) * shape.steps / batches)
        return times
    finally:
        for procs, orders, _, _ in pairs.values():
            for q in orders:
                q.put(None)
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
