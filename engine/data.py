"""Tasks as tensors on the training device: CIFAR (uint8, normalised per batch), scikit-learn's
handwritten digits, the user's own npz arrays (``engine.userdata``) or the synthetic teacher
task (float32). No DataLoader: batches are index gathers into resident tensors, shuffled
with ``torch.randperm``.

Rows are always flat, (n, in_dim); ``TaskData.image_shape`` says how image models (cnn,
vit_mini) lay a row out as (C, H, W), channels first.

Where the data came from is pinned so a resume trains on the same data: an npz file by its
SHA-256 (``data_sha256``, stored when the audit is created: ``pin_data_source``), a TaskData
handed to ``AuditRunner`` from Python by its content fingerprint (``task_fingerprint``);
synthetic, digits and CIFAR are rebuilt from the config and leave ``data_sha256`` unset.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .config import AuditConfig, SyntheticConfig
from .device import training_device
from .errors import ConfigError, DataError
from .models import check_spec
from .userdata import DIGITS_DIMS, diagnostic_n, diagnostic_n_for, short, task_dims

__all__ = ["TaskData", "checked_task", "diagnostic_n", "diagnostic_n_for", "digits_task", "load_task",
           "npz_task", "pin_data_source", "synthetic_task", "task_dims", "task_fingerprint"]

RANDOM_TARGETS_SEED = 20240229  # fixed, so every run of an audit sees the same random labels
DIGITS_SPLIT_SEED = 0  # random_state of the digits' stratified train/test split: fixed, never change it
DIGITS_TEST = 360
MIN_DIAGNOSTIC_SAMPLES = 16  # as diagnostics.n_samples' lower bound


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a run seed and a purpose tag: independent streams per purpose."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class TaskData:
    """Train/test tensors. ``x_*`` may be uint8 (CIFAR, 4× smaller resident): ``prepare``
    turns a gathered batch into normalised float32 as (x · scale + shift).

    ``image_shape`` (C, H, W) describes the flat rows for image models (None: rows only).
    ``file_sha256`` is an npz file's digest; ``loaded_from`` is set by ``load_task`` (the
    config's data keys and the task's fingerprint as loaded), so ``AuditRunner`` can tell a
    task the config reproduces from one built in Python, or changed since it was loaded."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    scale: Tensor | None = None
    shift: Tensor | None = None
    image_shape: tuple[int, int, int] | None = None
    file_sha256: str | None = None
    loaded_from: tuple[str, str] | None = None

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
        xf = x.float()
        if xf.data_ptr() == x.data_ptr():  # already float32: x.float() is the data itself, never written to
            return torch.addcmul(self.shift, xf, self.scale)
        # into the fresh float copy: one temporary per batch instead of two (12 MiB a CIFAR test batch)
        return torch.addcmul(self.shift, xf, self.scale, out=xf)

    def test_batches(self, batch_size: int = 1024, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The test set from sample ``start`` on, in batches."""
        for i in range(start, self.x_test.shape[0], batch_size):
            yield self.prepare(self.x_test[i:i + batch_size]), self.y_test[i:i + batch_size]

    def diagnostic_set(self, n: int, stability_batches: int = 8) -> tuple[Tensor, Tensor]:
        """The fixed diagnostic set: the first ``diagnostic_n(n, stability_batches, n_test)``
        test samples (the whole test split, rounded, when it has fewer than ``n``)."""
        m = diagnostic_n(n, stability_batches, self.x_test.shape[0])
        if m < 1:
            raise ValueError(f"the test set has {self.x_test.shape[0]} samples, fewer than the "
                             f"{stability_batches} stability batches of the diagnostic set")
        return self.prepare(self.x_test[:m]), self.y_test[:m]


def synthetic_task(cfg: SyntheticConfig) -> TaskData:
    """x ~ N(0, I); y = argmax of a fixed random tanh MLP (the teacher). Deterministic in ``cfg.seed``.

    "Synthetic images": when in_dim is a square s², ``image_shape`` is (1, s, s) (16 → 4×4,
    64 → 8×8), so the image models run on the teacher task too. The pixels are independent
    Gaussians: the layout has no spatial structure, neighbours are no more alike than any pair."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "synthetic"))
    n = cfg.n_train + cfg.n_test
    x = torch.randn(n, cfg.in_dim, generator=gen)
    h = x
    for _ in range(cfg.teacher_depth):
        w = torch.randn(h.shape[1], cfg.teacher_width, generator=gen) / h.shape[1] ** 0.5
        h = torch.tanh(cfg.teacher_gain * (h @ w))
    w_out = torch.randn(h.shape[1], cfg.classes, generator=gen) / h.shape[1] ** 0.5
    y = (h @ w_out).argmax(1)
    side = math.isqrt(cfg.in_dim)
    shape = (1, side, side) if side * side == cfg.in_dim else None
    return TaskData("synthetic", x[:cfg.n_train], y[:cfg.n_train], x[cfg.n_train:], y[cfg.n_train:], cfg.classes,
                    image_shape=shape)


def digits_task() -> TaskData:
    """The UCI handwritten digits that scikit-learn ships (``sklearn.datasets.load_digits``:
    1,797 8×8 images of 10 classes, pixels 0..16; no download).

    Split with ``train_test_split(test_size=360, stratify=y, random_state=DIGITS_SPLIT_SEED)``
    (seed 0): 1,437 train / 360 test samples, each class in both splits in proportion (±1).
    The pixels are standardised with the train split's global mean and standard deviation
    (one scalar each, numpy's ddof = 0: about 4.886 and 6.018), float32, flat rows of 64;
    ``image_shape`` (1, 8, 8)."""
    import numpy as np

    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise DataError(f"dataset digits needs scikit-learn, which cannot be imported: {e}",
                        "install it into this environment: pip install scikit-learn") from None

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST, stratify=y,
                                              random_state=DIGITS_SPLIT_SEED)
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def rows(a: np.ndarray) -> Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    task = TaskData("digits", rows(x_tr), labels(y_tr), rows(x_te), labels(y_te), 10, image_shape=(1, 8, 8))
    assert (task.in_dim, task.n_classes, len(task.x_train), len(task.x_test)) == DIGITS_DIMS
    return task


def npz_task(path: str | Path, expected_sha256: str | None = None) -> TaskData:
    """The user's arrays (``engine.userdata.load_npz``: validated, x float32 as given, y int64)."""
    from .userdata import load_npz

    arr = load_npz(path, expected_sha256)
    return TaskData("npz", torch.from_numpy(arr.x_train), torch.from_numpy(arr.y_train),
                    torch.from_numpy(arr.x_test), torch.from_numpy(arr.y_test), arr.n_classes,
                    image_shape=arr.image_shape, file_sha256=arr.sha256)


def cifar_task(name: str, data_dir: str | None, download: bool) -> TaskData:
    """CIFAR's uint8 rows as pickled: 3 channel planes of 32×32 (CHW-flattened, as
    ``channel_stats`` reads them), so ``image_shape`` is (3, 32, 32)."""
    from .cifar import load_cifar

    arr = load_cifar(name, data_dir, download=download)
    mean, std = channel_stats(arr.x_train)
    scale = (1.0 / (255.0 * std)).repeat_interleave(1024).float()
    shift = (-mean / std).repeat_interleave(1024).float()
    return TaskData(name, arr.x_train, arr.y_train, arr.x_test, arr.y_test, arr.n_classes, scale, shift,
                    image_shape=(3, 32, 32))


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


def task_fingerprint(task: TaskData) -> str:
    """SHA-256 over what training sees: every tensor's dtype, shape and bytes (x, y, and the
    normalisation's scale and shift), ``n_classes`` and ``image_shape`` (not the name). About
    0.1 s for CIFAR's 180 MB."""
    digest = hashlib.sha256(b"faeval-task-v1\n")
    digest.update(json.dumps({"n_classes": int(task.n_classes),
                              "image_shape": None if task.image_shape is None else list(task.image_shape)}).encode())
    for name in ("x_train", "y_train", "x_test", "y_test", "scale", "shift"):
        t = getattr(task, name)
        if t is None:
            digest.update(f"\n{name}: none".encode())
            continue
        t = t.detach().to("cpu").contiguous()
        digest.update(f"\n{name}: {t.dtype} {list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def data_origin(cfg: AuditConfig) -> str:
    """The config keys that say which data ``load_task`` builds (data_sha256 aside)."""
    keys: dict[str, object] = {"dataset": cfg.dataset, "random_targets": cfg.random_targets}
    if cfg.dataset == "synthetic":
        keys["synthetic"] = cfg.synthetic.model_dump(mode="json")
    if cfg.dataset == "npz" and cfg.data_path:
        keys["data_path"] = str(Path(cfg.data_path).expanduser().resolve())
    return json.dumps(keys, sort_keys=True)


def loaded_from_config(cfg: AuditConfig, task: TaskData) -> bool:
    """``task`` is what ``load_task(cfg)`` returned, unchanged since (its fingerprint is the one it loaded with)."""
    return task.loaded_from is not None and task.loaded_from[0] == data_origin(cfg) \
        and task.loaded_from[1] == task_fingerprint(task)


def check_diagnostic_size(cfg: AuditConfig, n_test: int) -> None:
    """A test split too small for a diagnostic set of ``MIN_DIAGNOSTIC_SAMPLES`` (and one
    sample per stability batch) is refused before anything trains."""
    dc = cfg.diagnostics
    n = diagnostic_n(dc.n_samples, dc.stability_batches, n_test)
    need = max(MIN_DIAGNOSTIC_SAMPLES, dc.stability_batches)
    if n < need:
        raise ConfigError(f"the {cfg.dataset} test split has {n_test:,} samples: the diagnostic set would have "
                          f"{n:,} (a multiple of diagnostics.stability_batches = {dc.stability_batches}), "
                          f"fewer than the {need} it needs",
                          "give a larger test split, or lower diagnostics.stability_batches")


def python_data_refusal(cfg: AuditConfig, found: str | None) -> DataError:
    """An audit whose ``data_sha256`` is a TaskData fingerprint cannot load its data from the config."""
    also = f" (fingerprint {short(found)})" if found else ""
    return DataError(f"this audit trained on data handed in from Python (fingerprint {short(cfg.data_sha256)}), "
                     f"not on the {cfg.dataset} data its config names{also}",
                     "resume it from Python with the same TaskData: AuditRunner(audit, task=…)")


def load_task(cfg: AuditConfig) -> TaskData:
    """The task ``cfg`` names, checked against ``cfg.data_sha256`` when it is set (an npz
    file's digest, or the fingerprint of a TaskData handed in from Python: refused here,
    unless the config's data happens to have that fingerprint)."""
    if cfg.dataset == "synthetic":
        task = synthetic_task(cfg.synthetic)
    elif cfg.dataset == "digits":
        task = digits_task()
    elif cfg.dataset == "npz":
        task = npz_task(cfg.data_path or "", cfg.data_sha256)
    else:
        try:
            task = cifar_task(cfg.dataset, cfg.data_dir, cfg.download)
        except DataError:
            if cfg.data_sha256 is not None:
                raise python_data_refusal(cfg, None) from None  # that was never CIFAR's
            raise
    if cfg.random_targets:
        gen = torch.Generator().manual_seed(RANDOM_TARGETS_SEED)
        task = replace(task, name=task.name + "+random-targets",
                       y_train=torch.randint(task.n_classes, task.y_train.shape, generator=gen),
                       y_test=torch.randint(task.n_classes, task.y_test.shape, generator=gen))
    check_diagnostic_size(cfg, task.x_test.shape[0])
    for net in cfg.variants():  # an image model needs images that its patches or pools divide
        check_spec(net, task.image_shape)
    fingerprint = task_fingerprint(task)
    if cfg.dataset != "npz" and cfg.data_sha256 is not None and fingerprint != cfg.data_sha256:
        raise python_data_refusal(cfg, fingerprint)
    return replace(task, loaded_from=(data_origin(cfg), fingerprint))


def pin_data_source(cfg: AuditConfig, task: TaskData) -> None:
    """Before an audit is created from ``cfg`` with ``task = load_task(cfg)``: an npz file's
    path is made absolute (a resume from another folder finds it) and its SHA-256 goes into
    ``cfg.data_sha256``, so config.yaml pins the file. Other sources are left as they are."""
    if cfg.dataset == "npz" and task.file_sha256 is not None:
        cfg.data_path = str(Path(cfg.data_path or "").expanduser().absolute())
        cfg.data_sha256 = task.file_sha256


def checked_task(cfg: AuditConfig) -> TaskData:
    """What every way of starting a new audit does before its directory exists, so that a
    refusal leaves nothing behind: the device is resolved, the task loaded and checked
    against the models, and an npz file pinned in ``cfg`` (``pin_data_source``). On the
    CPU: the runner places it (each worker process moves its own)."""
    training_device(cfg)
    task = load_task(cfg)
    pin_data_source(cfg, task)
    return task
