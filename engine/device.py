"""Where training runs and with how many threads.

Thread policy (measured on a shared 2-core AMD EPYC; README, "Threads on a busy
machine"): one intra-op thread per training process is the default (``threads: 1``).
Two-thread OpenMP teams were up to 1.4x faster on an idle machine at CIFAR size, but
with another process holding a core they ran 1.9x (CIFAR size) to 4.0x (the default
audit) slower, as the team's barriers wait for a thread that is not running; one
thread lost nothing to the same load. Audits use the second core through ``workers``
(one process per run) instead.
"""
from __future__ import annotations

import torch

from .config import AuditConfig
from .errors import ConfigError


def training_device(cfg: AuditConfig) -> torch.device:
    """The device an audit trains on, refused (ConfigError) before anything is written when
    the machine cannot train it: no CUDA for ``device: cuda``, no bfloat16 on the GPU."""
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision = 'bf16' but this GPU has no bfloat16 support",
                          "use --set precision=fp32 (bfloat16 needs an Ampere or newer GPU)")
    return device


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device = 'cuda' but CUDA is not available on this machine",
                              "use --device cpu (or auto), or install a CUDA build of PyTorch")
        return torch.device("cuda")
    return torch.device("cpu")


def apply_threads(threads: int) -> None:
    """Set this process's intra-op thread count (the ``threads`` config key)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
