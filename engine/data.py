"""Tasks as tensors on the training device: CIFAR (uint8, normalised per batch) or the
synthetic teacher task (float32). No DataLoader: batches are index gathers into
resident tensors, shuffled with ``torch.randperm``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .config import AuditConfig, SyntheticConfig

RANDOM_TARGETS_SEED = 20240229  # fixed, so every run of an audit sees the same random labels


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a run seed and a purpose tag: independent streams per purpose."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class TaskData:
    """Train/test tensors. ``x_*`` may be uint8 (CIFAR, 4× smaller resident): ``prepare``
    turns a gathered batch into normalised float32 as (x · scale + shift)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    scale: Tensor | None = None
    shift: Tensor | None = None

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> TaskData:
        move = (lambda t: None if t is None else t.to(device))
        return replace(self, x_train=move(self.x_train), y_train=move(self.y_train), x_test=move(self.x_test),
                       y_test=move(self.y_test), scale=move(self.scale), shift=move(self.shift))

    def prepare(self, x: Tensor) -> Tensor:
        if self.scale is None:
            return x
        return torch.addcmul(self.shift, x.float(), self.scale)

    def test_batches(self, batch_size: int = 1024, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The test set from sample ``start`` on, in batches."""
        for i in range(start, self.x_test.shape[0], batch_size):
            yield self.prepare(self.x_test[i:i + batch_size]), self.y_test[i:i + batch_size]

    def diagnostic_set(self, n: int) -> tuple[Tensor, Tensor]:
        """The fixed diagnostic set: the first ``n`` test samples."""
        if self.x_test.shape[0] < n:
            raise ValueError(f"the test set has {self.x_test.shape[0]} samples, fewer than the {n} diagnostics need")
        return self.prepare(self.x_test[:n]), self.y_test[:n]


def synthetic_task(cfg: SyntheticConfig) -> TaskData:
    """x ~ N(0, I); y = argmax of a fixed random tanh MLP (the teacher). Deterministic in ``cfg.seed``."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "synthetic"))
    n = cfg.n_train + cfg.n_test
    x = torch.randn(n, cfg.in_dim, generator=gen)
    h = x
    for _ in range(cfg.teacher_depth):
        w = torch.randn(h.shape[1], cfg.teacher_width, generator=gen) / h.shape[1] ** 0.5
        h = torch.tanh(cfg.teacher_gain * (h @ w))
    w_out = torch.randn(h.shape[1], cfg.classes, generator=gen) / h.shape[1] ** 0.5
    y = (h @ w_out).argmax(1)
    return TaskData("synthetic", x[:cfg.n_train], y[:cfg.n_train], x[cfg.n_train:], y[cfg.n_train:], cfg.classes)


def cifar_task(name: str, data_dir: str | None, download: bool) -> TaskData:
    from .cifar import load_cifar

    arr = load_cifar(name, data_dir, download=download)
    mean, std = channel_stats(arr.x_train)
    scale = (1.0 / (255.0 * std)).repeat_interleave(1024).float()
    shift = (-mean / std).repeat_interleave(1024).float()
    return TaskData(name, arr.x_train, arr.y_train, arr.x_test, arr.y_test, arr.n_classes, scale, shift)


def channel_stats(x: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (ddof = 1) of uint8 CHW-flattened rows, in [0, 1] units.

    Integer sums in float64 are exact here (≤ 255² · 5e7 < 2⁵³), so chunking changes no
    digit that matters, and the peak stays one chunk instead of a float64 copy of the set
    (1.2 GB for CIFAR)."""
    s = torch.zeros(3, dtype=torch.float64)
    ss = torch.zeros(3, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        c = x[i:i + chunk].view(-1, 3, x.shape[1] // 3).double()
        s += c.sum(dim=(0, 2))
        ss += c.square().sum(dim=(0, 2))
    count = x.shape[0] * (x.shape[1] // 3)
    mean = s / count
    var = (ss - s * mean) / (count - 1)
    return mean / 255.0, var.sqrt() / 255.0


def load_task(cfg: AuditConfig) -> TaskData:
    if cfg.dataset == "synthetic":
        task = synthetic_task(cfg.synthetic)
    else:
        task = cifar_task(cfg.dataset, cfg.data_dir, cfg.download)
    if cfg.random_targets:
        gen = torch.Generator().manual_seed(RANDOM_TARGETS_SEED)
        task = replace(task, name=task.name + "+random-targets",
                       y_train=torch.randint(task.n_classes, task.y_train.shape, generator=gen),
                       y_test=torch.randint(task.n_classes, task.y_test.shape, generator=gen))
    return task
